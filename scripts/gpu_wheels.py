"""Downloads the wheels a Python without a package index needs for mper (scripts/gpu_wheels.sh).

Run on a machine with a package index. The packages are those the GPU check installs
when missing (``PACKAGES`` of scripts/gpu_check.py: mper's runtime requirements but torch,
the test runner's, the build's), with pyproject.toml's version bounds and markers, and
their own requirements (markers evaluated for the target), less what the target
already holds (``--have``/``--have-python``) and less ``NOT_NEEDED``. A package without a
wheel is built into one from its source archive, which must give a pure-Python wheel.

    scripts/gpu_wheels.sh --have have.txt              # into wheels/ for CPython 3.12, manylinux x86_64
    scripts/gpu_wheels.sh --have-python PYTHON --dest DIR --python-version 3.11
    scripts/gpu_wheels.sh --have have.txt monai        # more packages (and their requirements)

``have.txt`` lists the target's installed distributions, one per line, as
``python -m pip list --format=freeze`` writes them (run it on the target: it needs no
index). Without ``--have`` or ``--have-python`` the target is taken to hold torch alone.

The target's checkout then installs them with ``MPER_WHEELS=DIR scripts/gpu_check.sh``
(``wheels/`` in the checkout is found without it), or by hand with
``python -m pip install --no-index --no-deps --find-links DIR DIR/*.whl``.
"""

from __future__ import annotations

import argparse
import email.parser
import importlib
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check import PACKAGES  # noqa: E402


def _module(name: str, *fallbacks: str) -> ModuleType:
    """``name``, else the first of ``fallbacks`` there is (pip carries packaging and tomli)."""
    for candidate in (name, *fallbacks):
        try:
            return importlib.import_module(candidate)
        except ModuleNotFoundError:
            continue
    raise ModuleNotFoundError(f"none of {name}, {', '.join(fallbacks)}")


Requirement: Any = _module("packaging.requirements", "pip._vendor.packaging.requirements").Requirement
Version: Any = _module("packaging.version", "pip._vendor.packaging.version").Version
canonicalize_name: Any = _module("packaging.utils", "pip._vendor.packaging.utils").canonicalize_name
tomllib: Any = _module("tomllib", "tomli", "pip._vendor.tomli")

REPO = Path(__file__).resolve().parent.parent
#: The default target: CPython 3.12 on manylinux x86_64, as current PyTorch GPU images run.
PYTHON_VERSION = "3.12"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
#: Requirements of mper's requirements that the GPU check never imports, left out (by canonical name).
NOT_NEEDED = {
    "simpleitk": "medpy reads and writes images with it (medpy.io), mper the formats beyond NIfTI, which the "
    "GPU check does not read; mper imports medpy.metric only",
}
#: Packages the check does not install: the environment's own.
ENVIRONMENT_OWN = {"torch"}


def wanted(python_version: str, extra: list[str] | None = None) -> dict[str, str]:
    """The packages the target needs, by canonical name: ``PACKAGES``'s distributions and
    pyproject.toml's requirements (torch left out) whose markers hold for ``python_version``,
    each with pyproject.toml's version bounds where it gives them, and ``extra``."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    environment = marker_environment(python_version, PLATFORMS[0])
    specs: dict[str, str] = {}
    dropped = set()
    for text in project["project"]["dependencies"] + project["build-system"]["requires"]:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        if requirement.marker is not None and not requirement.marker.evaluate(environment):
            dropped.add(name)
        else:
            specs[name] = f"{requirement.name}{requirement.specifier}"
    for distribution in PACKAGES.values():
        name = canonicalize_name(distribution)
        if name not in dropped:
            specs.setdefault(name, distribution)
    for text in extra or []:
        specs[canonicalize_name(Requirement(text).name)] = text
    return {name: spec for name, spec in specs.items() if name not in ENVIRONMENT_OWN}


def marker_environment(python_version: str, platform: str) -> dict[str, str]:
    """The values of PEP 508 markers on CPython ``python_version`` on ``platform`` (a wheel tag)."""
    parts = python_version.split(".")
    machine = re.sub(r"^(manylinux\d*(_\d+_\d+)?|musllinux_\d+_\d+|linux|macosx_\d+_\d+|win)_?", "", platform)
    system = "Windows" if platform.startswith("win") else "Darwin" if platform.startswith("macosx") else "Linux"
    return {
        "implementation_name": "cpython",
        "implementation_version": ".".join((parts + ["0", "0"])[:3]),
        "os_name": "nt" if system == "Windows" else "posix",
        "platform_machine": "AMD64" if machine == "amd64" else machine,
        "platform_python_implementation": "CPython",
        "platform_release": "",
        "platform_system": system,
        "platform_version": "",
        "python_full_version": ".".join((parts + ["0", "0"])[:3]),
        "python_version": ".".join(parts[:2]),
        "sys_platform": {"Windows": "win32", "Darwin": "darwin", "Linux": "linux"}[system],
        "extra": "",
    }


def installed(have: Path | None, python: str | None) -> dict[str, str]:
    """The target's distributions, canonical name to version: from a ``pip list --format=freeze``
    file, or from a Python on this machine; empty without either."""
    if python:
        text = subprocess.run(
            [
                python,
                "-c",
                "import importlib.metadata as m\n"
                "for d in m.distributions(): print(f\"{d.metadata['Name']}=={d.version}\")",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    elif have:
        text = have.read_text()
    else:
        return {}
    found: dict[str, str] = {}
    for line in text.splitlines():
        line = line.split("#")[0].strip()
        match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:==\s*|\s+|@)?\s*([^\s;]*)", line)
        if match and not line.startswith("-"):
            found[canonicalize_name(match.group(1))] = match.group(2) if _is_version(match.group(2)) else ""
    return found


def _is_version(text: str) -> bool:
    try:
        Version(text)
    except ValueError:  # InvalidVersion, a URL or nothing
        return False
    return True


def metadata(wheel: Path) -> tuple[str, str, list[str]]:
    """A wheel's distribution name, version and requirements (``Requires-Dist``)."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
        fields = email.parser.Parser().parsestr(archive.read(name).decode())
    return fields["Name"], fields["Version"], fields.get_all("Requires-Dist") or []


def download(spec: str, into: Path, args: argparse.Namespace) -> tuple[Path, str]:
    """The wheel of ``spec`` for the target, downloaded into ``into``; built from the source
    archive where PyPI has no wheel for the target, which must then be pure Python. Returns
    the wheel and how it was had."""
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    scratch = Path(tempfile.mkdtemp(dir=into))
    try:
        binary = [
            *pip,
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            args.python_version,
            "--implementation",
            "cp",
            *(part for platform in args.platform for part in ("--platform", platform)),
            "--dest",
            str(scratch),
            spec,
        ]
        done = subprocess.run(binary, capture_output=True, text=True)
        how = "wheel"
        if done.returncode:
            source = [*pip, "download", "--no-deps", "--no-binary=:all:", "--dest", str(scratch), spec]
            subprocess.run(source, check=True, capture_output=True, text=True)
            archive = next(scratch.iterdir())
            subprocess.run(
                [*pip, "wheel", "--no-deps", "--wheel-dir", str(scratch), str(archive)],
                check=True,
                capture_output=True,
                text=True,
            )
            archive.unlink()
            how = "built from its source archive"
        wheel = next(scratch.glob("*.whl"))
        if how != "wheel" and not re.search(r"-(py3|py2\.py3)-none-any\.whl$", wheel.name):
            raise SystemExit(
                f"gpu_wheels: {spec} has no wheel for the target on the index, and its source archive "
                f"builds {wheel.name}, for this machine only: build it on a machine like the target"
            )
        target = into / wheel.name
        shutil.move(str(wheel), target)
        return target, how
    except subprocess.CalledProcessError as error:
        raise SystemExit(f"gpu_wheels: could not get {spec}:\n{error.stderr or error.stdout}") from error
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("packages", nargs="*", help="more requirements to download, with their own")
    parser.add_argument("--dest", type=Path, default=REPO / "wheels", help="the folder (default: wheels/)")
    have = parser.add_mutually_exclusive_group()
    have.add_argument("--have", type=Path, help="the target's `python -m pip list --format=freeze`")
    have.add_argument("--have-python", metavar="PYTHON", help="a Python on this machine standing for the target")
    parser.add_argument("--python-version", default=PYTHON_VERSION, help=f"the target's (default {PYTHON_VERSION})")
    parser.add_argument(
        "--platform",
        action="append",
        help=f"the target's wheel platform tags, repeated (default: {' '.join(PLATFORMS)})",
    )
    args = parser.parse_args(argv)
    args.platform = args.platform or list(PLATFORMS)
    environment = marker_environment(args.python_version, args.platform[0])
    target = installed(args.have, args.have_python)
    if not target:
        print("gpu_wheels: no --have or --have-python: the target is taken to hold torch alone")
    args.dest.mkdir(parents=True, exist_ok=True)
    # breadth first: each requirement with the first package that asked for it
    queue = [(spec, "mper") for spec in wanted(args.python_version, args.packages).values()]
    got: dict[str, tuple[Path, str]] = {}
    for spec, asker in queue:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        held = target[name] if name in target else metadata(got[name][0])[1] if name in got else None
        if held is not None:
            if held and not requirement.specifier.contains(Version(held), prereleases=True):
                print(f"  warning: {asker} asks for {spec}, the target has {requirement.name} {held}")
            continue
        if name in NOT_NEEDED:
            print(f"  left out {requirement.name} ({asker}'s requirement): {NOT_NEEDED[name]}")
            continue
        wheel, how = download(spec, args.dest, args)
        for stale in args.dest.glob("*.whl"):  # another version from an earlier download
            if stale != wheel and canonicalize_name(stale.name.split("-")[0]) == name:
                stale.unlink()
        got[name] = (wheel, asker)
        distribution, version, requires = metadata(wheel)
        print(f"  {distribution} {version} ({how}, {_size(wheel.stat().st_size)}), for {asker}")
        for text in requires:
            needed = Requirement(text)
            if needed.marker is None or needed.marker.evaluate(environment):
                queue.append((f"{needed.name}{needed.specifier}", distribution))
    total = sum(path.stat().st_size for path in args.dest.glob("*.whl"))
    print(f"gpu_wheels: {len(got)} wheel(s) downloaded; {args.dest} holds {_size(total)} of wheels")


def _size(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 1e5 else f"{size / 1e3:.0f} kB"


if __name__ == "__main__":
    main()
