"""The 3D V-Net used for LA (the UA-MT / BCP V-Net).

Five resolution levels of width ``base_filters * 2**level``. Each stage is a stack of
conv3x3x3-norm-ReLU layers (1, 2, 3, 3, 3 layers in the encoder; 3, 3, 2, 1 in the
decoder) without residual connections. Downsampling is a stride-2 2x2x2 conv,
upsampling a stride-2 2x2x2 transposed conv, both followed by norm-ReLU; skips are
added, not concatenated. In training, Dropout3d(0.5) acts on the bottleneck and on the
last decoder map. That last map (``base_filters`` wide, full resolution) is ``feat``.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import SegmentationNet

ENCODER_DEPTHS = (1, 2, 3, 3, 3)
DECODER_DEPTHS = (3, 3, 2, 1)
DROPOUT_RATE = 0.5
NORMALIZATIONS = ("batchnorm", "groupnorm", "instancenorm", "none")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batchnorm":
        return nn.BatchNorm3d(channels)
    if kind == "groupnorm":
        return nn.GroupNorm(num_groups=16, num_channels=channels)
    if kind == "instancenorm":
        return nn.InstanceNorm3d(channels)
    return nn.Identity()


def _stage(depth: int, in_channels: int, out_channels: int, norm: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for index in range(depth):
        layers += [
            nn.Conv3d(in_channels if index == 0 else out_channels, out_channels, 3, padding=1),
            _norm(norm, out_channels),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers)


def _resample(conv_type: type[nn.Module], in_channels: int, out_channels: int, norm: str) -> nn.Sequential:
    """A stride-2 2x2x2 (transposed) conv followed by norm-ReLU."""
    return nn.Sequential(
        conv_type(in_channels, out_channels, kernel_size=2, stride=2),
        _norm(norm, out_channels),
        nn.ReLU(inplace=True),
    )


class VNet3D(SegmentationNet):
    """3D V-Net returning :class:`~mper.nets.base.SegmentationOutput`.

    ``normalization``: ``"batchnorm"`` (default), ``"groupnorm"`` (16 groups),
    ``"instancenorm"`` or ``"none"``. ``has_dropout`` switches the two Dropout3d(0.5)
    layers, which act only in training mode. ``feature_dim`` is ``base_filters``;
    ``classifier_kernel`` is the side of the classifier conv (1 by default).
    """

    display_name = "V-Net"

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        base_filters: int = 16,
        normalization: str = "batchnorm",
        has_dropout: bool = True,
        classifier_kernel: int = 1,
    ):
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
        if isinstance(base_filters, bool) or not isinstance(base_filters, int) or base_filters < 1:
            raise ValueError(f"base_filters must be a positive integer, got {base_filters!r}")
        if normalization == "groupnorm" and base_filters % 16:
            raise ValueError(f"groupnorm uses 16 groups, so base_filters must be a multiple of 16, got {base_filters}")
        super().__init__(3, in_channels, num_classes, feature_dim=base_filters, classifier_kernel=classifier_kernel)
        self.has_dropout = has_dropout
        widths = [base_filters * 2**level for level in range(len(ENCODER_DEPTHS))]
        widths_in = [in_channels] + widths[1:]
        self.encoder = nn.ModuleList(
            _stage(depth, width_in, width, normalization)
            for depth, width_in, width in zip(ENCODER_DEPTHS, widths_in, widths)
        )
        self.downsample = nn.ModuleList(_resample(nn.Conv3d, width, 2 * width, normalization) for width in widths[:-1])
        decoder_widths = widths[-2::-1]
        self.upsample = nn.ModuleList(
            _resample(nn.ConvTranspose3d, 2 * width, width, normalization) for width in decoder_widths
        )
        self.decoder = nn.ModuleList(
            _stage(depth, width, width, normalization) for depth, width in zip(DECODER_DEPTHS, decoder_widths)
        )
        self.dropout = nn.Dropout3d(DROPOUT_RATE)

    def decoder_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last decoder map, ``base_filters`` wide, at the input's resolution."""
        skips = []
        for level, stage in enumerate(self.encoder):
            x = stage(x if level == 0 else self.downsample[level - 1](x))
            skips.append(x)
        x = self._maybe_dropout(skips.pop())
        for upsample, stage in zip(self.upsample, self.decoder):
            x = stage(upsample(x) + skips.pop())
        return self._maybe_dropout(x)

    def _maybe_dropout(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(x) if self.has_dropout else x
