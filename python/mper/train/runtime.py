"""Where training runs: the device, the prototype-ops module, mixed precision, Ctrl-C and SIGTERM."""
from __future__ import annotations

import contextlib
import importlib
import logging
import signal
import threading
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

import torch

from mper.errors import ConfigError

from .config import OPS_MODULES

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``"auto"`` (CUDA when present, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N; got {name!r}") from error
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N; got {name!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} requested but CUDA is not available here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    return device


def load_ops(name: str) -> ModuleType:
    """The prototype-ops module: ``"mper"`` (fused kernels) or ``"reference"`` (eager)."""
    if name not in OPS_MODULES:
        raise ConfigError(f"ops must be one of {', '.join(OPS_MODULES)}; got {name!r}")
    try:
        return importlib.import_module(OPS_MODULES[name])
    except ImportError as error:
        raise ConfigError(
            f"the compiled prototype ops ({OPS_MODULES[name]}) cannot be imported ({error}); "
            "reinstall mper with `pip install .`, or train with --ops reference"
        ) from error


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on CUDA when ``amp == "bf16"``; a no-op otherwise."""
    if amp == "off":
        return contextlib.nullcontext()
    if device.type != "cuda":
        raise ConfigError(f"amp = {amp!r} needs a CUDA device; use --amp off on {device.type}")
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on request (``signal_name``: SIGINT or SIGTERM) after saving
    ``checkpoint``; resume from it."""

    def __init__(self, checkpoint: Path, signal_name: str = "SIGINT"):
        self.checkpoint = checkpoint
        self.signal_name = signal_name or "SIGINT"
        super().__init__(f"training interrupted by {self.signal_name}; state saved to {checkpoint}")


class TrainingAborted(KeyboardInterrupt):
    """A second Ctrl-C (or SIGTERM) stopped a run at once, possibly in the middle of a
    checkpoint write, or a Ctrl-C came during the final evaluation. ``run_dir`` keeps the
    last checkpoint that was completely written, if any."""

    def __init__(self, run_dir: Path):
        super().__init__(f"stopped at once; {run_dir} keeps its last complete checkpoint")
        self.run_dir = run_dir


class StopRequest(contextlib.AbstractContextManager):
    """Turns the first Ctrl-C (SIGINT) or SIGTERM (a scheduler pre-empting the job) into
    a request that the training loop honours after its current iteration (saving a
    checkpoint first); a second one stops at once with :class:`KeyboardInterrupt`.
    Outside the main thread, where signals cannot be caught, it only holds the flag.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._previous_handlers: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous_handlers[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        log.warning("%s: saving a checkpoint after this iteration (press Ctrl-C again to stop at once)",
                    "Ctrl-C" if signum == signal.SIGINT else self.signal_name)
