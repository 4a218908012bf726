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
STAGE_SEED = 4


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


def stage_seed(seed: int, stage: int) -> int:
    """The seed of the draws of training stage ``stage`` (0, 1, ...): ``seed`` itself for
    stage 0, for a later stage a seed drawn from ``(seed, stage)``, so that a stage never
    replays the batch orders and augmentations of another (self-training iteration ``t``
    would otherwise see pre-training iteration ``t``'s crops and pairs)."""
    if stage == 0:
        return resolve_seed(seed)
    return int(keyed_rng(resolve_seed(seed), STAGE_SEED, stage).integers(2**63))
