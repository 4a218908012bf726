"""Paired image/label augmentations (docs/method.md, "Training").

Every function takes the image, its label map and a :class:`numpy.random.Generator`, and
applies the same geometric change to both, so labels stay aligned with the anatomy.
Labels are only ever moved by nearest-neighbour (order 0) resampling, so they keep their
class values. The draws follow the public baselines: UA-MT's ``RandomRotFlip`` and
``RandomCrop`` (LA), SSL4MIS's ``RandomGenerator`` (ACDC).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

ImageLabel = tuple[np.ndarray, np.ndarray]


def random_rot_flip(image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> ImageLabel:
    """Rotate by a random multiple of 90 degrees, then flip one random axis, in the plane
    of the first two axes (the (H, W) plane of LA volumes and ACDC slices).

    As in UA-MT and SSL4MIS, the result is always one of the four mirror images of the
    input, each with probability 1/4 (a flip always follows the rotation).
    """
    turns = int(rng.integers(0, 4))
    flip_axis = int(rng.integers(0, 2))
    image = np.flip(np.rot90(image, turns, axes=(0, 1)), axis=flip_axis)
    label = np.flip(np.rot90(label, turns, axes=(0, 1)), axis=flip_axis)
    return image, label


def random_rotate(
    image: np.ndarray, label: np.ndarray, rng: np.random.Generator, max_degrees: float = 20.0
) -> ImageLabel:
    """Rotate a 2-D slice by a uniform random angle in ``[-max_degrees, max_degrees]``.

    Both image and label use nearest-neighbour sampling, as SSL4MIS does, so a label
    derived from the image stays derived from it; corners that enter the frame are 0.
    """
    angle = float(rng.uniform(-max_degrees, max_degrees))
    image = ndimage.rotate(image, angle, order=0, reshape=False, mode="constant", cval=0.0)
    label = ndimage.rotate(label, angle, order=0, reshape=False, mode="constant", cval=0)
    return image, label


def pad_to_size(image: np.ndarray, label: np.ndarray, size: Sequence[int]) -> ImageLabel:
    """Zero-pad each axis shorter than ``size`` symmetrically (label with background)."""
    missing = [max(target - length, 0) for target, length in zip(size, image.shape)]
    if not any(missing):
        return image, label
    widths = [(gap // 2, gap - gap // 2) for gap in missing]
    return np.pad(image, widths), np.pad(label, widths)


def random_crop(image: np.ndarray, label: np.ndarray, size: Sequence[int], rng: np.random.Generator) -> ImageLabel:
    """Crop a uniformly placed window of ``size``, zero-padding first where the input is smaller."""
    if len(size) != image.ndim:
        raise ValueError(f"crop size {tuple(size)} must have one entry per axis of shape {image.shape}")
    image, label = pad_to_size(image, label, size)
    starts = [int(rng.integers(0, length - target + 1)) for length, target in zip(image.shape, size)]
    window = tuple(slice(start, start + target) for start, target in zip(starts, size))
    return image[window], label[window]


#: Spline orders of the image resampling methods :func:`resize` offers.
INTERPOLATION_ORDERS = {"nearest": 0, "cubic": 3}


def resize(image: np.ndarray, label: np.ndarray, size: Sequence[int], interpolation: str = "cubic") -> ImageLabel:
    """Resample to ``size``: the image by ``interpolation`` (``"cubic"`` spline, as
    SSL4MIS, or ``"nearest"``, as BCP and the MPER code), the label by nearest neighbour."""
    if interpolation not in INTERPOLATION_ORDERS:
        raise ValueError(f"interpolation must be one of {tuple(INTERPOLATION_ORDERS)}, got {interpolation!r}")
    if tuple(size) == image.shape:
        return image, label
    factors = [target / length for target, length in zip(size, image.shape)]
    resized_image = ndimage.zoom(image, factors, order=INTERPOLATION_ORDERS[interpolation])
    return resized_image, ndimage.zoom(label, factors, order=0)
