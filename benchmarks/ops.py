"""Benchmark of the fused prototype ops against eager PyTorch and torch.compile.

For every workload (the prototype head of LA and ACDC training), dtype and op, times the
three contenders on the same tensors, in one run:

* ``mper``      -- the fused kernels (:mod:`mper.ops`),
* ``eager``     -- :mod:`mper.reference` in eager PyTorch,
* ``compiled``  -- ``torch.compile`` of the same reference functions.

Reports the median time, the achieved bandwidth (fewest bytes the op must move / time),
the ratio to the DRAM floor (those bytes / the copy bandwidth measured in this run), the
peak memory beyond inputs (CUDA), the host synchronisations, and speed-ups.

    python benchmarks/ops.py --device cuda            # writes benchmarks/results/<device>.json + .md
    python benchmarks/ops.py --device cpu --quick     # smaller repeat counts
"""
from __future__ import annotations

import argparse
import json
import math
import platform
from pathlib import Path

import torch

import mper.reference as ref
from mper import ops
from provenance import provenance, provenance_line
from workloads import (
    DTYPES,
    WORKLOADS,
    Problem,
    Timer,
    copy_bandwidth_gbps,
    head_call,
    host_syncs,
    minimum_bytes,
    peak_extra_mib,
    run_head,
    update_call,
)

RESULTS = Path(__file__).resolve().parent / "results"


# ---------------------------------------------------------------- the run


def contenders(op: str, problem: Problem, backward: bool) -> dict:
    if op == "update":
        return {"mper": update_call(ops, problem), "eager": update_call(ref, problem)}
    found = {"mper": head_call(ops, op, problem), "eager": head_call(ref, op, problem)}
    found["compiled"] = torch.compile(head_call(ref, op, problem), dynamic=False)
    return {name: (lambda fn=fn: run_head(fn, problem, backward)) for name, fn in found.items()}


def measure(args, save) -> dict:
    """Runs every case; calls save(report) after each workload, so partial runs keep results."""
    device = torch.device(args.device)
    timer = Timer(device, trials=args.trials, calls=args.calls)
    bandwidth = copy_bandwidth_gbps(device, timer)
    rows = []
    report = dict(
        provenance=provenance(), device=_device_name(device), torch=torch.__version__, python=platform.python_version(),
        threads=torch.get_num_threads(), copy_GBps=bandwidth, results=rows, speedups=[],
    )
    for key in args.workloads:
        w = WORKLOADS[key]
        for dtype_name in args.dtypes:
            dtype = DTYPES[dtype_name]
            element = torch.empty((), dtype=dtype).element_size()
            # rotate inputs so the working set exceeds the cache (H100 L2: 50 MB)
            copies = max(1, math.ceil(200e6 / (w.voxels * w.depth * element))) if device.type == "cuda" else 1
            problem = Problem(w, dtype, device, min(copies, 4))
            for op in args.ops:
                for backward in ([False, True] if op != "update" else [False]):
                    moved = minimum_bytes(op, backward, w, element)
                    floor_ms = moved / (bandwidth * 1e9) * 1e3
                    for name, fn in contenders(op, problem, backward).items():
                        ms = timer.median_ms(fn, calls_per_graph=len(problem.feats))
                        timing = timer.last_method
                        wall_ms = timer.median_ms(fn, graph=False) if device.type == "cuda" else ms
                        row = dict(
                            workload=key, workload_name=w.name, voxels=w.voxels, dtype=dtype_name, op=op,
                            passes="fwd+bwd" if backward else ("update" if op == "update" else "fwd"),
                            contender=name, median_ms=ms, timing=timing,
                            wall_ms=wall_ms, GBps=moved / (ms * 1e-3) / 1e9,
                            floor_ms=floor_ms, floor_ratio=ms / floor_ms,
                            peak_extra_MiB=peak_extra_mib(device, fn), host_syncs=host_syncs(device, fn),
                        )
                        rows.append(row)
                        print(_format_row(row), flush=True)
                    torch._dynamo.reset()
            del problem
            if device.type == "cuda":
                torch.cuda.empty_cache()
            report["speedups"] = speedups(rows)
            save(report)
    return report


def speedups(rows: list[dict]) -> list[dict]:
    table = {}
    for row in rows:
        table.setdefault((row["workload"], row["dtype"], row["op"], row["passes"]), {})[row["contender"]] = row["median_ms"]
    return [
        dict(workload=k[0], dtype=k[1], op=k[2], passes=k[3],
             vs_eager=t["eager"] / t["mper"], vs_compiled=t["compiled"] / t["mper"] if "compiled" in t else None)
        for k, t in table.items() if "mper" in t and "eager" in t
    ]


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def _format_row(row: dict) -> str:
    extra = "" if row["peak_extra_MiB"] is None else f" peak {row['peak_extra_MiB']:8.1f} MiB syncs {row['host_syncs']}"
    return (f"{row['workload']:6} {row['dtype']:8} {row['op']:17} {row['passes']:7} {row['contender']:8} "
            f"{row['median_ms']:9.3f} ms ({row['timing']}, wall {row['wall_ms']:.3f}) {row['GBps']:8.1f} GB/s "
            f"floor x{row['floor_ratio']:6.2f}{extra}")


def markdown(report: dict) -> str:
    lines = [
        provenance_line(report["provenance"]),
        "",
        f"Device: {report['device']} (torch {report['torch']}); copy bandwidth {report['copy_GBps']:.0f} GB/s. "
        "Times are medians per call; on CUDA, device time from CUDA-graph replays where the calls "
        "allow capture (else events around back-to-back calls); 'mper wall' is back-to-back calls "
        "without a graph, i.e. including Python launch overhead.",
        "",
        "| workload | dtype | op | pass | mper ms | mper wall ms | eager ms | compiled ms | x eager | x compiled | mper / floor | peak MiB mper / eager / compiled |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_key = {}
    for row in report["results"]:
        by_key.setdefault((row["workload"], row["dtype"], row["op"], row["passes"]), {})[row["contender"]] = row
    for (workload, dtype, op, passes), found in by_key.items():
        def cell(name, field, fmt):
            value = found.get(name, {}).get(field)
            return "-" if value is None else format(value, fmt)
        mper_ms, eager_ms, comp_ms = (found.get(n, {}).get("median_ms") for n in ("mper", "eager", "compiled"))
        lines.append(
            f"| {workload} | {dtype} | {op} | {passes} | {cell('mper', 'median_ms', '.3f')} | {cell('mper', 'wall_ms', '.3f')} | {cell('eager', 'median_ms', '.3f')} "
            f"| {cell('compiled', 'median_ms', '.3f')} | {eager_ms / mper_ms:.1f} | "
            f"{'-' if comp_ms is None else format(comp_ms / mper_ms, '.1f')} | {cell('mper', 'floor_ratio', '.2f')} | "
            f"{cell('mper', 'peak_extra_MiB', '.0f')} / {cell('eager', 'peak_extra_MiB', '.0f')} / {cell('compiled', 'peak_extra_MiB', '.0f')} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=list(DTYPES))
    parser.add_argument("--ops", nargs="+", default=["classify+infonce", "classify", "infonce", "update"],
                        choices=["classify+infonce", "classify", "infonce", "update"])
    parser.add_argument("--trials", type=int, default=None, help="timed trials (median taken)")
    parser.add_argument("--calls", type=int, default=None, help="calls per trial")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default results/<device>.json)")
    args = parser.parse_args()
    on_cuda = args.device.startswith("cuda")
    args.trials = args.trials or (15 if on_cuda else 5)
    args.calls = args.calls or (10 if on_cuda else 1)

    def save(report: dict) -> None:
        out = args.out or RESULTS / f"{_slug(report['device'])}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1))
        out.with_suffix(".md").write_text(markdown(report))

    print(markdown(measure(args, save)))


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-")


if __name__ == "__main__":
    main()
