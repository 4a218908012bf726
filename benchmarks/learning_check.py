"""Does self-training pay off? MPER against BCP alone and the labeled-only network.

For every synthetic data family (``mper-data synth --family``) this writes one ACDC set
(86 patients: 60 training, 9 validation, 17 test; slices of about 64x64) and trains, for
every recipe (``paper`` and ``reference``, each with this check's own CPU-sized network,
batches and iteration budget on top, ``CHECK_SETTINGS``: nothing comes from the ``demo``
preset, so changing the demo does not change the check), every method and every seed:

* ``mper``: copy-paste pre-training, then self-training with the prototype head;
* ``bcp``: the same two stages without the prototype head (``--baseline bcp``);
* ``labeled-only``: the plain U-Net on the labeled slices (``--baseline labeled-only``)
  for as many iterations as the other two train in both stages together.

All with 3 labeled patients, 5% of the 60 training patients, as the ACDC benchmark's 5%
setting. Each run is evaluated on the test split. Runs go to subprocesses, at most
``--jobs`` at once, each on one CPU thread; a run whose folder holds ``metrics.json``
is not trained again, so an interrupted check continues where it stopped.

Writes ``benchmarks/results/learning_check-<name>.json`` (every run: test metrics, over
classes and per class, and the self-training diagnostics of its ``metrics.json``) and
``.md`` (mean ± std over seeds of the test Dice per family, recipe and method; Dice,
Jaccard, 95HD and ASD per class; the diagnostics averaged).

    python benchmarks/learning_check.py --work DIR [--families standard scanners thin]
        [--recipes paper reference] [--methods mper bcp labeled-only] [--seeds 1 2 3]
        [--jobs 2] [--pretrain 2000] [--selftrain 600] [--name NAME] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mper.datasets import get_dataset, synthesize
from mper.eval.metrics import METRIC_NAMES
from mper.eval.report import PERCENT_METRICS
from provenance import provenance, provenance_line

DATA_SEED = 0
DATA_CASES = 86  # 60 training, 9 validation and 17 test patients
DATA_SIZE = (64, 64)
LABELED = 3  # 5% of 60 training patients
METHODS = {"mper": "none", "bcp": "bcp", "labeled-only": "labeled-only"}
#: Overrides on top of either recipe, so the check is the same whatever the presets' CPU
#: sizes: a narrow U-Net on whole 64x64 slices, batch 8 (4 labeled), the teacher averaging
#: over ~100 iterations (eta 0.99: the paper's 0.999 is made for 30000 self-training
#: iterations), k-means on at most 20000 voxels and validation every 50 iterations.
CHECK_SETTINGS = {
    "network.channels": "[8, 16, 32, 64, 128]",
    "data.patch_size": f"[{DATA_SIZE[0]}, {DATA_SIZE[1]}]",
    "data.batch_size": "8",
    "data.labeled_batch_size": "4",
    "data.num_workers": "0",
    "selftrain.ema_decay": "0.99",
    "prototypes.kmeans_max_voxels": "20000",
    "eval.val_interval": "50",
    "eval.checkpoint_interval": "250",
    "eval.num_figures": "0",
}
RESULTS = Path(__file__).resolve().parent / "results"
#: Diagnostics averaged over seeds in the Markdown table: (column, how to read it off a run).
DIAGNOSTICS = (
    "pretrain_val",
    "selftrain_val",
    "teacher_val",
    "pseudo_first",
    "pseudo_last",
    "confident",
    "bank_update",
)
#: The metrics' column titles, in :data:`mper.eval.metrics.METRIC_NAMES` order.
METRIC_TITLES = {"dice": "Dice (%)", "jaccard": "Jaccard (%)", "hd95": "95HD (voxels)", "asd": "ASD (voxels)"}


@dataclass(frozen=True)
class Run:
    family: str
    recipe: str
    method: str
    seed: int

    def folder(self, work: Path) -> Path:
        return work / "runs" / self.family / self.recipe / self.method / f"seed{self.seed}"


def data_root(work: Path, family: str) -> Path:
    """The family's synthetic set, written once."""
    root = work / f"data-{family}"
    if not (root / "test.list").exists():
        synthesize("acdc", root, cases=DATA_CASES, seed=DATA_SEED, size=DATA_SIZE, family=family, progress=False)
    return root


def train_command(run: Run, work: Path, args: argparse.Namespace) -> list[str]:
    """``mper-train`` for one run; the ramp spans the whole self-training, as in both recipes."""
    preset = run.recipe
    settings = [f"{key}={value}" for key, value in CHECK_SETTINGS.items()]
    settings += [
        f"pretrain.iterations={args.pretrain}",
        f"selftrain.iterations={args.selftrain}",
        f"selftrain.rampup_epochs={args.selftrain / 150}",
        *args.assignments,
    ]
    command = [
        sys.executable,
        "-c",
        "import sys; from mper.cli import train_main; train_main(sys.argv[1:])",
        "--dataset",
        "acdc",
        "--data-root",
        str(data_root(work, run.family)),
        "--labeled",
        str(LABELED),
        "--preset",
        preset,
        "--device",
        "cpu",
        "--seed",
        str(run.seed),
        "--out",
        str(run.folder(work)),
    ]
    if run.method != "mper":
        command += ["--baseline", METHODS[run.method]]
    for setting in settings:
        command += ["--set", setting]
    return command


def run_all(runs: list[Run], work: Path, args: argparse.Namespace) -> None:
    """Train the runs not finished yet, ``args.jobs`` at a time, one thread each."""
    todo = [run for run in runs if not (run.folder(work) / "metrics.json").exists()]
    for run in todo:  # folders of interrupted runs start again
        folder = run.folder(work)
        if folder.exists():
            for path in sorted(folder.rglob("*"), reverse=True):
                path.rmdir() if path.is_dir() else path.unlink()
            folder.rmdir()
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    running: list[tuple[Run, subprocess.Popen, float]] = []
    print(f"{len(runs) - len(todo)} of {len(runs)} runs already finished", flush=True)
    while todo or running:
        while todo and len(running) < args.jobs:
            run = todo.pop(0)
            data_root(work, run.family)
            log = run.folder(work).parent / f"seed{run.seed}.out"
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("w") as stream:
                process = subprocess.Popen(
                    train_command(run, work, args), stdout=stream, stderr=subprocess.STDOUT, env=environment
                )
            running.append((run, process, time.time()))
        time.sleep(5)
        for entry in list(running):
            run, process, started = entry
            if process.poll() is None:
                continue
            running.remove(entry)
            status = "done" if process.returncode == 0 else f"FAILED (exit {process.returncode})"
            print(
                f"{run.family} {run.recipe} {run.method} seed {run.seed}: {status} in {time.time() - started:.0f} s",
                flush=True,
            )
            (run.folder(work) / "wall_seconds.txt").write_text(f"{time.time() - started:.1f}\n")


def _value(entry: dict[str, Any] | None, key: str) -> float:
    value = None if entry is None else entry.get(key)
    return math.nan if value is None else float(value)


def run_result(run: Run, work: Path) -> dict[str, Any]:
    """One finished run: test metrics and its self-training diagnostics."""
    folder = run.folder(work)
    metrics = json.loads((folder / "metrics.json").read_text())
    summary, training = metrics["summary"], metrics.get("training", {})
    stages = training.get("stages", {})
    trajectory = stages.get("selftrain", {}).get("trajectory", [])
    first, last = (trajectory[0], trajectory[-1]) if trajectory else (None, None)
    best = lambda stage: stages.get(stage, {}).get("best")  # noqa: E731
    wall = folder / "wall_seconds.txt"
    return {
        **run.__dict__,
        "test_dice": summary["mean"]["dice"]["mean"],
        "test_metrics": {metric: summary["mean"][metric]["mean"] for metric in METRIC_NAMES},
        "test_class_metrics": {
            label: {metric: stats[metric]["mean"] for metric in METRIC_NAMES}
            for label, stats in summary["classes"].items()
        },
        "selected_stage": training.get("selected_stage"),
        "selftrain_beat_pretrain": training.get("selftrain_beat_pretrain"),
        "pretrain_val": _value(best("pretrain") or best("baseline"), "val_dice"),
        "selftrain_val": _value(best("selftrain"), "val_dice"),
        "teacher_val": _value(last, "teacher_val_dice"),
        "pseudo_first": _value(first, "pseudo_label_dice/mean"),
        "pseudo_last": _value(last, "pseudo_label_dice/mean"),
        "pseudo_last_classes": {
            key.split("/")[1]: value
            for key, value in (last or {}).items()
            if key.startswith("pseudo_label_dice/") and not key.endswith("/mean")
        },
        "confident": _value(last, "confident_fraction"),
        "bank_update": _value(last, "bank_update_fraction"),
        "selftrain_trajectory": trajectory,
        "wall_seconds": float(wall.read_text()) if wall.exists() else math.nan,
    }


def _json_ready(value: Any) -> Any:
    """NaN as null, recursively (JSON has no NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_ready(item) for item in value]
    return value


def _mean_std(values: list[float]) -> tuple[float, float]:
    finite = [value for value in values if not math.isnan(value)]
    if not finite:
        return math.nan, math.nan
    mean = sum(finite) / len(finite)
    return mean, math.sqrt(sum((value - mean) ** 2 for value in finite) / len(finite))


def _percent(values: list[float]) -> str:
    mean, std = _mean_std(values)
    return "-" if math.isnan(mean) else f"{100 * mean:.2f} ± {100 * std:.2f}"


def _metric_cell(metric: str, values: list[float]) -> str:
    """Mean ± std over seeds: Dice and Jaccard in percent, distances as they are."""
    if metric in PERCENT_METRICS:
        return _percent(values)
    mean, std = _mean_std(values)
    return "-" if math.isnan(mean) else f"{mean:.2f} ± {std:.2f}"


def class_metric_lines(results: list[dict[str, Any]], groups: list[tuple[str, str]]) -> list[str]:
    """The per-class table: every metric of every class, mean ± std over seeds, per family,
    recipe and method (runs that recorded no per-class metrics are left out)."""
    names = get_dataset("acdc").class_names
    lines = [
        "Test metrics per class, mean ± std (population) over seeds: Dice and Jaccard in %, 95HD and ASD in "
        "voxels. A distance undefined for every case of a run (its class predicted nowhere) leaves that run out "
        "of the distance's mean.",
        "",
        "| family | recipe | method | class | " + " | ".join(METRIC_TITLES[m] for m in METRIC_NAMES) + " |",
        "|---|---|---|---|" + "---|" * len(METRIC_NAMES),
    ]
    for family, recipe in groups:
        for method in METHODS:
            chosen = [
                r
                for r in results
                if (r["family"], r["recipe"], r["method"]) == (family, recipe, method) and r.get("test_class_metrics")
            ]
            labels = sorted({label for r in chosen for label in r["test_class_metrics"]}, key=int)
            for label in labels:
                cells = [
                    _metric_cell(metric, [_value(r["test_class_metrics"].get(label), metric) for r in chosen])
                    for metric in METRIC_NAMES
                ]
                lines.append(f"| {family} | {recipe} | {method} | {names[int(label)]} | " + " | ".join(cells) + " |")
    return lines


def markdown(results: list[dict[str, Any]], args: argparse.Namespace, device: str, measured: str) -> str:
    """Mean ± std over seeds per family, recipe and method, and the diagnostics; ``measured``
    (:func:`provenance_line`) under the title."""
    seeds = sorted({result["seed"] for result in results})
    lines = [
        f"# Learning check: {device}",
        "",
        measured,
        "",
        f"Synthetic ACDC, {DATA_CASES} patients per family (60 train / 9 val / 17 test, data seed {DATA_SEED}), "
        f"{LABELED} labeled patients (5%), slices resized to {DATA_SIZE[0]}x{DATA_SIZE[1]}, on top of each recipe: "
        + ", ".join(f"{key}={value}" for key, value in CHECK_SETTINGS.items())
        + f". MPER and BCP: {args.pretrain} pre-training + "
        f"{args.selftrain} self-training iterations; labeled-only: {args.pretrain + args.selftrain} iterations. "
        f"Seeds {', '.join(map(str, seeds))}; test Dice (%) mean ± std (population) over seeds, "
        "the checkpoint selected on the validation patients."
        + (f" Extra settings: {' '.join(args.assignments)}." if args.assignments else ""),
        "",
        "| family | recipe | MPER | BCP alone | labeled-only | MPER >= labeled-only | MPER >= BCP |",
        "|---|---|---|---|---|---|---|",
    ]
    groups = sorted({(r["family"], r["recipe"]) for r in results}, key=lambda g: (args.families.index(g[0]), g[1]))
    for family, recipe in groups:
        dice = {
            method: [
                r["test_dice"] for r in results if (r["family"], r["recipe"], r["method"]) == (family, recipe, method)
            ]
            for method in METHODS
        }
        means = {method: _mean_std(values)[0] for method, values in dice.items()}

        def verdict(other: str) -> str:
            if math.isnan(means["mper"]) or math.isnan(means[other]):
                return "-"
            return "yes" if means["mper"] >= means[other] else "**no**"

        lines.append(
            f"| {family} | {recipe} | {_percent(dice['mper'])} | {_percent(dice['bcp'])} | "
            f"{_percent(dice['labeled-only'])} | {verdict('labeled-only')} | {verdict('bcp')} |"
        )
    lines += ["", *class_metric_lines(results, groups)]
    lines += [
        "",
        "Self-training diagnostics, mean over seeds: best validation Dice of pre-training and of self-training "
        "(student), the teacher's validation Dice, the pseudo labels' mean Dice against the unlabeled slices' "
        "own labels in the first and the last validation interval, the fraction of unlabeled-region voxels "
        "passing the confidence gate and of all voxels in the bank update (last interval), and in how many "
        "runs self-training beat pre-training on validation.",
        "",
        "| family | recipe | method | pre-train val | self-train val | teacher val | pseudo first | pseudo last "
        "| confident | bank update | beat pre-train |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for family, recipe in groups:
        for method in ("mper", "bcp"):
            chosen = [r for r in results if (r["family"], r["recipe"], r["method"]) == (family, recipe, method)]
            if not chosen:
                continue
            cells = [_percent([r[key] for r in chosen]) for key in DIAGNOSTICS]
            beat = sum(bool(r["selftrain_beat_pretrain"]) for r in chosen)
            lines.append(f"| {family} | {recipe} | {method} | " + " | ".join(cells) + f" | {beat}/{len(chosen)} |")
    return "\n".join(lines) + "\n"


def device_name() -> str:
    return f"{platform.machine()} CPU, {os.cpu_count()} cores shared, 1 thread per run (torch {torch.__version__})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for the data sets and the runs")
    families = list(get_dataset("acdc").synth_families)
    parser.add_argument("--families", nargs="+", default=families, choices=families)
    parser.add_argument("--recipes", nargs="+", default=["paper", "reference"], choices=("paper", "reference"))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=tuple(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (default 2)")
    parser.add_argument(
        "--pretrain",
        type=int,
        default=2000,
        help="pre-training iterations (default 2000: where its validation Dice levels off)",
    )
    parser.add_argument("--selftrain", type=int, default=600, help="self-training iterations (default 600)")
    parser.add_argument("--name", default="acdc-families", help="results file name: learning_check-NAME")
    parser.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="preset override applied to every run, repeatable",
    )
    args = parser.parse_args()
    runs = [
        Run(family, recipe, method, seed)
        for family in args.families
        for recipe in args.recipes
        for seed in args.seeds
        for method in args.methods
    ]
    run_all(runs, args.work, args)
    results = [run_result(run, args.work) for run in runs if (run.folder(args.work) / "metrics.json").exists()]
    device = device_name()
    RESULTS.mkdir(exist_ok=True)
    report = {
        "provenance": provenance(),
        "device": device,
        "load_average": os.getloadavg(),
        "check_settings": CHECK_SETTINGS,
        "pretrain_iterations": args.pretrain,
        "selftrain_iterations": args.selftrain,
        "labeled_patients": LABELED,
        "data_cases": DATA_CASES,
        "settings": args.assignments,
        "runs": results,
    }
    (RESULTS / f"learning_check-{args.name}.json").write_text(json.dumps(_json_ready(report), indent=1) + "\n")
    load = ", ".join(f"{value:.1f}" for value in report["load_average"])
    table = markdown(
        results, args, f"{device}, load average at the end {load} (1, 5, 15 min)", provenance_line(report["provenance"])
    )
    (RESULTS / f"learning_check-{args.name}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
