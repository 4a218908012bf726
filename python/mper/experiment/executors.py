"""Where a plan's runs train.

* :class:`LocalExecutor`: one run at a time, in this process.
* :class:`DevicePoolExecutor`: one ``mper-train`` process per device at a time
  (``CUDA_VISIBLE_DEVICES`` set to that device), as many at once as devices.
* :class:`SubmititExecutor`: one cluster job per run through submitit (SLURM, or
  submitit's local executor); see :mod:`mper.experiment.cluster`.

Every executor returns the runs that failed, as :class:`Failure`; the others go on. A
Ctrl-C (or SIGTERM) stops the sweep: the running trainings save their state, and the
next call resumes them.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import torch

from mper.errors import ConfigError
from mper.host import sigterm_as_interrupt
from mper.pipeline import RUN_LOG

from .plan import Cell
from .runs import run_cell, train_arguments

log = logging.getLogger(__name__)

#: Runs ``mper-train`` with the arguments that follow, with the Python running the sweep.
TRAIN_ENTRY = "from mper.entry_points import train_main; train_main()"
POLL_SECONDS = 1.0
#: How long a stopped training process may take to save its state before it is killed.
STOP_GRACE_SECONDS = 600


@dataclass(frozen=True)
class Failure:
    """A run that ended in an error, and where to read why."""

    cell: Cell
    reason: str


class Executor(Protocol):
    """Trains the given runs; returns those that failed."""

    def run(self, cells: Sequence[Cell]) -> list[Failure]: ...


def train_command(arguments: Sequence[str]) -> list[str]:
    """The command line that runs ``mper-train`` with ``arguments``."""
    return [sys.executable, "-c", TRAIN_ENTRY, *arguments]


class LocalExecutor:
    """One run at a time, in this process, through :func:`mper.pipeline.train`."""

    def __init__(self, device: str | None = None):
        self.device = device

    @property
    def machine_device(self) -> str:
        """The device of this machine the runs train on, which the sweep checks before the first."""
        return self.device or "auto"

    def run(self, cells: Sequence[Cell]) -> list[Failure]:
        failures = []
        for position, cell in enumerate(cells, 1):
            log.info("run %d of %d: %s -> %s", position, len(cells), cell.name, cell.run_dir)
            try:
                run_cell(cell, self.device)
            except Exception as error:  # one failed run must not stop the sweep
                log.error("%s failed: %s", cell.name, error)
                failures.append(Failure(cell, f"{error}{_see_log(cell.run_dir / RUN_LOG)}"))
        return failures


def _see_log(path: Path) -> str:
    """`` (see <path>)`` for a failure message, or nothing when the run stopped before it
    wrote its log (a mistake refused before its folder was made)."""
    return f" (see {path})" if path.is_file() else ""


@dataclass
class _Running:
    cell: Cell
    process: subprocess.Popen
    output: IO[str]
    log_path: Path


def _named_here(device_id: str) -> str | None:
    """How this process names the GPU that a training process started with
    ``CUDA_VISIBLE_DEVICES=device_id`` trains on: ``cuda:<its index among the GPUs this
    process sees>``; None where this process's own ``CUDA_VISIBLE_DEVICES`` hides it."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return f"cuda:{device_id}"
    ids = [item.strip() for item in visible.split(",")]
    return f"cuda:{ids.index(device_id)}" if device_id in ids else None


class DevicePoolExecutor:
    """One training process per device, each seeing only its device (``CUDA_VISIBLE_DEVICES``).

    ``devices`` are the ids given to ``CUDA_VISIBLE_DEVICES``; ``device`` is what each
    process trains on (``cuda``: the one device it sees). The console output of each run
    goes to ``log_dir/<run>.log``.
    """

    def __init__(self, devices: Sequence[str], log_dir: str | Path, device: str = "cuda"):
        if not devices or len(set(devices)) != len(devices):
            raise ConfigError(f"--devices must list distinct device ids, e.g. 0,1,2,3; got {','.join(devices)}")
        self.devices, self.log_dir, self.device = list(devices), Path(log_dir), device

    @property
    def machine_device(self) -> str | list[str]:
        """The devices of this machine the runs train on, which the sweep checks before the
        first: on a GPU (``device`` ``cuda`` or ``auto``, with CUDA here) each of
        :attr:`devices` as this process names it (``cuda:ID``, or its place in this process's
        own ``CUDA_VISIBLE_DEVICES``; one that hides it goes unchecked), else ``device``."""
        if self.device not in ("auto", "cuda", "cuda:0") or not torch.cuda.is_available():
            return self.device
        return [name for name in map(_named_here, self.devices) if name is not None] or self.device

    def run(self, cells: Sequence[Cell]) -> list[Failure]:
        pending: deque[Cell] = deque(cells)
        running: dict[str, _Running] = {}
        failures: list[Failure] = []
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with sigterm_as_interrupt():  # SIGTERM stops the pool as Ctrl-C does, its trainings cleanly
            try:
                while pending or running:
                    for device in [device for device in self.devices if device not in running]:
                        if pending:
                            running[device] = self._start(pending.popleft(), device)
                    time.sleep(POLL_SECONDS)
                    for device, job in list(running.items()):
                        if job.process.poll() is not None:
                            failures += self._finish(running.pop(device))
            except KeyboardInterrupt:
                self._stop(running.values())
                raise
        return failures

    def _start(self, cell: Cell, device: str) -> _Running:
        command = train_command(train_arguments(cell, self.device))
        log_path = self.log_dir / f"{cell.key}.log"
        output = log_path.open("a")
        output.write(f"CUDA_VISIBLE_DEVICES={device} {shlex.join(command)}\n")
        output.flush()
        log.info("device %s: %s -> %s", device, cell.name, cell.run_dir)
        # its own session: a Ctrl-C reaches the process once, forwarded by _stop
        process = subprocess.Popen(
            command,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "CUDA_VISIBLE_DEVICES": device},
        )
        return _Running(cell, process, output, log_path)

    @staticmethod
    def _finish(job: _Running) -> list[Failure]:
        job.output.close()
        if job.process.returncode == 0:
            log.info("finished: %s", job.cell.name)
            return []
        log.error("%s failed (exit status %d), see %s", job.cell.name, job.process.returncode, job.log_path)
        return [Failure(job.cell, f"exit status {job.process.returncode} (see {job.log_path})")]

    @staticmethod
    def _stop(jobs: Any) -> None:
        """Ask every running training to save its state and stop, and wait for it."""
        jobs = list(jobs)
        for job in jobs:
            job.process.send_signal(signal.SIGINT)
        for job in jobs:
            try:
                job.process.wait(timeout=STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                job.process.kill()
            job.output.close()


@dataclass
class ClusterOptions:
    """Resources of each cluster job (see ``mper-experiment --help``)."""

    partition: str | None = None
    time_minutes: int = 24 * 60
    gpus_per_job: int = 1
    cpus_per_job: int = 8
    memory_gb: int | None = None
    account: str | None = None
    wait: bool = True


class SubmititExecutor:
    """One job per run through submitit: ``cluster`` is ``"slurm"``, or ``"local"``
    (submitit's local executor, which runs the jobs as processes on this machine).
    Job files and logs go to ``folder``."""

    def __init__(
        self,
        folder: str | Path,
        cluster: str = "slurm",
        options: ClusterOptions | None = None,
        device: str | None = None,
    ):
        self.folder, self.cluster, self.device = Path(folder), cluster, device
        self.options = options or ClusterOptions()

    def run(self, cells: Sequence[Cell]) -> list[Failure]:
        try:
            from .cluster import submit_and_wait
        except ImportError as error:
            if error.name != "submitit":
                raise
            raise ConfigError("the cluster executor needs submitit: pip install 'mper[cluster]'") from error
        return submit_and_wait(cells, self.folder, self.cluster, self.options, self.device)
