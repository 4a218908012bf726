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

#: The least spread a normalisation divides by: a constant volume (or channel) maps to zeros
#: instead of dividing by ~0. The raw scans' normalisations (:mod:`mper.data.scan_preprocess`) share it.
MIN_SPREAD = 1e-8


def _z_score(values: np.ndarray) -> np.ndarray:
    scaled: np.ndarray = (values - values.mean()) / max(float(values.std()), MIN_SPREAD)
    return scaled


def _min_max(values: np.ndarray) -> np.ndarray:
    low = values.min()
    scaled: np.ndarray = (values - low) / max(float(values.max() - low), MIN_SPREAD)
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
#: The mean and standard deviation a z-scored volume may have: loose, since the LA release
#: (UA-MT's h5 files, and mper-data convert) z-scores the whole scan and then crops it
#: around the atrium, so a volume's own mean and std are near 0 and 1 but not exactly. A
#: crop keeping a fraction f of a z-scored scan's voxels has mean^2 + std^2 <= 1 / f;
#: the crops keep at least 112 x 112 of at most 640 x 640 in-plane voxels and every
#: slice (f >= 0.03), so |mean| and std stay below 5.8; and a crop around the atrium
#: holds blood pool, wall and surrounding tissue, whose spread is of the scan's order,
#: not a twentieth of it. The bounds leave a margin over both, and catch what a model
#: trained on z-scored data would misread: a volume left in scanner units or scaled
#: otherwise (z * 300 + 200: mean 200, std 300; z / 1000: std 0.001).
Z_SCORE_MAX_MEAN = 10.0
Z_SCORE_STD_RANGE = (0.05, 10.0)


def scaling_mismatch(image: np.ndarray, normalization: str) -> str | None:
    """What the intensities of ``image`` lack to be ``normalization``'s output, or ``None``
    when they could be: a min-max scaled volume lies in [0, 1]; a z-scored one has a mean
    near 0 (:data:`Z_SCORE_MAX_MEAN`) and, unless it is constant, negative values and a
    standard deviation near 1 (:data:`Z_SCORE_STD_RANGE`)."""
    if not image.size:
        return None
    low, high = float(image.min()), float(image.max())
    if normalization == "min-max" and (low < -RANGE_SLACK or high > 1 + RANGE_SLACK):
        return "intensities scaled to [0, 1]"
    if normalization != "z-score":
        return None
    if 0 <= low < high:
        return "z-scored intensities (mean 0, so some negative)"
    mean, std = float(image.mean(dtype=np.float64)), float(image.std(dtype=np.float64))
    least_std, most_std = Z_SCORE_STD_RANGE
    if abs(mean) > Z_SCORE_MAX_MEAN or (low < high and not least_std <= std <= most_std):
        return f"z-scored intensities (mean near 0, std near 1; these have mean {_rounded(mean)}, std {_rounded(std)})"
    return None


def _rounded(value: float) -> str:
    """``value`` to 3 significant digits and 3 decimals: ``0``, not ``-8.08e-13``."""
    return f"{round(value, 3) + 0.0:.3g}"
