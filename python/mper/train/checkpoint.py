"""Checkpoints: atomic writes, CPU-safe loading, random-number-generator states.

A checkpoint is a dict saved with :func:`torch.save`. Training writes two kinds into the
run folder:

* ``last.pt``: everything needed to continue exactly where training stopped (student,
  teacher, prototype bank, optimizer, stage, iteration, RNG states, best score, config;
  the sampler's epoch and position follow from the iteration), and how each start or
  resume ran (processes, backend, device);
* ``best.pt`` / ``pretrain_best.pt``: the weights (student, teacher, bank) with the best
  validation Dice, plus the config, for evaluation and prediction.

Writes go to a temporary file in the same folder, then :func:`os.replace` moves it over
the old file, so an interrupted write never leaves a truncated checkpoint behind (a
temporary file left by a killed process is removed by :func:`remove_stale_temporaries`
when the run resumes). Checkpoints get the permissions the umask gives any new file.

Tensors load onto the CPU: modules and optimizers copy them to their own device, and the
random-number-generator states must stay CPU byte tensors.
"""
from __future__ import annotations

import logging
import os
import pickle
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from mper.errors import CheckpointError, MissingFileError, RunFolderError

log = logging.getLogger(__name__)

#: Raised when the layout of checkpoints changes; older files are refused clearly. Format 2:
#: the networks have no embedding head and the bank is the state of a
#: :class:`~mper.nn.PrototypeHead` (format 1: networks with an embedding head).
CHECKPOINT_VERSION = 2


TEMPORARY_SUFFIX = ".tmp"


def _temporary_name(path: Path) -> Path:
    """``.<name>.<pid>-<random>.tmp`` beside ``path``: hidden, unique, recognisably stale."""
    return path.parent / f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{TEMPORARY_SUFFIX}"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (plus the format version) to ``path`` atomically; returns ``path``.

    Raises :class:`~mper.errors.RunFolderError` when the file cannot be written (no
    space left, no permission); the previous file at ``path`` is then unchanged.
    """
    path = Path(path)
    temporary = _temporary_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(handle, "wb") as stream:
            torch.save({**state, "version": CHECKPOINT_VERSION}, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise RunFolderError(
            f"cannot write checkpoint {path} ({error.strerror or error}); free space or fix the "
            "folder's permissions (the previous checkpoint there is unchanged), then resume"
        ) from error
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files that interrupted :func:`save_checkpoint` calls left in
    ``folder``; returns them. Call it only while no other process writes there."""
    stale = sorted(Path(folder).glob(f".*.pt.*{TEMPORARY_SUFFIX}"))
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        log.info("removed %d unfinished checkpoint file(s) left by an interrupted write", len(stale))
    return stale


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors onto ``map_location``)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(
            f"checkpoint {path} does not exist; pass a .pt file written by mper-train "
            "(e.g. RUN_DIR/best.pt)"
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except PermissionError:
        raise
    except (RuntimeError, pickle.UnpicklingError, EOFError, OSError) as error:
        # a truncated file fails in any of these, depending on where it was cut; torch's own
        # message spans lines and suggests weights_only=False, which is no cure here
        raise CheckpointError(
            f"{path} is not a readable mper checkpoint (torch.load: {type(error).__name__}); it is "
            "truncated or damaged (an interrupted copy?) or not written by mper-train: copy it again "
            "or use another checkpoint"
        ) from error
    version = state.get("version") if isinstance(state, dict) else None
    if isinstance(version, int) and version < CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} was written by an older mper (checkpoint format {version}; this mper reads format "
            f"{CHECKPOINT_VERSION}, whose networks have no embedding head): train it again with this "
            "version, or use the mper that wrote it"
        )
    if version != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} is not an mper checkpoint of format version {CHECKPOINT_VERSION}; "
            "it was written by another program or another mper version"
        )
    return state


def non_finite_tensors(state: Any, where: str = "") -> list[str]:
    """Dotted names of the floating-point tensors in ``state`` (nested dicts, lists,
    ``None``) that hold a NaN or an infinity."""
    if isinstance(state, torch.Tensor):
        return [where] if state.is_floating_point() and not bool(torch.isfinite(state).all()) else []
    items: Iterable[tuple[Any, Any]]
    if isinstance(state, dict):
        items = state.items()
    elif isinstance(state, (list, tuple)):
        items = enumerate(state)
    else:
        return []
    return [name for key, value in items for name in non_finite_tensors(value, f"{where}.{key}".lstrip("."))]


def capture_rng_state() -> dict[str, Any]:
    """The global torch RNG states (CPU and every CUDA device), which drive dropout."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Undo :func:`capture_rng_state` on this machine.

    States may come from any device (they are moved to the CPU, where torch wants
    them). CUDA states are restored for the devices this machine has: with fewer GPUs
    than the run that saved them, the extra states are dropped (and this is logged).
    """
    torch.set_rng_state(state["torch"].cpu())
    saved_cuda = state.get("cuda") or []
    if not saved_cuda or not torch.cuda.is_available():
        return
    present = torch.cuda.device_count()
    if present != len(saved_cuda):
        log.info("restoring the random state of %d CUDA device(s); the checkpoint holds %d",
                 min(present, len(saved_cuda)), len(saved_cuda))
    for index, device_state in enumerate(saved_cuda[:present]):
        torch.cuda.set_rng_state(device_state.cpu(), device=index)
