"""Qualitative figures: image | ground truth | prediction, side by side, as PNG.

Each class has a fixed colour (:data:`CLASS_COLOURS`, by label: 1 red, 2 green, 3 blue,
...), drawn as a half-transparent fill with an opaque outline over the grey image, so
that a missed or spurious region stands out at a glance. Small slices are enlarged by
an integer factor (nearest neighbour) until their longer side reaches
:data:`MIN_PANEL_SIZE` pixels.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy.ndimage import binary_erosion

from mper.datasets import get_dataset

CLASS_COLOURS = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (255, 225, 25),
    (145, 30, 180),
    (245, 130, 48),
)
FILL_OPACITY = 0.45
MIN_PANEL_SIZE = 256
GAP = 4
TITLE_HEIGHT = 20
BACKGROUND = (32, 32, 32)
TITLES = ("image", "ground truth", "prediction")


def _grey(image2d: np.ndarray) -> np.ndarray:
    """Window the intensities to their 0.5-99.5 percentiles -> uint8 RGB ``(H, W, 3)``."""
    image2d = np.asarray(image2d, dtype=np.float64)
    low, high = np.percentile(image2d, [0.5, 99.5])
    scaled = np.clip((image2d - low) / (high - low), 0, 1) if high > low else np.zeros_like(image2d)
    return np.repeat((scaled * 255).round().astype(np.uint8)[..., None], 3, axis=2)


def _overlay(grey: np.ndarray, labels: np.ndarray) -> np.ndarray:
    blended = grey.astype(np.float64)
    for label in np.unique(labels[labels > 0]):
        colour = np.asarray(CLASS_COLOURS[(int(label) - 1) % len(CLASS_COLOURS)], dtype=np.float64)
        region = labels == label
        outline = region & ~binary_erosion(region)
        blended[region] = (1 - FILL_OPACITY) * blended[region] + FILL_OPACITY * colour
        blended[outline] = colour
    return blended.round().astype(np.uint8)


def save_overlay(image2d: np.ndarray, gt2d: np.ndarray, pred2d: np.ndarray, path: str | Path) -> Path:
    """Write a PNG of three titled panels: the image, ground truth over it, prediction over it.

    The PNG is ``3 * w + 2 * GAP`` wide and ``h + TITLE_HEIGHT`` high, ``(h, w)`` being the
    slice's shape enlarged by ``ceil(MIN_PANEL_SIZE / max(slice shape))`` (at least 1).
    """
    if image2d.ndim != 2 or image2d.shape != gt2d.shape or image2d.shape != pred2d.shape:
        raise ValueError(
            "save_overlay needs three 2D arrays of one shape, got "
            f"{image2d.shape}, {gt2d.shape}, {pred2d.shape}"
        )
    grey = _grey(image2d)
    panels = [grey, _overlay(grey, np.asarray(gt2d)), _overlay(grey, np.asarray(pred2d))]
    scale = max(1, math.ceil(MIN_PANEL_SIZE / max(image2d.shape)))
    height, width = image2d.shape[0] * scale, image2d.shape[1] * scale
    canvas = Image.new("RGB", (3 * width + 2 * GAP, height + TITLE_HEIGHT), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for index, (panel, title) in enumerate(zip(panels, TITLES)):
        left = index * (width + GAP)
        enlarged = Image.fromarray(panel).resize((width, height), Image.Resampling.NEAREST)
        canvas.paste(enlarged, (left, TITLE_HEIGHT))
        draw.text((left + 4, 4), title, fill=(255, 255, 255), font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, format="PNG")
    return path


def most_foreground_slice(gt: np.ndarray, pred: np.ndarray, axis: int) -> int:
    """Index along ``axis`` of the slice with the most ground-truth foreground.

    Falls back to the prediction's foreground when the ground truth is empty, and to the
    middle slice when both are; ties go to the lowest index.
    """
    other_axes = tuple(a for a in range(gt.ndim) if a != axis % gt.ndim)
    for labels in (gt, pred):
        foreground = np.count_nonzero(labels, axis=other_axes)
        if foreground.any():
            return int(foreground.argmax())
    return gt.shape[axis] // 2


def save_case_figures(
    image: np.ndarray, gt: np.ndarray, pred: np.ndarray, out_dir: str | Path, case: str, dataset: str
) -> Path:
    """Write ``out_dir/<case>.png``: :func:`save_overlay` of the most foreground-rich slice.

    The slice is taken along the dataset's ``slice_axis`` (LA: the axial slice ``[:, :, z]``
    of an ``(H, W, D)`` volume; ACDC: ``[s]`` of ``(S, H, W)``).
    """
    if not image.shape == gt.shape == pred.shape or image.ndim != 3:
        raise ValueError(
            f"image, gt and pred must be 3D volumes of one shape, got {image.shape}, {gt.shape}, {pred.shape}"
        )
    axis = get_dataset(dataset).slice_axis
    index = most_foreground_slice(gt, pred, axis)
    image2d, gt2d, pred2d = (np.take(volume, index, axis=axis) for volume in (image, gt, pred))
    return save_overlay(image2d, gt2d, pred2d, Path(out_dir) / f"{case}.png")
