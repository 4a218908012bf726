"""Where each run of a plan stands, and running one run.

A run folder is *finished* once its ``metrics.json`` is written (training and the test
evaluation done), *interrupted* when it holds a ``last.pt`` but no metrics (it is
resumed with :func:`mper.pipeline.resume`), and *new* otherwise. A folder that holds a
run of other settings than the plan asks for is refused rather than counted.
"""

from __future__ import annotations

import json
from pathlib import Path

from mper import pipeline
from mper.errors import UserError
from mper.eval.report import METRICS_FILE
from mper.train.checkpoint import LAST_CHECKPOINT
from mper.train.resume import setting_changes

from .plan import Cell, PlanError

FINISHED, INTERRUPTED, NEW = "finished", "interrupted", "new"
#: Settings a plan's run may differ in from the run in its folder: where it runs and reads,
#: and the identity the run drew when it started.
FREE_SETTINGS = ("out", "device", "data_root", "data.num_workers", "run_id")


def run_state(run_dir: Path) -> str:
    """:data:`FINISHED`, :data:`INTERRUPTED` or :data:`NEW`."""
    if (run_dir / METRICS_FILE).exists():
        return FINISHED
    if (run_dir / LAST_CHECKPOINT).exists():
        return INTERRUPTED
    return NEW


def check_folder(cell: Cell) -> str:
    """The state of ``cell``'s folder; raises :class:`PlanError` when the folder holds a
    run whose settings differ from the plan's (other than :data:`FREE_SETTINGS`)."""
    state = run_state(cell.run_dir)
    saved = cell.run_dir / pipeline.RUN_CONFIG_JSON
    if state == NEW or not saved.exists():
        return state
    config = cell.config()
    changes = setting_changes(json.loads(saved.read_text()), config)
    different = {name: values for name, values in changes.items() if name not in FREE_SETTINGS}
    if different:
        name, (before, wanted) = next(iter(different.items()))
        raise PlanError(
            f"{cell.run_dir} holds a run with {name} = {before!r} but the plan asks for {wanted!r} "
            f"({cell.name}); move that folder away or give the experiment another --out"
        )
    trained_root = str(changes.get("data_root", ("", ""))[0] or "")
    if trained_root and Path(cell.data_root).is_dir():
        # a moved or copied data folder is the same data; other data (another split, more cases)
        # would have the run's scores reported, or its training resumed, as the plan's
        try:
            pipeline.check_same_cases(
                config, cell.run_dir, trained_root, "the plan would count the run's scores, or resume it, as its own"
            )
        except UserError as error:
            raise PlanError(
                f"{cell.name}: {error}; or move {cell.run_dir} away, or give the experiment another --out"
            ) from error
    return state


def run_cell(cell: Cell, device: str | None = None) -> Path:
    """Train (or resume, or leave alone if finished) one run in this process; returns its folder."""
    state = run_state(cell.run_dir)
    if state == FINISHED:
        return cell.run_dir
    if state == INTERRUPTED:  # on the plan's data folder, which check_folder found to hold the run's cases
        return pipeline.resume(cell.run_dir, device=device, overrides={"data_root": cell.data_root})
    return pipeline.train(cell.config(device))


def train_arguments(cell: Cell, device: str | None = None) -> list[str]:
    """The ``mper-train`` arguments that bring ``cell`` to its end from where it stands."""
    if run_state(cell.run_dir) == INTERRUPTED:
        resume = ["--resume", "--out", str(cell.run_dir), "--data-root", cell.data_root]
        return [*resume, *(["--device", device] if device else [])]
    return cell.train_arguments(device)
