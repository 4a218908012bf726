"""Inputs and comparisons shared by the op tests (CPU and CUDA)."""

from __future__ import annotations

import torch

import mper.reference as ref

# Both sides compute in float32 (float64) from the same inputs; float16/bfloat16 outputs
# differ by the final rounding only.
TOLERANCE = {
    torch.float32: dict(rtol=1e-4, atol=1e-4),
    torch.float64: dict(rtol=1e-7, atol=1e-9),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2),
}


def make_features(batch, depth, spatial, dtype, seed, device="cpu") -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    feat = torch.randn((batch, depth, *spatial), generator=generator) + 0.3
    return feat.to(device=device, dtype=dtype)


def make_bank(rows, depth, seed, device="cpu") -> torch.Tensor:
    generator = torch.Generator().manual_seed(1000 + seed)
    return torch.randn((rows, depth), generator=generator).to(device)


def reliable_voxels(feat, bank, num_classes, margin=1e-3, require_most=True) -> torch.Tensor:
    """(B, *S) bool: voxels whose per-class and global argmaxes win by `margin`, where
    rounding cannot flip a choice (and so the gradient), and whose feature norm is not
    tiny (the gradient of z/|z| scales rounding errors by 1/|z|).

    Asserts that most voxels are kept (unless `require_most` is False, for a caller that
    handles a sparse mask itself), so that a comparison on them cannot pass by checking
    next to nothing."""
    sim = ref.cosine_similarity(feat.detach().double(), bank.double())
    per_class = sim.reshape(sim.shape[0], num_classes, -1)
    norms = feat.detach().double().movedim(1, -1).reshape(sim.shape[0], -1).norm(dim=1)
    ok = norms > 0.1
    for scores in (per_class, sim.unsqueeze(1)):
        if scores.shape[-1] > 1:
            top2 = scores.topk(2, dim=-1).values
            ok &= ((top2[..., 0] - top2[..., 1]) > margin).all(dim=1)
    if require_most:
        assert 2 * int(ok.sum()) > ok.numel(), (
            f"only {int(ok.sum())} of {ok.numel()} voxels are reliable: a comparison on them would check too little"
        )
    batch, spatial = feat.shape[0], feat.shape[2:]
    return ok.reshape(batch, *spatial)


def assert_close_where(got, want, keep, tol) -> None:
    keep = keep.expand_as(got)
    torch.testing.assert_close(got[keep].double(), want[keep].double(), **tol)
