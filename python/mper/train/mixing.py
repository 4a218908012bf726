"""Copy-paste mixing (docs/method.md, "Training"): a mask with a zero-valued box, and the mix it defines.

The mix mask ``M`` is 1 everywhere except in a box whose sides are a fraction (2/3) of
the image's sides, placed uniformly at random. ``copy_paste(a, b, M) = a M + b (1 - M)``
keeps ``a`` around the box and pastes the box from ``b``; images, labels and confidence
maps are mixed with the same mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

#: Absorbs the rounding of fractions such as 2/3 written as a float (3 * 0.666... < 2).
_FRACTION_SLACK = 1e-6


def box_size(spatial_shape: Sequence[int], box_fraction: float) -> tuple[int, ...]:
    """Side lengths of the pasted box: ``floor(side * box_fraction)`` per axis.

    2/3 gives 74x74x53 for the 112x112x80 LA patch and 170x170 for 256x256 ACDC slices.
    """
    if not 0 < box_fraction <= 1:
        raise ValueError(f"box_fraction must be in (0, 1], got {box_fraction}")
    return tuple(int(side * box_fraction + _FRACTION_SLACK) for side in spatial_shape)


def box_mask(
    spatial_shape: Sequence[int],
    box_fraction: float,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Mix mask ``M`` of shape ``spatial_shape`` (float32) on ``device``: 1 outside a box, 0 inside.

    The box corner is drawn uniformly from every position that keeps the box inside the
    image, using ``generator`` (a CPU generator) so that the draw can be replayed. The
    corner stays on the host and the mask is made on ``device``, so that building it
    never copies from the host to a GPU (a copy the host would wait for).
    """
    mask = torch.ones(tuple(spatial_shape), dtype=torch.float32, device=device)
    box = []
    for side, length in zip(spatial_shape, box_size(spatial_shape, box_fraction)):
        start = int(torch.randint(0, side - length + 1, (1,), generator=generator))
        box.append(slice(start, start + length))
    mask[tuple(box)] = 0
    return mask


def copy_paste(first: torch.Tensor, second: torch.Tensor, mix_mask: torch.Tensor) -> torch.Tensor:
    """``first * M + second * (1 - M)``, exact for any dtype (labels stay integers).

    ``mix_mask`` broadcasts against the trailing (spatial) dimensions of ``first`` and
    ``second``, so one mask mixes images ``(B, 1, *S)`` and labels ``(B, *S)`` alike.
    """
    return torch.where(mix_mask.bool(), first, second)
