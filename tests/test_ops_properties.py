"""Property tests of the fused ops over random shapes, masks and banks (hypothesis)."""

from __future__ import annotations

import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import mper.reference as ref
from mper import ops
from op_cases import make_bank, make_features, reliable_voxels

spatial_shapes = st.one_of(
    st.tuples(st.integers(1, 7), st.integers(1, 7)),
    st.tuples(st.integers(1, 5), st.integers(1, 5), st.integers(1, 5)),
)


@st.composite
def head_problems(draw):
    batch, depth = draw(st.integers(1, 3)), draw(st.integers(1, 20))
    num_classes, num_protos = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    spatial = draw(spatial_shapes)
    seed = draw(st.integers(0, 10_000))
    return batch, depth, num_classes, num_protos, spatial, seed


@settings(max_examples=60, deadline=None)
@given(head_problems(), st.sampled_from([None, 0, 1]))
def test_head_matches_reference_on_any_shape(problem, ignore_index):
    batch, depth, num_classes, num_protos, spatial, seed = problem
    feat = make_features(batch, depth, spatial, torch.float32, seed).requires_grad_(True)
    bank = make_bank(num_classes * num_protos, depth, seed)
    logits, assign, loss = ops.proto_classify_infonce(feat, bank, num_classes, 0.1, 0.1, ignore_index)
    want_logits, want_assign, want_loss = ref.proto_classify_infonce(feat, bank, num_classes, 0.1, 0.1, ignore_index)
    torch.testing.assert_close(logits, want_logits, rtol=1e-4, atol=1e-4)
    assert ((assign >= 0) & (assign < num_protos)).all()
    torch.testing.assert_close(loss, want_loss, rtol=1e-4, atol=1e-5)
    # assign and the gradient only where rounding cannot flip a choice; a problem where
    # that is not most voxels (depth 1: every cosine is +-1, ties everywhere; or a few
    # voxels with a near tie) does not count as checked
    keep = reliable_voxels(feat, bank, num_classes, require_most=False).unsqueeze(1)
    assume(2 * int(keep.sum()) > keep.numel())
    assert torch.equal(assign[keep.expand_as(assign)], want_assign[keep.expand_as(want_assign)])
    (grad,) = torch.autograd.grad(logits.sum() + loss, feat)
    (want_grad,) = torch.autograd.grad(want_logits.sum() + want_loss, feat)
    keep = keep.expand_as(grad)
    torch.testing.assert_close(grad[keep], want_grad[keep], rtol=1e-4, atol=1e-4)


@st.composite
def update_problems(draw):
    batch, depth, num_classes, num_protos, spatial, seed = draw(head_problems())
    generator = torch.Generator().manual_seed(seed)
    keep_fraction = draw(st.sampled_from([0.0, 0.05, 0.5, 1.0]))
    # classes drawn from a subset, so that some prototypes (often) get no voxel
    used_classes = draw(st.integers(1, num_classes))
    labels = torch.randint(0, used_classes, (batch, *spatial), generator=generator)
    assign = torch.randint(0, max(1, num_protos - 1), (batch, num_classes, *spatial), generator=generator)
    mask = torch.rand((batch, *spatial), generator=generator) < keep_fraction
    emb = make_features(batch, depth, spatial, torch.float32, seed)
    return emb, labels, assign, mask, num_classes, num_protos, seed


@settings(max_examples=60, deadline=None)
@given(update_problems(), st.floats(0.0, 1.0))
def test_bank_update_matches_reference_and_spares_unreached_rows(problem, momentum):
    emb, labels, assign, mask, num_classes, num_protos, seed = problem
    sums, counts = ops.proto_accumulate(emb, labels, assign, mask, num_classes, num_protos)
    want_sums, want_counts = ref.proto_accumulate(emb, labels, assign, mask, num_classes, num_protos)
    torch.testing.assert_close(counts, want_counts)
    torch.testing.assert_close(sums, want_sums, rtol=1e-5, atol=1e-4)
    assert counts.sum().item() == mask.sum().item()

    bank = make_bank(num_classes * num_protos, emb.shape[1], seed)
    before = bank.clone()
    ops.proto_ema_update_(bank, sums, counts, momentum)
    want = before.clone()
    ref.proto_ema_update_(want, want_sums, want_counts, momentum)
    torch.testing.assert_close(bank, want, rtol=1e-5, atol=1e-5)
    unreached = counts == 0
    assert torch.equal(bank[unreached], before[unreached])
    assert torch.isfinite(bank).all()
