"""Deterministic splitting of case names into train/val/test-like parts."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mper.errors import ConfigError

ACDC_SPLIT_FRACTIONS = (0.7, 0.1, 0.2)
"""Patient fractions of train / val / test when no published ACDC split is given."""
LA_SPLIT_FRACTIONS = (0.8, 0.2)
"""Case fractions of train / test when no published LA split is given (80 / 20 cases)."""


def partition(names: Sequence[str], fractions: Sequence[float], rng: np.random.Generator) -> list[list[str]]:
    """Shuffle ``names`` with ``rng`` and cut them into parts of about ``fractions`` of the total.

    Every part gets at least one name; the first part takes what the rounding of the
    others leaves. Each part is returned sorted.

    Raises:
        ValueError: fewer names than parts.
    """
    if len(names) < len(fractions):
        raise ValueError(
            f"need at least {len(fractions)} cases to fill {len(fractions)} non-empty parts, got {len(names)}"
        )
    later = [max(1, round(fraction * len(names))) for fraction in fractions[1:]]
    sizes = [len(names) - sum(later), *later]
    if sizes[0] < 1:
        raise ValueError(f"fractions {tuple(fractions)} leave no name for the first part of {len(names)}")
    shuffled = [names[index] for index in rng.permutation(len(names))]
    bounds = np.cumsum([0, *sizes])
    return [sorted(shuffled[start:stop]) for start, stop in zip(bounds[:-1], bounds[1:])]


def check_labeled_count(labeled: int, available: int, what: str) -> None:
    """Refuse a ``labeled`` count outside 1 .. ``available``, the number of ``what`` a split
    may label (``"cases of ROOT/train.list"``), naming them."""
    if not 0 < labeled <= available:
        raise ConfigError(f"labeled must be between 1 and the {available} {what}, got {labeled}")


#: Seed of the shuffle that deals cases into cross-validation folds (nnU-Net's).
FOLD_SEED = 12345


def fold_cases(names: Sequence[str], folds: int, fold: int) -> list[str]:
    """The names of fold ``fold`` of ``folds``: ``names`` sorted, shuffled with
    :data:`FOLD_SEED` and dealt into ``folds`` parts of sizes differing by at most one;
    returned in the order of ``names``.

    Raises:
        ValueError: fewer names than folds, or ``fold`` not in ``[0, folds)``.
    """
    if not 0 <= fold < folds:
        raise ValueError(f"fold must be in [0, {folds}), got {fold}")
    if len(names) < folds:
        raise ValueError(f"need at least {folds} cases for {folds} folds, got {len(names)}")
    ordered = sorted(names)
    shuffled = [ordered[index] for index in np.random.default_rng(FOLD_SEED).permutation(len(ordered))]
    chosen = set(np.array_split(np.asarray(shuffled, dtype=object), folds)[fold].tolist())
    return [name for name in names if name in chosen]
