"""Non-finite values in the fused ops: NaN and Inf propagate exactly where the eager
reference (mper.reference) puts them, forward and backward, on the CPU and on CUDA; a
temperature whose reciprocal overflows is refused."""

from __future__ import annotations

import pytest
import torch

import mper.reference as ref
from mper import ops
from op_cases import TOLERANCE, make_bank, make_features, reliable_voxels

NAN, INF = float("nan"), float("inf")
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]

# (where, index, value): one poisoned entry of the features (b, d, y, x) or of the bank
# (row, d); the bank has C=2 classes of K=3 rows, so row 4 is prototype k=1 of class 1.
POISON = {
    "nan voxel": ("feat", (0, 1, 2, 3), NAN),
    "inf voxel": ("feat", (0, 0, 1, 1), INF),
    "-inf voxel": ("feat", (1, 3, 4, 0), -INF),
    "nan bank row k>0": ("bank", (4, 2), NAN),
    "inf bank row": ("bank", (2, 0), INF),
}


def _poisoned(case, dtype, device, depth=4, rows=6):
    feat = make_features(2, depth, (5, 8), torch.float32, seed=21)
    bank = make_bank(rows, depth, seed=22)
    clean = reliable_voxels(feat, bank, 2)
    where, index, value = POISON[case]
    (feat if where == "feat" else bank)[index] = value
    return feat.to(device=device, dtype=dtype), bank.to(device), clean.to(device)


def _assert_same_nonfinite(got, want, keep, tol):
    """NaN/Inf at the same places; the finite values close where rounding cannot flip a choice."""
    assert got.dtype == want.dtype and got.shape == want.shape
    assert torch.equal(got.isnan(), want.isnan())
    assert torch.equal(got.isinf(), want.isinf())
    finite = want.isfinite() & keep.expand_as(want)
    torch.testing.assert_close(got[finite].double(), want[finite].double(), **tol)


def _head_outputs(module, feat, bank, ignore_index):
    feat = feat.detach().requires_grad_(True)
    logits, assign, loss = module.proto_classify_infonce(feat, bank, 2, 0.1, 0.1, ignore_index)
    upstream = torch.linspace(-1, 1, logits.numel(), device=feat.device).reshape(logits.shape)
    (grad,) = torch.autograd.grad((logits.float() * upstream).sum() + 3.0 * loss.float(), feat)
    return logits, assign, loss, grad


def _dtypes(device):
    return [torch.float32, torch.bfloat16] + ([torch.float64] if device == "cpu" else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", POISON)
@pytest.mark.parametrize("ignore_index", [None, 0, 4])
def test_head_propagates_nonfinite_like_the_reference(device, case, ignore_index):
    for dtype in _dtypes(device):
        feat, bank, clean = _poisoned(case, dtype, device)
        got = _head_outputs(ops, feat, bank, ignore_index)
        want = _head_outputs(ref, feat, bank, ignore_index)
        tol, keep = TOLERANCE[dtype], clean.unsqueeze(1)
        _assert_same_nonfinite(got[0], want[0], keep, tol)
        poisoned = want[0].isnan()  # argmax picks the first NaN, as torch.argmax does
        chosen = keep.expand_as(poisoned) | poisoned
        assert torch.equal(got[1][chosen], want[1][chosen])
        assert got[2].isnan() and want[2].isnan()
        _assert_same_nonfinite(got[3], want[3], keep, tol)


# (depth, bank rows): the CUDA variants that spread a voxel over 2 and 4 lanes (bank in
# shared memory), and the one that reads a bank of 480 x 128 floats from global memory
# over 8 lanes; row 4 is a prototype k > 0 in each.
MULTI_LANE = [(48, 6), (100, 6), (100, 480)]


@pytest.mark.cuda
@pytest.mark.parametrize("depth,rows", MULTI_LANE)
@pytest.mark.parametrize("case", POISON)
def test_multi_lane_cuda_variants_propagate_nonfinite(depth, rows, case):
    """NaN/Inf reach all lanes of a voxel group (the shuffled sums carry them) and win the
    argmax in each, as in the one-lane variants."""
    for dtype in (torch.float32, torch.bfloat16):
        feat, bank, clean = _poisoned(case, dtype, "cuda", depth, rows)
        got = _head_outputs(ops, feat, bank, 0)
        want = _head_outputs(ref, feat, bank, 0)
        tol, keep = TOLERANCE[dtype], clean.unsqueeze(1)
        _assert_same_nonfinite(got[0], want[0], keep, tol)
        chosen = keep.expand_as(want[0]) | want[0].isnan()
        assert torch.equal(got[1][chosen], want[1][chosen])
        assert got[2].isnan() and want[2].isnan()
        _assert_same_nonfinite(got[3], want[3], keep, tol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", POISON)
def test_separate_head_ops_propagate_nonfinite(device, case):
    feat, bank, clean = _poisoned(case, torch.float32, device)
    keep, tol = clean.unsqueeze(1), TOLERANCE[torch.float32]
    outputs = {}
    for name, module in (("got", ops), ("want", ref)):
        f = feat.detach().requires_grad_(True)
        logits, assign = module.proto_classify(f, bank, 2, tau=0.2)
        (grad_logits,) = torch.autograd.grad(logits.sum(), f)
        g = feat.detach().requires_grad_(True)
        loss = module.proto_infonce(g, bank, tau=0.05, ignore_index=0)
        (grad_loss,) = torch.autograd.grad(loss, g)
        outputs[name] = (logits, assign, grad_logits, loss, grad_loss)
    got, want = outputs["got"], outputs["want"]
    _assert_same_nonfinite(got[0], want[0], keep, tol)
    chosen = keep.expand_as(want[0]) | want[0].isnan()
    assert torch.equal(got[1][chosen], want[1][chosen])
    _assert_same_nonfinite(got[2], want[2], keep, tol)
    assert got[3].isnan() and want[3].isnan()
    _assert_same_nonfinite(got[4], want[4], keep, tol)


@pytest.mark.parametrize("device", DEVICES)
def test_nan_upstream_gradient_reaches_every_voxel_it_touches(device):
    feat = make_features(1, 4, (4, 8), torch.float32, seed=23, device=device)
    bank = make_bank(6, 4, seed=24, device=device)
    assert (ref.cosine_similarity(feat, bank).argmax(dim=1) == 0).any()  # some voxels are ignored
    grads = {}
    for name, module in (("got", ops), ("want", ref)):
        f = feat.clone().requires_grad_(True)
        logits, _, loss = module.proto_classify_infonce(f, bank, 2, 0.1, 0.1, 0)
        upstream = torch.zeros_like(logits)
        upstream[0, 1, 2, 5] = NAN
        grads[name] = torch.autograd.grad([logits, loss], f, [upstream, torch.tensor(NAN, device=device)])[0]
    assert grads["want"].isnan().all()  # a NaN loss gradient reaches ignored voxels too
    assert grads["got"].isnan().all()


@pytest.mark.parametrize("device", DEVICES)
def test_accumulate_and_ema_propagate_nonfinite(device):
    generator = torch.Generator().manual_seed(25)
    emb = make_features(2, 3, (4, 6), torch.float32, seed=25)
    labels = torch.randint(0, 2, (2, 4, 6), generator=generator)
    assign = torch.randint(0, 3, (2, 2, 4, 6), generator=generator)
    mask = torch.rand((2, 4, 6), generator=generator) > 0.3
    mask[0, 1, 2], mask[1, 3, 3] = True, False
    emb[0, 1, 1, 2] = NAN  # in the mask: poisons the sums of its row only
    emb[0, 2, 1, 2] = INF
    emb[1, 0, 3, 3] = NAN  # outside the mask: no effect
    emb, labels, assign, mask = (x.to(device) for x in (emb, labels, assign, mask))
    sums, counts = ops.proto_accumulate(emb, labels, assign, mask, 2, 3)
    want_sums, want_counts = ref.proto_accumulate(emb, labels, assign, mask, 2, 3)
    torch.testing.assert_close(counts, want_counts)
    _assert_same_nonfinite(sums, want_sums, torch.ones_like(sums, dtype=torch.bool), dict(rtol=1e-5, atol=1e-4))
    assert sums.isnan().sum() == 1 and sums.isinf().sum() == 1

    bank = make_bank(6, 3, seed=26, device=device)
    poisoned_row = int(sums.isnan().any(dim=1).nonzero())
    counts = counts.clone()
    counts[(poisoned_row + 1) % 6] = NAN  # not > 0: the row is left alone, as in the reference
    for momentum in (0.9, 1.0):
        got, want = bank.clone(), bank.clone()
        ops.proto_ema_update_(got, sums, counts, momentum)
        ref.proto_ema_update_(want, sums, counts, momentum)
        torch.testing.assert_close(got, want, equal_nan=True)
        assert got.isnan().any()


def test_temperature_whose_reciprocal_overflows_is_refused():
    feat = make_features(1, 4, (3, 3), torch.float32, seed=27)
    bank = make_bank(6, 4, seed=28)
    with pytest.raises(ValueError, match=r"1/tau overflows torch.float32"):
        ops.proto_classify(feat, bank, 2, tau=1e-39)
    with pytest.raises(ValueError, match=r"1/nce_tau overflows torch.float32"):
        ops.proto_classify_infonce(feat.bfloat16(), bank, 2, nce_tau=2e-39)
    with pytest.raises(ValueError, match=r"1/tau overflows"):
        ops.proto_infonce(feat, bank, tau=1e-45)
    # float64 features compute in float64, where 1/1e-39 is finite
    small = make_features(1, 4, (3, 3), torch.float64, seed=27)
    torch.testing.assert_close(
        ops.proto_classify(small, bank, 2, tau=1e-39)[0], ref.proto_classify(small, bank, 2, tau=1e-39)[0]
    )
    ops.proto_classify(feat, bank, 2, tau=3e-38)  # 1/tau is large but finite: accepted


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("nce_tau", [1e-37, 1e-34])
def test_tiny_nce_tau_gives_the_reference_gradient_not_nan(device, nce_tau):
    # 1/nce_tau near float32's largest value times a large loss gradient overflows unless
    # the kernels divide by nce_tau last, as autograd does: a one-hot softmax then gives
    # exact zeros (inf * 0 would be NaN), and a vanishing exp must be 0, not a stand-in
    # that 1/nce_tau magnifies
    feat = make_features(2, 16, (4, 6), torch.float32, seed=29, device=device)
    bank = make_bank(6, 16, seed=30, device=device)
    grads = {}
    for name, module in (("got", ops), ("want", ref)):
        f = feat.clone().requires_grad_(True)
        logits, _, loss = module.proto_classify_infonce(f, bank, 2, 0.1, nce_tau, None)
        grads[name] = torch.autograd.grad(
            [logits, loss], f, [torch.ones_like(logits), torch.tensor(1e3, device=device)]
        )[0]
    assert grads["got"].isfinite().all()
    keep = reliable_voxels(feat, bank, 2).unsqueeze(1)
    _assert_same_nonfinite(grads["got"], grads["want"], keep, TOLERANCE[torch.float32])
