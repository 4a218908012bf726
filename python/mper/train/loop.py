"""The state of a training run and the loop every stage shares.

A :class:`Trainer` holds the student, the teacher and the prototype head
(:class:`~mper.nn.PrototypeHead`; self-training only), the optimizer, the copy-paste
mask generator and the :class:`StageProgress`.
:meth:`Trainer.run_stage` drives one stage: learning-rate schedule, one step function
per iteration, TensorBoard scalars, validation with best-checkpoint keeping, periodic
resume checkpoints and the Ctrl-C / SIGTERM stop. A NaN or infinite loss, or weights
that became non-finite, stop the run with :class:`~mper.errors.TrainingDiverged`
before anything non-finite is saved, so the checkpoints on disk stay the last good ones.

Exact resume: the batch sequence is a function of (seed, iteration) (see
:mod:`mper.train.loaders`), and the checkpoint holds every other source of randomness
(the global RNG that drives dropout, the mask generator), so a resumed run repeats the
uninterrupted one bit for bit on the CPU. On CUDA it repeats it up to the run-to-run
rounding differences of GPU kernels that sum in parallel.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from mper.data.sampler import endless_batches
from mper.data.scan_plan import plan_text
from mper.datasets import get_dataset
from mper.errors import TrainingDiverged
from mper.nn import PrototypeHead

from . import distributed
from .checkpoint import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    PRETRAIN_CHECKPOINT,
    capture_rng_state,
    non_finite_tensors,
    restore_rng_state,
    save_checkpoint,
)
from .compiled import StepCompiler, memory_format
from .config import OptimConfig, TrainConfig, training_stages
from .diagnostics import TRAINING_RECORD, SelfTrainingMonitor, TrainingRecord
from .runtime import StopRequest, TrainingInterrupted, autocast, load_ops, resolve_device, sync_debug, sync_debug_mode
from .slowdown import SlowdownWatch
from .teacher import create_teacher
from .usage import USAGE_WINDOW, PrototypeUsage

log = logging.getLogger(__name__)

#: A validation function: network -> mean Dice on the validation cases.
Validator = Callable[[nn.Module], float]
#: A logged value: a 0-dim tensor the step leaves on the device, or a number.
Scalar = torch.Tensor | float
#: One training iteration: (batch, iteration within the stage) -> scalars to log.
StepFunction = Callable[[dict[str, Any], int], dict[str, Scalar]]


class ScalarWriter(Protocol):
    """What the loop needs of a TensorBoard ``SummaryWriter``."""

    def add_scalar(self, tag: str, scalar_value: float, global_step: int) -> None: ...


@dataclass
class StageProgress:
    """Where a run stands: ``stage`` is ``pretrain``, ``selftrain`` or ``baseline``;
    ``iteration`` counts the stage's finished iterations."""

    stage: str
    iteration: int = 0
    best_score: float = -math.inf
    best_iteration: int = -1


class ScalarWindow:
    """The logged scalars of the iterations since the last read, the time the loop
    waited for their batches and the time they took (validation and checkpoints aside).

    The steps leave their losses on the device; :meth:`read` copies all of them to the
    host at once, so the loop synchronises with the device once per window, not once per
    iteration.
    """

    def __init__(self) -> None:
        self._restart()

    def _restart(self) -> None:
        self.rows: list[tuple[int, dict[str, Scalar]]] = []
        self.data_wait = self.busy = 0.0

    def add(self, iteration: int, scalars: dict[str, Scalar]) -> None:
        self.rows.append((iteration, scalars))

    def read(self) -> tuple[list[tuple[int, dict[str, float]]], dict[str, float]]:
        """(iteration, scalars as numbers) per iteration, and the window's timing
        (``data_wait_ms`` and ``iteration_ms`` per iteration); then starts a new window."""
        began = time.perf_counter()
        on_device = [value for _, scalars in self.rows for value in scalars.values() if isinstance(value, torch.Tensor)]
        numbers = iter(torch.stack([value.float() for value in on_device]).tolist() if on_device else [])
        self.busy += time.perf_counter() - began  # the wait for the device's queue to drain
        rows = [
            (
                iteration,
                {
                    name: next(numbers) if isinstance(value, torch.Tensor) else float(value)
                    for name, value in scalars.items()
                },
            )
            for iteration, scalars in self.rows
        ]
        count = max(len(rows), 1)
        timing = {"data_wait_ms": 1e3 * self.data_wait / count, "iteration_ms": 1e3 * self.busy / count}
        self._restart()
        return rows, timing


def learning_rate(optim: OptimConfig, iteration: int) -> float:
    """``lr * lr_gamma ** (iteration // lr_step)``, or ``lr`` when ``lr_step`` is 0."""
    if optim.lr_step <= 0:
        return optim.lr
    return optim.lr * optim.lr_gamma ** (iteration // optim.lr_step)


class Trainer:
    """Networks, optimizer and progress of one run, with checkpointing."""

    def __init__(
        self,
        config: TrainConfig,
        run_dir: str | Path,
        validate: Validator,
        writer: ScalarWriter | None = None,
        stop: StopRequest | None = None,
        trained_cases: Sequence[str] | None = None,
    ):
        self.config = config
        # kept in every checkpoint: mper-eval refuses to score a case the network learnt from
        self.trained_cases = None if trained_cases is None else list(trained_cases)
        self.run_dir = Path(run_dir)
        self.validate = validate
        self.writer = writer
        self.stop = stop or StopRequest()
        self.device = resolve_device(config.device)
        self.ops = load_ops(config.ops)
        autocast(self.device, config.amp)  # refuses bf16 off CUDA before any work is done
        torch.manual_seed(config.seed)
        dataset = get_dataset(config.dataset)
        # kept in every checkpoint: the run folder's plan.toml, which prediction reads, is checked against it
        self.scan_plan = None if dataset.scans is None else plan_text(dataset.scans, config.data_root)
        self.student = dataset.build_network(config.num_classes, **config.network).to(self.device)
        self.memory_format = memory_format(self.student, config.channels_last)
        if config.channels_last:
            self.student.to(memory_format=self.memory_format)  # type: ignore[call-overload]  # accepted, not in the stubs
        self.compiled = StepCompiler(config.compile)
        # the training forward: under torch.distributed the student wrapped for data parallelism
        self.network = distributed.data_parallel(self.student, config.distributed.sync_batchnorm, self.device)
        distributed.seed_process(config.seed)
        self.teacher: nn.Module | None = None
        self.head: PrototypeHead | None = None
        self.usage: PrototypeUsage | None = None
        self.optimizer = self.new_optimizer()
        self.mix_generator = torch.Generator().manual_seed(config.seed)
        self.progress = StageProgress(training_stages(config)[0])
        self.monitor = SelfTrainingMonitor(config.num_classes, self.device)
        self.record = TrainingRecord()
        self.interval_losses: list[float] = []  # since the last validation
        # how each start or resume ran (see distributed.session_record), with where it began
        self.sessions: list[dict[str, Any]] = []
        self.timing: dict[str, float] = {}  # the last window's data wait and iteration time
        self.slowdown = SlowdownWatch(self.device)

    def new_optimizer(self) -> torch.optim.SGD:
        """A fresh SGD optimizer over the student's parameters (one per stage, as in BCP)."""
        optim = self.config.optim
        return torch.optim.SGD(
            self.student.parameters(), lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay
        )

    def images_on_device(self, images: torch.Tensor) -> torch.Tensor:
        """A batch of images ``(B, channels, *S)`` on the training device, in the networks'
        memory format."""
        return images.to(self.device, non_blocking=True, memory_format=self.memory_format)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The mixed-precision context of the configured ``amp`` mode."""
        return autocast(self.device, self.config.amp)

    def optimize(self, loss: torch.Tensor) -> None:
        """One SGD step on ``loss``; under torch.distributed, process 0's batch-norm
        statistics then go to every process (:func:`~mper.train.distributed.broadcast_buffers_`)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        distributed.broadcast_buffers_(self.student)

    def begin_stage(self, stage: str) -> None:
        """Start ``stage`` at iteration 0 with a fresh optimizer."""
        self.optimizer = self.new_optimizer()
        self.progress = StageProgress(stage)
        self.slowdown = SlowdownWatch(self.device)

    def state_dict(self) -> dict[str, Any]:
        """Everything :meth:`load_state_dict` needs to continue exactly."""
        monitor = self.monitor.state_dict()
        usage = None if self.usage is None else self.usage.state_dict()
        # the open intervals of every process (state dicts hold copies)
        distributed.sum_over_processes_(*monitor.values(), *([usage["current"]] if usage else []))
        return {
            "config": self.config.to_dict(),
            "scan_plan": self.scan_plan,
            "trained_cases": self.trained_cases,
            "progress": dataclasses.asdict(self.progress),
            "student": self.student.state_dict(),
            "teacher": None if self.teacher is None else self.teacher.state_dict(),
            "bank": None if self.head is None else self.head.state_dict(),
            "prototype_usage": usage,
            "optimizer": self.optimizer.state_dict(),
            "mix_generator": self.mix_generator.get_state(),
            "rng": capture_rng_state(),
            "process_rng": distributed.gather_from_processes(capture_rng_state()),
            "monitor": monitor,
            "record": self.record.state_dict(),
            "interval_losses": list(self.interval_losses),
            "sessions": list(self.sessions),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state written by :meth:`state_dict` (from any device)."""
        self.progress = StageProgress(**state["progress"])
        self.student.load_state_dict(state["student"])
        if state["teacher"] is not None:
            self.teacher = create_teacher(self.student, self.config.selftrain.teacher_mode)
            self.teacher.load_state_dict(state["teacher"])
            self.head = self.new_head()
            self.head.load_state_dict(state["bank"])
            if state["prototype_usage"] is not None:  # begun on first use: None before the first iteration
                self.prototype_usage().load_state_dict(state["prototype_usage"])
        self.optimizer = self.new_optimizer()
        self.optimizer.load_state_dict(state["optimizer"])
        self.mix_generator.set_state(state["mix_generator"])
        self._restore_rng(state)
        self.monitor.load_state_dict(state["monitor"])
        if not distributed.current_world().is_main:  # process 0 holds the counts of all
            self.monitor.reset()
            if self.usage is not None:
                self.usage.current.zero_()
        self.record.load_state_dict(state["record"])
        self.interval_losses = list(state["interval_losses"])
        self.sessions = list(state["sessions"])

    def _restore_rng(self, state: dict[str, Any]) -> None:
        """Each process's own RNG state when the run saved as many processes; else
        process 0 takes the first and the others start streams of their own."""
        world, saved = distributed.current_world(), state["process_rng"]
        if len(saved) == world.size:
            restore_rng_state(saved[world.rank])
            return
        log.info(
            "resuming on %d process(es) a run saved by %d: dropout draws new random streams", world.size, len(saved)
        )
        restore_rng_state(saved[0])
        distributed.seed_process(self.config.seed + self.progress.iteration)

    def begin_session(self) -> dict[str, Any]:
        """Record how this start or resume runs (processes, backend, device) and where in
        the run it begins; returns the record."""
        session = {
            **distributed.session_record(self.device),
            "stage": self.progress.stage,
            "iteration": self.progress.iteration,
        }
        self.sessions.append(session)
        return session

    def prototype_head(self) -> PrototypeHead:
        """The prototype head; it exists once self-training has begun."""
        if self.head is None:
            raise RuntimeError("the prototype head exists only once self-training has begun")
        return self.head

    def teacher_network(self) -> nn.Module:
        """The teacher; it exists once self-training has begun."""
        if self.teacher is None:
            raise RuntimeError("the teacher exists only once self-training has begun")
        return self.teacher

    def prototype_usage(self) -> PrototypeUsage:
        """The usage count of the prototypes, begun empty on first use."""
        if self.usage is None:
            self.usage = self.new_usage()
        return self.usage

    def new_head(self) -> PrototypeHead:
        """A prototype head of the configured shape and settings, with an all-zero bank, on
        the training device."""
        config, prototypes = self.config, self.config.prototypes
        head = PrototypeHead(
            config.num_classes,
            prototypes.per_class,
            self.student.feature_dim,
            prototypes.tau,
            prototypes.nce_tau,
            prototypes.contrastive_ignore_row,
            config.ops,
        )
        return head.to(self.device)

    def new_usage(self) -> PrototypeUsage:
        """An empty usage count for the bank, in windows of :data:`~mper.train.usage.USAGE_WINDOW`
        iterations (the whole self-training when shorter)."""
        window = min(USAGE_WINDOW, self.config.selftrain.iterations)
        return PrototypeUsage(self.config.num_classes, self.config.prototypes.per_class, window, self.device)

    def save_last(self) -> Path:
        """Write the resume checkpoint ``last.pt`` (process 0; every process takes part)."""
        state, path = self._finite_state(), self.run_dir / LAST_CHECKPOINT
        return save_checkpoint(path, state) if distributed.is_main_process() else path

    def _finite_state(self) -> dict[str, Any]:
        """:meth:`state_dict`, refused with :class:`TrainingDiverged` if any weight is
        NaN or infinite (such a state must never replace a good checkpoint)."""
        state = self.state_dict()
        bad = non_finite_tensors({key: state[key] for key in ("student", "teacher", "bank")})
        if bad:
            self._diverged(f"{len(bad)} tensor(s) hold NaN or infinite values, e.g. {bad[0]}")
        return state

    def _diverged(self, what: str, iteration: int | None = None) -> None:
        """Stop the run; ``iteration``: where it went wrong, when before the current one."""
        progress = self.progress
        at = progress.iteration if iteration is None else iteration
        saved = [
            name for name in (LAST_CHECKPOINT, PRETRAIN_CHECKPOINT, BEST_CHECKPOINT) if (self.run_dir / name).exists()
        ]
        kept = (
            f"so the checkpoints in {self.run_dir} ({', '.join(saved)}) are the last good ones"
            if saved
            else f"before its first checkpoint; {self.run_dir} keeps its settings and train.log"
        )
        raise TrainingDiverged(
            f"{progress.stage} iteration {at}: {what}; training stopped without saving this state, {kept}. "
            "Start a new run with a lower optim.lr, or check the data"
        )

    def best_checkpoint(self) -> Path:
        """Where the current stage keeps its best weights."""
        name = PRETRAIN_CHECKPOINT if self.progress.stage == "pretrain" else BEST_CHECKPOINT
        return self.run_dir / name

    def save_best(self, selected_stage: str | None = None) -> None:
        """Write the current weights as the stage's best checkpoint; ``selected_stage``
        names the stage they come from when it is not the current one."""
        if self.progress.stage != "pretrain":
            self.record.selected_stage = selected_stage or self.progress.stage
        state = self._finite_state()
        keep: tuple[str, ...] = ("config", "scan_plan", "trained_cases", "progress", "student", "teacher", "bank")
        if self.progress.stage == "pretrain":
            keep += ("optimizer",)  # self-training may start from it (optim.carry_over)
        if distributed.is_main_process():
            save_checkpoint(self.best_checkpoint(), {key: state[key] for key in keep})

    def _validate(self, mean_loss: float) -> None:
        progress = self.progress
        score = float(self.validate(self.student))
        if score > progress.best_score:
            progress.best_score, progress.best_iteration = score, progress.iteration
            self.save_best()
        scalars = {"val_dice": score, **self._diagnostics()}
        self._write_scalars(scalars)
        self.record.add(progress.stage, progress.iteration, {"mean_loss": mean_loss, **scalars})
        if distributed.is_main_process():
            self.record.write(self.run_dir / TRAINING_RECORD)
        best_at = "pre-training" if progress.best_iteration < 0 else f"iteration {progress.best_iteration}"
        log.info(
            "%s iteration %d: mean loss %.4f, validation Dice %.4f (best %.4f at %s)%s%s",
            progress.stage,
            progress.iteration,
            mean_loss,
            score,
            progress.best_score,
            best_at,
            "".join(f", {name} {value:.4f}" for name, value in scalars.items() if name != "val_dice"),
            "; waited {data_wait_ms:.1f} ms for data per {iteration_ms:.1f} ms iteration".format(**self.timing)
            if self.timing
            else "",
        )

    def _diagnostics(self) -> dict[str, float]:
        """Self-training's interval summary and the teacher's validation Dice
        (see :mod:`mper.train.diagnostics`); nothing in the supervised stages."""
        if self.teacher is None:
            return {}
        distributed.sum_over_processes_(self.monitor.confusion, self.monitor.counts)
        scalars = self.monitor.summary()
        if self.config.eval.teacher_dice:
            scalars["teacher_val_dice"] = float(self.validate(self.teacher))
        return scalars

    def _write_scalars(self, scalars: dict[str, float], iteration: int | None = None) -> None:
        if self.writer is None:
            return
        for name, value in scalars.items():
            self.writer.add_scalar(
                f"{self.progress.stage}/{name}", value, self.progress.iteration if iteration is None else iteration
            )

    def _read_window(self, window: ScalarWindow, bar: tqdm) -> bool:
        """Bring the window's scalars to the host, over the global batch: stop on a
        non-finite loss, log them. Returns whether any process was asked to stop."""
        rows, timing = window.read()
        rows, stop = distributed.average_rows(rows, self.stop.requested)
        for iteration, scalars in rows:
            if not math.isfinite(scalars["loss"]):
                self._diverged(f"the loss is {scalars['loss']}", iteration)
            self.interval_losses.append(scalars["loss"])
            self._write_scalars(scalars, iteration)
        if rows:
            self._write_scalars(timing)
            self.timing = timing
            hint = self.slowdown.add(timing["iteration_ms"])
            if hint:
                log.warning(hint)
            best = self.progress.best_score
            bar.set_postfix(loss=f"{rows[-1][1]['loss']:.4f}", best=f"{best:.4f}" if math.isfinite(best) else "-")
        return stop

    def stopping_anywhere(self) -> bool:
        """Whether any process was asked to stop (one collective: every process calls it)."""
        return distributed.average_rows([], self.stop.requested)[1]

    def stop_if_requested(self) -> None:
        """Raise :class:`~mper.train.runtime.TrainingInterrupted` when any process was asked
        to stop after the last iteration looked (during its validation, say): ``last.pt``
        holds the finished training, and resuming evaluates it."""
        if self.stopping_anywhere():
            raise TrainingInterrupted(self.run_dir / LAST_CHECKPOINT, self.stop.signal_name)

    def run_stage(self, iterations: int, step: StepFunction, loader: DataLoader) -> None:
        """Run the current stage from its saved iteration up to ``iterations``.

        Raises :class:`~mper.train.runtime.TrainingInterrupted` after saving ``last.pt``
        when a stop was requested.
        """
        progress, schedule = self.progress, self.config.eval
        batches = endless_batches(loader, progress.iteration)
        window = ScalarWindow()
        bar = tqdm(
            total=iterations,
            initial=progress.iteration,
            desc=progress.stage,
            unit="it",
            disable=not distributed.is_main_process(),
        )
        alone = distributed.current_world().size == 1
        # on the CPU (gloo) the processes agree on a stop after every iteration, with an
        # all-reduce of one number; on GPUs where they read the losses back together,
        # since agreeing is a host read of the device
        agree_each_iteration = not alone and self.device.type == "cpu"
        first, sync_mode = progress.iteration, sync_debug_mode()
        # closing the batches stops the data workers however the stage ends: a stopped
        # stage's traceback would keep them alive, and the data workers ignore SIGTERM, so
        # multiprocessing's exit, which terminates them with SIGTERM and joins, would hang
        with bar, contextlib.closing(batches):
            while progress.iteration < iterations:
                lr = learning_rate(self.config.optim, progress.iteration)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                began = time.perf_counter()
                batch = next(batches)
                window.data_wait += time.perf_counter() - began
                with sync_debug(self.device, sync_mode if progress.iteration > first else "default"):
                    scalars = step(batch, progress.iteration)
                window.busy += time.perf_counter() - began
                if self.config.compile and progress.iteration == first:
                    log.info(
                        "torch.compile: the first %s iteration took %.1f s, compiling its steps",
                        progress.stage,
                        time.perf_counter() - began,
                    )
                if self.head is not None and self.config.distributed.check_bank:
                    distributed.assert_identical(self.head.prototypes, "prototype bank")
                progress.iteration += 1
                window.add(progress.iteration, {**scalars, "lr": lr})
                bar.update()
                validate = progress.iteration % schedule.val_interval == 0 or progress.iteration == iterations
                save = progress.iteration % schedule.checkpoint_interval == 0
                if alone:
                    stop = self.stop.requested
                else:
                    stop = agree_each_iteration and self.stopping_anywhere()
                if validate or save or stop or progress.iteration % schedule.log_interval == 0:
                    stop = self._read_window(window, bar)
                if validate:
                    self._validate(sum(self.interval_losses) / len(self.interval_losses))
                    self.interval_losses.clear()
                if stop:
                    raise TrainingInterrupted(self.save_last(), self.stop.signal_name)
                if save:
                    self.save_last()
        self._read_window(window, bar)
        self.save_last()
