"""The part shared by the LA and ACDC training datasets: cases, caching and seeded draws.

Item ``index`` of epoch ``epoch`` is augmented with
``keyed_rng(seed, ITEM_AUGMENTATION, epoch, index)``, so an item's augmentation depends
only on (seed, epoch, index), never on the order in which items are asked for or on
which worker process asks. An item is asked for as ``dataset[(epoch, index)]``, the way
:class:`mper.data.sampler.TwoStreamBatchSampler` asks: the key carries the epoch, so one
DataLoader iterator (and its worker processes and their caches) can serve a whole
training stage. A bare ``dataset[index]`` is the item of epoch 0.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from mper.data.seeding import ITEM_AUGMENTATION, keyed_rng, resolve_seed


class CaseDataset(Dataset[dict[str, torch.Tensor | str]], ABC):
    """Base class: yields ``{"image": (C, *S) float32, "label": (*S) int64, "case": str}``.

    Subclasses set :attr:`default_patch_size` and implement :meth:`load` (read one case
    from disk) and :meth:`transform` (augment/crop/resize one case with a generator).

    Args:
        root: dataset root.
        cases: case (or slice) names; item ``i`` is ``cases[i]``.
        patch_size: spatial size of every item; ``None`` for :attr:`default_patch_size`.
        augment: apply random augmentation (otherwise only the size change).
        seed: seed of all draws; ``None`` for fresh entropy.
        cache: keep loaded cases in memory.
    """

    default_patch_size: tuple[int, ...]

    def __init__(
        self,
        root: str | Path,
        cases: Sequence[str],
        patch_size: Sequence[int] | None = None,
        augment: bool = True,
        seed: int | None = None,
        cache: bool = True,
    ) -> None:
        if isinstance(cases, str):
            raise TypeError(f"cases must be a sequence of case names, got the string {cases!r}")
        if not cases:
            raise ValueError("cases is empty: give at least one case name")
        patch_size = self.default_patch_size if patch_size is None else tuple(int(n) for n in patch_size)
        if len(patch_size) != len(self.default_patch_size) or min(patch_size) < 1:
            raise ValueError(f"patch_size must be {len(self.default_patch_size)} positive sizes, got {patch_size}")
        self.root = Path(root)
        self.cases = list(cases)
        self.patch_size = patch_size
        self.augment = augment
        self.seed = resolve_seed(seed)
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None

    @abstractmethod
    def load(self, case: str) -> tuple[np.ndarray, np.ndarray]:
        """Read ``case`` as (image float32, label uint8)."""

    @abstractmethod
    def transform(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Turn a loaded case into a training item of the dataset's patch size: an image of
        the patch's shape (one channel) or with its channels first, and a label of the
        patch's shape."""

    def __len__(self) -> int:
        return len(self.cases)

    def _loaded(self, case: str) -> tuple[np.ndarray, np.ndarray]:
        if self._cache is None:
            return self.load(case)
        if case not in self._cache:
            self._cache[case] = self.load(case)
        return self._cache[case]

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor | str]:
        """Item ``index`` of epoch ``epoch`` for the key ``(epoch, index)``; a bare
        ``index`` is the item of epoch 0."""
        epoch, index = key if isinstance(key, tuple) else (0, key)
        index = range(len(self))[index]
        case = self.cases[index]
        rng = keyed_rng(self.seed, ITEM_AUGMENTATION, epoch, index)
        image, label = self.transform(*self._loaded(case), rng)
        if image.ndim == label.ndim:  # one channel, without its axis
            image = image[None]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
            "label": torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64)),
            "case": case,
        }
