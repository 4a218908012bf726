"""Shared test setup: CUDA tests skip cleanly where no GPU (or no CUDA build) exists, and
no test leaves anything in the checkout (each runs in its own temporary folder, and
hypothesis keeps no example database)."""
from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

settings.register_profile("no-database", database=None)
settings.load_profile("no-database")


@pytest.fixture(autouse=True)
def _run_in_a_temporary_folder(tmp_path):
    """Relative paths a test writes (default run folders, ``data/``) land in its tmp_path
    (not through ``monkeypatch``, whose ``undo()`` some tests call)."""
    previous = os.getcwd()
    os.chdir(tmp_path)
    yield
    os.chdir(previous)


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
