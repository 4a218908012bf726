"""Self-training: Mean Teacher with bidirectional copy-paste and the prototype head.

Each batch holds labeled ``a``, ``b`` and unlabeled ``ua``, ``ub`` (equal halves). The
teacher's pseudo labels of ``ua``, ``ub`` complete the mixed labels ``Y^m`` of the two
copy-paste directions

    labeled surround:    a M + ua (1 - M),    label  y_a M + pl_ua (1 - M)
    unlabeled surround:  ub M + b (1 - M),    label  pl_ub M + y_b (1 - M)

The student sees both directions, in one forward or in one forward each
(``selftrain.forward_passes``), in the order ``selftrain.forward_order``. For each
direction the fused op reads ``feat`` once for the prototype logits, their argmax
assignment and InfoNCE (:class:`~mper.nn.PrototypeHead`), and the bank takes its gated
EMA step(s) (``prototypes.update_steps``): region-wise steps move the bank before the next
direction is classified. The loss is Eq. 6 over both directions; then the teacher takes
its EMA step. docs/method.md ("Training") describes every setting.

Each iteration also feeds :class:`~mper.train.diagnostics.SelfTrainingMonitor` (pseudo
labels against the unlabeled images' own labels, the confidence gate, the bank update),
and with ``selftrain.keep_better_stage`` self-training has to beat the pre-trained
network's validation Dice before ``best.pt`` holds one of its own networks.

The parts of an iteration take what they use (the networks, the head, the monitor, the
settings' sections); only the stage's entry points (:func:`begin_selftrain`,
:func:`selftrain_step`, :func:`mixed_batch`, :func:`run_selftrain`) take the
:class:`~mper.train.loop.Trainer` and hand its parts down.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.profiler import record_function
from tqdm import tqdm

from mper.losses import DiceOptions, copy_paste_loss, mper_objective, ramp_weight
from mper.nets import SegmentationOutput
from mper.nn import PrototypeHead

from .checkpoint import PRETRAIN_CHECKPOINT, load_checkpoint
from .compiled import StepCompiler
from .config import with_prototypes
from .diagnostics import SelfTrainingMonitor, TrainingRecord
from .distributed import from_main_process, is_main_process
from .loaders import prototype_init_batches, stage_loader
from .loop import Scalar, Trainer
from .mixing import box_mask, copy_paste
from .prototypes import confidence_gate
from .teacher import confidence, create_teacher, ema_update_, pseudo_labels

if TYPE_CHECKING:
    from .config import PrototypeConfig, SelfTrainConfig, TrainConfig

log = logging.getLogger(__name__)

#: The mixed-precision context of the forwards, entered anew for each
#: (:meth:`Trainer.autocast <mper.train.loop.Trainer.autocast>`; ``contextlib.nullcontext`` for none).
Precision = Callable[[], contextlib.AbstractContextManager]

#: The profiler ranges of a self-training iteration (`benchmarks/train_step.py` sums them);
#: "mixing" holds "teacher" and "pseudo_labels", "student" the linear classifier's loss,
#: "head" the prototype classifier's loss, "backward" the head's backward too.
PHASES = {
    "mixing": "mper/mixing",
    "teacher": "mper/teacher_forward",
    "pseudo_labels": "mper/pseudo_labels",
    "student": "mper/student_forward",
    "head": "mper/prototype_head",
    "bank_update": "mper/bank_update",
    "backward": "mper/backward_and_optimizer",
    "teacher_ema": "mper/teacher_ema",
}


def begin_selftrain(trainer: Trainer) -> None:
    """Start self-training from the best pre-trained weights.

    Copies the student into the teacher, initialises the prototype head's bank by
    k-means on labeled images' features, takes over the
    pre-training optimizer state when ``optim.carry_over`` says so, and saves ``last.pt``
    so that an interruption from here on resumes in self-training. With
    ``selftrain.keep_better_stage`` the pre-trained network is the best so far: it is
    written to ``best.pt`` with its validation Dice as the score to beat.
    """
    config = trainer.config
    pretrained = from_main_process(lambda: load_checkpoint(trainer.run_dir / PRETRAIN_CHECKPOINT))
    trainer.student.load_state_dict(pretrained["student"])
    trainer.teacher = create_teacher(trainer.student, config.selftrain.teacher_mode)
    trainer.head = trainer.new_head()
    if with_prototypes(config):
        batches = tqdm(
            prototype_init_batches(config, trainer.device),
            desc="prototype init",
            unit="batch",
            disable=not is_main_process(),
        )
        trainer.head.initialize(
            eval_features(trainer.student, batches, trainer.device),
            torch.Generator().manual_seed(config.seed),
            method=config.prototypes.kmeans,
            max_voxels=config.prototypes.kmeans_max_voxels,
            iterations=config.prototypes.kmeans_iterations,
        )
    trainer.begin_stage("selftrain")
    if config.optim.carry_over:
        trainer.optimizer.load_state_dict(pretrained["optimizer"])
    if config.selftrain.keep_better_stage:
        trainer.progress.best_score = pretrained["progress"]["best_score"]
        trainer.save_best(selected_stage="pretrain")
    trainer.save_last()


def eval_features(
    net: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(feat, label)`` of each ``(image, label)`` batch: ``net``'s features in eval mode,
    without gradient (``net`` goes back to the mode it was in)."""
    was_training = net.training
    net.eval()
    try:
        for image, label in batches:
            with torch.no_grad():
                yield net(image.to(device)).feat, label
    finally:
        net.train(was_training)


@dataclass
class MixedImages:
    """One copy-paste direction: mixed images and what their loss and the bank update need.

    ``surround_label`` / ``box_label`` are the full label maps (label or pseudo label)
    of the images the surround (``M == 1``) and the box come from; ``labeled_region`` is
    1 where a voxel came from a labeled image; ``teacher_confidence`` is the teacher's
    confidence on the voxels that came from an unlabeled image (1 elsewhere);
    ``surround_weight`` / ``box_weight`` weight the two regions' loss terms.
    """

    images: torch.Tensor
    surround_label: torch.Tensor
    box_label: torch.Tensor
    mix_mask: torch.Tensor
    labeled_region: torch.Tensor
    teacher_confidence: torch.Tensor
    surround_weight: float
    box_weight: float

    @property
    def label(self) -> torch.Tensor:
        """The mixed label ``Y^m``."""
        return copy_paste(self.surround_label, self.box_label, self.mix_mask)

    def loss(self, logits: torch.Tensor, scale: float, dice: DiceOptions) -> torch.Tensor:
        """:func:`~mper.losses.copy_paste_loss` of ``logits`` for these images."""
        return copy_paste_loss(
            logits,
            self.surround_label,
            self.box_label,
            self.mix_mask,
            self.surround_weight,
            self.box_weight,
            scale,
            dice,
        )


def teacher_probabilities(
    teacher: nn.Module, unlabeled: torch.Tensor, forward_passes: int, precision: Precision
) -> torch.Tensor:
    """The teacher's softmax on the unlabeled images: one forward, or one per half when
    ``forward_passes`` (``selftrain.forward_passes``) is 2, each half with its own batch
    statistics."""
    halves = unlabeled.chunk(forward_passes)
    with torch.no_grad(), precision():
        logits = torch.cat([teacher(half).pred.float() for half in halves])
    return torch.softmax(logits, dim=1)


def mix_bidirectional(
    images: torch.Tensor,
    labels: torch.Tensor,
    pseudo: torch.Tensor,
    certainty: torch.Tensor,
    mask: torch.Tensor,
    selftrain: SelfTrainConfig,
) -> list[MixedImages]:
    """Both copy-paste directions of a batch, in ``selftrain.forward_order``.

    ``images`` ``(B, channels, *S)``: ``a``, ``b`` (the labeled half, labels ``labels[:B/2]``)
    then ``ua``, ``ub`` (the unlabeled half, with the teacher's ``pseudo`` labels and
    ``certainty``, ``(B/2, *S)`` each); ``mask``: the box ``M``.
    """
    labeled_count = len(images) // 2  # this process's share: as many labeled as unlabeled images
    half = labeled_count // 2
    image_a, image_b, unlabeled = images[:half], images[half:labeled_count], images[labeled_count:]
    label_a, label_b = labels[:half], labels[half:labeled_count]
    certain = torch.ones_like(certainty[:half])
    unlabeled_weight = selftrain.unlabeled_weight
    labeled_surround = MixedImages(
        images=copy_paste(image_a, unlabeled[:half], mask),
        surround_label=label_a,
        box_label=pseudo[:half],
        mix_mask=mask,
        labeled_region=mask,
        teacher_confidence=copy_paste(certain, certainty[:half], mask),
        surround_weight=1.0,
        box_weight=unlabeled_weight,
    )
    unlabeled_surround = MixedImages(
        images=copy_paste(unlabeled[half:], image_b, mask),
        surround_label=pseudo[half:],
        box_label=label_b,
        mix_mask=mask,
        labeled_region=1 - mask,
        teacher_confidence=copy_paste(certainty[half:], certain, mask),
        surround_weight=unlabeled_weight,
        box_weight=1.0,
    )
    if selftrain.forward_order == "labeled-surround-first":
        return [labeled_surround, unlabeled_surround]
    return [unlabeled_surround, labeled_surround]


def mixed_batch(trainer: Trainer, batch: dict[str, Any]) -> list[MixedImages]:
    """Pseudo-label the unlabeled half of ``batch`` with the trainer's teacher (feeding its
    monitor), draw the box from its mask generator and build both directions
    (:func:`mix_bidirectional`)."""
    config = trainer.config
    images = trainer.images_on_device(batch["image"])
    labels = batch["label"].to(trainer.device, non_blocking=True)
    labeled_count = len(images) // 2

    with record_function(PHASES["teacher"]):
        teacher_probs = trainer.compiled(teacher_probabilities)(
            trainer.teacher_network(), images[labeled_count:], config.selftrain.forward_passes, trainer.autocast
        )
    with record_function(PHASES["pseudo_labels"]):
        pseudo = pseudo_labels(teacher_probs, trainer.ops, config.selftrain.pseudo_label_threshold)
        if config.eval.pseudo_label_dice:
            trainer.monitor.observe_pseudo_labels(pseudo, labels[labeled_count:])
    certainty = confidence(teacher_probs)
    mask = box_mask(images.shape[2:], config.pretrain.box_fraction, trainer.mix_generator, trainer.device)
    return mix_bidirectional(images, labels, pseudo, certainty, mask, config.selftrain)


def student_outputs(
    network: nn.Module, directions: list[MixedImages], forward_passes: int, precision: Precision
) -> list[SegmentationOutput]:
    """The student's outputs per direction: one forward of all images, split, or one
    forward per direction (``forward_passes``, ``selftrain.forward_passes``)."""
    with precision():
        if forward_passes == 2:
            return [network(direction.images) for direction in directions]
        output = network(torch.cat([direction.images for direction in directions]))
    sizes = [len(direction.images) for direction in directions]
    return [SegmentationOutput(*parts) for parts in zip(*(tensor.split(sizes) for tensor in output))]


def student_step(
    network: nn.Module,
    directions: list[MixedImages],
    selftrain: SelfTrainConfig,
    dice: DiceOptions,
    precision: Precision,
) -> tuple[list[SegmentationOutput], torch.Tensor]:
    """The student's outputs per direction and the linear classifier's loss ``L_cons^l``
    over both directions."""
    outputs = student_outputs(network, directions, selftrain.forward_passes, precision)
    linear = torch.stack(
        [
            direction.loss(output.pred, selftrain.consistency_scale, dice)
            for direction, output in zip(directions, outputs)
        ]
    ).sum()
    return outputs, linear


def update_bank(
    head: PrototypeHead,
    monitor: SelfTrainingMonitor,
    prototypes: PrototypeConfig,
    direction: MixedImages,
    feat: torch.Tensor,
    proto_logits: torch.Tensor,
    assign: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The gated voxels of one direction: per-prototype sums and counts of their ``feat``.

    With ``region-wise`` steps (``prototypes.update_steps``) they have been applied to
    ``head``'s bank already, as one EMA step from the direction's unlabeled region followed
    by one from its labeled region; with ``combined`` steps the caller applies the sums of
    all directions at once. ``monitor`` observes the gate.
    """
    label = direction.label
    gate = confidence_gate(
        proto_logits.argmax(dim=1),
        label,
        direction.labeled_region,
        direction.teacher_confidence,
        prototypes.confidence_threshold,
        prototypes.update_source,
        prototypes.update_background,
    )
    monitor.observe_mix(direction.labeled_region, direction.teacher_confidence > prototypes.confidence_threshold, gate)
    if prototypes.update_steps == "combined":
        return head.accumulate(feat, label, assign, gate)
    labeled = direction.labeled_region.bool()
    steps = [head.accumulate(feat, label, assign, gate & region) for region in (~labeled, labeled)]
    for sums, counts in steps:  # copies: under torch.distributed apply_update() reduces them in place
        head.apply_update(sums.clone(), counts.clone(), prototypes.momentum)
    return steps[0][0] + steps[1][0], steps[0][1] + steps[1][1]


def head_step(
    head: PrototypeHead,
    direction: MixedImages,
    feat: torch.Tensor,
    bank: torch.Tensor,
    scale: float,
    dice: DiceOptions,
    precision: Precision,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``head`` on one direction's features against ``bank`` (a copy of the bank as it is
    now): prototype logits, assignment, InfoNCE (float32) and the prototype classifier's
    loss term of ``L_cons^p`` (``scale``: ``selftrain.consistency_scale``)."""
    with precision():
        proto_logits, assign, contrastive = head.forward_with_contrastive(feat, bank)
    loss = direction.loss(proto_logits, scale, dice)
    return proto_logits, assign, contrastive.float(), loss


def prototype_terms(
    head: PrototypeHead,
    monitor: SelfTrainingMonitor,
    config: TrainConfig,
    directions: list[MixedImages],
    outputs: list[SegmentationOutput],
    compiled: StepCompiler,
    precision: Precision,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``L_cons^p``, ``L_cont`` and the voxels each prototype received in the bank update
    ``(C*K,)`` over both directions (this process's share under torch.distributed), the
    bank updated as ``prototypes.update_steps`` says; the head steps go through ``compiled``."""
    prototypes, scale, dice = config.prototypes, config.selftrain.consistency_scale, config.losses.options()
    prototype = contrastive = torch.zeros((), device=outputs[0].feat.device)
    gathered = []
    for direction, output in zip(directions, outputs):
        with record_function(PHASES["head"]):
            proto_logits, assign, direction_nce, direction_loss = compiled(head_step)(
                head, direction, output.feat, head.bank(), scale, dice, precision
            )
        prototype = prototype + direction_loss
        contrastive = contrastive + direction_nce
        with record_function(PHASES["bank_update"]):
            gathered.append(update_bank(head, monitor, prototypes, direction, output.feat, proto_logits, assign))
    if config.selftrain.contrastive_reduction == "mean":
        contrastive = contrastive / len(directions)
    sums, counts = (torch.stack(parts).sum(dim=0) for parts in zip(*gathered))
    if prototypes.update_steps == "combined":
        with record_function(PHASES["bank_update"]):  # a copy: under torch.distributed it sums in place
            head.apply_update(sums, counts.clone(), prototypes.momentum)
    return prototype, contrastive, counts


def selftrain_step(trainer: Trainer, batch: dict[str, Any], iteration: int) -> dict[str, Scalar]:
    """One self-training iteration; returns the losses (left on the device), lambda and
    update statistics."""
    config = trainer.config
    selftrain = config.selftrain
    with record_function(PHASES["mixing"]):
        directions = mixed_batch(trainer, batch)
    with record_function(PHASES["student"]):
        outputs, linear = trainer.compiled(student_step)(
            trainer.network, directions, selftrain, config.losses.options(), trainer.autocast
        )
    if with_prototypes(config):
        prototype, contrastive, counts = prototype_terms(
            trainer.prototype_head(), trainer.monitor, config, directions, outputs, trainer.compiled, trainer.autocast
        )
        ramp = ramp_weight(iteration, selftrain.ramp_weight, selftrain.rampup_epochs, selftrain.ramp_epoch_length)
        voxels = counts.sum()
        usage = trainer.prototype_usage().add(counts, iteration + 1, selftrain.iterations)
    else:
        for direction in directions:
            trainer.monitor.observe_mix(
                direction.labeled_region, direction.teacher_confidence > config.prototypes.confidence_threshold
            )
        prototype = contrastive = voxels = torch.zeros((), device=trainer.device)
        ramp, usage = 0.0, {}
    loss = mper_objective(linear, prototype, contrastive, ramp, selftrain.contrastive_weight)
    with record_function(PHASES["backward"]):
        trainer.optimize(loss)
    with record_function(PHASES["teacher_ema"]):
        decay = ema_update_(
            trainer.teacher_network(),
            trainer.student,
            iteration,
            selftrain.ema_decay,
            selftrain.ema_schedule,
            selftrain.ema_scope,
        )
    return {
        "loss": loss.detach(),
        "loss_linear": linear.detach(),
        "loss_prototype": prototype.detach(),
        "loss_contrastive": contrastive.detach(),
        "lambda": ramp,
        "teacher_decay": decay,
        "bank_update_voxels": voxels.detach(),
        **usage,
    }


def run_selftrain(trainer: Trainer) -> None:
    """Self-train up to ``selftrain.iterations``; best weights in best.pt."""
    trainer.student.train()
    loader = stage_loader(trainer.config, with_unlabeled=True, device=trainer.device)
    trainer.run_stage(
        trainer.config.selftrain.iterations,
        lambda batch, iteration: selftrain_step(trainer, batch, iteration),
        loader,
    )
    report_stage_selection(trainer.record, trainer.config.selftrain.keep_better_stage)


def report_stage_selection(record: TrainingRecord, keep_better_stage: bool) -> None:
    """Say in the log whether self-training beat pre-training on the validation cases
    (``record``), and which network ``best.pt`` holds (``selftrain.keep_better_stage``)."""
    pretrain, selftrain = record.best("pretrain"), record.best("selftrain")
    if pretrain is None or selftrain is None:
        return
    comparison = (
        f"best self-training validation Dice {selftrain['val_dice']:.4f} (iteration "
        f"{selftrain['iteration']}) against pre-training's {pretrain['val_dice']:.4f} "
        f"(iteration {pretrain['iteration']})"
    )
    if record.selftrain_beat_pretrain():
        log.info("self-training beat pre-training: %s; best.pt holds the self-trained network", comparison)
    elif keep_better_stage:
        log.warning(
            "self-training never beat pre-training: %s; best.pt holds the pre-trained network "
            "(selftrain.keep_better_stage)",
            comparison,
        )
    else:
        log.warning(
            "self-training never beat pre-training: %s; best.pt holds self-training's best network "
            "nonetheless (selftrain.keep_better_stage = false)",
            comparison,
        )
