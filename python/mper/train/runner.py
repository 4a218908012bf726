"""A whole training run: pre-train, prototype init, self-train (or the baseline), with resume."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

import torch

from mper.datasets import get_dataset
from mper.errors import ConfigError
from mper.host import available_cores

from .checkpoint import BEST_CHECKPOINT, LAST_CHECKPOINT, load_checkpoint, remove_stale_temporaries
from .config import PrototypeConfig, TrainConfig, stage_iterations, with_prototypes
from .config_checks import ignored_holdout
from .diagnostics import TrainingRecord
from .distributed import (
    current_world,
    describe_session,
    from_main_process,
    is_main_process,
    processes_on_this_machine,
)
from .footprint import check_fits, iteration_memory
from .loaders import check_data, loader_workers, training_cases
from .loop import ScalarWriter, Trainer, Validator
from .pretrain import run_baseline, run_pretrain
from .resume import setting_changes
from .runtime import (
    RUN_LOG_ONLY,
    SYNC_DEBUG_VARIABLE,
    StopRequest,
    TrainingInterrupted,
    autocast,
    check_compile,
    load_ops,
    resolve_device,
    sync_debug_mode,
)
from .selftrain import begin_selftrain, run_selftrain
from .slowdown import contention_hint
from .teacher import slow_teacher_warning
from .usage import USAGE_FILE

STAGE_DESCRIPTIONS = {
    "baseline": "supervised training of the network alone (labeled-only or full baseline)",
    "pretrain": "copy-paste pre-training on the labeled images",
    "selftrain": "Mean Teacher self-training with bidirectional copy-paste and the prototype head",
    "selftrain-bcp": "Mean Teacher self-training with bidirectional copy-paste alone (BCP, no prototype head)",
}

log = logging.getLogger(__name__)


def check_run(config: TrainConfig) -> None:
    """Refuse, before anything is written or trained, what would fail later: what
    :func:`check_machine` refuses, and the data (see :func:`~mper.train.loaders.check_data`)."""
    check_machine(config)
    check_data(config)


def check_machine(config: TrainConfig) -> None:
    """Refuse what this machine cannot train as ``config`` says, without reading the data:
    the device, the ops module, mixed precision, torch.compile, the synchronisation check
    (:data:`~mper.train.runtime.SYNC_DEBUG_VARIABLE`), the network settings
    (:func:`check_network`), a patch too small for the network or an iteration too large
    for the device's memory (see :mod:`~mper.train.footprint`)."""
    device = resolve_device(config.device)
    autocast(device, config.amp)
    check_compile(device, config.compile)
    if sync_debug_mode() == "error" and device.type == "cuda" and current_world().size > 1:
        if config.distributed.sync_batchnorm:
            # torch.nn.SyncBatchNorm drops the statistics of empty shares with a boolean
            # mask, a host synchronisation in every batch norm of every training forward
            raise ConfigError(
                f"{SYNC_DEBUG_VARIABLE}=error cannot pass with distributed.sync_batchnorm = true on "
                f"{current_world().size} GPUs: PyTorch's SyncBatchNorm waits for the GPU in every batch "
                f"norm; set {SYNC_DEBUG_VARIABLE}=warn, or check on one GPU, or set distributed.sync_batchnorm=false"
            )
    load_ops(config.ops)
    check_network(config)
    check_fits(config, device, current_world().size, processes_on_this_machine())


def check_network(config: TrainConfig) -> None:
    """Refuse network settings (``config.network``) the dataset's network cannot be built
    with; builds it on the CPU, whatever the device."""
    try:
        get_dataset(config.dataset).build_network(config.num_classes, **config.network)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"the network settings {config.network} are not valid: {error}") from error


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
    device = resolve_device(config.device)
    # torch's data loader pins batches on the current CUDA device: make it the training
    # one, or --device cuda:1 also opens a context (memory) on cuda:0
    with StopRequest() as stop, torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        log.info("setting up the network, the optimizer and the prototype ops")
        labeled, unlabeled = training_cases(config)
        trainer = Trainer(config, run_dir, validate, writer, stop, trained_cases=labeled + unlabeled)
        if is_main_process():
            remove_stale_temporaries(run_dir)
        if resume:
            state = from_main_process(lambda: load_checkpoint(run_dir / LAST_CHECKPOINT))
            for name, (saved, given) in setting_changes(state["config"], config).items():
                log.info("resuming with %s = %r (was %r)", name, given, saved)
            trainer.load_state_dict(state)
            log.info("resuming %s at iteration %d", trainer.progress.stage, trainer.progress.iteration)
            _keep_best_written_after_last(trainer)
        log.info("training on %s with ops module %s", trainer.device, trainer.ops.__name__)
        log.info("%s", describe_session(trainer.begin_session()))
        _log_machine_needs(config, trainer.device)
        if trainer.progress.stage != "baseline":
            _warn_if_teacher_is_slow(config)
        if holdout_warning := ignored_holdout(config):
            log.warning(holdout_warning)
        try:
            _run_stages(trainer, run_dir)
        except TrainingInterrupted as stopped:
            log.info(
                "stopped by %s at %s iteration %d; the state is saved in %s",
                stopped.signal_name,
                trainer.progress.stage,
                trainer.progress.iteration,
                stopped.checkpoint,
                extra=RUN_LOG_ONLY,
            )
            raise
        log.info("training finished; %s", kept_network(trainer.record, trainer.progress.stage))
    return run_dir / BEST_CHECKPOINT


def _run_stages(trainer: Trainer, run_dir: Path) -> None:
    """The stages left to train, from the one ``trainer`` is in."""
    if trainer.progress.stage == "baseline":
        _log_stage(trainer)
        run_baseline(trainer)
    if trainer.progress.stage == "pretrain":
        _log_stage(trainer)
        run_pretrain(trainer)
        _initialize_prototypes(trainer)
    if trainer.progress.stage == "selftrain":
        _log_stage(trainer)
        run_selftrain(trainer)
        if trainer.usage is not None:  # BCP alone has no prototypes
            trainer.usage.write(run_dir / USAGE_FILE)
    trainer.stop_if_requested()


def _log_machine_needs(config: TrainConfig, device: torch.device) -> None:
    """The memory of an iteration (see :mod:`~mper.train.footprint`), the data loader
    workers when there are fewer cores than ``data.num_workers``, and on the CPU a machine
    too busy for the threads training runs (:func:`~mper.train.slowdown.contention_hint`)."""
    log.info("one training iteration needs about %s", iteration_memory(config, current_world().size).describe())
    workers = loader_workers(config)
    if workers < config.data.num_workers:
        log.warning(
            "data.num_workers = %d is more than the %d CPU core(s) this process may use; the data "
            "loaders start %d worker(s)",
            config.data.num_workers,
            available_cores(),
            workers,
        )
    if device.type == "cpu":
        hint = contention_hint(
            torch.get_num_threads(), processes_on_this_machine(), available_cores(), os.getloadavg()[0]
        )
        if hint:
            log.warning(hint)


def _keep_best_written_after_last(trainer: Trainer) -> None:
    """Take over the stage's best checkpoint when the session that stopped wrote it after
    ``last.pt`` (a validation between the last checkpoint and the stop): its network beat
    every one ``last.pt`` knows, and it replaced the one ``last.pt`` names as the best, so
    the resumed run records its validation and keeps it as the score to beat. Otherwise
    the log, ``training.json`` and the metrics would name a network ``best.pt`` no longer holds."""
    path, progress = trainer.best_checkpoint(), trainer.progress
    saved = from_main_process(lambda: load_checkpoint(path)["progress"] if path.is_file() else None)
    if saved is None or saved["stage"] != progress.stage or not saved["best_score"] > progress.best_score:
        return
    progress.best_score, progress.best_iteration = saved["best_score"], saved["best_iteration"]
    trainer.record.add(progress.stage, progress.best_iteration, {"val_dice": progress.best_score})
    if progress.stage == "selftrain":  # it beat the pre-trained network best.pt held before
        trainer.record.selected_stage = progress.stage
    log.info(
        "%s holds the network of %s iteration %d (validation Dice %.4f), validated after last.pt was written: kept "
        "as the best so far",
        path.name,
        progress.stage,
        progress.best_iteration,
        progress.best_score,
    )


def kept_network(record: TrainingRecord, last_stage: str) -> str:
    """Which network ``best.pt`` holds (stage, iteration, validation Dice) and, when no
    validation ever beat the run's first, that it never rose."""
    validations = [(stage, entry) for stage, entries in record.stages.items() for entry in entries]
    if not validations:
        return "no validation ran, so best.pt holds no selected network"
    stage = record.selected_stage or last_stage
    kept = record.best(stage) or record.best(last_stage)
    assert kept is not None
    held = (
        f"best.pt holds the network of {stage} iteration {kept['iteration']} (validation Dice {kept['val_dice']:.4f})"
    )
    first_stage, first = validations[0]
    if all(entry["val_dice"] <= first["val_dice"] for _, entry in validations):
        return (
            f"the validation Dice never rose above its first value ({first['val_dice']:.4f}, {first_stage} "
            f"iteration {first['iteration']}) in {len(validations)} validations: training did not improve the "
            f"network on the validation cases; {held}"
        )
    if stage != last_stage:
        return f"{last_stage} never beat {stage}, so {held}"
    return held


def _warn_if_teacher_is_slow(config: TrainConfig) -> None:
    """Said before training starts rather than once pre-training is over."""
    selftrain = config.selftrain
    warning = slow_teacher_warning(selftrain.ema_decay, selftrain.ema_schedule, selftrain.iterations)
    if warning:
        log.warning(warning)


def _log_stage(trainer: Trainer) -> None:
    progress = trainer.progress
    start = f"from iteration {progress.iteration}" if progress.iteration else "from the start"
    stage = progress.stage
    if stage == "selftrain" and not with_prototypes(trainer.config):
        stage = "selftrain-bcp"
    description = STAGE_DESCRIPTIONS[stage]
    iterations = stage_iterations(trainer.config, progress.stage)
    log.info("stage %s (%s): %d iterations, %s", progress.stage, description, iterations, start)


def kmeans_description(prototypes: PrototypeConfig) -> str:
    """How the bank is initialised, e.g. ``minibatch, 3 per class, every voxel of each class``."""
    parts = [prototypes.kmeans, f"{prototypes.per_class} per class"]
    if prototypes.kmeans == "lloyd":  # mini-batch k-means stops by itself
        parts.append(f"{prototypes.kmeans_iterations} iterations")
    cap = prototypes.kmeans_max_voxels
    parts.append(f"at most {cap} voxels per class" if cap else "every voxel of each class")
    return ", ".join(parts)


def _initialize_prototypes(trainer: Trainer) -> None:
    """:func:`begin_selftrain` (k-means prototype init from the best pre-trained weights), logged."""
    prototypes = trainer.config.prototypes
    if not with_prototypes(trainer.config):
        log.info(
            "pre-training done (best validation Dice %.4f at iteration %d); self-training starts from it",
            trainer.progress.best_score,
            trainer.progress.best_iteration,
        )
        begin_selftrain(trainer)
        return
    log.info(
        "pre-training done (best validation Dice %.4f at iteration %d); initialising the prototype "
        "bank by k-means (%s) on the labeled images",
        trainer.progress.best_score,
        trainer.progress.best_iteration,
        kmeans_description(prototypes),
    )
    start = time.perf_counter()
    begin_selftrain(trainer)
    bank = trainer.prototype_head().prototypes
    log.info(
        "prototype bank ready: %d x %d (classes x prototypes) of dimension %d, in %.1f s",
        trainer.config.num_classes,
        prototypes.per_class,
        bank.shape[1],
        time.perf_counter() - start,
    )
