"""The prototype head's bank: update gate, EMA update, k-means initialisation, all-reduce."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mper.errors import DataFormatError
from mper.nn import PrototypeHead
from mper.nn.kmeans import ClassVoxelSampler, kmeans
from mper.train.config import load_config
from mper.train.prototypes import confidence_gate
from mper.train.runner import kmeans_description


def gate_case(**options):
    """Voxels: 0, 1 from the labeled image, 2, 3 from the unlabeled one; voxel 3 is
    misclassified, voxel 2 confident, voxel 0 background."""
    return confidence_gate(
        proto_prediction=torch.tensor([[0, 1, 1, 2]]),
        mixed_label=torch.tensor([[0, 1, 1, 1]]),
        labeled_region=torch.tensor([[1.0, 1.0, 0.0, 0.0]]),
        teacher_confidence=torch.tensor([[0.5, 0.5, 0.95, 0.99]]),
        threshold=0.9,
        **options,
    ).tolist()


@pytest.mark.parametrize(
    "source, expected",
    [
        ("both", [[True, True, True, False]]),
        ("labeled", [[True, True, False, False]]),
        ("unlabeled", [[False, False, True, False]]),
        ("none", [[False, False, False, False]]),
    ],
)
def test_gate_follows_the_update_source(source, expected):
    assert gate_case(update_source=source) == expected


def test_gate_can_leave_out_the_background():
    assert gate_case(update_source="both", include_background=False) == [[False, True, True, False]]


def test_gate_needs_confidence_strictly_above_the_threshold_on_unlabeled_voxels():
    gate = confidence_gate(
        torch.tensor([[1, 1]]),
        torch.tensor([[1, 1]]),
        torch.tensor([[0.0, 0.0]]),
        torch.tensor([[0.9, 0.91]]),
        threshold=0.9,
    )
    assert gate.tolist() == [[False, True]]


def test_gate_broadcasts_a_spatial_region_over_the_batch():
    gate = confidence_gate(
        torch.ones(2, 2, dtype=torch.long),
        torch.ones(2, 2, dtype=torch.long),
        torch.tensor([1.0, 0.0]),
        torch.zeros(2, 2),
        threshold=0.9,
    )
    assert gate.tolist() == [[True, False], [True, False]]


def test_gate_rejects_an_unknown_source():
    with pytest.raises(ValueError, match="update_source"):
        gate_case(update_source="all")


def bank_update_case():
    bank = PrototypeHead(num_classes=2, num_prototypes=2, dim=2, ops="reference")
    bank.prototypes.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]]))
    emb = torch.tensor([[2.0, 0.0], [4.0, 2.0], [0.0, 6.0], [8.0, 8.0]]).t().reshape(1, 2, 1, 4)
    labels = torch.tensor([[[0, 0, 1, 1]]])
    assign = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 1]]).reshape(1, 2, 1, 4)
    gate = torch.tensor([[[True, True, True, False]]])
    return bank, emb, labels, assign, gate


def test_bank_update_matches_a_hand_computation():
    bank, emb, labels, assign, gate = bank_update_case()
    counts = bank.update(emb, labels, assign, gate, momentum=0.5)
    # Row 1 (class 0, k=1) averages voxels 0 and 1 -> (3, 1); row 2 (class 1, k=0) takes
    # voxel 2 -> (0, 6); rows 0 and 3 see no voxel and keep their values.
    expected = torch.tensor([[1.0, 0.0], [1.5, 1.0], [0.5, 3.5], [-1.0, 0.0]])
    assert torch.allclose(bank.prototypes, expected)
    assert counts.tolist() == [0, 2, 1, 0]


def test_bank_state_round_trips_and_checks_shapes():
    bank, *_ = bank_update_case()
    copy = PrototypeHead(2, 2, 2)
    copy.load_state_dict(bank.state_dict())
    assert torch.equal(copy.prototypes, bank.prototypes)
    with pytest.raises(RuntimeError, match="size mismatch for prototypes"):
        PrototypeHead(2, 3, 2).load_state_dict(bank.state_dict())


def test_kmeans_recovers_well_separated_clusters():
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    offsets = torch.tensor([[0.1, 0.0], [-0.1, 0.0], [0.0, 0.3], [0.0, -0.3]])
    points = (centres[:, None] + offsets[None]).reshape(-1, 2)
    found = kmeans(points, 3, iterations=5, generator=generator)
    ordered = sorted(tuple(round(value, 4) for value in row) for row in found.tolist())
    assert ordered == [(0.0, 0.0), (0.0, 10.0), (10.0, 0.0)]


def test_kmeans_with_fewer_distinct_points_than_clusters_repeats_centres():
    points = torch.tensor([[1.0, 2.0], [1.0, 2.0]])
    found = kmeans(points, 3, iterations=3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(found, torch.tensor([[1.0, 2.0]] * 3))


def test_voxel_sampler_caps_each_class_with_a_uniform_subsample():
    sampler = ClassVoxelSampler(num_classes=2, max_voxels=10, generator=torch.Generator().manual_seed(0))
    values = torch.arange(100.0)
    for chunk in values.split(25):
        feat = chunk.reshape(1, 1, -1)
        sampler.add(feat, torch.zeros(1, len(chunk), dtype=torch.long))
    kept = sampler.class_features(0).flatten()
    assert len(kept) == 10 and len(set(kept.tolist())) == 10
    assert set(kept.tolist()) <= set(values.tolist())
    assert kept.max() >= 50  # later chunks are not crowded out by earlier ones
    assert sampler.class_features(1).numel() == 0


def test_initialize_runs_kmeans_per_class_on_the_features():
    # Class 0 voxels sit at (0, 0) and (0, 4); class 1 voxels at (5, 5) and (9, 5).
    image = torch.tensor([[0.0, 0.0, 5.0, 9.0], [0.0, 4.0, 5.0, 5.0]]).reshape(1, 2, 1, 4)
    label = torch.tensor([[[0, 0, 1, 1]]])
    bank = PrototypeHead(num_classes=2, num_prototypes=2, dim=2)
    bank.initialize([(image, label)], torch.Generator().manual_seed(0), method="lloyd", max_voxels=0, iterations=20)
    class_0 = sorted(map(tuple, bank.prototypes[:2].tolist()))
    class_1 = sorted(map(tuple, bank.prototypes[2:].tolist()))
    assert class_0 == [(0.0, 0.0), (0.0, 4.0)]
    assert class_1 == [(5.0, 5.0), (9.0, 5.0)]


def test_initialize_names_a_class_without_voxels():
    image = torch.zeros(1, 2, 1, 2)
    bank = PrototypeHead(num_classes=3, num_prototypes=1, dim=2)
    with pytest.raises(DataFormatError, match="class 2 has no voxel"):
        bank.initialize(
            [(image, torch.tensor([[[0, 1]]]))], torch.Generator(), method="minibatch", max_voxels=0, iterations=20
        )


def _update_on_rank(rank: int, init_file: str, results) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    bank, emb, labels, assign, gate = bank_update_case()
    # Rank 0 sees voxels 0 and 2, rank 1 voxel 1: together the voxels of the hand case.
    gate = gate & torch.tensor([[[True, False, True, False]]] if rank == 0 else [[[False, True, False, False]]])
    bank.update(emb, labels, assign, gate, momentum=0.5)
    results[rank] = bank.prototypes.clone()
    dist.destroy_process_group()


def test_update_all_reduces_across_processes(tmp_path):
    results = mp.Manager().dict()
    mp.spawn(_update_on_rank, args=(str(tmp_path / "store"), results), nprocs=2)
    expected = torch.tensor([[1.0, 0.0], [1.5, 1.0], [0.5, 3.5], [-1.0, 0.0]])
    assert torch.allclose(results[0], expected) and torch.allclose(results[1], expected)


@pytest.mark.parametrize(
    "settings, expected",
    [
        ({"kmeans": "minibatch", "kmeans_max_voxels": 0}, "minibatch, 3 per class, every voxel of each class"),
        ({"kmeans": "minibatch", "kmeans_max_voxels": 500}, "minibatch, 3 per class, at most 500 voxels per class"),
        (
            {"kmeans": "lloyd", "kmeans_max_voxels": 0, "kmeans_iterations": 7},
            "lloyd, 3 per class, 7 iterations, every voxel of each class",
        ),
    ],
)
def test_the_log_says_how_the_bank_is_initialised(settings, expected):
    # kmeans_max_voxels = 0 means every voxel, not "at most 0"; mini-batch k-means runs no fixed iterations
    prototypes = dataclasses.replace(load_config("acdc").prototypes, per_class=3, **settings)
    assert kmeans_description(prototypes) == expected
