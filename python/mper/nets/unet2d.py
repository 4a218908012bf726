"""The 2D U-Net used for ACDC (the SSL4MIS U-Net; 1x1 classifier head by default).

Encoder: five conv blocks (conv3x3-BN-LeakyReLU-Dropout-conv3x3-BN-LeakyReLU), the
last four each after a 2x2 max-pool. Decoder: four up blocks, each a 1x1 conv to the
skip's width, a bilinear x2 upsample, concatenation with the skip and a conv block
without dropout. The last decoder map (``channels[0]`` wide, full resolution) is
``feat``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .base import SegmentationNet

NUM_LEVELS = 5


class _ConvBlock(nn.Sequential):
    """conv3x3-BN-LeakyReLU-Dropout-conv3x3-BN-LeakyReLU."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(),
            nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(),
        )


class _UpBlock(nn.Module):
    """1x1 conv to the skip's width, bilinear x2, concatenate with the skip, conv block."""

    def __init__(self, deep_channels: int, skip_channels: int):
        super().__init__()
        self.reduce = nn.Conv2d(deep_channels, skip_channels, kernel_size=1)
        self.upsample = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.conv = _ConvBlock(2 * skip_channels, skip_channels, dropout=0.0)

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        upsampled = self.upsample(self.reduce(deep))
        return self.conv(torch.cat([skip, upsampled], dim=1))


class UNet2D(SegmentationNet):
    """2D U-Net returning :class:`~mper.nets.base.SegmentationOutput`.

    ``channels`` and ``dropout`` give the width and dropout rate of the five encoder
    levels; ``feature_dim`` is ``channels[0]``; ``classifier_kernel`` is the side of the
    classifier conv (1, or 3 as in the authors' code).
    """

    display_name = "U-Net"

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 4,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        dropout: Sequence[float] = (0.05, 0.1, 0.2, 0.3, 0.5),
        classifier_kernel: int = 1,
    ):
        for name, values in (("channels", channels), ("dropout", dropout)):
            if not isinstance(values, (list, tuple)):
                raise ValueError(f"{name} must be a list of {NUM_LEVELS} values (one per level), got {values!r}")
        channels, dropout = tuple(channels), tuple(dropout)
        if len(channels) != NUM_LEVELS or len(dropout) != NUM_LEVELS:
            raise ValueError(
                f"UNet2D needs {NUM_LEVELS} channel counts and {NUM_LEVELS} dropout rates "
                f"(one per level), got channels={channels}, dropout={dropout}"
            )
        if not all(isinstance(width, int) and not isinstance(width, bool) and width >= 1 for width in channels):
            raise ValueError(f"channels must be {NUM_LEVELS} positive integers (one per level), got {list(channels)}")
        if not all(isinstance(rate, (int, float)) and 0.0 <= rate < 1.0 for rate in dropout):
            raise ValueError(f"dropout must be {NUM_LEVELS} rates in [0, 1) (one per level), got {list(dropout)}")
        super().__init__(2, in_channels, num_classes, feature_dim=channels[0], classifier_kernel=classifier_kernel)
        self.channels = channels
        widths_in = (in_channels,) + channels[:-1]
        self.encoder = nn.ModuleList(
            _ConvBlock(width_in, width_out, rate) for width_in, width_out, rate in zip(widths_in, channels, dropout)
        )
        self.pool = nn.MaxPool2d(2)
        self.decoder = nn.ModuleList(
            _UpBlock(channels[level + 1], channels[level]) for level in reversed(range(NUM_LEVELS - 1))
        )

    def decoder_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last decoder map, ``channels[0]`` wide, at the input's resolution."""
        skips = []
        for level, block in enumerate(self.encoder):
            x = block(x if level == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for up_block in self.decoder:
            x = up_block(x, skips.pop())
        return x
