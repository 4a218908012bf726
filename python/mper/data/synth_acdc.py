"""Synthetic cine-MRI short-axis stacks in the ACDC (SSL4MIS) layout.

Each patient gets a heart drawn slice by slice from base to apex: an elliptical LV blood
pool with a wavy border, a myocardium ring of varying thickness around it and an RV
crescent wrapped around one side, inside a body with lungs, fat, liver, spine and aorta.
Sizes shrink towards the apex (the RV vanishes first) and the end-systolic (ES) frame has
a smaller LV/RV cavity and a thicker wall than the end-diastolic (ED) frame.

Sub-populations inside every class (ids ``10 * class + k``, see
:mod:`mper.data.synth_fields`):

* RV (1): plain blood, a trabeculated outer band, a bright inflow core;
* myocardium (2): normal dark muscle, a brighter scar-like sector, a grainy sector;
* LV (3): blood, a bright flow jet, dark papillary-muscle blobs inside the cavity;
* background (0): air, soft tissue, fat, lung, liver, spine, aorta, dark RV wall.

Families (:data:`ACDC_FAMILIES`) vary the patients the way real scans vary between
sites: ``standard`` (square slices of one size, one field of view, mild bias and noise),
``scanners`` (every patient its own non-square, odd-sized slice shape, field of view,
slice count, contrast, bias field and noise level) and ``thin`` (small hearts with a thin
myocardium and a dilated RV: thin, touching structures and strong class imbalance).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mper.data.acdc import ACDC_NORMALIZATION, write_acdc_lists, write_acdc_volume
from mper.data.splits import ACDC_SPLIT_FRACTIONS, partition
from mper.data.synth_fields import (
    Canvas,
    SyntheticScan,
    Tone,
    axis_grid,
    ellipse,
    fine_texture,
    smooth_field,
    tone_map,
)
from mper.errors import ConfigError

ACDC_SYNTH_SIZE = (224, 224)
ACDC_SYNTH_CASES = 100
MIN_SIZE = 32

# Noise-free intensities (before bias field, noise and min-max scaling) per
# sub-population id. Gaps between neighbouring classes stay well above the noise level,
# while the spread inside a class is as large as the gaps between classes.
INTENSITY = {
    0: 0.02,  # air
    1: 0.36,  # soft tissue
    2: 0.88,  # fat
    3: 0.07,  # lung
    4: 0.5,  # liver
    5: 0.16,  # spine
    6: 0.78,  # aorta
    7: 0.18,  # RV free wall
    10: 0.66,  # RV blood
    11: 0.5,  # RV trabeculae (plus texture)
    12: 0.9,  # RV inflow core
    20: 0.27,  # myocardium
    21: 0.52,  # scar-like myocardium
    22: 0.3,  # grainy myocardium (plus texture)
    30: 0.72,  # LV blood
    31: 0.97,  # LV flow jet
    32: 0.3,  # papillary muscles
}
NOISE = 0.03
BIAS = 0.12
SLICES = (6, 10)


@dataclass
class Heart:
    """Per-patient anatomy; lengths in pixels, angles in radians."""

    center: np.ndarray  # (row, col) of the LV at the base
    apex_shift: np.ndarray  # (row, col) drift of the LV centre from base to apex
    lv_radius: float
    lv_aspect: float  # minor / major axis of the LV cavity
    lv_angle: float
    wobble: np.ndarray  # (2, 2): amplitude and phase of the 2nd and 3rd border harmonics
    wall: float  # myocardium thickness
    rv_angle: float  # direction from the LV centre towards the RV
    rv_depth: float  # radial depth of the RV cavity
    rv_extent: float  # angular half-extent of the RV crescent around the LV
    scar_angle: float
    scar_width: float
    grainy_angle: float
    papillary_angles: np.ndarray
    jet_angle: float
    es_cavity: float  # ES / ED cavity radius
    es_wall: float  # ES / ED wall thickness
    gains: dict[int, float]  # per-patient intensity factor of each sub-population


def draw_heart(rng: np.random.Generator, size: tuple[int, int], heart_scale: float = 1.0) -> Heart:
    """Random anatomy of one patient for images of ``size`` (H, W); ``heart_scale``
    multiplies every length of the heart (a finer or coarser pixel spacing)."""
    scale = min(size) * heart_scale
    lv_radius = rng.uniform(0.075, 0.1) * scale
    return Heart(
        center=np.array(size) / 2 + rng.normal(0, 0.035 * scale, 2),
        apex_shift=rng.normal(0, 0.03 * scale, 2),
        lv_radius=lv_radius,
        lv_aspect=rng.uniform(0.8, 1.0),
        lv_angle=rng.uniform(0, np.pi),
        wobble=np.stack([rng.uniform(0, 0.07, 2), rng.uniform(0, 2 * np.pi, 2)]),
        wall=rng.uniform(0.35, 0.5) * lv_radius,
        rv_angle=np.pi + rng.normal(0, 0.3),
        rv_depth=rng.uniform(0.6, 0.95) * lv_radius,
        rv_extent=rng.uniform(1.0, 1.4),
        scar_angle=rng.uniform(0, 2 * np.pi),
        scar_width=rng.uniform(0.9, 1.5),
        grainy_angle=rng.uniform(0, 2 * np.pi),
        papillary_angles=rng.uniform(0, 2 * np.pi) + np.array([0.0, rng.uniform(1.8, 2.4)]),
        jet_angle=rng.uniform(0, 2 * np.pi),
        es_cavity=rng.uniform(0.62, 0.75),
        es_wall=rng.uniform(1.25, 1.45),
        gains={region: rng.uniform(0.93, 1.07) for region in INTENSITY},
    )


def _angle_gap(angle: np.ndarray, target: float) -> np.ndarray:
    """Absolute angular distance in [0, pi]."""
    gap: np.ndarray = np.abs(np.angle(np.exp(1j * (angle - target))))
    return gap


def _paint_body(canvas: Canvas, shape: tuple[int, int, int], tone: Tone) -> None:
    """Torso around the heart: body outline with a fat layer, lungs, liver, spine, aorta."""
    coords = axis_grid(shape)[1:]
    depth = np.linspace(0.0, 1.0, shape[0], dtype=np.float32).reshape(-1, 1, 1)
    middle = np.array(shape[1:]) / 2
    scale = min(shape[1:])
    body = np.array([0.42, 0.47]) * shape[1:]
    canvas.paint(ellipse(coords, middle, body), tone(2), 2)
    canvas.paint(ellipse(coords, middle, body - 0.03 * scale), tone(1), 1)
    for side in (-1, 1):
        lung = ellipse(coords, middle + [-0.06 * scale, side * 0.27 * scale], [0.2 * scale, 0.11 * scale])
        canvas.paint(lung, tone(3), 3)
    liver_radii = [(0.08 + 0.12 * depth) * scale, (0.1 + 0.2 * depth) * scale]  # grows towards the apex
    canvas.paint(ellipse(coords, middle + [0.3 * scale, -0.16 * scale], liver_radii), tone(4), 4)
    canvas.paint(ellipse(coords, middle + [0.36 * scale, 0.03 * scale], [0.05 * scale] * 2), tone(5), 5)
    canvas.paint(ellipse(coords, middle + [0.27 * scale, 0.12 * scale], [0.035 * scale] * 2), tone(6), 6)


@dataclass
class HeartGeometry:
    """Per-pixel coordinates of one frame (arrays broadcasting to (S, H, W)), in pixels."""

    major: np.ndarray  # offset from the LV centre along the LV's long in-plane axis
    minor: np.ndarray  # ... and across it
    radius: np.ndarray  # elliptical distance from the LV centre
    angle: np.ndarray  # polar angle in the LV frame
    cavity: np.ndarray  # mean LV cavity radius of each slice
    wall: np.ndarray  # mean myocardium thickness of each slice
    endo: np.ndarray  # endocardial border radius at each pixel's angle
    epi: np.ndarray  # epicardial border radius at each pixel's angle
    from_rv: np.ndarray  # signed image-plane angle from the RV direction
    rv_outer: np.ndarray  # free-wall border radius of the RV at each pixel's angle
    rv_present: np.ndarray  # per slice: the RV is deep enough to draw


def heart_geometry(heart: Heart, shape: tuple[int, int, int], systole: bool) -> HeartGeometry:
    """Where the LV, myocardium and RV borders of ``heart`` lie in a frame of ``shape``."""
    rows, cols = axis_grid(shape)[1:]
    depth = np.linspace(0.0, 1.0, shape[0], dtype=np.float32).reshape(-1, 1, 1)  # base 0, apex 1
    down = rows - (heart.center[0] + heart.apex_shift[0] * depth)
    right = cols - (heart.center[1] + heart.apex_shift[1] * depth)
    major = right * np.cos(heart.lv_angle) + down * np.sin(heart.lv_angle)
    minor = down * np.cos(heart.lv_angle) - right * np.sin(heart.lv_angle)
    angle = np.arctan2(minor, major)
    (amp2, amp3), (phase2, phase3) = heart.wobble
    waviness = 1 + amp2 * np.cos(2 * angle + phase2) + amp3 * np.cos(3 * angle + phase3)
    contraction = heart.es_cavity if systole else 1.0
    cavity = heart.lv_radius * (1 - 0.6 * depth**1.5) * contraction
    wall = heart.wall * (1 - 0.25 * depth) * (heart.es_wall if systole else 1.0)
    endo = cavity * waviness
    epi = endo + wall * (1 + 0.2 * np.cos(angle + phase2))
    # The RV crescent hugs the epicardium: deepest towards ``rv_angle``, tapering to 0 at
    # ``rv_extent`` radians away, shallower towards the apex where it disappears.
    from_rv = np.angle(np.exp(1j * (np.arctan2(down, right) - heart.rv_angle)))
    profile = np.sqrt(np.clip(1 - (from_rv / heart.rv_extent) ** 2, 0, None))
    rv_depth = heart.rv_depth * np.clip(1 - 1.1 * depth, 0, 1) * contraction
    return HeartGeometry(
        major=major,
        minor=minor,
        radius=np.hypot(major, minor / heart.lv_aspect),
        angle=angle,
        cavity=cavity,
        wall=wall,
        endo=endo,
        epi=epi,
        from_rv=from_rv,
        rv_outer=np.where(profile > 0, epi + rv_depth * profile, -1.0),
        rv_present=rv_depth > 1.0,
    )


def _paint_rv(canvas: Canvas, shape: HeartGeometry, grain: np.ndarray, tone: Tone) -> None:
    """RV cavity (plain, trabeculated free-wall band, bright inflow core) and its wall."""
    outside_lv = shape.radius >= shape.epi
    rv = outside_lv & (shape.radius < shape.rv_outer) & shape.rv_present
    canvas.paint(outside_lv & (shape.radius < shape.rv_outer + 2.5) & ~rv, tone(7), 7)
    septum_to_free_wall = (shape.radius - shape.epi) / np.maximum(shape.rv_outer - shape.epi, 1e-3)
    canvas.paint(rv, tone(10), 10)
    canvas.paint(rv & (septum_to_free_wall > 0.6), tone(11) + 0.15 * grain, 11)
    canvas.paint(rv & (septum_to_free_wall < 0.45) & (shape.from_rv > 0), tone(12), 12)


def _paint_myocardium(canvas: Canvas, shape: HeartGeometry, heart: Heart, grain: np.ndarray, tone: Tone) -> None:
    """Myocardium ring with a subendocardial scar-like sector and a grainy sector."""
    myocardium = (shape.radius >= shape.endo) & (shape.radius < shape.epi)
    scar = _angle_gap(shape.angle, heart.scar_angle) < heart.scar_width / 2
    canvas.paint(myocardium, tone(20), 20)
    canvas.paint(myocardium & scar & (shape.radius < shape.endo + 0.7 * shape.wall), tone(21), 21)
    grainy = myocardium & (_angle_gap(shape.angle, heart.grainy_angle) < 0.6) & ~scar
    canvas.paint(grainy, tone(22) + 0.12 * grain, 22)


def _paint_lv(canvas: Canvas, shape: HeartGeometry, heart: Heart, tone: Tone) -> None:
    """LV blood pool with a bright flow jet and two dark papillary muscles."""
    lv = shape.radius < shape.endo
    canvas.paint(lv, tone(30), 30)
    jet = (_angle_gap(shape.angle, heart.jet_angle) < 0.9) & (shape.radius > 0.35 * shape.endo)
    canvas.paint(lv & jet, tone(31), 31)
    for papillary_angle in heart.papillary_angles:
        spot_major = 0.6 * shape.cavity * np.cos(papillary_angle)
        spot_minor = 0.6 * shape.cavity * np.sin(papillary_angle)
        distance = np.hypot(shape.major - spot_major, shape.minor - spot_minor)
        papillary = distance < 0.2 * shape.cavity
        canvas.paint(papillary & lv & (shape.cavity > 3.0), tone(32), 32)


@dataclass(frozen=True)
class ScanLook:
    """How a scanner renders a patient: Rician ``noise`` level, log-amplitude ``bias`` of
    the smooth bias field and ``gamma`` of the contrast curve applied to the noise-free
    intensities (1: linear)."""

    noise: float = NOISE
    bias: float = BIAS
    gamma: float = 1.0


def render_frame(
    rng: np.random.Generator,
    heart: Heart,
    size: tuple[int, int],
    slices: int,
    systole: bool,
    look: ScanLook = ScanLook(),
) -> SyntheticScan:
    """Render one frame (S, H, W) of a patient: ED if not ``systole``, else ES."""
    shape = (slices, *size)
    tone = tone_map(INTENSITY, heart.gains)
    geometry = heart_geometry(heart, shape, systole)
    canvas = Canvas(shape, tone(0), 0)
    _paint_body(canvas, shape, tone)
    fat_patches = smooth_field(rng, shape, 3.0) > 0.4
    canvas.paint(fat_patches & (geometry.radius < geometry.epi + 0.2 * heart.lv_radius), tone(2), 2)
    grain = fine_texture(rng, shape, (0, 1.0, 1.0))
    _paint_rv(canvas, geometry, grain, tone)
    _paint_myocardium(canvas, geometry, heart, grain, tone)
    _paint_lv(canvas, geometry, heart, tone)
    if look.gamma != 1.0:
        canvas.image = np.maximum(canvas.image, 0) ** np.float32(look.gamma)
    return canvas.finish(rng, ACDC_NORMALIZATION, look.noise, look.bias)


Range = tuple[float, float]


@dataclass(frozen=True)
class AcdcFamily:
    """How the patients of one family of synthetic ACDC data differ from each other.

    Every range ``(low, high)`` is drawn uniformly once per patient. ``aspect``: factor of
    each slice side relative to the requested size, drawn per axis (non-square slices);
    ``odd_sizes``: sides rounded up to odd numbers; ``slices``: slice counts per frame
    (inclusive); ``heart_scale``: heart size relative to the image (pixel spacing and
    field of view); ``wall_scale`` / ``rv_scale``: myocardium thickness and RV depth
    relative to the standard anatomy; ``noise``, ``bias``, ``gamma``: see
    :class:`ScanLook`.
    """

    description: str
    aspect: Range = (1.0, 1.0)
    odd_sizes: bool = False
    slices: tuple[int, int] = SLICES
    heart_scale: Range = (1.0, 1.0)
    wall_scale: Range = (1.0, 1.0)
    rv_scale: Range = (1.0, 1.0)
    noise: Range = (NOISE, NOISE)
    bias: Range = (BIAS, BIAS)
    gamma: Range = (1.0, 1.0)

    def slice_size(self, rng: np.random.Generator, size: tuple[int, int]) -> tuple[int, int]:
        """One patient's slice size (H, W) for the requested ``size``."""
        height, width = (max(MIN_SIZE, round(side * rng.uniform(*self.aspect))) for side in size)
        return (height | 1, width | 1) if self.odd_sizes else (height, width)

    def look(self, rng: np.random.Generator) -> ScanLook:
        """One patient's scanner rendering."""
        return ScanLook(rng.uniform(*self.noise), rng.uniform(*self.bias), rng.uniform(*self.gamma))


#: The synthetic ACDC families, by name (``mper-data synth --family``).
ACDC_FAMILIES = {
    "standard": AcdcFamily("square slices of the requested size, one field of view, mild bias and noise"),
    "scanners": AcdcFamily(
        "every patient its own scanner: non-square odd-sized slices (0.7-1.35 x each requested "
        "side), field of view (heart 0.7-1.3 x), 4-16 slices, contrast curve, strong bias and noise",
        aspect=(0.7, 1.35),
        odd_sizes=True,
        slices=(4, 16),
        heart_scale=(0.7, 1.3),
        noise=(0.02, 0.08),
        bias=(0.1, 0.45),
        gamma=(0.7, 1.4),
    ),
    "thin": AcdcFamily(
        "small hearts (0.75-0.95 x) with a thin myocardium (0.5-0.75 x) and a dilated RV "
        "(1.2-1.6 x): thin, touching structures and few foreground pixels",
        heart_scale=(0.75, 0.95),
        wall_scale=(0.5, 0.75),
        rv_scale=(1.2, 1.6),
        slices=(5, 12),
        noise=(0.03, 0.05),
    ),
}


def patient_name(index: int) -> str:
    """``patient001`` for index 1."""
    return f"patient{index:03d}"


def synthesize_acdc(
    out: Path, cases: int, seed: int, size: tuple[int, ...], progress: bool = True, family: str = "standard"
) -> Path:
    """Write ``cases`` synthetic patients (two frames each) of ``family`` (one of
    :data:`ACDC_FAMILIES`) in the SSL4MIS layout under ``out``.

    Patients are split 70/10/20 into train/val/test; training frames are also written
    slice by slice and listed in ``train_slices.list``. The family's draws come from a
    random stream of their own, so the ``standard`` family is what it was before
    families existed, and patient ``n`` starts from the same anatomy in every family.
    """
    if family not in ACDC_FAMILIES:
        raise ConfigError(f"unknown ACDC family {family!r}; choose one of {', '.join(ACDC_FAMILIES)}")
    variation = ACDC_FAMILIES[family]
    if cases < 3:
        raise ConfigError(f"ACDC needs at least 3 patients (train, val and test), got cases={cases}")
    if len(size) != 2 or min(size) < MIN_SIZE:
        raise ConfigError(f"ACDC size must be (H, W) with both >= {MIN_SIZE}, got {size}")
    height, width = size
    patients = [patient_name(index) for index in range(1, cases + 1)]
    train, val, test = partition(patients, ACDC_SPLIT_FRACTIONS, np.random.default_rng([seed, 0]))
    training = set(train)
    frames_of: dict[str, list[str]] = {}
    train_slices: list[str] = []
    for number, patient in enumerate(tqdm(patients, desc="synthetic ACDC", disable=not progress), start=1):
        rng = np.random.default_rng([seed, 1, number])
        family_rng = np.random.default_rng([seed, 2, number])
        slice_size = variation.slice_size(family_rng, (height, width))
        heart = draw_heart(rng, slice_size, family_rng.uniform(*variation.heart_scale))
        heart = replace(
            heart,
            wall=heart.wall * family_rng.uniform(*variation.wall_scale),
            rv_depth=heart.rv_depth * family_rng.uniform(*variation.rv_scale),
        )
        look = variation.look(family_rng)
        slices = int(rng.integers(SLICES[0], SLICES[1] + 1))
        if variation.slices != SLICES:
            slices = int(family_rng.integers(variation.slices[0], variation.slices[1] + 1))
        systole_frame = int(rng.integers(8, 17))
        frames_of[patient] = [f"{patient}_frame01", f"{patient}_frame{systole_frame:02d}"]
        for frame, systole in zip(frames_of[patient], (False, True)):
            scan = render_frame(rng, heart, slice_size, slices, systole, look)
            names = write_acdc_volume(out, frame, scan.image, scan.label, with_slices=patient in training)
            train_slices.extend(names)

    def frames(group: list[str]) -> list[str]:
        return [frame for patient in group for frame in frames_of[patient]]

    write_acdc_lists(out, train_slices, frames(train), frames(val), frames(test))
    return out
