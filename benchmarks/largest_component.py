"""Benchmark of `largest_component` (the pseudo-label clean-up) against scipy and cc3d.

Label maps like the teacher's pseudo labels: for each foreground class a smoothed random
field, each voxel taking the class of its highest field, background where that is low;
dozens of components per class (counted and reported). Workloads:

* ``la``   -- 4 x 112x112x80, 2 classes (26-connectivity),
* ``acdc`` -- 12 x 256x256, 4 classes (8-connectivity).

Contenders, on the same tensors in one run, all checked to give the same output first:

* ``mper``           -- :func:`mper.ops.largest_component` (OpenMP on the CPU, CUDA on a GPU),
* ``scipy``          -- :func:`mper.reference.largest_component`, ``scipy.ndimage.label``
  per image and class, as the trainer cleaned pseudo labels before the op existed (on CUDA
  it includes the copies to the host and back),
* ``cc3d``           -- ``cc3d.connected_components`` labelling every class of an image at
  once, then numpy size counts and a per-class argmax (CPU only),
* ``cc3d-largest_k`` -- ``cc3d.largest_k(image == c, k=1)`` per image and class (CPU only).

``--maps adversarial`` replaces the blobs by the maps that are hardest for union-find at
the LA and ACDC sizes (``--scale`` shrinks every side): one serpentine component that
winds through the whole image (the longest chains of merges), every voxel foreground, a
checkerboard (one component by its diagonal neighbours) and independent noise at half
density; on CUDA the CPU kernel (``mper-cpu``) runs on the same maps too.

cc3d is the pip package ``connected-components-3d`` (``pip install .[bench]``); when it is
missing its rows are skipped with a note. Times are medians per call over ``--trials``
calls; on the CPU wall-clock time with ``--threads`` OpenMP threads for mper (scipy and
cc3d are single-threaded); on CUDA mper's device time from CUDA-graph replays (see
workloads.py), the host contenders' (``mper-cpu``, scipy) wall-clock time, plus the host
synchronisations counted. The machine's load average is recorded: on a
machine shared with other busy processes, run with ``OMP_WAIT_POLICY=passive`` (OpenMP
threads that spin between calls otherwise take the cores from the ones still working).

    python benchmarks/largest_component.py                 # CPU, 2 threads
    python benchmarks/largest_component.py --device cuda   # GPU
    python benchmarks/largest_component.py --device cuda --maps adversarial --dtypes int64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

import mper.reference as ref
from mper import ops
from provenance import provenance, provenance_line
from workloads import Timer, host_syncs

try:
    import cc3d
except ImportError:  # a benchmark-only comparator: pip install .[bench]
    cc3d = None

RESULTS = Path(__file__).resolve().parent / "results"
DTYPES = {"int64": torch.int64, "uint8": torch.uint8, "int32": torch.int32}


@dataclass(frozen=True)
class LabelWorkload:
    name: str
    batch: int
    spatial: tuple[int, ...]
    num_classes: int
    sigma: float  # smoothing of the fields, in voxels
    foreground: float  # share of voxels given a foreground class


WORKLOADS = {
    "la": LabelWorkload("LA pseudo labels (4 x 112x112x80)", 4, (112, 112, 80), 2, 4.0, 0.2),
    "acdc": LabelWorkload("ACDC pseudo labels (12 x 256x256)", 12, (256, 256), 4, 6.0, 0.5),
}


def blob_labels(w: LabelWorkload, seed: int = 0) -> np.ndarray:
    """(B, *spatial) int64 label maps of smooth blobs, dozens of components per class."""
    rng = np.random.default_rng(seed)
    fields = rng.standard_normal((w.num_classes - 1, w.batch, *w.spatial)).astype(np.float32)
    fields = ndimage.gaussian_filter(fields, (0, 0) + (w.sigma,) * len(w.spatial))
    top = fields.max(axis=0)
    threshold = np.quantile(top, 1.0 - w.foreground)
    return np.where(top > threshold, fields.argmax(axis=0) + 1, 0).astype(np.int64)


def adversarial_labels(batch: int, spatial: tuple[int, ...], seed: int = 0) -> dict[str, np.ndarray]:
    """Two-class (B, *spatial) int64 maps that are hard for union-find, by name."""
    rng = np.random.default_rng(seed)
    grid = np.indices(spatial)
    rows = grid[-2] + spatial[-2] * (grid[0] if len(spatial) == 3 else 0)  # rows of all slices, in order
    # foreground on every other row, and the rows joined at alternating ends: one path
    snake = (rows % 2 == 0) | ((rows % 4 == 1) & (grid[-1] == spatial[-1] - 1)) | ((rows % 4 == 3) & (grid[-1] == 0))
    maps = {
        "serpentine": snake,
        "all-foreground": np.ones(spatial, dtype=bool),
        "checkerboard": grid.sum(axis=0) % 2 == 0,
        "noise": rng.random((batch, *spatial)) < 0.5,
    }
    return {name: np.broadcast_to(mask, (batch, *spatial)).astype(np.int64) for name, mask in maps.items()}


def components_per_class(labels: np.ndarray, num_classes: int) -> list[int]:
    """Components of each foreground class in each image (full connectivity)."""
    ndim = labels.ndim - 1
    structure = ndimage.generate_binary_structure(ndim, ndim)
    return [int(ndimage.label(image == c, structure)[1]) for image in labels for c in range(1, num_classes)]


# ---------------------------------------------------------------- cc3d contenders


def _connectivity(image: np.ndarray) -> int:
    return 26 if image.ndim == 3 else 8


def cc3d_multilabel(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """One cc3d labelling of all classes per image, then the largest component per class."""
    out = np.zeros_like(labels)
    for image, cleaned in zip(labels, out):
        components, count = cc3d.connected_components(image, connectivity=_connectivity(image), return_N=True)
        flat = components.ravel()
        sizes = np.bincount(flat, minlength=count + 1)
        class_of = np.zeros(count + 1, dtype=np.int64)
        class_of[flat] = image.ravel()
        keep = np.zeros(count + 1, dtype=bool)
        for c in range(1, num_classes):
            ids = np.flatnonzero(class_of == c)
            ids = ids[ids > 0]
            if ids.size:
                keep[ids[np.argmax(sizes[ids])]] = True
        cleaned[...] = np.where(keep[components], image, 0)
    return out


def cc3d_largest_k(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """cc3d's own largest-component call, per image and class."""
    out = np.zeros_like(labels)
    for image, cleaned in zip(labels, out):
        for c in range(1, num_classes):
            largest = cc3d.largest_k(image == c, k=1, connectivity=_connectivity(image), binary_image=True)
            cleaned[largest.astype(bool)] = c
    return out


def contenders(labels: torch.Tensor, num_classes: int) -> dict:
    found = {"mper": lambda: ops.largest_component(labels, num_classes, check_labels=False)}
    if labels.device.type == "cuda":
        on_host = labels.cpu()
        found["mper-cpu"] = lambda: ops.largest_component(on_host, num_classes, check_labels=False)
    found["scipy"] = lambda: ref.largest_component(labels, num_classes, check_labels=False)
    if cc3d is not None and labels.device.type == "cpu":
        array = labels.numpy()
        found["cc3d"] = lambda: torch.from_numpy(cc3d_multilabel(array, num_classes))
        found["cc3d-largest_k"] = lambda: torch.from_numpy(cc3d_largest_k(array, num_classes))
    return found


# ---------------------------------------------------------------- the run


def wall_median_ms(fn, trials: int) -> float:
    fn()
    samples = []
    for _ in range(trials):
        begin = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - begin) * 1e3)
    return statistics.median(samples)


def timed(name: str, fn, device: torch.device, timer: Timer, trials: int) -> tuple[float, str, int | None]:
    """(median ms, how it was timed, host synchronisations on CUDA) of contender ``name``.

    On CUDA only mper's CUDA kernel is timed on the device's clock (a CUDA graph, or
    events); the contenders that work on the host (the CPU kernel, scipy) are timed by the
    wall clock: a CUDA graph of them captures none of their work, and its replay would
    time nothing."""
    if device.type == "cuda" and name == "mper":
        timer.trials = trials
        ms = timer.median_ms(fn)
        return ms, timer.last_method, host_syncs(device, fn)
    return wall_median_ms(fn, trials), "wall", host_syncs(device, fn)


def measure(args) -> dict:
    device = torch.device(args.device)
    timer = Timer(device, trials=args.trials, calls=1)
    rows = []
    report = dict(
        provenance=provenance(),
        device=_device_name(device, args.threads),
        torch=torch.__version__,
        python=platform.python_version(),
        threads=args.threads,
        omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", "default"),
        load_before=_load(),
        results=rows,
        notes=[] if cc3d is not None else ["cc3d (connected-components-3d) is not installed: its rows are skipped"],
    )
    for key, w, base in label_maps(args):
        counts = components_per_class(base, w.num_classes)
        want = ref.largest_component(torch.from_numpy(np.ascontiguousarray(base)), w.num_classes)
        for dtype_name in args.dtypes:
            labels = torch.from_numpy(base).to(device=device, dtype=DTYPES[dtype_name])
            for name, fn in contenders(labels, w.num_classes).items():
                if not torch.equal(fn().cpu().long(), want):
                    raise AssertionError(f"{name} disagrees with the reference on {key} {dtype_name}")
                trials = args.trials if name == "mper" else max(3, args.trials // 3)
                ms, timing, syncs = timed(name, fn, device, timer, trials)
                row = dict(
                    workload=key,
                    workload_name=w.name,
                    batch=w.batch,
                    spatial=list(w.spatial),
                    num_classes=w.num_classes,
                    components_min=min(counts),
                    components_max=max(counts),
                    dtype=dtype_name,
                    contender=name,
                    median_ms=ms,
                    timing=timing,
                    trials=trials,
                    host_syncs=syncs,
                )
                rows.append(row)
                print(_format_row(row), flush=True)
    report["load_after"] = _load()
    report["speedups"] = speedups(rows)
    return report


def label_maps(args) -> list[tuple[str, LabelWorkload, np.ndarray]]:
    """(row name, workload, maps) of every case the arguments ask for."""
    cases = []
    for key in args.workloads:
        w = WORKLOADS[key]
        w = LabelWorkload(
            w.name,
            w.batch,
            tuple(max(4, round(side * args.scale)) for side in w.spatial),
            w.num_classes,
            w.sigma,
            w.foreground,
        )
        if args.maps == "blobs":
            cases.append((key, w, blob_labels(w)))
            continue
        two_classes = LabelWorkload(f"{w.name}, adversarial", w.batch, w.spatial, 2, w.sigma, w.foreground)
        cases += [(f"{key}-{name}", two_classes, maps) for name, maps in adversarial_labels(w.batch, w.spatial).items()]
    return cases


def speedups(rows: list[dict]) -> list[dict]:
    table = {}
    for row in rows:
        table.setdefault((row["workload"], row["dtype"]), {})[row["contender"]] = row["median_ms"]
    return [
        dict(workload=k[0], dtype=k[1], **{f"vs_{name}": ms / t["mper"] for name, ms in t.items() if name != "mper"})
        for k, t in table.items()
        if "mper" in t
    ]


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def _device_name(device: torch.device, threads: int) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {threads} threads"


def _format_row(row: dict) -> str:
    syncs = "" if row["host_syncs"] is None else f" syncs {row['host_syncs']}"
    return (
        f"{row['workload']:5} {row['dtype']:6} {row['contender']:15} {row['median_ms']:9.3f} ms "
        f"({row['timing']}, {row['trials']} trials){syncs}"
    )


def markdown(report: dict) -> str:
    names = ["mper", "mper-cpu", "scipy", "cc3d", "cc3d-largest_k"]
    lines = [
        provenance_line(report["provenance"]),
        "",
        f"Device: {report['device']} (torch {report['torch']}); load average (1, 5, 15 min) "
        f"{report['load_before']} before, {report['load_after']} after. Times are medians per call "
        "over the whole batch; on the CPU wall-clock, mper with "
        f"{report['threads']} OpenMP threads (OMP_WAIT_POLICY {report['omp_wait_policy']}), scipy and "
        "cc3d single-threaded; on CUDA mper's device time (CUDA-graph replays where the calls "
        "allow capture, else events), the host contenders' wall-clock time. Components: per image "
        "and class, the fewest and most.",
        *(f"Note: {note}" for note in report["notes"]),
        "",
        "| workload | dtype | components | "
        + " | ".join(f"{n} ms" for n in names)
        + " | x mper-cpu | x scipy | x cc3d | x cc3d-largest_k | mper host syncs |",
        "|---|---|---|" + "---|" * (2 * len(names)),
    ]
    by_key = {}
    for row in report["results"]:
        by_key.setdefault((row["workload"], row["dtype"]), {})[row["contender"]] = row
    for (workload, dtype), found in by_key.items():
        first = next(iter(found.values()))
        mper_ms = found["mper"]["median_ms"]
        times = [format(found[n]["median_ms"], ".2f") if n in found else "-" for n in names]
        ratios = [format(found[n]["median_ms"] / mper_ms, ".1f") if n in found else "-" for n in names[1:]]
        syncs = found["mper"]["host_syncs"]
        lines.append(
            f"| {workload} | {dtype} | {first['components_min']}-{first['components_max']} | "
            + " | ".join(times)
            + " | "
            + " | ".join(ratios)
            + f" | {'-' if syncs is None else syncs} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--dtypes", nargs="+", default=["int64", "uint8"], choices=list(DTYPES))
    parser.add_argument("--maps", default="blobs", choices=["blobs", "adversarial"])
    parser.add_argument("--scale", type=float, default=1.0, help="every side times this (smoke runs)")
    parser.add_argument("--threads", type=int, default=2, help="OpenMP threads for mper (CPU)")
    parser.add_argument(
        "--trials", type=int, default=None, help="timed calls of mper (median taken); a third for the others"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON path (default results/largest_component-<device>.json)"
    )
    args = parser.parse_args()
    if os.environ.get("OMP_NUM_THREADS") != str(args.threads):
        # OpenMP reads its thread count once, when it loads: start again with it set
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        os.execv(sys.executable, [sys.executable, *sys.argv])
    args.trials = args.trials or (50 if args.device.startswith("cuda") else 30)
    torch.set_num_threads(args.threads)
    report = measure(args)
    out = args.out or RESULTS / f"largest_component-{_slug(report['device'])}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-")


if __name__ == "__main__":
    main()
