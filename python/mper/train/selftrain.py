"""Self-training: Mean Teacher with bidirectional copy-paste and the prototype head.

Each batch holds labeled ``a``, ``b`` and unlabeled ``ua``, ``ub`` (equal halves). The
teacher's pseudo labels of ``ua``, ``ub`` complete the mixed labels ``Y^m`` of

    input1 = a M + ua (1 - M),    label1 = y_a M + pl_ua (1 - M)
    input2 = ub M + b (1 - M),    label2 = pl_ub M + y_b (1 - M)

and one student forward of both gives the linear logits, ``feat`` and ``emb``. The fused
op reads ``feat`` once for the prototype logits, their argmax assignment and InfoNCE.
The loss is Eq. 6; then the bank takes its gated EMA update (SPEC 4) and the teacher
its EMA step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from mper.losses import copy_paste_loss, mper_objective, ramp_weight

from .checkpoint import load_checkpoint
from .loaders import labeled_images, stage_loader
from .loop import PRETRAIN_CHECKPOINT, Trainer
from .mixing import box_mask, copy_paste
from .prototypes import confidence_gate
from .teacher import confidence, create_teacher, ema_update_, pseudo_labels


def bidirectional_loss(
    logits: torch.Tensor, mixed_label: torch.Tensor, mix_mask: torch.Tensor, unlabeled_weight: float, scale: float
) -> torch.Tensor:
    """:func:`~mper.losses.copy_paste_loss` of both mixed halves: in the first half the
    labeled image surrounds the box (weight 1 outside, u inside), in the second the
    unlabeled one does (u outside, 1 inside)."""
    half = logits.shape[0] // 2
    first = copy_paste_loss(logits[:half], mixed_label[:half], mix_mask, 1.0, unlabeled_weight, scale)
    second = copy_paste_loss(logits[half:], mixed_label[half:], mix_mask, unlabeled_weight, 1.0, scale)
    return first + second


def begin_selftrain(trainer: Trainer) -> None:
    """Start self-training from the best pre-trained weights (SPEC 5).

    Resets the embedding head to the identity, copies the student into the teacher,
    initialises the bank by k-means on the labeled images' features, and saves
    ``last.pt`` so that an interruption from here on resumes in self-training.
    """
    config = trainer.config
    pretrained = load_checkpoint(trainer.run_dir / PRETRAIN_CHECKPOINT, map_location=trainer.device)
    trainer.student.load_state_dict(pretrained["student"])
    trainer.student.reset_embedding_to_identity()
    trainer.teacher = create_teacher(trainer.student)
    trainer.bank = trainer.new_bank()
    trainer.bank.initialize(
        trainer.student,
        tqdm(labeled_images(config, config.data.labeled_batch_size), desc="prototype init", unit="batch"),
        torch.Generator().manual_seed(config.seed),
        max_voxels=config.prototypes.kmeans_max_voxels,
        kmeans_iterations=config.prototypes.kmeans_iterations,
    )
    trainer.begin_stage("selftrain")
    trainer.save_last()


@dataclass
class MixedBatch:
    """The two copy-paste images of a batch, stacked (input1 first, then input2).

    ``label`` is ``Y^m``; ``labeled_region`` is 1 where a voxel came from a labeled
    image; ``teacher_confidence`` is the teacher's confidence on the voxels that came
    from an unlabeled image (1 elsewhere); ``mix_mask`` is the ``M`` both share.
    """

    images: torch.Tensor
    label: torch.Tensor
    labeled_region: torch.Tensor
    teacher_confidence: torch.Tensor
    mix_mask: torch.Tensor


def mix_bidirectional(trainer: Trainer, batch: dict[str, Any]) -> MixedBatch:
    """Pseudo-label the unlabeled half of ``batch`` with the teacher and build both mixes."""
    config = trainer.config
    images = batch["image"].to(trainer.device, non_blocking=True)
    labels = batch["label"].to(trainer.device, non_blocking=True)
    labeled_count = config.data.labeled_batch_size
    half = labeled_count // 2
    image_a, image_b, unlabeled = images[:half], images[half:labeled_count], images[labeled_count:]
    label_a, label_b = labels[:half], labels[half:labeled_count]

    with torch.no_grad(), trainer.autocast():
        teacher_probs = torch.softmax(trainer.teacher(unlabeled).pred.float(), dim=1)
    pseudo = pseudo_labels(teacher_probs, config.selftrain.pseudo_label_threshold)
    certainty = confidence(teacher_probs)
    certain = torch.ones_like(certainty[:half])

    mask = box_mask(images.shape[2:], config.pretrain.box_fraction, trainer.mix_generator, trainer.device)
    return MixedBatch(
        images=torch.cat([copy_paste(image_a, unlabeled[:half], mask), copy_paste(unlabeled[half:], image_b, mask)]),
        label=torch.cat([copy_paste(label_a, pseudo[:half], mask), copy_paste(pseudo[half:], label_b, mask)]),
        labeled_region=torch.cat([mask.expand_as(label_a), (1 - mask).expand_as(label_b)]),
        teacher_confidence=torch.cat([copy_paste(certain, certainty[:half], mask),
                                      copy_paste(certainty[half:], certain, mask)]),
        mix_mask=mask,
    )


def selftrain_step(trainer: Trainer, batch: dict[str, Any], iteration: int) -> dict[str, float]:
    """One self-training iteration; returns the losses, lambda and update statistics."""
    config, bank = trainer.config, trainer.bank
    selftrain, prototypes = config.selftrain, config.prototypes
    mixed = mix_bidirectional(trainer, batch)
    with trainer.autocast():
        output = trainer.student(mixed.images)
        proto_logits, assign, contrastive = trainer.ops.proto_classify_infonce(
            output.feat, bank.prototypes, config.num_classes, prototypes.tau, prototypes.nce_tau,
            prototypes.contrastive_ignore_row,
        )
    targets = (mixed.label, mixed.mix_mask, selftrain.unlabeled_weight, selftrain.consistency_scale)
    linear = bidirectional_loss(output.pred, *targets)
    prototype = bidirectional_loss(proto_logits, *targets)
    ramp = ramp_weight(iteration, selftrain.ramp_weight, selftrain.rampup_epochs, selftrain.ramp_epoch_length)
    loss = mper_objective(linear, prototype, contrastive.float(), ramp, selftrain.contrastive_weight)
    trainer.optimize(loss)

    gate = confidence_gate(
        proto_logits.argmax(dim=1), mixed.label, mixed.labeled_region, mixed.teacher_confidence,
        prototypes.confidence_threshold, prototypes.update_source, prototypes.update_background,
    )
    updated = bank.update(trainer.ops, output.emb, mixed.label, assign, gate, prototypes.momentum)
    decay = ema_update_(trainer.teacher, trainer.student, iteration, selftrain.ema_decay)
    # one device-to-host copy for all the logged values
    loss, linear, prototype, contrastive, voxels = torch.stack(
        [loss.detach(), linear.detach(), prototype.detach(), contrastive.detach().float(), updated.sum()]
    ).tolist()
    return {
        "loss": loss,
        "loss_linear": linear,
        "loss_prototype": prototype,
        "loss_contrastive": contrastive,
        "lambda": ramp,
        "teacher_decay": decay,
        "bank_update_voxels": voxels,
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
