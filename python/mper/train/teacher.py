"""The Mean Teacher: an EMA copy of the student, its pseudo labels and its confidence.

The teacher's weights follow ``theta_t <- d theta_t + (1 - d) theta_s`` after every
student step, with a ``constant`` decay ``d = eta`` (the authors' code) or the Mean
Teacher ``warmup`` ``d = min(1 - 1/(step + 1), eta)`` (early on the teacher tracks the
student closely). The EMA covers the ``parameters`` only, or the whole ``state``
(batch-norm running statistics averaged too, counters copied), which matters when the
teacher predicts in eval mode. The teacher predicts in ``train`` mode (dropout on,
batch statistics, as the authors' code does) or ``eval`` mode.

Pseudo labels (docs/method.md, "Training") are the teacher's argmax (for a two-class
task with a foreground threshold: ``p_1 >= threshold``), keeping for each foreground
class only its largest connected component (full connectivity: 8 neighbours in 2D, 26
in 3D).
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from scipy import ndimage
from torch import nn


#: The teacher predicts with dropout and batch statistics (``train``) or without (``eval``).
TEACHER_MODES = ("train", "eval")
EMA_SCHEDULES = ("constant", "warmup")
EMA_SCOPES = ("parameters", "state")


def create_teacher(student: nn.Module, mode: str = "eval") -> nn.Module:
    """A frozen copy of ``student`` in ``mode`` (one of :data:`TEACHER_MODES`)."""
    if mode not in TEACHER_MODES:
        raise ValueError(f"teacher mode must be one of {TEACHER_MODES}, got {mode!r}")
    teacher = copy.deepcopy(student)
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher.train(mode == "train")


def teacher_decay(step: int, eta: float, schedule: str = "warmup") -> float:
    """The EMA decay at ``step``: ``eta`` (``constant``) or ``min(1 - 1/(step + 1), eta)``
    (``warmup``: 0 at step 0, then rising to ``eta``)."""
    if schedule not in EMA_SCHEDULES:
        raise ValueError(f"EMA schedule must be one of {EMA_SCHEDULES}, got {schedule!r}")
    return eta if schedule == "constant" else min(1.0 - 1.0 / (step + 1), eta)


@torch.no_grad()
def ema_update_(
    teacher: nn.Module, student: nn.Module, step: int, eta: float,
    schedule: str = "warmup", scope: str = "state",
) -> float:
    """Move ``teacher`` towards ``student`` in place; returns the decay used.

    ``scope == "parameters"``: only the parameters are averaged; the teacher's buffers
    stay as its own forwards left them. ``"state"``: floating-point buffers are averaged
    too and integer buffers (batch-norm's ``num_batches_tracked``) copied.
    """
    if scope not in EMA_SCOPES:
        raise ValueError(f"EMA scope must be one of {EMA_SCOPES}, got {scope!r}")
    decay = teacher_decay(step, eta, schedule)
    student_state = student.state_dict(keep_vars=True)
    names = dict(teacher.named_parameters()) if scope == "parameters" else teacher.state_dict(keep_vars=True)
    for name, value in names.items():
        value, source = value.detach(), student_state[name].detach()
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
