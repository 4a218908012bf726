"""scripts/setup.sh decides whether to build mper from its stamp, without building here:
a stand-in ``python`` records ``pip install`` calls instead of running them, a stand-in
``nvidia-smi`` lists a GPU or none, and the scripts run from a copy of the repository
whose sources a test may change."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import torch

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent


def fake_repository(tmp_path: Path) -> Path:
    """A copy of the scripts and build files, with one source file standing in for the sources."""
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "scripts", repo / "scripts")
    for name in ("CMakeLists.txt", "pyproject.toml"):
        shutil.copy(REPO / name, repo / name)
    (repo / "python" / "mper").mkdir(parents=True)
    (repo / "python" / "mper" / "__init__.py").write_text("")
    (repo / "csrc").mkdir()
    return repo


def fake_environment(tmp_path: Path) -> Path:
    """A folder setup.sh takes for an environment: its ``python`` is this one, except for pip
    (logged with the build switches it saw) and pytest (logged); its ``nvidia-smi`` lists a
    GPU when FAKE_GPU=1; its ``mper-data`` logs whether its ``--out`` exists and fails with
    status 3, ending scripts/demo.sh there."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    scripts = {
        "python": f'if [ "$1 $2" = "-m pip" ]; then echo "${{MPER_WERROR:-unset}} ${{MPER_WITH_CUDA:-unset}} pip $*" '
        f'>>"{tmp_path}/pip.log"; exit 0; fi\n'
        f'if [ "$1 $2" = "-m pytest" ]; then echo "pytest" >>"{tmp_path}/pytest.log"; exit 0; fi\n'
        f'exec {sys.executable} "$@"\n',
        "nvidia-smi": 'if [ "${FAKE_GPU:-0}" = 1 ]; then echo "GPU 0: NVIDIA H100 (UUID: GPU-0)"; exit 0; fi\n'
        'echo "NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver."; exit 9\n',
        "mper-data": 'while [ $# -gt 0 ]; do if [ "$1" = --out ]; then '
        f'if [ -e "$2" ]; then echo "$2 exists"; else echo "$2 absent"; fi >>"{tmp_path}/mper-data.log"; fi; shift; done\n'
        "exit 3\n",
    }
    for name, body in scripts.items():
        (venv / "bin" / name).write_text("#!/usr/bin/env bash\n" + body)
        (venv / "bin" / name).chmod(0o755)
    (venv / "bin" / "activate").write_text(f'PATH="{venv / "bin"}:$PATH"\n')
    return venv


def run_script(venv: Path, repo: Path, command: str, **switches: str) -> subprocess.CompletedProcess[str]:
    """Run ``command`` (bash) in ``venv.parent`` with ``switches`` in the environment; pip.log starts empty."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MPER_")}
    env.update(MPER_VENV=str(venv), **switches)
    (venv.parent / "pip.log").unlink(missing_ok=True)
    return subprocess.run(
        ["bash", "-c", command], cwd=venv.parent, env=env, capture_output=True, text=True, timeout=120
    )


def builds(venv: Path, repo: Path) -> list[str]:
    """The build switches of each build the last run made, e.g. ["OFF AUTO"] (MPER_WERROR, MPER_WITH_CUDA)."""
    log = venv.parent / "pip.log"
    calls = log.read_text().splitlines() if log.exists() else []
    return [" ".join(call.split()[:2]) for call in calls if call.endswith("install --quiet " + str(repo))]


def extras_installed(venv: Path, repo: Path) -> list[str]:
    """The requirements the last run installed as extras (not the build)."""
    log = venv.parent / "pip.log"
    calls = log.read_text().splitlines() if log.exists() else []
    return [word for call in calls if str(repo) not in call for word in call.split()[7:]]


def setup(venv: Path, repo: Path, **switches: str) -> list[str]:
    """Source setup.sh; the builds it made."""
    result = run_script(venv, repo, f". {repo}/scripts/setup.sh", **switches)
    assert result.returncode == 0, result.stderr
    return builds(venv, repo)


def test_the_tests_after_the_demo_reuse_its_build_on_a_machine_without_a_gpu(tmp_path):
    repo, venv = fake_repository(tmp_path), fake_environment(tmp_path)
    previous = tmp_path / "data" / "acdc-demo" / "train.list"  # a previous demo's data
    previous.parent.mkdir(parents=True)
    previous.write_text("patient001\n")
    demo = run_script(venv, repo, f"{repo}/scripts/demo.sh")
    assert demo.returncode == 3, demo.stderr  # stopped at mper-data, after the setup
    # the demo writes its data afresh each time: mper-data synth takes only a new folder
    assert (tmp_path / "mper-data.log").read_text() == "data/acdc-demo absent\n"
    assert builds(venv, repo) == ["OFF OFF"]  # no GPU: no CUDA kernels
    assert extras_installed(venv, repo) == []
    tests = run_script(venv, repo, f"{repo}/scripts/test.sh")
    assert tests.returncode == 0, tests.stderr
    assert builds(venv, repo) == [], tests.stdout  # the demo's build, as it is
    assert "pytest>=7" in extras_installed(venv, repo)
    assert (tmp_path / "pytest.log").read_text() == "pytest\n"


def test_a_demo_stopped_by_ctrl_c_says_to_activate_its_environment_before_resuming(tmp_path):
    # its runs say "continue with: mper-train --resume ...", but mper-train is on the PATH
    # only inside the demo's environment, not in the shell the demo was started from
    repo, venv = fake_repository(tmp_path), fake_environment(tmp_path)
    # the labeled-only run got the Ctrl-C too and takes a moment to save its state: a
    # signal from the demo meanwhile would stop it before it has saved
    baseline = (
        'if [[ " $* " == *" --baseline "* ]]; then\n'
        "  trap 'echo signalled while saving; exit 143' TERM INT\n"
        "  sleep 1 & wait $!\n"
        "  echo saved; exit 130\n"
        "fi\n"
    )
    stand_ins = {
        "mper-data": "exit 0\n",
        "mper-train": baseline + 'echo "continue with: mper-train --resume" >&2; exit 130\n',
    }
    for name, body in stand_ins.items():
        (venv / "bin" / name).write_text("#!/usr/bin/env bash\n" + body)
        (venv / "bin" / name).chmod(0o755)
    demo = run_script(venv, repo, f"{repo}/scripts/demo.sh")
    assert demo.returncode == 130, demo.stderr
    advice = demo.stderr.strip().splitlines()[-1]
    assert advice.startswith("demo.sh: interrupted") and f". {venv}/bin/activate" in advice, demo.stderr
    assert "runs/demo-acdc/labeled-only.out" in advice, demo.stderr
    assert "waiting for the labeled-only network" not in demo.stdout
    assert (venv.parent / "runs" / "demo-acdc" / "labeled-only.out").read_text() == "saved\n"


def test_a_build_is_reused_until_the_sources_change_or_another_switch_is_asked_for(tmp_path):
    repo, venv = fake_repository(tmp_path), fake_environment(tmp_path)
    assert setup(venv, repo) == ["OFF OFF"]  # first build, no GPU
    assert setup(venv, repo) == []
    assert setup(venv, repo, FAKE_GPU="1") == []  # a GPU appearing is no reason to rebuild
    assert setup(venv, repo, MPER_WITH_CUDA="ON") == ["OFF ON"]  # asked for
    assert setup(venv, repo, MPER_WITH_CUDA="ON") == []
    assert setup(venv, repo) == []  # unset: the build's switch is kept
    (repo / "python" / "mper" / "__init__.py").write_text("VERSION = 2\n")
    assert setup(venv, repo) == ["OFF ON"]  # sources changed: rebuilt with the build's switches
    assert setup(venv, repo, MPER_WERROR="ON") == ["ON ON"]
    assert setup(venv, repo, MPER_WITH_CUDA="OFF") == ["ON OFF"]
    assert setup(venv, repo, MPER_WERROR="ON", MPER_WITH_CUDA="OFF") == []


def test_a_first_build_with_a_gpu_visible_takes_the_cuda_kernels_when_a_compiler_is_found(tmp_path):
    repo, venv = fake_repository(tmp_path), fake_environment(tmp_path)
    assert setup(venv, repo, FAKE_GPU="1") == ["OFF AUTO"]
    assert setup(venv, repo) == []  # the GPU gone (or hidden): the build is kept


def test_extras_are_installed_on_their_own_without_building_again(tmp_path):
    repo, venv = fake_repository(tmp_path), fake_environment(tmp_path)
    assert setup(venv, repo, MPER_EXTRAS="")  # the demo: mper alone
    assert extras_installed(venv, repo) == []
    assert not setup(venv, repo)  # the tests' default: the test extra, no new build
    assert "pytest>=7" in extras_installed(venv, repo)
    assert not setup(venv, repo) and extras_installed(venv, repo) == []  # already there
    assert not setup(venv, repo, MPER_EXTRAS="test,figures")
    assert extras_installed(venv, repo) == ["matplotlib>=3.6", "scikit-learn>=1.2"]


def test_an_unknown_extra_is_named(tmp_path):
    repo = fake_repository(tmp_path)
    result = run_script(fake_environment(tmp_path), repo, f". {repo}/scripts/setup.sh", MPER_EXTRAS="tests")
    assert result.returncode != 0
    assert "MPER_EXTRAS names tests" in result.stderr and "test" in result.stderr


def test_the_declared_torch_floor_is_the_version_ci_installs():
    """pyproject's torch floor is the release setup.sh installs (CI tests no other), and the
    torch running these tests satisfies it."""
    floor = next(
        re.fullmatch(r"torch>=(\d+\.\d+)", requirement)
        for requirement in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
        if requirement.startswith("torch")
    )
    assert floor is not None
    installed = re.search(r"MPER_TORCH:-torch==(\d+\.\d+)\.\d+", (REPO / "scripts" / "setup.sh").read_text())
    assert installed is not None and installed.group(1) == floor.group(1)
    running = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2])
    assert running >= tuple(int(part) for part in floor.group(1).split("."))
