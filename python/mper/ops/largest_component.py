"""`largest_component`: keep each foreground class's largest connected component
(docs/method.md, "Training" and "Evaluation").

Cleans the teacher's pseudo labels: per image and per class c >= 1, the voxels of c
outside the largest component of c (full connectivity: 8 neighbours in 2D, 26 in 3D)
become background. One labelling pass handles every class; no host synchronisation on
CUDA unless the optional label check is on. Kernels: `csrc/ops/*/largest_component_kernel.*`.
"""

from __future__ import annotations

import math

import torch

from mper.ops import _common

LABEL_DTYPE_CODES = {
    torch.uint8: _common._C.LabelDType.uint8,
    torch.int8: _common._C.LabelDType.int8,
    torch.int16: _common._C.LabelDType.int16,
    torch.int32: _common._C.LabelDType.int32,
    torch.int64: _common._C.LabelDType.int64,
}
MAX_IMAGE_VOXELS: int = _common._C.max_image_voxels  # 2^31 - 1: the kernels count in int32


@torch.library.custom_op("mper::largest_component", mutates_args=())
def _largest_component(labels: torch.Tensor, num_classes: int, check_labels: bool = False) -> torch.Tensor:
    _check_kernel_arguments(labels, num_classes)
    # checked here, inside the op, so that the check runs under torch.compile as well
    if check_labels:
        _check_range(labels, num_classes)
    out = torch.empty_like(labels)
    batch, *spatial = labels.shape
    depth, height, width = ([1] + spatial) if len(spatial) == 2 else spatial
    args = _common._C.ComponentArgs()
    args.labels, args.out = labels.data_ptr(), out.data_ptr()
    args.batch, args.depth, args.height, args.width = batch, depth, height, width
    args.classes = num_classes
    args.dtype = LABEL_DTYPE_CODES[labels.dtype]
    args.threads = torch.get_num_threads()
    workspace = None
    if labels.device.type == "cuda":
        # parents and sizes (int32 per voxel), then one uint64 choice per image and class
        workspace = labels.new_empty((labels.numel() + batch * num_classes,), dtype=torch.int64)
        args.workspace = workspace.data_ptr()
    with _common.on_device(labels.device) as stream:
        args.stream = stream
        _common.kernel("largest_component", labels.device)(args)
    return out


@_largest_component.register_fake
def _(labels: torch.Tensor, num_classes: int, check_labels: bool = False) -> torch.Tensor:
    _check_kernel_arguments(labels, num_classes)
    return torch.empty_like(labels, memory_format=torch.contiguous_format)


def check_label_map(labels: object) -> torch.Tensor:
    """A batch of label maps ``(B, H, W)`` or ``(B, D, H, W)`` in an accepted integer dtype."""
    labels = _common.check_tensor("labels", labels)
    if labels.dtype not in LABEL_DTYPE_CODES:
        accepted = ", ".join(str(dtype).removeprefix("torch.") for dtype in LABEL_DTYPE_CODES)
        raise TypeError(f"labels must be an integer label map ({accepted}); got {labels.dtype}")
    if labels.dim() not in (3, 4):
        raise ValueError(
            f"labels must be a batch of 2D or 3D label maps, (B, H, W) or (B, D, H, W); got shape {tuple(labels.shape)}"
        )
    if math.prod(labels.shape[1:]) > MAX_IMAGE_VOXELS:
        raise ValueError(
            f"each label map must hold at most 2^31 - 1 = {MAX_IMAGE_VOXELS} voxels; got shape {tuple(labels.shape)}"
        )
    return labels


def _check_kernel_arguments(labels: torch.Tensor, num_classes: int) -> None:
    """What the registered op checks (body and fake kernel): the public checks, then that
    the labels are contiguous, as the kernel reads them (:func:`largest_component` makes them so)."""
    check_label_map(labels)
    _common.check_positive_int("num_classes", num_classes)
    _common.check_contiguous("labels", labels)


def _check_range(labels: torch.Tensor, num_classes: int) -> None:
    """Labels in [0, C) (syncs on CUDA)."""
    if labels.numel() and ((labels < 0) | (labels >= num_classes)).any():
        raise ValueError(
            f"labels must lie in [0, num_classes) = [0, {num_classes}); found values from "
            f"{labels.min().item()} to {labels.max().item()} (pass check_labels=False to treat "
            "values outside as background)"
        )


def largest_component(labels: torch.Tensor, num_classes: int, check_labels: bool = True) -> torch.Tensor:
    """Keep, per image and foreground class, only the largest connected component.

    Components use full connectivity (8 neighbours in 2D, 26 in 3D). Among equally large
    components of a class the first in scan order is kept, as ``scipy.ndimage.label``
    followed by an argmax of the component sizes gives. Every other voxel becomes 0.

    Args:
        labels: ``(B, H, W)`` or ``(B, D, H, W)`` class indices; uint8, int8, int16,
            int32 or int64, on the CPU or a GPU.
        num_classes: C; class 0 is background.
        check_labels: raise ``ValueError`` when a label is outside ``[0, C)``, eagerly
            and under ``torch.compile`` alike. Costs a device synchronisation on CUDA; with
            it off such voxels count as background and come out as 0.

    Returns:
        The cleaned label maps: same shape, dtype and device as ``labels``, contiguous.
    """
    labels = check_label_map(labels).detach()
    _common.check_positive_int("num_classes", num_classes)
    cleaned: torch.Tensor = _largest_component(labels.contiguous(), num_classes, bool(check_labels))
    return cleaned
