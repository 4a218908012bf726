"""How long a preset's training takes here: per-iteration times, extrapolated to the run.

Times the trainer's own pre-training step (copy-paste on the labeled half-batch) and
self-training step (teacher, bidirectional copy-paste, student, Eq. 6, bank and teacher
updates) on random data of the preset's shapes, the median of a few iterations after one
warm-up, and multiplies them by the preset's iteration counts: MPER runs
`pretrain.iterations` pre-training and `selftrain.iterations` self-training iterations,
the labeled-only baseline as many supervised iterations as both together. Data loading,
validation and the final evaluation are not included, so the totals are estimates from
below.

    python benchmarks/run_time.py --dataset la acdc --preset paper --iterations 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mper.datasets import dataset_names
from mper.train.config import load_config
from mper.train.loop import Trainer
from mper.train.pretrain import supervised_step
from mper.train.selftrain import selftrain_step
from mper.train.teacher import create_teacher
from mper.versions import device_line
from provenance import provenance

RESULTS = Path(__file__).resolve().parent / "results"


def random_batch(trainer: Trainer) -> dict[str, torch.Tensor]:
    """A batch of the preset's shapes: standard-normal images, uniform labels."""
    config = trainer.config
    shape = (config.data.batch_size, *config.data.patch_size)
    generator = torch.Generator().manual_seed(0)
    return {
        "image": torch.randn((shape[0], 1, *shape[1:]), generator=generator),
        "label": torch.randint(0, config.num_classes, shape, generator=generator),
    }


def median_seconds(step, iterations: int, device: torch.device) -> float:
    """Median wall time of ``step()`` over ``iterations`` calls, after one warm-up call."""
    samples = []
    for index in range(iterations + 1):
        begin = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if index:
            samples.append(time.perf_counter() - begin)
    return statistics.median(samples)


def measure(dataset: str, preset: str, device: str, iterations: int, assignments: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as run_dir:
        config = load_config(dataset, preset, {"device": device, "out": run_dir}, assignments)
        trainer = Trainer(config, run_dir, validate=lambda net: 0.0)
        batch = random_batch(trainer)
        labeled = {key: value[: config.data.labeled_batch_size] for key, value in batch.items()}
        trainer.begin_stage("pretrain")
        trainer.student.train()
        pretrain_s = median_seconds(lambda: supervised_step(trainer, labeled, mix=True), iterations, trainer.device)
        trainer.teacher = create_teacher(trainer.student)
        trainer.head = trainer.new_head()
        trainer.head.prototypes.copy_(torch.randn_like(trainer.head.prototypes))
        trainer.begin_stage("selftrain")
        step = iter(range(10**9))
        selftrain_s = median_seconds(lambda: selftrain_step(trainer, batch, next(step)), iterations, trainer.device)
    pretrain_n, selftrain_n = config.pretrain.iterations, config.selftrain.iterations
    return dict(
        dataset=dataset,
        preset=preset,
        device=device_line(trainer.device),
        threads=torch.get_num_threads(),
        pretrain_iteration_s=pretrain_s,
        selftrain_iteration_s=selftrain_s,
        pretrain_iterations=pretrain_n,
        selftrain_iterations=selftrain_n,
        mper_hours=(pretrain_n * pretrain_s + selftrain_n * selftrain_s) / 3600,
        baseline_hours=(pretrain_n + selftrain_n) * pretrain_s / 3600,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", nargs="+", default=list(dataset_names()), choices=dataset_names())
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations per stage (median taken)")
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice, one per core)"
    )
    parser.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="preset override, repeatable",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON path (default results/run_time-<preset>-<device>.json)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for dataset in args.dataset:
        row = measure(dataset, args.preset, args.device, args.iterations, args.assignments)
        rows.append(row)
        print(
            f"{dataset:5} {args.preset}: pre-training {row['pretrain_iteration_s']:.3f} s/it, self-training "
            f"{row['selftrain_iteration_s']:.3f} s/it -> MPER {row['mper_hours']:.2f} h "
            f"({row['pretrain_iterations']} + {row['selftrain_iterations']} it), labeled-only "
            f"{row['baseline_hours']:.2f} h, on {row['device']}",
            flush=True,
        )
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    out = args.out or RESULTS / f"run_time-{args.preset}-{device_name.lower().replace(' ', '-')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(provenance=provenance(), torch=torch.__version__, results=rows), indent=1) + "\n")


if __name__ == "__main__":
    main()
