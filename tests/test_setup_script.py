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


def setup(venv: Path, **switches: str) -> bool:
    """Source setup.sh with ``switches`` in the environment; whether it built mper."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MPER_")}
    env.update(MPER_VENV=str(venv), **switches)
    log = venv.parent / "pip.log"
    log.unlink(missing_ok=True)
    result = subprocess.run(["bash", "-c", f". {REPO}/scripts/setup.sh"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return log.exists() and "install --quiet " + str(REPO) in log.read_text()


def test_setup_builds_once_and_a_cpu_only_demo_keeps_a_build_with_cuda_kernels(tmp_path):
    venv = fake_environment(tmp_path)
    assert setup(venv)  # a new environment: built, with the default switch
    assert not setup(venv)  # nothing changed
    assert not setup(venv, MPER_WITH_CUDA="OFF", MPER_KEEP_CUDA_BUILD="1")  # the demo without a GPU
    assert setup(venv, MPER_WITH_CUDA="OFF")  # asked for CPU only: rebuilt
    assert not setup(venv, MPER_WITH_CUDA="OFF", MPER_KEEP_CUDA_BUILD="1")
    assert setup(venv)  # the tests' default build comes back
