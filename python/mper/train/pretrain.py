"""Supervised training on labeled images: copy-paste pre-training and the baseline.

Pre-training (docs/method.md, "Training") splits the labeled batch into two halves
``a`` and ``b`` and trains on ``a M + b (1 - M)`` against ``y_a M + y_b (1 - M)`` with
``loss_scale * (CE + Dice)``: per region (each against its image's label, both
weighted 1) or over the whole image (``pretrain.loss``). The labeled-only baseline (the
plain U-Net / V-Net rows of the paper's tables) trains on the labeled images as they
are, with the whole-image loss, for as many iterations as pre-training and self-training
together.
"""

from __future__ import annotations

from typing import Any

import torch

from mper.losses import copy_paste_loss, segmentation_loss

from .config import stage_iterations
from .loaders import stage_loader
from .loop import Scalar, Trainer
from .mixing import box_mask, copy_paste


def supervised_step(trainer: Trainer, batch: dict[str, Any], mix: bool) -> dict[str, Scalar]:
    """One SGD step on a labeled batch, copy-pasting its two halves when ``mix``."""
    images = trainer.images_on_device(batch["image"])
    labels = batch["label"].to(trainer.device, non_blocking=True)
    mix_mask = None
    if mix:
        mix_mask = box_mask(
            images.shape[2:], trainer.config.pretrain.box_fraction, trainer.mix_generator, trainer.device
        )
    loss = trainer.compiled(supervised_loss)(trainer, images, labels, mix_mask)
    trainer.optimize(loss)
    return {"loss": loss.detach()}


def supervised_loss(
    trainer: Trainer, images: torch.Tensor, labels: torch.Tensor, mix_mask: torch.Tensor | None
) -> torch.Tensor:
    """The student's loss on labeled images, their two halves copy-pasted with
    ``mix_mask`` (``None``: as they are)."""
    pretrain, dice = trainer.config.pretrain, trainer.config.losses.options()
    half = images.shape[0] // 2
    if mix_mask is not None:
        images = copy_paste(images[:half], images[half:], mix_mask)
    with trainer.autocast():
        logits = trainer.network(images).pred
    if mix_mask is None:
        return segmentation_loss(logits, labels, pretrain.loss_scale, dice)
    if pretrain.loss == "whole-image":
        mixed_label = copy_paste(labels[:half], labels[half:], mix_mask)
        return segmentation_loss(logits, mixed_label, pretrain.loss_scale, dice)
    return copy_paste_loss(logits, labels[:half], labels[half:], mix_mask, scale=pretrain.loss_scale, dice=dice)


def _run_supervised(trainer: Trainer, iterations: int, mix: bool) -> None:
    trainer.student.train()
    loader = stage_loader(trainer.config, with_unlabeled=False, device=trainer.device)
    trainer.run_stage(iterations, lambda batch, _: supervised_step(trainer, batch, mix), loader)


def run_pretrain(trainer: Trainer) -> None:
    """Copy-paste pre-training up to ``pretrain.iterations``; best weights in pretrain_best.pt."""
    _run_supervised(trainer, trainer.config.pretrain.iterations, mix=True)


def run_baseline(trainer: Trainer) -> None:
    """Labeled-only supervised training for pre-training + self-training iterations."""
    _run_supervised(trainer, stage_iterations(trainer.config, "baseline"), mix=False)
