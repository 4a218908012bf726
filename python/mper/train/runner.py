"""A whole training run: pre-train, prototype init, self-train (or the baseline), with resume."""
from __future__ import annotations

import logging
from pathlib import Path

from .checkpoint import load_checkpoint
from .config import TrainConfig
from .loop import BEST_CHECKPOINT, LAST_CHECKPOINT, ScalarWriter, Trainer, Validator
from .pretrain import run_baseline, run_pretrain
from .runtime import StopRequest
from .selftrain import begin_selftrain, run_selftrain

log = logging.getLogger(__name__)


def run_training(
    config: TrainConfig,
    run_dir: str | Path,
    validate: Validator,
    writer: ScalarWriter | None = None,
    resume: bool = False,
) -> Path:
    """Train as ``config`` says and return the path of the best checkpoint.

    With ``resume``, continue from ``run_dir/last.pt`` (a finished run returns at once).
    The first Ctrl-C saves ``last.pt`` after the current iteration and raises
    :class:`~mper.train.runtime.TrainingInterrupted`.
    """
    run_dir = Path(run_dir)
    with StopRequest() as stop:
        trainer = Trainer(config, run_dir, validate, writer, stop)
        if resume:
            trainer.load_state_dict(load_checkpoint(run_dir / LAST_CHECKPOINT, map_location=trainer.device))
            log.info("resuming %s at iteration %d", trainer.progress.stage, trainer.progress.iteration)
        log.info("training on %s with ops module %s", trainer.device, trainer.ops.__name__)
        if trainer.progress.stage == "baseline":
            run_baseline(trainer)
        if trainer.progress.stage == "pretrain":
            run_pretrain(trainer)
            begin_selftrain(trainer)
        if trainer.progress.stage == "selftrain":
            run_selftrain(trainer)
    return run_dir / BEST_CHECKPOINT
