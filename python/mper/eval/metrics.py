"""Segmentation metrics: Dice, Jaccard, 95% Hausdorff distance and average surface distance.

All four are medpy's ``medpy.metric.binary`` functions (``dc``, ``jc``, ``hd95``,
``asd``), called with the prediction first, as UA-MT and SSL4MIS do; ``asd`` is thus
the mean distance from the predicted surface to the ground-truth surface. Distances are
in voxels unless a voxel ``spacing`` is given (the paper's tables use voxels).

Axes of a single voxel (a 2D image stored as an ``(x, y, 1)`` volume) are left out of the
distances: medpy's surface is what an erosion removes, and an erosion across an axis of
one voxel removes every voxel, which would score distances between whole masks rather
than between their outlines.

Empty masks, where medpy's distances are undefined:

* prediction and ground truth both empty: dice = jaccard = 1, hd95 = asd = 0
  (a perfect answer);
* exactly one empty: dice = jaccard = 0, hd95 = asd = NaN. The NaN is kept so that
  :func:`mper.eval.report.summarize` can leave it out of the mean *and count it*,
  rather than hiding a missed structure behind a made-up distance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from types import ModuleType

import numpy as np

METRIC_NAMES = ("dice", "jaccard", "hd95", "asd")
DISTANCE_METRICS = ("hd95", "asd")

Spacing = float | Sequence[float] | None


def _medpy_binary() -> ModuleType:
    """``medpy.metric.binary``, imported on first use: medpy imports scipy.stats, a second or
    two that every command paid on start, ``--help`` included."""
    from medpy.metric import binary

    return binary


def dice_score(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice of two binary masks (nonzero = foreground); 1 when both are empty."""
    # medpy divides numpy integers here, which gives NaN rather than its own fallback.
    if not np.any(pred) and not np.any(gt):
        return 1.0
    return float(_medpy_binary().dc(pred, gt))


def binary_metrics(pred: np.ndarray, gt: np.ndarray, spacing: Spacing = None) -> dict[str, float]:
    """``{"dice", "jaccard", "hd95", "asd"}`` of a binary prediction against ``gt``.

    Nonzero voxels are foreground. ``spacing`` (one number or one per axis) turns the
    distances into physical units. See the module docstring for empty masks.
    """
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt must have the same shape, got {pred.shape} and {gt.shape}")
    if not np.any(pred) and not np.any(gt):
        return {"dice": 1.0, "jaccard": 1.0, "hd95": 0.0, "asd": 0.0}
    if not np.any(pred) or not np.any(gt):
        return {"dice": 0.0, "jaccard": 0.0, "hd95": math.nan, "asd": math.nan}
    surface_pred, surface_gt, surface_spacing = _without_single_voxel_axes(pred, gt, spacing)
    return {
        "dice": float(_medpy_binary().dc(pred, gt)),
        "jaccard": float(_medpy_binary().jc(pred, gt)),
        "hd95": float(_medpy_binary().hd95(surface_pred, surface_gt, voxelspacing=surface_spacing)),
        "asd": float(_medpy_binary().asd(surface_pred, surface_gt, voxelspacing=surface_spacing)),
    }


def _without_single_voxel_axes(
    pred: np.ndarray, gt: np.ndarray, spacing: Spacing
) -> tuple[np.ndarray, np.ndarray, Spacing]:
    """``pred``, ``gt`` and ``spacing`` without the axes of one voxel (see the module
    docstring); unchanged when every axis is longer, or when all are single voxels."""
    kept = [axis for axis, length in enumerate(pred.shape) if length > 1]
    if len(kept) == pred.ndim or not kept:
        return pred, gt, spacing
    shape = tuple(pred.shape[axis] for axis in kept)
    if spacing is not None and not isinstance(spacing, (int, float)):
        spacing = [float(spacing[axis]) for axis in kept]
    return pred.reshape(shape), gt.reshape(shape), spacing


def case_metrics(
    pred_labels: np.ndarray, gt_labels: np.ndarray, num_classes: int, spacing: Spacing = None
) -> dict[int, dict[str, float]]:
    """:func:`binary_metrics` of each foreground class ``1 .. num_classes - 1`` of a label map."""
    if num_classes < 2:
        raise ValueError(f"num_classes must count the background too (at least 2), got {num_classes}")
    return {label: binary_metrics(pred_labels == label, gt_labels == label, spacing) for label in range(1, num_classes)}
