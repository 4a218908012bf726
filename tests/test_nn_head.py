"""mper.nn.PrototypeHead as a module: values against hand computations, state, errors,
and a few training steps on MONAI's UNet (examples/monai_prototype_head.py)."""

from __future__ import annotations

import copy
import importlib.util
import math
import pickle
from pathlib import Path

import pytest
import torch

from mper.nn import PrototypeHead

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "monai_prototype_head.py"


def two_class_head(ops: str = "reference") -> PrototypeHead:
    head = PrototypeHead(num_classes=2, num_prototypes=2, dim=2, tau=0.5, ops=ops)
    head.prototypes.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]))
    return head


@pytest.mark.parametrize("ops", ["reference", "mper"])
def test_forward_gives_the_best_cosine_per_class_over_tau(ops):
    # voxel 0 points along (1, 1): cos 1/sqrt(2) to prototypes 0 and 1 of class 0, -1/sqrt(2) to class 1
    # voxel 1 points along (0, -3): cos 1 to prototype 1 of class 1 (row 3), 0 to class 0's best
    feat = torch.tensor([[1.0, 0.0], [1.0, -3.0]]).reshape(1, 2, 1, 2)
    logits, assign = two_class_head(ops)(feat)
    root_half = math.sqrt(0.5)
    expected = torch.tensor([[root_half, 0.0], [-root_half, 1.0]]) / 0.5
    torch.testing.assert_close(logits[0, :, 0], expected)
    assert assign[0, :, 0, 1].tolist() == [0, 1]  # class 0: (1, 0) ties (0, 1) at 0, first wins; class 1: (0, -1)


def test_contrastive_loss_matches_the_fused_forward():
    head = two_class_head()
    feat = torch.randn(2, 2, 1, 5, generator=torch.Generator().manual_seed(0))
    _, _, fused = head.forward_with_contrastive(feat)
    torch.testing.assert_close(fused, head.contrastive_loss(feat))


def test_the_forward_reads_the_bank_as_it_was_when_it_ran():
    head = two_class_head()
    feat = torch.randn(1, 2, 2, 3, generator=torch.Generator().manual_seed(1), requires_grad=True)
    logits, _ = head(feat)
    gradient_before = torch.autograd.grad(logits.sum(), feat, retain_graph=True)[0]
    head.prototypes.mul_(-1.0)  # an in-place update between forward and backward
    torch.testing.assert_close(torch.autograd.grad(logits.sum(), feat)[0], gradient_before)


def test_the_bank_is_module_state():
    head = two_class_head()
    assert list(head.state_dict()) == ["prototypes"]
    assert list(head.parameters()) == []  # moved by EMA, never by an optimizer
    clone = pickle.loads(pickle.dumps(copy.deepcopy(head)))
    assert torch.equal(clone.prototypes, head.prototypes) and clone.ops_name == "reference"
    assert head.to(torch.float64).prototypes.dtype == torch.float64


@pytest.mark.parametrize(
    "arguments, message",
    [((0, 2, 4), "num_classes"), ((2, 2.5, 4), "num_prototypes"), ((2, 2, True), "dim")],
)
def test_sizes_must_be_positive_integers(arguments, message):
    with pytest.raises(ValueError, match=message):
        PrototypeHead(*arguments)


def test_an_unknown_ops_name_is_refused():
    with pytest.raises(ValueError, match="ops must be one of mper, reference"):
        PrototypeHead(2, 2, 4, ops="cuda")


def load_example():
    pytest.importorskip("monai", reason="monai is not installed (pip install 'mper[test]')")
    spec = importlib.util.spec_from_file_location("monai_prototype_head", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_head_trains_on_monai_unet():
    example = load_example()
    torch.manual_seed(0)
    model = example.UNetWithPrototypes(num_classes=2)
    image, label = example.toy_batch(batch=2, size=24)
    example.initialize_prototypes(model, image, label)
    initial = model.prototypes.prototypes.clone()
    assert "prototypes.prototypes" in model.state_dict()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = [example.train_step(model, optimizer, image, label) for _ in range(10)]
    assert all(map(math.isfinite, losses))
    assert losses[-1] < 0.5 * losses[0]
    assert not torch.allclose(model.prototypes.prototypes, initial)  # the gated EMA steps moved the bank
    model.eval()
    with torch.no_grad():
        logits, _ = model.prototypes(model(image)[1])
    accuracy = (logits.argmax(dim=1) == label).float().mean()
    assert accuracy > 0.9
