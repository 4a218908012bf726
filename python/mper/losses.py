"""Training losses: the copy-paste segmentation loss, the ramp lambda(t) and Eq. 6.

A copy-paste image is made of two regions (see :mod:`mper.train.mixing`): the voxels
where the mix mask ``M`` is 1 come from the first image (its surround), the pasted box
(``M == 0``) from the second. Following BCP, each region gets its own cross-entropy and
masked soft Dice against the label of the image it came from, and the region terms are
weighted: 1 for a region taken from a labeled image, ``u`` (0.5) for one taken from an
unlabeled image, whose label is a pseudo label.

The consistency losses of Eq. 4 (``L_cons^l``, ``L_cons^p``) are this loss applied to
the linear logits and to the prototype logits; the contrastive loss of Eq. 5 comes with
the prototype classifier from the ops. Two forms of the soft Dice are offered (see
:class:`DiceOptions` and docs/method.md, "Losses").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mper.nn.parallel import sum_over_processes

#: Keeps a region's mean finite when the region is empty (BCP uses the same constant).
REGION_EPS = 1e-16
#: Smoothing of the soft Dice ratio; small enough that a present class is unaffected.
DICE_SMOOTH = 1e-10
#: ``pooled-squared``: one ratio per class over the batch, ``2 sum p y / (sum p^2 + sum y)``
#: (V-Net, BCP's 2D code); ``per-sample-linear``: one ratio per image and class,
#: ``2 sum p y / (sum p + sum y)`` (BCP's 3D code).
DICE_FORMS = ("pooled-squared", "per-sample-linear")
#: Where the background class's Dice term looks: the loss region, or the whole image.
DICE_BACKGROUNDS = ("region", "whole-image")


@dataclass(frozen=True)
class DiceOptions:
    """The form of the soft Dice loss: ``form`` (one of :data:`DICE_FORMS`),
    ``background`` (one of :data:`DICE_BACKGROUNDS`) and the smoothing ``smooth``."""

    form: str = "pooled-squared"
    background: str = "region"
    smooth: float = DICE_SMOOTH

    def __post_init__(self) -> None:
        if self.form not in DICE_FORMS:
            raise ValueError(f"Dice form must be one of {DICE_FORMS}, got {self.form!r}")
        if self.background not in DICE_BACKGROUNDS:
            raise ValueError(f"Dice background must be one of {DICE_BACKGROUNDS}, got {self.background!r}")


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the voxels where ``region`` is 1 (0 for an empty region).

    ``logits``: ``(B, C, *S)``; ``target``: ``(B, *S)`` class indices; ``region``:
    ``(B, *S)`` or broadcastable to it, values in {0, 1}.
    """
    per_voxel = F.cross_entropy(logits.float(), target, reduction="none")
    region = region.to(per_voxel.dtype).expand_as(per_voxel)
    return (per_voxel * region).sum() / (region.sum() + REGION_EPS)


def masked_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, region: torch.Tensor, options: DiceOptions = DiceOptions()
) -> torch.Tensor:
    """Soft Dice loss over all classes (background included), restricted to ``region``.

    With softmax probability ``p_c``, one-hot target ``y_c`` and region ``m``, the ratio
    is ``(2 sum p_c y_c m + s) / (D_c + s)`` with ``D_c = sum p_c^2 m + sum y_c m``
    (``pooled-squared``, sums over the batch) or ``D_c = sum (p_c + y_c) m``
    (``per-sample-linear``, sums over each image); the loss is 1 minus the mean ratio.
    With ``options.background == "whole-image"`` the background term ignores ``m``.
    An empty region costs 0. Under ``torch.distributed`` the ``pooled-squared`` sums
    run over the batches of all processes (:func:`~mper.nn.parallel.sum_over_processes`),
    so that the loss is that of the global batch.
    """
    probs = torch.softmax(logits.float(), dim=1)
    one_hot = F.one_hot(target, probs.shape[1]).movedim(-1, 1).to(probs.dtype)
    region = region.to(probs.dtype).expand_as(target).unsqueeze(1).expand_as(probs)
    if options.background == "whole-image":
        region = torch.cat([torch.ones_like(region[:, :1]), region[:, 1:]], dim=1)
    spatial = list(range(2, probs.ndim))
    if options.form == "pooled-squared":
        reduce_dims = [0] + spatial
        denominator = (probs * probs * region).sum(reduce_dims) + (one_hot * region).sum(reduce_dims)
    else:
        reduce_dims = spatial
        denominator = ((probs + one_hot) * region).sum(reduce_dims)
    intersection = (probs * one_hot * region).sum(reduce_dims)
    if options.form == "pooled-squared":
        intersection, denominator = sum_over_processes(torch.stack([intersection, denominator])).unbind()
    dice = (2 * intersection + options.smooth) / (denominator + options.smooth)
    return (1 - dice).mean()


def copy_paste_loss(
    logits: torch.Tensor,
    surround_label: torch.Tensor,
    box_label: torch.Tensor,
    mix_mask: torch.Tensor,
    surround_weight: float = 1.0,
    box_weight: float = 1.0,
    scale: float = 1.0,
    dice: DiceOptions = DiceOptions(),
) -> torch.Tensor:
    """Region-weighted CE + Dice of a copy-paste image.

    ``scale * sum_r w_r (CE_r + Dice_r)`` over the two regions ``r``: the surround where
    ``mix_mask`` is 1 (weight ``surround_weight``, against ``surround_label``, the label
    map of the image the surround came from) and the pasted box where it is 0
    (``box_weight``, against ``box_label``). Inside its region each label equals the
    mixed label ``Y^m``; outside it only a ``whole-image`` background Dice term reads it.
    ``scale`` is 1 for Eq. 4 as the paper writes it and 0.5 for the ``(CE + Dice) / 2``
    of BCP's code and of pre-training.

    ``logits``: ``(B, C, *S)``; labels: ``(B, *S)`` int64; ``mix_mask``: ``(*S)`` or
    ``(B, *S)``.
    """
    total = logits.new_zeros((), dtype=torch.float32)
    regions = ((mix_mask, surround_label, surround_weight), (1 - mix_mask, box_label, box_weight))
    for region, label, weight in regions:
        region_loss = masked_cross_entropy(logits, label, region) + masked_dice_loss(logits, label, region, dice)
        total = total + weight * region_loss
    return scale * total


def segmentation_loss(
    logits: torch.Tensor, label: torch.Tensor, scale: float = 1.0, dice: DiceOptions = DiceOptions()
) -> torch.Tensor:
    """``scale * (CE + Dice)`` over every voxel of ``logits`` ``(B, C, *S)`` against ``label``."""
    everywhere = torch.ones_like(label, dtype=torch.float32)
    return scale * (masked_cross_entropy(logits, label, everywhere) + masked_dice_loss(logits, label, everywhere, dice))


def ramp_weight(iteration: int, weight: float, rampup_epochs: float, epoch_length: int) -> float:
    """The sigmoid ramp-up ``lambda(t) = w exp(-5 (1 - r)^2)`` of Eq. 6.

    ``r = clip(t_epoch / rampup_epochs, 0, 1)`` with ``t_epoch = iteration // epoch_length``;
    a ramp of 0 epochs is at full weight from the start. No defaults: a training run passes
    ``selftrain.ramp_weight``, ``rampup_epochs`` and ``ramp_epoch_length`` of its preset.
    """
    if rampup_epochs <= 0:
        return float(weight)
    progress = min(max((iteration // epoch_length) / rampup_epochs, 0.0), 1.0)
    return float(weight * math.exp(-5.0 * (1.0 - progress) ** 2))


def mper_objective(
    linear_consistency: torch.Tensor,
    prototype_consistency: torch.Tensor,
    contrastive: torch.Tensor,
    ramp: float,
    contrastive_weight: float,
) -> torch.Tensor:
    """The total loss of Eq. 6: ``L_cons^l + lambda(t) (L_cons^p + gamma L_cont)``."""
    return linear_consistency + ramp * (prototype_consistency + contrastive_weight * contrastive)
