"""Shared test setup: CUDA tests skip cleanly where no GPU (or no CUDA build) exists, no
test leaves anything in the checkout (each runs in its own temporary folder, and
hypothesis keeps no example database), Ctrl-C raises KeyboardInterrupt in every test,
one HDF5 writer for hand-made data files, the registry left with the built-in datasets by
the modules that import scans, and subprocesses import the mper under test."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hypothesis import settings

settings.register_profile("no-database", database=None)
settings.load_profile("no-database")

# Tests run in temporary folders and start Python subprocesses there: a relative entry
# of PYTHONPATH (``PYTHONPATH=python``) must keep naming the same folder for them, or
# they would import another mper than the one under test.
os.environ["PYTHONPATH"] = os.pathsep.join(
    os.path.abspath(entry) for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry
)


@pytest.fixture(autouse=True)
def _run_in_a_temporary_folder(tmp_path):
    """Relative paths a test writes (default run folders, ``data/``) land in its tmp_path
    (not through ``monkeypatch``, whose ``undo()`` some tests call)."""
    previous = os.getcwd()
    os.chdir(tmp_path)
    yield
    os.chdir(previous)


@pytest.fixture(autouse=True)
def _ctrl_c_raises():
    """Python's own Ctrl-C handler, as in a terminal, even when the suite runs as a
    background job of a script, which starts with SIGINT ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _cuda_ready() -> tuple[bool, str]:
    if not torch.cuda.is_available():
        return False, "no CUDA device"
    from mper.ops import cuda_available

    if not cuda_available():
        return False, "mper was built without CUDA kernels"
    return True, ""


def pytest_collection_modifyitems(config, items):
    ready, reason = _cuda_ready()
    if ready:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def _write_h5(path: Path, **datasets: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as handle:
        for name, data in datasets.items():
            handle.create_dataset(name, data=data)
    return path


@pytest.fixture(scope="session")
def write_h5() -> Callable[..., Path]:
    """``write_h5(path, **datasets)``: an HDF5 file written with h5py alone, one dataset per
    keyword (e.g. ``image=..., label=...``), its folders created; returns ``path``."""
    return _write_h5


@pytest.fixture(scope="module")
def only_built_in_datasets():
    """Leave the registry as the other test modules expect it after a module that imports
    scans (``pytestmark = pytest.mark.usefixtures("only_built_in_datasets")``): the
    built-in datasets only."""
    from mper.datasets.registry import _REGISTRY  # noqa: PLC0415

    yield
    for name in [name for name, spec in _REGISTRY.items() if spec.scans is not None]:
        del _REGISTRY[name]
