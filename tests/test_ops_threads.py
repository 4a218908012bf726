"""The CPU kernels' threads and memory: they run with torch's thread count, give the same
bits on every run at a fixed count, and turn a failed allocation into a MemoryError
instead of ending the process. The thread and memory checks run in a fresh interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from mper import ops
from op_cases import make_bank, make_features


def _run_python(code: str) -> subprocess.CompletedProcess:
    env = {name: value for name, value in os.environ.items() if not name.startswith(("OMP_", "GOMP_"))}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through /proc")
def test_cpu_kernels_use_torchs_thread_count():
    # The ops run in a thread other than the one that called torch.set_num_threads (as in
    # a data-loading or serving thread): torch keeps its count for the process, OpenMP
    # keeps its own per thread, so only a count passed to the kernels reaches them there.
    result = _run_python(
        """
        import os, threading, torch
        from mper import ops

        def threads():  # thread ids: the count alone would also see threads that are exiting
            return set(os.listdir("/proc/self/task"))

        def in_new_thread(body):
            thread = threading.Thread(target=body)
            thread.start()
            thread.join()

        feat = torch.randn(2, 4, 32, 32, requires_grad=True)
        bank = torch.randn(6, 4)
        labels = torch.randint(0, 2, (2, 32, 32))

        def every_kernel():
            before = threads()
            logits, assign, loss = ops.proto_classify_infonce(feat, bank, 2)
            (logits.sum() + loss).backward()
            ops.proto_accumulate(feat, labels, assign, None, 2, 3)
            ops.largest_component(labels, 2)
            print("one thread:", len(threads() - before))

        def head():
            before = threads()
            ops.proto_classify_infonce(feat, bank, 2)
            print("three threads:", len(threads() - before))

        torch.set_num_threads(1)
        in_new_thread(every_kernel)
        torch.set_num_threads(3)
        in_new_thread(head)
        """
    )
    assert result.returncode == 0, result.stderr
    # an OpenMP team of n threads is the caller and n - 1 new workers
    assert "one thread: 0\n" in result.stdout and "three threads: 2\n" in result.stdout, result.stdout


def _gamma(terms: torch.Tensor) -> torch.Tensor:
    """gamma_n = n u / (1 - n u): the relative error bound of a float32 sum of n terms
    in any order (u = 2**-24), per entry of ``terms`` (n)."""
    unit = 2.0**-24
    return terms * unit / (1 - terms * unit)


@pytest.mark.numerics
def test_same_bits_on_every_run_at_a_fixed_thread_count():
    feat = make_features(2, 8, (24, 40), torch.float32, seed=41)
    bank = make_bank(6, 8, seed=42)
    labels = torch.randint(0, 2, (2, 24, 40), generator=torch.Generator().manual_seed(43))

    def run():
        f = feat.clone().requires_grad_(True)
        logits, assign, loss = ops.proto_classify_infonce(f, bank, 2, 0.1, 0.1, 0)
        (grad,) = torch.autograd.grad(logits.sum() + loss, f)
        sums, counts = ops.proto_accumulate(f, labels, assign, None, 2, 3)
        return logits, loss, grad, sums, counts

    _, assign, _ = ops.proto_classify_infonce(feat, bank, 2, 0.1, 0.1, 0)
    magnitudes, _ = ops.proto_accumulate(feat.abs(), labels, assign, None, 2, 3)  # sum |z| per prototype
    threads = torch.get_num_threads()
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            first, second = run(), run()
            assert all(torch.equal(a, b) for a, b in zip(first, second))
            if count == 1:
                single = first
            # Another thread count may split the voxels otherwise. Per voxel that moves at
            # most the rounding of a D = 8 term dot product of unit vectors divided by
            # tau = 0.1: 2 gamma_8 / 0.1 < 1e-5 (logits and, through the same products,
            # the gradient). The sums over voxels may be taken in any order: two orders
            # differ by at most 2 gamma_n times the sum of the magnitudes.
            logits, loss, grad, sums, counts = first
            torch.testing.assert_close(logits, single[0], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(grad, single[2], rtol=1e-5, atol=1e-5)
            assert torch.equal(counts, single[4])
            voxels = counts.sum().double()
            total, single_total = float(loss.detach()), float(single[1].detach())
            assert abs(total - single_total) <= 2 * float(_gamma(voxels)) * abs(single_total) + 1e-5
            bound = 2 * _gamma(counts.double()).unsqueeze(1) * magnitudes.double()
            assert ((sums.double() - single[3].double()).abs() <= bound).all()
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize(
    "call,kernel",
    [
        # the head's per-thread scratch holds 2 x 2**25 bank rows x 256 voxels
        ("ops.proto_infonce(torch.randn(1, 1, 16, 16), torch.randn(2**25, 1))", "the CPU prototype head"),
        (
            "ops.proto_accumulate(torch.randn(1, 1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.int64),"
            " torch.zeros(1, 1, 4, 4, dtype=torch.int64), None, 1, 2**25)",
            "the CPU prototype accumulation",
        ),
        # run tables for the worst case, 24 bytes a voxel
        (
            "ops.largest_component(torch.zeros(1, 4096, 16384, dtype=torch.uint8), 2, check_labels=False)",
            "the CPU largest-component kernel",
        ),
    ],
)
def test_failed_scratch_allocation_is_a_memory_error(call, kernel):
    result = _run_python(
        f"""
        import resource
        import torch
        from mper import ops
        # the address space the imports mapped (a CUDA build of torch maps about 3 GiB, a CPU
        # build 0.6) and 1 GiB more: the allocations tried, of 1.5 GiB and more, fail
        mapped = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (mapped + 2**30, resource.getrlimit(resource.RLIMIT_AS)[1]))
        try:
            {call}
        except MemoryError as error:
            print("MemoryError:", error)
        feat = torch.randn(1, 4, 8, 8)
        print("still works:", ops.proto_infonce(feat, torch.randn(6, 4)).isfinite().item())
        """
    )
    assert result.returncode == 0, result.stderr
    assert f"MemoryError: mper: {kernel} could not allocate" in result.stdout, result.stdout
    assert "still works: True" in result.stdout
