"""What the 2D U-Net and the 3D V-Net share: the two outputs and the classifier head.

Every segmentation network here ends in a decoder feature map ``feat`` with ``D``
channels at full input resolution. The ``classifier`` conv (``D -> C``) reads it and
gives the linear classifier's logits ``pred`` (a 1x1 conv, the per-voxel linear layer of
Eq. 3; ``classifier_kernel = 3`` gives the 3x3 conv of the authors' 2D code). The
prototype head (:class:`mper.nn.PrototypeHead`) reads ``feat`` too, and its bank is
averaged from ``feat``: the authors' code averages a 1x1 conv of it that is set to the
identity when self-training starts and never receives a gradient, so it stays equal
to ``feat`` (docs/method.md, "Networks").
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, NamedTuple

import torch
from torch import nn

#: Both networks halve the resolution four times, so inputs must be multiples of this.
SIZE_MULTIPLE = 16


class SegmentationOutput(NamedTuple):
    """The two outputs of a segmentation network.

    ``pred``: linear classifier logits ``(B, C, *spatial)``.
    ``feat``: last decoder feature map ``(B, D, *spatial)``, read by the prototype
    classifier and averaged into the prototypes.
    """

    pred: torch.Tensor
    feat: torch.Tensor


class SegmentationNet(nn.Module, ABC):
    """Base class: subclasses build the body and implement :meth:`decoder_features`.

    Attributes: ``in_channels``, ``num_classes``, ``feature_dim`` (``D``) and
    ``spatial_dims`` (2 or 3). ``classifier_kernel``: side of the classifier conv (odd,
    same padding). ``display_name`` names the plain network in results tables.
    """

    display_name: ClassVar[str]

    def __init__(
        self, spatial_dims: int, in_channels: int, num_classes: int, feature_dim: int, classifier_kernel: int = 1
    ):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if classifier_kernel < 1 or classifier_kernel % 2 == 0:
            raise ValueError(f"classifier_kernel must be a positive odd size (1 or 3), got {classifier_kernel}")
        sizes = {"in_channels": in_channels, "num_classes": num_classes, "feature_dim": feature_dim}
        for name, value in sizes.items():
            if value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.classifier = conv(feature_dim, num_classes, kernel_size=classifier_kernel, padding=classifier_kernel // 2)

    @abstractmethod
    def decoder_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last decoder feature map ``(B, D, *spatial)`` of a checked input."""

    def forward(self, x: torch.Tensor) -> SegmentationOutput:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``, spatial sizes multiples of 16."""
        self._check_input(x)
        feat = self.decoder_features(x)
        return SegmentationOutput(self.classifier(feat), feat)

    def _check_input(self, x: torch.Tensor) -> None:
        expected_ndim = self.spatial_dims + 2
        if x.ndim != expected_ndim or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects input of shape (B, {self.in_channels}, "
                f"{', '.join(['size'] * self.spatial_dims)}), got {tuple(x.shape)}"
            )
        spatial = tuple(x.shape[2:])
        if any(size % SIZE_MULTIPLE for size in spatial):
            raise ValueError(
                f"{type(self).__name__} needs every spatial size to be a multiple of "
                f"{SIZE_MULTIPLE} (e.g. 256x256 for ACDC, 112x112x80 for LA), got "
                f"{'x'.join(map(str, spatial))}; pad or crop the input first"
            )
