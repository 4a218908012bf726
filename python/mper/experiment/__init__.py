"""Experiments as the paper reports them: a plan of training runs, and its tables.

:func:`run_plan` reads a plan (:mod:`mper.experiment.plan`), trains every run that is
not finished yet (an interrupted one is resumed) with an executor
(:mod:`mper.experiment.executors`: one at a time here, one per GPU, or one cluster job
each), and writes the results table, mean ± std over seeds, as Markdown, CSV and JSON
with a plot (:mod:`mper.experiment.report`), plus the t-SNE maps the plan asks for.
Stopping a sweep and running the same call again continues it.

Before the first run trains, :func:`check_runs` refuses what would stop a run before it
trains (a setting, the data folder, its lists, a label budget beyond the data): the
sweep then trains nothing and writes nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

from mper import pipeline
from mper.datasets import check_dataset_root, get_dataset, synthesize, ways_to_write
from mper.errors import ConfigError, MissingFileError, UserError
from mper.eval.tsne import require_figure_packages
from mper.train.checkpoint import BEST_CHECKPOINT
from mper.train.config import TrainConfig
from mper.train.footprint import least_free
from mper.train.runner import check_machine

from .executors import (
    ClusterOptions,
    DevicePoolExecutor,
    Executor,
    Failure,
    LocalExecutor,
    SubmititExecutor,
)
from .plan import Cell, Plan, PlanError, load_plan
from .report import collect, write_results
from .runs import FINISHED, INTERRUPTED, check_folder, run_state

log = logging.getLogger(__name__)

#: Where a plan's runs and results go when no output folder is given.
DEFAULT_OUT = Path("runs") / "experiments"
#: The folder of the plans shipped with mper (installed with the package).
SHIPPED_PLANS = Path(__file__).parent / "plans"
#: Settings that :func:`check_runs` leaves out when it compares runs: what it checks is
#: the same for runs that differ only in these.
RUN_IDENTITY = ("seed", "out", "run_id", "device")


class RunsFailed(UserError):
    """Some runs of a plan failed; the others finished and the report covers them."""


class SweepInterrupted(KeyboardInterrupt):
    """A sweep stopped by Ctrl-C or SIGTERM (``signal_name``); running the same command
    again continues it."""

    def __init__(self, out: Path, finished: int, total: int, signal_name: str = "SIGINT"):
        super().__init__(f"{finished} of {total} runs finished")
        self.out, self.finished, self.total, self.signal_name = out, finished, total, signal_name


def stop_signal(stop: BaseException | None) -> str:
    """The signal that stopped a sweep: the ``signal_name`` of ``stop`` or of the first
    exception it came from that has one (a training stopped by SIGTERM), else SIGINT."""
    while stop is not None:
        name = getattr(stop, "signal_name", None)
        if name:
            return str(name)
        stop = stop.__cause__ or stop.__context__
    return "SIGINT"


def find_plan(name_or_path: str | Path) -> Path:
    """A plan file: the path given, or the shipped plan of that name (e.g. ``tiny``)."""
    path = Path(name_or_path)
    if path.exists() or path.suffix:
        return path
    shipped = SHIPPED_PLANS / f"{path}.toml"
    if not shipped.exists():
        names = ", ".join(sorted(plan.stem for plan in SHIPPED_PLANS.glob("*.toml")))
        raise PlanError(f"no plan file {path} and no shipped plan of that name; shipped plans: {names}")
    return shipped


def prepare_plan(
    plan: str | Path | Plan,
    out: str | Path | None = None,
    data_root: str | Path | None = None,
    seeds: Sequence[int] | None = None,
    assignments: Sequence[str] = (),
) -> tuple[Plan, list[Cell], Path]:
    """The plan with the given changes, its runs and the output folder, all checked:
    every run's settings, and every run folder that already holds a run."""
    if not isinstance(plan, Plan):
        plan = load_plan(find_plan(plan), data_root)
    out = Path(out or DEFAULT_OUT / plan.name).resolve()
    root = str(Path(data_root or plan.data_root).resolve())
    plan = plan.with_changes(data_root=root, seeds=seeds, assignments=assignments)
    plan.check(out)
    cells = plan.cells(out)
    for cell in cells:
        check_folder(cell)
    return plan, cells, out


def run_plan(
    plan: str | Path | Plan,
    out: str | Path | None = None,
    executor: Executor | None = None,
    data_root: str | Path | None = None,
    seeds: Sequence[int] | None = None,
    assignments: Sequence[str] = (),
) -> dict[str, Path]:
    """Train every unfinished run of ``plan`` (a path, a shipped plan's name, or a
    :class:`Plan`) and write its results into ``out`` (default
    ``runs/experiments/<plan>``); returns the written files by name.

    ``data_root``, ``seeds`` and ``assignments`` (``"section.key=value"``, added to
    every run) change the plan; ``executor`` defaults to :class:`LocalExecutor`. Raises
    :class:`RunsFailed` after writing the results when a run failed, and
    :class:`SweepInterrupted` when stopped.
    """
    plan, cells, out = prepare_plan(plan, out, data_root, seeds, assignments)
    executor = executor or LocalExecutor()
    _write_synthetic_data(plan)
    check_runs(plan, cells, getattr(executor, "machine_device", None))
    todo = [cell for cell in cells if run_state(cell.run_dir) != FINISHED]
    resumed = sum(run_state(cell.run_dir) == INTERRUPTED for cell in todo)
    if plan.tsne and todo:
        try:
            require_figure_packages()
        except ConfigError as error:  # said now, not after the last run
            log.warning(
                "%s; the plan's [figures] tsne (%s) is drawn after the runs only with them installed: the runs "
                "train and the tables are written; install them before the runs end, or draw the maps later "
                "with the same command and --report-only",
                error,
                ", ".join(plan.tsne),
            )
    log.info(
        "%s: %d runs, %d finished, %d to resume, %d to start; results in %s",
        plan.title,
        len(cells),
        len(cells) - len(todo),
        resumed,
        len(todo) - resumed,
        out,
    )
    try:
        failures = executor.run(todo)
    except KeyboardInterrupt as stop:
        finished = sum(run_state(cell.run_dir) == FINISHED for cell in cells)
        raise SweepInterrupted(out, finished, len(cells), stop_signal(stop)) from stop
    written = write_report(plan, cells, out)
    if failures:
        raise RunsFailed(_failure_message(failures, len(cells), written["results.md"]))
    return written


def write_report(plan: Plan, cells: Sequence[Cell], out: Path) -> dict[str, Path]:
    """The results files of the finished runs, and the plan's t-SNE maps."""
    written = write_results(plan, cells, out)
    for name, path in tsne_figures(plan, cells, out).items():
        written[name] = path
    log.info("results: %s", ", ".join(str(path) for path in written.values()))
    return written


def tsne_figures(plan: Plan, cells: Sequence[Cell], out: Path) -> dict[str, Path]:
    """``tsne-<row>-<budget>.png`` for each row the plan names in ``figures.tsne``, from
    its first finished seed."""
    figures = {}
    for row in collect(plan, cells):
        if row.series not in plan.tsne or not row.runs:
            continue
        name = f"tsne-{Path(row.runs[0]).parts[-3]}-{row.budget}.png"
        title = f"{row.name}, {row.budget} labeled, seed {row.seeds[0]}"
        try:
            figures[name] = pipeline.tsne(Path(row.runs[0]) / BEST_CHECKPOINT, out / name, title=title)
        except ConfigError as error:  # e.g. scikit-learn missing: the tables still stand
            log.warning("no t-SNE map for %s: %s", row.name, error)
    return figures


def check_runs(plan: Plan, cells: Sequence[Cell], device: str | Sequence[str] | None = None) -> None:
    """Refuse, before any run trains, what would stop one of the unfinished ``cells``
    before it trains: the data folder (missing, or another dataset's) and what
    :func:`mper.pipeline.check_before_training` refuses (a setting, a list file, a label
    budget beyond the data, the split), checked once for runs that differ only in
    :data:`RUN_IDENTITY`. With ``device`` (runs that train on this machine, on that
    device), what this machine refuses too (:func:`~mper.train.runner.check_machine`: a
    CUDA device it lacks, ``amp`` on the CPU, an iteration too large for the device's
    memory); with several devices (a pool's GPUs: any run may train on any of them),
    each must exist and the memory is checked on the one with the least free. Raises
    :class:`PlanError` naming the plan, the run and what to do. Data files are not read:
    a damaged one stops its run as it starts. Nothing is checked of synthetic data not
    written yet (:func:`run_plan` writes it first)."""
    todo = [cell for cell in cells if run_state(cell.run_dir) != FINISHED]
    root = Path(plan.data_root)
    if todo and device is not None:
        _check_machine(plan, todo, device)
    if not todo or (plan.synthetic is not None and not root.exists()):
        return
    try:
        check_dataset_root(root, plan.dataset, f"the plan trains on {plan.dataset}")
    except UserError as error:
        # a relative data_root is taken from the folder the command runs in, not the plan's
        relative = "" if root.exists() else " (a relative data_root is taken from the folder the command runs in)"
        raise PlanError(f"{plan.source}: data_root{relative}: {error}; no run was started") from error
    for cell, config in _distinct_settings(todo):
        try:
            pipeline.check_before_training(config)
        except MissingFileError as error:
            spec = get_dataset(plan.dataset)
            raise PlanError(
                f"{plan.source}: run {cell.name}: {error}; the plan's data_root (--data-root) {root} must hold "
                f"{spec.title} data as mper reads it ({ways_to_write(spec, 'DIR')}; then give --data-root DIR); "
                "no run was started"
            ) from error
        except UserError as error:
            raise PlanError(
                f"{plan.source}: run {cell.name}: {error}; no run was started: change the plan (or --set, "
                "--data-root) and run the command again"
            ) from error


def _distinct_settings(cells: Sequence[Cell], device: str | None = None) -> Iterator[tuple[Cell, TrainConfig]]:
    """Each of ``cells`` with its settings (on ``device``), once per settings that differ in
    more than :data:`RUN_IDENTITY`: what a check refuses of one it refuses of the others."""
    checked: set[str] = set()
    for cell in cells:
        config = cell.config(device)
        settings = {name: value for name, value in config.to_dict().items() if name not in RUN_IDENTITY}
        key = json.dumps(settings, sort_keys=True)
        if key not in checked:
            checked.add(key)
            yield cell, config


def _check_machine(plan: Plan, cells: Sequence[Cell], device: str | Sequence[str]) -> None:
    """What this machine refuses of ``cells`` trained on ``device``, once per distinct
    settings; of several devices, on the one with the least free memory."""
    option = "--device" if isinstance(device, str) else "--devices"
    try:
        device = device if isinstance(device, str) else least_free(device)
    except UserError as error:
        raise PlanError(f"{plan.source}: {option}: {error}; no run was started") from error
    for cell, config in _distinct_settings(cells, device):
        try:
            check_machine(config)
        except UserError as error:
            raise PlanError(
                f"{plan.source}: run {cell.name}: {error}; no run was started: change {option} (or the plan's "
                "settings) and run the command again"
            ) from error


def _write_synthetic_data(plan: Plan) -> None:
    """Write the plan's synthetic data if it asks for some and the folder is missing."""
    root = Path(plan.data_root)
    if plan.synthetic is not None and not root.exists():
        log.info("writing synthetic %s data to %s", plan.dataset, root)
        try:
            synthesize(plan.dataset, root, **plan.synthetic)
        except ConfigError as error:  # a value the generator refuses (too few cases, too small a size)
            raise PlanError(f"{plan.source}: [synthetic]: {error}; no run was started") from error


def _failure_message(failures: Sequence[Failure], total: int, table: Path) -> str:
    reasons = "; ".join(f"{failure.cell.name}: {failure.reason}" for failure in failures)
    return (
        f"{len(failures)} of {total} runs failed ({reasons}); {table} covers the others. "
        "Fix the cause and run the same command again: finished runs are kept"
    )


__all__ = [
    "ClusterOptions",
    "DevicePoolExecutor",
    "Executor",
    "LocalExecutor",
    "Plan",
    "PlanError",
    "RunsFailed",
    "SubmititExecutor",
    "SweepInterrupted",
    "check_runs",
    "find_plan",
    "load_plan",
    "prepare_plan",
    "run_plan",
    "run_state",
    "write_report",
]
