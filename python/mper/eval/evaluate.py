"""Evaluate a network on the test (or validation) cases of a dataset.

Cases are read by the dataset's spec (:mod:`mper.datasets`) from its layout
(docs/method.md, "Data layouts"), segmented with :func:`mper.eval.protocol.segment_volume`
(inference, then ``eval.postprocess``), scored per foreground class with
:func:`mper.eval.metrics.case_metrics` (distances in voxels) and summarised. A dataset
imported from raw scans is scored on each scan's own grid instead, against its raw
label, distances in millimetres (:func:`mper.eval.scans.score_scan_case`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn
from tqdm import tqdm

from mper.datasets import get_dataset

from .figures import FigureSlice, figure_slice, save_figures
from .metrics import dice_score
from .protocol import ground_truth_classes, score_case, segment_volume
from .report import REPORT_FILES, markdown_table, summarize, write_report
from .scans import distance_unit, score_scan_case

#: The folder of the overlay PNGs in an output folder.
FIGURES_FOLDER = "figures"
#: What :func:`evaluate_cases` writes into its output folder.
EVALUATION_OUTPUTS = (*REPORT_FILES, FIGURES_FOLDER)


def _resolve_cases(dataset: str, data_root: str | Path, cases: Sequence[str] | None, split: str) -> list[str]:
    """``cases`` if given, else the case list of ``split``; never empty."""
    list_cases = get_dataset(dataset).list_cases
    resolved = list(cases) if cases is not None else list(list_cases(data_root, split))
    if not resolved:
        source = "the given case list" if cases is not None else f"the {split!r} list of {data_root}"
        raise ValueError(f"no {dataset} cases to evaluate: {source} is empty; name at least one case")
    return resolved


def _predicted_cases(
    net: nn.Module,
    dataset: str,
    data_root: str | Path,
    case_names: Sequence[str],
    num_classes: int,
    inference_opts: dict[str, Any],
) -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """Load and segment each case in turn: ``(case, image, label, predicted labels)``;
    ``inference_opts`` go to :func:`~mper.eval.protocol.segment_volume`."""
    load_case = get_dataset(dataset).load_volume
    for case in case_names:
        image, label = load_case(data_root, case)
        yield case, image, label, segment_volume(net, image, dataset, num_classes, **inference_opts)


def _scored_cases(
    net: nn.Module,
    dataset: str,
    data_root: str | Path,
    case_names: Sequence[str],
    num_classes: int,
    empty_prediction: str,
    inference_opts: dict[str, Any],
) -> Iterator[tuple[str, dict[int, dict[str, float]], FigureSlice, set[int]]]:
    """Each case's scores (:func:`~mper.eval.protocol.score_case`), figure slice and the
    classes its ground truth holds."""
    if get_dataset(dataset).scans is not None:
        for case in case_names:
            yield (
                case,
                *score_scan_case(
                    net, dataset, data_root, case, num_classes, empty_prediction=empty_prediction, **inference_opts
                ),
            )
        return
    for case, image, label, pred in _predicted_cases(net, dataset, data_root, case_names, num_classes, inference_opts):
        scores = score_case(pred, label, num_classes, empty_prediction)
        yield case, scores, figure_slice(image, label, pred, dataset), ground_truth_classes(label)


def evaluate_cases(
    net: nn.Module,
    dataset: str,
    data_root: str | Path,
    cases: Sequence[str] | None = None,
    split: str = "test",
    out_dir: str | Path | None = None,
    device: str = "cpu",
    num_figures: int = 0,
    *,
    method: str = "MPER",
    labeled: str = "-",
    unlabeled: str = "-",
    num_classes: int | None = None,
    postprocess: str = "none",
    empty_prediction: str = "undefined",
    ops: str = "mper",
    report_extra: Mapping[str, Any] | None = None,
    **inference_opts: Any,
) -> dict[str, Any]:
    """Predict, score and report every case of ``split`` (or the given ``cases``).

    ``postprocess`` and ``empty_prediction`` choose the protocol of
    :mod:`mper.eval.protocol`; ``ops`` (the run's setting) the ops that post-process.

    With ``out_dir``, writes ``figures/<case>.png`` for ``num_figures`` cases from the
    worst to the median by mean Dice (:func:`~mper.eval.figures.figure_cases`), then
    ``metrics.md`` and ``metrics.json`` (with ``"split"`` and the entries of ``report_extra``, see
    :func:`~mper.eval.report.write_report`). ``method``, ``labeled`` and ``unlabeled``
    fill the table's first columns; ``inference_opts`` go to
    :func:`~mper.eval.inference.predict_volume` (e.g. ``patch_size``, ``stride``).
    Returns ``{"per_case", "summary", "markdown", "figures"}`` (the PNG paths).
    """
    case_names = _resolve_cases(dataset, data_root, cases, split)
    spec = get_dataset(dataset)
    num_classes = num_classes or spec.num_classes
    scored = _scored_cases(
        net,
        dataset,
        data_root,
        case_names,
        num_classes,
        empty_prediction,
        {"device": device, "postprocess": postprocess, "ops": ops, **inference_opts},
    )
    progress = tqdm(scored, total=len(case_names), desc=f"evaluating {dataset}", unit="case")
    per_case, views, in_ground_truth = {}, {}, set()
    for case, scores, view, present in progress:
        per_case[case] = scores
        in_ground_truth |= present
        if out_dir is not None and num_figures > 0:
            views[case] = view
    summary = summarize(per_case, in_ground_truth)
    class_names = spec.class_names
    markdown = markdown_table(summary, method, labeled, unlabeled, class_names, distance_unit(dataset), split)
    figures = []
    if out_dir is not None:
        figures = save_figures(
            views, per_case, Path(out_dir) / FIGURES_FOLDER, dataset, class_names[:num_classes], num_figures
        )
        table = {"method": method, "labeled": labeled, "unlabeled": unlabeled}
        write_report(out_dir, per_case, summary, markdown, table=table, extra={"split": split, **(report_extra or {})})
    return {"per_case": per_case, "summary": summary, "markdown": markdown, "figures": figures}


def mean_dice(
    net: nn.Module,
    dataset: str,
    data_root: str | Path,
    cases: Sequence[str],
    device: str = "cpu",
    num_classes: int | None = None,
    **inference_opts: Any,
) -> float:
    """Mean over ``cases`` of the mean foreground-class Dice: a cheap validation score.

    Same inference as :func:`evaluate_cases`; no distances, no files; a progress bar
    that disappears when done.
    """
    case_names = _resolve_cases(dataset, data_root, cases, split="")
    num_classes = num_classes or get_dataset(dataset).num_classes
    predictions = _predicted_cases(
        net, dataset, data_root, case_names, num_classes, {"device": device, **inference_opts}
    )
    case_scores = []
    progress = tqdm(predictions, total=len(case_names), desc="validation", unit="case", leave=False)
    for _, _, label, pred in progress:
        class_dice = [dice_score(pred == c, label == c) for c in range(1, num_classes)]
        case_scores.append(sum(class_dice) / len(class_dice))
    return sum(case_scores) / len(case_scores)
