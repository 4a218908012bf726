"""Overlay PNGs: layout, colours and the choice of slice."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mper.eval.figures import GAP, TITLE_HEIGHT, most_foreground_slice, save_case_figures, save_overlay


def test_overlay_png_has_three_panels_of_the_enlarged_slice(tmp_path):
    image = np.linspace(0, 1, 64 * 48).reshape(64, 48)
    gt = np.zeros((64, 48), np.uint8)
    gt[10:30, 10:30] = 1
    pred = np.zeros_like(gt)
    pred[12:32, 10:30] = 2
    path = save_overlay(image, gt, pred, tmp_path / "sub" / "overlay.png")
    with Image.open(path) as png:
        assert png.format == "PNG" and png.mode == "RGB"
        # 64x48 is enlarged 4x to 256x192.
        assert png.size == (3 * 192 + 2 * GAP, 256 + TITLE_HEIGHT)
        pixels = np.asarray(png)
    image_panel, gt_panel, pred_panel = (
        pixels[TITLE_HEIGHT:, left : left + 192].astype(int) for left in (0, 192 + GAP, 2 * (192 + GAP))
    )
    inside_gt, outside = (4 * 20, 4 * 20), (4 * 50, 4 * 40)
    red, green, blue = gt_panel[inside_gt]
    assert red > green and red > blue
    red, green, blue = pred_panel[inside_gt]
    assert green > red and green > blue
    red, green, blue = image_panel[inside_gt]
    assert red == green == blue
    np.testing.assert_array_equal(gt_panel[outside], image_panel[outside])


def test_overlay_refuses_mismatched_slices(tmp_path):
    with pytest.raises(ValueError, match="one shape"):
        save_overlay(np.zeros((4, 4)), np.zeros((4, 4)), np.zeros((4, 5)), tmp_path / "x.png")


def test_most_foreground_slice_prefers_gt_then_pred_then_the_middle():
    gt = np.zeros((3, 4, 5), np.uint8)
    pred = np.zeros_like(gt)
    assert most_foreground_slice(gt, pred, axis=2) == 2
    pred[:, :, 4] = 1
    assert most_foreground_slice(gt, pred, axis=2) == 4
    gt[0, 0, 1] = gt[0, 1, 1] = gt[1, 0, 3] = 1
    assert most_foreground_slice(gt, pred, axis=2) == 1
    assert most_foreground_slice(gt, pred, axis=0) == 0


@pytest.mark.parametrize(
    "dataset, shape, slice_shape", [("la", (20, 12, 6), (20, 12)), ("acdc", (4, 16, 10), (16, 10))]
)
def test_case_figure_shows_the_slice_with_most_foreground(tmp_path, dataset, shape, slice_shape):
    image = np.random.default_rng(0).random(shape)
    gt = np.zeros(shape, np.uint8)
    index = (slice(None), slice(None), 3) if dataset == "la" else (2,)
    gt[index] = 1
    path = save_case_figures(image, gt, gt, tmp_path, "case7", dataset)
    assert path == tmp_path / "case7.png"
    scale = int(np.ceil(256 / max(slice_shape)))
    with Image.open(path) as png:
        assert png.size == (3 * slice_shape[1] * scale + 2 * GAP, slice_shape[0] * scale + TITLE_HEIGHT)
        overlay = np.asarray(png)[TITLE_HEIGHT:, slice_shape[1] * scale + GAP]
    # The chosen slice is all foreground, so the ground-truth panel is red everywhere.
    assert (overlay[:, 0] > overlay[:, 1]).all()
