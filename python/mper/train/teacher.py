"""The Mean Teacher: an EMA copy of the student, its pseudo labels and its confidence.

The teacher's weights follow ``theta_t <- d theta_t + (1 - d) theta_s`` with
``d = min(1 - 1/(step + 1), eta)`` (BCP's warm-up: early on the teacher tracks the
student closely). Batch-norm running statistics are averaged the same way, so the
teacher can predict in eval mode.

Pseudo labels (SPEC 5) are the teacher's argmax (for a two-class task with a
foreground threshold: ``p_1 >= threshold``), keeping for each foreground class only its
largest connected component (full connectivity: 8 neighbours in 2D, 26 in 3D).
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from scipy import ndimage
from torch import nn


def create_teacher(student: nn.Module) -> nn.Module:
    """A frozen copy of ``student`` in eval mode (no dropout, running BN statistics)."""
    teacher = copy.deepcopy(student)
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher.eval()


def teacher_decay(step: int, eta: float) -> float:
    """``min(1 - 1/(step + 1), eta)``: 0 at step 0, then rising to ``eta``."""
    return min(1.0 - 1.0 / (step + 1), eta)


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, step: int, eta: float) -> float:
    """Move ``teacher`` towards ``student`` in place; returns the decay used.

    Floating-point parameters and buffers are averaged; integer buffers (batch-norm's
    ``num_batches_tracked``) are copied.
    """
    decay = teacher_decay(step, eta)
    student_state = student.state_dict()
    for name, value in teacher.state_dict().items():
        source = student_state[name]
        if value.is_floating_point():
            value.mul_(decay).add_(source.to(value.dtype), alpha=1.0 - decay)
        else:
            value.copy_(source)
    return decay


def largest_components(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Keep only the largest connected component of every foreground class.

    ``labels``: one image's label map (2D or 3D). Voxels of class ``c >= 1`` outside the
    class's largest component become background (0); among equally large components the
    first in scan order is kept.
    """
    structure = ndimage.generate_binary_structure(labels.ndim, labels.ndim)
    cleaned = np.zeros_like(labels)
    for class_index in range(1, num_classes):
        components, count = ndimage.label(labels == class_index, structure=structure)
        if count == 0:
            continue
        sizes = np.bincount(components.ravel())[1:]
        cleaned[components == 1 + int(np.argmax(sizes))] = class_index
    return cleaned


def pseudo_labels(probs: torch.Tensor, foreground_threshold: float | None = None) -> torch.Tensor:
    """Hard pseudo labels ``(B, *S)`` int64 from teacher probabilities ``(B, C, *S)``.

    Without ``foreground_threshold`` (ACDC): argmax over classes. With it (LA, two
    classes): foreground where ``p_1 >= foreground_threshold``. Then each image keeps
    the largest connected component of every foreground class.
    """
    num_classes = probs.shape[1]
    if foreground_threshold is None:
        hard = probs.argmax(dim=1)
    elif num_classes == 2:
        hard = (probs[:, 1] >= foreground_threshold).long()
    else:
        raise ValueError(
            f"a foreground threshold needs two-class probabilities, got {num_classes} classes; "
            "leave pseudo_label_threshold unset to use the argmax"
        )
    cleaned = [largest_components(image, num_classes) for image in hard.cpu().numpy()]
    return torch.from_numpy(np.stack(cleaned)).to(probs.device)


def confidence(probs: torch.Tensor) -> torch.Tensor:
    """The teacher's confidence per voxel: its highest class probability, ``(B, *S)``."""
    return probs.max(dim=1).values
