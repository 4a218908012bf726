"""Synthetic late-gadolinium-enhanced MRI crops of the left atrium in the UA-MT layout.

Each case is a crop around the atrium, like the UA-MT release: the atrium is a smooth
metaball body (a few merged ellipsoids) with an appendage-like lobe pointing forwards and
four vein-like stubs pointing backwards, wrapped in a thin dark wall with bright
enhanced patches. Around it lie soft tissue with fat, lungs at the sides, the ascending
and descending aorta, part of the ventricle and the spine.

Sub-populations inside every class (ids ``10 * class + k``, see
:mod:`mper.data.synth_fields`):

* atrium (1): blood pool with smooth flow variation, darker slow-flow pools, a grainy
  appendage, bright inflow in the veins;
* background (0): soft tissue, lung, fat, aorta, ventricle blood, dark wall, enhanced
  wall, spine.

Axes are (H, W, D) with H running front to back, W right to left and D foot to head.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from mper.data.la import LA_NORMALIZATION, write_la_case, write_la_lists
from mper.data.splits import LA_SPLIT_FRACTIONS, partition
from mper.data.synth_fields import (
    Canvas,
    SyntheticScan,
    Tone,
    add_blob,
    axis_grid,
    ellipse,
    fine_texture,
    frame_along,
    smooth_field,
    tone_map,
    unit,
)
from mper.errors import ConfigError

LA_SYNTH_SIZE = (128, 128, 96)
LA_SYNTH_CASES = 100
MIN_SIZE = 24
CASE_NAME_LENGTH = 20

# Noise-free intensities (before bias field, noise and z-scoring) per sub-population id.
INTENSITY = {
    0: 0.32,  # soft tissue
    1: 0.06,  # lung
    2: 0.88,  # fat
    3: 0.7,  # aorta
    4: 0.62,  # ventricle blood
    5: 0.18,  # dark wall (atrial and ventricular)
    6: 0.95,  # enhanced atrial wall
    7: 0.14,  # spine
    10: 0.6,  # atrial blood pool (plus smooth flow variation)
    11: 0.45,  # appendage (plus texture)
    12: 0.82,  # vein inflow
    13: 0.4,  # slow-flow pool inside the body
}
NOISE = 0.05
BIAS = 0.2


@dataclass
class Blob:
    """One metaball ellipsoid: centre (voxels), semi-axes (voxels), axes (rows)."""

    center: np.ndarray
    radii: np.ndarray
    axes: np.ndarray


@dataclass
class Atrium:
    """Per-case atrium shape and intensity factors."""

    body: list[Blob]
    appendage: list[Blob]
    veins: list[Blob]
    gains: dict[int, float]


def _elongated(center: np.ndarray, direction: np.ndarray, length: float, width: float) -> Blob:
    return Blob(center, np.array([length, width, width]), frame_along(direction))


def draw_atrium(rng: np.random.Generator, shape: tuple[int, int, int]) -> Atrium:
    """Random atrium of one case for a crop of ``shape`` (H, W, D)."""
    scale = min(shape[:2])
    center = np.array(shape) / 2 + rng.normal(0, 0.03, 3) * np.array(shape)
    size = rng.uniform(0.24, 0.29) * scale
    main_radii = size * rng.uniform(0.75, 0.95, 3)
    main_radii[2] = min(main_radii[2], 0.3 * shape[2])
    body = [Blob(center, main_radii, frame_along(unit([1, 0, 0] + rng.normal(0, 0.2, 3))))]
    for _ in range(2):
        lobe_center = center + 0.45 * size * unit(rng.normal(0, 1, 3))
        body.append(Blob(lobe_center, main_radii * rng.uniform(0.5, 0.65), body[0].axes))

    forward = unit([-0.7, 0.6, 0.35] + rng.normal(0, 0.15, 3))
    base = center + forward * 1.1 * size
    tip_direction = unit(forward + rng.normal(0, 0.3, 3))
    appendage = [
        _elongated(base, forward, 0.45 * size, 0.25 * size),
        _elongated(base + tip_direction * 0.45 * size, tip_direction, 0.3 * size, 0.15 * size),
    ]
    veins = []
    for side, height in ((-1, 1), (-1, -1), (1, 1), (1, -1)):
        backward = unit([0.6, 0.75 * side, 0.4 * height] + rng.normal(0, 0.1, 3))
        veins.append(_elongated(center + backward * 1.45 * size, backward, 0.6 * size, 0.14 * size))
    gains = {region: rng.uniform(0.93, 1.07) for region in INTENSITY}
    return Atrium(body, appendage, veins, gains)


def _field(shape: tuple[int, ...], blobs: list[Blob]) -> np.ndarray:
    field = np.zeros(shape, dtype=np.float32)
    for blob in blobs:
        add_blob(field, blob.center, blob.radii, blob.axes)
    return field


def _paint_surroundings(canvas: Canvas, rng: np.random.Generator, tone: Tone) -> None:
    """Tissue, fat, lungs, vessels, ventricle and spine around the atrium."""
    shape = canvas.image.shape
    rows, cols, _ = shape
    scale = min(rows, cols)
    coords = axis_grid(shape)
    canvas.paint(smooth_field(rng, shape, 2.0) > 1.0, tone(2), 2)
    lung = np.abs(coords[1] - cols / 2) > (0.42 + 0.04 * smooth_field(rng, shape, 1.5)) * cols
    canvas.paint(lung, tone(1), 1)
    for center, radius in (((0.15, 0.55), 0.07), ((0.9, 0.62), 0.06)):
        canvas.paint(ellipse(coords[:2], np.multiply(center, (rows, cols)), [radius * scale] * 2), tone(3), 3)
    ventricle_center = np.multiply((0.0, 0.62, 0.2), shape)
    canvas.paint(ellipse(coords, ventricle_center, [0.27 * scale] * 3), tone(5), 5)
    canvas.paint(ellipse(coords, ventricle_center, [0.22 * scale] * 3), tone(4), 4)
    canvas.paint(ellipse(coords[:2], (1.02 * rows, 0.45 * cols), [0.14 * scale] * 2), tone(7), 7)


def render_case(rng: np.random.Generator, atrium: Atrium, shape: tuple[int, int, int]) -> SyntheticScan:
    """Render one case of ``shape`` (H, W, D)."""
    tone = tone_map(INTENSITY, atrium.gains)
    parts = [_field(shape, blobs) for blobs in (atrium.body, atrium.appendage, atrium.veins)]
    atrium_mask = np.asarray(sum(parts) > 0.5, dtype=bool)
    dominant = np.argmax(np.stack(parts), axis=0)
    wall = ndimage.binary_dilation(atrium_mask, iterations=2) & ~atrium_mask

    canvas = Canvas(shape, tone(0) * (1 + 0.12 * smooth_field(rng, shape, 2.0)), 0)
    _paint_surroundings(canvas, rng, tone)
    canvas.paint(wall, tone(5), 5)
    canvas.paint(wall & (smooth_field(rng, shape, 3.0) > 0.6), tone(6), 6)
    flow = smooth_field(rng, shape, 2.5)
    canvas.paint(atrium_mask, tone(10) * (1 + 0.08 * flow), 10)
    canvas.paint(atrium_mask & (flow > 1.0), tone(13), 13)
    grain = fine_texture(rng, shape, 0.8)
    canvas.paint(atrium_mask & (dominant == 1), tone(11) + 0.13 * grain, 11)
    canvas.paint(atrium_mask & (dominant == 2), tone(12), 12)
    return canvas.finish(rng, LA_NORMALIZATION, NOISE, BIAS)


def case_name(rng: np.random.Generator) -> str:
    """A random name shaped like the UA-MT case names (20 upper-case letters and digits)."""
    alphabet = np.array(list(string.ascii_uppercase + string.digits))
    return "".join(rng.choice(alphabet, CASE_NAME_LENGTH))


def synthesize_la(
    out: Path, cases: int, seed: int, size: tuple[int, ...], progress: bool = True, family: str = "standard"
) -> Path:
    """Write ``cases`` synthetic LA volumes in the UA-MT layout under ``out``, split 80/20
    into ``train.list`` / ``test.list``. Each volume's size varies by a few voxels around
    ``size`` (H, W, D), like the real crops. LA's cases come in one ``family``,
    ``standard``."""
    if family != "standard":
        raise ConfigError(f"synthetic LA data has the one family 'standard'; got {family!r}")
    if cases < 2:
        raise ConfigError(f"LA needs at least 2 cases (train and test), got cases={cases}")
    if len(size) != 3 or min(size) < MIN_SIZE:
        raise ConfigError(f"LA size must be (H, W, D) with each >= {MIN_SIZE}, got {size}")
    name_rng = np.random.default_rng([seed, 0])
    names: list[str] = []
    while len(names) < cases:
        name = case_name(name_rng)
        if name not in names:
            names.append(name)
    jitter = [max(1, round(0.03 * length)) for length in size]
    for number, name in enumerate(tqdm(names, desc="synthetic LA", disable=not progress)):
        rng = np.random.default_rng([seed, 1, number])
        height, width, depth = (int(length + rng.integers(-spread, spread + 1)) for length, spread in zip(size, jitter))
        shape = (height, width, depth)
        scan = render_case(rng, draw_atrium(rng, shape), shape)
        write_la_case(out, name, scan.image, scan.label)
    train, test = partition(names, LA_SPLIT_FRACTIONS, np.random.default_rng([seed, 2]))
    write_la_lists(out, train, test)
    return out
