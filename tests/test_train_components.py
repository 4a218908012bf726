"""Hand-checked cases for copy-paste mixing, the EMA teacher, pseudo labels, the
learning-rate schedule and the two-way mixed loss."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from mper import ops, reference
from mper.data.sampler import endless_batches
from mper.datasets import synthesize
from mper.losses import DiceOptions
from mper.train.config import load_config
from mper.train.loaders import stage_loader
from mper.train.loop import learning_rate
from mper.train.mixing import box_mask, box_size, copy_paste
from mper.train.selftrain import MixedImages
from mper.train.teacher import (
    confidence,
    create_teacher,
    ema_update_,
    pseudo_labels,
    slow_teacher_warning,
    teacher_decay,
)


def test_box_size_is_two_thirds_of_each_side_rounded_down():
    assert box_size((112, 112, 80), 2 / 3) == (74, 74, 53)
    assert box_size((256, 256), 2 / 3) == (170, 170)
    assert box_size((3, 6), 2 / 3) == (2, 4)
    with pytest.raises(ValueError, match="box_fraction"):
        box_size((4, 4), 0.0)


def test_box_mask_has_one_zero_box_of_the_right_size():
    mask = box_mask((6, 8), 0.5, torch.Generator().manual_seed(0))
    zeros = (mask == 0).nonzero()
    rows, cols = zeros[:, 0], zeros[:, 1]
    assert mask.dtype == torch.float32 and mask.shape == (6, 8)
    assert len(zeros) == 3 * 4
    assert rows.max() - rows.min() + 1 == 3 and cols.max() - cols.min() + 1 == 4
    assert set(mask.unique().tolist()) == {0.0, 1.0}


def test_box_mask_reaches_every_position_and_replays_from_the_generator():
    corners = set()
    generator = torch.Generator().manual_seed(1)
    for _ in range(200):
        mask = box_mask((5,), 0.4, generator)
        corners.add(int((mask == 0).nonzero()[0]))
    assert corners == {0, 1, 2, 3}
    first = box_mask((9, 9, 9), 2 / 3, torch.Generator().manual_seed(7))
    again = box_mask((9, 9, 9), 2 / 3, torch.Generator().manual_seed(7))
    assert torch.equal(first, again)


def test_box_mask_places_the_box_at_one_draw_per_axis_as_earlier_runs_did():
    # runs and their resumes replay the same boxes: one randint per axis, in axis order
    shape, fraction = (9, 7, 5), 2 / 3
    generator = torch.Generator().manual_seed(3)
    mask = box_mask(shape, fraction, generator, device="cpu")
    replay, expected = torch.Generator().manual_seed(3), torch.ones(shape)
    box = tuple(
        slice(start, start + length)
        for side, length in zip(shape, box_size(shape, fraction))
        for start in [int(torch.randint(0, side - length + 1, (1,), generator=replay))]
    )
    expected[box] = 0
    assert torch.equal(mask, expected) and mask.device.type == "cpu"
    assert torch.equal(generator.get_state(), replay.get_state())


def test_copy_paste_keeps_the_first_outside_the_box_and_pastes_the_second_inside():
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    first_image = torch.full((2, 1, 2, 2), 1.0)
    second_image = torch.full((2, 1, 2, 2), 7.0)
    mixed = copy_paste(first_image, second_image, mask)
    assert mixed[:, 0].tolist() == [[[1.0, 1.0], [1.0, 7.0]]] * 2
    first_label = torch.tensor([[[1, 2], [3, 1]]])
    second_label = torch.tensor([[[0, 0], [0, 2]]])
    mixed_label = copy_paste(first_label, second_label, mask)
    assert mixed_label.dtype == torch.int64
    assert mixed_label.tolist() == [[[1, 2], [3, 2]]]


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))


def test_teacher_starts_as_a_frozen_copy_in_eval_mode():
    student = small_net()
    teacher = create_teacher(student)
    assert not teacher.training
    assert all(not parameter.requires_grad for parameter in teacher.parameters())
    for name, value in student.state_dict().items():
        assert torch.equal(teacher.state_dict()[name], value)


def test_teacher_decay_warms_up_to_eta():
    assert teacher_decay(0, 0.99) == 0.0
    assert teacher_decay(1, 0.99) == 0.5
    assert teacher_decay(3, 0.99) == 0.75
    assert teacher_decay(10_000, 0.99) == 0.99


@pytest.mark.parametrize(
    ("eta", "schedule", "iterations", "warns"),
    [
        (0.999, "constant", 600, True),  # ~1000-iteration average over a 600-iteration run
        (0.999, "constant", 30000, False),  # the paper's length
        (0.99, "constant", 600, False),
        (0.99, "constant", 400, True),
        (0.999, "warmup", 600, False),  # the warm-up follows the student from the start
    ],
)
def test_a_teacher_slower_than_a_fifth_of_self_training_is_warned_about(eta, schedule, iterations, warns):
    warning = slow_teacher_warning(eta, schedule, iterations)
    assert (warning is not None) == warns
    if warns:
        assert f"selftrain.ema_decay={eta}" in warning and f"selftrain.iterations={iterations}" in warning
        suggested = float(warning.rsplit("selftrain.ema_decay=", 1)[1].rstrip(")"))
        assert suggested < eta and slow_teacher_warning(suggested, schedule, iterations) is None


def test_ema_update_averages_parameters_and_buffers_and_copies_counters():
    student = small_net()
    teacher = create_teacher(student)
    with torch.no_grad():
        for parameter in teacher.parameters():
            parameter.fill_(2.0)
        for parameter in student.parameters():
            parameter.fill_(4.0)
    student[1].running_mean.fill_(1.0)
    student[1].num_batches_tracked.fill_(5)
    decay = ema_update_(teacher, student, step=3, eta=0.99)
    assert decay == 0.75
    for parameter in teacher.parameters():
        assert torch.allclose(parameter, torch.full_like(parameter, 0.75 * 2.0 + 0.25 * 4.0))
    assert torch.allclose(teacher[1].running_mean, torch.full((3,), 0.25))
    assert int(teacher[1].num_batches_tracked) == 5
    ema_update_(teacher, student, step=0, eta=0.99)
    for parameter in teacher.parameters():
        assert torch.equal(parameter, torch.full_like(parameter, 4.0))


def one_hot_probs(labels: torch.Tensor, num_classes: int, high: float) -> torch.Tensor:
    low = (1 - high) / (num_classes - 1)
    one_hot = nn.functional.one_hot(labels, num_classes).movedim(-1, 1).float()
    return one_hot * (high - low) + low


OPS_MODULES = pytest.mark.parametrize("ops_module", [ops, reference], ids=["fused", "reference"])


@OPS_MODULES
def test_pseudo_labels_keep_one_blob_per_class_with_diagonal_connectivity(ops_module):
    argmax = torch.tensor(
        [
            [1, 0, 0, 2, 2],
            [0, 1, 0, 0, 0],
            [0, 0, 0, 1, 0],
            [2, 0, 0, 0, 0],
        ]
    )
    expected = [
        [1, 0, 0, 2, 2],
        [0, 1, 0, 0, 0],
        [0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0],
    ]
    assert pseudo_labels(one_hot_probs(argmax[None], 3, high=0.8), ops_module).tolist() == [expected]


@OPS_MODULES
def test_pseudo_labels_use_26_neighbours_in_3d(ops_module):
    argmax = torch.zeros((4, 4, 4), dtype=torch.int64)
    argmax[0, 0, 0] = argmax[1, 1, 1] = 1  # corner neighbours: one component
    argmax[3, 3, 3] = 1
    cleaned = pseudo_labels(one_hot_probs(argmax[None], 2, high=0.9), ops_module)[0]
    assert int(cleaned.sum()) == 2 and cleaned[0, 0, 0] == 1 and cleaned[3, 3, 3] == 0


@OPS_MODULES
def test_pseudo_labels_take_the_argmax_then_the_largest_component(ops_module):
    argmax = torch.tensor([[[1, 1, 0, 1], [0, 0, 0, 0], [3, 0, 2, 2]]])
    probs = one_hot_probs(argmax, 4, high=0.7)
    labels = pseudo_labels(probs, ops_module)
    assert labels.dtype == torch.int64
    assert labels.tolist() == [[[1, 1, 0, 0], [0, 0, 0, 0], [3, 0, 2, 2]]]


@OPS_MODULES
def test_pseudo_labels_with_a_threshold_mark_p1_at_least_the_threshold(ops_module):
    p1 = torch.tensor([[[0.5, 0.49], [0.2, 0.9]]])
    probs = torch.stack([1 - p1, p1], dim=1)
    assert pseudo_labels(probs, ops_module, foreground_threshold=0.5).tolist() == [[[1, 0], [0, 1]]]
    assert pseudo_labels(probs, ops_module, foreground_threshold=0.95).tolist() == [[[0, 0], [0, 0]]]
    with pytest.raises(ValueError, match="two-class"):
        pseudo_labels(torch.rand(1, 3, 2, 2).softmax(1), ops_module, foreground_threshold=0.5)


@pytest.mark.parametrize(
    "shape, num_classes, threshold",
    [
        ((3, 4, 17, 23), 4, None),
        ((2, 3, 6, 9, 11), 3, None),
        ((2, 2, 5, 8, 7), 2, 0.6),
        ((4, 2, 19, 13), 2, 0.55),
    ],
)
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_fused_pseudo_labels_equal_scipy_on_random_probabilities(shape, num_classes, threshold, device):
    """The fused op against the scipy labelling of :mod:`mper.reference`, ties included
    (random probabilities give many equally large small components)."""
    generator = torch.Generator().manual_seed(sum(shape))
    for _ in range(3):
        probs = torch.rand(shape, generator=generator).softmax(dim=1)
        hard = probs.argmax(dim=1) if threshold is None else (probs[:, 1] >= threshold).long()
        want = reference.largest_component(hard, num_classes)
        got = pseudo_labels(probs.to(device), ops, threshold)
        assert got.dtype == torch.int64 and got.device.type == device
        assert torch.equal(got.cpu(), want)
        assert torch.equal(pseudo_labels(probs, reference, threshold), want)
        assert 0 < int((want != hard).sum()) < int((hard > 0).sum())  # cleaned some voxels, not all


def test_confidence_is_the_highest_class_probability():
    probs = torch.tensor([[0.2, 0.5], [0.7, 0.1], [0.1, 0.4]]).reshape(1, 3, 1, 2)
    assert torch.allclose(confidence(probs), torch.tensor([[[0.7, 0.5]]]))


def test_learning_rate_steps_down_every_lr_step_iterations():
    optim = load_config("la").optim
    step_schedule = dataclasses.replace(optim, lr=0.01, lr_step=2500, lr_gamma=0.1)
    assert learning_rate(step_schedule, 0) == 0.01
    assert learning_rate(step_schedule, 2499) == 0.01
    assert learning_rate(step_schedule, 2500) == pytest.approx(0.001)
    assert learning_rate(step_schedule, 5000) == pytest.approx(0.0001)
    assert learning_rate(dataclasses.replace(optim, lr=0.01, lr_step=0), 10_000) == 0.01


def test_each_direction_weights_its_labeled_region_by_one():
    # One pixel outside the box (M = 1), one inside. Confident, correct logits cost ~0,
    # so each direction's loss shows how its two regions were weighted.
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]]).reshape(1, 2, 1, 2)
    label = torch.tensor([[[1, 0]]])
    mix_mask = torch.tensor([[1.0, 0.0]])
    outside, inside = math.log(2) + 0.6, -math.log(0.75) + 0.52  # see tests/test_losses.py
    common = dict(
        images=torch.zeros(1, 1, 1, 2),
        surround_label=label,
        box_label=label,
        mix_mask=mix_mask,
        teacher_confidence=torch.ones(1, 1, 2),
    )
    labeled_surround = MixedImages(labeled_region=mix_mask, surround_weight=1.0, box_weight=0.5, **common)
    unlabeled_surround = MixedImages(labeled_region=1 - mix_mask, surround_weight=0.5, box_weight=1.0, **common)
    assert labeled_surround.loss(logits, 1.0, DiceOptions()).item() == pytest.approx(outside + 0.5 * inside, abs=1e-6)
    assert unlabeled_surround.loss(logits, 1.0, DiceOptions()).item() == pytest.approx(0.5 * outside + inside, abs=1e-6)


def test_self_training_draws_other_labeled_crops_and_pairs_than_pre_training(tmp_path):
    root = synthesize("acdc", tmp_path / "acdc", cases=5, seed=0, size=(32, 32), progress=False)
    config = load_config(
        "acdc",
        "paper",
        {"data_root": str(root), "labeled": 1, "device": "cpu"},
        ["data.patch_size=[32, 32]", "data.batch_size=4", "data.labeled_batch_size=2", "data.num_workers=0"],
    )
    device = torch.device("cpu")
    pretrain = endless_batches(stage_loader(config, with_unlabeled=False, device=device))
    selftrain = endless_batches(stage_loader(config, with_unlabeled=True, device=device))
    firsts = [(next(pretrain), next(selftrain)) for _ in range(12)]
    labeled = config.data.labeled_batch_size
    # iteration t of self-training neither repeats iteration t's labeled crops nor its pairs
    assert not any(torch.equal(pre["image"], self["image"][:labeled]) for pre, self in firsts)
    assert sum(pre["case"] == self["case"][:labeled] for pre, self in firsts) < len(firsts) // 2
    # each stage's draws are still a function of the seed: the same again
    again = endless_batches(stage_loader(config, with_unlabeled=True, device=device))
    assert all(torch.equal(next(again)["image"], self["image"]) for _, self in firsts)
