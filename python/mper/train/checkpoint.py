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
when the run resumes). A Ctrl-C during a write removes the temporary file and stops as a
Ctrl-C, whatever torch's writer raises on its way out. Checkpoints get the permissions the umask gives any new file.

Tensors load onto the CPU: modules and optimizers copy them to their own device, and the
random-number-generator states must stay CPU byte tensors.

Every checkpoint records its format (:data:`CHECKPOINT_VERSION`); a change of what the
writers write raises it, and :func:`upgrade_checkpoint` brings a checkpoint of an older
format that is still readable to the current one, one format at a time, so that the code
reading a checkpoint finds every field of the current format.
"""

from __future__ import annotations

import logging
import os
import pickle
import secrets
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from mper.errors import CheckpointError, MissingFileError, RunFolderError

log = logging.getLogger(__name__)

#: The checkpoints a run folder holds (see above): to resume, the best, pre-training's best.
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
PRETRAIN_CHECKPOINT = "pretrain_best.pt"

#: The format of the checkpoints this mper writes, raised whenever what they hold changes:
#:
#: 1. networks with an embedding head (unreadable now: the bank lives in that head's space);
#: 2. networks without it, the bank the state of a :class:`~mper.nn.PrototypeHead`; resume
#:    checkpoints gained fields under this number, so older files of format 2 may lack the
#:    prototype usage, the RNG states of every process and the sessions, and RNG states
#:    written without CUDA lack the list of CUDA states;
#: 3. every field always written (``None`` or an empty list where there is nothing);
#: 4. ``scan_plan``: the text of the plan a run on an imported dataset trained with (how its
#:    network reads scans), ``None`` for the built-in datasets and for older checkpoints;
#: 5. ``trained_cases``: the names of the items the run trains on, labeled and unlabeled
#:    (mper-eval refuses to score one), ``None`` for older checkpoints.
CHECKPOINT_VERSION = 5
#: The first bytes of every file torch.save writes (a zip archive).
ZIP_MAGIC = b"PK\x03\x04"
#: The oldest format :func:`upgrade_checkpoint` reads.
OLDEST_READABLE_VERSION = 2


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
    handled = sys.exc_info()[1]  # a caller's exception being handled: not this write's
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(handle, "wb") as stream:
            torch.save({**state, "version": CHECKPOINT_VERSION}, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        interrupt = _interrupt_behind(error, handled)
        if interrupt is not None and interrupt is not error:
            # torch.save's zip writer finishes the file on its way out of an interrupted write,
            # and fails: the stop is what happened, the writer's error only follows from it
            raise interrupt from None
        system = _system_error_behind(error, handled)
        if system is not None:
            raise RunFolderError(
                f"cannot write checkpoint {path} ({system.strerror or system}); free space or fix the "
                "folder's permissions (the previous checkpoint there is unchanged), then resume"
            ) from error
        raise
    return path


def _system_error_behind(error: BaseException, handled: BaseException | None) -> OSError | None:
    """The :class:`OSError` that ``error`` is or was raised while handling, up to
    ``handled`` (the caller's): torch's zip writer turns a full disk into ``RuntimeError:
    [enforce fail at inline_container.cc] unexpected pos ...`` raised while an
    ``OSError: [Errno 28]`` is handled."""
    seen: BaseException | None = error
    while seen is not None and seen is not handled:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _interrupt_behind(error: BaseException, handled: BaseException | None) -> KeyboardInterrupt | None:
    """The :class:`KeyboardInterrupt` that ``error`` is, or that it was raised while
    handling, up to ``handled``, the exception the caller was handling before the write."""
    seen: BaseException | None = error
    while seen is not None and seen is not handled:
        if isinstance(seen, KeyboardInterrupt):
            return seen
        seen = seen.__context__
    return None


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
    if path.is_dir():
        # a run folder given for its checkpoint: name the file to pass instead
        inside = next((path / name for name in (BEST_CHECKPOINT, LAST_CHECKPOINT) if (path / name).is_file()), None)
        what = f"the checkpoint in it, {inside}" if inside else "a .pt file mper-train wrote (e.g. RUN_DIR/best.pt)"
        raise CheckpointError(f"checkpoint {path} is a folder, not a .pt file; pass {what}")
    if not path.is_file():
        raise MissingFileError(
            f"checkpoint {path} does not exist; pass a .pt file written by mper-train (e.g. RUN_DIR/best.pt)"
        )
    with open(path, "rb") as start:
        head = start.read(len(ZIP_MAGIC))
    if len(head) == len(ZIP_MAGIC) and head != ZIP_MAGIC:  # shorter: a truncated copy, refused below
        raise CheckpointError(
            f"{path} is not a checkpoint; pass a .pt file written by mper-train (e.g. RUN_DIR/best.pt)"
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
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(
            f"{path} is not an mper checkpoint of format version {CHECKPOINT_VERSION}; "
            "it was written by another program or another mper version"
        )
    return upgrade_checkpoint(state, path)


def _format_2_to_3(state: dict[str, Any]) -> dict[str, Any]:
    """Fill in what resume checkpoints of format 2 could lack (``last.pt``: the one kind
    with RNG states; weight checkpoints held the same fields throughout format 2) with
    what the reader of format 2 assumed for it: no prototype usage counted yet, one process,
    no sessions recorded, no CUDA RNG states."""
    if "rng" not in state:
        return state
    state.setdefault("prototype_usage", None)
    state.setdefault("process_rng", [state["rng"]])
    state.setdefault("sessions", [])
    for rng in (state["rng"], *state["process_rng"]):
        rng.setdefault("cuda", [])
    return state


def _format_3_to_4(state: dict[str, Any]) -> dict[str, Any]:
    """No record of the plan: a run folder's plan.toml is taken as it is, unchecked."""
    state.setdefault("scan_plan", None)
    return state


def _format_4_to_5(state: dict[str, Any]) -> dict[str, Any]:
    """No record of the training cases: the run folder's ``cases.json`` and the data
    folder's lists alone tell which cases a scored one must not be."""
    state.setdefault("trained_cases", None)
    return state


#: ``{format: the function that upgrades a checkpoint of that format to the next}``.
UPGRADES = {2: _format_2_to_3, 3: _format_3_to_4, 4: _format_4_to_5}


def upgrade_checkpoint(state: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """``state`` (a checkpoint of format ``state["version"]``, read from ``path``) in the
    current format, upgraded one format at a time by :data:`UPGRADES`.

    Raises :class:`~mper.errors.CheckpointError` for a format older than
    :data:`OLDEST_READABLE_VERSION` or newer than this mper knows.
    """
    version = state["version"]
    if version > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer mper (checkpoint format {version}; this mper reads formats "
            f"{OLDEST_READABLE_VERSION} to {CHECKPOINT_VERSION}): upgrade mper to read it"
        )
    if version < OLDEST_READABLE_VERSION:
        raise CheckpointError(
            f"{path} was written by an older mper (checkpoint format {version}; this mper reads formats "
            f"{OLDEST_READABLE_VERSION} to {CHECKPOINT_VERSION}, whose networks have no embedding head): "
            "train it again with this version, or use the mper that wrote it"
        )
    while version < CHECKPOINT_VERSION:
        state = UPGRADES[version](state)
        version += 1
        state["version"] = version
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
    """The global torch RNG states (CPU and every CUDA device, none without CUDA), which
    drive dropout."""
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_rng_state(state: dict[str, Any]) -> None:
    """Undo :func:`capture_rng_state` on this machine.

    States may come from any device (they are moved to the CPU, where torch wants
    them). CUDA states are restored for the devices this machine has: with fewer GPUs
    than the run that saved them, the extra states are dropped (and this is logged).
    """
    torch.set_rng_state(state["torch"].cpu())
    saved_cuda = state["cuda"]
    if not saved_cuda or not torch.cuda.is_available():
        return
    present = torch.cuda.device_count()
    if present != len(saved_cuda):
        log.info(
            "restoring the random state of %d CUDA device(s); the checkpoint holds %d",
            min(present, len(saved_cuda)),
            len(saved_cuda),
        )
    for index, device_state in enumerate(saved_cuda[:present]):
        torch.cuda.set_rng_state(device_state.cpu(), device=index)
