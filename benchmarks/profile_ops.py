"""Where the time of the fused ops goes: host time per call versus device time per kernel.

python benchmarks/profile_ops.py                 # torch.profiler tables, LA B=2 and ACDC
ncu --kernel-name regex:head_ python benchmarks/profile_ops.py --once   # one call, for Nsight Compute
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from mper import ops
from workloads import WORKLOADS, Problem, head_call, run_head, update_call


def host_ms_per_call(fn, calls: int = 50) -> tuple[float, float]:
    """(host ms per call without waiting for the device, wall ms per call with it)."""
    fn()
    torch.cuda.synchronize()
    begin = time.perf_counter()
    for _ in range(calls):
        fn()
    host = (time.perf_counter() - begin) * 1e3 / calls
    torch.cuda.synchronize()
    wall = (time.perf_counter() - begin) * 1e3 / calls
    return host, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--once", action="store_true", help="one forward+backward and one update per case")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    for key in ("la_b2", "acdc"):
        problem = Problem(WORKLOADS[key], dtype, torch.device("cuda"), copies=1)
        head = head_call(ops, "classify+infonce", problem)
        cases = {"classify+infonce fwd+bwd": lambda: run_head(head, problem, True), "update": update_call(ops, problem)}
        for name, fn in cases.items():
            if args.once:
                fn()
                torch.cuda.synchronize()
                continue
            host, wall = host_ms_per_call(fn)
            print(f"\n== {key} {args.dtype} {name}: host {host:.3f} ms/call, wall {wall:.3f} ms/call")
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(10):
                    fn()
                torch.cuda.synchronize()
            print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=8, max_name_column_width=60))


if __name__ == "__main__":
    main()
