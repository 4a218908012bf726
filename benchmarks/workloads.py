"""What the op benchmarks share: workloads, their inputs, timing and memory probes."""

from __future__ import annotations

import math
import statistics
import time
import warnings
from dataclasses import dataclass

import torch

from mper import ops

IGNORE_INDEX = 0  # preset "reference" semantics


@dataclass(frozen=True)
class Workload:
    name: str
    batch: int
    spatial: tuple[int, ...]
    num_classes: int
    num_protos: int = 3
    depth: int = 16

    @property
    def voxels(self) -> int:
        return self.batch * math.prod(self.spatial)


WORKLOADS = {
    "la_b2": Workload("LA self-train (B=2)", 2, (112, 112, 80), 2),
    "la_b8": Workload("LA batch 8 (B=8)", 8, (112, 112, 80), 2),
    "acdc": Workload("ACDC (B=6)", 6, (256, 256), 4),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ---------------------------------------------------------------- timing


class Timer:
    """Median time per call of a callable.

    On CUDA the calls are captured into a CUDA graph when they allow it (no host
    synchronisation), so that the time is the device's, not Python's launch overhead;
    `last_method` says which timing was used. perf_counter on the CPU.
    """

    def __init__(self, device: torch.device, trials: int, calls: int):
        self.device, self.trials, self.calls = device, trials, calls
        self.last_method = "wall"

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def median_ms(self, fn, graph: bool = True, calls_per_graph: int = 1) -> float:
        """`calls_per_graph` calls go into one graph (e.g. one per rotating input set)."""
        if self.device.type != "cuda":
            return self._median(fn, lambda: None)
        replay = self._captured(fn, calls_per_graph) if graph else None
        self.last_method = "cuda-graph" if replay else "events"
        if replay is None:
            return self._median(fn, lambda: torch.cuda.synchronize(self.device))
        return self._median(replay, lambda: torch.cuda.synchronize(self.device)) / calls_per_graph

    def _median(self, fn, sync) -> float:
        for _ in range(3):
            fn()
        sync()
        samples = []
        for _ in range(self.trials):
            if self.device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(self.calls):
                    fn()
                end.record()
                end.synchronize()
                samples.append(start.elapsed_time(end) / self.calls)
            else:
                begin = time.perf_counter()
                for _ in range(self.calls):
                    fn()
                samples.append((time.perf_counter() - begin) * 1e3 / self.calls)
        return statistics.median(samples)

    def _captured(self, fn, calls: int):
        """A replay of `calls` calls of `fn` captured in a CUDA graph, or None when they
        cannot be captured."""
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        try:
            with torch.cuda.stream(side):
                for _ in range(3):
                    fn()
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                for _ in range(calls):
                    fn()
        except RuntimeError:
            torch.cuda.synchronize(self.device)
            return None
        return graph.replay


def copy_bandwidth_gbps(device: torch.device, timer: Timer) -> float:
    """Device-memory copy bandwidth, counting bytes read plus written."""
    numel = (1 << 28) if device.type == "cuda" else (1 << 26)
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    warm_until = time.perf_counter() + 1.0  # let the clocks settle before measuring
    while time.perf_counter() < warm_until:
        dst.copy_(src)
        timer.sync()
    ms = timer.median_ms(lambda: dst.copy_(src), graph=False)
    return 2 * src.numel() * src.element_size() / (ms * 1e-3) / 1e9


def peak_extra_mib(device: torch.device, fn) -> float | None:
    """Peak memory allocated while `fn` runs, beyond what was allocated before (CUDA)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def host_syncs(device: torch.device, fn) -> int | None:
    """Host synchronisations `fn` causes, counted by CUDA's sync debug mode."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


# ---------------------------------------------------------------- problems


class Problem:
    """Inputs of one workload in one dtype; several copies when they would fit in cache."""

    def __init__(self, workload: Workload, dtype: torch.dtype, device: torch.device, copies: int):
        generator = torch.Generator(device="cpu").manual_seed(0)
        w = workload
        shape = (w.batch, w.depth, *w.spatial)
        self.workload, self.dtype, self.device = w, dtype, device
        self.feats = [
            (torch.randn(shape, generator=generator) + 0.2).to(device=device, dtype=dtype).requires_grad_(True)
            for _ in range(copies)
        ]
        self.bank = torch.randn(w.num_classes * w.num_protos, w.depth, generator=generator).to(device)
        labels_shape = (w.batch, *w.spatial)
        self.labels = torch.randint(0, w.num_classes, labels_shape, generator=generator).to(device)
        self.mask = (torch.rand(labels_shape, generator=generator) > 0.3).to(device)
        self.assign = torch.randint(0, w.num_protos, (w.batch, w.num_classes, *w.spatial), generator=generator).to(
            device
        )
        self.grad_logits = torch.randn((w.batch, w.num_classes, *w.spatial), generator=generator).to(device, dtype)
        self.turn = 0

    def next_feat(self) -> torch.Tensor:
        self.turn = (self.turn + 1) % len(self.feats)
        return self.feats[self.turn]


def minimum_bytes(op: str, backward: bool, w: Workload, element: int) -> int:
    """Fewest bytes an op must move: each input read once, each output written once."""
    n, d, c = w.voxels, w.depth, w.num_classes
    features, class_maps, assign = n * d * element, n * c * element, n * c * 8
    if op == "update":  # emb, labels, the assigned k at the label, mask
        return features + n * 8 + n * 8 + n
    forward = features + (class_maps + assign if op in ("classify", "classify+infonce") else 0)
    if not backward:
        return forward
    grad_in = class_maps if op in ("classify", "classify+infonce") else 0
    return forward + features + grad_in + features


def head_call(module, op: str, problem: Problem):
    """The head op `op` as a function of the features, with `module`'s API."""
    w = problem.workload
    fns = {
        "classify": lambda f: module.proto_classify(f, problem.bank, w.num_classes, 0.1),
        "infonce": lambda f: (module.proto_infonce(f, problem.bank, 0.1, IGNORE_INDEX),),
        "classify+infonce": lambda f: module.proto_classify_infonce(
            f, problem.bank, w.num_classes, 0.1, 0.1, IGNORE_INDEX
        ),
    }
    return fns[op]


def run_head(fn, problem: Problem, backward: bool):
    feat = problem.next_feat()
    if not backward:
        with torch.no_grad():
            return fn(feat)
    outputs = [o for o in fn(feat) if o.is_floating_point()]
    grads = [problem.grad_logits if o.dim() > 0 else torch.ones_like(o) for o in outputs]
    return torch.autograd.grad(outputs, feat, grads)


def update_call(module, problem: Problem):
    """One bank update (accumulate + EMA) with `module`'s ops: :mod:`mper.ops` or
    :mod:`mper.reference`, whose loops over the bank rows wait for the host at each row."""
    w = problem.workload
    bank = problem.bank.clone()
    extra = {"check_labels": False} if module is ops else {}

    def update():
        emb = problem.next_feat().detach()
        sums, counts = module.proto_accumulate(
            emb, problem.labels, problem.assign, problem.mask, w.num_classes, w.num_protos, **extra
        )
        module.proto_ema_update_(bank, sums, counts, 0.99)

    return update


def vectorised_update_(
    bank: torch.Tensor,
    emb: torch.Tensor,
    labels: torch.Tensor,
    assign: torch.Tensor,
    mask: torch.Tensor,
    num_protos: int,
    momentum: float,
) -> torch.Tensor:
    """The bank update as eager PyTorch would write it without loops or host waits: the row
    of each voxel (label * K + its assigned k), ``index_add_`` of the masked embeddings and
    counts into the rows, then the EMA where a row has a count (``torch.where``)."""
    depth = emb.shape[1]
    z = emb.movedim(1, -1).reshape(-1, depth).float()
    picked = assign.gather(1, labels.unsqueeze(1)).squeeze(1)
    rows = (labels * num_protos + picked).reshape(-1)
    weight = mask.reshape(-1).float()
    sums = torch.zeros_like(bank).index_add_(0, rows, z * weight[:, None])
    counts = torch.zeros(bank.shape[0], dtype=bank.dtype, device=bank.device).index_add_(0, rows, weight)
    mean = sums / counts.clamp_min(1)[:, None]
    bank.copy_(torch.where(counts[:, None] > 0, momentum * bank + (1 - momentum) * mean, bank))
    return bank


def vectorised_update_call(problem: Problem, compiled: bool = False):
    """One bank update with :func:`vectorised_update_`, eager or under ``torch.compile``."""
    bank = problem.bank.clone()
    step = torch.compile(vectorised_update_, dynamic=False) if compiled else vectorised_update_

    def update():
        emb = problem.next_feat().detach()
        step(bank, emb, problem.labels, problem.assign, problem.mask, problem.workload.num_protos, 0.99)

    return update
