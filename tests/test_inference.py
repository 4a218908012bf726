"""Sliding-window and slice-wise inference with tiny fake networks of known output."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mper.eval.inference import predict_volume, slicewise_predict, sliding_window_predict
from mper.nets import SegmentationOutput

CONFIDENT = 1000.0  # softmax of (-1000, 1000) is exactly (0, 1) in float32


class ThresholdNet(nn.Module):
    """Class ``round(3 x)`` (clipped to the class range), with certainty; records its inputs."""

    def __init__(self, num_classes: int = 2):
        super().__init__()
        self.num_classes = num_classes
        self.inputs: list[torch.Tensor] = []
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> SegmentationOutput:
        self.inputs.append(x.clone())
        assert not torch.is_grad_enabled() and not self.training
        label = (3 * x[:, 0]).round().clamp(0, self.num_classes - 1).long()
        one_hot = nn.functional.one_hot(label, self.num_classes).movedim(-1, 1).float()
        return SegmentationOutput(self.scale * CONFIDENT * (2 * one_hot - 1), x)


class FirstHalfNet(nn.Module):
    """Class 1 for the first half of each patch along axis 0, class 0 for the rest."""

    def forward(self, x: torch.Tensor) -> SegmentationOutput:
        half = x.shape[2] // 2
        logits = torch.full((x.shape[0], 2, *x.shape[2:]), -CONFIDENT)
        logits[:, 1, :half] = CONFIDENT
        logits[:, 0, half:] = CONFIDENT
        return SegmentationOutput(logits, x)


def block_volume(shape, seed=0):
    """Values in {0, 1/3, 2/3, 1}, constant over 2-voxel blocks."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 4, size=[(s + 1) // 2 for s in shape]) / 3
    fine = coarse.repeat(2, 0).repeat(2, 1).repeat(2, 2)
    return fine[: shape[0], : shape[1], : shape[2]].astype(np.float32)


def test_volume_smaller_than_the_patch_is_padded_and_cropped_back():
    image = block_volume((10, 13, 5))
    net = ThresholdNet().train()
    labels, probabilities = sliding_window_predict(net, image, 2, patch_size=(16, 16, 8), stride=(4, 4, 2))
    expected = (3 * image).round().clip(0, 1).astype(np.uint8)
    assert labels.dtype == np.uint8 and labels.shape == image.shape
    np.testing.assert_array_equal(labels, expected)
    assert probabilities.dtype == np.float32 and probabilities.shape == (2, *image.shape)
    np.testing.assert_array_equal(probabilities[1], expected.astype(np.float32))
    assert len(net.inputs) == 1
    # Symmetric zero padding: 6 -> 3 + 3 rows, 3 -> 1 + 2 columns, 3 -> 1 + 2 slices.
    np.testing.assert_array_equal(net.inputs[0][0, 0, 3:13, 1:14, 1:6].numpy(), image)
    assert net.inputs[0].sum() == pytest.approx(image.sum())
    assert net.training


def test_windows_step_by_the_stride_and_the_last_is_flush_with_the_end():
    # Axis sizes 20, 16, 11 with patch (16, 16, 8) and stride (3, 3, 2):
    # starts 0, 3, 4 | 0 | 0, 2, 3.
    image = np.arange(20 * 16 * 11, dtype=np.float32).reshape(20, 16, 11) / 1e5
    net = ThresholdNet()
    sliding_window_predict(net, image, 2, patch_size=(16, 16, 8), stride=(3, 3, 2), batch_size=4)
    patches = torch.cat(net.inputs)
    corners = sorted(np.unravel_index(int(p[0, 0, 0, 0] * 1e5 + 0.5), image.shape) for p in patches)
    assert [tuple(map(int, c)) for c in corners] == [(x, 0, z) for x in (0, 3, 4) for z in (0, 2, 3)]
    assert [len(batch) for batch in net.inputs] == [4, 4, 1]


def test_overlapping_windows_average_their_softmax():
    # Axis 0: 24 voxels, patch 16, stride 8 -> windows [0, 16) and [8, 24). The first half
    # of each window says class 1: rows 0-7 are seen once (1), rows 8-15 twice (1 and 0),
    # rows 16-23 once (0).
    labels, probabilities = sliding_window_predict(
        FirstHalfNet(), np.zeros((24, 16, 8), np.float32), 2, patch_size=(16, 16, 8), stride=(8, 8, 8)
    )
    expected = np.repeat([1.0, 0.5, 0.0], 8)[:, None, None] * np.ones((24, 16, 8))
    np.testing.assert_array_equal(probabilities[1], expected)
    # A tie (0.5 / 0.5) goes to the lower class.
    np.testing.assert_array_equal(labels, (expected > 0.5).astype(np.uint8))


def test_batch_size_does_not_change_the_result():
    image = block_volume((20, 18, 12), seed=1)
    options = {"patch_size": (16, 16, 8), "stride": (2, 2, 2)}
    one = sliding_window_predict(ThresholdNet(), image, 2, batch_size=1, **options)
    many = sliding_window_predict(ThresholdNet(), image, 2, batch_size=5, **options)
    np.testing.assert_array_equal(one[0], many[0])
    np.testing.assert_allclose(one[1], many[1], rtol=0, atol=1e-6)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match=r"\(H, W, D\)"):
        sliding_window_predict(ThresholdNet(), np.zeros((4, 4)), 2, patch_size=(16, 16, 8), stride=(8, 8, 8))
    with pytest.raises(ValueError, match="stride must be three positive integers"):
        sliding_window_predict(ThresholdNet(), np.zeros((4, 4, 4)), 2, patch_size=(16, 16, 8), stride=(0, 1, 1))
    with pytest.raises(ValueError, match="predicts 2 classes but num_classes=4"):
        sliding_window_predict(ThresholdNet(), np.zeros((4, 4, 4)), 4, patch_size=(16, 16, 8), stride=(8, 8, 4))


def test_a_stride_larger_than_the_patch_is_refused():
    with pytest.raises(ValueError, match=r"stride \(16, 8, 9\) must not exceed patch_size \(16, 16, 8\)"):
        sliding_window_predict(ThresholdNet(), np.zeros((40, 40, 20)), 2, patch_size=(16, 16, 8), stride=(16, 8, 9))


def test_slicewise_resizes_each_slice_and_back():
    volume = np.moveaxis(block_volume((30, 20, 3), seed=2), 2, 0)
    net = ThresholdNet(num_classes=4).train()
    labels = slicewise_predict(net, volume, 4, size=(64, 64), batch_size=2)
    assert labels.dtype == np.uint8 and labels.shape == volume.shape
    np.testing.assert_array_equal(labels, (3 * volume).round().astype(np.uint8))
    assert [tuple(x.shape) for x in net.inputs] == [(2, 1, 64, 64), (1, 1, 64, 64)]
    assert net.training


def test_slicewise_maps_the_network_grid_back_to_the_slice():
    # The net marks the upper half of its 32x32 input; on a 30-row slice that is rows 0-14.
    labels = slicewise_predict(FirstHalfNet(), np.zeros((2, 30, 20), np.float32), 2, size=(32, 32))
    expected = np.zeros((2, 30, 20), np.uint8)
    expected[:, :15] = 1
    np.testing.assert_array_equal(labels, expected)


def test_predict_volume_picks_the_dataset_procedure():
    volume = block_volume((16, 16, 8), seed=3)
    la = predict_volume(ThresholdNet(), volume, "la", patch_size=(16, 16, 8), stride=(4, 4, 4))
    np.testing.assert_array_equal(la, (3 * volume).round().clip(0, 1))
    acdc_net = ThresholdNet(num_classes=4)
    acdc = predict_volume(acdc_net, volume, "acdc", patch_size=(32, 32))
    np.testing.assert_array_equal(acdc, (3 * volume).round())
    assert acdc_net.inputs[0].shape == (16, 1, 32, 32)
    with pytest.raises(ValueError, match="dataset must be one of"):
        predict_volume(ThresholdNet(), volume, "brats")


def test_slicewise_round_trip_keeps_the_last_row_and_column():
    """Shrinking 32 -> 16 by zoom lands a hair past the edge; that row must not become 0."""
    volume = np.full((1, 16, 8), 1.0, np.float32)
    labels = slicewise_predict(ThresholdNet(num_classes=4), volume, 4, size=(32, 32))
    np.testing.assert_array_equal(labels, np.full((1, 16, 8), 3, np.uint8))
