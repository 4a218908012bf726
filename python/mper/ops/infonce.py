"""`proto_infonce` (Eq. 5) and `proto_classify_infonce` (classifier + InfoNCE fused).

L_cont = mean over voxels of -log softmax_j(cos(z, p_j) / tau2) at the nearest prototype
n = argmax_j cos(z, p_j), over all C*K bank rows. Same kernels as the classifier
(`csrc/ops/*/proto_head_kernel.*`): the fused op reads the features once for both.
"""

from __future__ import annotations

from typing import Any

import torch

from mper.ops import _head


@torch.library.custom_op("mper::proto_infonce", mutates_args=())
def _proto_infonce(
    feat: torch.Tensor, prototypes: torch.Tensor, tau: float, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    _head.check_kernel_arguments(feat, prototypes, 1, tau=tau)
    _, _, loss, count = _head.forward(feat, prototypes, 1, 1.0, tau, ignore_index, want_classes=False, want_loss=True)
    return loss, count


@_proto_infonce.register_fake
def _(feat: torch.Tensor, prototypes: torch.Tensor, tau: float, ignore_index: int) -> tuple[torch.Tensor, ...]:
    _head.check_kernel_arguments(feat, prototypes, 1, tau=tau)
    return _head.empty_outputs(feat, 1)[2:]


def _setup_infonce(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    feat, prototypes, tau, ignore_index = inputs
    _head.save_for_backward(ctx, feat, prototypes, output[1], 1, 1.0, tau, ignore_index)


def _backward_infonce(ctx: Any, grad_loss: torch.Tensor | None, grad_count: None) -> tuple[torch.Tensor | None, ...]:
    return _head.backward(ctx, None, grad_loss), None, None, None


_proto_infonce.register_autograd(_backward_infonce, setup_context=_setup_infonce)


@torch.library.custom_op("mper::proto_classify_infonce", mutates_args=())
def _proto_classify_infonce(
    feat: torch.Tensor,
    prototypes: torch.Tensor,
    num_classes: int,
    tau: float,
    nce_tau: float,
    ignore_index: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    _head.check_kernel_arguments(feat, prototypes, num_classes, tau=tau, nce_tau=nce_tau)
    return _head.forward(feat, prototypes, num_classes, tau, nce_tau, ignore_index, want_classes=True, want_loss=True)


@_proto_classify_infonce.register_fake
def _(
    feat: torch.Tensor, prototypes: torch.Tensor, num_classes: int, tau: float, nce_tau: float, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    _head.check_kernel_arguments(feat, prototypes, num_classes, tau=tau, nce_tau=nce_tau)
    return _head.empty_outputs(feat, num_classes)


def _setup_fused(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    feat, prototypes, num_classes, tau, nce_tau, ignore_index = inputs
    _head.save_for_backward(ctx, feat, prototypes, output[3], num_classes, tau, nce_tau, ignore_index)


def _backward_fused(
    ctx: Any, grad_logits: torch.Tensor | None, grad_assign: None, grad_loss: torch.Tensor | None, grad_count: None
) -> tuple[torch.Tensor | None, ...]:
    return _head.backward(ctx, grad_logits, grad_loss), None, None, None, None, None


_proto_classify_infonce.register_autograd(_backward_fused, setup_context=_setup_fused)


def proto_infonce(
    feat: torch.Tensor,
    prototypes: torch.Tensor,
    tau: float = 0.1,
    ignore_index: int | None = None,
) -> torch.Tensor:
    """InfoNCE of every voxel against all prototypes, its nearest one as the positive.

    Args:
        feat: features ``(B, D, *spatial)`` (see :func:`mper.ops.proto_classify`).
        prototypes: the bank ``(R, D)`` (all C*K rows); no gradient.
        tau: the temperature tau2.
        ignore_index: leave out voxels whose nearest row is this one (preset
            ``reference`` uses 0); ``None`` keeps every voxel.

    Returns:
        The mean loss over the kept voxels (0 when none is kept), a scalar in the
        features' dtype, differentiable in ``feat``. Never materialises the
        ``N x R`` similarity matrix.
    """
    ignore = _head.check_ignore_index(ignore_index)
    feat, bank = _head.prepare(feat, prototypes, 1, tau=tau)
    if _head.eager(feat, bank):
        loss: torch.Tensor = _head.run_eager(feat, bank, 1, 1.0, float(tau), ignore, False, True)[2]
    else:
        loss = _proto_infonce(feat, bank, float(tau), ignore)[0]
    return loss


def proto_classify_infonce(
    feat: torch.Tensor,
    prototypes: torch.Tensor,
    num_classes: int,
    tau: float = 0.1,
    nce_tau: float = 0.1,
    ignore_index: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`mper.ops.proto_classify` and :func:`proto_infonce` from one read of ``feat``.

    Returns ``(logits, assign, loss)``, as the two ops would.
    """
    ignore = _head.check_ignore_index(ignore_index)
    feat, bank = _head.prepare(feat, prototypes, num_classes, tau=tau, nce_tau=nce_tau)
    if _head.eager(feat, bank):
        logits, assign, loss, _ = _head.run_eager(
            feat, bank, num_classes, float(tau), float(nce_tau), ignore, True, True
        )
    else:
        logits, assign, loss, _ = _proto_classify_infonce(feat, bank, num_classes, float(tau), float(nce_tau), ignore)
    return logits, assign, loss
