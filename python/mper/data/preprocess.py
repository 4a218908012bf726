"""Intensity normalisation of the public preprocessed releases.

LA (UA-MT release) volumes are z-scored, ``(x - mean) / std`` over the whole volume; ACDC
(SSL4MIS release) volumes are min-max scaled to ``[0, 1]`` per volume. Converters and
prediction on raw scans apply the same rule so a network sees what it was trained on.
"""
from __future__ import annotations

import numpy as np

from mper.errors import ConfigError

DATASETS = ("la", "acdc")

# Guards against dividing by ~0 on a constant volume (which then maps to all zeros).
_MIN_SPREAD = 1e-8


def check_dataset(dataset: str) -> str:
    """Return ``dataset`` if it is ``"la"`` or ``"acdc"``, else raise :class:`~mper.errors.ConfigError`."""
    if dataset not in DATASETS:
        raise ConfigError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    return dataset


def normalize_intensity(image: np.ndarray, dataset: str) -> np.ndarray:
    """Normalise a whole volume the way the dataset's public release does, as float32.

    ``"la"``: z-score ``(x - mean) / std``; ``"acdc"``: ``(x - min) / (max - min)``.
    Statistics are computed in float64 over every voxel.
    """
    values = np.asarray(image, dtype=np.float64)
    if check_dataset(dataset) == "la":
        normalised = (values - values.mean()) / max(values.std(), _MIN_SPREAD)
    else:
        low = values.min()
        normalised = (values - low) / max(values.max() - low, _MIN_SPREAD)
    return normalised.astype(np.float32)
