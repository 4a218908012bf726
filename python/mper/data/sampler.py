"""Two-stream batches for semi-supervised training: labeled items first, unlabeled after.

Each batch holds ``batch_size - secondary_batch_size`` primary (labeled) indices followed
by ``secondary_batch_size`` secondary (unlabeled) ones, as UA-MT and BCP batch them. An
epoch runs once through the primary indices in a shuffled order; the secondary indices
form one endless stream made of successive shuffled passes over them, of which each epoch
takes the next ``len(sampler) * secondary_batch_size`` entries.

Both orders are functions of (seed, epoch) only, so a trainer resumed at iteration ``t``
rebuilds the same batches, and several processes that train on one batch together
(data parallelism) can each draw their own share of it: process ``r`` of ``n`` takes
the ``r``-th of ``n`` equal parts of each half of the primary and of the secondary
indices (the halves that copy-paste pairs), so the shares of all processes together
are the batch a single process draws, and pairs stay pairs. The sampler is endless: it yields every batch from a global
iteration on (:meth:`TwoStreamBatchSampler.start_from`, or :func:`endless_batches`), so
one DataLoader iterator serves a whole training stage.
"""

from __future__ import annotations

import itertools
from collections.abc import Generator, Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Sampler

from mper.data.seeding import PRIMARY_ORDER, SECONDARY_ORDER, keyed_rng, resolve_seed


class TwoStreamBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batch sampler of primary (labeled) then secondary (unlabeled) dataset indices.

    Args:
        primary_indices: dataset indices of labeled items; each is used once per epoch.
        secondary_indices: dataset indices of unlabeled items, drawn endlessly.
        batch_size: total items per batch.
        secondary_batch_size: unlabeled items per batch (0 gives labeled-only batches).
        seed: seed of both orders; ``None`` for fresh entropy.
        share: ``(rank, processes)``: this process's share of every batch (see the
            module docstring); ``(0, 1)``, the whole batch, by default.

    ``len()`` is the number of full primary batches of an epoch; a remainder that does
    not fill a batch is left out of that epoch. Iteration yields every batch from the
    global iteration of :meth:`start_from` (0 by default) on, without end, each item as
    an ``(epoch, index)`` key (see :mod:`mper.data.dataset`).
    """

    def __init__(
        self,
        primary_indices: Sequence[int],
        secondary_indices: Sequence[int],
        batch_size: int,
        secondary_batch_size: int,
        seed: int | None = None,
        share: tuple[int, int] = (0, 1),
    ) -> None:
        super().__init__()
        rank, processes = share
        if not 0 <= rank < processes:
            raise ValueError(f"share must be (rank, processes) with 0 <= rank < processes, got {share}")
        for name, size in (
            ("batch_size - secondary_batch_size", batch_size - secondary_batch_size),
            ("secondary_batch_size", secondary_batch_size),
        ):
            if processes > 1 and size % (2 * processes):
                raise ValueError(
                    f"{name} = {size} must be a multiple of {2 * processes} to share both "
                    f"halves of every batch equally among {processes} processes"
                )
        self.share = share
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
        self.start = 0

    def __len__(self) -> int:
        return len(self.primary) // self.primary_batch_size

    def start_from(self, iteration: int) -> None:
        """Make iteration start at global iteration ``iteration`` (counted from 0)."""
        self.position(iteration)
        self.start = iteration

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
        batches_of_indices: list[list[int]] = np.concatenate(
            [self._own_share(primary), self._own_share(secondary)], axis=1
        ).tolist()
        return batches_of_indices

    def _own_share(self, columns: np.ndarray) -> np.ndarray:
        """This process's part of each half of ``columns`` ``(batches, width)``."""
        rank, processes = self.share
        if processes == 1:
            return columns
        halves = np.split(columns, 2, axis=1)
        return np.concatenate([np.split(half, processes, axis=1)[rank] for half in halves], axis=1)

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

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        first_epoch, start_batch = self.position(self.start)
        for epoch in itertools.count(first_epoch):
            for batch in self.epoch_batches(epoch)[start_batch:]:
                yield [(epoch, index) for index in batch]
            start_batch = 0


def endless_batches(loader: DataLoader[Any], start_iteration: int = 0) -> Generator[Any, None, None]:
    """Yield the loader's batches forever, from global iteration ``start_iteration`` on.

    Epoch ``e`` covers iterations ``[e * n, (e + 1) * n)`` with ``n = len(sampler)``. The
    loader must use a :class:`TwoStreamBatchSampler` and a dataset that takes
    ``(epoch, index)`` keys, as :class:`mper.data.LAPatches` and
    :class:`mper.data.ACDCSlices` do. Batches then depend only on the seeds and the
    iteration number, and one loader iterator serves the whole stage, so worker processes
    and their case caches live as long as the generator.
    """
    sampler = loader.batch_sampler
    if not isinstance(sampler, TwoStreamBatchSampler):
        raise TypeError("loader must be built with batch_sampler=TwoStreamBatchSampler(...)")
    sampler.start_from(start_iteration)
    yield from loader
