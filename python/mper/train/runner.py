"""A whole training run: pre-train, prototype init, self-train (or the baseline), with resume."""
from __future__ import annotations

import logging
from pathlib import Path

from mper.errors import ConfigError
from mper.nets import build_network

from .checkpoint import load_checkpoint, remove_stale_temporaries
from .config import TrainConfig
from .loaders import check_data
from .loop import BEST_CHECKPOINT, LAST_CHECKPOINT, ScalarWriter, Trainer, Validator
from .pretrain import run_baseline, run_pretrain
from .resume import setting_changes
from .runtime import StopRequest, autocast, load_ops, resolve_device
from .selftrain import begin_selftrain, run_selftrain
from .usage import USAGE_FILE

log = logging.getLogger(__name__)


def check_run(config: TrainConfig) -> None:
    """Refuse, before anything is written or trained, what would fail later: the
    device, the ops module, mixed precision, the network settings and the data
    (see :func:`~mper.train.loaders.check_data`)."""
    autocast(resolve_device(config.device), config.amp)
    load_ops(config.ops)
    try:
        build_network(config.dataset, config.num_classes, **config.network)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"the network settings {config.network} are not valid: {error}") from error
    check_data(config)


def run_training(
    config: TrainConfig,
    run_dir: str | Path,
    validate: Validator,
    writer: ScalarWriter | None = None,
    resume: bool = False,
) -> Path:
    """Train as ``config`` says and return the path of the best checkpoint.

    With ``resume``, continue from ``run_dir/last.pt`` (a finished run returns at once),
    logging the settings that differ from the saved ones. The first Ctrl-C or SIGTERM
    saves ``last.pt`` after the current iteration and raises
    :class:`~mper.train.runtime.TrainingInterrupted`.
    """
    run_dir = Path(run_dir)
    with StopRequest() as stop:
        trainer = Trainer(config, run_dir, validate, writer, stop)
        remove_stale_temporaries(run_dir)
        if resume:
            state = load_checkpoint(run_dir / LAST_CHECKPOINT)
            for name, (saved, given) in setting_changes(state["config"], config).items():
                log.info("resuming with %s = %r (was %r)", name, given, saved)
            trainer.load_state_dict(state)
            log.info("resuming %s at iteration %d", trainer.progress.stage, trainer.progress.iteration)
        log.info("training on %s with ops module %s", trainer.device, trainer.ops.__name__)
        if trainer.progress.stage == "baseline":
            run_baseline(trainer)
        if trainer.progress.stage == "pretrain":
            run_pretrain(trainer)
            begin_selftrain(trainer)
        if trainer.progress.stage == "selftrain":
            run_selftrain(trainer)
            if trainer.usage is not None:  # BCP alone has no prototypes
                trainer.usage.write(run_dir / USAGE_FILE)
    return run_dir / BEST_CHECKPOINT
