"""Does self-training help? MPER against the labeled-only baseline on the same labels.

Generates the demo's small synthetic dataset (fixed seed; the data `scripts/demo.sh`
writes), trains the ``demo`` preset twice on it, once with MPER (copy-paste
pre-training + Mean Teacher self-training with the prototype head) and once as the plain
supervised network (``--baseline labeled-only``, same labeled cases and as many
iterations), evaluates both on the test split and prints the two mean Dice values.
``--preset`` picks the recipe the demo sizes are applied to: ``paper`` (the default) or
``reference`` (the authors' code). Takes a few minutes on two otherwise idle CPU cores.

    python benchmarks/learning_check.py [--dataset acdc|la] [--preset reference] [--work DIR] [--ops reference] [--set key=value ...]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from mper import pipeline
from mper.train.config import load_config

DATA_SEED = 0
#: The demo's synthetic data (cases, size) per dataset, as scripts/demo.sh writes it.
DEMO_DATA = {"acdc": (30, (64, 64)), "la": (30, (40, 40, 36))}


def mean_dice(run_dir: Path) -> float:
    """Mean foreground Dice of a finished run, from its metrics.json."""
    summary = json.loads((run_dir / "metrics.json").read_text())["summary"]
    return summary["mean"]["dice"]["mean"]


def train_run(data_root: Path, out: Path, args: argparse.Namespace, baseline: str) -> float:
    overrides = {"data_root": str(data_root), "out": str(out), "device": args.device, "baseline": baseline}
    if args.ops:
        overrides["ops"] = args.ops
    preset = "demo" if args.preset == "paper" else f"{args.preset}+demo"
    config = load_config(args.dataset, preset, overrides, args.assignments)
    return mean_dice(pipeline.train(config))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(DEMO_DATA), default="acdc")
    parser.add_argument("--work", type=Path, help="folder for the data and both runs (default: a temporary one)")
    parser.add_argument("--preset", default="paper", help="recipe under the demo sizes: paper or reference")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--ops", choices=("mper", "reference"))
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                        help="preset override applied to both runs, repeatable")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        data_root = work / f"{args.dataset}-demo"
        cases, size = DEMO_DATA[args.dataset]
        pipeline.synthesize(args.dataset, data_root, cases=cases, seed=DATA_SEED, size=size)
        mper_dice = train_run(data_root, work / "mper", args, baseline="none")
        baseline_dice = train_run(data_root, work / "baseline", args, baseline="labeled-only")
    print(f"mean Dice, MPER self-training: {100 * mper_dice:.2f}")
    print(f"mean Dice, labeled-only network: {100 * baseline_dice:.2f}")
    print("self-training ahead" if mper_dice > baseline_dice else "self-training NOT ahead")


if __name__ == "__main__":
    main()
