"""Plain eager-PyTorch versions of the four prototype ops.

These are written the obvious way (move channels last, normalise, matrix product, max,
cross-entropy, Python loops) and define what :mod:`mper.ops` computes. Tests check the
fused kernels against them and the benchmarks time them as the baseline.

Shapes: features ``(B, D, *spatial)``; prototype bank ``(C*K, D)`` with row ``c*K + k``
holding prototype ``p_c^k``; labels and masks ``(B, *spatial)``; class-wise outputs
``(B, C, *spatial)``.

Conventions shared with the kernels:

* Cosine similarity normalises with ``max(|x|, 1e-12)``; a vector whose norm is below
  ``1e-12`` has cosine 0 to everything and gets no gradient (``F.normalize`` would send
  it a gradient of ``1e12``).
* float16 / bfloat16 inputs are computed in float32 and rounded once at the end.
* Ties in an argmax go to the lowest index.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

NORM_EPS = 1e-12


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def normalize(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``x / |x|`` along ``dim``; zero (with zero gradient) where ``|x| < 1e-12``."""
    norm = x.norm(dim=dim, keepdim=True)
    scale = torch.where(norm > NORM_EPS, 1.0 / norm.clamp_min(NORM_EPS), torch.zeros_like(norm))
    return x * scale


def _voxels(feat: torch.Tensor) -> torch.Tensor:
    """``(B, D, *S) -> (B*prod(S), D)`` in the compute dtype."""
    return feat.movedim(1, -1).reshape(-1, feat.shape[1]).to(_compute_dtype(feat))


def cosine_similarity(feat: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """``s[v, j] = cos(z_v, p_j)`` for every voxel ``v`` and bank row ``j``: ``(N, C*K)``."""
    z = normalize(_voxels(feat))
    p = normalize(prototypes.detach().to(z.dtype))
    return z @ p.t()


def _class_major(per_voxel: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
    """``(N, C) -> (B, C, *S)``."""
    batch, spatial = feat.shape[0], feat.shape[2:]
    return per_voxel.reshape(batch, *spatial, -1).movedim(-1, 1)


def proto_classify(
    feat: torch.Tensor, prototypes: torch.Tensor, num_classes: int, tau: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-prototype classifier (docs/method.md, "Prototype classifier"): ``logit_c = max_k cos(z, p_c^k) / tau``.

    Returns ``(logits, assign)``, both ``(B, C, *S)``; ``assign`` (int64) is the argmax
    over k. Differentiable in ``feat`` only.
    """
    sim = cosine_similarity(feat, prototypes)
    per_class = sim.reshape(sim.shape[0], num_classes, -1)
    best, assign = per_class.max(dim=2)
    logits = _class_major(best / tau, feat).to(feat.dtype)
    return logits, _class_major(assign, feat)


def proto_infonce(
    feat: torch.Tensor,
    prototypes: torch.Tensor,
    tau: float = 0.1,
    ignore_index: int | None = None,
) -> torch.Tensor:
    """InfoNCE over all prototypes (Eq. 5), the nearest prototype as the positive.

    Mean over voxels of ``-log softmax_j(s_j / tau)[n]`` with ``n = argmax_j s_j``;
    voxels whose ``n`` equals ``ignore_index`` are left out; 0 when none is left.
    """
    sim = cosine_similarity(feat, prototypes)
    nearest = sim.argmax(dim=1)
    per_voxel = F.cross_entropy(sim / tau, nearest, reduction="none")
    keep = torch.ones_like(nearest, dtype=torch.bool)
    if ignore_index is not None:
        keep = nearest != ignore_index
    loss = (per_voxel * keep).sum() / keep.sum().clamp_min(1)
    return loss.to(feat.dtype)


def proto_classify_infonce(
    feat: torch.Tensor,
    prototypes: torch.Tensor,
    num_classes: int,
    tau: float = 0.1,
    nce_tau: float = 0.1,
    ignore_index: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`proto_classify` and :func:`proto_infonce` of the same features together."""
    logits, assign = proto_classify(feat, prototypes, num_classes, tau)
    return logits, assign, proto_infonce(feat, prototypes, nce_tau, ignore_index)


def proto_accumulate(
    emb: torch.Tensor,
    labels: torch.Tensor,
    assign: torch.Tensor,
    mask: torch.Tensor,
    num_classes: int,
    num_protos: int,
    check_labels: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-prototype sums and counts of ``emb`` over the voxels in ``mask`` (docs/method.md, "Prototype update").

    A voxel with label ``c`` adds to row ``c*K + assign[b, c, voxel]``. Returns
    ``sums (C*K, D)`` and ``counts (C*K,)``, float32 (float64 for float64 ``emb``).
    With ``check_labels`` a label outside ``[0, C)`` under the mask raises ``ValueError``;
    without, such voxels match no class and are skipped.
    """
    if check_labels:
        selected = labels[mask.bool()] if mask is not None else labels
        if ((selected < 0) | (selected >= num_classes)).any():
            raise ValueError(f"labels must lie in [0, num_classes) = [0, {num_classes}) under the mask")
    acc_dtype = _compute_dtype(emb)
    z = emb.movedim(1, -1).to(acc_dtype)
    depth = emb.shape[1]
    sums = torch.zeros(num_classes * num_protos, depth, dtype=acc_dtype, device=emb.device)
    counts = torch.zeros(num_classes * num_protos, dtype=acc_dtype, device=emb.device)
    for c in range(num_classes):
        for k in range(num_protos):
            chosen = (labels == c) & (assign[:, c] == k)
            if mask is not None:
                chosen &= mask.bool()
            sums[c * num_protos + k] = z[chosen].sum(dim=0)
            counts[c * num_protos + k] = chosen.sum()
    return sums, counts


@torch.no_grad()
def proto_ema_update_(
    prototypes: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor, momentum: float
) -> torch.Tensor:
    """In place ``p_j <- m p_j + (1 - m) sums_j / counts_j`` for rows with a count."""
    for j in range(prototypes.shape[0]):
        if counts[j] > 0:
            mean = sums[j] / counts[j]
            prototypes[j] = momentum * prototypes[j] + (1 - momentum) * mean.to(prototypes.dtype)
    return prototypes


def largest_component(labels: torch.Tensor, num_classes: int, check_labels: bool = True) -> torch.Tensor:
    """Keep, per image and foreground class ``c >= 1``, only the largest connected component.

    ``labels`` ``(B, H, W)`` or ``(B, D, H, W)``, integer. Full connectivity (8 neighbours
    in 2D, 26 in 3D), labelled by ``scipy.ndimage.label``; among equally large components
    the first in scan order is kept. Every other voxel becomes 0. With ``check_labels`` a
    label outside ``[0, C)`` raises ``ValueError``; without, such voxels become 0.
    """
    if check_labels and ((labels < 0) | (labels >= num_classes)).any():
        raise ValueError(f"labels must lie in [0, num_classes) = [0, {num_classes})")
    images = labels.detach().cpu().numpy()
    structure = ndimage.generate_binary_structure(images.ndim - 1, images.ndim - 1)
    cleaned = np.zeros_like(images)
    for image, out in zip(images, cleaned):
        for class_index in range(1, num_classes):
            components, count = ndimage.label(image == class_index, structure=structure)
            if count:
                sizes = np.bincount(components.ravel())[1:]
                out[components == 1 + int(np.argmax(sizes))] = class_index
    return torch.from_numpy(cleaned).to(labels.device)
