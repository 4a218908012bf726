"""Dice, Jaccard, 95HD and ASD against hand-computed cases, overlap counts and brute-force
surface distances; empty masks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mper.eval.metrics import binary_metrics, case_metrics, dice_score


def square(shape, rows, cols):
    mask = np.zeros(shape, dtype=bool)
    mask[rows[0] : rows[1], cols[0] : cols[1]] = True
    return mask


# A 3x3 ground-truth square and the same square shifted one column to the right.
# Overlap 6 of 9 + 9 voxels. Surfaces are the 8-voxel rings. Going from the predicted
# ring to the true one, the 4 voxels of the right and left edges that do not coincide are
# 1 away, the other 4 coincide; the same holds the other way round.
GT_SQUARE = square((7, 7), (1, 4), (1, 4))
SHIFTED_SQUARE = square((7, 7), (1, 4), (2, 5))


def test_hand_computed_shifted_square():
    metrics = binary_metrics(SHIFTED_SQUARE, GT_SQUARE)
    assert metrics["dice"] == pytest.approx(2 * 6 / 18)
    assert metrics["jaccard"] == pytest.approx(6 / 12)
    assert metrics["asd"] == pytest.approx(4 / 8)
    assert metrics["hd95"] == pytest.approx(1.0)


def test_hand_computed_shifted_square_with_spacing():
    """Columns 3 units apart: the column steps become 3, the centre's nearest step a row (1)."""
    metrics = binary_metrics(SHIFTED_SQUARE, GT_SQUARE, spacing=(1.0, 3.0))
    assert metrics["asd"] == pytest.approx((3 + 1 + 3 + 3) / 8)
    assert metrics["hd95"] == pytest.approx(3.0)
    assert metrics["dice"] == pytest.approx(2 / 3)


def blob_volumes():
    rng = np.random.default_rng(3)
    grid = np.stack(np.meshgrid(*(np.arange(20),) * 3, indexing="ij"))
    gt = ((grid - 10) ** 2).sum(axis=0) < 36
    centre, stretch = np.array([11, 9, 10]), np.array([1.0, 1.5, 0.8])
    pred = ((grid - centre[:, None, None, None]) ** 2 / stretch[:, None, None, None]).sum(axis=0) < 40
    pred[rng.random(pred.shape) < 0.01] = True
    return pred, gt


def surface(mask: np.ndarray) -> np.ndarray:
    """Coordinates of the foreground voxels with a background face neighbour (outside the
    array counts as background): the border medpy's distances run between."""
    padded = np.pad(mask, 1)
    interior = padded.copy()
    for axis in range(mask.ndim):
        interior &= np.roll(padded, 1, axis) & np.roll(padded, -1, axis)
    inner = tuple(slice(1, -1) for _ in range(mask.ndim))
    return np.argwhere(mask & ~interior[inner]).astype(float)


def nearest_distances(from_mask: np.ndarray, to_mask: np.ndarray, spacing) -> np.ndarray:
    """For every surface voxel of ``from_mask``, the distance to the nearest surface voxel
    of ``to_mask``, by comparing every pair."""
    scale = np.ones(from_mask.ndim) if spacing is None else np.asarray(spacing, dtype=float)
    a, b = surface(from_mask) * scale, surface(to_mask) * scale
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)).min(axis=1)


@pytest.mark.parametrize("spacing", [None, (1.0, 0.5, 2.0)])
def test_equals_overlap_counts_and_brute_force_surface_distances_on_a_3d_volume(spacing):
    pred, gt = blob_volumes()
    metrics = binary_metrics(pred.astype(np.uint8), gt.astype(np.uint8), spacing)
    overlap, union = (pred & gt).sum(), (pred | gt).sum()
    to_gt, to_pred = nearest_distances(pred, gt, spacing), nearest_distances(gt, pred, spacing)
    expected = {
        "dice": 2 * overlap / (pred.sum() + gt.sum()),
        "jaccard": overlap / union,
        # 95th percentile of both directions' distances together (medpy's definition)
        "hd95": np.percentile(np.concatenate([to_gt, to_pred]), 95),
        # from the predicted surface to the true one
        "asd": to_gt.mean(),
    }
    assert metrics == pytest.approx(expected, rel=1e-12)
    assert 0 < metrics["dice"] < 1 and metrics["hd95"] > 1 and metrics["asd"] != pytest.approx(to_pred.mean())


def test_both_empty_is_a_perfect_answer():
    empty = np.zeros((4, 4, 4), dtype=np.uint8)
    assert binary_metrics(empty, empty) == {"dice": 1.0, "jaccard": 1.0, "hd95": 0.0, "asd": 0.0}
    assert dice_score(empty, empty) == 1.0


@pytest.mark.parametrize("which_empty", ["pred", "gt"])
def test_one_empty_gives_zero_overlap_and_undefined_distances(which_empty):
    empty = np.zeros_like(GT_SQUARE)
    pred, gt = (empty, GT_SQUARE) if which_empty == "pred" else (GT_SQUARE, empty)
    metrics = binary_metrics(pred, gt)
    assert metrics["dice"] == 0.0
    assert metrics["jaccard"] == 0.0
    assert math.isnan(metrics["hd95"]) and math.isnan(metrics["asd"])


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="same shape"):
        binary_metrics(np.ones((3, 3)), np.ones((3, 4)))


def test_case_metrics_scores_each_foreground_class():
    gt = np.zeros((7, 7), dtype=np.uint8)
    gt[GT_SQUARE] = 1
    gt[5:7, 5:7] = 3
    pred = np.zeros_like(gt)
    pred[SHIFTED_SQUARE] = 1
    pred[0, 6] = 2
    metrics = case_metrics(pred, gt, num_classes=4)
    assert sorted(metrics) == [1, 2, 3]
    assert metrics[1] == binary_metrics(SHIFTED_SQUARE, GT_SQUARE)
    assert metrics[2]["dice"] == 0.0 and math.isnan(metrics[2]["hd95"])
    assert metrics[3]["dice"] == 0.0 and math.isnan(metrics[3]["asd"])
    with pytest.raises(ValueError, match="at least 2"):
        case_metrics(pred, gt, num_classes=1)


@pytest.mark.parametrize("spacing", [None, (0.5, 2.0)])
def test_a_2d_image_stored_with_an_axis_of_one_slice_is_scored_as_the_2d_image(spacing):
    """An (x, y, 1) volume (a 2D scan as imported) has the distances of its 2D outlines: an
    erosion across the single slice would make every voxel a surface voxel."""
    flat = binary_metrics(SHIFTED_SQUARE, GT_SQUARE, spacing)
    for axis in range(3):
        volume_spacing = None if spacing is None else (*spacing[:axis], 3.0, *spacing[axis:])
        volume = binary_metrics(np.expand_dims(SHIFTED_SQUARE, axis), np.expand_dims(GT_SQUARE, axis), volume_spacing)
        assert volume == pytest.approx(flat)
