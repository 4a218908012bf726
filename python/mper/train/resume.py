"""Which settings a resumed run may change, and the config it continues with.

A resumed run repeats the interrupted one exactly only with the same settings, so
``--resume`` keeps the saved config. What does not change the training itself may be
given again: where and with what it runs (device, ops, mixed precision, data folder,
loader workers), how often it validates and saves, and more iterations.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mper.errors import CheckpointError, ConfigError, MissingFileError

from .checkpoint import LAST_CHECKPOINT
from .config import TrainConfig, flatten, merge, stage_iterations

#: Settings a resumed run may change (``out`` follows the run folder, which may have moved).
RESUMABLE_SETTINGS = (
    "device",
    "ops",
    "amp",
    "data_root",
    "data.num_workers",
    "pretrain.iterations",
    "selftrain.iterations",
    "eval.val_interval",
    "eval.checkpoint_interval",
    "eval.log_interval",
    "eval.num_figures",
    "eval.pseudo_label_dice",
    "eval.teacher_dice",
    "distributed.timeout",
    "distributed.check_bank",
    "distributed.force_group",
    "compile",
    "channels_last",
)


def checkpoint_to_resume(run_dir: Path) -> Path:
    """``run_dir/last.pt``, the checkpoint ``--resume`` continues from; raises
    :class:`~mper.errors.MissingFileError`, with advice for ``--resume``, when it is absent."""
    path = run_dir / LAST_CHECKPOINT
    if path.is_file():
        return path
    if not run_dir.is_dir():
        raise MissingFileError(
            f"--resume: {path} does not exist, nor does its folder; --out must name the folder of the run to "
            "continue, the --out it was started with"
        )
    raise MissingFileError(
        f"--resume: {path} does not exist: {run_dir} holds no checkpoint to continue from (the run stopped "
        "before its first checkpoint, or the folder is not a run's); start the run again without --resume, "
        "or give --out the folder of the run to continue"
    )


def _differences(saved: dict[str, Any], given: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{setting: (saved value, given value)}`` where ``given`` differs from ``saved``."""
    before = flatten(saved)
    return {name: (before.get(name), value) for name, value in flatten(given).items() if before.get(name) != value}


def setting_changes(saved: dict[str, Any], config: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """``{setting: (saved value, new value)}`` for every setting ``config`` changes."""
    return _differences(TrainConfig.from_dict(saved).to_dict(), config.to_dict())


def resumed_config(state: dict[str, Any], changes: dict[str, Any]) -> TrainConfig:
    """The config of the run saved in ``state`` (a ``last.pt``) with ``changes`` (a
    nested dict of settings) applied; raises :class:`~mper.errors.ConfigError` for a
    change a resumed run cannot make."""
    try:
        saved = TrainConfig.from_dict(state["config"]).to_dict()
    except ConfigError as error:
        raise CheckpointError(f"the settings saved with this run are not valid here: {error}") from error
    changed = _differences(saved, changes)
    refused = [name for name in changed if name not in (*RESUMABLE_SETTINGS, "out")]
    if refused:
        name = refused[0]
        before, given = changed[name]
        raise ConfigError(
            f"--resume continues the run with the settings saved in it; {name} cannot change "
            f"(saved {before!r}, given {given!r}). A resumed run may change only "
            f"{', '.join(RESUMABLE_SETTINGS)}; start a new run in another --out to change the rest"
        )
    config = TrainConfig.from_dict(merge(saved, changes))
    _check_iterations(config, state["progress"], changed)
    return config


def _check_iterations(config: TrainConfig, progress: dict[str, Any], changed: dict[str, Any]) -> None:
    """New iteration counts must not end a stage before the iterations already run."""
    stage, done = progress["stage"], progress["iteration"]
    if stage == "selftrain" and "pretrain.iterations" in changed:
        raise ConfigError("pretrain.iterations cannot change: this run has finished pre-training")
    planned = stage_iterations(config, stage)
    if planned < done:
        raise ConfigError(
            f"this run has done {done} {stage} iterations; the iteration counts can only grow (they now give {planned})"
        )
