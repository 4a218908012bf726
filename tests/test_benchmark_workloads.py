"""The benchmarks' contenders compute what they stand for: the vectorised eager bank update
(the fair eager baseline of ``benchmarks/ops.py``, also its compiled contender) equals
:mod:`mper.reference`'s."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

import mper.reference as ref

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def workloads():
    spec = importlib.util.spec_from_file_location("workloads", BENCHMARKS / "workloads.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.mark.parametrize("spatial", [(6, 7), (3, 4, 5)])
def test_the_vectorised_update_is_the_reference_update(workloads, spatial):
    classes, protos, depth, batch = 3, 2, 5, 2
    generator = torch.Generator().manual_seed(1)
    emb = torch.randn((batch, depth, *spatial), generator=generator)
    labels = torch.randint(0, classes, (batch, *spatial), generator=generator)
    assign = torch.randint(0, protos, (batch, classes, *spatial), generator=generator)
    mask = torch.rand((batch, *spatial), generator=generator) > 0.4
    mask[labels == 2] = False  # class 2's rows get no voxel and must keep their values
    bank = torch.randn(classes * protos, depth, generator=generator)

    expected = ref.proto_ema_update_(
        bank.clone(), *ref.proto_accumulate(emb, labels, assign, mask, classes, protos), 0.9
    )
    found = workloads.vectorised_update_(bank.clone(), emb, labels, assign, mask, protos, 0.9)
    torch.testing.assert_close(found, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(found[4:], bank[4:])
