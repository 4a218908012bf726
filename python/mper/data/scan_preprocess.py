"""Preprocessing of raw scans by nnU-Net's published conventions, and the way back.

A case goes through three steps (:func:`preprocess_scan`), in nnU-Net's order:

1. **Crop to the nonzero region**: the bounding box of the voxels where any channel is
   nonzero (:func:`nonzero_box`); outside it lies only the zero border of the scanner's
   field of view.
2. **Normalise** each channel by its name (:func:`~mper.data.raw_scans.normalization_of`):
   CT channels are clipped to the 0.5 and 99.5 percentiles of the training set's
   foreground intensities (voxels of a labeled class) and z-scored with those voxels'
   mean and standard deviation (:func:`foreground_statistics`); ``noNorm``,
   ``rescale_to_0_1`` and ``rgb_to_0_1`` channels as named; other channels are
   z-scored per image, inside the nonzero region (holes filled, labeled voxels added)
   when cropping removed much of the images (the median case kept less than 3/4 of its
   voxels), with zero outside it.
3. **Resample** to the target spacing (:func:`target_spacing`: the training cases'
   median; for strongly anisotropic data the coarse axis takes the 10th percentile of
   its spacings instead). Images are interpolated by cubic splines, label maps class by
   class (linear interpolation of each class's mask, kept where at least 0.5). When the
   source or the target spacing is anisotropic (coarsest over finest above
   :data:`ANISOTROPY_THRESHOLD`), the in-plane axes are interpolated so and the coarse
   axis by nearest neighbour, so that thick slices are not blended into each other.
   Sample positions are voxel centres (``(i + 0.5) * old / new - 0.5``).

What the case needs to go back is a :class:`CaseGeometry`: the original shape,
spacing and affine, the crop box, the resampled shape and the normalisation used.
:func:`restore_labels` maps class probabilities on the resampled grid back to the
original voxel grid: each class's probability interpolated linearly (nearest
neighbour along an anisotropic axis), the class of highest probability taken, and the
crop box placed back into a volume of background.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from mper.data.preprocess import MIN_SPREAD
from mper.data.raw_scans import CT, NO_NORMALIZATION, RESCALE, RGB, ZSCORE

#: Spacings whose coarsest axis is more than this many times the finest are anisotropic.
ANISOTROPY_THRESHOLD = 3.0
#: Percentile of the coarse axis's spacings that anisotropic data are resampled to.
COARSE_AXIS_PERCENTILE = 10
#: Percentiles of the foreground intensities a CT channel is clipped to.
CT_CLIP_PERCENTILES = (0.5, 99.5)
#: Cropping that keeps less than this fraction of the median case turns on the mask for z-scores.
MASK_FOR_NORM_FRACTION = 0.75
#: Foreground intensities kept per channel, spread over the training cases, for the CT statistics.
FOREGROUND_SAMPLES = 1_000_000

Box = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class ChannelStatistics:
    """Foreground intensities of one channel over the training set: ``mean``, ``std`` and
    the clip range ``low``, ``high`` (0.5 and 99.5 percentiles)."""

    mean: float
    std: float
    low: float
    high: float


@dataclass(frozen=True)
class Normalization:
    """How one channel of one case was normalised: ``scheme`` and the values applied
    (``(x - mean) / std`` after clipping to ``clip``; ``masked``: only inside the mask)."""

    scheme: str
    mean: float = 0.0
    std: float = 1.0
    clip: tuple[float, float] | None = None
    masked: bool = False


@dataclass(frozen=True)
class CaseGeometry:
    """What a preprocessed case needs to go back to its scan: the scan's ``shape``
    (X, Y, Z), ``spacing`` (mm) and ``affine``, the ``crop`` box (start, stop per axis)
    in it, the ``resampled_shape`` and the ``normalization`` of each channel; and the
    ``target_spacing`` it was resampled to (``None`` in imports older than that field)."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    affine: tuple[tuple[float, ...], ...]
    crop: Box
    resampled_shape: tuple[int, int, int]
    normalization: tuple[Normalization, ...] = field(default_factory=tuple)
    target_spacing: tuple[float, float, float] | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> CaseGeometry:
        values: dict[str, Any] = json.loads(text)
        norms = tuple(
            Normalization(**{**item, "clip": None if item["clip"] is None else tuple(item["clip"])})
            for item in values["normalization"]
        )
        return cls(
            shape=tuple(values["shape"]),
            spacing=tuple(values["spacing"]),
            affine=tuple(tuple(row) for row in values["affine"]),
            crop=tuple((int(start), int(stop)) for start, stop in values["crop"]),
            resampled_shape=tuple(values["resampled_shape"]),
            normalization=norms,
            target_spacing=None if values.get("target_spacing") is None else tuple(values["target_spacing"]),
        )

    @property
    def cropped_shape(self) -> tuple[int, ...]:
        return tuple(stop - start for start, stop in self.crop)


def nonzero_box(image: np.ndarray) -> Box:
    """The bounding box (start, stop per spatial axis) of the voxels of ``image`` (C, X, Y, Z)
    where any channel is nonzero; the whole volume when none is."""
    nonzero = np.any(image != 0, axis=0)
    box = []
    for axis in range(nonzero.ndim):
        others = tuple(a for a in range(nonzero.ndim) if a != axis)
        present = np.flatnonzero(nonzero.any(axis=others))
        box.append((int(present[0]), int(present[-1]) + 1) if present.size else (0, nonzero.shape[axis]))
    return tuple(box)


def crop(array: np.ndarray, box: Box) -> np.ndarray:
    """The box of the trailing spatial axes of ``array`` (leading axes kept)."""
    lead = (slice(None),) * (array.ndim - len(box))
    return array[lead + tuple(slice(start, stop) for start, stop in box)]


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> tuple[int, ...]:
    """The shape that covers the same extent at the ``target`` spacing (nnU-Net's rounding);
    an axis of one voxel (a 2D image's, whose thickness the file does not hold) stays one."""
    return tuple(1 if n == 1 else max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target))


def anisotropic_axis(spacing: Sequence[float], *others: Sequence[float]) -> int | None:
    """The axis resampled by nearest neighbour: the coarsest axis of the first of
    ``spacing`` and ``others`` that is anisotropic (see :data:`ANISOTROPY_THRESHOLD`);
    ``None`` when none is, or when two axes share its coarsest spacing."""
    for candidate in (spacing, *others):
        values = np.asarray(candidate, dtype=np.float64)
        if values.max() / values.min() > ANISOTROPY_THRESHOLD:
            coarsest = np.flatnonzero(values == values.max())
            return int(coarsest[0]) if coarsest.size == 1 else None
    return None


def target_spacing(spacings: Sequence[Sequence[float]], shapes: Sequence[Sequence[int]]) -> tuple[float, ...]:
    """The spacing every case is resampled to (nnU-Net's rule).

    The median spacing of the training cases, except for strongly anisotropic data: when
    the median's coarsest axis is more than :data:`ANISOTROPY_THRESHOLD` times coarser
    than the others and has fewer than a third of their (median, cropped) voxels, that
    axis takes the :data:`COARSE_AXIS_PERCENTILE`-th percentile of its spacings (but not
    less than the other axes' coarsest spacing), so that the scans with thin slices are
    not thinned out to the median's thick ones.
    """
    all_spacings = np.asarray(spacings, dtype=np.float64)
    target = np.percentile(all_spacings, 50, axis=0)
    median_shape = np.percentile(np.asarray(shapes, dtype=np.float64), 50, axis=0)
    coarse = int(np.argmax(target))
    others = [axis for axis in range(len(target)) if axis != coarse]
    anisotropic_spacing = target[coarse] > ANISOTROPY_THRESHOLD * max(target[others])
    anisotropic_voxels = median_shape[coarse] * ANISOTROPY_THRESHOLD < min(median_shape[others])
    if anisotropic_spacing and anisotropic_voxels:
        coarse_target = float(np.percentile(all_spacings[:, coarse], COARSE_AXIS_PERCENTILE))
        coarsest_other = float(max(target[others]))
        target[coarse] = coarse_target if coarse_target >= coarsest_other else coarsest_other + 1e-5
    return tuple(float(value) for value in target)


def is_strongly_anisotropic(spacing: Sequence[float], shape: Sequence[float]) -> bool:
    """Whether the coarse axis is both :data:`ANISOTROPY_THRESHOLD` times coarser and has
    a third of the voxels of the others (the data 2D networks suit best)."""
    spacing_array, shape_array = np.asarray(spacing, np.float64), np.asarray(shape, np.float64)
    coarse = int(np.argmax(spacing_array))
    others = [axis for axis in range(len(spacing_array)) if axis != coarse]
    return bool(
        spacing_array[coarse] > ANISOTROPY_THRESHOLD * spacing_array[others].max()
        and shape_array[coarse] * ANISOTROPY_THRESHOLD < shape_array[others].min()
    )


# --- normalisation ----------------------------------------------------------------------


def foreground_statistics(samples: np.ndarray) -> ChannelStatistics:
    """:class:`ChannelStatistics` of a channel's sampled foreground intensities."""
    values = np.asarray(samples, dtype=np.float64)
    low, high = np.percentile(values, CT_CLIP_PERCENTILES)
    return ChannelStatistics(float(values.mean()), float(values.std()), float(low), float(high))


def foreground_sample(channel: np.ndarray, label: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """At most ``count`` intensities of ``channel`` where ``label > 0``: all of them, or
    ``count`` drawn with replacement (as nnU-Net samples them)."""
    values = channel[label > 0]
    if values.size <= count:
        return values
    sample: np.ndarray = values[rng.integers(0, values.size, count)]
    return sample


def nonzero_mask(image: np.ndarray, label: np.ndarray | None) -> np.ndarray:
    """Where a z-score with the mask is computed: the nonzero voxels of any channel, holes
    filled, and every labeled voxel (nnU-Net's rule)."""
    mask: np.ndarray = ndimage.binary_fill_holes(np.any(image != 0, axis=0))
    if label is not None:
        mask |= label > 0
    return mask


def normalize_channel(
    channel: np.ndarray, scheme: str, statistics: ChannelStatistics | None, mask: np.ndarray | None
) -> tuple[np.ndarray, Normalization]:
    """Normalise one channel (float32, in place where it can) and say how."""
    if scheme == CT:
        if statistics is None:
            raise ValueError("a CT channel needs the training set's foreground statistics")
        np.clip(channel, statistics.low, statistics.high, out=channel)
        used = Normalization(CT, statistics.mean, max(statistics.std, MIN_SPREAD), (statistics.low, statistics.high))
        channel -= used.mean
        channel /= used.std
        return channel, used
    if scheme == ZSCORE:
        if mask is not None and not mask.any():
            mask = None
        values = channel[mask] if mask is not None else channel
        used = Normalization(
            ZSCORE,
            float(values.mean(dtype=np.float64)),
            max(float(values.std(dtype=np.float64)), MIN_SPREAD),
            masked=mask is not None,
        )
        if mask is None:
            channel -= used.mean
            channel /= used.std
        else:
            channel[mask] = (channel[mask] - used.mean) / used.std
            channel[~mask] = 0
        return channel, used
    if scheme == RESCALE:
        low = float(channel.min())
        spread = max(float(channel.max()) - low, MIN_SPREAD)
        channel -= low
        channel /= spread
        return channel, Normalization(RESCALE, low, spread)
    if scheme == RGB:
        channel /= 255.0
        return channel, Normalization(RGB, 0.0, 255.0)
    if scheme == NO_NORMALIZATION:
        return channel, Normalization(NO_NORMALIZATION)
    raise ValueError(f"unknown normalisation scheme {scheme!r}")


# --- resampling -------------------------------------------------------------------------


SectionResampler = Callable[[np.ndarray, tuple[int, ...], np.ndarray], None]


def _spline_section(order: int) -> SectionResampler:
    """Resamples one float section into ``out`` by splines of ``order``."""

    def resample(section: np.ndarray, shape: tuple[int, ...], out: np.ndarray) -> None:
        factors = [new / old for new, old in zip(shape, section.shape)]
        ndimage.zoom(section, factors, order=order, mode="nearest", grid_mode=True, output=out)

    return resample


def _label_section(section: np.ndarray, shape: tuple[int, ...], out: np.ndarray) -> None:
    """Resamples one label section into ``out``: each class's mask linearly, kept where >= 0.5."""
    out[...] = 0
    for value in np.unique(section):
        if value:
            out[_zoom((section == value).astype(np.float32), shape, 1, None) >= 0.5] = value


def _by_sections(
    volume: np.ndarray, shape: tuple[int, ...], axis: int, resample: SectionResampler, dtype: type[np.generic]
) -> np.ndarray:
    """``volume`` to ``shape``: each output section across ``axis`` is the nearest input
    section (voxel centres) resampled in-plane by ``resample``, one section at a time."""
    old, new = volume.shape[axis], shape[axis]
    nearest = np.clip(np.floor((np.arange(new) + 0.5) * old / new), 0, old - 1).astype(np.intp)
    out = np.empty(shape, dtype=dtype)
    sections_in, sections_out = np.moveaxis(volume, axis, 0), np.moveaxis(out, axis, 0)
    plane = sections_out.shape[1:]
    for index, source in enumerate(nearest):
        if sections_in.shape[1:] == plane:
            sections_out[index] = sections_in[source]
        else:
            section = np.empty(plane, dtype=dtype)
            resample(sections_in[source], plane, section)
            sections_out[index] = section
    return out


def _zoom(volume: np.ndarray, shape: Sequence[int], order: int, axis: int | None) -> np.ndarray:
    """One float volume to ``shape`` as float32: splines of ``order``, or in-plane splines
    and nearest neighbour along ``axis``."""
    shape = tuple(shape)
    if volume.shape == shape:
        return volume.astype(np.float32, copy=False)
    if axis is None:
        out = np.empty(shape, dtype=np.float32)
        _spline_section(order)(volume, shape, out)
        return out
    return _by_sections(volume, shape, axis, _spline_section(order), np.float32)


def resample_image(image: np.ndarray, shape: Sequence[int], axis: int | None) -> np.ndarray:
    """Every channel of ``image`` (C, X, Y, Z) to ``shape`` by cubic splines (nearest
    neighbour along the anisotropic ``axis``, see :func:`anisotropic_axis`)."""
    resampled = np.empty((len(image), *shape), dtype=np.float32)
    for index, channel in enumerate(image):
        resampled[index] = _zoom(channel, shape, 3, axis)
    return resampled


def resample_labels(label: np.ndarray, shape: Sequence[int], axis: int | None) -> np.ndarray:
    """A label map to ``shape``: each class's mask linearly interpolated (nearest along
    ``axis``) and kept where at least 0.5, later classes over earlier ones."""
    shape = tuple(shape)
    if label.shape == shape:
        return label
    if axis is not None:
        return _by_sections(label, shape, axis, _label_section, label.dtype.type)
    out = np.empty(shape, dtype=label.dtype)
    _label_section(label, shape, out)
    return out


def restore_labels(probabilities: np.ndarray, geometry: CaseGeometry, spacing: Sequence[float]) -> np.ndarray:
    """The uint8 label map on the scan's voxel grid of class ``probabilities`` (C, *resampled
    shape) predicted on the grid of ``spacing``: each class resampled to the crop box
    linearly (nearest along an anisotropic axis), the most probable class taken, and the
    box placed back into background. One class is resampled at a time."""
    axis = anisotropic_axis(spacing, geometry.spacing)
    cropped = geometry.cropped_shape
    best = np.full(cropped, -np.inf, dtype=np.float32)
    labels = np.zeros(cropped, dtype=np.uint8)
    for value, probability in enumerate(probabilities):
        resampled = _zoom(np.asarray(probability, dtype=np.float32), cropped, 1, axis)
        better = resampled > best
        best[better] = resampled[better]
        labels[better] = value
    restored = np.zeros(geometry.shape, dtype=np.uint8)
    restored[tuple(slice(start, stop) for start, stop in geometry.crop)] = labels
    return restored


# --- one case -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ScanRules:
    """The preprocessing of a dataset, as its import decided it: each channel's ``schemes``
    (and ``statistics`` for CT channels, ``None`` for others), whether z-scores use the
    nonzero ``mask``, and the ``spacing`` every case is resampled to."""

    schemes: tuple[str, ...]
    statistics: tuple[ChannelStatistics | None, ...]
    mask_for_norm: bool
    spacing: tuple[float, float, float]


def preprocess_scan(
    image: np.ndarray, label: np.ndarray | None, spacing: Sequence[float], affine: np.ndarray, rules: ScanRules
) -> tuple[np.ndarray, np.ndarray | None, CaseGeometry]:
    """Crop, normalise and resample one case: ``image`` (C, X, Y, Z) float32 (normalised in
    place inside the crop box), ``label`` (X, Y, Z) or ``None``. Returns the image and
    label on the target grid and the case's :class:`CaseGeometry`."""
    box = nonzero_box(image)
    cropped = crop(image, box)
    cropped_label = None if label is None else crop(label, box)
    mask = nonzero_mask(cropped, cropped_label) if rules.mask_for_norm and ZSCORE in rules.schemes else None
    used = []
    for index, (scheme, statistics) in enumerate(zip(rules.schemes, rules.statistics)):
        cropped[index], normalization = normalize_channel(cropped[index], scheme, statistics, mask)
        used.append(normalization)
    shape = resampled_shape(cropped.shape[1:], spacing, rules.spacing)
    axis = anisotropic_axis(spacing, rules.spacing)
    resampled = resample_image(cropped, shape, axis)
    resampled_label = None if cropped_label is None else resample_labels(cropped_label, shape, axis)
    geometry = CaseGeometry(
        shape=(image.shape[1], image.shape[2], image.shape[3]),
        spacing=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
        affine=tuple(tuple(float(value) for value in row) for row in np.asarray(affine)),
        crop=box,
        resampled_shape=(shape[0], shape[1], shape[2]),
        normalization=tuple(used),
        target_spacing=rules.spacing,
    )
    return resampled, resampled_label, geometry


def _differ(planned: float | Sequence[float] | None, applied: float | Sequence[float] | None) -> bool:
    """Whether two values differ beyond the rounding of a float written to text and read back."""
    if planned is None or applied is None:
        return planned is not applied
    return not np.allclose(np.asarray(planned, float), np.asarray(applied, float), rtol=1e-9, atol=0.0)


def rules_difference(rules: ScanRules, channels: Sequence[str], geometry: CaseGeometry) -> str:
    """How ``rules`` (a plan's, its channels named ``channels``) differ from the
    preprocessing the case of ``geometry`` went through, in the plan's own words, e.g.
    "channel 0 (CT) has mean = 300.0, but the case was normalised with mean = 108.4";
    "" when they agree: a plan whose fixed values were edited after the import would
    preprocess raw scans (mper-predict) otherwise than the files the network trained on."""
    used = geometry.normalization
    if len(used) != len(rules.schemes):
        return f"{len(rules.schemes)} channel(s), but the case holds {len(used)}"
    for index, (scheme, statistics, applied) in enumerate(zip(rules.schemes, rules.statistics, used)):
        channel = f"channel {index} ({channels[index]})"
        if scheme != applied.scheme:
            return f"{channel} has normalization = {scheme!r}, but the case was normalised by {applied.scheme!r}"
        if statistics is not None:
            for key, planned, was in (
                ("mean", statistics.mean, applied.mean),
                ("std", max(statistics.std, MIN_SPREAD), applied.std),
                ("clip", (statistics.low, statistics.high), applied.clip),
            ):
                if _differ(planned, was):
                    return f"{channel} has {key} = {planned}, but the case was normalised with {key} = {was}"
        if applied.masked and not rules.mask_for_norm:
            return "mask_for_norm = false, but the case was z-scored inside its nonzero mask"
    if geometry.target_spacing is not None and _differ(rules.spacing, geometry.target_spacing):
        return f"spacing = {list(rules.spacing)}, but the case was resampled to {list(geometry.target_spacing)}"
    shape = resampled_shape(geometry.cropped_shape, geometry.spacing, rules.spacing)
    # an axis of one voxel is left out: imports before 0.3 resampled it to several
    thick = [axis for axis, length in enumerate(geometry.cropped_shape) if length > 1]
    if [shape[axis] for axis in thick] != [geometry.resampled_shape[axis] for axis in thick]:
        return (
            f"spacing = {list(rules.spacing)}, which resamples the case to {list(shape)} voxels, but it was resampled "
            f"to {list(geometry.resampled_shape)}"
        )
    return ""
