"""`proto_accumulate`: per-prototype sums and counts for the bank update
(docs/method.md, "Prototype update").

A voxel in the mask with label c adds its embedding to row c*K + assign[b, c, voxel] and 1
to that row's count. One pass, no host synchronisation on CUDA (unless the optional label
check is on). Kernels: `csrc/ops/*/proto_accumulate_kernel.*`.
"""

from __future__ import annotations

import torch

from mper.ops import _common


@torch.library.custom_op("mper::proto_accumulate", mutates_args=())
def _proto_accumulate(
    emb: torch.Tensor,
    labels: torch.Tensor,
    assign: torch.Tensor,
    mask: torch.Tensor | None,
    num_classes: int,
    num_protos: int,
    check_labels: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    _check_kernel_arguments(emb, labels, assign, mask, num_classes, num_protos)
    # checked here, inside the op, so that the check runs under torch.compile as well
    if check_labels:
        _check_ranges(labels, assign, mask, num_classes, num_protos)
    sums, counts = _empty_totals(emb, num_classes * num_protos)
    sums.zero_()
    counts.zero_()
    args = _common._C.AccumulateArgs()
    args.emb = _common.feature_view(emb)
    args.labels, args.assign, args.mask = labels.data_ptr(), assign.data_ptr(), _common.address(mask)
    args.classes, args.protos_per_class = num_classes, num_protos
    args.sums, args.counts = sums.data_ptr(), counts.data_ptr()
    args.dtype = _common.DTYPE_CODES[emb.dtype]
    args.threads = torch.get_num_threads()
    with _common.on_device(emb.device) as stream:
        args.stream = stream
        _common.kernel("accumulate", emb.device)(args)
    return sums, counts


def _empty_totals(emb: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    dtype = _common.accumulation_dtype(emb.dtype)
    return emb.new_empty((rows, emb.shape[1]), dtype=dtype), emb.new_empty((rows,), dtype=dtype)


@_proto_accumulate.register_fake
def _(
    emb: torch.Tensor,
    labels: torch.Tensor,
    assign: torch.Tensor,
    mask: torch.Tensor | None,
    num_classes: int,
    num_protos: int,
    check_labels: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    _check_kernel_arguments(emb, labels, assign, mask, num_classes, num_protos)
    return _empty_totals(emb, num_classes * num_protos)


def _check_index_map(name: str, x: object, shape: tuple[int, ...]) -> torch.Tensor:
    x = _common.check_tensor(name, x)
    if x.is_floating_point() or x.is_complex():
        raise TypeError(f"{name} must be an integer tensor; got {x.dtype}")
    _common.check_shape(name, x, shape)
    return x


def _check_mask(mask: object, shape: tuple[int, ...]) -> torch.Tensor | None:
    if mask is None:
        return None
    mask = _common.check_tensor("mask", mask)
    _common.check_shape("mask", mask, shape, "(B, *spatial)")
    if mask.dtype != torch.bool and (mask.is_floating_point() or mask.is_complex()):
        raise TypeError(f"mask must be bool (or integer 0/1); got {mask.dtype}")
    return mask


def _check_arguments(
    emb: object, labels: object, assign: object, mask: object, num_classes: object, num_protos: object
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The argument checks shared by :func:`proto_accumulate` and the registered op."""
    emb = _common.check_features("emb", emb)
    classes = _common.check_positive_int("num_classes", num_classes)
    _common.check_positive_int("num_protos", num_protos)
    batch, spatial = emb.shape[0], tuple(emb.shape[2:])
    labels = _check_index_map("labels", labels, (batch, *spatial))
    assign = _check_index_map("assign", assign, (batch, classes, *spatial))
    mask = _check_mask(mask, (batch, *spatial))
    _common.check_same_device(emb=emb, labels=labels, assign=assign, mask=mask)
    return emb, labels, assign, mask


def _check_kernel_arguments(
    emb: torch.Tensor,
    labels: torch.Tensor,
    assign: torch.Tensor,
    mask: torch.Tensor | None,
    num_classes: int,
    num_protos: int,
) -> None:
    """What the registered op checks (body and fake kernel): :func:`_check_arguments`, then
    the dtypes and layouts :func:`proto_accumulate` converts its arguments to."""
    _check_arguments(emb, labels, assign, mask, num_classes, num_protos)
    _common.check_spatially_dense("emb", emb)
    index_maps = (("labels", labels, torch.int64), ("assign", assign, torch.int64), ("mask", mask, torch.bool))
    for name, x, dtype in index_maps:
        if x is not None:
            _common.check_kernel_dtype(name, x, dtype)
            _common.check_contiguous(name, x)


def _check_ranges(
    labels: torch.Tensor, assign: torch.Tensor, mask: torch.Tensor | None, num_classes: int, num_protos: int
) -> None:
    """Labels in [0, C) and the assigned k in [0, K) wherever the mask is set (syncs on CUDA)."""
    selected = torch.ones_like(labels, dtype=torch.bool) if mask is None else mask
    bad_label = selected & ((labels < 0) | (labels >= num_classes))
    if bad_label.any():
        found = labels[bad_label]
        raise ValueError(
            f"labels must lie in [0, num_classes) = [0, {num_classes}) under the mask; found "
            f"values from {found.min().item()} to {found.max().item()}"
        )
    picked = assign.gather(1, labels.clamp(0, num_classes - 1).unsqueeze(1)).squeeze(1)
    if (selected & ((picked < 0) | (picked >= num_protos))).any():
        raise ValueError(f"assign must lie in [0, num_protos) = [0, {num_protos}) under the mask")


def proto_accumulate(
    emb: torch.Tensor,
    labels: torch.Tensor,
    assign: torch.Tensor,
    mask: torch.Tensor | None,
    num_classes: int,
    num_protos: int,
    check_labels: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum the embeddings of the voxels that take part, per prototype.

    Args:
        emb: embeddings ``(B, D, *spatial)``; read without gradient.
        labels: class of each voxel ``(B, *spatial)``, integer.
        assign: ``(B, C, *spatial)`` integer, the k chosen for each class (from
            :func:`mper.ops.proto_classify`).
        mask: ``(B, *spatial)`` bool, the voxels that take part; ``None`` for all.
        num_classes: C.
        num_protos: K, the prototypes per class.
        check_labels: raise ``ValueError`` when a selected label is outside ``[0, C)``
            (or its assign outside ``[0, K)``), eagerly and under ``torch.compile``
            alike. Costs a device synchronisation on CUDA; with it off such voxels are
            skipped, never written out of bounds.

    Returns:
        ``sums`` ``(C*K, D)`` and ``counts`` ``(C*K,)``, float32 (float64 for float64 emb).
    """
    emb, labels, assign, mask = _check_arguments(emb, labels, assign, mask, num_classes, num_protos)
    emb = _common.with_dense_spatial(emb.detach())
    labels = labels.to(torch.int64).contiguous()
    assign = assign.to(torch.int64).contiguous()
    mask = None if mask is None else mask.to(torch.bool).contiguous()
    sums, counts = _proto_accumulate(emb, labels, assign, mask, num_classes, num_protos, bool(check_labels))
    return sums, counts
