"""Building blocks of the synthetic scans: a labelled canvas, smooth fields, textures,
metaball blobs and the MRI-like degradations (bias field, Rician noise).

A synthetic scan is painted tissue by tissue on a :class:`Canvas`. Every painted region
carries a sub-population id ``REGION_STRIDE * class + k``: the class is the segmentation
label, ``k`` tells apart the sub-populations of intensity and texture inside a class
(e.g. scar-like and normal myocardium). The label map is therefore ``region //
REGION_STRIDE``, and the region map lets tests check that every class really has
several sub-populations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import reduce

import numpy as np
from scipy import ndimage

from mper.data.preprocess import normalize_intensity

#: A point or direction: a sequence of floats or a 1-D array.
Vector = Sequence[float] | np.ndarray

REGION_STRIDE = 10

Tone = Callable[[int], float]
"""Maps a sub-population id to its noise-free intensity in one scan."""


def tone_map(intensity: dict[int, float], gains: dict[int, float]) -> Tone:
    """The :data:`Tone` of one scan: each sub-population's base intensity times its gain."""
    return lambda region: intensity[region] * gains[region]


@dataclass
class SyntheticScan:
    """One rendered scan: normalised ``image`` (float32), ``label`` (uint8) and the
    sub-population ``region`` map (uint8, ``label == region // REGION_STRIDE``)."""

    image: np.ndarray
    label: np.ndarray
    region: np.ndarray


class Canvas:
    """Noise-free intensities and sub-population ids, painted region after region."""

    def __init__(self, shape: Sequence[int], intensity: float | np.ndarray, region: int) -> None:
        self.image = np.broadcast_to(np.asarray(intensity, dtype=np.float32), tuple(shape)).copy()
        self.region = np.full(shape, region, dtype=np.uint8)

    def paint(self, mask: np.ndarray, intensity: float | np.ndarray, region: int) -> None:
        """Set the voxels of ``mask`` to ``intensity`` (a value or a field) and ``region``."""
        mask = np.broadcast_to(mask, self.image.shape)
        self.image[mask] = np.broadcast_to(np.asarray(intensity, dtype=np.float32), self.image.shape)[mask]
        self.region[mask] = region

    def finish(self, rng: np.random.Generator, normalization: str, noise: float, bias: float) -> SyntheticScan:
        """Apply a smooth multiplicative bias field of log-amplitude ``bias`` and Rician
        noise of level ``noise``, then the intensity ``normalization`` (see
        :func:`mper.data.preprocess.normalize_intensity`)."""
        corrupted = self.image * np.exp(bias * smooth_field(rng, self.image.shape, cycles=0.8))
        noisy = rician_noise(rng, corrupted, noise)
        label = (self.region // REGION_STRIDE).astype(np.uint8)
        return SyntheticScan(normalize_intensity(noisy, normalization), label, self.region.copy())


def axis_grid(shape: Sequence[int]) -> list[np.ndarray]:
    """Voxel coordinates along each axis, shaped to broadcast against ``shape`` (float32)."""
    return [
        np.arange(length, dtype=np.float32).reshape([-1 if axis == dim else 1 for dim in range(len(shape))])
        for axis, length in enumerate(shape)
    ]


def smooth_field(
    rng: np.random.Generator, shape: Sequence[int], cycles: float | Sequence[float] = 1.5, terms: int = 6
) -> np.ndarray:
    """A smooth random field of zero mean and unit std: a sum of ``terms`` separable
    products of cosines with up to ``cycles`` periods across each axis."""
    cycles_per_axis = np.broadcast_to(np.asarray(cycles, dtype=np.float64), (len(shape),))
    grid = [coords / length for coords, length in zip(axis_grid(shape), shape)]
    field = np.zeros(shape, dtype=np.float32)
    for _ in range(terms):
        factors = [
            np.cos(2 * np.pi * rng.uniform(0, most) * coords + rng.uniform(0, 2 * np.pi))
            for coords, most in zip(grid, cycles_per_axis)
        ]
        field += np.float32(rng.normal()) * reduce(np.multiply, factors)
    standardized: np.ndarray = (field - field.mean()) / max(float(field.std()), 1e-6)
    return standardized


def fine_texture(rng: np.random.Generator, shape: Sequence[int], sigma: float | Sequence[float]) -> np.ndarray:
    """Gaussian-smoothed white noise of unit std: a grainy texture of grain ``sigma`` voxels
    (a sigma of 0 along an axis keeps that axis' samples independent)."""
    texture = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    standardized: np.ndarray = texture / max(float(texture.std()), 1e-6)
    return standardized


def rician_noise(rng: np.random.Generator, image: np.ndarray, sigma: float) -> np.ndarray:
    """Magnitude of the image plus complex Gaussian noise, as in MRI: ``|x + n1 + i n2|``."""
    real = image + sigma * rng.standard_normal(image.shape, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(image.shape, dtype=np.float32)
    magnitude: np.ndarray = np.sqrt(real * real + imaginary * imaginary)
    return magnitude


def unit(vector: Vector) -> np.ndarray:
    """``vector`` scaled to length 1."""
    array = np.asarray(vector, dtype=np.float64)
    scaled: np.ndarray = array / np.linalg.norm(array)
    return scaled


def frame_along(direction: Vector) -> np.ndarray:
    """An orthonormal basis (rows) of 3-D space whose first row is ``direction``."""
    first = unit(direction)
    least_aligned_axis = np.eye(3)[int(np.argmin(np.abs(first)))]
    second = unit(np.cross(first, least_aligned_axis))
    return np.stack([first, second, np.cross(first, second)])


def add_blob(field: np.ndarray, center: Vector, radii: Vector, axes: np.ndarray | None = None) -> None:
    """Add an anisotropic Gaussian bump ``0.5 ** q`` to ``field`` in place.

    ``q = sum_j ((axes[j] . (p - center)) / radii[j]) ** 2``: a lone blob crosses 0.5 on
    the ellipsoid of semi-axes ``radii`` along the rows of ``axes`` (identity if ``None``),
    and overlapping blobs merge smoothly (metaballs). Only the box where the bump exceeds
    about 1% is touched, which keeps many small blobs cheap.
    """
    axes = np.eye(field.ndim) if axes is None else np.asarray(axes)
    middle = np.asarray(center, dtype=np.float64)
    reach = 2.6 * float(np.max(radii))
    low = np.maximum(np.floor(middle - reach), 0).astype(int)
    high = np.minimum(np.ceil(middle + reach) + 1, field.shape).astype(int)
    if np.any(high <= low):
        return
    box = tuple(slice(start, stop) for start, stop in zip(low, high))
    offsets = [coords + start - mid for coords, start, mid in zip(axis_grid(high - low), low, middle)]
    quadratic = sum(
        (sum(float(weight) * offset for weight, offset in zip(axis, offsets)) / radius) ** 2
        for axis, radius in zip(axes, radii)
    )
    field[box] += np.exp2(-quadratic).astype(np.float32)


def ellipse(
    coords: Sequence[np.ndarray], center: Vector, radii: Sequence[float | np.ndarray] | np.ndarray
) -> np.ndarray:
    """Mask of the axis-aligned ellipse/ellipsoid of ``radii`` around ``center``."""
    return np.asarray(sum(((c - m) / r) ** 2 for c, m, r in zip(coords, center, radii)) < 1.0, dtype=bool)
