"""Each recipe switch does what its setting says, checked by value on tiny inputs:
teacher mode and EMA, forward passes and order, region-wise bank steps, the contrastive
reduction, the Dice forms, the pre-training loss, optimizer carry-over, the classifier
kernel, the training resize, k-means and the evaluation protocol."""

from __future__ import annotations

import contextlib
import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from mper import reference
from mper.data.acdc import ACDCSlices, acdc_split
from mper.data.augment import resize
from mper.datasets import synthesize
from mper.eval.metrics import case_metrics
from mper.eval.protocol import postprocess_labels, score_case
from mper.eval.report import summarize
from mper.losses import DiceOptions, copy_paste_loss, masked_dice_loss, segmentation_loss
from mper.nets import UNet2D, VNet3D
from mper.nn import PrototypeHead
from mper.nn.kmeans import minibatch_kmeans
from mper.train import selftrain
from mper.train.checkpoint import PRETRAIN_CHECKPOINT, load_checkpoint
from mper.train.config import SelfTrainConfig, load_config
from mper.train.diagnostics import SelfTrainingMonitor
from mper.train.loaders import prototype_init_batches
from mper.train.loop import Trainer
from mper.train.mixing import box_mask, copy_paste
from mper.train.pretrain import run_pretrain, supervised_step
from mper.train.teacher import create_teacher, ema_update_, teacher_decay

TINY = [
    "network.channels=[4, 8, 16, 32, 64]",
    "data.patch_size=[32, 32]",
    "data.batch_size=4",
    "data.labeled_batch_size=2",
    "data.num_workers=0",
    "pretrain.iterations=2",
    "selftrain.iterations=2",
    "eval.val_interval=2",
    "prototypes.kmeans_max_voxels=500",
    "prototypes.confidence_threshold=0.0",
]


def tiny_trainer(tmp_path, *assignments, data_root="", preset="reference") -> Trainer:
    config = load_config(
        "acdc", preset, {"data_root": str(data_root), "device": "cpu", "labeled": 1}, [*TINY, *assignments]
    )
    trainer = Trainer(config, tmp_path, validate=lambda net: 0.5)
    trainer.teacher = create_teacher(trainer.student, config.selftrain.teacher_mode)
    trainer.head = trainer.new_head()
    trainer.head.prototypes.copy_(
        torch.randn(trainer.head.prototypes.shape, generator=torch.Generator().manual_seed(3))
    )
    return trainer


def tiny_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randn(4, 1, 32, 32, generator=generator),
        "label": torch.randint(0, 4, (4, 32, 32), generator=generator),
    }


class RecordingOps:
    """The eager ops, recording the bank each classification saw and each InfoNCE value."""

    def __init__(self):
        self.banks, self.nce = [], []

    def __getattr__(self, name):
        return getattr(reference, name)

    def proto_classify_infonce(self, feat, prototypes, *args):
        self.banks.append(prototypes.clone())
        logits, assign, nce = reference.proto_classify_infonce(feat, prototypes, *args)
        self.nce.append(float(nce.detach()))
        return logits, assign, nce


def record_ops(monkeypatch) -> RecordingOps:
    """Make every prototype head use a :class:`RecordingOps`; returns it."""
    recording = RecordingOps()
    monkeypatch.setattr(PrototypeHead, "ops", property(lambda head: recording))
    return recording


# --- teacher ---------------------------------------------------------------------------


def tiny_teacher(dropout: float) -> nn.Module:
    """A tiny U-Net teacher (the self-training copy of a student), in train mode."""
    torch.manual_seed(0)
    return create_teacher(UNet2D(1, 4, channels=(4, 8, 16, 32, 64), dropout=(dropout,) * 5), mode="train")


def test_a_teacher_in_train_mode_gives_dropout_dependent_pseudo_labels():
    teacher = tiny_teacher(dropout=0.5)
    unlabeled = tiny_batch()["image"][2:]

    def pseudo(seed):
        torch.manual_seed(seed)
        return selftrain.teacher_probabilities(teacher, unlabeled, 1, contextlib.nullcontext).argmax(1)

    assert teacher.training
    assert torch.equal(pseudo(1), pseudo(1))
    assert not torch.equal(pseudo(1), pseudo(2))
    teacher.eval()
    assert torch.equal(pseudo(1), pseudo(2))


def test_teacher_passes_give_each_unlabeled_half_its_own_batch_statistics():
    teacher = tiny_teacher(dropout=0.0)
    unlabeled = tiny_batch()["image"][:2]
    with torch.no_grad():
        separate = torch.cat([teacher(half).pred for half in unlabeled.chunk(2)]).softmax(1)
        joint = teacher(unlabeled).pred.softmax(1)
    assert torch.allclose(
        selftrain.teacher_probabilities(teacher, unlabeled, 2, contextlib.nullcontext), separate, atol=1e-6
    )
    assert not torch.allclose(separate, joint, atol=1e-4)


def test_ema_decay_is_constant_or_warms_up():
    assert [teacher_decay(step, 0.99, "constant") for step in (0, 1, 10_000)] == [0.99, 0.99, 0.99]
    assert [teacher_decay(step, 0.99, "warmup") for step in (0, 1, 10_000)] == [0.0, 0.5, 0.99]


@pytest.mark.parametrize("scope, buffer_moves", [("parameters", False), ("state", True)])
def test_ema_scope_decides_whether_batch_norm_buffers_follow(scope, buffer_moves):
    student = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    teacher = create_teacher(student)
    with torch.no_grad():
        student[0].weight.fill_(1.0)
        teacher[0].weight.fill_(0.0)
    student[1].running_mean.fill_(1.0)
    assert ema_update_(teacher, student, step=0, eta=0.9, schedule="constant", scope=scope) == 0.9
    assert torch.allclose(teacher[0].weight, torch.full((3, 2), 0.1))
    expected = 0.1 if buffer_moves else 0.0
    assert torch.allclose(teacher[1].running_mean, torch.full((3,), expected))


# --- the self-training step --------------------------------------------------------------


def paper_selftrain(**changes: object) -> SelfTrainConfig:
    """ACDC's ``paper`` self-training settings with ``changes``."""
    return dataclasses.replace(load_config("acdc", "paper").selftrain, **changes)


def tiny_directions(selftrain_settings: SelfTrainConfig, seed: int = 0) -> list[selftrain.MixedImages]:
    """Both copy-paste directions of :func:`tiny_batch`, with random pseudo labels and
    teacher confidences and a box drawn as the trainer draws it."""
    batch, generator = tiny_batch(seed), torch.Generator().manual_seed(seed + 1)
    pseudo = torch.randint(0, 4, (2, 32, 32), generator=generator)
    certainty = torch.rand(2, 32, 32, generator=generator)
    mask = box_mask((32, 32), 2 / 3, generator, torch.device("cpu"))
    return selftrain.mix_bidirectional(batch["image"], batch["label"], pseudo, certainty, mask, selftrain_settings)


def test_forward_order_puts_the_chosen_direction_first():
    batch = tiny_batch()
    for order, first_weights in (("labeled-surround-first", (1.0, 0.5)), ("unlabeled-surround-first", (0.5, 1.0))):
        first, second = tiny_directions(paper_selftrain(forward_order=order, unlabeled_weight=0.5))
        assert (first.surround_weight, first.box_weight) == first_weights
        assert (second.surround_weight, second.box_weight) == first_weights[::-1]
        assert torch.equal(first.labeled_region + second.labeled_region, torch.ones(32, 32))
        labeled_surround = first if order == "labeled-surround-first" else second
        # a M + ua (1 - M): the surround from image a, the box from the first unlabeled image
        surround = labeled_surround.mix_mask.bool()
        assert torch.equal(labeled_surround.images[0, 0][surround], batch["image"][0, 0][surround])
        assert torch.equal(labeled_surround.images[0, 0][~surround], batch["image"][2, 0][~surround])


def test_student_passes_split_the_forward_by_direction():
    torch.manual_seed(0)
    student = UNet2D(1, 4, channels=(4, 8, 16, 32, 64), dropout=(0.0,) * 5)
    directions = tiny_directions(paper_selftrain())
    two = selftrain.student_outputs(student, directions, 2, contextlib.nullcontext)
    one = selftrain.student_outputs(student, directions, 1, contextlib.nullcontext)
    with torch.no_grad():
        own = student(directions[0].images).pred
    assert torch.allclose(two[0].pred, own, atol=1e-5)
    assert one[0].pred.shape == two[0].pred.shape and not torch.allclose(one[0].pred, two[0].pred, atol=1e-4)


def test_the_second_direction_is_classified_with_the_bank_the_first_one_moved(tmp_path, monkeypatch):
    trainer = tiny_trainer(tmp_path)
    start, batch, prototypes = trainer.head.prototypes.clone(), tiny_batch(), trainer.config.prototypes

    def from_the_top():
        torch.manual_seed(0)
        trainer.mix_generator.manual_seed(trainer.config.seed)
        trainer.head.prototypes.copy_(start)

    # By hand: the same draws, then each direction classified and its bank steps taken in turn.
    from_the_top()
    directions = selftrain.mixed_batch(trainer, batch)
    outputs = selftrain.student_outputs(
        trainer.student, directions, trainer.config.selftrain.forward_passes, contextlib.nullcontext
    )
    expected_banks = []
    for direction, output in zip(directions, outputs):
        expected_banks.append(trainer.head.prototypes.clone())
        logits, assign = reference.proto_classify(output.feat, expected_banks[-1], 4, prototypes.tau)
        selftrain.update_bank(
            trainer.head, trainer.monitor, prototypes, direction, output.feat, logits.detach(), assign
        )
    expected_final = trainer.head.prototypes.clone()

    from_the_top()
    recording = record_ops(monkeypatch)
    selftrain.selftrain_step(trainer, batch, iteration=0)
    assert len(recording.banks) == 2
    for seen, expected in zip(recording.banks, expected_banks):
        assert torch.allclose(seen, expected, atol=1e-6)
    assert not torch.allclose(expected_banks[0], expected_banks[1])
    assert torch.allclose(trainer.head.prototypes, expected_final, atol=1e-6)


@pytest.mark.parametrize("reduction, factor", [("sum", 1.0), ("mean", 0.5)])
def test_contrastive_reduction_sums_or_averages_the_directions_means(tmp_path, monkeypatch, reduction, factor):
    trainer = tiny_trainer(tmp_path, f"selftrain.contrastive_reduction={reduction}")
    recording = record_ops(monkeypatch)
    scalars = selftrain.selftrain_step(trainer, tiny_batch(), iteration=0)
    assert len(recording.nce) == 2
    assert float(scalars["loss_contrastive"]) == pytest.approx(factor * sum(recording.nce), rel=1e-5)


def test_update_bank_takes_the_unlabeled_region_step_then_the_labeled_one():
    generator = torch.Generator().manual_seed(0)
    emb = torch.randn(1, 2, 4, 4, generator=generator)
    label = torch.randint(1, 4, (1, 4, 4), generator=generator)
    assign = torch.randint(0, 2, (1, 4, 4, 4), generator=generator)
    mask = torch.zeros(4, 4)
    mask[:, :2] = 1.0  # surround: the left half
    direction = selftrain.MixedImages(
        images=torch.zeros(1, 1, 4, 4),
        surround_label=label,
        box_label=label,
        mix_mask=mask,
        labeled_region=mask,
        teacher_confidence=torch.ones(1, 4, 4),
        surround_weight=1.0,
        box_weight=0.5,
    )
    logits = nn.functional.one_hot(label, 4).movedim(-1, 1).float()  # the classifier is right everywhere
    start = torch.randn(8, 2, generator=generator)

    def run(update_steps):
        prototypes = load_config(
            "acdc", "reference", {}, ["prototypes.per_class=2", f"prototypes.update_steps={update_steps}"]
        ).prototypes
        bank = PrototypeHead(4, 2, 2, ops="reference")
        bank.prototypes.copy_(start)
        monitor = SelfTrainingMonitor(4)
        sums, counts = selftrain.update_bank(bank, monitor, prototypes, direction, emb, logits, assign)
        # every voxel of the direction passed the gate (the classifier is right everywhere)
        assert monitor.counts.tolist()[-2:] == [16, 16]
        return bank.prototypes, sums, counts

    by_hand = start.clone()
    for region in (mask == 0, mask == 1):
        sums, counts = reference.proto_accumulate(emb, label, assign, region.expand(1, 4, 4), 4, 2)
        reference.proto_ema_update_(by_hand, sums, counts, 0.99)
    region_wise, sums, counts = run("region-wise")
    assert torch.allclose(region_wise, by_hand, atol=1e-6)
    all_sums, all_counts = reference.proto_accumulate(emb, label, assign, torch.ones(1, 4, 4, dtype=torch.bool), 4, 2)
    assert torch.allclose(sums, all_sums) and torch.equal(counts, all_counts)
    combined, _, _ = run("combined")
    assert torch.equal(combined, start)  # combined steps wait for the end of the iteration
    one_step = start.clone()
    reference.proto_ema_update_(one_step, all_sums, all_counts, 0.99)
    assert not torch.allclose(region_wise, one_step, atol=1e-6)


# --- losses ----------------------------------------------------------------------------


def dice_case():
    """Two images of two voxels; p = (0.5, 0.5) and (0.75, 0.25) in each; labels (1, 0)
    and (0, 0); the region is the first voxel of each image."""
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]]).T.reshape(1, 2, 1, 2).repeat(2, 1, 1, 1)
    label = torch.tensor([[[1, 0]], [[0, 0]]])
    region = torch.tensor([[1.0, 0.0]])
    return logits, label, region


def test_per_sample_linear_dice_takes_one_ratio_per_image_and_class():
    logits, label, region = dice_case()
    options = DiceOptions("per-sample-linear", "region", 1e-5)
    # image 0, voxel 0 (label 1, p = 0.5/0.5): class 0: 1e-5 / (0.5 + 1e-5), class 1: (1 + 1e-5) / (1.5 + 1e-5)
    # image 1, voxel 0 (label 0): class 0: (1 + 1e-5) / (1.5 + 1e-5), class 1: 1e-5 / (0.5 + 1e-5)
    s = 1e-5
    ratios = [s / (0.5 + s), (1 + s) / (1.5 + s), (1 + s) / (1.5 + s), s / (0.5 + s)]
    assert masked_dice_loss(logits, label, region, options).item() == pytest.approx(1 - sum(ratios) / 4, rel=1e-6)


def test_pooled_squared_dice_pools_the_batch():
    logits, label, region = dice_case()
    # class 0: 2 * 0.5 / (0.25 + 0.25 + 1) ; class 1: 2 * 0.5 / (0.25 + 0.25 + 1)
    expected = 1 - (1.0 / 1.5)
    assert masked_dice_loss(
        logits, label, region, DiceOptions("pooled-squared", "region", 0.0)
    ).item() == pytest.approx(expected)


def test_a_whole_image_background_term_reads_outside_the_region():
    logits, label, region = dice_case()
    options = DiceOptions("pooled-squared", "whole-image", 0.0)
    # class 0 over all four voxels: p0 = 0.5, 0.75, 0.5, 0.75; y0 = 0, 1, 1, 1
    intersection = 0.75 + 0.5 + 0.75
    denominator = 0.25 + 0.5625 + 0.25 + 0.5625 + 3
    class0 = 2 * intersection / denominator
    class1 = 1.0 / 1.5  # as in the region form
    assert masked_dice_loss(logits, label, region, options).item() == pytest.approx(1 - (class0 + class1) / 2)


def test_copy_paste_loss_scores_each_region_against_its_own_images_label():
    logits, label, region = dice_case()
    other = 1 - label  # the box's image, whose label differs everywhere
    per_region = copy_paste_loss(logits, label, other, region, 1.0, 1.0)
    mixed = copy_paste(label, other, region)
    assert per_region.item() == pytest.approx(copy_paste_loss(logits, mixed, mixed, region, 1.0, 1.0).item())
    background = DiceOptions(background="whole-image")
    assert copy_paste_loss(logits, label, other, region, dice=background).item() != pytest.approx(
        copy_paste_loss(logits, mixed, mixed, region, dice=background).item()
    )


def test_pretraining_loss_is_per_region_or_over_the_whole_image(tmp_path):
    for loss in ("per-region", "whole-image"):
        trainer = tiny_trainer(tmp_path, f"pretrain.loss={loss}", "network.dropout=[0, 0, 0, 0, 0]")
        batch = tiny_batch()
        batch["image"], batch["label"] = batch["image"][:2], batch["label"][:2]
        trainer.mix_generator.manual_seed(0)
        mask = box_mask((32, 32), 2 / 3, torch.Generator().manual_seed(0))
        with torch.no_grad():
            logits = trainer.student(copy_paste(batch["image"][:1], batch["image"][1:], mask)).pred
        dice = trainer.config.losses.options()
        labels = batch["label"]
        expected = (
            segmentation_loss(logits, copy_paste(labels[:1], labels[1:], mask), 0.5, dice)
            if loss == "whole-image"
            else copy_paste_loss(logits, labels[:1], labels[1:], mask, scale=0.5, dice=dice)
        )
        assert float(supervised_step(trainer, batch, mix=True)["loss"]) == pytest.approx(expected.item(), rel=1e-5)


# --- optimizer carry-over ------------------------------------------------------------------


@pytest.fixture(scope="module")
def acdc_root(tmp_path_factory):
    return synthesize("acdc", tmp_path_factory.mktemp("acdc"), cases=4, seed=0, size=(32, 32), progress=False)


@pytest.mark.parametrize("carry_over", [True, False])
def test_self_training_reloads_the_pre_training_momentum_buffers(tmp_path, acdc_root, carry_over):
    trainer = tiny_trainer(tmp_path, f"optim.carry_over={str(carry_over).lower()}", data_root=acdc_root)
    trainer.teacher = trainer.head = None
    run_pretrain(trainer)
    saved = load_checkpoint(tmp_path / PRETRAIN_CHECKPOINT)["optimizer"]
    assert saved["state"]  # momentum buffers of the best pre-training iteration
    selftrain.begin_selftrain(trainer)
    state = trainer.optimizer.state_dict()["state"]
    if not carry_over:
        assert state == {}
        return
    assert state.keys() == saved["state"].keys()
    for index, buffers in saved["state"].items():
        assert torch.equal(state[index]["momentum_buffer"], buffers["momentum_buffer"])


# --- networks and data -----------------------------------------------------------------------


def test_classifier_kernel_sets_the_linear_classifier_conv():
    assert UNet2D(channels=(4, 8, 16, 32, 64), classifier_kernel=3).classifier.weight.shape == (4, 4, 3, 3)
    assert VNet3D(base_filters=4).classifier.weight.shape == (2, 4, 1, 1, 1)
    with pytest.raises(ValueError, match="classifier_kernel"):
        UNet2D(classifier_kernel=2)


def test_nearest_training_resize_keeps_the_image_values(acdc_root):
    image = np.arange(12, dtype=np.float32).reshape(3, 4)
    nearest, _ = resize(image, np.zeros((3, 4)), (7, 9), "nearest")
    cubic, _ = resize(image, np.zeros((3, 4)), (7, 9), "cubic")
    assert set(np.unique(nearest)) <= set(image.ravel()) and not set(np.unique(cubic)) <= set(image.ravel())
    labeled, _ = acdc_split(acdc_root, 1)
    item = ACDCSlices(acdc_root, labeled[:1], patch_size=(48, 48), augment=False, image_interpolation="nearest")[0]
    source = ACDCSlices(acdc_root, labeled[:1], patch_size=(32, 32), augment=False)[0]
    assert set(item["image"].unique().tolist()) <= set(source["image"].unique().tolist())
    with pytest.raises(ValueError, match="image_interpolation"):
        ACDCSlices(acdc_root, labeled[:1], image_interpolation="linear")


# --- prototype initialisation ------------------------------------------------------------------


def test_minibatch_kmeans_finds_well_separated_clusters():
    generator = torch.Generator().manual_seed(0)
    truth = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = torch.cat([centre + 0.1 * torch.randn(3000, 2, generator=generator) for centre in truth])
    found = minibatch_kmeans(points, 3, torch.Generator().manual_seed(1), batch_size=256)
    distances = torch.cdist(truth, found)
    assert distances.min(dim=1).values.max() < 0.1
    assert minibatch_kmeans(torch.ones(1, 2), 2, torch.Generator()).tolist() == [[1.0, 1.0], [1.0, 1.0]]


def test_prototype_init_reads_one_augmented_epoch_of_labeled_batches(tmp_path, acdc_root):
    config = tiny_trainer(tmp_path, data_root=acdc_root).config
    labeled, _ = acdc_split(acdc_root, 1)
    batches = list(prototype_init_batches(config, torch.device("cpu")))
    assert len(batches) == len(labeled) // 2 and all(image.shape == (2, 1, 32, 32) for image, _ in batches)
    config.prototypes.kmeans_augment = False
    plain = list(prototype_init_batches(config, torch.device("cpu")))
    assert sum(len(image) for image, _ in plain) == len(labeled)
    unaugmented = ACDCSlices(acdc_root, labeled[:1], patch_size=(32, 32), augment=False, image_interpolation="nearest")[
        0
    ]["image"]
    assert torch.equal(plain[0][0][0], unaugmented)


# --- evaluation protocol ---------------------------------------------------------------------


def test_largest_component_post_processing_removes_a_stray_blob_and_changes_95hd():
    truth = np.zeros((16, 16, 16), dtype=np.uint8)
    truth[2:7, 2:7, 2:7] = 1
    pred = truth.copy()
    pred[12:15, 12:15, 12:15] = 1  # a stray component far from the atrium
    cleaned = postprocess_labels(pred, "largest-component", 2)
    assert cleaned.sum() == truth.sum() and np.array_equal(cleaned, truth)
    assert np.array_equal(postprocess_labels(pred, "none", 2), pred)
    before, after = case_metrics(pred, truth, 2)[1], case_metrics(cleaned, truth, 2)[1]
    assert before["hd95"] > 1.0 and after["hd95"] == 0.0 and after["dice"] == 1.0 > before["dice"]


def test_postprocessing_runs_the_runs_ops_and_keeps_the_references_labels(monkeypatch):
    generator = np.random.default_rng(0)
    pred = generator.choice(3, (6, 12, 12), p=[0.85, 0.1, 0.05]).astype(np.uint8)  # sparse classes: many components
    expected = reference.largest_component(torch.from_numpy(pred)[None], 3)[0].numpy()
    assert not np.array_equal(expected, pred)
    assert np.array_equal(postprocess_labels(pred, "largest-component", 3, ops="reference"), expected)

    def oracle(*args, **kwargs):
        raise AssertionError("evaluation with ops = 'mper' called mper.reference")

    monkeypatch.setattr(reference, "largest_component", oracle)
    assert np.array_equal(postprocess_labels(pred, "largest-component", 3), expected)
    assert np.array_equal(postprocess_labels(pred, "largest-component", 3, ops="mper"), expected)


def test_an_empty_prediction_scores_zero_or_undefined():
    truth = np.zeros((6, 6), dtype=np.uint8)
    truth[1:3, 1:3], truth[4:6, 4:6] = 1, 2
    pred = np.where(truth == 1, 1, 0).astype(np.uint8)  # class 2 predicted nowhere
    zero = score_case(pred, truth, 3, "zero")
    assert zero[2] == {"dice": 0.0, "jaccard": 0.0, "hd95": 0.0, "asd": 0.0}
    assert zero[1]["dice"] == 1.0
    undefined = score_case(pred, truth, 3, "undefined")
    assert undefined[2]["dice"] == 0.0 and math.isnan(undefined[2]["hd95"])
    with pytest.raises(ValueError, match="eval.empty_prediction"):
        score_case(pred, truth, 3, "skip")


@pytest.mark.parametrize("rule", ["zero", "undefined"])
def test_a_class_absent_from_prediction_and_truth_scores_as_a_right_answer(rule):
    # a test case without the tumour, rightly predicted without it, is no missed structure
    truth = np.zeros((6, 6), dtype=np.uint8)
    truth[1:3, 1:3] = 1
    scores = score_case(truth.copy(), truth, 3, rule)
    assert scores[2] == {"dice": 1.0, "jaccard": 1.0, "hd95": 0.0, "asd": 0.0}
    assert summarize({"a": scores})["predicted_nowhere"]["results"] == 0
