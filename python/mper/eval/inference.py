"""Whole-volume inference: 3D sliding window (LA) and 2D slice by slice (ACDC); a dataset's
spec (:mod:`mper.datasets`) says which it uses. A sliding-window dataset with a 2D patch
(an imported dataset planned for a 2D network) takes its windows slice by slice across
the spec's ``slice_axis``. Volumes with several channels carry them first.

Both read the linear classifier's logits ``net(x).pred``, run under ``torch.no_grad``
with the network in eval mode, and put the network back in the mode it was in.
The network must already be on ``device``. An :class:`Ensemble` in its place (several
networks of one dataset, optionally mirrored: ``mper-predict`` with several checkpoints or
``--mirror``) gives the mean of its members' softmax probabilities over each window (or
slice), which the procedure then treats as one network's.
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

from mper.datasets import SLIDING_WINDOW, get_dataset


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
    """Softmax of ``net(batch).pred`` over classes (an :class:`Ensemble`'s mean of them),
    checking the class count."""
    if isinstance(net, Ensemble):
        return net(batch, num_classes)
    logits = net(batch).pred
    if logits.shape[1] != num_classes:
        raise ValueError(
            f"the network predicts {logits.shape[1]} classes but num_classes={num_classes}; "
            "pass the class count the network was built with"
        )
    return torch.softmax(logits.float(), dim=1)


class Ensemble(nn.Module):
    """Networks of one dataset whose softmax probabilities are averaged, window by window
    (nnU-Net's ensemble of cross-validation folds), optionally over mirrored inputs as well.

    ``flip_axes`` are spatial axes of a window (0: the first axis after the channels): each
    member segments the window as it is and flipped along every non-empty combination of
    them (``2 ** len(flip_axes)`` passes), each flipped prediction flipped back, as nnU-Net's
    test-time mirroring does; the mean runs over all members and flips alike. Pass it to
    the inference functions where they take a network; called on a batch of windows and
    the class count, it returns that mean, not a network's ``(pred, feat)``.
    """

    def __init__(self, nets: Sequence[nn.Module], flip_axes: Sequence[int] = ()) -> None:
        super().__init__()
        if not nets:
            raise ValueError("an ensemble needs at least one network")
        if len(set(flip_axes)) != len(flip_axes) or min(flip_axes, default=0) < 0:
            raise ValueError(f"flip_axes must be distinct non-negative axes, got {tuple(flip_axes)}")
        self.members = nn.ModuleList(nets)
        self.flip_axes = tuple(int(axis) for axis in flip_axes)

    def flips(self) -> list[tuple[int, ...]]:
        """The combinations of :attr:`flip_axes` each member sees, ``()`` (as it is) first."""
        axes = self.flip_axes
        return [combination for count in range(len(axes) + 1) for combination in itertools.combinations(axes, count)]

    def forward(self, batch: torch.Tensor, num_classes: int) -> torch.Tensor:
        """The mean softmax ``(N, C, *window)`` of every member over every flip of ``batch``
        ``(N, channels, *window)``."""
        if max(self.flip_axes, default=-1) + 2 >= batch.ndim:
            raise ValueError(f"flip_axes {self.flip_axes} are not all axes of a window of shape {batch.shape[2:]}")
        total: torch.Tensor | None = None
        passes = 0
        for member in self.members:
            for flip in self.flips():
                dims = [axis + 2 for axis in flip]
                probabilities = _class_probabilities(member, batch.flip(dims) if dims else batch, num_classes)
                probabilities = probabilities.flip(dims) if dims else probabilities
                total = probabilities if total is None else total + probabilities
                passes += 1
        assert total is not None  # at least one member, and the unflipped pass
        return total / passes


def ensemble(nets: Sequence[nn.Module], flip_axes: Sequence[int] = ()) -> nn.Module:
    """What the inference functions take for ``nets`` mirrored along ``flip_axes``: the one
    network itself when it is alone and unmirrored (today's prediction, bit for bit), an
    :class:`Ensemble` otherwise."""
    if len(nets) == 1 and not flip_axes:
        return nets[0]
    return Ensemble(nets, flip_axes)


def _sizes(name: str, values: Sequence[int], rank: int = 3) -> tuple[int, ...]:
    values = tuple(int(v) for v in values)
    if len(values) != rank or min(values) < 1:
        raise ValueError(f"{name} must be {_COUNTS[rank]} positive integers, got {values}")
    return values


_COUNTS = {2: "two", 3: "three"}


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
    patch_size: tuple[int, ...],
    stride: tuple[int, ...],
    batch_size: int,
) -> torch.Tensor:
    """Mean softmax ``(C, *spatial)`` over all windows covering each voxel of ``volume``
    ``(channels, *spatial)``."""
    spatial = volume.shape[1:]
    scores = torch.zeros((num_classes, *spatial), dtype=torch.float32, device=volume.device)
    counts = torch.zeros(spatial, dtype=torch.float32, device=volume.device)
    corners = itertools.product(*(_window_starts(size, p, s) for size, p, s in zip(spatial, patch_size, stride)))
    windows = [tuple(slice(start, start + p) for start, p in zip(corner, patch_size)) for corner in corners]
    for first in range(0, len(windows), batch_size):
        batch_windows = windows[first : first + batch_size]
        batch = torch.stack([volume[(slice(None),) + window] for window in batch_windows])
        probabilities = _class_probabilities(net, batch, num_classes)
        for window, window_probabilities in zip(batch_windows, probabilities):
            every_class = (slice(None), *window)
            scores[every_class] += window_probabilities
            counts[window] += 1
    return scores / counts


def sliding_window_predict(
    net: nn.Module,
    image: np.ndarray,
    num_classes: int,
    patch_size: Sequence[int],
    stride: Sequence[int],
    device: str | torch.device = "cpu",
    batch_size: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Segment a 3D ``image (H, W, D)`` (or ``(channels, H, W, D)``) patch by patch (UA-MT's
    test procedure); a 2D ``patch_size`` and ``stride`` segment a 2D ``image (H, W)`` (or
    ``(channels, H, W)``) window by window alike.

    The image is zero-padded (symmetrically) up to at least ``patch_size``; windows of
    ``patch_size`` are taken every ``stride`` voxels along each axis, the last flush with
    the end; the softmax of each window is averaged where windows overlap; the padding is
    cropped off again. Returns ``(labels uint8 (H, W, D), probabilities float32 (C, H, W, D))``.
    A stride larger than the patch is refused: it would leave voxels uncovered.
    """
    rank = len(patch_size) if len(patch_size) in _COUNTS else 3
    if image.ndim not in (rank, rank + 1):
        expected = "an (H, W, D) image" if rank == 3 else "an (H, W) image with a 2D patch"
        raise ValueError(f"sliding_window_predict needs {expected} (or its channels first), got shape {image.shape}")
    patch_size, stride = _sizes("patch_size", patch_size, rank), _sizes("stride", stride, rank)
    if any(step > size for step, size in zip(stride, patch_size)):
        raise ValueError(
            f"stride {stride} must not exceed patch_size {patch_size} along any axis: "
            "a larger step leaves voxels that no window covers"
        )
    _check_batch_size(batch_size)
    channels = image if image.ndim > rank else image[None]
    pads = _symmetric_padding(channels.shape[1:], patch_size)
    padded = np.pad(channels.astype(np.float32, copy=False), [(0, 0), *pads], mode="constant", constant_values=0)
    with _inference_mode(net):
        volume = torch.from_numpy(padded).to(device)
        scores = _average_window_scores(net, volume, num_classes, patch_size, stride, batch_size)
    crop = tuple(slice(before, before + size) for (before, _), size in zip(pads, channels.shape[1:]))
    every_class = (slice(None), *crop)
    scores = scores[every_class]
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
    size: Sequence[int],
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


def predict_probabilities(
    net: nn.Module,
    image: np.ndarray,
    dataset: str,
    num_classes: int | None = None,
    patch_size: Sequence[int] | None = None,
    stride: Sequence[int] | None = None,
    **options: Any,
) -> np.ndarray:
    """The class probabilities ``float32 (C, *spatial)`` of a volume ``image`` (``(*spatial)``
    or ``(channels, *spatial)``) of a sliding-window dataset: :func:`sliding_window_predict`
    over the volume (3D patch) or over each slice across the spec's ``slice_axis`` (2D
    patch). Arguments as :func:`predict_volume`'s.
    """
    spec = get_dataset(dataset)
    if spec.inference != SLIDING_WINDOW:
        raise ValueError(f"{spec.title} is segmented slice by slice at a fixed size; it has no probability maps")
    num_classes = num_classes or spec.num_classes
    patch_size = spec.patch_size if patch_size is None else patch_size
    stride = spec.stride if stride is None else stride
    channels = image if image.ndim == 4 else image[None]
    if len(patch_size) == 3:
        return sliding_window_predict(net, channels, num_classes, patch_size, stride, **options)[1]
    axis = spec.slice_axis % 3
    probabilities = np.zeros((num_classes, *channels.shape[1:]), dtype=np.float32)
    for index in range(channels.shape[axis + 1]):
        section = np.take(channels, index, axis=axis + 1)
        np.moveaxis(probabilities, axis + 1, 1)[:, index] = sliding_window_predict(
            net, section, num_classes, patch_size, stride, **options
        )[1]
    return probabilities


def predict_volume(
    net: nn.Module,
    image: np.ndarray,
    dataset: str,
    num_classes: int | None = None,
    patch_size: Sequence[int] | None = None,
    stride: Sequence[int] | None = None,
    **options: Any,
) -> np.ndarray:
    """The uint8 label map of a volume ``image`` (laid out as the dataset's volumes) by the
    dataset's procedure.

    Sliding window (LA): :func:`sliding_window_predict` with windows of ``patch_size``
    every ``stride`` voxels (slice by slice for a 2D ``patch_size``, see
    :func:`predict_probabilities`). Slice-wise (ACDC): :func:`slicewise_predict` of the slices
    along the spec's ``slice_axis``, each resized to ``patch_size``; ``stride`` is not
    used. ``num_classes``, ``patch_size`` and ``stride`` default to the dataset's; ``options``
    (``device``, ``batch_size``) go to the procedure.
    """
    spec = get_dataset(dataset)
    num_classes = num_classes or spec.num_classes
    patch_size = spec.patch_size if patch_size is None else patch_size
    if spec.inference == SLIDING_WINDOW:
        stride = spec.stride if stride is None else stride
        if len(patch_size) == 3:
            return sliding_window_predict(net, image, num_classes, patch_size, stride, **options)[0]
        probabilities = predict_probabilities(net, image, dataset, num_classes, patch_size, stride, **options)
        return probabilities.argmax(axis=0).astype(np.uint8)
    slices = np.moveaxis(image, spec.slice_axis, 0)
    return np.moveaxis(slicewise_predict(net, slices, num_classes, patch_size, **options), 0, spec.slice_axis)
