"""Data-parallel training on several processes, as started by ``torchrun``.

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in each process it starts
(and ``MASTER_ADDR`` / ``MASTER_PORT`` for the rendezvous). With ``WORLD_SIZE`` above 1,
:func:`process_group` joins the processes into one ``torch.distributed`` group: NCCL
with one GPU per process (``cuda:LOCAL_RANK``) on CUDA, gloo on the CPU. Then

* every process trains the same student, wrapped in ``DistributedDataParallel`` (its
  gradients averaged over the processes); the teacher follows the unwrapped student;
* each process takes an equal share of every batch (see
  :class:`~mper.data.sampler.TwoStreamBatchSampler`), so the global batch is the
  preset's whatever the number of processes, and the union of the shares is the batch
  one process would draw;
* with ``distributed.sync_batchnorm`` batch norm normalises with the statistics of the
  global batch (:class:`torch.nn.SyncBatchNorm` on CUDA,
  :class:`~mper.nn.parallel.CrossProcessBatchNorm` on the CPU, where PyTorch's runs
  only on GPUs). Together with the pooled Dice loss and the prototype bank, whose sums
  are reduced over the processes, an iteration on N processes computes what one
  process computes on the whole batch, up to the order of floating-point sums;
* the prototype bank is initialised by k-means on process 0 alone and broadcast;
  every update reduces its sums and counts first, so the banks stay bit-identical
  (``distributed.check_bank`` asserts it after every iteration);
* validation is sharded: each process scores its share of the validation cases and
  the scores are summed (:func:`shared_mean`);
* process 0 alone writes the log, TensorBoard, checkpoints and reports.

Every collective is entered by every process in the same order. When one process
dies, the others fail in their next collective (at once with gloo, after
``distributed.timeout`` seconds at most with NCCL) and stop with
:class:`ProcessGroupFailure`; checkpoints are written atomically, so the last one stays
whole. Everything here is a no-op in a single process, unless ``distributed.force_group``
makes it join a group of its own: then the same code runs as on several processes
(each collective over one process), which checks that code, NCCL's included, on one GPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mper.errors import ConfigError, UserError
from mper.nn.parallel import CrossProcessBatchNorm, grouped

from .config import TrainConfig
from .runtime import TrainingInterrupted

T = TypeVar("T")
log = logging.getLogger(__name__)

#: Scalars of a training step that are counts over the batch: summed over the
#: processes, not averaged.
SUMMED_SCALARS = frozenset({"bank_update_voxels"})
#: Words by which the gloo and NCCL backends say that a peer is gone or silent.
_LOST_PEER_WORDS = ("gloo", "nccl", "connection", "timed out", "timeout", "socket", "peer")


class ProcessGroupFailure(UserError):
    """Another training process died or stopped answering; this one stopped too."""


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Process 0, the one that writes files."""
        return self.rank == 0


def launched_world(environ: dict[str, str] | None = None) -> World:
    """The processes ``torchrun`` started, from its environment variables (one process
    without them)."""
    environ = dict(os.environ if environ is None else environ)
    if "WORLD_SIZE" not in environ:
        return World()
    try:
        world = World(int(environ["RANK"]), int(environ["WORLD_SIZE"]), int(environ.get("LOCAL_RANK", "0")))
    except (KeyError, ValueError) as error:
        raise ConfigError(
            f"RANK, WORLD_SIZE and LOCAL_RANK must be integers set by torchrun ({error}); start "
            "several processes with `torchrun --nproc-per-node N $(command -v mper-train) ...`"
        ) from error
    if not 0 <= world.rank < world.size:
        raise ConfigError(f"RANK={world.rank} is outside WORLD_SIZE={world.size}; start the processes with torchrun")
    return world


def current_world() -> World:
    """This process's place in the initialised process group (one process without it)."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def processes_on_this_machine() -> int:
    """How many training processes run on this machine: torchrun's ``LOCAL_WORLD_SIZE``, else one."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def session_record(device: torch.device) -> dict[str, Any]:
    """How this session of training runs: ``processes`` (the world size), how many of them
    run on this machine (``processes_per_machine``, torchrun's ``LOCAL_WORLD_SIZE``), the
    collective ``backend`` (``"none"`` in a single process) and process 0's ``device``."""
    world = current_world()
    return {
        "processes": world.size,
        "processes_per_machine": processes_on_this_machine() if world.size > 1 else 1,
        "backend": dist.get_backend() if world.size > 1 else "none",
        "device": str(device),
    }


def describe_session(session: dict[str, Any]) -> str:
    """A :func:`session_record` in words, for the log."""
    if session["processes"] == 1:
        return f"1 training process on {session['device']} (no data parallelism)"
    return (
        f"data parallel: {session['processes']} training processes ({session['processes_per_machine']} on this "
        f"machine), {session['backend']} backend, process 0 on {session['device']}"
    )


def is_main_process() -> bool:
    """Whether this process writes the run's files (always true in a single process)."""
    return current_world().is_main and launched_world().is_main


def check_batch_shares(config: TrainConfig, processes: int) -> None:
    """Each process takes an equal part of both halves of the labeled and of the
    unlabeled batch (copy-paste pairs the halves), so the half must split evenly."""
    half = config.data.labeled_batch_size // 2
    if half % processes:
        raise ConfigError(
            f"data.labeled_batch_size = {config.data.labeled_batch_size} cannot be shared by {processes} "
            f"processes: each takes an equal part of both halves, so data.labeled_batch_size must be a "
            f"multiple of {2 * processes} (and data.batch_size twice it); change the number of processes "
            "or the batch sizes"
        )


def process_device(device: str, world: World) -> str:
    """The device of this process: ``cuda:LOCAL_RANK`` on CUDA (``auto`` or ``cuda``),
    else the CPU."""
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return "cpu"
    if device not in ("auto", "cuda"):
        raise ConfigError(
            f"device {device!r}: under torchrun each process takes the GPU of its local rank; "
            "pass --device cuda (or auto), and choose the GPUs with CUDA_VISIBLE_DEVICES"
        )
    if not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but CUDA is not available here; use --device cpu")
    if world.local_rank >= torch.cuda.device_count():
        raise ConfigError(
            f"local rank {world.local_rank} has no GPU: this machine has {torch.cuda.device_count()}; "
            "start at most that many processes per machine (--nproc-per-node)"
        )
    return f"cuda:{world.local_rank}"


@contextlib.contextmanager
def process_group(config: TrainConfig) -> Iterator[TrainConfig]:
    """Join the processes ``torchrun`` started for the duration of the block and yield
    ``config`` with this process's device; a single process gets ``config`` as it is
    (unless ``distributed.force_group``: then it joins a group of its own).

    Refuses batch sizes the processes cannot share before anything starts. Processes
    other than 0 log errors only. The group is destroyed at the end.
    """
    world = launched_world()
    if dist.is_initialized() or (world.size == 1 and not config.distributed.force_group):
        yield config
        return
    check_batch_shares(config, world.size)
    config = dataclasses.replace(config, device=process_device(config.device, world))
    backend = "nccl" if config.device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(torch.device(config.device))
    rendezvous: dict[str, Any] = {}
    if "MASTER_ADDR" not in os.environ:  # a process started on its own, in a group of its own
        rendezvous = {"store": dist.HashStore(), "rank": 0, "world_size": 1}
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=config.distributed.timeout), **rendezvous)
    package_log = logging.getLogger("mper")
    previous_level = package_log.level
    if not world.is_main:
        package_log.setLevel(logging.ERROR)
    try:
        yield config
        _leave_together()
    except TrainingInterrupted:  # a stop every process agreed on
        _leave_together()
        raise
    except RuntimeError as error:
        failure = lost_peer_failure(error)
        if failure is None:
            raise
        raise failure from error
    finally:
        package_log.setLevel(previous_level)
        dist.destroy_process_group()


def _leave_together() -> None:
    """Wait for every process before the group is torn down, so that none closes its
    connections while another still uses them (gloo can abort a process whose peer
    disconnects under it). Only where every process leaves at the same point (the run's end,
    an agreed stop); a peer that is gone already is no reason to fail the exit."""
    with contextlib.suppress(RuntimeError):
        dist.barrier()


def _first_sentence(error: RuntimeError) -> str:
    """The backend's message without its source location: ``[file:line] Text. More.`` -> ``Text``."""
    lines = str(error).strip().splitlines()
    text = re.sub(r"^\[[^\]]*\]\s*", "", lines[0]) if lines else ""
    return text.split(". ")[0].rstrip(".")[:300] or type(error).__name__


def lost_peer_failure(error: BaseException) -> ProcessGroupFailure | None:
    """What this process says when ``error`` tells that another training process died or
    stopped answering (``None`` for any other error): raised in one line instead of the
    communication library's traceback, and written to ``train.log`` too."""
    world = current_world()
    if world.size < 2 or not isinstance(error, RuntimeError) or not _is_lost_peer(error):
        return None  # alone, no peer can be lost: a "timed out" of CUDA or a data loader is its own error
    return ProcessGroupFailure(
        f"process {world.rank} of {world.size} stopped: another training process died or stopped "
        f"answering ({_first_sentence(error)}); that process's own error, if it printed one, says why. "
        "A run that has saved a checkpoint (last.pt in its run folder, the last complete one) continues "
        "with the same torchrun command and --resume --out RUN_DIR"
    )


def _is_lost_peer(error: RuntimeError) -> bool:
    text = str(error).lower()
    return isinstance(error, dist.DistError) or any(word in text for word in _LOST_PEER_WORDS)


def seed_process(seed: int) -> None:
    """Give each process its own stream of the global RNG (dropout), process 0 the
    single-process one."""
    rank = current_world().rank
    if rank:
        torch.manual_seed(int(np.random.SeedSequence([seed, rank]).generate_state(1)[0]))


def data_parallel(student: nn.Module, sync_batchnorm: bool, device: torch.device) -> nn.Module:
    """The module a training forward runs: ``student`` itself outside a process group, else
    ``student`` (its batch norms synchronised first when ``sync_batchnorm``) wrapped in
    ``DistributedDataParallel``. ``student`` stays the module to save, validate and
    follow with the teacher."""
    if not grouped():
        return student
    log.info(
        "training in DistributedDataParallel, %d process(es) in a %s group", current_world().size, dist.get_backend()
    )
    if sync_batchnorm and device.type == "cuda":
        nn.SyncBatchNorm.convert_sync_batchnorm(student)
    elif sync_batchnorm:
        CrossProcessBatchNorm.convert(student)
    device_ids = [device.index] if device.type == "cuda" else None
    wrapped = DistributedDataParallel(student, device_ids=device_ids)
    # DDP broadcasts the buffers before every forward, in place: before torch 2.13 that
    # fails the backward of a step with two forwards (selftrain.forward_passes = 2;
    # pytorch/pytorch#175024), so Trainer.optimize sends them after each step instead
    # (broadcast_buffers_). DDP still sends them once, here, as it wraps the student.
    wrapped.broadcast_buffers = False
    return wrapped


def broadcast_buffers_(module: nn.Module) -> None:
    """Process 0's buffers of ``module`` (batch norm's running statistics) to every
    process, in place, one collective per dtype; nothing outside a process group. After
    each optimizer step, so that between steps (validation, the teacher's EMA, the next
    forward) every process holds process 0's statistics, as DistributedDataParallel's
    own broadcast before every forward kept them."""
    if not grouped():
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for buffer in module.buffers():
        by_dtype.setdefault(buffer.dtype, []).append(buffer)
    with torch.no_grad():
        for buffers in by_dtype.values():
            flat = torch.cat([buffer.reshape(-1) for buffer in buffers])
            dist.broadcast(flat, src=0)
            if not current_world().is_main:
                for buffer, part in zip(buffers, flat.split([buffer.numel() for buffer in buffers])):
                    buffer.copy_(part.view_as(buffer))


def average_rows(
    rows: list[tuple[int, dict[str, float]]], stop: bool
) -> tuple[list[tuple[int, dict[str, float]]], bool]:
    """Steps' scalars, ``(iteration, scalars)`` per iteration, over the global batch
    (averaged, or summed for :data:`SUMMED_SCALARS`), and whether any process was asked
    to stop; one collective."""
    world = current_world()
    if not grouped():
        return rows, stop
    names = [sorted(scalars) for _, scalars in rows]
    values = torch.tensor(
        [scalars[name] for (_, scalars), row in zip(rows, names) for name in row] + [float(stop)], dtype=torch.float64
    )
    _all_reduce(values)
    reduced = iter(values.tolist())
    averaged = [
        (iteration, {name: next(reduced) / (1 if name in SUMMED_SCALARS else world.size) for name in row})
        for (iteration, _), row in zip(rows, names)
    ]
    return averaged, bool(values[-1] > 0)


def _all_reduce(tensor: torch.Tensor) -> None:
    """Sum ``tensor`` over the processes in place, through the backend's device."""
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else tensor.device
    on_device = tensor.to(device)
    dist.all_reduce(on_device)
    tensor.copy_(on_device)


def sum_over_processes_(*tensors: torch.Tensor) -> None:
    """Sum each tensor over the processes, in place (nothing outside a process group)."""
    if grouped():
        for tensor in tensors:
            _all_reduce(tensor)


def shared_mean(items: Sequence[T], mean_of: Callable[[Sequence[T]], float]) -> float:
    """The mean over ``items`` of a per-item score, each process scoring every
    ``size``-th item (``mean_of(share)`` is the mean over the share)."""
    world = current_world()
    if not grouped():
        return mean_of(items)
    share = items[world.rank :: world.size]
    total = torch.tensor([mean_of(share) * len(share) if share else 0.0], dtype=torch.float64)
    _all_reduce(total)
    return float(total) / len(items)


def assert_identical(tensor: torch.Tensor, what: str) -> None:
    """Raise on every process unless ``tensor`` is bit-identical on all of them."""
    if not grouped():
        return
    reference = tensor.detach().clone()
    dist.broadcast(reference, src=0)
    differs = torch.tensor([0.0 if torch.equal(reference, tensor) else 1.0], device=tensor.device)
    _all_reduce(differs)
    if float(differs) > 0:
        raise RuntimeError(f"the {what} differs between the training processes ({int(differs)} differ from process 0)")


def from_main_process(load: Callable[[], T]) -> T:
    """``load()`` run by process 0 alone and its result sent to every process (an error
    there is raised on every process), e.g. a checkpoint only process 0 may read yet."""
    world = current_world()
    if not grouped():
        return load()
    outcome: list[Any] = [None]
    if world.is_main:
        try:
            outcome[0] = ("value", load())
        except Exception as error:  # sent to every process, raised there and here
            outcome[0] = ("error", error)
    dist.broadcast_object_list(outcome, src=0)
    kind, value = outcome[0]
    if kind == "error":
        raise value
    return value


def gather_from_processes(value: T) -> list[T]:
    """``value`` of every process, by rank (``[value]`` outside a process group)."""
    world = current_world()
    if not grouped():
        return [value]
    gathered: list[Any] = [None] * world.size
    dist.all_gather_object(gathered, value)
    return gathered
