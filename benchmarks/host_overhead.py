"""Host time per call of the fused head on a tiny input, where the kernels cost nothing.

What remains is Python, argument checks and PyTorch's dispatch: the time a call keeps
the host busy whatever the device. Contenders, forward + backward of
``proto_classify_infonce`` (``logits.sum() + loss``, then ``backward()``):

* ``mper``            -- :func:`mper.ops.proto_classify_infonce` as users call it (plain
  eager tensors go straight to the kernels under autograd),
* ``mper custom op``  -- the same kernels through the registered ``torch.ops.mper`` custom
  op and its autograd formula, the path ``torch.compile`` and dispatch modes take,
* ``eager``           -- :func:`mper.reference.proto_classify_infonce` (eager PyTorch),
* ``autograd floor``  -- one elementwise op on the same features and its backward: what
  any differentiable call costs before it does any work.

Medians over ``--repeats`` timings of ``--calls`` back-to-back calls each, one thread.

    python benchmarks/host_overhead.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

import mper.reference as ref
from mper import ops
from mper.ops import _head
from provenance import provenance, provenance_line

RESULTS = Path(__file__).resolve().parent / "results"


def median_ms(fn: Callable[[], None], calls: int, repeats: int) -> float:
    for _ in range(calls):
        fn()
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - begin) * 1e3 / calls)
    return statistics.median(times)


def contenders(feat: torch.Tensor, bank: torch.Tensor, classes: int) -> dict[str, Callable[[], None]]:
    def mper() -> None:
        logits, _, loss = ops.proto_classify_infonce(feat, bank, classes)
        (logits.sum() + loss).backward()

    def custom_op() -> None:
        kernel_feat, kernel_bank = _head.prepare(feat, bank, classes, tau=0.1, nce_tau=0.1)
        logits, _, loss, _ = torch.ops.mper.proto_classify_infonce(
            kernel_feat, kernel_bank, classes, 0.1, 0.1, _head.NO_IGNORE
        )
        (logits.sum() + loss).backward()

    def eager() -> None:
        logits, _, loss = ref.proto_classify_infonce(feat, bank, classes)
        (logits.sum() + loss).backward()

    def floor() -> None:
        (feat * 2.0).sum().backward()

    return {"mper": mper, "mper custom op": custom_op, "eager": eager, "autograd floor": floor}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--out", type=Path, default=RESULTS / "host_overhead-cpu.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    classes, per_class, depth = 2, 3, 16
    feat = torch.randn(1, depth, 4, 4, requires_grad=True)
    bank = torch.nn.functional.normalize(torch.randn(classes * per_class, depth), dim=1)
    rows = {name: median_ms(fn, args.calls, args.repeats) for name, fn in contenders(feat, bank, classes).items()}
    load, measured = os.getloadavg()[0], provenance()
    lines = [
        f"# Host time per forward + backward call, {platform.machine()} CPU, 1 thread, torch {torch.__version__}",
        "",
        provenance_line(measured),
        "",
        f"Features {tuple(feat.shape)}, bank {tuple(bank.shape)}; median of {args.repeats} x {args.calls} calls; "
        f"load average {load:.2f} on {os.cpu_count()} cores when measured.",
        "",
        "| contender | ms per call | x autograd floor |",
        "|---|---|---|",
        *(f"| {name} | {ms:.4f} | {ms / rows['autograd floor']:.2f} |" for name, ms in rows.items()),
    ]
    print("\n".join(lines))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "provenance": measured,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "load_average": load,
        "feat_shape": list(feat.shape),
        "bank_shape": list(bank.shape),
        "ms_per_call": rows,
    }
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
