"""The fused prototype head kernels, shared by `proto_classify`, `proto_infonce` and
`proto_classify_infonce`.

One forward kernel computes any of logits/assign (classifier) and the InfoNCE loss from a
single read of the features; one backward kernel returns the features' gradient for any
mix of the two. The backward is itself a custom op so that `torch.compile` traces it.

Calls go through the registered custom ops whenever a compiler, fake tensors, a dispatch
mode or a functorch transform is at work; plain eager calls take :class:`EagerHead`, the
same kernels under a bare autograd function, which keeps the host's share of a call small
(`benchmarks/host_overhead.py`).
"""

from __future__ import annotations

from typing import Any

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
) -> Any:
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


def backward_kernel(
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
        assert count is not None, "the loss's gradient needs the count of its voxels"
        args.grad_loss, args.count = grad_loss.data_ptr(), count.data_ptr()
    args.grad_feat = grad_feat.data_ptr()
    with _common.on_device(feat.device) as stream:
        args.stream = stream
        _common.kernel("head_backward", feat.device)(args)
    return grad_feat


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
    """:func:`backward_kernel` as a custom op, so that `torch.compile` traces the backward."""
    check_backward_arguments(feat, prototypes, grad_logits, grad_loss, count, num_classes, tau, nce_tau)
    return backward_kernel(feat, prototypes, grad_logits, grad_loss, count, num_classes, tau, nce_tau, ignore_index)


@head_backward.register_fake
def _(
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
    check_backward_arguments(feat, prototypes, grad_logits, grad_loss, count, num_classes, tau, nce_tau)
    return torch.empty(feat.shape, dtype=feat.dtype, device=feat.device)


def backward(
    ctx: Any, grad_logits: torch.Tensor | None, grad_loss: torch.Tensor | None, direct: bool = False
) -> torch.Tensor:
    """Shared autograd backward: `ctx` holds feat, prototypes, count and the settings.

    `direct` calls the kernel itself rather than the `proto_head_backward` custom op.
    """
    feat, prototypes, count = ctx.saved_tensors
    compute = backward_kernel if direct else head_backward
    grad_feat: torch.Tensor = compute(
        feat,
        prototypes,
        grad_logits,
        grad_loss,
        count,
        ctx.num_classes,
        ctx.tau,
        ctx.nce_tau,
        ctx.ignore_index,
    )
    return grad_feat


def save_for_backward(
    ctx: Any,
    feat: torch.Tensor,
    prototypes: torch.Tensor,
    count: torch.Tensor | None,
    num_classes: int,
    tau: float,
    nce_tau: float,
    ignore_index: int,
) -> None:
    # unused outputs (assign, count, often logits or loss) then reach backward as None
    # instead of as zero-filled tensors the size of the class maps
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(feat, prototypes, count)
    ctx.num_classes, ctx.tau, ctx.nce_tau, ctx.ignore_index = num_classes, tau, nce_tau, ignore_index


def eager(*tensors: torch.Tensor) -> bool:
    """Whether a call may skip the custom-op dispatcher.

    The registered custom ops are what `torch.compile`, fake tensors, dispatch modes and
    functorch transforms understand; a plain eager call on plain tensors goes straight to
    the kernels through :class:`EagerHead` instead, which costs a fraction of the host time.
    """
    return (
        not torch.compiler.is_compiling()
        and all(type(t) is torch.Tensor for t in tensors)
        and not torch._C._is_torch_function_mode_enabled()
        and torch._C._len_torch_dispatch_stack() == 0
        and not torch._C._are_functorch_transforms_active()
    )


class EagerHead(torch.autograd.Function):
    """The head's forward and backward kernels under autograd, for :func:`eager` calls.

    Returns (logits, assign, loss, count) as the custom ops do; unwanted outputs are empty.
    """

    @staticmethod
    def forward(
        ctx: Any,
        feat: torch.Tensor,
        prototypes: torch.Tensor,
        num_classes: int,
        tau: float,
        nce_tau: float,
        ignore_index: int,
        want_classes: bool,
        want_loss: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        outputs = forward(feat, prototypes, num_classes, tau, nce_tau, ignore_index, want_classes, want_loss)
        ctx.mark_non_differentiable(outputs[1], outputs[3])
        save_for_backward(
            ctx, feat, prototypes, outputs[3] if want_loss else None, num_classes, tau, nce_tau, ignore_index
        )
        return outputs

    @staticmethod
    def backward(
        ctx: Any,
        grad_logits: torch.Tensor | None,
        grad_assign: None,
        grad_loss: torch.Tensor | None,
        grad_count: None,
    ) -> tuple[torch.Tensor | None, ...]:
        # under create_graph the custom op runs, so that a double backward fails loudly
        grad_feat = backward(ctx, grad_logits, grad_loss, direct=not torch.is_grad_enabled())
        return grad_feat, None, None, None, None, None, None, None


def check_arguments(
    feat: object, prototypes: object, num_classes: object, **temperatures: object
) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's argument checks, shared by the public functions and the registered ops."""
    feat = _common.check_features("feat", feat)
    if feat.device.type == "cuda":  # here too, so that a compiled graph refuses it when traced
        depth = feat.shape[1]
        _common.require(
            depth <= _common._C.cuda_max_head_depth,
            ValueError,
            lambda: (
                f"feat has {depth} channels: the CUDA kernels support a feature depth of at most "
                f"{_common._C.cuda_max_head_depth}; use the eager ops (ops='reference') or the CPU for deeper features"
            ),
        )
    classes = _common.check_positive_int("num_classes", num_classes)
    prototypes = _common.check_bank(prototypes, feat.shape[1])
    _common.check_rows(prototypes, classes)
    _common.check_same_device(feat=feat, prototypes=prototypes)
    for name, value in temperatures.items():
        _common.check_temperature(name, value, feat.dtype)
    return feat, prototypes


def prepare(
    feat: object, prototypes: object, num_classes: object, **temperatures: object
) -> tuple[torch.Tensor, torch.Tensor]:
    """Checks the public arguments; returns (feat, bank) as the kernels read them."""
    feat, prototypes = check_arguments(feat, prototypes, num_classes, **temperatures)
    return _common.with_dense_spatial(feat), _common.bank_for(prototypes, feat)


def check_kernel_arguments(
    feat: torch.Tensor, prototypes: torch.Tensor, num_classes: int, **temperatures: float
) -> None:
    """What a registered head op checks (body and fake kernel): :func:`check_arguments`,
    then that feat and the bank are laid out as :func:`prepare` leaves them."""
    check_arguments(feat, prototypes, num_classes, **temperatures)
    _common.check_spatially_dense("feat", feat)
    _common.check_kernel_bank(prototypes, feat)


def check_backward_arguments(
    feat: torch.Tensor,
    prototypes: torch.Tensor,
    grad_logits: torch.Tensor | None,
    grad_loss: torch.Tensor | None,
    count: torch.Tensor | None,
    num_classes: int,
    tau: float,
    nce_tau: float,
) -> None:
    """What `proto_head_backward` checks: the forward's arguments, the incoming gradients
    (logits' (B, C, *spatial), the loss's a scalar) and the forward's count of kept voxels."""
    check_kernel_arguments(feat, prototypes, num_classes, tau=tau, nce_tau=nce_tau)
    _common.check_same_device(feat=feat, grad_logits=grad_logits, grad_loss=grad_loss, count=count)
    for name, grad, shape, meaning in (
        ("grad_logits", grad_logits, _class_shape(feat, num_classes), "(B, C, *spatial)"),
        ("grad_loss", grad_loss, (), "(a scalar)"),
    ):
        if grad is not None:
            _common.check_shape(name, grad, shape, meaning)
            if not grad.is_floating_point():
                raise TypeError(f"{name} must be floating point; got {grad.dtype}")
    if grad_loss is not None and count is None:
        raise ValueError("the loss's gradient needs count, the forward's count of kept voxels")
    if count is not None:
        _common.check_shape("count", count, (), "(a scalar)")
        _common.check_kernel_dtype(
            "count", count, _common.accumulation_dtype(feat.dtype), f"(the accumulation dtype of {feat.dtype})"
        )


def check_ignore_index(ignore_index: object) -> int:
    if ignore_index is None:
        return NO_IGNORE
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int or None; got {ignore_index!r}")
    return ignore_index


def run_eager(
    feat: torch.Tensor,
    prototypes: torch.Tensor,
    num_classes: int,
    tau: float,
    nce_tau: float,
    ignore_index: int,
    want_classes: bool,
    want_loss: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:class:`EagerHead` applied: (logits, assign, loss, count), the unwanted ones empty."""
    outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] = EagerHead.apply(  # type: ignore[no-untyped-call]
        feat, prototypes, num_classes, tau, nce_tau, ignore_index, want_classes, want_loss
    )
    return outputs
