"""Keyed random streams, so that every random draw in :mod:`mper.data` can be replayed.

Nothing in :mod:`mper.data` touches a global random state. Each draw comes from
``numpy.random.default_rng([seed, stream, *key])``: a pure function of the user's seed,
a constant naming what the draw is for, and its position (epoch, item index, ...). A
trainer that restarts at iteration ``t`` therefore sees exactly the batches and
augmentations it would have seen without the interruption.
"""
from __future__ import annotations

import numpy as np

# One constant per consumer, so that two consumers given the same seed and position
# never share a random stream.
ITEM_AUGMENTATION = 1
PRIMARY_ORDER = 2
SECONDARY_ORDER = 3


def resolve_seed(seed: int | None) -> int:
    """``seed`` itself, or fresh OS entropy (a large non-negative int) when it is ``None``."""
    if seed is None:
        entropy = np.random.SeedSequence().entropy
        assert isinstance(entropy, int)  # a fresh SeedSequence draws one int
        return entropy
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer or None, got {seed}")
    return int(seed)


def keyed_rng(seed: int, stream: int, *key: int) -> np.random.Generator:
    """The generator of stream ``stream`` at position ``key`` for ``seed``."""
    return np.random.default_rng([seed, stream, *key])
