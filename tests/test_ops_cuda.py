"""The fused ops on a GPU: parity with the eager reference (run on the same GPU), every
kernel variant, torch.compile, and no host synchronisation in the training path."""

from __future__ import annotations

import pytest
import torch

import mper.reference as ref
from mper import ops
from op_cases import TOLERANCE, assert_close_where, make_bank, make_features, reliable_voxels

pytestmark = pytest.mark.cuda

# (B, D, C, K, spatial): the kernel variants are picked by depth (16 / 32 / 64 / 128) and
# by whether the spatial size allows 4- or 2-wide loads; several blocks exercise the
# reduction. Depths that are not a multiple of the lanes per voxel (33, 47, 65, 127) leave
# some lanes with fewer channels; the last two shapes need a second pass of the grid-stride
# loop in both directions (more voxel groups than 1024 blocks of 256 threads hold).
SHAPES = [
    (2, 16, 2, 3, (20, 18, 16)),
    (3, 16, 4, 3, (64, 64)),
    (1, 12, 2, 3, (6, 5)),
    (2, 32, 3, 2, (17, 9)),
    (1, 20, 2, 2, (7, 7)),
    (1, 8, 2, 1, (5, 7, 3)),
    (2, 48, 1, 4, (12, 12)),
    (1, 33, 2, 2, (9, 7)),
    (2, 47, 2, 3, (6, 6)),
    (1, 65, 2, 2, (5, 5)),
    (1, 100, 3, 3, (10, 10)),
    (1, 127, 3, 2, (4, 4)),
    (2, 16, 2, 3, (40, 40, 24)),
    (2, 16, 2, 3, (96, 96, 64)),
    (1, 128, 2, 2, (72, 72, 16)),
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("batch,depth,num_classes,num_protos,spatial", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ignore_index", [None, 0])
def test_head_matches_reference_on_cuda(batch, depth, num_classes, num_protos, spatial, dtype, ignore_index):
    feat = make_features(batch, depth, spatial, dtype, seed=depth, device="cuda")
    bank = make_bank(num_classes * num_protos, depth, seed=num_protos, device="cuda")
    outputs = {}
    for name, module in (("got", ops), ("want", ref)):
        f = feat.clone().requires_grad_(True)
        logits, assign, loss = module.proto_classify_infonce(f, bank, num_classes, 0.1, 0.1, ignore_index)
        upstream = torch.randn(logits.shape, generator=torch.Generator("cuda").manual_seed(0), device="cuda")
        (grad,) = torch.autograd.grad([logits, loss], f, [upstream.to(logits.dtype), torch.ones_like(loss) * 3])
        outputs[name] = (logits, assign, loss, grad)
    got, want = outputs["got"], outputs["want"]
    keep = reliable_voxels(feat, bank, num_classes).unsqueeze(1)
    tol = TOLERANCE[dtype]
    assert_close_where(got[0], want[0], keep, tol)
    assert torch.equal(got[1][keep.expand_as(got[1])], want[1][keep.expand_as(want[1])])
    torch.testing.assert_close(got[2].double(), want[2].double(), **tol)
    assert_close_where(got[3], want[3], keep, tol)


@pytest.mark.parametrize("batch,depth,num_classes,num_protos,spatial", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_bank_update_matches_reference_on_cuda(batch, depth, num_classes, num_protos, spatial, dtype):
    generator = torch.Generator().manual_seed(depth)
    emb = make_features(batch, depth, spatial, dtype, seed=depth, device="cuda")
    labels = torch.randint(0, num_classes, (batch, *spatial), generator=generator).cuda()
    assign = torch.randint(0, num_protos, (batch, num_classes, *spatial), generator=generator).cuda()
    mask = (torch.rand((batch, *spatial), generator=generator) > 0.3).cuda()
    sums, counts = ops.proto_accumulate(emb, labels, assign, mask, num_classes, num_protos)
    want_sums, want_counts = ref.proto_accumulate(emb, labels, assign, mask, num_classes, num_protos)
    torch.testing.assert_close(counts, want_counts)
    torch.testing.assert_close(sums, want_sums, rtol=1e-4, atol=1e-3)
    bank = make_bank(num_classes * num_protos, depth, seed=1, device="cuda")
    want_bank = bank.clone()
    ops.proto_ema_update_(bank, sums, counts, 0.9)
    ref.proto_ema_update_(want_bank, want_sums, want_counts, 0.9)
    torch.testing.assert_close(bank, want_bank, rtol=1e-5, atol=1e-5)


def test_cuda_matches_cpu_kernels():
    feat = make_features(2, 16, (24, 24, 16), torch.float32, seed=3)
    bank = make_bank(6, 16, seed=4)
    cpu = ops.proto_classify_infonce(feat, bank, 2, 0.1, 0.1, 0)
    gpu = ops.proto_classify_infonce(feat.cuda(), bank.cuda(), 2, 0.1, 0.1, 0)
    keep = reliable_voxels(feat, bank, 2).unsqueeze(1)
    assert_close_where(gpu[0].cpu(), cpu[0], keep, TOLERANCE[torch.float32])
    torch.testing.assert_close(gpu[2].cpu(), cpu[2], rtol=1e-4, atol=1e-5)


def test_training_path_never_synchronises_with_the_host():
    feat = make_features(2, 16, (32, 32, 16), torch.bfloat16, seed=5, device="cuda").requires_grad_(True)
    bank = make_bank(6, 16, seed=6, device="cuda")
    labels = torch.randint(0, 2, (2, 32, 32, 16), device="cuda")
    mask = torch.rand(2, 32, 32, 16, device="cuda") > 0.5
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        logits, assign, loss = ops.proto_classify_infonce(feat, bank, 2, 0.1, 0.1, 0)
        torch.autograd.backward([logits, loss], [torch.ones_like(logits), torch.ones_like(loss)])
        sums, counts = ops.proto_accumulate(feat, labels, assign, mask, 2, 3, check_labels=False)
        ops.proto_ema_update_(bank, sums, counts, 0.99)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(feat.grad.float()).all() and torch.isfinite(bank).all()


def test_no_op_waits_for_the_gpu_inside_the_compiled_core():
    """set_sync_debug_mode sees torch's own calls only, not the CUDA runtime that mper's
    core links statically: with the stream held busy by a long sleep queued first, every
    op (forward, backward, update, largest_component) must return to the host while the
    sleep still runs."""
    feat = make_features(2, 16, (32, 32, 16), torch.float32, seed=5, device="cuda").requires_grad_(True)
    bank = make_bank(6, 16, seed=6, device="cuda")
    labels = torch.randint(0, 2, (2, 32, 32, 16), device="cuda")
    mask = torch.rand(2, 32, 32, 16, device="cuda") > 0.5

    def every_op():
        logits, assign, loss = ops.proto_classify_infonce(feat, bank, 2, 0.1, 0.1, 0)
        torch.autograd.backward([logits, loss], [torch.ones_like(logits), torch.ones_like(loss)])
        sums, counts = ops.proto_accumulate(feat.detach(), labels, assign, mask, 2, 3, check_labels=False)
        ops.proto_ema_update_(bank, sums, counts, 0.99)
        ops.largest_component(labels, 2, check_labels=False)

    every_op()  # loads the kernels and sets the shared-memory limits first
    torch.cuda.synchronize()
    stream = torch.cuda.current_stream()
    torch.cuda._sleep(4_000_000_000)  # about two seconds of GPU clock cycles
    every_op()
    assert not stream.query(), "an op waited for the GPU: the host returned only after the sleep had ended"
    torch.cuda.synchronize()


def test_compiled_function_matches_eager_on_cuda():
    def step(feat, bank):
        logits, assign, loss = ops.proto_classify_infonce(feat, bank, 2, 0.1, 0.1, None)
        return logits.float().logsumexp(1).mean() + loss.float(), assign

    feat = make_features(2, 16, (16, 16, 8), torch.float32, seed=7, device="cuda")
    bank = make_bank(6, 16, seed=8, device="cuda")
    eager_feat, compiled_feat = feat.clone().requires_grad_(True), feat.clone().requires_grad_(True)
    want = step(eager_feat, bank)
    got = torch.compile(step, fullgraph=True)(compiled_feat, bank)
    torch.testing.assert_close(got[0], want[0])
    assert torch.equal(got[1], want[1])
    want[0].backward()
    got[0].backward()
    torch.testing.assert_close(compiled_feat.grad, eager_feat.grad)


def test_cuda_rejects_float64_and_mixed_devices():
    feat = make_features(1, 4, (4, 4), torch.float32, seed=9, device="cuda")
    bank = make_bank(4, 4, seed=9, device="cuda")
    with pytest.raises(TypeError, match="CPU only"):
        ops.proto_classify(feat.double(), bank, 2)
    with pytest.raises(ValueError, match="one device"):
        ops.proto_classify(feat, bank.cpu(), 2)


def _head_on_cuda(module, feat, bank, num_classes, upstream=None):
    f = feat.detach().clone().requires_grad_(True)
    logits, assign, loss = module.proto_classify_infonce(f, bank, num_classes, 0.1, 0.1, 0)
    if upstream is None:
        upstream = torch.randn(logits.shape, generator=torch.Generator("cuda").manual_seed(1), device="cuda")
    (grad,) = torch.autograd.grad([logits, loss], f, [upstream.to(logits.dtype), torch.ones_like(loss)])
    return logits, assign, loss, grad


# (depth, C, K, spatial): the unit bank is C*K rows of the depth padded to 16/32/64/128
# floats in shared memory. 768 x 16 floats is exactly 48 KiB, which with the forward's
# static scratch needs the opt-in beyond the default; 1000 x 16 needs it in both
# directions; 1024 x 64 and 600 x 128 floats exceed every device's opt-in limit, so
# the bank is read from global memory.
# The last shape takes the global-memory variant (8 lanes a voxel) through a second pass
# of its grid-stride loop.
LARGE_BANKS = [
    (16, 2, 384, (16, 16)),
    (16, 4, 250, (12, 12)),
    (64, 2, 512, (8, 8)),
    (100, 3, 200, (6, 6)),
    (100, 3, 200, (48, 48, 16)),
]


@pytest.mark.parametrize("depth,num_classes,num_protos,spatial", LARGE_BANKS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_large_banks_match_reference_on_cuda(depth, num_classes, num_protos, spatial, dtype):
    feat = make_features(2, depth, spatial, dtype, seed=depth, device="cuda")
    bank = make_bank(num_classes * num_protos, depth, seed=num_protos, device="cuda")
    got = _head_on_cuda(ops, feat, bank, num_classes)
    want = _head_on_cuda(ref, feat, bank, num_classes)
    keep = reliable_voxels(feat, bank, num_classes).unsqueeze(1)
    tol = TOLERANCE[dtype]
    assert_close_where(got[0], want[0], keep, tol)
    assert torch.equal(got[1][keep.expand_as(got[1])], want[1][keep.expand_as(want[1])])
    torch.testing.assert_close(got[2].double(), want[2].double(), **tol)
    assert_close_where(got[3], want[3], keep, tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_gradients_at_an_odd_storage_offset_on_cuda(dtype):
    # the kernels read V voxels of grad_logits as one vector; a gradient that starts one
    # element past an aligned address (e.g. a slice of a torch.cat of flattened logits)
    # must take the one-voxel path
    feat = make_features(2, 16, (8, 8), dtype, seed=51, device="cuda")
    bank = make_bank(6, 16, seed=52, device="cuda")
    logits, _ = ops.proto_classify(feat, bank, 2)
    storage = torch.randn(logits.numel() + 1, generator=torch.Generator("cuda").manual_seed(2), device="cuda")
    upstream = storage.to(dtype)[1:].view(logits.shape)
    assert upstream.is_contiguous() and upstream.data_ptr() % (2 * upstream.element_size()) != 0
    direct = torch.ops.mper.proto_head_backward(feat, bank, upstream, None, None, 2, 0.1, 0.1, -1)
    got = _head_on_cuda(ops, feat, bank, 2, upstream)[3]
    want = _head_on_cuda(ref, feat, bank, 2, upstream)[3]
    keep = reliable_voxels(feat, bank, 2).unsqueeze(1)
    assert_close_where(got, want, keep, TOLERANCE[dtype])
    aligned = upstream.clone()
    torch.testing.assert_close(
        direct, torch.ops.mper.proto_head_backward(feat, bank, aligned, None, None, 2, 0.1, 0.1, -1)
    )


# (depth, C, K, spatial): a variant of each kind (1, 2 and 4 lanes a voxel, several voxels
# a thread, one voxel a thread, the bank in global memory).
# The last case: 30 voxels pack by 2 but not by 4, so the forward pads a depth of 16 to 32
# and the backward to 16; a bank of 2000 rows then fits in shared memory only at the
# backward's padding, and both must still read it from the same place.
TIE_CASES = [
    (16, 2, 3, (8, 8)),
    (20, 2, 3, (7, 7)),
    (48, 2, 3, (6, 6)),
    (100, 2, 3, (5, 5)),
    (100, 3, 200, (6, 6)),
    (16, 2, 1000, (6, 5)),
]


@pytest.mark.parametrize("depth,num_classes,num_protos,spatial", TIE_CASES)
def test_backward_differentiates_the_prototype_the_forward_chose_at_ties(depth, num_classes, num_protos, spatial):
    """Every voxel on the bisector of two prototypes of its class, where the argmax is a
    matter of rounding: the gradient of the logits must be that of the prototype the
    forward's `assign` names (computed here in float64), never the other's, whichever
    variant each direction runs."""
    bank = make_bank(num_classes * num_protos, depth, seed=depth, device="cuda")
    # class 0's prototypes in pairs (2i, 2i + 1) of neighbours, so that no other prototype
    # beats the two a voxel between them is tied to
    noise = torch.randn((num_protos // 2, depth), generator=torch.Generator().manual_seed(depth)).cuda()
    bank[1 : 2 * (num_protos // 2) : 2] = bank[0 : 2 * (num_protos // 2) : 2] + 0.3 * noise
    unit = torch.nn.functional.normalize(bank.double(), dim=1)
    batch, voxels = 2, int(torch.tensor(spatial).prod())
    generator = torch.Generator().manual_seed(depth)
    first = 2 * torch.randint(0, num_protos // 2, (batch, voxels), generator=generator)
    tied = unit[first.cuda()] + unit[first.cuda() + 1]  # class 0's prototypes first and first + 1
    scale = torch.rand((batch, voxels, 1), generator=generator, dtype=torch.float64).cuda() + 0.5
    feat = (tied * scale).movedim(-1, 1).reshape(batch, depth, *spatial).float().contiguous()
    upstream = torch.zeros((batch, num_classes, *spatial), device="cuda")
    upstream[:, 0] = 1.0  # the logits of class 0 only, and no loss
    f = feat.clone().requires_grad_(True)
    logits, assign, _ = ops.proto_classify_infonce(f, bank, num_classes, 0.1, 0.1, None)
    (grad,) = torch.autograd.grad(logits, f, upstream)
    chosen = assign[:, 0].reshape(batch, voxels)
    assert ((chosen == first.cuda()) | (chosen == first.cuda() + 1)).all()
    z = feat.double().reshape(batch, depth, voxels).movedim(1, -1)
    norm = z.norm(dim=-1, keepdim=True)
    p = unit[chosen]
    cosine = (z / norm * p).sum(-1, keepdim=True)
    want = (p - cosine * z / norm) / norm / 0.1  # d(cos(z, p) / tau) / dz
    got = grad.double().reshape(batch, depth, voxels).movedim(1, -1)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- streams, devices, layouts


def _all_ops(feat, bank, labels, num_classes, num_protos):
    """Every op's outputs from one set of inputs: the head forward and backward, the bank
    update and largest_component."""
    f = feat.detach().clone().requires_grad_(True)
    logits, assign, loss = ops.proto_classify_infonce(f, bank, num_classes, 0.1, 0.1, 0)
    (grad,) = torch.autograd.grad([logits, loss], f, [torch.ones_like(logits), torch.ones_like(loss)])
    sums, counts = ops.proto_accumulate(feat, labels, assign, None, num_classes, num_protos, check_labels=False)
    updated = bank.clone()
    ops.proto_ema_update_(updated, sums, counts, 0.9)
    cleaned = ops.largest_component(labels, num_classes, check_labels=False)
    return logits, assign, loss, grad, sums, counts, updated, cleaned


def test_ops_launch_on_the_current_stream():
    """The kernels run on torch's current stream, not the default one: on a side stream
    held busy before its inputs are written, a kernel launched elsewhere would read them
    before they exist."""
    feat = make_features(2, 16, (24, 20), torch.float32, seed=60, device="cuda")
    bank = make_bank(6, 16, seed=61, device="cuda")
    labels = torch.randint(0, 2, (2, 24, 20), generator=torch.Generator().manual_seed(62)).cuda()
    want = _all_ops(feat, bank, labels, 2, 3)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)  # keeps the side stream busy for tens of milliseconds
        late_feat, late_bank, late_labels = feat * 1, bank * 1, labels * 1  # written only after it
        got = _all_ops(late_feat, late_bank, late_labels, 2, 3)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    for name, g, w in zip(("logits", "assign", "loss", "grad", "sums", "counts", "bank", "cleaned"), got, want):
        if g.is_floating_point():
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
        else:
            assert torch.equal(g, w), name


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_ops_on_a_device_that_is_not_the_current_one():
    """Tensors on cuda:1 while cuda:0 is current: every kernel runs on cuda:1 (the core
    links its own CUDA runtime, which must follow the device torch makes current) and
    gives what it gives on cuda:0."""
    feat = make_features(2, 16, (24, 20), torch.float32, seed=63, device="cuda:0")
    bank = make_bank(6, 16, seed=64, device="cuda:0")
    labels = torch.randint(0, 2, (2, 24, 20), generator=torch.Generator().manual_seed(65)).to("cuda:0")
    with torch.cuda.device(0):
        want = _all_ops(feat, bank, labels, 2, 3)
        got = _all_ops(feat.to("cuda:1"), bank.to("cuda:1"), labels.to("cuda:1"), 2, 3)
    for g, w in zip(got, want):
        assert g.device == torch.device("cuda:1")
        if g.is_floating_point():
            torch.testing.assert_close(g.cpu(), w.cpu(), rtol=1e-5, atol=1e-5)
        else:
            assert torch.equal(g.cpu(), w.cpu())


@pytest.mark.parametrize("layout", ["channels_last", "channel_slice", "odd_offset"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_features_match_reference_on_cuda(layout, dtype):
    """Features as a network or a caller may hand them over: channels-last (copied to
    dense spatial dims), a slice of channels (strides of a wider map) and a start one
    element past an aligned address (the one-voxel path)."""
    wide = make_features(2, 20, (12, 10), dtype, seed=66, device="cuda")
    if layout == "channels_last":
        feat = wide[:, :16].contiguous().to(memory_format=torch.channels_last)
    elif layout == "channel_slice":
        feat = wide[:, 2:18]
    else:
        feat = wide.flatten()[1:].narrow(0, 0, 2 * 16 * 120).view(2, 16, 12, 10)
        assert feat.data_ptr() % (4 * feat.element_size()) != 0
    bank = make_bank(6, 16, seed=67, device="cuda")
    got = _head_on_cuda(ops, feat, bank, 2)
    want = _head_on_cuda(ref, feat, bank, 2)
    keep = reliable_voxels(feat, bank, 2).unsqueeze(1)
    tol = TOLERANCE[dtype]
    assert_close_where(got[0], want[0], keep, tol)
    assert torch.equal(got[1][keep.expand_as(got[1])], want[1][keep.expand_as(want[1])])
    torch.testing.assert_close(got[2].double(), want[2].double(), **tol)
    assert_close_where(got[3], want[3], keep, tol)
    labels = torch.randint(0, 2, (2, 12, 10), generator=torch.Generator().manual_seed(68)).cuda()
    sums, counts = ops.proto_accumulate(feat, labels, got[1], None, 2, 3)
    want_sums, want_counts = ref.proto_accumulate(feat, labels, got[1], None, 2, 3)
    torch.testing.assert_close(counts, want_counts)
    torch.testing.assert_close(sums, want_sums, rtol=1e-4, atol=1e-3)
