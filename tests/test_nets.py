"""Shapes, heads and gradients of the 2D U-Net and the 3D V-Net."""

from __future__ import annotations

import re

import pytest
import torch

from mper.datasets import get_dataset
from mper.nets import SegmentationOutput, UNet2D, VNet3D

SMALL_UNET = {"channels": (8, 16, 32, 64, 128)}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def small_nets():
    return [
        (UNet2D(num_classes=4, **SMALL_UNET), (2, 1, 32, 48)),
        (VNet3D(num_classes=2, base_filters=8), (2, 1, 16, 32, 16)),
    ]


@pytest.mark.parametrize("net, shape", small_nets(), ids=["unet2d", "vnet3d"])
def test_outputs_have_the_documented_shapes(net, shape):
    out = net(torch.randn(shape))
    batch, _, *spatial = shape
    assert isinstance(out, SegmentationOutput)
    assert out.pred.shape == (batch, net.num_classes, *spatial)
    assert out.feat.shape == (batch, net.feature_dim, *spatial)
    assert all(t.dtype == torch.float32 for t in out)


def test_feature_dim_is_the_first_width():
    assert UNet2D().feature_dim == 16
    assert UNet2D(**SMALL_UNET).feature_dim == 8
    assert VNet3D().feature_dim == 16
    assert VNet3D(base_filters=8).feature_dim == 8


def test_published_sizes():
    """Parameter counts of the published networks."""
    assert sum(p.numel() for p in UNet2D().parameters()) == 1_813_252
    assert sum(p.numel() for p in VNet3D().parameters()) == 9_448_866


@pytest.mark.parametrize("net, shape", small_nets(), ids=["unet2d", "vnet3d"])
def test_gradients_reach_every_parameter(net, shape):
    out = net(torch.randn(shape))
    (out.pred.sum() + out.feat.square().mean()).backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_pred_is_a_1x1_conv_of_feat():
    net = VNet3D(base_filters=8).eval()
    out = net(torch.randn(1, 1, 16, 16, 16))
    torch.testing.assert_close(out.pred, net.classifier(out.feat))


def test_vnet_dropout_acts_only_in_training():
    net = VNet3D(base_filters=8)
    x = torch.randn(2, 1, 16, 16, 16)
    net.eval()
    torch.testing.assert_close(net(x).pred, net(x).pred)
    net.train()
    assert not torch.allclose(net(x).feat, net(x).feat)
    without_dropout = VNet3D(base_filters=8, has_dropout=False).train()
    torch.testing.assert_close(without_dropout(x).feat, without_dropout(x).feat)


@pytest.mark.parametrize(
    "net, shape",
    [(UNet2D(**SMALL_UNET), (1, 1, 32, 40)), (VNet3D(base_filters=8), (1, 1, 16, 16, 12))],
    ids=["unet2d", "vnet3d"],
)
def test_sizes_not_divisible_by_16_are_refused_with_the_rule(net, shape):
    with pytest.raises(ValueError, match="multiple of 16"):
        net(torch.randn(shape))


def test_wrong_channel_count_is_refused():
    with pytest.raises(ValueError, match=r"\(B, 1, size, size\)"):
        UNet2D(**SMALL_UNET)(torch.randn(1, 3, 32, 32))


def test_a_dataset_builds_its_network_with_the_options():
    la = get_dataset("la").build_network(base_filters=8)
    acdc = get_dataset("acdc").build_network(4, **SMALL_UNET)
    assert isinstance(la, VNet3D) and la.feature_dim == 8 and la.num_classes == 2
    assert isinstance(acdc, UNet2D) and acdc.channels == SMALL_UNET["channels"]
    with pytest.raises(ValueError, match="dataset must be one of la, acdc; got 'brats'"):
        get_dataset("brats")


def test_bad_constructor_arguments_are_refused():
    with pytest.raises(ValueError, match="5 channel counts"):
        UNet2D(channels=(8, 16, 32))
    with pytest.raises(ValueError, match="normalization must be one of"):
        VNet3D(normalization="layernorm")


@pytest.mark.parametrize(
    "options, words",
    [
        (
            {"channels": (4, 8, 16, 32, 0)},
            "channels must be 5 positive integers (one per level), got [4, 8, 16, 32, 0]",
        ),
        ({"channels": (4, 8, 16, 32, -4)}, "channels must be 5 positive integers"),
        ({"channels": (4, 8, 16.5, 32, 64)}, "channels must be 5 positive integers"),
        ({"dropout": (0.1, 0.1, 0.2, 0.3, 1.0)}, "dropout must be 5 rates in [0, 1) (one per level)"),
        ({"dropout": 0.5}, "dropout must be a list of 5 values (one per level), got 0.5"),
    ],
)
def test_unet2d_refuses_a_level_width_or_rate_it_cannot_build(options, words):
    """Only the first width was checked (it is the feature depth): a later 0 or -4 failed
    inside torch with a traceback."""
    with pytest.raises(ValueError, match=re.escape(words)):
        UNet2D(1, 4, **options)


def test_vnet3d_names_its_own_setting_for_a_width_it_cannot_build():
    with pytest.raises(ValueError, match=re.escape("base_filters must be a positive integer, got 0")):
        VNet3D(1, 2, base_filters=0)
