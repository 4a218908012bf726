"""Benchmark of the fused prototype ops against eager PyTorch and torch.compile.

For every workload (the prototype head of LA and ACDC training), dtype and op, times the
three contenders on the same tensors, in one run:

* ``mper``      -- the fused kernels (:mod:`mper.ops`),
* ``eager``     -- :mod:`mper.reference` in eager PyTorch,
* ``compiled``  -- ``torch.compile`` of the same reference functions.

The bank update has four: ``mper``; ``eager``, the reference, which loops over the bank
rows and waits for the host at each; ``vectorised``, the same update written without
loops or host waits (``index_add_`` + ``where``), the fair eager baseline; and
``compiled``, ``torch.compile`` of the vectorised one.

Every contender is timed the same two ways: ``median_ms`` is device time (on CUDA from
CUDA-graph replays where the calls allow capture, events around back-to-back calls
otherwise: the reference's host waits cannot be captured), ``wall_ms`` back-to-back calls
without a graph, Python's launch overhead included. Speed-ups are given for both.

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
    vectorised_update_call,
)

RESULTS = Path(__file__).resolve().parent / "results"


# ---------------------------------------------------------------- the run


def contenders(op: str, problem: Problem, backward: bool) -> dict:
    if op == "update":
        return {
            "mper": update_call(ops, problem),
            "eager": update_call(ref, problem),
            "vectorised": vectorised_update_call(problem),
            "compiled": vectorised_update_call(problem, compiled=True),
        }
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
        provenance=provenance(),
        device=_device_name(device),
        torch=torch.__version__,
        python=platform.python_version(),
        threads=torch.get_num_threads(),
        copy_GBps=bandwidth,
        results=rows,
        speedups=[],
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
                for backward in [False, True] if op != "update" else [False]:
                    moved = minimum_bytes(op, backward, w, element)
                    floor_ms = moved / (bandwidth * 1e9) * 1e3
                    for name, fn in contenders(op, problem, backward).items():
                        ms = timer.median_ms(fn, calls_per_graph=len(problem.feats))
                        timing = timer.last_method
                        wall_ms = timer.median_ms(fn, graph=False) if device.type == "cuda" else ms
                        row = dict(
                            workload=key,
                            workload_name=w.name,
                            voxels=w.voxels,
                            dtype=dtype_name,
                            op=op,
                            passes="fwd+bwd" if backward else ("update" if op == "update" else "fwd"),
                            contender=name,
                            median_ms=ms,
                            timing=timing,
                            wall_ms=wall_ms,
                            GBps=moved / (ms * 1e-3) / 1e9,
                            floor_ms=floor_ms,
                            floor_ratio=ms / floor_ms,
                            peak_extra_MiB=peak_extra_mib(device, fn),
                            host_syncs=host_syncs(device, fn),
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
    """mper's speed-up over each other contender, by device time and by wall time."""
    table: dict = {}
    for row in rows:
        table.setdefault((row["workload"], row["dtype"], row["op"], row["passes"]), {})[row["contender"]] = row
    found = []
    for (workload, dtype, op, passes), by_name in table.items():
        if "mper" not in by_name:
            continue
        record = dict(workload=workload, dtype=dtype, op=op, passes=passes)
        for name, row in by_name.items():
            if name != "mper":
                record[f"vs_{name}"] = row["median_ms"] / by_name["mper"]["median_ms"]
                record[f"vs_{name}_wall"] = row["wall_ms"] / by_name["mper"]["wall_ms"]
        found.append(record)
    return found


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def _format_row(row: dict) -> str:
    extra = "" if row["peak_extra_MiB"] is None else f" peak {row['peak_extra_MiB']:8.1f} MiB syncs {row['host_syncs']}"
    return (
        f"{row['workload']:6} {row['dtype']:8} {row['op']:17} {row['passes']:7} {row['contender']:8} "
        f"{row['median_ms']:9.3f} ms ({row['timing']}, wall {row['wall_ms']:.3f}) {row['GBps']:8.1f} GB/s "
        f"floor x{row['floor_ratio']:6.2f}{extra}"
    )


def markdown(report: dict) -> str:
    lines = [
        provenance_line(report["provenance"]),
        "",
        f"Device: {report['device']} (torch {report['torch']}); copy bandwidth {report['copy_GBps']:.0f} GB/s. "
        "Times are medians per call. 'ms' is device time: on CUDA from CUDA-graph replays where the calls "
        "allow capture, else events around back-to-back calls (the method is named per row); 'wall ms' is "
        "back-to-back calls without a graph, Python's launch overhead included. Every contender is timed "
        "both ways; 'x' is the contender's time over mper's, by device time / by wall time. The bank "
        "update's 'eager' is the reference, which waits for the host at every bank row; 'vectorised' the "
        "same update without loops or host waits (index_add_ + where), 'compiled' that one under torch.compile.",
        "",
        "| workload | dtype | op | pass | contender | ms (timing) | wall ms | x (device / wall) | floor ratio | peak extra MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    mper_rows = {
        (r["workload"], r["dtype"], r["op"], r["passes"]): r for r in report["results"] if r["contender"] == "mper"
    }
    for row in report["results"]:
        mine = mper_rows.get((row["workload"], row["dtype"], row["op"], row["passes"]))
        ratio = (
            "-"
            if mine is None or row is mine
            else (f"{row['median_ms'] / mine['median_ms']:.1f} / {row['wall_ms'] / mine['wall_ms']:.1f}")
        )
        peak = "-" if row["peak_extra_MiB"] is None else f"{row['peak_extra_MiB']:.0f}"
        lines.append(
            f"| {row['workload']} | {row['dtype']} | {row['op']} | {row['passes']} | {row['contender']} "
            f"| {row['median_ms']:.3f} ({row['timing']}) | {row['wall_ms']:.3f} | {ratio} | {row['floor_ratio']:.2f} | {peak} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=list(DTYPES))
    parser.add_argument(
        "--ops",
        nargs="+",
        default=["classify+infonce", "classify", "infonce", "update"],
        choices=["classify+infonce", "classify", "infonce", "update"],
    )
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
