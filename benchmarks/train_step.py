"""Cost of the prototype head inside one self-training iteration.

Runs the trainer's own `selftrain_step` (teacher forward and pseudo labels, bidirectional
copy-paste, student forward, Eq. 6 losses, backward, SGD step, bank update, teacher EMA)
on random data of the real shapes, with `--ops mper` and with `--ops reference`, and
reports the median time per iteration, the peak memory, and the prototype head's share:
the device time of the head's own work (classifier + InfoNCE forward and backward, the
update gate, accumulation and EMA) at the same shapes, over the iteration time.

    python benchmarks/train_step.py --dataset la            # LA, batch 8, 112x112x80
    python benchmarks/train_step.py --dataset acdc --amp bf16
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
from mper.train.selftrain import selftrain_step
from mper.train.teacher import create_teacher
from workloads import Timer

RESULTS = Path(__file__).resolve().parent / "results"


def make_trainer(dataset: str, ops: str, device: str, amp: str, run_dir: Path) -> Trainer:
    config = load_config(dataset, "paper", {"ops": ops, "device": device, "amp": amp, "data": {"num_workers": 0}})
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
        gate = confidence_gate(logits.argmax(dim=1), label, region, region, p.confidence_threshold, p.update_source,
                               p.update_background)
        head.update(feat, label, assign, gate, p.momentum)

    return run


def measure(dataset: str, ops: str, device: str, amp: str, iterations: int) -> dict:
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = make_trainer(dataset, ops, device, amp, Path(run_dir))
        batch = random_batch(trainer)
        timer = Timer(trainer.device, trials=iterations, calls=1)
        step = iter(range(10**9))
        if trainer.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(trainer.device)
        iteration_ms = timer.median_ms(lambda: selftrain_step(trainer, batch, next(step)), graph=False)
        peak = torch.cuda.max_memory_allocated(trainer.device) / 2**20 if trainer.device.type == "cuda" else None
        head_ms = timer.median_ms(head_alone(trainer, batch), graph=False)
    return dict(dataset=dataset, ops=ops, amp=amp, iteration_ms=iteration_ms, head_ms=head_ms,
                head_share=head_ms / iteration_ms, peak_MiB=peak)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", nargs="+", default=list(dataset_names()), choices=dataset_names())
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", default="off", choices=["off", "bf16"])
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    for dataset in args.dataset:
        for ops in ("mper", "reference"):
            row = measure(dataset, ops, args.device, args.amp, args.iterations)
            rows.append(row)
            print(f"{dataset:5} ops={ops:9} amp={args.amp:4} iteration {row['iteration_ms']:8.1f} ms  "
                  f"head {row['head_ms']:7.2f} ms ({100 * row['head_share']:.1f}%)  peak {row['peak_MiB']} MiB", flush=True)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    out = args.out or RESULTS / f"train_step-{device_name.lower().replace(' ', '-')}-{args.amp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(device=device_name, torch=torch.__version__, results=rows), indent=1))


if __name__ == "__main__":
    main()
