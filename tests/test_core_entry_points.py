"""The compiled core called directly, as the ops do but without their checks: every entry
point refuses an address it would read or write when it is left at 0 (instead of
touching address 0, which kills the process on the CPU and poisons the context on a
GPU); the image size limit of `largest_component` at its boundary, the same in C++ and in
Python; the message for a CUDA driver too old for the kernels' runtime. CPU entry points
by default, the CUDA ones under -m cuda."""

from __future__ import annotations

import concurrent.futures

import pytest
import torch

import mper.reference as ref
from mper import ops
from mper.ops import _common
from mper.ops.largest_component import MAX_IMAGE_VOXELS, check_label_map
from op_cases import TOLERANCE, assert_close_where, make_bank, make_features, reliable_voxels

_C = _common._C
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def _entry(name: str, device: str):
    return getattr(_C, name + ("_cuda" if device == "cuda" else ""))


def _head_args(device: str, backward: bool):
    """Arguments of a small head call with every address set; the tensors are returned
    along, so that they outlive the call."""
    feat = make_features(2, 16, (4, 4), torch.float32, seed=0, device=device)
    bank = make_bank(6, 16, seed=1, device=device)
    args = _C.HeadArgs()
    view = _C.FeatureView()
    view.data, view.batch, view.depth, view.voxels = feat.data_ptr(), 2, 16, 16
    view.batch_stride, view.channel_stride = feat.stride(0), feat.stride(1)
    args.feat, args.prototypes, args.classes, args.protos_per_class = view, bank.data_ptr(), 2, 3
    args.dtype, args.threads = _C.DType.float32, 1
    class_maps = (feat.new_zeros((2, 2, 4, 4)), feat.new_zeros((2, 2, 4, 4), dtype=torch.int64))
    scalars = (feat.new_zeros(()), feat.new_ones(()), feat.new_ones(()))  # loss, count, grad_loss
    workspace = feat.new_zeros(_C.head_workspace_floats)
    grad_feat = torch.empty_like(feat)
    if backward:
        args.grad_logits, args.grad_loss, args.count = (
            class_maps[0].data_ptr(),
            scalars[2].data_ptr(),
            scalars[1].data_ptr(),
        )
        args.grad_feat = grad_feat.data_ptr()
    else:
        args.logits, args.assign = class_maps[0].data_ptr(), class_maps[1].data_ptr()
        args.loss, args.count, args.workspace = scalars[0].data_ptr(), scalars[1].data_ptr(), workspace.data_ptr()
    return args, (feat, bank, class_maps, scalars, workspace, grad_feat)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "backward,field,match",
    [
        (False, "count", "count"),
        (False, "assign", "logits and assign go together"),
        (False, "prototypes", "prototype bank"),
        (True, "count", "count"),
        (True, "grad_feat", "grad_feat"),
        (True, "prototypes", "prototype bank"),
    ],
)
def test_head_refuses_a_missing_address(device, backward, field, match):
    args, keep = _head_args(device, backward)
    entry = _entry("head_backward" if backward else "head_forward", device)
    entry(args)  # every address set: runs
    setattr(args, field, 0)
    with pytest.raises(ValueError, match=match):
        entry(args)
    del keep


@pytest.mark.parametrize("device", DEVICES)
def test_head_refuses_missing_features(device):
    args, keep = _head_args(device, False)
    view = args.feat
    view.data = 0
    args.feat = view
    with pytest.raises(ValueError, match="features"):
        _entry("head_forward", device)(args)
    del keep


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sizes", [(2**62, 4, 4), (2**32, 2**32, 1), (4, 2**31, 2**33)])
def test_head_refuses_missing_features_whose_size_overflows(device, sizes):
    """batch * depth * voxels wraps to 0 in 64 bits: the features are still needed."""
    args, keep = _head_args(device, False)
    view = args.feat
    view.data, (view.batch, view.depth, view.voxels) = 0, sizes
    args.feat = view
    with pytest.raises(ValueError, match="the features is needed"):
        _entry("head_forward", device)(args)
    del keep


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backward", [False, True])
@pytest.mark.parametrize(
    "classes,protos_per_class",
    [(-1, -4), (0, 3), (2, 0), (2**32 + 1000, 2**32 - 1000), (2**15, 2**15 + 1)],
)
def test_head_refuses_a_bank_of_bad_size(device, backward, classes, protos_per_class):
    """Negative or zero counts, or C * K beyond 2^30 rows (also where the product overflows
    64 bits, or two negatives make it positive): refused before the bank is read, which
    here would read through a null address."""
    args, keep = _head_args(device, backward)
    args.prototypes, args.classes, args.protos_per_class = 0, classes, protos_per_class
    with pytest.raises(ValueError, match="classes >= 1 and prototypes per class >= 1, at most 2\\^30 rows"):
        _entry("head_backward" if backward else "head_forward", device)(args)
    del keep


@pytest.mark.parametrize("device", DEVICES)
def test_head_refuses_negative_feature_sizes(device):
    args, keep = _head_args(device, False)
    view = args.feat
    view.batch = -2
    args.feat = view
    with pytest.raises(ValueError, match="must not be negative"):
        _entry("head_forward", device)(args)
    del keep


@pytest.mark.cuda
def test_cuda_head_refuses_a_missing_workspace():
    args, keep = _head_args("cuda", False)
    args.workspace = 0
    with pytest.raises(ValueError, match="workspace"):
        _C.head_forward_cuda(args)
    del keep


def test_empty_inputs_need_no_addresses():
    """Nothing to read or write: addresses of empty tensors may be 0."""
    args = _C.HeadArgs()
    args.feat = _C.FeatureView()
    args.classes, args.protos_per_class = 2, 3
    _C.head_forward(args)
    _C.head_backward(args)
    components = _C.ComponentArgs()
    components.batch, components.height, components.width, components.classes = 0, 4, 4, 2
    _C.largest_component(components)
    ema = _C.EmaArgs()
    ema.rows, ema.depth = 0, 8
    _C.ema_update(ema)


def _accumulate_args(device: str):
    emb = make_features(2, 8, (4, 4), torch.float32, seed=2, device=device)
    labels = torch.zeros((2, 16), dtype=torch.int64, device=device)
    assign = torch.zeros((2, 2, 16), dtype=torch.int64, device=device)
    sums, counts = torch.zeros((6, 8), device=device), torch.zeros(6, device=device)
    args = _C.AccumulateArgs()
    view = _C.FeatureView()
    view.data, view.batch, view.depth, view.voxels = emb.data_ptr(), 2, 8, 16
    view.batch_stride, view.channel_stride = emb.stride(0), emb.stride(1)
    args.emb, args.labels, args.assign = view, labels.data_ptr(), assign.data_ptr()
    args.classes, args.protos_per_class, args.sums, args.counts = 2, 3, sums.data_ptr(), counts.data_ptr()
    args.dtype, args.threads = _C.DType.float32, 1
    return args, (emb, labels, assign, sums, counts)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("field", ["labels", "assign", "sums", "counts"])
def test_accumulate_refuses_a_missing_address(device, field):
    args, keep = _accumulate_args(device)
    entry = _entry("accumulate", device)
    entry(args)
    setattr(args, field, 0)
    with pytest.raises(ValueError, match=f"accumulate: {field} is needed"):
        entry(args)
    del keep


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "classes,protos_per_class",
    [(-1, -4), (0, 3), (2, 0), (2**32 + 1000, 2**32 - 1000), (2**15, 2**15 + 1)],
)
def test_accumulate_refuses_a_bank_of_bad_size(device, classes, protos_per_class):
    """As the head: refused before the sums are sized or written (here through null)."""
    args, keep = _accumulate_args(device)
    args.classes, args.protos_per_class, args.sums, args.counts = classes, protos_per_class, 0, 0
    with pytest.raises(ValueError, match="accumulate: the bank must have classes >= 1 and prototypes per class >= 1"):
        _entry("accumulate", device)(args)
    view = args.emb
    view.voxels = -16
    args.emb, args.classes, args.protos_per_class = view, 2, 3
    with pytest.raises(ValueError, match="accumulate: the feature sizes .* must not be negative"):
        _entry("accumulate", device)(args)
    del keep


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("field,match", [("prototypes", "prototype bank"), ("sums", "sums"), ("counts", "counts")])
def test_ema_refuses_a_missing_address(device, field, match):
    bank, sums, counts = (
        torch.ones((4, 8), device=device),
        torch.ones((4, 8), device=device),
        torch.ones(4, device=device),
    )
    args = _C.EmaArgs()
    args.prototypes, args.sums, args.counts = bank.data_ptr(), sums.data_ptr(), counts.data_ptr()
    args.rows, args.depth, args.momentum, args.dtype = 4, 8, 0.5, _C.DType.float32
    entry = _entry("ema_update", device)
    entry(args)
    setattr(args, field, 0)
    with pytest.raises(ValueError, match=f"ema_update: (the )?{match} is needed"):
        entry(args)


def _component_args(device: str, labels: torch.Tensor, out: torch.Tensor):
    args = _C.ComponentArgs()
    args.labels, args.out = labels.data_ptr(), out.data_ptr()
    args.batch, (args.height, args.width) = labels.shape[0], labels.shape[1:]
    args.classes, args.dtype, args.threads = 2, _C.LabelDType.int64, 1
    return args


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("field", ["labels", "out"])
def test_largest_component_refuses_a_missing_address(device, field):
    labels = torch.ones((1, 3, 5), dtype=torch.int64, device=device)
    out, workspace = torch.empty_like(labels), torch.empty(20, dtype=torch.int64, device=device)
    args = _component_args(device, labels, out)
    args.workspace = workspace.data_ptr() if device == "cuda" else 0
    entry = _entry("largest_component", device)
    entry(args)
    assert torch.equal(out, labels)
    setattr(args, field, 0)
    with pytest.raises(ValueError, match=f"largest_component: {field} is needed"):
        entry(args)


# ---------------------------------------------------------------- the image size limit


def test_the_image_limit_is_the_largest_int32():
    assert MAX_IMAGE_VOXELS == _C.max_image_voxels == 2**31 - 1


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("spatial", [(1, 1, 2**31 - 1), (2**15, 2**16 - 1, 1), (1, 2**31 - 1, 1)])
def test_largest_component_accepts_images_up_to_the_limit(device, spatial):
    """An image of exactly 2^31 - 1 voxels passes the size check (it then stops at the
    missing labels: nothing that size is allocated)."""
    args = _C.ComponentArgs()
    args.batch, (args.depth, args.height, args.width), args.classes = 1, spatial, 2
    with pytest.raises(ValueError, match="labels is needed"):
        _entry("largest_component", device)(args)
    check_label_map(torch.zeros((), dtype=torch.uint8).expand(1, *spatial))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "spatial",
    [(1, 1, 2**31), (2**15, 2**16, 1), (3, 2**30, 1), (2**62 + 1, 4, 4), (1, 2**40, 2**40), (2**32, 2**32, 2**32)],
)
def test_largest_component_refuses_images_over_the_limit(device, spatial):
    """Including sizes whose product overflows 64 bits (to a small or negative number,
    which a plain product check would let through)."""
    args = _C.ComponentArgs()
    args.batch, (args.depth, args.height, args.width), args.classes = 1, spatial, 2
    shape = " x ".join(map(str, spatial))
    with pytest.raises(ValueError, match=rf"an image of {shape} voxels is larger than the 2\^31 - 1 \(2147483647\)"):
        _entry("largest_component", device)(args)
    if spatial[0] * spatial[1] * spatial[2] < 2**63:  # a tensor of that shape can be made
        with pytest.raises(ValueError, match=r"at most 2\^31 - 1 = 2147483647 voxels"):
            check_label_map(torch.zeros((), dtype=torch.uint8).expand(1, *spatial))


# ---------------------------------------------------------------- the CUDA driver


@pytest.mark.parametrize(
    "driver,runtime",
    [(13000, 13000), (13020, 13000), (13000, 13020), (12080, 12040), (12020, 12090)],
)
def test_a_driver_of_the_same_or_a_newer_major_version_runs_the_kernels(driver, runtime):
    """Same major version, older minor one included: CUDA's minor version compatibility."""
    assert _C.cuda_version_problem(driver, runtime) == ""


@pytest.mark.parametrize(
    "driver,runtime,driver_says",
    [
        (12040, 13000, "supports CUDA up to 12.4"),
        (12090, 13010, "supports CUDA up to 12.9"),
        (11080, 12060, "supports CUDA up to 11.8"),
        (0, 13000, "was not found"),
    ],
)
def test_a_driver_too_old_for_the_kernels_is_named_with_both_versions(driver, runtime, driver_says):
    message = _C.cuda_version_problem(driver, runtime)
    built = f"{runtime // 1000}.{runtime % 1000 // 10}"
    assert message.startswith("mper: the NVIDIA driver " + driver_says)
    assert f"built with CUDA {built}" in message
    assert "torch.version.cuda" in message and "update the NVIDIA driver" in message
    assert "\n" not in message


def test_the_build_says_which_cuda_runtime_it_links():
    if _C.with_cuda:
        assert _C.cuda_runtime_version >= 11000 and _C.cuda_runtime_version % 10 == 0
    else:
        assert _C.cuda_runtime_version is None


@pytest.mark.cuda
def test_the_driver_runs_the_kernels_runtime():
    driver = _C.cuda_driver_version()
    assert driver >= 11000
    assert _C.cuda_version_problem(driver, _C.cuda_runtime_version) == ""


# ---------------------------------------------------------------- concurrent calls on a GPU


@pytest.mark.cuda
def test_concurrent_calls_with_banks_across_the_shared_memory_opt_in():
    """Threads (the bindings release the GIL) calling the head with banks below and above
    the default 48 KiB of shared memory: the kernels' limit is only ever raised, so every
    launch succeeds and every result matches the reference."""
    # rows x 16 floats: 512 rows = 32 KiB, 1000 = 62.5 KiB, 1500 = 94 KiB
    cases = []
    for index, protos in enumerate([256, 500, 750, 128, 700, 350]):
        feat = make_features(2, 16, (16, 16), torch.float32, seed=index, device="cuda")
        bank = make_bank(2 * protos, 16, seed=index, device="cuda")
        logits, assign, loss = ref.proto_classify_infonce(feat, bank, 2, 0.1, 0.1, None)
        cases.append((feat, bank, logits, assign, loss))
    torch.cuda.synchronize()

    def run(case):
        feat, bank, *_ = case
        with torch.cuda.stream(torch.cuda.Stream()):
            results = [ops.proto_classify_infonce(feat, bank, 2, 0.1, 0.1, None) for _ in range(5)]
            torch.cuda.current_stream().synchronize()
        return results

    with concurrent.futures.ThreadPoolExecutor(len(cases)) as pool:
        outcomes = list(pool.map(run, cases))
    tol = TOLERANCE[torch.float32]
    for (feat, bank, logits, assign, loss), results in zip(cases, outcomes):
        keep = reliable_voxels(feat, bank, 2).unsqueeze(1)
        for got_logits, got_assign, got_loss in results:
            assert_close_where(got_logits, logits, keep, tol)
            assert torch.equal(got_assign[keep.expand_as(got_assign)], assign[keep.expand_as(assign)])
            torch.testing.assert_close(got_loss, loss, **tol)
