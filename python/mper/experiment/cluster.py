"""Runs as cluster jobs through submitit (``pip install mper[cluster]``).

Each run is one job. A job that reaches its time limit is requeued by submitit (the
job is :class:`submitit.helpers.Checkpointable`); the requeued job resumes the run from
its last checkpoint, as every job does that finds one in its folder. The sweep waits for
its jobs unless ``ClusterOptions.wait`` is off; run it again later to collect the table.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import submitit

from .executors import ClusterOptions, Failure
from .plan import Cell
from .runs import run_cell

log = logging.getLogger(__name__)

JOB_NAME = "mper"


class RunJob(submitit.helpers.Checkpointable):
    """A cluster job that trains (or resumes) one run; requeued at its time limit."""

    def __call__(self, cell: Cell, device: str | None) -> str:
        return str(run_cell(cell, device))


def submit_and_wait(
    cells: Sequence[Cell], folder: Path, cluster: str, options: ClusterOptions, device: str | None
) -> list[Failure]:
    """Submit one job per run with submitit's ``AutoExecutor``; wait for them when
    ``options.wait``; return the runs whose job failed."""
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    executor.update_parameters(
        name=JOB_NAME,
        timeout_min=options.time_minutes,
        gpus_per_node=options.gpus_per_job,
        cpus_per_task=options.cpus_per_job,
        mem_gb=options.memory_gb,
        slurm_partition=options.partition,
        slurm_account=options.account,
    )
    jobs = [(cell, executor.submit(RunJob(), cell, device)) for cell in cells]
    for cell, job in jobs:
        log.info("submitted job %s: %s -> %s", job.job_id, cell.name, cell.run_dir)
    if not options.wait:
        return []
    failures = []
    for cell, job in jobs:
        try:
            job.result()
        except Exception as error:  # a failed job must not hide the others' results
            log.error("job %s (%s) failed: %s", job.job_id, cell.name, error)
            failures.append(Failure(cell, f"job {job.job_id} failed (see {job.paths.stderr})"))
    return failures
