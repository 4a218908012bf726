"""The results of a plan as the paper's tables: mean ± std over seeds.

Each finished run's ``metrics.json`` gives its test-set means (Dice, Jaccard, 95HD,
ASD over the test cases, as ``mper-eval`` reports them). For every row (variant, or
variant and sweep value) and label budget, :func:`collect` gathers them over the seeds;
:func:`write_results` writes ``results.md`` (the table), ``results.csv`` (one line per
row and budget), ``results.json`` (every seed's value and run folder) and, when
matplotlib is installed, ``results.png`` (:mod:`mper.experiment.plots`).

``std`` is the sample standard deviation over seeds (``ddof = 1``); with fewer than two
seeds it is left out (``null`` in the JSON, no ``±`` in the table).
A run whose distances were undefined on some test case (an empty prediction) is
counted in the table's note.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mper.eval.metrics import DISTANCE_METRICS, METRIC_NAMES
from mper.eval.report import METRICS_FILE, PERCENT_METRICS, PREDICTED_NOWHERE_MARK, TABLE_HEADER
from mper.eval.scans import distance_unit

from .plan import Cell, Plan
from .plots import plot_results
from .runs import FINISHED, run_state

log = logging.getLogger(__name__)

#: Column names of the metrics, with the direction that is better.
METRIC_HEADERS = {"dice": "Dice ↑", "jaccard": "Jaccard ↑", "hd95": "95HD ↓", "asd": "ASD ↓"}
RESULT_FILES = ("results.md", "results.csv", "results.json")


@dataclass
class Row:
    """One line of the table: a row name at a label budget, over the seeds."""

    name: str
    budget: str
    sweep_value: Any
    series: str = ""
    labeled: str = "-"
    unlabeled: str = "-"
    seeds: list[int] = field(default_factory=list)
    missing_seeds: list[int] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    values: dict[str, list[float]] = field(default_factory=lambda: {metric: [] for metric in METRIC_NAMES})
    undefined: int = 0
    predicted_nowhere: int = 0
    collapsed_prototypes: int = 0
    scored_on_validation: int = 0

    def mean(self, metric: str) -> float:
        """Mean over the seeds whose value is defined (NaN when none is)."""
        defined = [value for value in self.values[metric] if not math.isnan(value)]
        return float(np.mean(defined)) if defined else math.nan

    def std(self, metric: str) -> float:
        """Sample standard deviation over the seeds whose value is defined (NaN with
        fewer than two: one run says nothing of the spread)."""
        defined = [value for value in self.values[metric] if not math.isnan(value)]
        return float(np.std(defined, ddof=1)) if len(defined) > 1 else math.nan

    def add(self, cell: Cell, metrics: dict[str, Any]) -> None:
        """Add one finished run's ``metrics.json``."""
        self.seeds.append(cell.seed)
        self.runs.append(str(cell.run_dir))
        table = metrics.get("table", {})
        self.labeled, self.unlabeled = table.get("labeled", self.labeled), table.get("unlabeled", self.unlabeled)
        means = metrics["summary"]["mean"]
        for metric in METRIC_NAMES:
            value = means[metric]["mean"]
            self.values[metric].append(math.nan if value is None else float(value))
        self.undefined += int(means["hd95"]["undefined"])
        self.predicted_nowhere += int(metrics["summary"].get("predicted_nowhere", {}).get("results", 0))
        self.scored_on_validation += metrics.get("split") == "val"  # data without labeled test cases
        self.collapsed_prototypes += len(metrics.get("prototype_usage", {}).get("collapses", []))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the row's identity, each seed's values, and mean and std."""
        metrics = {
            metric: {
                "mean": _json_number(self.mean(metric)),
                "std": _json_number(self.std(metric)),
                "values": [_json_number(value) for value in self.values[metric]],
            }
            for metric in METRIC_NAMES
        }
        return {
            "method": self.name,
            "budget": self.budget,
            "sweep_value": self.sweep_value,
            "labeled": self.labeled,
            "unlabeled": self.unlabeled,
            "seeds": self.seeds,
            "missing_seeds": self.missing_seeds,
            "runs": self.runs,
            "metrics": metrics,
            "undefined_distances": self.undefined,
            "distances_of_classes_predicted_nowhere_as_zero": self.predicted_nowhere,
            "runs_scored_on_validation_cases": self.scored_on_validation,
            "prototype_collapse_warnings": self.collapsed_prototypes,
        }


def _json_number(value: float) -> float | None:
    return None if math.isnan(value) else value


def collect(plan: Plan, cells: Sequence[Cell]) -> list[Row]:
    """The table's rows from the runs' ``metrics.json`` files, in plan order (budget by
    budget); runs not finished yet are listed as missing seeds."""
    rows: dict[tuple[str, str], Row] = {}
    for cell in cells:
        row = rows.setdefault(
            (cell.budget, cell.variant),
            Row(cell.variant, cell.budget, cell.sweep_value, cell.series, labeled=cell.budget),
        )
        if run_state(cell.run_dir) == FINISHED:
            row.add(cell, json.loads((cell.run_dir / METRICS_FILE).read_text()))
        else:
            row.missing_seeds.append(cell.seed)
    order = [name for name, _, _ in plan.rows()]
    budgets = [str(labeled) for labeled in plan.labeled]
    return sorted(rows.values(), key=lambda row: (_position(budgets, row.budget), order.index(row.name)))


def _position(values: list[str], value: str) -> int:
    return values.index(value) if value in values else len(values)


def _cell(row: Row, metric: str) -> str:
    mean, std = row.mean(metric), row.std(metric)
    if math.isnan(mean):
        return "-" if not row.seeds else "n/a"
    scale = 100 if metric in PERCENT_METRICS else 1
    mark = PREDICTED_NOWHERE_MARK if row.predicted_nowhere and metric in DISTANCE_METRICS else ""
    return (f"{scale * mean:.2f}" if math.isnan(std) else f"{scale * mean:.2f} ± {scale * std:.2f}") + mark


def markdown(plan: Plan, rows: Sequence[Row]) -> str:
    """The table in Markdown, with a line on what the numbers are."""
    header = [*TABLE_HEADER[:3], "Seeds", *METRIC_HEADERS.values()]
    lines = [
        f"# {plan.title}",
        "",
        f"Test-set means (Dice and Jaccard in %, 95HD and ASD in {distance_unit(plan.dataset)}); mean ± sample std "
        "over seeds.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in rows:
        seeds = f"{len(row.seeds)}/{len(row.seeds) + len(row.missing_seeds)}"
        # a "|" in a row's name would end its cell: every number would land under the next column
        name = row.name.replace("|", "\\|")
        cells = [name, row.labeled, row.unlabeled, seeds, *(_cell(row, metric) for metric in METRIC_NAMES)]
        lines.append("| " + " | ".join(cells) + " |")
    notes = []
    missing = sum(len(row.missing_seeds) for row in rows)
    if missing:
        which = "; ".join(
            f"{row.name}, {row.budget} labeled: seed {', '.join(map(str, row.missing_seeds))}"
            for row in rows
            if row.missing_seeds
        )
        notes.append(f"{missing} run(s) not finished yet, their seeds left out (column Seeds): {which}.")
    undefined = sum(row.undefined for row in rows)
    if undefined:
        notes.append(
            f"95HD and ASD were undefined (prediction or ground truth empty) for {undefined} case-class result(s) "
            "in all; each run's means leave them out."
        )
    validation = sum(row.scored_on_validation for row in rows)
    if validation:
        notes.append(
            f"{validation} run(s) were scored on their validation cases, not test cases: the data has no "
            "labeled test cases."
        )
    nowhere = sum(row.predicted_nowhere for row in rows)
    if nowhere:
        notes.append(
            f"95HD and ASD marked {PREDICTED_NOWHERE_MARK} count {nowhere} case-class result(s) in all as 0: a class "
            'predicted nowhere, which eval.empty_prediction = "zero" (the authors\' rule) scores 0; these zeros '
            "lower the means (each run's metrics.md says where; the preset strict leaves them out)."
        )
    collapses = sum(row.collapsed_prototypes for row in rows)
    if collapses:
        notes.append(f"{collapses} prototype collapse warning(s) in all (see each run's train.log).")
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def write_csv(rows: Sequence[Row], path: Path) -> None:
    """One line per row and budget: identity, seeds, and each metric's mean and std."""
    columns = ["method", "budget", "sweep_value", "labeled", "unlabeled", "seeds", "missing_seeds"]
    columns += [f"{metric}_{stat}" for metric in METRIC_NAMES for stat in ("mean", "std")]
    with path.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(columns)
        for row in rows:
            stats = [value for metric in METRIC_NAMES for value in (row.mean(metric), row.std(metric))]
            writer.writerow(
                [
                    row.name,
                    row.budget,
                    "" if row.sweep_value is None else row.sweep_value,
                    row.labeled,
                    row.unlabeled,
                    " ".join(map(str, row.seeds)),
                    " ".join(map(str, row.missing_seeds)),
                    *("" if math.isnan(value) else f"{value:.6g}" for value in stats),
                ]
            )


def _recorded_plan(plan: Plan) -> str:
    """The plan as ``results.json`` records it: its file's absolute path (the same whatever
    folder the command runs in), or the name of a plan made in Python."""
    return str(plan.path.resolve()) if plan.path else plan.name


def _same_plan(earlier: str, plan: Plan) -> bool:
    """Whether ``earlier`` (the plan an earlier ``results.json`` records) is ``plan``'s file:
    the same file once resolved; a relative path (recorded as given by earlier versions,
    from a folder not known now) when ``plan``'s file ends in it (``../plans/x.toml``: in
    ``plans/x.toml``)."""
    if plan.path is None:
        return earlier == plan.name
    current = plan.path.resolve()
    recorded = Path(earlier)
    if recorded.is_absolute():
        return recorded.resolve() == current
    tail = [part for part in recorded.parts if part not in (".", "..")]
    return recorded.resolve() == current or (bool(tail) and list(current.parts[-len(tail) :]) == tail)


def _say_other_plan(results: Path, plan: Plan) -> None:
    """Warn when ``results`` (an earlier ``results.json``) holds the table of another plan
    than ``plan``: two plans given one ``--out`` replace each other's tables. The same plan
    file given from another folder, or by another path, is no other plan."""
    try:
        earlier = json.loads(results.read_text()).get("plan")
    except (OSError, ValueError, AttributeError):
        return
    if isinstance(earlier, str) and not _same_plan(earlier, plan):
        log.warning(
            "%s held the results of the plan %s; replacing them with those of %s (its runs are kept: "
            "mper-experiment %s --out %s --report-only writes them again; give each plan its own --out)",
            results.parent,
            earlier,
            str(plan.path) if plan.path else plan.name,
            earlier,
            results.parent,
        )


def write_results(plan: Plan, cells: Sequence[Cell], out: str | Path) -> dict[str, Path]:
    """Write the table files (and the plot) of ``plan`` into ``out``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = collect(plan, cells)
    paths = {name: out / name for name in RESULT_FILES}
    _say_other_plan(paths["results.json"], plan)
    paths["results.md"].write_text(markdown(plan, rows))
    write_csv(rows, paths["results.csv"])
    document = {
        "title": plan.title,
        "plan": _recorded_plan(plan),
        "dataset": plan.dataset,
        "sweep": None if plan.sweep is None else {"setting": plan.sweep.setting, "label": plan.sweep.label},
        "std": "sample standard deviation over seeds (ddof=1)",
        "rows": [row.to_dict() for row in rows],
    }
    paths["results.json"].write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
    plot = plot_results(plan, rows, out / "results.png")
    if plot is not None:
        paths["results.png"] = plot
    return paths
