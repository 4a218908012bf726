"""Whole-volume inference: 3D sliding window (LA) and 2D slice by slice (ACDC).

Both read the linear classifier's logits ``net(x).pred``, run under ``torch.no_grad``
with the network in eval mode, and put the network back in the mode it was in.
The network must already be on ``device``.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from scipy.ndimage import zoom
from torch import nn

from .datasets import check_dataset, dataset_num_classes


@contextmanager
def _inference_mode(net: nn.Module) -> Iterator[None]:
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        net.train(was_training)


def _class_probabilities(net: nn.Module, batch: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Softmax of ``net(batch).pred`` over classes, checking the class count."""
    logits = net(batch).pred
    if logits.shape[1] != num_classes:
        raise ValueError(
            f"the network predicts {logits.shape[1]} classes but num_classes={num_classes}; "
            "pass the class count the network was built with"
        )
    return torch.softmax(logits.float(), dim=1)


def _triple(name: str, values: Sequence[int]) -> tuple[int, int, int]:
    values = tuple(int(v) for v in values)
    if len(values) != 3 or min(values) < 1:
        raise ValueError(f"{name} must be three positive integers, got {values}")
    return values


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")


def _window_starts(size: int, patch: int, stride: int) -> list[int]:
    """Starts every ``stride`` voxels; the last window ends flush with the volume."""
    count = math.ceil((size - patch) / stride) + 1
    return [min(index * stride, size - patch) for index in range(count)]


def _symmetric_padding(shape: Sequence[int], patch_size: Sequence[int]) -> list[tuple[int, int]]:
    """Per axis, the (before, after) zeros that bring ``shape`` up to ``patch_size``."""
    pads = []
    for size, patch in zip(shape, patch_size):
        missing = max(patch - size, 0)
        pads.append((missing // 2, missing - missing // 2))
    return pads


def _average_window_scores(
    net: nn.Module,
    volume: torch.Tensor,
    num_classes: int,
    patch_size: tuple[int, int, int],
    stride: tuple[int, int, int],
    batch_size: int,
) -> torch.Tensor:
    """Mean softmax ``(C, *volume.shape)`` over all windows covering each voxel."""
    scores = torch.zeros((num_classes, *volume.shape), dtype=torch.float32, device=volume.device)
    counts = torch.zeros(volume.shape, dtype=torch.float32, device=volume.device)
    corners = itertools.product(
        *(_window_starts(size, p, s) for size, p, s in zip(volume.shape, patch_size, stride))
    )
    windows = [tuple(slice(start, start + p) for start, p in zip(corner, patch_size)) for corner in corners]
    for first in range(0, len(windows), batch_size):
        batch_windows = windows[first : first + batch_size]
        batch = torch.stack([volume[window] for window in batch_windows]).unsqueeze(1)
        probabilities = _class_probabilities(net, batch, num_classes)
        for window, window_probabilities in zip(batch_windows, probabilities):
            scores[(slice(None), *window)] += window_probabilities
            counts[window] += 1
    return scores / counts


def sliding_window_predict(
    net: nn.Module,
    image: np.ndarray,
    num_classes: int,
    patch_size: Sequence[int] = (112, 112, 80),
    stride: Sequence[int] = (18, 18, 4),
    device: str | torch.device = "cpu",
    batch_size: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Segment a 3D ``image (H, W, D)`` patch by patch (UA-MT's test procedure).

    The image is zero-padded (symmetrically) up to at least ``patch_size``; windows of
    ``patch_size`` are taken every ``stride`` voxels along each axis, the last flush with
    the end; the softmax of each window is averaged where windows overlap; the padding is
    cropped off again. Returns ``(labels uint8 (H, W, D), probabilities float32 (C, H, W, D))``.
    A stride larger than the patch is refused: it would leave voxels uncovered.
    """
    if image.ndim != 3:
        raise ValueError(f"sliding_window_predict needs an (H, W, D) image, got shape {image.shape}")
    patch_size, stride = _triple("patch_size", patch_size), _triple("stride", stride)
    if any(step > size for step, size in zip(stride, patch_size)):
        raise ValueError(
            f"stride {stride} must not exceed patch_size {patch_size} along any axis: "
            "a larger step leaves voxels that no window covers"
        )
    _check_batch_size(batch_size)
    pads = _symmetric_padding(image.shape, patch_size)
    padded = np.pad(image.astype(np.float32, copy=False), pads, mode="constant", constant_values=0)
    with _inference_mode(net):
        volume = torch.from_numpy(padded).to(device)
        scores = _average_window_scores(net, volume, num_classes, patch_size, stride, batch_size)
    crop = tuple(slice(before, before + size) for (before, _), size in zip(pads, image.shape))
    scores = scores[(slice(None), *crop)]
    labels = scores.argmax(dim=0).to(torch.uint8)
    return labels.cpu().numpy(), scores.cpu().numpy()


def _resize_nearest(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    factors = [target / size for target, size in zip(shape, array.shape)]
    # Rounding can put the last sample a hair past the edge; mode="nearest" keeps it there
    # instead of filling that row with zeros (scipy's default "constant" mode).
    return zoom(array, factors, order=0, mode="nearest")


def slicewise_predict(
    net: nn.Module,
    volume: np.ndarray,
    num_classes: int,
    size: Sequence[int] = (256, 256),
    device: str | torch.device = "cpu",
    batch_size: int = 16,
) -> np.ndarray:
    """Segment a volume ``(S, H, W)`` one 2D slice at a time (SSL4MIS's test procedure).

    Each slice is resized to ``size`` (nearest neighbour), segmented by the argmax of
    the logits, and the label map resized back (nearest neighbour). Returns labels
    ``uint8 (S, H, W)``.
    """
    if volume.ndim != 3:
        raise ValueError(f"slicewise_predict needs an (S, H, W) volume, got shape {volume.shape}")
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be two positive integers, got {tuple(size)}")
    _check_batch_size(batch_size)
    labels = np.zeros(volume.shape, dtype=np.uint8)
    with _inference_mode(net):
        for first in range(0, volume.shape[0], batch_size):
            slices = volume[first : first + batch_size].astype(np.float32, copy=False)
            resized = np.stack([_resize_nearest(image, size) for image in slices])
            batch = torch.from_numpy(resized).unsqueeze(1).to(device)
            predicted = _class_probabilities(net, batch, num_classes).argmax(dim=1)
            for offset, label_map in enumerate(predicted.to(torch.uint8).cpu().numpy()):
                labels[first + offset] = _resize_nearest(label_map, volume.shape[1:])
    return labels


def predict_volume(
    net: nn.Module,
    image: np.ndarray,
    dataset: str,
    num_classes: int | None = None,
    **options: Any,
) -> np.ndarray:
    """The uint8 label map of ``image`` by the dataset's procedure.

    ``"la"``: :func:`sliding_window_predict` of an ``(H, W, D)`` image; ``"acdc"``:
    :func:`slicewise_predict` of an ``(S, H, W)`` volume. ``num_classes`` defaults to the
    dataset's (2 and 4); ``options`` (``device``, ``patch_size``, ``stride``, ``size``,
    ``batch_size``) go to the procedure.
    """
    if num_classes is None:
        num_classes = dataset_num_classes(dataset)
    if check_dataset(dataset) == "la":
        return sliding_window_predict(net, image, num_classes, **options)[0]
    return slicewise_predict(net, image, num_classes, **options)
