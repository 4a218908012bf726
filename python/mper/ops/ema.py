"""`proto_ema_update_`: the EMA step of the prototype bank (docs/method.md, "Prototype update").

p_c^k <- alpha p_c^k + (1 - alpha) mean_c^k on rows that some voxel reached; rows with a
zero count keep their value. In place, no host synchronisation on CUDA.
Kernels: `csrc/ops/*/proto_ema_kernel.*`.
"""

from __future__ import annotations

import torch

from mper.ops import _common


@torch.library.custom_op("mper::proto_ema_update_", mutates_args=("prototypes",))
def _proto_ema_update_(prototypes: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor, momentum: float) -> None:
    _check_kernel_arguments(prototypes, sums, counts, momentum)
    args = _common._C.EmaArgs()
    args.prototypes, args.sums, args.counts = prototypes.data_ptr(), sums.data_ptr(), counts.data_ptr()
    args.rows, args.depth = prototypes.shape
    args.momentum = momentum
    args.dtype = _common.DTYPE_CODES[prototypes.dtype]
    with _common.on_device(prototypes.device) as stream:
        args.stream = stream
        _common.kernel("ema_update", prototypes.device)(args)


@_proto_ema_update_.register_fake
def _(prototypes: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor, momentum: float) -> None:
    _check_kernel_arguments(prototypes, sums, counts, momentum)


def _check_arguments(prototypes: object, sums: object, counts: object, momentum: object) -> tuple[torch.Tensor, ...]:
    """The argument checks shared by :func:`proto_ema_update_` and the registered op."""
    prototypes = _common.check_tensor("prototypes", prototypes)
    if prototypes.dim() != 2:
        raise ValueError(f"prototypes must be (C*K, D); got shape {tuple(prototypes.shape)}")
    allowed = (torch.float32,) if prototypes.device.type == "cuda" else (torch.float32, torch.float64)
    if prototypes.dtype not in allowed:
        dtypes = " or ".join(map(str, allowed))
        raise TypeError(f"prototypes must be {dtypes} to update in place; got {prototypes.dtype}")
    _common.require(prototypes.is_contiguous(), ValueError, lambda: "prototypes must be contiguous to update in place")
    sums = _common.check_tensor("sums", sums)
    counts = _common.check_tensor("counts", counts)
    _common.check_shape("sums", sums, tuple(prototypes.shape), "(the bank's)")
    _common.check_shape("counts", counts, (prototypes.shape[0],), "(one per bank row)")
    if not isinstance(momentum, (int, float)) or not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be a number in [0, 1]; got {momentum!r}")
    _common.check_same_device(prototypes=prototypes, sums=sums, counts=counts)
    return prototypes, sums, counts


def _check_kernel_arguments(
    prototypes: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor, momentum: float
) -> None:
    """What the registered op checks (body and fake kernel): :func:`_check_arguments`, then
    sums and counts as :func:`proto_ema_update_` converts them (the bank's dtype, contiguous)."""
    _check_arguments(prototypes, sums, counts, momentum)
    for name, x in (("sums", sums), ("counts", counts)):
        _common.check_kernel_dtype(name, x, prototypes.dtype, "(the bank's dtype)")
        _common.check_contiguous(name, x)


def proto_ema_update_(
    prototypes: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor, momentum: float
) -> torch.Tensor:
    """Move each reached prototype towards the mean of its voxels, in place.

    Args:
        prototypes: the bank ``(C*K, D)``, contiguous float32 (float64 on the CPU).
        sums: ``(C*K, D)`` from :func:`mper.ops.proto_accumulate` (after an all-reduce
            when training on several GPUs).
        counts: ``(C*K,)``, from the same call.
        momentum: alpha in [0, 1].

    Returns:
        ``prototypes``.
    """
    prototypes, sums, counts = _check_arguments(prototypes, sums, counts, momentum)

    def as_bank(x: torch.Tensor) -> torch.Tensor:
        return x.to(dtype=prototypes.dtype, memory_format=torch.contiguous_format)

    with torch.no_grad():
        _proto_ema_update_(prototypes, as_bank(sums), as_bank(counts), float(momentum))
    return prototypes
