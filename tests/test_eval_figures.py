"""Overlay PNGs: layout, colours, legend and heading, the choice of slice and of cases."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mper.eval.figures import (
    GAP,
    HEADING_HEIGHT,
    LEGEND_HEIGHT,
    TITLE_HEIGHT,
    add_figures,
    class_colour,
    figure_cases,
    figure_slice,
    most_foreground_slice,
    save_case_figure,
    save_figures,
    save_overlay,
    slice_dice,
)


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


def test_a_failed_write_leaves_neither_a_partial_png_nor_the_one_before(tmp_path, monkeypatch):
    path = tmp_path / "x.png"
    path.write_bytes(b"an earlier figure")

    def write_half_then_fail(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", write_half_then_fail)
    with pytest.raises(OSError, match=f"No space left on device.*{path.name}|{path.name}.*No space left"):
        save_overlay(np.zeros((4, 4)), np.zeros((4, 4)), np.zeros((4, 4)), path)
    assert path.read_bytes() == b"an earlier figure"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]


def test_most_foreground_slice_prefers_gt_then_pred_then_the_middle():
    gt = np.zeros((3, 4, 5), np.uint8)
    pred = np.zeros_like(gt)
    assert most_foreground_slice(gt, pred, axis=2) == 2
    pred[:, :, 4] = 1
    assert most_foreground_slice(gt, pred, axis=2) == 4
    gt[0, 0, 1] = gt[0, 1, 1] = gt[1, 0, 3] = 1
    assert most_foreground_slice(gt, pred, axis=2) == 1
    assert most_foreground_slice(gt, pred, axis=0) == 0


def test_heading_and_legend_add_their_strips_and_the_legend_shows_each_class_colour(tmp_path):
    image = np.zeros((32, 32))
    labels = np.zeros((32, 32), np.uint8)
    path = save_overlay(image, labels, labels, tmp_path / "x.png", heading="case A", class_names=("bg", "RV", "LV"))
    with Image.open(path) as png:
        width = 3 * 256 + 2 * GAP
        assert png.size == (width, HEADING_HEIGHT + TITLE_HEIGHT + 256 + LEGEND_HEIGHT)
        legend = np.asarray(png)[-LEGEND_HEIGHT:].reshape(-1, 3)
        heading = np.asarray(png)[:HEADING_HEIGHT]
    legend_colours = {tuple(pixel) for pixel in legend}
    assert class_colour(1) in legend_colours and class_colour(2) in legend_colours
    assert class_colour(3) not in legend_colours  # only the named classes
    assert (heading > 128).any()  # the heading's text is drawn


@pytest.mark.parametrize(
    "dataset, shape, slice_shape", [("la", (20, 12, 6), (20, 12)), ("acdc", (4, 16, 10), (16, 10))]
)
def test_case_figure_shows_the_slice_with_most_foreground(tmp_path, dataset, shape, slice_shape):
    image = np.random.default_rng(0).random(shape)
    gt = np.zeros(shape, np.uint8)
    index = (slice(None), slice(None), 3) if dataset == "la" else (2,)
    gt[index] = 1
    view = figure_slice(image, gt, gt, dataset)
    assert view.index == (3 if dataset == "la" else 2) and view.image.shape == slice_shape
    path = save_case_figure(view, tmp_path, "case7", dataset, ("background", "fg"))
    assert path == tmp_path / "case7.png"
    scale = int(np.ceil(256 / max(slice_shape)))
    top = HEADING_HEIGHT + TITLE_HEIGHT
    with Image.open(path) as png:
        assert png.size == (3 * slice_shape[1] * scale + 2 * GAP, slice_shape[0] * scale + top + LEGEND_HEIGHT)
        overlay = np.asarray(png)[top : top + slice_shape[0] * scale, slice_shape[1] * scale + GAP]
    # The chosen slice is all foreground, so the ground-truth panel is red everywhere.
    assert (overlay[:, 0] > overlay[:, 1]).all()


def test_slice_dice_averages_the_classes_present_on_the_slice():
    gt = np.array([[1, 1, 0, 0], [2, 2, 0, 0]])
    pred = np.array([[1, 0, 0, 0], [2, 2, 0, 0]])
    assert slice_dice(gt, pred, num_classes=4) == pytest.approx((2 / 3 + 1.0) / 2)
    assert math.isnan(slice_dice(np.zeros((2, 2)), np.zeros((2, 2)), num_classes=4))


def test_figure_cases_run_from_the_worst_to_the_median():
    dice = {f"case{i}": score for i, score in enumerate([0.9, 0.2, 0.8, 0.5, 0.7, 0.95, 0.6, 0.85, 0.3])}
    # ranked: case1 .2, case8 .3, case3 .5, case6 .6, case4 .7 (median), case2 .8, ...
    assert figure_cases(dice, 1) == [("case1", "worst")]
    assert figure_cases(dice, 2) == [("case1", "worst"), ("case4", "median")]
    assert figure_cases(dice, 3) == [("case1", "worst"), ("case3", "rank 3 of 9"), ("case4", "median")]
    assert len(figure_cases(dice, 20)) == 5  # never past the median
    assert figure_cases(dice, 0) == [] and figure_cases({}, 3) == []
    assert figure_cases({"a": 0.5, "b": math.nan}, 1) == [("b", "worst")]


def test_save_figures_draws_the_worst_and_median_cases_and_tensorboard_gets_them(tmp_path):
    shape = (3, 8, 8)
    rng = np.random.default_rng(0)
    views, per_case = {}, {}
    for number, score in enumerate([0.9, 0.1, 0.5, 0.7, 0.3]):
        gt = np.zeros(shape, np.uint8)
        gt[1, 2:6, 2:6] = 1
        views[f"c{number}"] = figure_slice(rng.random(shape), gt, gt, "acdc")
        per_case[f"c{number}"] = {1: {"dice": score}, 2: {"dice": score}}
    paths = save_figures(views, per_case, tmp_path, "acdc", ("background", "RV", "Myo"), count=2)
    assert paths == [tmp_path / "c1.png", tmp_path / "c2.png"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["c1.png", "c2.png"]

    class Writer:
        def __init__(self):
            self.images = {}

        def add_image(self, tag, img_tensor, global_step=None, dataformats="CHW"):
            self.images[tag] = (img_tensor.shape, global_step, dataformats)

    writer = Writer()
    add_figures(writer, paths, "test")
    with Image.open(paths[0]) as png:
        width, height = png.size
    assert writer.images == {"test/c1": ((height, width, 3), 0, "HWC"), "test/c2": ((height, width, 3), 0, "HWC")}
