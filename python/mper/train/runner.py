"""A whole training run: pre-train, prototype init, self-train (or the baseline), with resume."""
from __future__ import annotations

import logging
import time
from pathlib import Path

from .checkpoint import load_checkpoint
from .config import TrainConfig
from .loop import BEST_CHECKPOINT, LAST_CHECKPOINT, ScalarWriter, Trainer, Validator
from .pretrain import run_baseline, run_pretrain
from .runtime import StopRequest
from .selftrain import begin_selftrain, run_selftrain

STAGE_DESCRIPTIONS = {
    "baseline": "labeled-only supervised training",
    "pretrain": "copy-paste pre-training on the labeled images",
    "selftrain": "Mean Teacher self-training with bidirectional copy-paste and the prototype head",
}

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
        log.info("setting up the network, the optimizer and the prototype ops")
        trainer = Trainer(config, run_dir, validate, writer, stop)
        if resume:
            trainer.load_state_dict(load_checkpoint(run_dir / LAST_CHECKPOINT, map_location=trainer.device))
            log.info("resuming %s at iteration %d", trainer.progress.stage, trainer.progress.iteration)
        log.info("training on %s with ops module %s", trainer.device, trainer.ops.__name__)
        if trainer.progress.stage == "baseline":
            _log_stage(trainer, config.pretrain.iterations + config.selftrain.iterations)
            run_baseline(trainer)
        if trainer.progress.stage == "pretrain":
            _log_stage(trainer, config.pretrain.iterations)
            run_pretrain(trainer)
            _initialize_prototypes(trainer)
        if trainer.progress.stage == "selftrain":
            _log_stage(trainer, config.selftrain.iterations)
            run_selftrain(trainer)
        log.info("training finished; best validation Dice %.4f at %s iteration %d",
                 trainer.progress.best_score, trainer.progress.stage, trainer.progress.best_iteration)
    return run_dir / BEST_CHECKPOINT


def _log_stage(trainer: Trainer, iterations: int) -> None:
    progress = trainer.progress
    start = f"from iteration {progress.iteration}" if progress.iteration else "from the start"
    log.info("stage %s (%s): %d iterations, %s", progress.stage, STAGE_DESCRIPTIONS[progress.stage],
             iterations, start)


def _initialize_prototypes(trainer: Trainer) -> None:
    """:func:`begin_selftrain` (k-means prototype init from the best pre-trained weights), logged."""
    prototypes = trainer.config.prototypes
    log.info("pre-training done (best validation Dice %.4f at iteration %d); initialising the prototype "
             "bank by k-means (%d per class, %d iterations, at most %d voxels per class) on the labeled images",
             trainer.progress.best_score, trainer.progress.best_iteration, prototypes.per_class,
             prototypes.kmeans_iterations, prototypes.kmeans_max_voxels)
    start = time.perf_counter()
    begin_selftrain(trainer)
    bank = trainer.bank.prototypes
    log.info("prototype bank ready: %d x %d (classes x prototypes) of dimension %d, in %.1f s",
             trainer.config.num_classes, prototypes.per_class, bank.shape[1], time.perf_counter() - start)
