"""Benchmark of `mper-data import` against a plain nibabel read and scipy zoom of the same files.

A raw dataset in the nnU-Net v2 layout is written first (not timed): ``--cases`` CT-like
volumes of ``--shape`` voxels (default 20 of 512 x 512 x 100, int16, one channel), each
with a label map of three organs and its own voxel spacing (in-plane 0.6-0.9 mm, slices
2-3 mm), so that every case is resampled, and a zero border outside the field of view,
so that every case is cropped.

Two contenders, each in a fresh process that reports its wall-clock time and its peak
resident memory above what it held before the work (the interpreter and its imports):

* ``baseline`` -- for each case, ``nibabel`` reads the image (as float32) and the label,
  and ``scipy.ndimage.zoom`` resamples both to the median spacing (cubic splines for the
  image, nearest neighbour for the label): the least any importer has to do;
* ``import``   -- :func:`mper.datasets.import_scans`: two passes over the files (checks and
  the statistics, then cropping, CT normalisation, resampling and writing), the plan.

Both import their modules (scipy; mper and torch) before the clock starts.

The issue's targets: the import within 2x of the baseline's time, its memory bounded by
about one case (the float32 size of one case is reported beside the peaks). The machine's
load average is recorded before and after: on a shared machine both contenders slow alike.

    python benchmarks/import_scans.py                       # 20 cases of 512 x 512 x 100
    python benchmarks/import_scans.py --cases 4 --name small
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from provenance import provenance, provenance_line

RESULTS = Path(__file__).resolve().parent / "results"
CLASSES = ("background", "liver", "spleen", "kidney")


def _ellipse(shape, centre, axes):
    x, y, z = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return ((x - centre[0]) / axes[0]) ** 2 + ((y - centre[1]) / axes[1]) ** 2 + ((z - centre[2]) / axes[2]) ** 2 <= 1


def write_raw(out: Path, cases: int, shape: tuple[int, int, int], seed: int) -> Path:
    """The raw dataset (see the module docstring)."""
    rng = np.random.default_rng(seed)
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    centre = np.asarray(shape) / 2
    for index in range(cases):
        spacing = (*(rng.uniform(0.6, 0.9),) * 2, rng.uniform(2.0, 3.0))
        body = _ellipse(shape, centre, (0.42 * shape[0], 0.36 * shape[1], 0.8 * shape[2]))
        label = np.zeros(shape, np.uint8)
        for value, (dx, dy, size) in enumerate(((0.12, -0.05, 0.16), (-0.15, 0.12, 0.08), (-0.1, -0.2, 0.06)), 1):
            organ = centre + np.asarray([dx, dy, rng.uniform(-0.1, 0.1)]) * shape
            label[_ellipse(shape, organ, (size * shape[0], size * shape[1], 0.3 * shape[2])) & body] = value
        image = np.where(body, 40.0, -1000.0) + 60.0 * label + rng.normal(0, 15, shape)
        border = int(rng.integers(8, 24))
        image[:border], image[-border:], image[:, :border], image[:, -border:] = 0, 0, 0, 0
        affine = np.diag([*spacing, 1.0])
        nib.save(nib.Nifti1Image(image.astype(np.int16), affine), out / "imagesTr" / f"ct_{index:03d}_0000.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), out / "labelsTr" / f"ct_{index:03d}.nii.gz")
    document = {
        "channel_names": {"0": "CT"},
        "labels": {name: value for value, name in enumerate(CLASSES)},
        "numTraining": cases,
        "file_ending": ".nii.gz",
    }
    (out / "dataset.json").write_text(json.dumps(document, indent=2))
    return out


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _baseline(raw: Path) -> None:
    from scipy import ndimage

    images = sorted((raw / "imagesTr").glob("*_0000.nii.gz"))
    spacings = [nib.load(path).header.get_zooms()[:3] for path in images]
    target = np.median(np.asarray(spacings, dtype=np.float64), axis=0)
    for path, spacing in zip(images, spacings):
        image = np.asarray(nib.load(path).dataobj, dtype=np.float32)
        label = np.asarray(nib.load(raw / "labelsTr" / path.name.replace("_0000", "")).dataobj)
        factors = [round(n * s / t) / n for n, s, t in zip(image.shape, spacing, target)]
        ndimage.zoom(image, factors, order=3)
        ndimage.zoom(label, factors, order=0)


def _import(raw: Path, out: Path) -> None:
    from mper.datasets import import_scans

    import_scans(raw, out, progress=False)


def child(contender: str, raw: Path, out: Path) -> None:
    """Run one contender and print its time and memory as JSON; its modules are imported
    before the clock starts (the interpreter's start-up is not the work)."""
    import scipy.ndimage  # noqa: F401

    import mper.datasets  # noqa: F401

    shutil.rmtree(out, ignore_errors=True)
    start_rss = _rss_mb()
    start = time.perf_counter()
    _baseline(raw) if contender == "baseline" else _import(raw, out)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_rss_mb": peak,
                "start_rss_mb": start_rss,
                "peak_above_start_mb": peak - start_rss,
            }
        )
    )


def run(contender: str, raw: Path, out: Path) -> dict:
    command = [sys.executable, __file__, "--child", contender, "--raw", str(raw), "--imported", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, check=True, env={**os.environ})
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 100))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("bench-import"), help="folder for the raw and imported data")
    parser.add_argument("--name", default="", help="suffix of the results files")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", choices=("baseline", "import"), help=argparse.SUPPRESS)
    parser.add_argument("--raw", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--imported", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.raw, args.imported)
        return
    raw = args.work / f"raw-{args.cases}x{'x'.join(map(str, args.shape))}-seed{args.seed}"
    if not (raw / "dataset.json").is_file():
        write_raw(raw, args.cases, tuple(args.shape), args.seed)
    load_before = os.getloadavg()
    baseline = run("baseline", raw, args.work / "imported")
    imported = run("import", raw, args.work / "imported")
    load_after = os.getloadavg()
    case_mb = float(np.prod(args.shape)) * 4 / 2**20
    record = {
        "provenance": provenance(),
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} logical cores",
        "load_average_before": [round(value, 2) for value in load_before],
        "load_average_after": [round(value, 2) for value in load_after],
        "cases": args.cases,
        "shape": list(args.shape),
        "one_case_float32_mb": round(case_mb, 1),
        "baseline": baseline,
        "import": imported,
        "time_ratio": imported["seconds"] / baseline["seconds"],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"import_scans-{platform.machine()}-cpu" + (f"-{args.name}" if args.name else "")
    (args.out / f"{stem}.json").write_text(json.dumps(record, indent=2) + "\n")
    rows = [
        f"| {name} | {values['seconds']:.1f} | {values['seconds'] / args.cases:.2f} | "
        f"{values['peak_above_start_mb']:.0f} | {values['peak_rss_mb']:.0f} |"
        for name, values in (("nibabel read + scipy zoom", baseline), ("mper-data import", imported))
    ]
    text = "\n".join(
        [
            provenance_line(record["provenance"]),
            "",
            f"{args.cases} CT-like cases of {' x '.join(map(str, args.shape))} voxels (int16 .nii.gz, one channel, "
            f"a label of three organs), one float32 case = {case_mb:.0f} MB. {record['machine']}; load average "
            f"(1, 5, 15 min) {record['load_average_before']} before, {record['load_average_after']} after.",
            "",
            "| contender | total s | s per case | peak memory above start, MB | peak resident, MB |",
            "|---|---|---|---|---|",
            *rows,
            "",
            f"mper-data import / baseline time: {record['time_ratio']:.2f}",
        ]
    )
    (args.out / f"{stem}.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
