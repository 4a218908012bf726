"""Qualitative figures: image | ground truth | prediction, side by side, as PNG.

Each class has a fixed colour (:data:`CLASS_COLOURS`, by label: 1 red, 2 green, 3 blue,
...), drawn as a half-transparent fill with an opaque outline over the grey image, so
that a missed or spurious region stands out at a glance; a legend under the panels names
the classes. A heading names the case, the slice and its Dice. Small slices are
enlarged by an integer factor (nearest neighbour) until their longer side reaches
:data:`MIN_PANEL_SIZE` pixels.

An evaluation draws a few cases chosen by their mean Dice (:func:`figure_cases`): the
worst, the median, and evenly spaced ranks between them, so that the figures show how
the model fails and what a typical result looks like.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy.ndimage import binary_erosion

from mper.data.files import written_whole
from mper.datasets import get_dataset

from .metrics import dice_score

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
HEADING_HEIGHT = 24
LEGEND_HEIGHT = 24
LEGEND_SWATCH = 12
FONT_SIZE = 13
BACKGROUND = (32, 32, 32)
TEXT = (255, 255, 255)
TITLES = ("image", "ground truth", "prediction")


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except TypeError:  # Pillow < 10.1 has one fixed-size bitmap font
        return ImageFont.load_default()


def _grey(image2d: np.ndarray) -> np.ndarray:
    """Window the intensities to their 0.5-99.5 percentiles -> uint8 RGB ``(H, W, 3)``."""
    image2d = np.asarray(image2d, dtype=np.float64)
    low, high = np.percentile(image2d, [0.5, 99.5])
    scaled = np.clip((image2d - low) / (high - low), 0, 1) if high > low else np.zeros_like(image2d)
    return np.repeat((scaled * 255).round().astype(np.uint8)[..., None], 3, axis=2)


def class_colour(label: int) -> tuple[int, int, int]:
    """The RGB colour of class ``label`` (>= 1) in every figure."""
    return CLASS_COLOURS[(int(label) - 1) % len(CLASS_COLOURS)]


def _overlay(grey: np.ndarray, labels: np.ndarray) -> np.ndarray:
    blended = grey.astype(np.float64)
    for label in np.unique(labels[labels > 0]):
        colour = np.asarray(class_colour(label), dtype=np.float64)
        region = labels == label
        outline = region & ~binary_erosion(region)
        blended[region] = (1 - FILL_OPACITY) * blended[region] + FILL_OPACITY * colour
        blended[outline] = colour
    return blended.round().astype(np.uint8)


def _draw_legend(
    draw: ImageDraw.ImageDraw, top: int, class_names: Sequence[str], font: ImageFont.ImageFont | ImageFont.FreeTypeFont
) -> None:
    left = 4
    for label, name in enumerate(class_names[1:], start=1):
        middle = top + LEGEND_HEIGHT // 2
        draw.rectangle(
            (left, middle - LEGEND_SWATCH // 2, left + LEGEND_SWATCH, middle + LEGEND_SWATCH // 2),
            fill=class_colour(label),
        )
        left += LEGEND_SWATCH + 4
        draw.text((left, middle), name, fill=TEXT, font=font, anchor="lm")
        left += int(draw.textlength(name, font=font)) + 16


def save_overlay(
    image2d: np.ndarray,
    gt2d: np.ndarray,
    pred2d: np.ndarray,
    path: str | Path,
    heading: str = "",
    class_names: Sequence[str] = (),
) -> Path:
    """Write a PNG of three titled panels: the image, ground truth over it, prediction over it.

    With a ``heading``, a line of text goes above the panels; with ``class_names``
    (indexed by label, background first), a colour legend of the foreground classes
    goes below them. The panels are the slice's shape ``(h, w)`` enlarged by
    ``ceil(MIN_PANEL_SIZE / max(slice shape))`` (at least 1); the PNG is
    ``3 * w + 2 * GAP`` wide and ``h + TITLE_HEIGHT`` (+ ``HEADING_HEIGHT``,
    + ``LEGEND_HEIGHT``) high.
    """
    if image2d.ndim != 2 or image2d.shape != gt2d.shape or image2d.shape != pred2d.shape:
        raise ValueError(
            f"save_overlay needs three 2D arrays of one shape, got {image2d.shape}, {gt2d.shape}, {pred2d.shape}"
        )
    grey = _grey(image2d)
    panels = [grey, _overlay(grey, np.asarray(gt2d)), _overlay(grey, np.asarray(pred2d))]
    scale = max(1, math.ceil(MIN_PANEL_SIZE / max(image2d.shape)))
    height, width = image2d.shape[0] * scale, image2d.shape[1] * scale
    heading_height = HEADING_HEIGHT if heading else 0
    legend_height = LEGEND_HEIGHT if len(class_names) > 1 else 0
    panel_top = heading_height + TITLE_HEIGHT
    canvas = Image.new("RGB", (3 * width + 2 * GAP, panel_top + height + legend_height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = _font()
    if heading:
        draw.text((4, HEADING_HEIGHT // 2), heading, fill=TEXT, font=font, anchor="lm")
    for index, (panel, title) in enumerate(zip(panels, TITLES)):
        left = index * (width + GAP)
        enlarged = Image.fromarray(panel).resize((width, height), Image.Resampling.NEAREST)
        canvas.paste(enlarged, (left, panel_top))
        draw.text((left + 4, heading_height + TITLE_HEIGHT // 2), title, fill=TEXT, font=font, anchor="lm")
    if legend_height:
        _draw_legend(draw, panel_top + height, class_names, font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with written_whole(path) as aside:
        canvas.save(aside, format="PNG")
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


def slice_dice(gt2d: np.ndarray, pred2d: np.ndarray, num_classes: int) -> float:
    """Mean Dice over the foreground classes present in ``gt2d`` or ``pred2d``
    (NaN when the slice has none)."""
    present = [label for label in range(1, num_classes) if np.any(gt2d == label) or np.any(pred2d == label)]
    if not present:
        return math.nan
    return float(np.mean([dice_score(pred2d == label, gt2d == label) for label in present]))


@dataclass
class FigureSlice:
    """The slice of a case a figure shows: its ``index`` along the dataset's slice axis
    and the 2D image, ground truth and prediction there."""

    index: int
    image: np.ndarray
    gt: np.ndarray
    pred: np.ndarray


def figure_slice(image: np.ndarray, gt: np.ndarray, pred: np.ndarray, dataset: str) -> FigureSlice:
    """The most foreground-rich slice of a case (:func:`most_foreground_slice`).

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
    return FigureSlice(index, image2d, gt2d, pred2d)


def figure_cases(case_dice: Mapping[str, float], count: int) -> list[tuple[str, str]]:
    """Which cases to draw: ``count`` cases at evenly spaced ranks of mean Dice from the
    worst to the median, as ``(case, role)`` with role ``"worst"``, ``"median"`` or
    ``"rank r of n"`` (1 = worst). Ties keep the cases' order; NaN counts as worst."""
    ranked = sorted(case_dice, key=lambda case: -math.inf if math.isnan(case_dice[case]) else case_dice[case])
    total = len(ranked)
    if count < 1 or total == 0:
        return []
    median = (total - 1) // 2
    count = min(count, median + 1)
    ranks = [0] if count == 1 else sorted({round(i * median / (count - 1)) for i in range(count)})
    roles = {median: "median", 0: "worst"}
    return [(ranked[rank], roles.get(rank, f"rank {rank + 1} of {total}")) for rank in ranks]


def save_case_figure(
    view: FigureSlice,
    out_dir: str | Path,
    case: str,
    dataset: str,
    class_names: Sequence[str],
    role: str = "",
    case_dice: float | None = None,
) -> Path:
    """Write ``out_dir/<case>.png``: :func:`save_overlay` of ``view`` with a heading
    (case, role, slice index and Dice, case Dice) and the class legend."""
    axis_name = get_dataset(dataset).slice_name
    dice = slice_dice(view.gt, view.pred, len(class_names))
    parts = [
        case + (f" ({role})" if role else ""),
        f"{axis_name} {view.index}",
        "slice Dice n/a" if math.isnan(dice) else f"slice Dice {100 * dice:.1f}",
    ]
    if case_dice is not None:
        parts.append(f"case mean Dice {100 * case_dice:.1f}")
    return save_overlay(
        view.image,
        view.gt,
        view.pred,
        Path(out_dir) / f"{case}.png",
        heading="   ".join(parts),
        class_names=class_names,
    )


def save_figures(
    views: Mapping[str, FigureSlice],
    per_case: Mapping[str, Mapping[int, Mapping[str, float]]],
    out_dir: str | Path,
    dataset: str,
    class_names: Sequence[str],
    count: int,
) -> list[Path]:
    """Draw ``count`` of the cases in ``views``, chosen by :func:`figure_cases` from their
    mean Dice over classes in ``per_case`` (:func:`mper.eval.metrics.case_metrics` of each
    case); returns the PNG paths, worst case first."""
    case_dice = {case: float(np.mean([m["dice"] for m in metrics.values()])) for case, metrics in per_case.items()}
    return [
        save_case_figure(views[case], out_dir, case, dataset, class_names, role, case_dice[case])
        for case, role in figure_cases(case_dice, count)
    ]


class ImageWriter(Protocol):
    """What :func:`add_figures` needs of a TensorBoard ``SummaryWriter``."""

    def add_image(
        self, tag: str, img_tensor: np.ndarray, global_step: int | None = None, dataformats: str = "CHW"
    ) -> None: ...


def add_figures(writer: ImageWriter, paths: Sequence[Path], prefix: str, step: int = 0) -> None:
    """Add each figure PNG to TensorBoard as image ``<prefix>/<file name>``."""
    for path in paths:
        with Image.open(path) as png:
            writer.add_image(f"{prefix}/{Path(path).stem}", np.asarray(png.convert("RGB")), step, dataformats="HWC")
