"""What a run executes on: mper, its kernel version, torch, Python and CUDA versions, and the device.

Printed by every command's ``--version`` and written at the top of ``train.log``, so a
result can always be traced back to the software and hardware that produced it.
"""

from __future__ import annotations

import os
import platform

import torch

from mper import __version__

#: The version of the compiled kernels (``csrc/``), raised with every change to them, so that
#: a measured figure names the kernels it measured: every benchmark result records it next
#: to its commit. tests/test_benchmark_labels.py keeps a hash of ``csrc/`` per version and
#: fails when the kernels change without a new version.
KERNEL_VERSION = 5


def _compiled_core() -> str:
    try:
        from mper.ops import cuda_available
    except ImportError as error:
        return f"compiled core not importable ({error})"
    kernels = "CPU and CUDA kernels" if cuda_available() else "CPU kernels only"
    return f"compiled core with {kernels}, kernel version {KERNEL_VERSION}"


def version_line(program: str = "mper") -> str:
    """``<program> <version> (torch ..., CUDA ... or CPU build; Python ...; <compiled core>)``."""
    cuda = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU build"
    return (
        f"{program} {__version__} (torch {torch.__version__}, {cuda}; "
        f"Python {platform.python_version()}; {_compiled_core()})"
    )


def device_line(device: torch.device) -> str:
    """The device a run uses, by name: the GPU's model, or the CPU and its threads."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"{device} ({torch.cuda.get_device_name(index)})"
    processor = platform.processor() or platform.machine()
    return f"cpu ({processor}, {torch.get_num_threads()} threads, {os.cpu_count()} logical cores)"
