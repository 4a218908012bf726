"""scripts/gpu_wheels.sh: the wheels folder for a Python without a package index covers
every package the GPU check installs, follows their requirements for the target's Python
(not this one's), and leaves out what the target holds. No network: downloads are faked."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gpu_check = _load("gpu_check")
gpu_wheels = _load("gpu_wheels")


def test_the_wheels_cover_every_package_the_check_installs_and_every_requirement_of_mper():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    for version in ("3.10", "3.11", "3.12", "3.13"):
        wanted = set(gpu_wheels.wanted(version))
        environment = gpu_wheels.marker_environment(version, "manylinux_2_28_x86_64")
        required = {
            canonicalize_name(r.name)
            for r in map(Requirement, project["project"]["dependencies"] + project["build-system"]["requires"])
            if r.marker is None or r.marker.evaluate(environment)
        } - {"torch"}
        probed = {canonicalize_name(name) for name in gpu_check.PACKAGES.values()} - {"tomli"}
        assert required | probed <= wanted, f"Python {version}: gpu_wheels lacks {sorted((required | probed) - wanted)}"
        assert "torch" not in wanted
        assert ("tomli" in wanted) == (version == "3.10")
    assert gpu_wheels.wanted("3.12")["medpy"] == "medpy>=0.5"  # pyproject.toml's bounds


def test_requirement_markers_are_those_of_the_target_python_and_platform():
    resources = Requirement("importlib-resources>=5.12; python_version < '3.12'")
    assert resources.marker.evaluate(gpu_wheels.marker_environment("3.11", "manylinux2014_x86_64"))
    assert not resources.marker.evaluate(gpu_wheels.marker_environment("3.12", "manylinux2014_x86_64"))
    assert not Requirement("pydicom; extra == 'dicom'").marker.evaluate(gpu_wheels.marker_environment("3.12", "any"))
    assert gpu_wheels.marker_environment("3.12", "manylinux_2_28_aarch64")["platform_machine"] == "aarch64"
    assert gpu_wheels.marker_environment("3.12.3", "manylinux_2_17_x86_64")["python_full_version"] == "3.12.3"


def test_the_target_is_read_from_pip_list(tmp_path):
    have = tmp_path / "have.txt"
    have.write_text("numpy==2.1.0\ntyping_extensions==4.12.2\nmper @ file:///src/mper\n# comment\n-e git+x#egg=y\n")
    assert gpu_wheels.installed(have, None) == {"numpy": "2.1.0", "typing-extensions": "4.12.2", "mper": ""}
    found = gpu_wheels.installed(None, sys.executable)
    assert "pytest" in found and found["pytest"]
    assert gpu_wheels.installed(None, None) == {}


def _wheel(folder: Path, name: str, version: str, requires: list[str]) -> Path:
    path = folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {text}\n" for text in requires
    )
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name.replace('-', '_')}-{version}.dist-info/METADATA", metadata)
    return path


INDEX = {  # what the fake index serves: version and requirements
    "medpy": ("0.5.2", ["numpy>=1.24", "scipy>=1.10", "SimpleITK>=2.1"]),
    "nibabel": (
        "5.4.2",
        [
            "importlib-resources>=5.12; python_version < '3.12'",
            "numpy>=1.25",
            "packaging>=20",
            "typing-extensions>=4.6; python_version < '3.13'",
            "pydicom>=2.3; extra == 'dicom'",
        ],
    ),
    "tomli-w": ("1.2.0", []),
    "packaging": ("26.0", []),
    "importlib-resources": ("6.5.2", ["zipp>=3.1; python_version < '3.10'"]),
}


@pytest.fixture
def fake_index(monkeypatch):
    asked = []

    def download(spec, into, args):
        name = canonicalize_name(Requirement(spec).name)
        asked.append(name)
        if name not in INDEX:
            raise SystemExit(f"not on the fake index: {spec}")
        return _wheel(into, name, *INDEX[name]), "wheel"

    monkeypatch.setattr(gpu_wheels, "download", download)
    return asked


def _have(tmp_path: Path, lacking: set[str]) -> Path:
    """A target holding every package gpu_wheels wants and some of their requirements, less ``lacking``."""
    names = (set(gpu_wheels.wanted("3.12")) | {"typing-extensions", "scipy", "numpy", "packaging"}) - lacking
    have = tmp_path / "have.txt"
    have.write_text("".join(f"{name}==2.0\n" for name in sorted(names)))
    return have


def test_only_what_the_target_lacks_and_its_requirements_are_downloaded(tmp_path, fake_index, capsys):
    have = _have(tmp_path, {"medpy", "nibabel", "tomli-w", "packaging"})
    gpu_wheels.main(["--have", str(have), "--dest", str(tmp_path / "wheels")])
    # SimpleITK left out (medpy.io only); importlib-resources only below 3.12; pydicom an extra's
    assert sorted(fake_index) == ["medpy", "nibabel", "packaging", "tomli-w"]
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "wheels").glob("*.whl")) == [
        "medpy",
        "nibabel",
        "packaging",
        "tomli_w",
    ]
    out = capsys.readouterr().out
    assert "left out SimpleITK" in out and "medpy.io" in out


def test_the_requirements_follow_the_target_python_not_this_one(tmp_path, fake_index):
    have = _have(tmp_path, {"nibabel"})
    gpu_wheels.main(["--have", str(have), "--dest", str(tmp_path / "wheels"), "--python-version", "3.11"])
    assert sorted(fake_index) == ["importlib-resources", "nibabel"]


def test_a_target_with_an_old_requirement_is_warned_of(tmp_path, fake_index, capsys):
    have = _have(tmp_path, {"nibabel"})
    have.write_text(have.read_text().replace("numpy==2.0", "numpy==1.21.0"))
    gpu_wheels.main(["--have", str(have), "--dest", str(tmp_path / "wheels")])
    assert "warning: nibabel asks for numpy>=1.25, the target has numpy 1.21.0" in capsys.readouterr().out


def test_medpy_metric_imports_without_simpleitk_and_mper_imports_no_other_part_of_medpy():
    """What gpu_wheels.NOT_NEEDED leaves out of the wheels is not needed: mper imports
    medpy.metric alone, and that does not import SimpleITK."""
    pytest.importorskip("medpy")
    sources = "\n".join(path.read_text() for path in (REPO / "python" / "mper").rglob("*.py"))
    imported = set(re.findall(r"^\s*(?:from|import)\s+(medpy[\w.]*)", sources, re.MULTILINE))
    assert imported == {"medpy.metric"}
    code = "import sys\nfrom medpy.metric import binary\nassert 'SimpleITK' not in sys.modules, 'SimpleITK imported'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert set(gpu_wheels.NOT_NEEDED) == {"simpleitk"}


def test_a_package_the_target_holds_in_an_unknown_version_is_not_downloaded(tmp_path, fake_index):
    have = _have(tmp_path, {"nibabel"})
    have.write_text(have.read_text().replace("packaging==2.0", "packaging @ file:///wheels/packaging.whl"))
    gpu_wheels.main(["--have", str(have), "--dest", str(tmp_path / "wheels")])
    assert fake_index == ["nibabel"]
