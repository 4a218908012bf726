"""Where training runs: the device, the prototype-ops module, mixed precision, Ctrl-C."""
from __future__ import annotations

import contextlib
import importlib
import logging
import signal
import threading
from pathlib import Path
from types import FrameType, ModuleType

import torch

from .config import OPS_MODULES

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``"auto"`` (CUDA when present, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N; got {name!r}") from error
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N; got {name!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    return device


def load_ops(name: str) -> ModuleType:
    """The prototype-ops module: ``"mper"`` (fused kernels) or ``"reference"`` (eager)."""
    if name not in OPS_MODULES:
        raise ValueError(f"ops must be one of {', '.join(OPS_MODULES)}; got {name!r}")
    try:
        return importlib.import_module(OPS_MODULES[name])
    except ImportError as error:
        raise ImportError(
            f"the compiled prototype ops ({OPS_MODULES[name]}) cannot be imported ({error}); "
            "reinstall mper with `pip install .`, or train with --ops reference"
        ) from error


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on CUDA when ``amp == "bf16"``; a no-op otherwise."""
    if amp == "off":
        return contextlib.nullcontext()
    if device.type != "cuda":
        raise ValueError(f"amp = {amp!r} needs a CUDA device; use --amp off on {device.type}")
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on request after saving ``checkpoint``; resume from it."""

    def __init__(self, checkpoint: Path):
        super().__init__(f"training interrupted; state saved to {checkpoint}")
        self.checkpoint = checkpoint


class StopRequest(contextlib.AbstractContextManager):
    """Turns the first Ctrl-C (SIGINT) into a request that the training loop honours
    after its current iteration (saving a checkpoint first); a second Ctrl-C stops at
    once. Outside the main thread, where signals cannot be caught, it only holds the flag.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous_handler = None

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("Ctrl-C: saving a checkpoint after this iteration (press again to abort now)")
