"""The t-SNE map: voxels read as each dataset's inference reads them, sampled per class,
drawn with the prototypes marked."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mper.datasets import get_dataset
from mper.eval.tsne import _network_input, sample_embeddings, save_tsne_figure
from mper.nets import SegmentationOutput


class IntensityFeatures(nn.Module):
    """``feat``: the image and its negation, so a voxel's embedding says which class drew it."""

    def forward(self, image: torch.Tensor) -> SegmentationOutput:
        feat = torch.cat([image, -image], dim=1)
        return SegmentationOutput(feat, feat)


def test_slice_wise_datasets_give_every_slice_resized():
    spec = get_dataset("acdc")
    image = np.random.default_rng(0).random((3, 40, 40), dtype=np.float32)
    label = np.zeros((3, 40, 40), np.uint8)
    label[1, 10:30, 10:30] = 2
    batch, labels = _network_input(image, label, spec, (20, 20))
    assert batch.shape == (3, 1, 20, 20) and labels.shape == (3, 20, 20) and labels.dtype == torch.int64
    assert labels[0].sum() == 0 and labels[2].sum() == 0 and set(labels[1].unique().tolist()) == {0, 2}


def test_sliding_window_datasets_give_one_patch_around_the_foreground():
    spec = get_dataset("la")
    image = np.zeros((50, 60, 40), np.float32)
    label = np.zeros((50, 60, 40), np.uint8)
    label[35:45, 40:52, 5:15] = 1  # away from the volume's centre
    image[label == 1] = 1.0
    batch, labels = _network_input(image, label, spec, (24, 24, 16))
    assert batch.shape == (1, 1, 24, 24, 16) and labels.shape == (1, 24, 24, 16)
    assert int(labels.sum()) == int(label.sum())  # the whole atrium is in the patch
    assert torch.equal(batch[0, 0] == 1.0, labels[0] == 1)


def test_embeddings_are_sampled_per_class_from_the_network_features():
    spec = get_dataset("acdc")
    label = np.zeros((2, 16, 16), np.uint8)
    label[:, 4:12, 4:12] = 1
    label[:, 6:8, 6:8] = 3
    image = label.astype(np.float32) / 10
    features, classes = sample_embeddings(IntensityFeatures(), [(image, label)], spec, 4, (16, 16), voxels_per_class=50)
    assert features.shape == (len(classes), 2)
    assert [int((classes == c).sum()) for c in range(4)] == [50, 50, 0, 8]
    np.testing.assert_allclose(features[:, 0], classes / 10, atol=1e-6)
    np.testing.assert_allclose(features[:, 1], -classes / 10, atol=1e-6)


def test_the_map_is_a_png_with_the_prototypes_marked(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    generator = np.random.default_rng(0)
    classes = np.repeat(np.arange(3), 20)
    features = generator.normal(size=(60, 8)) + 4 * np.eye(8)[classes]
    prototypes = np.eye(8)[np.repeat(np.arange(3), 2)] + 0.1 * generator.normal(size=(6, 8))
    path = save_tsne_figure(
        features, classes, prototypes, 2, ("background", "a", "b"), tmp_path / "map" / "tsne.png", "test"
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
