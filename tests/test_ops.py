"""The fused prototype ops against the eager reference: values, gradients, dtypes,
layouts, bad input and torch.compile. CPU here; tests/test_ops_cuda.py repeats the
parity checks on a GPU."""

from __future__ import annotations

import re

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import mper.reference as ref
from mper import ops
from op_cases import (
    TOLERANCE,
    assert_close_where,
    make_bank,
    make_features,
    reliable_voxels,
)

SHAPES = [  # (B, D, C, K, spatial)
    (2, 16, 4, 3, (12, 10)),
    (1, 8, 2, 3, (6, 5, 4)),
    (2, 5, 3, 1, (7, 9)),
    (3, 16, 1, 4, (4, 4, 3)),
    (1, 33, 2, 2, (5, 6)),
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def _classify_infonce_outputs(module, feat, bank, num_classes, ignore_index):
    feat = feat.detach().requires_grad_(True)
    logits, assign, loss = module.proto_classify_infonce(feat, bank, num_classes, 0.1, 0.1, ignore_index)
    upstream = torch.linspace(-1, 1, logits.numel(), dtype=torch.float32).reshape(logits.shape)
    objective = (logits.float() * upstream).sum() + 3.0 * loss.float()
    (grad,) = torch.autograd.grad(objective, feat)
    return logits, assign, loss, grad


@pytest.mark.parametrize("batch,depth,num_classes,num_protos,spatial", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ignore_index", [None, 0])
def test_classify_infonce_matches_reference(batch, depth, num_classes, num_protos, spatial, dtype, ignore_index):
    feat = make_features(batch, depth, spatial, dtype, seed=depth + num_classes)
    bank = make_bank(num_classes * num_protos, depth, seed=num_protos)
    got = _classify_infonce_outputs(ops, feat, bank, num_classes, ignore_index)
    want = _classify_infonce_outputs(ref, feat, bank, num_classes, ignore_index)
    keep = reliable_voxels(feat, bank, num_classes)
    tol = TOLERANCE[dtype]
    assert got[0].dtype == dtype and got[1].dtype == torch.int64 and got[2].dtype == dtype
    assert_close_where(got[0], want[0], keep.unsqueeze(1), tol)
    assert torch.equal(got[1][keep.unsqueeze(1).expand_as(got[1])], want[1][keep.unsqueeze(1).expand_as(want[1])])
    torch.testing.assert_close(got[2].double(), want[2].double(), **tol)
    assert got[3].dtype == dtype
    assert_close_where(got[3], want[3], keep.unsqueeze(1), tol)


@pytest.mark.parametrize("batch,depth,num_classes,num_protos,spatial", SHAPES[:3])
def test_separate_ops_match_fused(batch, depth, num_classes, num_protos, spatial):
    feat = make_features(batch, depth, spatial, torch.float32, seed=1).requires_grad_(True)
    bank = make_bank(num_classes * num_protos, depth, seed=2)
    logits, assign = ops.proto_classify(feat, bank, num_classes, tau=0.2)
    loss = ops.proto_infonce(feat, bank, tau=0.05)
    fused = ops.proto_classify_infonce(feat, bank, num_classes, tau=0.2, nce_tau=0.05)
    torch.testing.assert_close(logits, fused[0])
    assert torch.equal(assign, fused[1])
    torch.testing.assert_close(loss, fused[2])
    ref_logits, ref_assign = ref.proto_classify(feat, bank, num_classes, tau=0.2)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, ref.proto_infonce(feat, bank, tau=0.05), rtol=1e-5, atol=1e-6)
    (g_sep,) = torch.autograd.grad(logits.sum() + loss, feat)
    (g_fused,) = torch.autograd.grad(fused[0].sum() + fused[2], feat)
    torch.testing.assert_close(g_sep, g_fused, rtol=1e-5, atol=1e-6)


def test_gradcheck_float64():
    feat = make_features(2, 6, (3, 4), torch.float64, seed=3).requires_grad_(True)
    bank = make_bank(6, 6, seed=4).double()
    assert bool(reliable_voxels(feat, bank, 2, margin=1e-3).all())
    torch.autograd.gradcheck(lambda f: ops.proto_classify(f, bank, 2, 0.1)[0], (feat,))
    torch.autograd.gradcheck(lambda f: ops.proto_infonce(f, bank, 0.1), (feat,))
    torch.autograd.gradcheck(lambda f: ops.proto_infonce(f, bank, 0.1, ignore_index=0), (feat,))
    torch.autograd.gradcheck(
        lambda f: tuple(o for o in ops.proto_classify_infonce(f, bank, 2, 0.1, 0.2) if o.is_floating_point()),
        (feat,),
    )


def test_reliable_voxels_must_be_most_voxels():
    # depth 1: every cosine is +-1, so equal rows tie everywhere and no voxel is reliable
    feat = make_features(1, 1, (4, 4), torch.float32, seed=12).abs() + 0.5
    with pytest.raises(AssertionError, match="only 0 of 16 voxels are reliable"):
        reliable_voxels(feat, torch.ones(4, 1), 2)


def test_reads_strided_and_channel_sliced_features_in_place():
    base = make_features(2, 12, (6, 8), torch.float32, seed=5)
    bank = make_bank(6, 6, seed=6)
    for view in (
        base[:, ::2],
        base[:, 3:9],
        base[:, :6].transpose(2, 3),
        base.to(memory_format=torch.channels_last)[:, :6],
    ):
        got = ops.proto_classify_infonce(view, bank, 3)
        want = ref.proto_classify_infonce(view.contiguous(), bank, 3)
        torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got[2], want[2], rtol=1e-5, atol=1e-6)


def test_half_features_with_float32_bank_follow_feature_dtype():
    feat = make_features(1, 16, (8, 8), torch.bfloat16, seed=7).requires_grad_(True)
    bank = make_bank(6, 16, seed=8)
    logits, _, loss = ops.proto_classify_infonce(feat, bank, 2)
    (grad,) = torch.autograd.grad(logits.float().sum() + loss.float(), feat)
    assert logits.dtype == loss.dtype == grad.dtype == torch.bfloat16
    assert bank.dtype == torch.float32 and not bank.requires_grad


def test_zero_norm_features_and_empty_prototypes_stay_finite():
    feat = make_features(1, 4, (3, 3), torch.float32, seed=9)
    feat[:, :, 0, 0] = 0.0
    feat.requires_grad_(True)
    bank = make_bank(4, 4, seed=10)
    bank[1] = 0.0
    logits, assign, loss = ops.proto_classify_infonce(feat, bank, 2)
    (grad,) = torch.autograd.grad(logits.sum() + loss, feat)
    assert torch.isfinite(logits).all() and torch.isfinite(loss) and torch.isfinite(grad).all()
    assert torch.equal(grad[:, :, 0, 0], torch.zeros(1, 4))
    want = ref.proto_classify_infonce(feat, bank, 2)
    torch.testing.assert_close(logits, want[0])
    torch.testing.assert_close(loss, want[2])


def test_infonce_is_zero_when_every_voxel_is_ignored():
    feat = make_features(1, 4, (3, 3), torch.float32, seed=11).abs().requires_grad_(True)
    bank = torch.zeros(3, 4)
    bank[0] = 1.0  # positive features: row 0 (cosine > 0) beats the empty rows (cosine 0)
    loss = ops.proto_infonce(feat, bank, ignore_index=0)
    (grad,) = torch.autograd.grad(loss, feat)
    assert loss.item() == 0.0 and torch.equal(grad, torch.zeros_like(grad))


def test_empty_batch():
    feat = torch.zeros(0, 4, 3, 3)
    logits, assign, loss = ops.proto_classify_infonce(feat, make_bank(4, 4, seed=0), 2)
    assert logits.shape == (0, 2, 3, 3) and assign.shape == (0, 2, 3, 3) and loss.item() == 0.0


# ---------------------------------------------------------------- accumulate and EMA


def _update_inputs(batch, depth, num_classes, num_protos, spatial, seed, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    emb = make_features(batch, depth, spatial, dtype, seed=seed)
    labels = torch.randint(0, num_classes, (batch, *spatial), generator=generator)
    assign = torch.randint(0, num_protos, (batch, num_classes, *spatial), generator=generator)
    mask = torch.rand((batch, *spatial), generator=generator) > 0.4
    return emb, labels, assign, mask


@pytest.mark.parametrize("batch,depth,num_classes,num_protos,spatial", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_accumulate_matches_reference(batch, depth, num_classes, num_protos, spatial, dtype):
    emb, labels, assign, mask = _update_inputs(batch, depth, num_classes, num_protos, spatial, 12, dtype)
    sums, counts = ops.proto_accumulate(emb, labels, assign, mask, num_classes, num_protos)
    want_sums, want_counts = ref.proto_accumulate(emb, labels, assign, mask, num_classes, num_protos)
    assert sums.dtype == counts.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(counts, want_counts)
    torch.testing.assert_close(sums, want_sums, rtol=1e-5, atol=1e-4)


def test_accumulate_without_mask_counts_every_voxel():
    emb, labels, assign, _ = _update_inputs(2, 4, 3, 2, (5, 5), 13)
    sums, counts = ops.proto_accumulate(emb, labels, assign, None, 3, 2)
    assert counts.sum().item() == labels.numel()
    torch.testing.assert_close(sums.sum(0), emb.sum(dim=(0, 2, 3)), rtol=1e-5, atol=1e-4)


def test_ema_update_moves_reached_rows_only():
    bank = make_bank(4, 3, seed=14)
    before = bank.clone()
    sums = torch.tensor([[2.0, 4.0, 6.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [9.0, 9.0, 9.0]])
    counts = torch.tensor([2.0, 0.0, 1.0, 0.0])
    out = ops.proto_ema_update_(bank, sums, counts, 0.9)
    assert out is bank
    torch.testing.assert_close(bank[0], 0.9 * before[0] + 0.1 * torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(bank[2], 0.9 * before[2] + 0.1 * torch.tensor([1.0, 1.0, 1.0]))
    assert torch.equal(bank[1], before[1]) and torch.equal(bank[3], before[3])
    want = before.clone()
    ref.proto_ema_update_(want, sums, counts, 0.9)
    torch.testing.assert_close(bank, want)


def test_accumulate_skips_out_of_range_labels_when_unchecked():
    emb, labels, assign, mask = _update_inputs(1, 4, 2, 2, (6, 6), 15)
    labels[0, 0, :3] = torch.tensor([-1, 2, 99])
    mask[0, 0, :3] = True
    sums, counts = ops.proto_accumulate(emb, labels, assign, mask, 2, 2, check_labels=False)
    valid = mask & (labels >= 0) & (labels < 2)
    want_sums, want_counts = ref.proto_accumulate(emb, labels, assign, valid, 2, 2)
    torch.testing.assert_close(counts, want_counts)
    torch.testing.assert_close(sums, want_sums, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- bad input


def _good_head_args():
    return make_features(1, 4, (3, 3), torch.float32, seed=0), make_bank(6, 4, seed=0)


@pytest.mark.parametrize(
    "change,error,words",
    [
        (lambda f, p: (f[0], p, 2), ValueError, "(B, D, H, W)"),
        (lambda f, p: (f.unsqueeze(0).unsqueeze(0), p, 2), ValueError, "(B, D, H, W)"),
        (lambda f, p: (f, p[:, :3], 2), ValueError, "D = 4"),
        (lambda f, p: (f, p, 4), ValueError, "multiple of num_classes"),
        (lambda f, p: (f.long(), p, 2), TypeError, "float32"),
        (lambda f, p: (f, p.long(), 2), TypeError, "floating point"),
        (lambda f, p: (f, p[None], 2), ValueError, "(C*K, D)"),
        (lambda f, p: (f, p, 0), ValueError, "num_classes"),
        (lambda f, p: (f.numpy(), p, 2), TypeError, "torch.Tensor"),
        (lambda f, p: (f, p.to("meta"), 2), ValueError, "one device"),
    ],
)
def test_classify_rejects_bad_input(change, error, words):
    feat, bank = _good_head_args()
    with pytest.raises(error, match=re.escape(words)):
        ops.proto_classify(*change(feat, bank))


def test_temperatures_and_ignore_index_are_checked():
    feat, bank = _good_head_args()
    with pytest.raises(ValueError, match="tau"):
        ops.proto_classify(feat, bank, 2, tau=0.0)
    with pytest.raises(ValueError, match="nce_tau"):
        ops.proto_classify_infonce(feat, bank, 2, nce_tau=-1.0)
    with pytest.raises(TypeError, match="ignore_index"):
        ops.proto_infonce(feat, bank, ignore_index=0.5)


def test_accumulate_rejects_bad_input():
    emb, labels, assign, mask = _update_inputs(1, 4, 2, 3, (4, 4), 16)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, num_classes\)"):
        bad = labels.clone()
        bad[mask] = 2
        ops.proto_accumulate(emb, bad, assign, mask, 2, 3)
    outside_mask = labels.clone()
    outside_mask[~mask] = 7  # out of range but not selected: fine
    ops.proto_accumulate(emb, outside_mask, assign, mask, 2, 3)
    with pytest.raises(ValueError, match="assign must lie"):
        ops.proto_accumulate(emb, labels, assign + 3, mask, 2, 3)
    with pytest.raises(ValueError, match=r"assign must have shape \(1, 2, 4, 4\)"):
        ops.proto_accumulate(emb, labels, assign[:, :1], mask, 2, 3)
    with pytest.raises(ValueError, match=r"mask must have shape \(1, 4, 4\)"):
        ops.proto_accumulate(emb, labels, assign, mask[..., :2], 2, 3)
    with pytest.raises(TypeError, match="labels must be an integer tensor"):
        ops.proto_accumulate(emb, labels.float(), assign, mask, 2, 3)
    with pytest.raises(TypeError, match="mask must be bool"):
        ops.proto_accumulate(emb, labels, assign, mask.float(), 2, 3)
    with pytest.raises(TypeError, match="emb must be float32"):
        ops.proto_accumulate(emb.int(), labels, assign, mask, 2, 3)


def test_ema_rejects_bad_input():
    bank = make_bank(4, 3, seed=17)
    sums, counts = torch.zeros(4, 3), torch.ones(4)
    with pytest.raises(ValueError, match=r"sums must have shape \(4, 3\)"):
        ops.proto_ema_update_(bank, sums[:2], counts, 0.9)
    with pytest.raises(ValueError, match="momentum"):
        ops.proto_ema_update_(bank, sums, counts, 1.5)
    with pytest.raises(TypeError, match="float32"):
        ops.proto_ema_update_(bank.half(), sums, counts, 0.9)
    with pytest.raises(ValueError, match="contiguous"):
        ops.proto_ema_update_(bank.t().contiguous().t(), sums, counts, 0.9)


# ---------------------------------------------------------------- torch.compile


def test_compiled_training_step_matches_eager():
    def head_step(feat, bank, labels, mask):
        logits, assign, loss = ops.proto_classify_infonce(feat, bank, 2, 0.1, 0.1, 0)
        total = torch.nn.functional.cross_entropy(logits, labels) + 0.1 * loss
        sums, counts = ops.proto_accumulate(feat, labels, assign, mask, 2, 3, check_labels=False)
        return total, sums, counts

    feat = make_features(2, 8, (6, 6), torch.float32, seed=18)
    bank = make_bank(6, 8, seed=19)
    labels = torch.randint(0, 2, (2, 6, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 6, 6, dtype=torch.bool)
    compiled = torch.compile(head_step, fullgraph=True, backend="inductor")
    eager_feat = feat.clone().requires_grad_(True)
    compiled_feat = feat.clone().requires_grad_(True)
    want = head_step(eager_feat, bank, labels, mask)
    got = compiled(compiled_feat, bank, labels, mask)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    want[0].backward()
    got[0].backward()
    torch.testing.assert_close(compiled_feat.grad, eager_feat.grad, rtol=1e-5, atol=1e-6)

    def ema_step(bank, sums, counts):
        return ops.proto_ema_update_(bank, sums, counts, 0.9)

    eager_bank, compiled_bank = bank.clone(), bank.clone()
    ema_step(eager_bank, want[1], want[2])
    torch.compile(ema_step, fullgraph=True)(compiled_bank, want[1], want[2])
    torch.testing.assert_close(compiled_bank, eager_bank)


def test_cuda_tensors_on_a_build_without_cuda_get_a_clear_error(monkeypatch):
    from mper.ops import _common

    monkeypatch.setattr(_common._C, "with_cuda", False)
    with pytest.raises(RuntimeError, match="built without CUDA kernels"):
        _common.kernel("head_forward", torch.device("cuda", 0))
    assert _common.kernel("head_forward", torch.device("cpu")) is _common._C.head_forward


# ---------------------------------------------------------------- eager calls and the custom ops


class _SeenOps(TorchDispatchMode):
    """Records the ops that reach the dispatcher."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.add(func.name())
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("op", ["proto_classify", "proto_infonce", "proto_classify_infonce"])
def test_eager_calls_give_what_the_custom_ops_give(op):
    """Plain eager calls skip the custom-op dispatcher; under a dispatch mode (as under
    torch.compile or fake tensors) the registered op runs. Both must agree, gradients too."""
    feat = make_features(2, 8, (5, 7), torch.float32, seed=31)
    bank = make_bank(6, 8, seed=32)
    args = (bank, 2) if op != "proto_infonce" else (bank,)

    def outputs_and_grad():
        x = feat.detach().requires_grad_(True)
        out = getattr(ops, op)(x, *args)
        out = out if isinstance(out, tuple) else (out,)
        objective = sum(
            (o.float() * torch.linspace(-1, 1, o.numel()).reshape(o.shape)).sum() for o in out if o.is_floating_point()
        )
        return out, torch.autograd.grad(objective, x)[0]

    eager_out, eager_grad = outputs_and_grad()
    with _SeenOps() as mode:
        op_out, op_grad = outputs_and_grad()
    assert f"mper::{op}" in mode.seen and "mper::proto_head_backward" in mode.seen
    for got, want in zip(eager_out, op_out):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(eager_grad, op_grad, rtol=0, atol=0)


def test_eager_head_refuses_double_backward():
    feat = make_features(1, 4, (3, 3), torch.float32, seed=33).requires_grad_(True)
    logits, _ = ops.proto_classify(feat, make_bank(4, 4, seed=34), 2)
    (grad,) = torch.autograd.grad(logits.sum(), feat, create_graph=True)
    with pytest.raises(RuntimeError, match="no autograd formula"):
        grad.sum().backward()
