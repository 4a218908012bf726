"""`proto_classify`: the multi-prototype classifier (docs/method.md, "Prototype classifier").

For each voxel feature z and class c: logit_c = max_k cos(z, p_c^k) / tau1 and
assign_c = argmax_k cos(z, p_c^k). CPU and CUDA kernels: `csrc/ops/*/proto_head_kernel.*`.
"""

from __future__ import annotations

from typing import Any

import torch

from mper.ops import _head


@torch.library.custom_op("mper::proto_classify", mutates_args=())
def _proto_classify(
    feat: torch.Tensor, prototypes: torch.Tensor, num_classes: int, tau: float
) -> tuple[torch.Tensor, torch.Tensor]:
    _head.check_kernel_arguments(feat, prototypes, num_classes, tau=tau)
    logits, assign, _, _ = _head.forward(
        feat, prototypes, num_classes, tau, 1.0, _head.NO_IGNORE, want_classes=True, want_loss=False
    )
    return logits, assign


@_proto_classify.register_fake
def _(feat: torch.Tensor, prototypes: torch.Tensor, num_classes: int, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    _head.check_kernel_arguments(feat, prototypes, num_classes, tau=tau)
    return _head.empty_outputs(feat, num_classes)[:2]


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    feat, prototypes, num_classes, tau = inputs
    _head.save_for_backward(ctx, feat, prototypes, None, num_classes, tau, 1.0, _head.NO_IGNORE)


def _backward(ctx: Any, grad_logits: torch.Tensor | None, grad_assign: None) -> tuple[torch.Tensor | None, ...]:
    return _head.backward(ctx, grad_logits, None), None, None, None


_proto_classify.register_autograd(_backward, setup_context=_setup_context)


def proto_classify(
    feat: torch.Tensor, prototypes: torch.Tensor, num_classes: int, tau: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Classify every voxel by its most similar prototype of each class.

    Args:
        feat: features ``(B, D, *spatial)`` (2D or 3D spatial), float32/float16/bfloat16
            (float64 on the CPU), read in place when their spatial dims are contiguous.
        prototypes: the bank ``(C*K, D)``, row ``c*K + k`` = ``p_c^k``; no gradient.
        num_classes: C.
        tau: the temperature tau1.

    Returns:
        ``logits`` ``(B, C, *spatial)`` in the features' dtype, differentiable in ``feat``,
        and ``assign`` ``(B, C, *spatial)`` int64, the winning k of each class.
    """
    feat, bank = _head.prepare(feat, prototypes, num_classes, tau=tau)
    if _head.eager(feat, bank):
        logits, assign, _, _ = _head.run_eager(feat, bank, num_classes, float(tau), 1.0, _head.NO_IGNORE, True, False)
    else:
        logits, assign = _proto_classify(feat, bank, num_classes, float(tau))
    return logits, assign
