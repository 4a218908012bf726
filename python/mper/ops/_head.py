"""The fused prototype head kernels, shared by `proto_classify`, `proto_infonce` and
`proto_classify_infonce`.

One forward kernel computes any of logits/assign (classifier) and the InfoNCE loss from a
single read of the features; one backward kernel returns the features' gradient for any
mix of the two. The backward is itself a custom op so that `torch.compile` traces it.
"""
from __future__ import annotations

import torch

from mper.ops import _common

NO_IGNORE = -1  # ignore_index meaning "keep every voxel": bank rows are never negative


def _head_args(
    feat: torch.Tensor,
    prototypes: torch.Tensor,
    num_classes: int,
    tau: float,
    nce_tau: float,
    ignore_index: int,
):
    args = _common._C.HeadArgs()
    args.feat = _common.feature_view(feat)
    args.prototypes = prototypes.data_ptr()
    args.classes = num_classes
    args.protos_per_class = prototypes.shape[0] // num_classes
    args.inv_tau = 1.0 / tau
    args.inv_nce_tau = 1.0 / nce_tau
    args.ignore_index = ignore_index
    args.dtype = _common.DTYPE_CODES[feat.dtype]
    args.threads = torch.get_num_threads()
    return args


def _class_shape(feat: torch.Tensor, num_classes: int) -> tuple[int, ...]:
    return (feat.shape[0], num_classes, *feat.shape[2:])


def empty_outputs(
    feat: torch.Tensor, num_classes: int, want_classes: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Uninitialised (logits, assign, loss, count); the class maps are empty unless wanted."""
    shape = _class_shape(feat, num_classes) if want_classes else (0,)
    return (
        feat.new_empty(shape),
        feat.new_empty(shape, dtype=torch.int64),
        feat.new_empty(()),
        feat.new_empty((), dtype=_common.accumulation_dtype(feat.dtype)),
    )


def forward(
    feat: torch.Tensor,
    prototypes: torch.Tensor,
    num_classes: int,
    tau: float,
    nce_tau: float,
    ignore_index: int,
    want_classes: bool,
    want_loss: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Runs the forward kernel; outputs that are not wanted come back empty."""
    logits, assign, loss, count = empty_outputs(feat, num_classes, want_classes)
    args = _head_args(feat, prototypes, num_classes, tau, nce_tau, ignore_index)
    if want_classes:
        args.logits, args.assign = logits.data_ptr(), assign.data_ptr()
    workspace = None
    if want_loss:
        args.loss, args.count = loss.data_ptr(), count.data_ptr()
        workspace = feat.new_empty(_common._C.head_workspace_floats, dtype=torch.float32)
        args.workspace = workspace.data_ptr()
    with _common.on_device(feat.device) as stream:
        args.stream = stream
        _common.kernel("head_forward", feat.device)(args)
    return logits, assign, loss, count


@torch.library.custom_op("mper::proto_head_backward", mutates_args=())
def head_backward(
    feat: torch.Tensor,
    prototypes: torch.Tensor,
    grad_logits: torch.Tensor | None,
    grad_loss: torch.Tensor | None,
    count: torch.Tensor | None,
    num_classes: int,
    tau: float,
    nce_tau: float,
    ignore_index: int,
) -> torch.Tensor:
    """Gradient of the head's outputs w.r.t. `feat` (contiguous, feat's dtype)."""
    grad_feat = torch.empty(feat.shape, dtype=feat.dtype, device=feat.device)
    args = _head_args(feat, prototypes, num_classes, tau, nce_tau, ignore_index)
    if grad_logits is not None:
        grad_logits = grad_logits.to(feat.dtype).contiguous()
        args.grad_logits = grad_logits.data_ptr()
    if grad_loss is not None:
        grad_loss = grad_loss.to(feat.dtype).contiguous()
        args.grad_loss, args.count = grad_loss.data_ptr(), count.data_ptr()
    args.grad_feat = grad_feat.data_ptr()
    with _common.on_device(feat.device) as stream:
        args.stream = stream
        _common.kernel("head_backward", feat.device)(args)
    return grad_feat


@head_backward.register_fake
def _(feat, prototypes, grad_logits, grad_loss, count, num_classes, tau, nce_tau, ignore_index):
    return torch.empty(feat.shape, dtype=feat.dtype, device=feat.device)


def backward(ctx, grad_logits: torch.Tensor | None, grad_loss: torch.Tensor | None) -> torch.Tensor:
    """Shared autograd backward: `ctx` holds feat, prototypes, count and the settings."""
    feat, prototypes, count = ctx.saved_tensors
    return head_backward(
        feat, prototypes, grad_logits, grad_loss, count,
        ctx.num_classes, ctx.tau, ctx.nce_tau, ctx.ignore_index,
    )


def save_for_backward(ctx, feat, prototypes, count, num_classes, tau, nce_tau, ignore_index) -> None:
    # unused outputs (assign, count, often logits or loss) then reach backward as None
    # instead of as zero-filled tensors the size of the class maps
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(feat, prototypes, count)
    ctx.num_classes, ctx.tau, ctx.nce_tau, ctx.ignore_index = num_classes, tau, nce_tau, ignore_index


def prepare(
    feat: object, prototypes: object, num_classes: object, **temperatures: object
) -> tuple[torch.Tensor, torch.Tensor]:
    """Checks the public arguments; returns (feat, bank) as the kernels read them."""
    feat = _common.check_features("feat", feat)
    _common.check_positive_int("num_classes", num_classes)
    prototypes = _common.check_bank(prototypes, feat.shape[1])
    _common.check_rows(prototypes, num_classes)
    _common.check_same_device(feat=feat, prototypes=prototypes)
    for name, value in temperatures.items():
        _common.check_temperature(name, value, feat.dtype)
    return _common.with_dense_spatial(feat), _common.bank_for(prototypes, feat)


def check_ignore_index(ignore_index: object) -> int:
    if ignore_index is None:
        return NO_IGNORE
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int or None; got {ignore_index!r}")
    return ignore_index
