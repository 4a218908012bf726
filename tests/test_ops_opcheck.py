"""torch.library.opcheck over every mper custom op (schema, fake kernel, autograd
registration, AOT dispatch), on the CPU and on CUDA; and the label checks under
torch.compile."""

from __future__ import annotations

import pytest
import torch

from mper import ops
from op_cases import make_bank, make_features

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def _cases(device):
    """(op, args) for every registered op, with the argument variants the package uses."""
    generator = torch.Generator().manual_seed(31)
    feat = make_features(2, 4, (6, 8), torch.float32, seed=31, device=device).requires_grad_(True)
    half = make_features(1, 4, (4, 4, 2), torch.bfloat16, seed=32, device=device).requires_grad_(True)
    bank = make_bank(6, 4, seed=33, device=device)
    labels = torch.randint(0, 2, (2, 6, 8), generator=generator).to(device)
    assign = torch.randint(0, 3, (2, 2, 6, 8), generator=generator).to(device)
    mask = (torch.rand((2, 6, 8), generator=generator) > 0.3).to(device)
    grad_logits = torch.randn((2, 2, 6, 8), generator=generator).to(device)
    count = torch.tensor(70.0, device=device)
    m = torch.ops.mper
    return [
        (m.proto_classify, (feat, bank, 2, 0.1)),
        (m.proto_classify, (half, bank, 2, 0.2)),
        (m.proto_infonce, (feat, bank, 0.1, -1)),
        (m.proto_infonce, (half, bank, 0.1, 0)),
        (m.proto_classify_infonce, (feat, bank, 2, 0.1, 0.2, 0)),
        (m.proto_classify_infonce, (half, bank, 2, 0.1, 0.1, -1)),
        (
            m.proto_head_backward,
            (feat.detach(), bank, grad_logits, torch.tensor(2.0, device=device), count, 2, 0.1, 0.2, 0),
        ),
        (m.proto_head_backward, (feat.detach(), bank, grad_logits, None, None, 2, 0.1, 0.1, -1)),
        (m.proto_head_backward, (feat.detach(), bank, None, torch.tensor(1.0, device=device), count, 1, 1.0, 0.1, -1)),
        (m.proto_accumulate, (feat.detach(), labels, assign, mask, 2, 3, True)),
        (m.proto_accumulate, (feat.detach(), labels, assign, None, 2, 3, False)),
        (
            m.proto_ema_update_,
            (bank.clone(), torch.randn((6, 4), generator=generator).to(device), mask.flatten()[:6].float(), 0.9),
        ),
        (m.largest_component, (labels.to(torch.uint8), 2)),
        (m.largest_component, (assign[:, 0].contiguous(), 3, True)),
    ]


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_every_op(device):
    cases = _cases(device)
    registered = {name for name in torch._C._dispatch_get_all_op_names() if name.startswith("mper::")}
    missing = registered - {op._qualified_op_name for op, _ in cases}
    assert not missing, f"add opcheck cases for {sorted(missing)}"
    for op, args in cases:
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("device", DEVICES)
def test_label_check_runs_under_torch_compile(device):
    def update(emb, labels, assign, mask):
        return ops.proto_accumulate(emb, labels, assign, mask, 2, 3, check_labels=True)

    emb = make_features(1, 4, (4, 4), torch.float32, seed=34, device=device)
    labels = torch.zeros((1, 4, 4), dtype=torch.int64, device=device)
    assign = torch.zeros((1, 2, 4, 4), dtype=torch.int64, device=device)
    mask = torch.ones((1, 4, 4), dtype=torch.bool, device=device)
    compiled = torch.compile(update, fullgraph=True)
    sums, counts = compiled(emb, labels, assign, mask)
    assert counts[0].item() == 16
    labels[0, 2, 1] = 5
    with pytest.raises(ValueError, match=r"labels must lie in \[0, num_classes\) = \[0, 2\)"):
        compiled(emb, labels, assign, mask)
    mask[0, 2, 1] = False  # out of range but not selected: fine
    compiled(emb, labels, assign, mask)


@pytest.mark.parametrize("device", DEVICES)
def test_largest_component_label_check_runs_under_torch_compile(device):
    compiled = torch.compile(lambda labels: ops.largest_component(labels, 3, check_labels=True), fullgraph=True)
    labels = torch.zeros((1, 5, 6), dtype=torch.int64, device=device)
    labels[0, 1:3, 1:3] = 2
    assert torch.equal(compiled(labels), labels)
    labels[0, 4, 4] = 7
    with pytest.raises(ValueError, match=r"labels must lie in \[0, num_classes\) = \[0, 3\)"):
        compiled(labels)
