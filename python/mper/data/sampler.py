"""Two-stream batches for semi-supervised training: labeled items first, unlabeled after.

Each batch holds ``batch_size - secondary_batch_size`` primary (labeled) indices followed
by ``secondary_batch_size`` secondary (unlabeled) ones, as UA-MT and BCP batch them. An
epoch runs once through the primary indices in a shuffled order; the secondary indices
form one endless stream made of successive shuffled passes over them, of which each epoch
takes the next ``len(sampler) * secondary_batch_size`` entries.

Both orders are functions of (seed, epoch) only, so a trainer resumed at iteration ``t``
rebuilds the same batches. The simplest way is :func:`endless_batches`, which serves a
whole training stage from one DataLoader iterator, starting at any iteration.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Sampler

from mper.data.seeding import PRIMARY_ORDER, SECONDARY_ORDER, keyed_rng, resolve_seed


class TwoStreamBatchSampler(Sampler[list[int]]):
    """Batch sampler of primary (labeled) then secondary (unlabeled) dataset indices.

    Args:
        primary_indices: dataset indices of labeled items; each is used once per epoch.
        secondary_indices: dataset indices of unlabeled items, drawn endlessly.
        batch_size: total items per batch.
        secondary_batch_size: unlabeled items per batch (0 gives labeled-only batches).
        seed: seed of both orders; ``None`` for fresh entropy.

    ``len()`` is the number of full primary batches; a remainder that does not fill a
    batch is left out of that epoch. Iteration yields the index batches of one epoch
    (chosen by :meth:`set_epoch`) or, after :meth:`run_endless_from`, every batch from a
    global iteration on, as ``(epoch, index)`` keys.
    """

    def __init__(
        self,
        primary_indices: Sequence[int],
        secondary_indices: Sequence[int],
        batch_size: int,
        secondary_batch_size: int,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if not 0 <= secondary_batch_size < batch_size:
            raise ValueError(
                f"need 0 <= secondary_batch_size < batch_size, got {secondary_batch_size} and {batch_size}"
            )
        self.primary = np.asarray(primary_indices, dtype=np.int64)
        self.secondary = np.asarray(secondary_indices, dtype=np.int64)
        self.primary_batch_size = batch_size - secondary_batch_size
        self.secondary_batch_size = secondary_batch_size
        if len(self.primary) < self.primary_batch_size:
            raise ValueError(
                f"{len(self.primary)} primary (labeled) indices cannot fill one batch of "
                f"{self.primary_batch_size}; lower batch_size or label more cases"
            )
        if secondary_batch_size and not len(self.secondary):
            raise ValueError("secondary_indices is empty but secondary_batch_size > 0")
        self.seed = resolve_seed(seed)
        self.epoch = 0
        self.start_batch = 0
        self.endless_from: int | None = None

    def __len__(self) -> int:
        return len(self.primary) // self.primary_batch_size

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Make iteration yield the index batches of ``epoch``, from batch ``start_batch`` on."""
        if epoch < 0 or not 0 <= start_batch < len(self):
            raise ValueError(
                f"need epoch >= 0 and 0 <= start_batch < {len(self)}, got {epoch} and {start_batch}"
            )
        self.epoch = epoch
        self.start_batch = start_batch
        self.endless_from = None

    def run_endless_from(self, iteration: int) -> None:
        """Make iteration endless: every batch from global iteration ``iteration`` on, each
        item given as an ``(epoch, index)`` key (see :mod:`mper.data.dataset`)."""
        self.position(iteration)
        self.endless_from = iteration

    def position(self, iteration: int) -> tuple[int, int]:
        """(epoch, batch within the epoch) of global iteration ``iteration`` (counted from 0)."""
        if iteration < 0:
            raise ValueError(f"iteration must be >= 0, got {iteration}")
        return divmod(iteration, len(self))

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """All batches of ``epoch``, as lists of dataset indices."""
        batches = len(self)
        primary = self.primary[keyed_rng(self.seed, PRIMARY_ORDER, epoch).permutation(len(self.primary))]
        primary = primary[: batches * self.primary_batch_size].reshape(batches, -1)
        per_epoch = batches * self.secondary_batch_size
        secondary = self._secondary_stream(epoch * per_epoch, (epoch + 1) * per_epoch)
        secondary = secondary.reshape(batches, self.secondary_batch_size)
        return np.concatenate([primary, secondary], axis=1).tolist()

    def _secondary_stream(self, start: int, stop: int) -> np.ndarray:
        """Entries ``start:stop`` of the endless stream of shuffled passes over ``secondary``."""
        if start == stop:
            return np.empty(0, dtype=np.int64)
        count = len(self.secondary)
        first_pass, last_pass = start // count, (stop - 1) // count
        passes = [
            keyed_rng(self.seed, SECONDARY_ORDER, index).permutation(count)
            for index in range(first_pass, last_pass + 1)
        ]
        offset = first_pass * count
        return self.secondary[np.concatenate(passes)[start - offset : stop - offset]]

    def __iter__(self) -> Iterator[list[int]] | Iterator[list[tuple[int, int]]]:
        if self.endless_from is None:
            yield from self.epoch_batches(self.epoch)[self.start_batch :]
            return
        first_epoch, start_batch = self.position(self.endless_from)
        for epoch in itertools.count(first_epoch):
            for batch in self.epoch_batches(epoch)[start_batch:]:
                yield [(epoch, index) for index in batch]
            start_batch = 0


def endless_batches(loader: DataLoader, start_iteration: int = 0) -> Iterator[Any]:
    """Yield the loader's batches forever, from global iteration ``start_iteration`` on.

    Epoch ``e`` covers iterations ``[e * n, (e + 1) * n)`` with ``n = len(sampler)``. The
    loader must use a :class:`TwoStreamBatchSampler` (which this puts in endless mode) and
    a dataset that takes ``(epoch, index)`` keys, as :class:`mper.data.LAPatches` and
    :class:`mper.data.ACDCSlices` do. Batches then depend only on the seeds and the
    iteration number, and one loader iterator serves the whole stage, so worker processes
    and their case caches live as long as the generator.
    """
    sampler = loader.batch_sampler
    if not isinstance(sampler, TwoStreamBatchSampler):
        raise TypeError("loader must be built with batch_sampler=TwoStreamBatchSampler(...)")
    sampler.run_endless_from(start_iteration)
    yield from loader
