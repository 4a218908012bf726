"""scripts/setup.sh decides whether to build mper from its stamp, without building here:
a stand-in ``python`` records ``pip install`` calls instead of running them."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def fake_environment(tmp_path: Path) -> Path:
    """A folder setup.sh takes for an environment: its ``python`` is this one, except for pip."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(f'#!/usr/bin/env bash\nif [ "$1 $2" = "-m pip" ]; then echo "pip $*" >>"{tmp_path}/pip.log"; '
                      f'exit 0; fi\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    (venv / "bin" / "activate").write_text(f'PATH="{venv / "bin"}:$PATH"\n')
    return venv


def run_setup(venv: Path, **switches: str) -> subprocess.CompletedProcess[str]:
    """Source setup.sh with ``switches`` in the environment."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MPER_")}
    env.update(MPER_VENV=str(venv), **switches)
    (venv.parent / "pip.log").unlink(missing_ok=True)
    return subprocess.run(["bash", "-c", f". {REPO}/scripts/setup.sh"], env=env, capture_output=True, text=True,
                          timeout=120)


def setup(venv: Path, **switches: str) -> bool:
    """Run setup.sh; whether it built mper."""
    result = run_setup(venv, **switches)
    assert result.returncode == 0, result.stderr
    log = venv.parent / "pip.log"
    return log.exists() and "install --quiet " + str(REPO) in log.read_text()


def test_setup_builds_once_and_a_cpu_only_demo_keeps_a_build_with_cuda_kernels(tmp_path):
    venv = fake_environment(tmp_path)
    assert setup(venv)  # a new environment: built, with the default switch
    assert not setup(venv)  # nothing changed
    assert not setup(venv, MPER_WITH_CUDA="OFF", MPER_KEEP_CUDA_BUILD="1")  # the demo without a GPU
    assert setup(venv, MPER_WITH_CUDA="OFF")  # asked for CPU only: rebuilt
    assert not setup(venv, MPER_WITH_CUDA="OFF", MPER_KEEP_CUDA_BUILD="1")
    assert setup(venv)  # the tests' default build comes back


def extras_installed(venv: Path) -> list[str]:
    """The requirements the last setup() call installed as extras (not the build)."""
    log = venv.parent / "pip.log"
    calls = log.read_text().splitlines() if log.exists() else []
    return [word for call in calls if str(REPO) not in call for word in call.split()[5:]]


def test_extras_are_installed_on_their_own_without_building_again(tmp_path):
    venv = fake_environment(tmp_path)
    assert setup(venv, MPER_EXTRAS="")  # the demo: mper alone
    assert extras_installed(venv) == []
    assert not setup(venv)  # the tests' default: the test extra, no new build
    assert "pytest>=7" in extras_installed(venv)
    assert not setup(venv) and extras_installed(venv) == []  # already there
    assert not setup(venv, MPER_EXTRAS="test,figures")
    assert extras_installed(venv) == ["matplotlib>=3.6", "scikit-learn>=1.2"]


def test_an_unknown_extra_is_named(tmp_path):
    result = run_setup(fake_environment(tmp_path), MPER_EXTRAS="tests")
    assert result.returncode != 0
    assert "MPER_EXTRAS names tests" in result.stderr and "test" in result.stderr
