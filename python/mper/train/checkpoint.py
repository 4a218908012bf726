"""Checkpoints: atomic writes, CPU-safe loading, random-number-generator states.

A checkpoint is a dict saved with :func:`torch.save`. Training writes two kinds into the
run folder:

* ``last.pt``: everything needed to continue exactly where training stopped (student,
  teacher, prototype bank, optimizer, stage, iteration, RNG states, best score, config;
  the sampler's epoch and position follow from the iteration);
* ``best.pt`` / ``pretrain_best.pt``: the weights (student, teacher, bank) with the best
  validation Dice, plus the config, for evaluation and prediction.

Writes go to a temporary file in the same folder, then :func:`os.replace` moves it over
the old file, so an interrupted write never leaves a truncated checkpoint behind.
"""
from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

#: Raised when the layout of checkpoints changes; older files are refused clearly.
CHECKPOINT_VERSION = 1


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (plus the format version) to ``path`` atomically; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save({**state, "version": CHECKPOINT_VERSION}, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors onto ``map_location``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} does not exist; pass a .pt file written by mper-train "
            "(e.g. RUN_DIR/best.pt)"
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError) as error:
        raise ValueError(f"{path} is not a readable mper checkpoint ({error})") from error
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"{path} is not an mper checkpoint of format version {CHECKPOINT_VERSION}; "
            "it was written by another program or another mper version"
        )
    return state


def capture_rng_state() -> dict[str, Any]:
    """The global torch RNG states (CPU and every CUDA device), which drive dropout."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Undo :func:`capture_rng_state`; CUDA states are restored only where CUDA exists."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
