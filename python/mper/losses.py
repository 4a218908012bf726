"""Training losses: the copy-paste segmentation loss, the ramp lambda(t) and Eq. 6.

A copy-paste image is made of two regions (see :mod:`mper.train.mixing`): the voxels
where the mix mask ``M`` is 1 come from the first image, the pasted box (``M == 0``)
from the second. Following BCP, each region gets its own cross-entropy and masked soft
Dice, and the region terms are weighted: 1 for a region taken from a labeled image,
``u`` (0.5) for one taken from an unlabeled image, whose label is a pseudo label.

The consistency losses of Eq. 4 (``L_cons^l``, ``L_cons^p``) are this loss applied to
the linear logits and to the prototype logits against the mixed label ``Y^m``; the
contrastive loss of Eq. 5 comes with the prototype classifier from the ops.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: Keeps a region's mean finite when the region is empty (BCP uses the same constant).
REGION_EPS = 1e-16
#: Smoothing of the soft Dice ratio; small enough that a present class is unaffected.
DICE_SMOOTH = 1e-10


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the voxels where ``region`` is 1 (0 for an empty region).

    ``logits``: ``(B, C, *S)``; ``target``: ``(B, *S)`` class indices; ``region``:
    ``(B, *S)`` or broadcastable to it, values in {0, 1}.
    """
    per_voxel = F.cross_entropy(logits.float(), target, reduction="none")
    region = region.to(per_voxel.dtype).expand_as(per_voxel)
    return (per_voxel * region).sum() / (region.sum() + REGION_EPS)


def masked_dice_loss(logits: torch.Tensor, target: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Soft Dice loss over all classes (background included), restricted to ``region``.

    For class ``c`` with softmax probability ``p_c`` and one-hot target ``y_c``:
    ``1 - (2 sum p_c y_c m + s) / (sum p_c^2 m + sum y_c m + s)``, averaged over the
    classes (the squared-probability form of the V-Net / BCP Dice loss).
    """
    probs = torch.softmax(logits.float(), dim=1)
    one_hot = F.one_hot(target, probs.shape[1]).movedim(-1, 1).to(probs.dtype)
    region = region.to(probs.dtype).expand_as(target).unsqueeze(1)
    reduce_dims = [0] + list(range(2, probs.ndim))
    intersection = (probs * one_hot * region).sum(reduce_dims)
    denominator = (probs * probs * region).sum(reduce_dims) + (one_hot * region).sum(reduce_dims)
    dice = (2 * intersection + DICE_SMOOTH) / (denominator + DICE_SMOOTH)
    return (1 - dice).mean()


def copy_paste_loss(
    logits: torch.Tensor,
    mixed_label: torch.Tensor,
    mix_mask: torch.Tensor,
    mask_weight: float = 1.0,
    box_weight: float = 1.0,
    scale: float = 1.0,
) -> torch.Tensor:
    """Region-weighted CE + Dice of a copy-paste image against its mixed label ``Y^m``.

    ``scale * sum_r w_r (CE_r + Dice_r)`` over the two regions ``r``: where ``mix_mask``
    is 1 (weight ``mask_weight``) and the pasted box where it is 0 (``box_weight``).
    ``scale`` is 1 for Eq. 4 as the paper writes it and 0.5 for the ``(CE + Dice) / 2``
    of BCP's code and of pre-training.

    ``logits``: ``(B, C, *S)``; ``mixed_label``: ``(B, *S)`` int64; ``mix_mask``:
    ``(*S)`` or ``(B, *S)``.
    """
    total = logits.new_zeros((), dtype=torch.float32)
    for region, weight in ((mix_mask, mask_weight), (1 - mix_mask, box_weight)):
        region_loss = masked_cross_entropy(logits, mixed_label, region)
        total = total + weight * (region_loss + masked_dice_loss(logits, mixed_label, region))
    return scale * total


def ramp_weight(iteration: int, weight: float, rampup_epochs: float, epoch_length: int = 150) -> float:
    """The sigmoid ramp-up ``lambda(t) = w exp(-5 (1 - r)^2)`` of Eq. 6.

    ``r = clip(t_epoch / rampup_epochs, 0, 1)`` with ``t_epoch = iteration // epoch_length``;
    a ramp of 0 epochs is at full weight from the start.
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
