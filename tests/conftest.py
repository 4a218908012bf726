"""Shared test setup: CUDA tests skip cleanly where no GPU (or no CUDA build) exists."""
from __future__ import annotations

import pytest
import torch


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
