"""TwoStreamBatchSampler: batch composition, epoch coverage, the endless unlabeled stream,
seeded replay and resuming mid-epoch."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from mper.data import TwoStreamBatchSampler, endless_batches

PRIMARY = list(range(10))  # labeled
SECONDARY = list(range(10, 17))  # unlabeled


def sampler(seed: int | None = 0) -> TwoStreamBatchSampler:
    """Batches of 3 labeled then 2 unlabeled indices: 3 batches per epoch."""
    return TwoStreamBatchSampler(PRIMARY, SECONDARY, 5, 2, seed=seed)


def test_batches_hold_primary_then_secondary_indices():
    batches = sampler().epoch_batches(0)
    assert len(batches) == len(sampler()) == 10 // 3
    for batch in batches:
        assert len(batch) == 5
        assert set(batch[:3]) <= set(PRIMARY) and set(batch[3:]) <= set(SECONDARY)


def test_each_epoch_uses_each_primary_index_at_most_once():
    even = TwoStreamBatchSampler(PRIMARY, SECONDARY, 4, 2, seed=1)  # 10 = 5 batches of 2
    for epoch in range(4):
        primary = [index for batch in even.epoch_batches(epoch) for index in batch[:2]]
        assert sorted(primary) == PRIMARY
        primary = [index for batch in sampler(seed=1).epoch_batches(epoch) for index in batch[:3]]
        assert len(primary) == len(set(primary)) == 9  # the 10th does not fill a batch


def test_secondary_stream_runs_through_shuffled_passes_across_epochs():
    # 3 batches of 2 unlabeled per epoch; 7 epochs draw 42 = 6 full passes over 7 indices.
    drawn = []
    order = sampler(seed=3)
    for epoch in range(7):
        drawn += [index for batch in order.epoch_batches(epoch) for index in batch[3:]]
    passes = [drawn[start : start + 7] for start in range(0, 42, 7)]
    assert all(sorted(one_pass) == SECONDARY for one_pass in passes)
    assert len({tuple(one_pass) for one_pass in passes}) > 1  # each pass reshuffled
    assert set(Counter(drawn).values()) == {6}


def test_order_is_a_function_of_seed_and_epoch():
    first, second = sampler(seed=5), sampler(seed=5)
    second.epoch_batches(2)
    assert first.epoch_batches(0) == second.epoch_batches(0)
    assert first.epoch_batches(1) != second.epoch_batches(0)
    assert first.epoch_batches(0) != sampler(seed=6).epoch_batches(0)
    assert sampler(seed=None).seed != sampler(seed=None).seed


def test_iteration_starts_at_the_given_global_iteration():
    order = sampler(seed=2)
    full = order.epoch_batches(4)
    for start in range(len(order)):
        order.start_from(4 * len(order) + start)
        batches = iter(order)
        assert [next(batches) for _ in full[start:]] == [[(4, index) for index in batch] for batch in full[start:]]
        assert next(batches) == [(5, index) for index in order.epoch_batches(5)[0]]
    assert order.position(0) == (0, 0)
    assert order.position(7) == (2, 1)
    with pytest.raises(ValueError, match="iteration"):
        order.start_from(-1)


def test_labeled_only_batches():
    order = TwoStreamBatchSampler(PRIMARY, [], 5, 0, seed=0)
    assert sorted(index for batch in order.epoch_batches(0) for index in batch) == PRIMARY


@pytest.mark.parametrize(
    ("primary", "secondary", "batch_size", "secondary_batch_size", "message"),
    [
        (PRIMARY, SECONDARY, 4, 4, "secondary_batch_size < batch_size"),
        (PRIMARY, SECONDARY, 4, -1, "secondary_batch_size"),
        ([0, 1], SECONDARY, 5, 2, "cannot fill one batch"),
        (PRIMARY, [], 5, 2, "secondary_indices is empty"),
    ],
)
def test_invalid_arguments(primary, secondary, batch_size, secondary_batch_size, message):
    with pytest.raises(ValueError, match=message):
        TwoStreamBatchSampler(primary, secondary, batch_size, secondary_batch_size)


class EpochEcho(Dataset):
    """Item ``(epoch, index)`` is the tensor ``[index, epoch]``."""

    def __len__(self) -> int:
        return len(PRIMARY) + len(SECONDARY)

    def __getitem__(self, key: tuple[int, int]) -> torch.Tensor:
        epoch, index = key
        return torch.tensor([index, epoch])


def take(loader: DataLoader, start: int, count: int) -> list[list[list[int]]]:
    stream = endless_batches(loader, start_iteration=start)
    return [next(stream).tolist() for _ in range(count)]


def test_endless_batches_resume_at_any_iteration():
    order = sampler(seed=9)
    uninterrupted = take(DataLoader(EpochEcho(), batch_sampler=order), 0, 12)
    for iteration, batch in enumerate(uninterrupted):
        epoch, position = divmod(iteration, len(order))
        assert batch == [[index, epoch] for index in order.epoch_batches(epoch)[position]]
    for start in (1, 5, 9):
        resumed = DataLoader(EpochEcho(), batch_sampler=sampler(seed=9))
        assert take(resumed, start, 12 - start) == uninterrupted[start:]


def test_endless_batches_are_the_same_with_worker_processes():
    in_process = take(DataLoader(EpochEcho(), batch_sampler=sampler(seed=4)), 2, 8)
    with_workers = DataLoader(EpochEcho(), batch_sampler=sampler(seed=4), num_workers=2)
    assert take(with_workers, 2, 8) == in_process


def test_endless_batches_needs_the_two_stream_sampler():
    with pytest.raises(TypeError, match="TwoStreamBatchSampler"):
        next(endless_batches(DataLoader(EpochEcho(), batch_size=2)))
