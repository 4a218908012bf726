"""Segmentation networks: the 2D U-Net (ACDC) and the 3D V-Net (LA).

Both return :class:`SegmentationOutput` ``(pred, feat, emb)``; see :mod:`mper.nets.base`.
"""
from __future__ import annotations

from typing import Any

from .base import SIZE_MULTIPLE, SegmentationNet, SegmentationOutput
from .unet2d import UNet2D
from .vnet3d import VNet3D

NETWORKS: dict[str, type[SegmentationNet]] = {"la": VNet3D, "acdc": UNet2D}


def build_network(dataset: str, num_classes: int, **options: Any) -> SegmentationNet:
    """The network for ``dataset`` (``"la"``: :class:`VNet3D`, ``"acdc"``: :class:`UNet2D`).

    ``options`` go to the constructor, e.g. ``channels=(8, 16, 32, 64, 128)`` for a small
    U-Net or ``base_filters=8`` for a small V-Net.
    """
    if dataset not in NETWORKS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(NETWORKS)}")
    return NETWORKS[dataset](num_classes=num_classes, **options)


__all__ = [
    "NETWORKS",
    "SIZE_MULTIPLE",
    "SegmentationNet",
    "SegmentationOutput",
    "UNet2D",
    "VNet3D",
    "build_network",
]
