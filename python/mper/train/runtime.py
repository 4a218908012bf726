"""Where training runs: the device, the prototype-ops module, mixed precision,
torch.compile's availability, the CUDA synchronisation check, Ctrl-C and SIGTERM."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
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
            raise ConfigError(f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
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


def check_compile(device: torch.device, enabled: bool) -> None:
    """Refuse ``compile = true`` where ``torch.compile`` cannot train: off CUDA (on the
    CPU its code generator, inductor, has computed wrong gradients for the U-Net's
    copy-paste loss: ``tests/test_train_compiled.py``), on a Python or platform that
    ``torch.compile`` does not support, or without Triton, which compiles the GPU kernels."""
    if not enabled:
        return
    import torch._dynamo
    from torch.utils._triton import has_triton

    if device.type != "cuda":
        raise ConfigError(
            f"compile = true needs a CUDA device (on the CPU, torch.compile has computed wrong "
            f"gradients for these networks' losses); on {device.type} set compile=false"
        )
    if not torch._dynamo.is_dynamo_supported():
        raise ConfigError(
            f"compile = true: torch.compile does not support this Python or platform "
            f"(torch {torch.__version__}); set compile=false"
        )
    if not has_triton():
        raise ConfigError(
            "compile = true on CUDA needs Triton, which is not installed or does not support "
            "this GPU; install the triton package that matches torch, or set compile=false"
        )


#: The environment variable that turns on PyTorch's check of host synchronisations on CUDA
#: (``torch.cuda.set_sync_debug_mode``) inside the training steps: ``warn`` warns at every
#: synchronisation, ``error`` raises; unset or ``default``: no check. The first iteration
#: of each stage in a process is left out (lazy initialisation, compilation).
SYNC_DEBUG_VARIABLE = "MPER_SYNC_DEBUG"
SYNC_DEBUG_MODES = ("default", "warn", "error")


def sync_debug_mode() -> str:
    """The mode :data:`SYNC_DEBUG_VARIABLE` asks for; a value it cannot take is refused."""
    mode = os.environ.get(SYNC_DEBUG_VARIABLE) or "default"
    if mode not in SYNC_DEBUG_MODES:
        raise ConfigError(
            f"{SYNC_DEBUG_VARIABLE}={mode!r} must be one of {', '.join(SYNC_DEBUG_MODES)}; "
            "unset it to train without the synchronisation check"
        )
    return mode


@contextlib.contextmanager
def sync_debug(device: torch.device, mode: str) -> Iterator[None]:
    """Within the block, CUDA host synchronisations warn or raise as ``mode`` says
    (nothing on the CPU, or with ``"default"``)."""
    if device.type != "cuda" or mode == "default":
        yield
        return
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(mode)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


@contextlib.contextmanager
def planned_host_read() -> Iterator[None]:
    """A read of device values that a step makes on purpose (once per window of
    iterations, say): exempt from :func:`sync_debug`'s check."""
    if not torch.cuda.is_available() or torch.cuda.get_sync_debug_mode() == 0:
        yield
        return
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("default")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


_RUN_LOG_ONLY_FLAG = "run_log_only"
#: ``extra`` of log records meant for train.log only: the console prints them otherwise
#: (the metrics table, where a run stopped) or they are too long for it (the settings).
RUN_LOG_ONLY = {_RUN_LOG_ONLY_FLAG: True}


def shown_on_console(record: logging.LogRecord) -> bool:
    """Log filter for console handlers: leaves out the :data:`RUN_LOG_ONLY` records."""
    return not getattr(record, _RUN_LOG_ONLY_FLAG, False)


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

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        log.warning(
            "%s: saving a checkpoint after this iteration (press Ctrl-C again to stop at once)",
            "Ctrl-C" if signum == signal.SIGINT else self.signal_name,
        )
