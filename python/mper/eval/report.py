"""Aggregate per-case metrics and write them as JSON and as the paper's Markdown table.

``per_case`` maps a case name to :func:`mper.eval.metrics.case_metrics` of that case,
``{class label: {"dice", "jaccard", "hd95", "asd"}}``.

:func:`summarize` gives, for each metric, ``{"mean", "std", "undefined"}``:

* per class (``summary["classes"][label]``): over cases;
* over classes (``summary["mean"]``): each case's metrics are first averaged over its
  classes, then ``mean`` and ``std`` are taken over cases (with no undefined distance
  this ``mean`` equals the mean of the class means, the number the paper reports).

``std`` is the population standard deviation (``ddof=0``). ``undefined`` counts the
results whose distance is undefined (NaN: exactly one of prediction and ground truth
empty); ``mean`` and ``std`` leave them out, and the Markdown table says how many there
were. In JSON an undefined value is written as ``null``.

``summary["predicted_nowhere"]`` counts the results of a class predicted nowhere that
``eval.empty_prediction = "zero"`` (the authors' rule) scored 0 in every metric: the
table marks the distance means they enter, since a distance 0 reads as a perfect answer.
Such a result is recognised by its values, Dice 0 with 95HD 0: two non-empty masks that
do not overlap have surfaces at least a voxel apart, so no measured result is both.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mper.data.files import written_whole

from .metrics import DISTANCE_METRICS, METRIC_NAMES

PerCase = Mapping[str, Mapping[int, Mapping[str, float]]]

METRICS_FILE = "metrics.json"
MARKDOWN_FILE = "metrics.md"


#: What :func:`write_report` writes (the aside copy it renames is a hidden file, which no folder check counts).
REPORT_FILES = (METRICS_FILE, MARKDOWN_FILE)
TABLE_HEADER = ("Method", "Labeled", "Unlabeled", "Dice", "Jaccard", "95HD", "ASD")
PERCENT_METRICS = ("dice", "jaccard")
#: How a table names the cases of each split it scores.
SPLIT_NAMES = {"test": "test", "val": "validation"}
#: Marks the distance means that count classes predicted nowhere as distance 0.
PREDICTED_NOWHERE_MARK = "*"


def _statistics(values: Sequence[float], undefined: int) -> dict[str, float | int]:
    defined = np.asarray([value for value in values if not math.isnan(value)], dtype=np.float64)
    if defined.size == 0:
        return {"mean": math.nan, "std": math.nan, "undefined": undefined}
    return {"mean": float(defined.mean()), "std": float(defined.std()), "undefined": undefined}


def _count_nan(values: Sequence[float]) -> int:
    return sum(math.isnan(value) for value in values)


def _class_average(class_metrics: Mapping[int, Mapping[str, float]], metric: str) -> float:
    defined = [m[metric] for m in class_metrics.values() if not math.isnan(m[metric])]
    return sum(defined) / len(defined) if defined else math.nan


def _predicted_nowhere(metrics: Mapping[str, float]) -> bool:
    """Whether ``metrics`` are the zeros of a class predicted nowhere (see the module docstring)."""
    return metrics["dice"] == 0.0 and metrics["hd95"] == 0.0


def summarize(per_case: PerCase, in_ground_truth: Collection[int] | None = None) -> dict[str, Any]:
    """Mean, std and undefined count of each metric, per class and over classes, the
    results of classes predicted nowhere scored 0, and the classes none of the cases'
    ground truths holds (given ``in_ground_truth``, the classes any of them holds).

    Returns ``{"num_cases", "classes": {label: {metric: stats}}, "mean": {metric: stats},
    "predicted_nowhere": {"results", "cases", "classes": {label: results}},
    "absent_from_ground_truth": [label, ...]}``.
    """
    if not per_case:
        raise ValueError("per_case is empty: evaluate at least one case before summarizing")
    labels = sorted(next(iter(per_case.values())))
    for case, class_metrics in per_case.items():
        if sorted(class_metrics) != labels:
            raise ValueError(
                f"case {case!r} has classes {sorted(class_metrics)}, the others {labels}; "
                "evaluate every case with the same num_classes"
            )
    classes: dict[int, dict[str, dict[str, float | int]]] = {}
    for label in labels:
        classes[label] = {}
        for metric in METRIC_NAMES:
            values = [class_metrics[label][metric] for class_metrics in per_case.values()]
            classes[label][metric] = _statistics(values, _count_nan(values))
    over_classes = {}
    for metric in METRIC_NAMES:
        averages = [_class_average(class_metrics, metric) for class_metrics in per_case.values()]
        undefined = int(sum(classes[label][metric]["undefined"] for label in labels))
        over_classes[metric] = _statistics(averages, undefined)
    nowhere = {
        label: sum(_predicted_nowhere(class_metrics[label]) for class_metrics in per_case.values()) for label in labels
    }
    cases = sum(any(map(_predicted_nowhere, class_metrics.values())) for class_metrics in per_case.values())
    return {
        "num_cases": len(per_case),
        "classes": classes,
        "mean": over_classes,
        "predicted_nowhere": {"results": sum(nowhere.values()), "cases": cases, "classes": nowhere},
        "absent_from_ground_truth": [] if in_ground_truth is None else sorted(set(labels) - set(in_ground_truth)),
    }


def _format(metric: str, value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{100 * value:.2f}" if metric in PERCENT_METRICS else f"{value:.2f}"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [_row(header), _row(["---"] * len(header)), *(_row(row) for row in rows)]


def _metric_cells(stats: Mapping[str, Mapping[str, float]], predicted_nowhere: int) -> list[str]:
    """The row's means; distances marked when ``predicted_nowhere`` results count in them."""
    return [
        _format(metric, stats[metric]["mean"])
        + (PREDICTED_NOWHERE_MARK if predicted_nowhere and metric in DISTANCE_METRICS else "")
        for metric in METRIC_NAMES
    ]


def markdown_table(
    summary: Mapping[str, Any],
    method: str,
    labeled: str,
    unlabeled: str,
    class_names: Sequence[str] | None = None,
    distance_unit: str = "voxels",
    split: str | None = None,
    empty_prediction_option: str | None = None,
) -> str:
    """The paper's results table: one row of means (Dice, Jaccard in %, distances as is).
    ``split`` (``"test"``, ``"val"``) names the cases the note counts.

    With more than one foreground class, a per-class table follows (rows named from
    ``class_names``, indexed by label, else ``class <label>``). A note gives the units
    (distances in ``distance_unit``) and the number of cases; another says how many distance
    results were undefined and left out of the means; a third, under distance means marked
    with :data:`PREDICTED_NOWHERE_MARK`, how many results of classes predicted nowhere
    count in them as distance 0, naming the rule as the setting ``eval.empty_prediction``, or
    as the command-line option ``empty_prediction_option`` when given.
    """
    nowhere = summary["predicted_nowhere"]
    lines = _table(TABLE_HEADER, [[method, labeled, unlabeled, *_metric_cells(summary["mean"], nowhere["results"])]])
    classes = summary["classes"]
    if len(classes) > 1:
        rows = []
        for label, stats in classes.items():
            name = class_names[int(label)] if class_names else f"class {label}"
            rows.append([name, *_metric_cells(stats, nowhere["classes"][label])])
        lines += ["", *_table(("Class", *TABLE_HEADER[3:]), rows)]
    scored = f"{SPLIT_NAMES[split]} cases" if split in SPLIT_NAMES else "cases"
    lines += [
        "",
        f"Dice and Jaccard in %, 95HD and ASD in {distance_unit}; means over {summary['num_cases']} {scored}.",
    ]
    results = summary["num_cases"] * len(classes)
    undefined = summary["mean"]["hd95"]["undefined"]
    if undefined:
        lines += [
            "",
            f"95HD and ASD were undefined (prediction or ground truth empty) for {undefined} "
            f"of {results} case-class results; the means above leave them out.",
        ]
    if nowhere["results"]:
        if empty_prediction_option is None:
            zero = 'eval.empty_prediction = "zero"'
            undefined = 'a run with eval.empty_prediction = "undefined" (preset strict)'
        else:
            zero, undefined = f"{empty_prediction_option} zero", f"{empty_prediction_option} undefined"
        lines += [
            "",
            f"95HD and ASD marked {PREDICTED_NOWHERE_MARK} count {nowhere['results']} of {results} case-class "
            f"results, in {nowhere['cases']} of {summary['num_cases']} cases, as 0: a class predicted nowhere, "
            f"which the authors' rule ({zero}) scores 0 in every metric. These zeros lower the distance means; "
            f"{undefined} leaves them out instead.",
        ]
    absent = summary.get("absent_from_ground_truth", [])
    if absent:
        names = ", ".join(class_names[int(label)] if class_names else f"class {label}" for label in absent)
        whose = "its" if len(absent) == 1 else "their"
        lines += [
            "",
            f"{names}: in none of the {summary['num_cases']} ground truths, so {whose} scores say only whether it "
            "was predicted (Dice 100 in a case it is rightly absent from, 0 in one it is predicted in), not how well "
            "it is segmented; the means over classes count them.",
        ]
    return "\n".join(lines) + "\n"


def _json_ready(value: Any) -> Any:
    """Replace NaN with ``None`` (JSON has no NaN) and make keys strings."""
    if isinstance(value, Mapping):
        return {str(key): _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def write_report(
    out_dir: str | Path,
    per_case: PerCase,
    summary: Mapping[str, Any],
    markdown: str,
    table: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write ``metrics.md`` and then ``metrics.json`` (``{"summary", "per_case"}``, and
    ``"table"``, the table's first columns ``{"method", "labeled", "unlabeled"}``, when
    given, then the entries of ``extra``) into ``out_dir``. Each is written whole or not at
    all (aside, then renamed; a full disk leaves neither part of one nor the aside copy),
    and ``metrics.json`` comes last: a folder that holds it holds the complete report, which
    is how a sweep tells a finished run.

    Creates ``out_dir`` if needed and returns the two paths.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, markdown_path = out_dir / METRICS_FILE, out_dir / MARKDOWN_FILE
    document = {"summary": summary, "per_case": per_case, **({"table": table} if table else {}), **(extra or {})}
    for path, text in (
        (markdown_path, markdown),
        (json_path, json.dumps(_json_ready(document), indent=2, allow_nan=False) + "\n"),
    ):
        with written_whole(path) as aside:
            aside.write_text(text)
    return json_path, markdown_path
