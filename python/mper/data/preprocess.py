"""Intensity normalisation of the public preprocessed releases.

``"z-score"`` (the LA release of UA-MT): ``(x - mean) / std`` over the whole volume;
``"min-max"`` (the ACDC release of SSL4MIS): scaled to ``[0, 1]`` per volume. Converters
and prediction on raw scans apply a dataset's rule so a network sees what it was
trained on.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mper.errors import ConfigError

# Guards against dividing by ~0 on a constant volume (which then maps to all zeros).
_MIN_SPREAD = 1e-8


def _z_score(values: np.ndarray) -> np.ndarray:
    scaled: np.ndarray = (values - values.mean()) / max(float(values.std()), _MIN_SPREAD)
    return scaled


def _min_max(values: np.ndarray) -> np.ndarray:
    low = values.min()
    scaled: np.ndarray = (values - low) / max(float(values.max() - low), _MIN_SPREAD)
    return scaled


#: The normalisations by name.
NORMALIZATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"z-score": _z_score, "min-max": _min_max}


def normalize_intensity(image: np.ndarray, method: str) -> np.ndarray:
    """Normalise a whole volume by ``method`` (``"z-score"`` or ``"min-max"``), as float32.

    Statistics are computed in float64 over every voxel.
    """
    if method not in NORMALIZATIONS:
        raise ConfigError(f"normalization must be one of {', '.join(NORMALIZATIONS)}; got {method!r}")
    return NORMALIZATIONS[method](np.asarray(image, dtype=np.float64)).astype(np.float32)


#: Slack on the [0, 1] range of min-max scaled volumes (float rounding).
RANGE_SLACK = 1e-3


def scaling_mismatch(low: float, high: float, normalization: str) -> str | None:
    """What intensities spanning ``[low, high]`` lack to be ``normalization``'s output,
    or ``None`` when they could be: a z-scored volume has negative values (unless it is
    constant), a min-max scaled one lies in [0, 1]."""
    if normalization == "min-max" and (low < -RANGE_SLACK or high > 1 + RANGE_SLACK):
        return "intensities scaled to [0, 1]"
    if normalization == "z-score" and 0 <= low < high:
        return "z-scored intensities (mean 0, so some negative)"
    return None
