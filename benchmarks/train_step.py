"""Cost of the prototype head inside one self-training iteration.

Runs the trainer's own `selftrain_step` (teacher forward and pseudo labels, bidirectional
copy-paste, student forward, Eq. 6 losses, backward, SGD step, bank update, teacher EMA)
on random data of the real shapes, with `--ops mper` and with `--ops reference`, and
reports the median time per iteration, the peak memory, and the prototype head's share:
the device time of the head's own work (classifier + InfoNCE forward and backward, the
update gate, accumulation and EMA) at the same shapes, over the iteration time.

It also profiles a few iterations and breaks them down by the trainer's own profiler
ranges (`mper.train.selftrain.PHASES`): teacher forward, pseudo labels, mixing, student
forward, prototype head forward and backward, bank update, backward and optimizer step,
teacher EMA. "network" is teacher forward + student forward + backward and optimizer
minus the head's backward (with `--ops reference` the head's backward is spread over
eager ops and stays inside "network"); the loop's data wait is in the run's logs.
"iteration / network" divides the iteration by "network": on the CPU both profiled, on
CUDA the timed iteration (CUDA events) by the network's device time, since the host's
time of an iteration that does not wait for the GPU says little of the GPU's.

`--compile` and `--channels-last` time the step as the `compile` and `channels_last`
settings run it (the first, compiling iterations are left out of the timing).

    python benchmarks/train_step.py --dataset la            # LA, batch 8, 112x112x80
    python benchmarks/train_step.py --dataset acdc --amp bf16
    python benchmarks/train_step.py --dataset acdc --amp bf16 --compile --ops mper   # CUDA only
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from mper.datasets import dataset_names
from mper.train.config import load_config
from mper.train.loop import Trainer
from mper.train.prototypes import confidence_gate
from mper.train.selftrain import PHASES, selftrain_step
from mper.train.teacher import create_teacher
from provenance import provenance
from workloads import Timer

RESULTS = Path(__file__).resolve().parent / "results"


def make_trainer(dataset: str, ops: str, device: str, amp: str, run_dir: Path, overrides: list[str]) -> Trainer:
    """``overrides``: assignments such as ``compile=true`` applied last."""
    config = load_config(
        dataset, "paper", {"ops": ops, "device": device, "amp": amp, "data": {"num_workers": 0}}, overrides
    )
    trainer = Trainer(config, run_dir, validate=lambda net: 0.0)
    trainer.teacher = create_teacher(trainer.student, config.selftrain.teacher_mode)
    trainer.head = trainer.new_head()
    trainer.head.prototypes.copy_(torch.randn_like(trainer.head.prototypes))
    trainer.begin_stage("selftrain")
    trainer.student.train()
    return trainer


def random_batch(trainer: Trainer) -> dict[str, torch.Tensor]:
    config = trainer.config
    shape = (config.data.batch_size, *config.data.patch_size)
    generator = torch.Generator().manual_seed(0)
    return {
        "image": torch.randn((shape[0], 1, *shape[1:]), generator=generator).to(trainer.device),
        "label": torch.randint(0, config.num_classes, shape, generator=generator).to(trainer.device),
    }


def head_alone(trainer: Trainer, batch: dict[str, torch.Tensor]):
    """The head's work of one iteration at the iteration's shapes, for timing."""
    config, head = trainer.config, trainer.head
    with torch.no_grad(), trainer.autocast():
        output = trainer.student(batch["image"])
    feat = output.feat.detach().requires_grad_(True)
    label = batch["label"]
    region = torch.ones_like(label, dtype=torch.float32)
    p = config.prototypes

    def run():
        logits, assign, loss = head.forward_with_contrastive(feat)
        torch.autograd.grad([logits, loss], feat, [torch.ones_like(logits), torch.ones_like(loss)])
        gate = confidence_gate(
            logits.argmax(dim=1), label, region, region, p.confidence_threshold, p.update_source, p.update_background
        )
        head.update(feat, label, assign, gate, p.momentum)

    return run


def breakdown(trainer: Trainer, batch: dict[str, torch.Tensor], iterations: int, first: int) -> dict[str, float]:
    """Milliseconds per iteration in each phase, from the profiler (device time on CUDA)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if trainer.device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profile:
        for iteration in range(first, first + iterations):
            with torch.profiler.record_function("iteration"):
                selftrain_step(trainer, batch, iteration)
        if trainer.device.type == "cuda":
            torch.cuda.synchronize(trainer.device)
    on_device = trainer.device.type == "cuda"
    totals: dict[str, float] = {}
    for event in profile.events():
        name = next((phase for phase, label in PHASES.items() if event.name == label), None)
        if event.name.startswith("autograd::engine::evaluate_function") and (
            "HeadBackward" in event.name or "mper_proto" in event.name
        ):
            name = "head_backward"
        if name is None and event.name == "iteration":
            name = "iteration"
        if name is not None:
            time_us = event.device_time_total if on_device and name != "iteration" else event.cpu_time_total
            totals[name] = totals.get(name, 0.0) + time_us / 1e3 / iterations
    phases = {name: totals.get(name, 0.0) for name in [*PHASES, "head_backward", "iteration"]}
    phases["mixing"] -= phases["teacher"] + phases["pseudo_labels"]  # its own work only
    phases["network"] = phases["teacher"] + phases["student"] + phases["backward"] - phases["head_backward"]
    return phases


def measure(dataset: str, ops: str, device: str, amp: str, iterations: int, overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = make_trainer(dataset, ops, device, amp, Path(run_dir), overrides)
        batch = random_batch(trainer)
        timer = Timer(trainer.device, trials=iterations, calls=1)
        step = iter(range(10**9))
        if trainer.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(trainer.device)
        iteration_ms = timer.median_ms(lambda: selftrain_step(trainer, batch, next(step)), graph=False)
        peak = torch.cuda.max_memory_allocated(trainer.device) / 2**20 if trainer.device.type == "cuda" else None
        head_ms = timer.median_ms(head_alone(trainer, batch), graph=False)
        phases = breakdown(trainer, batch, iterations=3, first=next(step))
    return dict(
        dataset=dataset,
        ops=ops,
        amp=amp,
        compile=trainer.config.compile,
        channels_last=trainer.config.channels_last,
        iteration_ms=iteration_ms,
        head_ms=head_ms,
        head_share=head_ms / iteration_ms,
        peak_MiB=peak,
        phases_ms=phases,
        # on CUDA the profiled "iteration" range is host time, which runs ahead of the GPU:
        # the timed iteration (events) is what the device spends
        iteration_over_network=(iteration_ms if trainer.device.type == "cuda" else phases["iteration"])
        / phases["network"],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", nargs="+", default=list(dataset_names()), choices=dataset_names())
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", default="off", choices=["off", "bf16"])
    parser.add_argument("--ops", nargs="+", default=["mper", "reference"], choices=["mper", "reference"])
    parser.add_argument("--compile", action="store_true", help="torch.compile the steps (setting compile, CUDA only)")
    parser.add_argument("--channels-last", action="store_true", help="channels-last networks (setting channels_last)")
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="change a setting of the paper preset, e.g. data.batch_size=4 (repeatable)",
    )
    args = parser.parse_args()
    overrides = [
        *args.overrides,
        f"compile={str(args.compile).lower()}",
        f"channels_last={str(args.channels_last).lower()}",
    ]
    variant = "+".join(
        [args.amp if args.amp != "off" else "fp32"]
        + ["compile"] * args.compile
        + ["channels-last"] * args.channels_last
    )
    rows = []
    for dataset in args.dataset:
        for ops in args.ops:
            row = measure(dataset, ops, args.device, args.amp, args.iterations, overrides)
            rows.append(row)
            print(
                f"{dataset:5} ops={ops:9} {variant} iteration {row['iteration_ms']:8.1f} ms  "
                f"head {row['head_ms']:7.2f} ms ({100 * row['head_share']:.1f}%)  peak {row['peak_MiB']} MiB",
                flush=True,
            )
            print(
                "    profiled ms per iteration: "
                + ", ".join(f"{k} {v:.2f}" for k, v in row["phases_ms"].items())
                + f"; iteration / network {row['iteration_over_network']:.2f}",
                flush=True,
            )
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    out = args.out or RESULTS / f"train_step-{device_name.lower().replace(' ', '-')}-{variant}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            dict(
                provenance=provenance(),
                device=device_name,
                torch=torch.__version__,
                overrides=args.overrides,
                results=rows,
            ),
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
