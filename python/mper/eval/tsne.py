"""A t-SNE map of voxel embeddings, coloured by class, with the prototypes marked
(the paper's Fig. 5).

The network's ``feat`` (what the prototype classifier compares with the prototypes) is
computed on a few cases as the dataset's inference reads them (:mod:`mper.datasets`):
its slices resized to the training size (slice-wise), or a patch of the training size
centred on the foreground (sliding window). A seeded uniform sample of voxels per
ground-truth class and, when the run has a prototype bank, the prototypes are scaled to
unit length (the classifier's cosine geometry) and embedded together by scikit-learn's
``TSNE``. Needs scikit-learn and matplotlib (``pip install 'mper[figures]'``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mper.data.files import written_whole
from mper.datasets import SLIDING_WINDOW, DatasetSpec
from mper.errors import ConfigError
from mper.nn.kmeans import ClassVoxelSampler

from .figures import CLASS_COLOURS, most_foreground_slice

VOXELS_PER_CLASS = 400
MAX_PERPLEXITY = 30.0


def require_figure_packages() -> None:
    """Raise :class:`~mper.errors.ConfigError` saying what to install when scikit-learn
    or matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
        import sklearn  # noqa: F401
    except ImportError as error:
        raise ConfigError(f"the t-SNE figure needs {error.name}: pip install 'mper[figures]'") from error


def _network_input(
    image: np.ndarray, label: np.ndarray, spec: DatasetSpec, patch_size: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(image (B, C, *patch), label (B, *patch))`` as the network was trained on them:
    every slice along the spec's ``slice_axis`` resized (slice-wise inference), or one
    patch around the foreground's centre (sliding window; with a 2D patch, in the slice
    across ``slice_axis`` with the most foreground). Volumes with several channels carry
    them first."""
    if spec.inference != SLIDING_WINDOW:
        slices = torch.from_numpy(np.ascontiguousarray(np.moveaxis(image, spec.slice_axis, 0), np.float32))[:, None]
        labels = torch.from_numpy(np.ascontiguousarray(np.moveaxis(label, spec.slice_axis, 0), np.float32))[:, None]
        size = tuple(patch_size)
        return F.interpolate(slices, size=size, mode="nearest"), F.interpolate(labels, size=size)[:, 0].long()
    channels = image if image.ndim == label.ndim + 1 else image[None]
    if len(patch_size) == 2:
        index = most_foreground_slice(label, label, spec.slice_axis)
        channels = np.take(channels, index, axis=spec.slice_axis % 3 + 1)
        label = np.take(label, index, axis=spec.slice_axis)
    pads = [(0, max(patch - size, 0)) for size, patch in zip(label.shape, patch_size)]
    channels, label = np.pad(channels, [(0, 0), *pads]), np.pad(label, pads)
    centre = [int(axis.mean()) if axis.size else size // 2 for axis, size in zip(np.nonzero(label), label.shape)]
    starts = [min(max(c - patch // 2, 0), size - patch) for c, patch, size in zip(centre, patch_size, label.shape)]
    window = tuple(slice(start, start + patch) for start, patch in zip(starts, patch_size))
    return (
        torch.from_numpy(np.ascontiguousarray(channels[(slice(None),) + window], np.float32))[None],
        torch.from_numpy(np.ascontiguousarray(label[window], np.int64))[None],
    )


@torch.no_grad()
def sample_embeddings(
    net: nn.Module,
    volumes: Sequence[tuple[np.ndarray, np.ndarray]],
    spec: DatasetSpec,
    num_classes: int,
    patch_size: Sequence[int],
    device: str | torch.device = "cpu",
    voxels_per_class: int = VOXELS_PER_CLASS,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """``(features (N, D), classes (N,))``: at most ``voxels_per_class`` voxels of each
    class, drawn uniformly from the ``(image, label)`` volumes of dataset ``spec``."""
    sampler = ClassVoxelSampler(num_classes, voxels_per_class, torch.Generator().manual_seed(seed))
    was_training = net.training
    net.eval()
    for image, label in volumes:
        batch, labels = _network_input(image, label, spec, patch_size)
        sampler.add(net(batch.to(device)).feat, labels)
    net.train(was_training)
    features, classes = [], []
    for class_index in range(num_classes):
        chosen = sampler.class_features(class_index)
        if len(chosen):
            features.append(chosen.numpy())
            classes.append(np.full(len(chosen), class_index))
    return np.concatenate(features), np.concatenate(classes)


def tsne_map(features: np.ndarray, prototypes: np.ndarray | None, seed: int = 0) -> np.ndarray:
    """2D t-SNE coordinates of ``features`` followed by ``prototypes`` (unit-length rows)."""
    from sklearn.manifold import TSNE

    points = features if prototypes is None else np.concatenate([features, prototypes])
    points = points / np.maximum(np.linalg.norm(points, axis=1, keepdims=True), 1e-12)
    perplexity = min(MAX_PERPLEXITY, (len(points) - 1) / 3)
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(points)


def save_tsne_figure(
    features: np.ndarray,
    classes: np.ndarray,
    prototypes: np.ndarray | None,
    per_class: int,
    class_names: Sequence[str],
    path: str | Path,
    title: str,
    seed: int = 0,
) -> Path:
    """Draw the t-SNE map: voxels as dots, prototype ``p_c^k`` (bank row ``c*K + k``) as
    a star of its class's colour. Returns ``path`` (PNG)."""
    require_figure_packages()
    from matplotlib.figure import Figure

    coordinates = tsne_map(features, prototypes, seed)
    voxels, marked = coordinates[: len(features)], coordinates[len(features) :]
    figure = Figure(figsize=(5.5, 5), layout="constrained")
    axis = figure.subplots()
    for class_index, name in enumerate(class_names):
        colour = _colour(class_index)
        here = classes == class_index
        if here.any():
            x, y = voxels[here].T
            axis.scatter(x, y, s=4, alpha=0.5, color=colour, label=name)
        rows = slice(class_index * per_class, (class_index + 1) * per_class)
        if len(marked):
            x, y = marked[rows].T
            axis.scatter(x, y, s=220, marker="*", color=colour, edgecolors="black", linewidths=1.0)
    if len(marked):
        axis.scatter([], [], s=120, marker="*", color="white", edgecolors="black", label="prototypes")
    axis.legend(fontsize="small", markerscale=2)
    axis.set_xticks([])
    axis.set_yticks([])
    axis.set_title(title, fontsize="medium")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with written_whole(path) as aside:
        figure.savefig(aside, dpi=120, format="png")
    return path


def _colour(class_index: int) -> tuple[float, float, float]:
    """Background grey, class ``c`` the overlay colour of label ``c`` (:mod:`mper.eval.figures`)."""
    if class_index == 0:
        return (0.6, 0.6, 0.6)
    red, green, blue = CLASS_COLOURS[(class_index - 1) % len(CLASS_COLOURS)]
    return (red / 255, green / 255, blue / 255)
