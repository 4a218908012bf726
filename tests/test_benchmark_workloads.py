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


def test_on_cuda_the_largest_component_benchmark_times_host_contenders_by_the_wall_clock(workloads, monkeypatch):
    """A CUDA graph of the CPU kernel or scipy captures none of their work: its replay
    would time an empty graph. Only mper's CUDA kernel goes through the device timer."""
    spec = importlib.util.spec_from_file_location("largest_component_bench", BENCHMARKS / "largest_component.py")
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setitem(sys.modules, spec.name, bench)  # dataclasses look their module up by name
    spec.loader.exec_module(bench)
    monkeypatch.setattr(bench, "host_syncs", lambda device, fn: 0)

    class DeviceTimer:
        trials, last_method, timed = 0, "cuda-graph", []

        def median_ms(self, fn):
            self.timed.append(fn)
            return 0.001

    timer, cuda = DeviceTimer(), torch.device("cuda")
    calls = []
    for name in ("mper", "mper-cpu", "scipy"):
        ms, timing, syncs = bench.timed(name, lambda name=name: calls.append(name), cuda, timer, 3)
        assert timing == ("cuda-graph" if name == "mper" else "wall") and syncs == 0
    assert len(timer.timed) == 1 and calls.count("mper-cpu") == calls.count("scipy") == 4  # a warm-up, 3 trials
