"""Whole networks, as in ``monai.networks.nets``: the 2D U-Net (ACDC) and the 3D V-Net (LA).

Both return :class:`SegmentationOutput` ``(pred, feat)``; see :mod:`mper.nets.base`.
Which dataset uses which is said by its spec (:mod:`mper.datasets`). The sibling
:mod:`mper.nn` holds layers that go into or onto a network, as ``torch.nn`` does: the
prototype head, which reads any network's ``feat`` and so lives apart from the networks.
"""

from __future__ import annotations

from .base import SIZE_MULTIPLE, SegmentationNet, SegmentationOutput
from .unet2d import UNet2D
from .vnet3d import VNet3D

__all__ = [
    "SIZE_MULTIPLE",
    "SegmentationNet",
    "SegmentationOutput",
    "UNet2D",
    "VNet3D",
]
