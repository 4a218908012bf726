"""The plot of a plan's results: one panel per metric, mean with ± std error bars.

Rows are drawn as bars grouped by label budget, or, when the plan sweeps a numeric
setting (e.g. K), as one line per variant and budget over the setting's values. Needs
matplotlib (``pip install 'mper[figures]'``); without it no plot is drawn and the
tables alone are written.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mper.data.files import written_whole
from mper.eval.metrics import METRIC_NAMES
from mper.eval.report import PERCENT_METRICS
from mper.eval.scans import distance_unit

from .plan import Plan

log = logging.getLogger(__name__)

PANEL_INCHES = (3.6, 3.2)
BAR_GROUP_WIDTH = 0.8


def figure_module() -> Any | None:
    """matplotlib's ``Figure`` class, or ``None`` (with a note in the log) when it is missing."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        log.info("matplotlib is not installed: no plot drawn (pip install 'mper[figures]')")
        return None
    return Figure


def plot_results(plan: Plan, rows: Sequence[Any], path: Path) -> Path | None:
    """Draw ``rows`` (:class:`~mper.experiment.report.Row`) into ``path``; ``None`` without matplotlib."""
    figure_class = figure_module()
    if figure_class is None:
        return None
    rows = [row for row in rows if row.seeds]
    figure = figure_class(figsize=(PANEL_INCHES[0] * len(METRIC_NAMES), PANEL_INCHES[1]), layout="constrained")
    axes = figure.subplots(1, len(METRIC_NAMES))
    draw = _draw_lines if plan.sweep is not None and plan.sweep.numeric else _draw_bars
    for axis, metric in zip(axes, METRIC_NAMES):
        draw(axis, rows, metric, plan)
        axis.set_title(_metric_title(metric, distance_unit(plan.dataset)))
        axis.grid(axis="y", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="outside right upper", fontsize="small")
    figure.suptitle(f"{plan.title} (mean ± std over seeds)", fontsize="medium")
    with written_whole(path) as aside:
        figure.savefig(aside, dpi=120, format="png")
    return path


def _metric_title(metric: str, unit: str) -> str:
    names = {"dice": "Dice (%)", "jaccard": "Jaccard (%)", "hd95": f"95HD ({unit})", "asd": f"ASD ({unit})"}
    return names[metric]


def _scaled(row: Any, metric: str) -> tuple[float, float]:
    scale = 100 if metric in PERCENT_METRICS else 1
    mean, std = row.mean(metric), row.std(metric)
    return scale * mean, (0.0 if math.isnan(std) else scale * std)


def _draw_bars(axis: Any, rows: Sequence[Any], metric: str, plan: Plan) -> None:
    budgets = list(dict.fromkeys(row.budget for row in rows))
    names = list(dict.fromkeys(row.name for row in rows))
    width = BAR_GROUP_WIDTH / max(len(names), 1)
    for index, name in enumerate(names):
        mine = [row for row in rows if row.name == name]
        positions = [budgets.index(row.budget) - BAR_GROUP_WIDTH / 2 + (index + 0.5) * width for row in mine]
        means, stds = zip(*(_scaled(row, metric) for row in mine))
        axis.bar(positions, means, width, yerr=stds, capsize=3, label=name, color=f"C{index % 10}")
    axis.set_xticks(range(len(budgets)), [f"{budget} labeled" for budget in budgets])


def _draw_lines(axis: Any, rows: Sequence[Any], metric: str, plan: Plan) -> None:
    if plan.sweep is None:
        raise ValueError(f"plan {plan.name!r} sweeps no setting: its rows are drawn as bars")
    sweep = plan.sweep
    series = list(dict.fromkeys((row.series, row.budget) for row in rows))
    for index, (name, budget) in enumerate(series):
        mine = sorted(
            (row for row in rows if (row.series, row.budget) == (name, budget)), key=lambda row: row.sweep_value
        )
        means, stds = zip(*(_scaled(row, metric) for row in mine))
        axis.errorbar(
            [row.sweep_value for row in mine],
            means,
            yerr=stds,
            marker="o",
            capsize=3,
            label=f"{name}, {budget} labeled",
            color=f"C{index % 10}",
        )
    axis.set_xlabel(sweep.label)
    axis.set_xticks(list(sweep.values))
