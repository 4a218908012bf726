"""Every registered op (torch.ops.mper.*), called directly as torch.compile, opcheck and
users call it, refuses malformed input with an error, eagerly and under fake tensors,
instead of letting a kernel read past a buffer or misread a layout; the public functions
still accept and convert what they always did."""

from __future__ import annotations

import re

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import mper.reference as ref
from mper import ops
from mper.ops import _common
from op_cases import make_bank, make_features

m = torch.ops.mper
B, D, C, K, SPATIAL = 2, 4, 2, 3, (3, 5)


def _restrided(x: torch.Tensor, dim0: int, dim1: int) -> torch.Tensor:
    """`x` with the same shape and values, laid out with dims `dim0` and `dim1` swapped in memory."""
    return x.transpose(dim0, dim1).contiguous().transpose(dim0, dim1)


def _head_inputs(dtype=torch.float32):
    generator = torch.Generator().manual_seed(0)
    feat = make_features(B, D, SPATIAL, dtype, seed=1)
    bank = make_bank(C * K, D, seed=2).to(torch.float64 if dtype == torch.float64 else torch.float32)
    grad_logits = torch.randn((B, C, *SPATIAL), generator=generator).to(dtype)
    count = torch.tensor(float(B * 15), dtype=bank.dtype)
    return dict(feat=feat, bank=bank, grad_logits=grad_logits, grad_loss=torch.tensor(1.0, dtype=dtype), count=count)


def _update_inputs():
    generator = torch.Generator().manual_seed(3)
    return dict(
        emb=make_features(B, D, SPATIAL, torch.float32, seed=4),
        labels=torch.randint(0, C, (B, *SPATIAL), generator=generator),
        assign=torch.randint(0, K, (B, C, *SPATIAL), generator=generator),
        mask=torch.rand((B, *SPATIAL), generator=generator) > 0.3,
        bank=make_bank(C * K, D, seed=5),
        sums=torch.randn((C * K, D), generator=generator),
        counts=torch.arange(C * K, dtype=torch.float32),
    )


def _classify(x, num_classes=C, tau=0.1):
    return m.proto_classify(x["feat"], x["bank"], num_classes, tau)


def _infonce(x, tau=0.1):
    return m.proto_infonce(x["feat"], x["bank"], tau, -1)


def _fused(x, num_classes=C, tau=0.1, nce_tau=0.1):
    return m.proto_classify_infonce(x["feat"], x["bank"], num_classes, tau, nce_tau, 0)


def _backward(x, num_classes=C, tau=0.1, nce_tau=0.1):
    return m.proto_head_backward(
        x["feat"], x["bank"], x["grad_logits"], x["grad_loss"], x["count"], num_classes, tau, nce_tau, 0
    )


def _accumulate(x, num_classes=C, num_protos=K):
    return m.proto_accumulate(x["emb"], x["labels"], x["assign"], x["mask"], num_classes, num_protos, False)


def _ema(x, momentum=0.9):
    return m.proto_ema_update_(x["bank"], x["sums"], x["counts"], momentum)


def _components(x, num_classes=C):
    return m.largest_component(x["labels"], num_classes, False)


HEAD_OPS = {
    "proto_classify": _classify,
    "proto_infonce": _infonce,
    "proto_classify_infonce": _fused,
    "proto_head_backward": _backward,
}
UPDATE_OPS = {"proto_accumulate": _accumulate, "proto_ema_update_": _ema, "largest_component": _components}


def _set(**changes):
    """A change to the inputs: each keyword maps an input's name to a function of the inputs."""

    def change(x):
        x = dict(x)
        x.update({name: make(x) for name, make in changes.items()})
        return x

    return change


# (case, change to the inputs, keyword arguments of the call, error, words in the message)
HEAD_CASES = [
    # the three cases that went unchecked: wrong logits, a read past the bank, ...
    ("non-dense feature view", _set(feat=lambda x: _restrided(x["feat"], 2, 3)), {}, ValueError, "dense spatial"),
    ("bank (6, 2) with D = 4", _set(bank=lambda x: x["bank"][:, :2].contiguous()), {}, ValueError, "D = 4"),
    ("bank wider than D", _set(bank=lambda x: torch.cat([x["bank"]] * 2, 1)), {}, ValueError, "D = 4"),
    ("feat (B, D, N)", _set(feat=lambda x: x["feat"].flatten(2)), {}, ValueError, "(B, D, H, W)"),
    ("feat of 6 dims", _set(feat=lambda x: x["feat"][..., None, None]), {}, ValueError, "(B, D, H, W)"),
    ("integer feat", _set(feat=lambda x: x["feat"].int()), {}, TypeError, "float32"),
    ("bank float64 for float32 feat", _set(bank=lambda x: x["bank"].double()), {}, TypeError, "torch.float32"),
    ("bank float16", _set(bank=lambda x: x["bank"].half()), {}, TypeError, "torch.float32"),
    ("integer bank", _set(bank=lambda x: x["bank"].long()), {}, TypeError, "floating point"),
    ("bank not contiguous", _set(bank=lambda x: _restrided(x["bank"], 0, 1)), {}, ValueError, "contiguous"),
    ("bank of one dim", _set(bank=lambda x: x["bank"].flatten()), {}, ValueError, "(C*K, D)"),
    ("bank without rows", _set(bank=lambda x: x["bank"][:0]), {}, ValueError, "at least one row"),
    ("bank on another device", _set(bank=lambda x: x["bank"].to("meta")), {}, ValueError, "one device"),
    ("feat on another device", _set(feat=lambda x: x["feat"].to("meta")), {}, ValueError, "one device"),
    ("tau 0", None, dict(tau=0.0), ValueError, "tau"),
    ("tau negative", None, dict(tau=-0.1), ValueError, "tau"),
    ("tau inf", None, dict(tau=float("inf")), ValueError, "tau"),
    ("tau nan", None, dict(tau=float("nan")), ValueError, "tau"),
    ("tau whose reciprocal overflows", None, dict(tau=1e-300), ValueError, "overflows"),
]
CLASS_CASES = [  # the ops that take num_classes
    ("rows not a multiple of C", None, dict(num_classes=4), ValueError, "multiple of num_classes"),
    ("num_classes 0", None, dict(num_classes=0), ValueError, "num_classes"),
    ("num_classes negative", None, dict(num_classes=-2), ValueError, "num_classes"),
]
NCE_CASES = [("nce_tau 0", None, dict(nce_tau=0.0), ValueError, "nce_tau")]
BACKWARD_CASES = [
    (
        "grad_logits of C + 1 classes",
        _set(grad_logits=lambda x: torch.cat([x["grad_logits"], x["grad_logits"][:, :1]], 1)),
        {},
        ValueError,
        "grad_logits must have shape (2, 2, 3, 5)",
    ),
    (
        "grad_logits of other spatial dims",
        _set(grad_logits=lambda x: x["grad_logits"].transpose(2, 3)),
        {},
        ValueError,
        "grad_logits must have shape",
    ),
    ("integer grad_logits", _set(grad_logits=lambda x: x["grad_logits"].long()), {}, TypeError, "grad_logits"),
    (
        "grad_logits on another device",
        _set(grad_logits=lambda x: x["grad_logits"].to("meta")),
        {},
        ValueError,
        "one device",
    ),
    (
        "grad_loss not a scalar",
        _set(grad_loss=lambda x: x["grad_loss"].expand(3)),
        {},
        ValueError,
        "grad_loss must have shape ()",
    ),
    ("grad_loss without count", _set(count=lambda x: None), {}, ValueError, "count"),
    ("count float64 for float32 feat", _set(count=lambda x: x["count"].double()), {}, TypeError, "count must be"),
    ("count not a scalar", _set(count=lambda x: x["count"][None]), {}, ValueError, "count must have shape ()"),
]
UPDATE_CASES = {
    "proto_accumulate": [
        # ... and int32 labels read as int64, past their buffer
        ("int32 labels", _set(labels=lambda x: x["labels"].int()), {}, TypeError, "labels must be torch.int64"),
        ("int32 assign", _set(assign=lambda x: x["assign"].int()), {}, TypeError, "assign must be torch.int64"),
        ("uint8 mask", _set(mask=lambda x: x["mask"].to(torch.uint8)), {}, TypeError, "mask must be torch.bool"),
        ("float labels", _set(labels=lambda x: x["labels"].float()), {}, TypeError, "integer tensor"),
        ("float mask", _set(mask=lambda x: x["mask"].float()), {}, TypeError, "mask must be bool"),
        ("labels not contiguous", _set(labels=lambda x: _restrided(x["labels"], 1, 2)), {}, ValueError, "contiguous"),
        ("assign not contiguous", _set(assign=lambda x: _restrided(x["assign"], 0, 1)), {}, ValueError, "contiguous"),
        ("mask not contiguous", _set(mask=lambda x: _restrided(x["mask"], 1, 2)), {}, ValueError, "contiguous"),
        ("non-dense emb", _set(emb=lambda x: _restrided(x["emb"], 2, 3)), {}, ValueError, "dense spatial"),
        ("labels of another batch", _set(labels=lambda x: x["labels"][:1]), {}, ValueError, "labels must have shape"),
        (
            "labels of other spatial dims",
            _set(labels=lambda x: x["labels"].transpose(1, 2)),
            {},
            ValueError,
            "labels must have shape",
        ),
        (
            "assign of C - 1 classes",
            _set(assign=lambda x: x["assign"][:, :1]),
            {},
            ValueError,
            "assign must have shape (2, 2, 3, 5)",
        ),
        ("mask of one image", _set(mask=lambda x: x["mask"][:1]), {}, ValueError, "mask must have shape"),
        ("emb (B, D, N)", _set(emb=lambda x: x["emb"].flatten(2)), {}, ValueError, "(B, D, H, W)"),
        ("integer emb", _set(emb=lambda x: x["emb"].int()), {}, TypeError, "float32"),
        ("labels on another device", _set(labels=lambda x: x["labels"].to("meta")), {}, ValueError, "one device"),
        ("num_classes 0", None, dict(num_classes=0), ValueError, "num_classes"),
        ("num_protos 0", None, dict(num_protos=0), ValueError, "num_protos"),
    ],
    "proto_ema_update_": [
        (
            "sums float64 for a float32 bank",
            _set(sums=lambda x: x["sums"].double()),
            {},
            TypeError,
            "sums must be torch.float32",
        ),
        ("counts int64", _set(counts=lambda x: x["counts"].long()), {}, TypeError, "counts must be torch.float32"),
        ("sums not contiguous", _set(sums=lambda x: _restrided(x["sums"], 0, 1)), {}, ValueError, "contiguous"),
        ("counts not contiguous", _set(counts=lambda x: x["counts"].repeat(2)[::2]), {}, ValueError, "contiguous"),
        ("sums of fewer rows", _set(sums=lambda x: x["sums"][:3]), {}, ValueError, "sums must have shape (6, 4)"),
        (
            "sums of fewer columns",
            _set(sums=lambda x: x["sums"][:, :2].contiguous()),
            {},
            ValueError,
            "sums must have shape (6, 4)",
        ),
        ("counts of fewer rows", _set(counts=lambda x: x["counts"][:3]), {}, ValueError, "counts must have shape (6,)"),
        ("bank not contiguous", _set(bank=lambda x: _restrided(x["bank"], 0, 1)), {}, ValueError, "contiguous"),
        ("bank float16", _set(bank=lambda x: x["bank"].half()), {}, TypeError, "float32"),
        ("bank of one dim", _set(bank=lambda x: x["bank"].flatten()), {}, ValueError, "(C*K, D)"),
        ("sums on another device", _set(sums=lambda x: x["sums"].to("meta")), {}, ValueError, "one device"),
        ("momentum above 1", None, dict(momentum=1.5), ValueError, "momentum"),
        ("momentum negative", None, dict(momentum=-0.1), ValueError, "momentum"),
        ("momentum nan", None, dict(momentum=float("nan")), ValueError, "momentum"),
    ],
    "largest_component": [
        ("labels not contiguous", _set(labels=lambda x: _restrided(x["labels"], 1, 2)), {}, ValueError, "contiguous"),
        ("labels expanded", _set(labels=lambda x: x["labels"][:1].expand(B, *SPATIAL)), {}, ValueError, "contiguous"),
        ("float labels", _set(labels=lambda x: x["labels"].float()), {}, TypeError, "integer label map"),
        ("bool labels", _set(labels=lambda x: x["labels"].bool()), {}, TypeError, "integer label map"),
        ("labels of one image", _set(labels=lambda x: x["labels"][0]), {}, ValueError, "(B, H, W)"),
        ("labels of 5 dims", _set(labels=lambda x: x["labels"][:, None, None]), {}, ValueError, "(B, H, W)"),
        ("num_classes 0", None, dict(num_classes=0), ValueError, "num_classes"),
    ],
}


def _malformed_calls():
    for name, call in HEAD_OPS.items():
        cases = list(HEAD_CASES)
        if name != "proto_infonce":
            cases += CLASS_CASES
        if name in ("proto_classify_infonce", "proto_head_backward"):
            cases += NCE_CASES
        if name == "proto_head_backward":
            cases += BACKWARD_CASES
        for case in cases:
            yield pytest.param(call, _head_inputs, *case[1:], id=f"{name}: {case[0]}")
    for name, call in UPDATE_OPS.items():
        for case in UPDATE_CASES[name]:
            yield pytest.param(call, _update_inputs, *case[1:], id=f"{name}: {case[0]}")


def _fake(inputs, mode):
    return {name: None if x is None else mode.from_tensor(x) for name, x in inputs.items()}


def test_every_registered_op_has_malformed_cases():
    registered = {
        name.removeprefix("mper::") for name in torch._C._dispatch_get_all_op_names() if name.startswith("mper::")
    }
    assert registered == set(HEAD_OPS) | set(UPDATE_OPS)


@pytest.mark.parametrize("call", [*HEAD_OPS.values(), *UPDATE_OPS.values()], ids=[*HEAD_OPS, *UPDATE_OPS])
def test_well_formed_direct_calls_run(call):
    """The inputs the malformed cases start from pass the checks (each case changes one thing)."""
    inputs = _head_inputs() if call in HEAD_OPS.values() else _update_inputs()
    call(inputs)
    with FakeTensorMode() as mode:
        call(_fake(inputs, mode))


@pytest.mark.parametrize("call,inputs,change,options,error,words", list(_malformed_calls()))
def test_malformed_direct_call_raises(call, inputs, change, options, error, words):
    """The op body refuses it (an eager call), and so does the fake kernel (what
    torch.compile traces), with the same error."""
    x = inputs() if change is None else change(inputs())
    with pytest.raises(error, match=re.escape(words)):
        call(x, **options)
    with FakeTensorMode() as mode, pytest.raises(error, match=re.escape(words)):
        call(_fake(x, mode), **options)


def test_compiled_malformed_direct_call_raises():
    bank = make_bank(6, 2, seed=6)  # D = 2 for features of D = 4: the kernel would read past the bank

    @torch.compile(fullgraph=True)
    def logits(feat, bank):
        return torch.ops.mper.proto_classify(feat, bank, 2, 0.1)[0] * 2

    with pytest.raises(RuntimeError, match=re.escape("prototypes must be (C*K, D) with D = 4")):
        logits(make_features(1, 4, (3, 3), torch.float32, seed=7), bank)


@pytest.mark.parametrize("call", HEAD_OPS.values(), ids=HEAD_OPS)
def test_features_deeper_than_the_cuda_kernels_take_are_refused_when_traced(call):
    """On CUDA tensors the head's fake kernels refuse a depth the CUDA kernels cannot run,
    so that a compiled graph fails when it is traced, not when it first runs on the GPU;
    the same depth on the CPU is the kernels' to run, and the deepest CUDA one passes."""
    deepest = _common._C.cuda_max_head_depth

    def inputs(depth: int, device: str) -> dict:  # made in the fake mode: no CUDA needed
        return dict(
            feat=torch.zeros((B, depth, *SPATIAL), device=device),
            bank=torch.ones((C * K, depth), device=device),
            grad_logits=torch.zeros((B, C, *SPATIAL), device=device),
            grad_loss=torch.ones((), device=device),
            count=torch.full((), 30.0, device=device),
        )

    words = f"feat has {deepest + 1} channels: the CUDA kernels support a feature depth of at most {deepest}"
    with FakeTensorMode():
        with pytest.raises(ValueError, match=re.escape(words)):
            call(inputs(deepest + 1, "cuda"))
        call(inputs(deepest, "cuda"))
        call(inputs(deepest + 1, "cpu"))


def test_public_functions_convert_what_the_ops_refuse():
    """Non-dense features, a bank in another dtype or layout, int32 labels and assignments,
    an integer mask, non-contiguous label maps and float64 update tables: the public
    functions convert them and give the reference's values."""
    head, update = _head_inputs(), _update_inputs()
    feat, bank = _restrided(head["feat"], 2, 3), _restrided(head["bank"].double(), 0, 1)
    logits, assign, loss = ops.proto_classify_infonce(feat, bank, C)
    want = ref.proto_classify_infonce(feat.contiguous(), bank.float(), C)
    torch.testing.assert_close(logits, want[0], rtol=1e-5, atol=1e-5)
    assert torch.equal(assign, want[1])
    torch.testing.assert_close(loss, want[2], rtol=1e-5, atol=1e-6)

    emb, labels, assign, mask = (update[name] for name in ("emb", "labels", "assign", "mask"))
    got = ops.proto_accumulate(
        _restrided(emb, 2, 3), labels.int(), _restrided(assign.int(), 0, 1), mask.to(torch.uint8), C, K
    )
    want = ref.proto_accumulate(emb, labels, assign, mask, C, K)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], want[1])

    got_bank, want_bank = update["bank"].clone(), update["bank"].clone()
    ops.proto_ema_update_(got_bank, _restrided(update["sums"].double(), 0, 1), update["counts"].long(), 0.9)
    ref.proto_ema_update_(want_bank, update["sums"], update["counts"], 0.9)
    torch.testing.assert_close(got_bank, want_bank)

    label_map = _restrided(labels.to(torch.int32), 1, 2)
    assert torch.equal(ops.largest_component(label_map, C), ref.largest_component(label_map.contiguous(), C))
