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
import math
from types import ModuleType

import torch
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


def slow_teacher_warning(eta: float, schedule: str, iterations: int) -> str | None:
    """A warning when a constant decay ``eta`` averages the student over more than a fifth
    of self-training (about ``1 / (1 - eta)`` iterations): the teacher, and so the pseudo
    labels, would stay close to the pre-trained network for much of the run."""
    horizon = 1.0 / (1.0 - eta)
    if schedule != "constant" or horizon <= iterations / 5:
        return None
    suggestion = max(0.0, math.floor(100 * (1.0 - 5.0 / iterations)) / 100)  # a horizon within the fifth
    return (
        f"selftrain.ema_decay={eta} averages the teacher over about {horizon:.0f} iterations, more than a "
        f"fifth of selftrain.iterations={iterations}: the pseudo labels will mostly come from the pre-trained "
        f"network; for a run this short lower it (e.g. selftrain.ema_decay={suggestion:g})"
    )


@torch.no_grad()
def ema_update_(
    teacher: nn.Module,
    student: nn.Module,
    step: int,
    eta: float,
    schedule: str = "warmup",
    scope: str = "state",
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


def pseudo_labels(probs: torch.Tensor, ops: ModuleType, foreground_threshold: float | None = None) -> torch.Tensor:
    """Hard pseudo labels ``(B, *S)`` int64 from teacher probabilities ``(B, C, *S)``.

    Without ``foreground_threshold`` (ACDC): argmax over classes. With it (LA, two
    classes): foreground where ``p_1 >= foreground_threshold``. Then each image keeps
    the largest connected component of every foreground class, by ``ops``'
    ``largest_component`` (the trainer's ops module: :mod:`mper.ops` cleans the labels
    on their own device, :mod:`mper.reference` with scipy on the host).
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
    return ops.largest_component(hard, num_classes, check_labels=False)


def confidence(probs: torch.Tensor) -> torch.Tensor:
    """The teacher's confidence per voxel: its highest class probability, ``(B, *S)``."""
    return probs.max(dim=1).values
