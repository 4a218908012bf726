"""Hints when other work on the machine slows training down.

* :func:`contention_hint`, before training on the CPU: more threads than cores, or a
  machine already busy enough that threads will wait for one another.
* :class:`SlowdownWatch`, once per stage: the measured iteration time swings far above
  its best.

A training process on a CPU that other jobs share can slow down many times over when its
threads wait for one another on busy cores (the default is one thread per core for each
process). The loop measures the iteration time of every log window
(:class:`~mper.train.loop.ScalarWindow`); :class:`SlowdownWatch` compares the median of
the last :data:`RECENT_WINDOWS` windows with the fastest window of the stage and, the
first time it is :data:`SLOWDOWN_FACTOR` times slower or more, returns a hint to log.
"""

from __future__ import annotations

import math
import statistics
from collections import deque

import torch

#: How many times slower than the stage's fastest window the recent median must be.
SLOWDOWN_FACTOR = 5.0
#: The windows whose median is the recent iteration time.
RECENT_WINDOWS = 5
#: What avoids contention on a shared CPU.
CPU_ADVICE = (
    "with other jobs or runs on the same cores, OMP_NUM_THREADS=1 per process (or threads x processes "
    "no more than the idle cores) usually avoids such slowdowns"
)


def contention_hint(threads: int, processes: int, cores: int, load: float) -> str | None:
    """The hint, before training on the CPU, when the ``threads`` of each of the
    ``processes`` training here outnumber the ``cores`` this process may use, or (with more
    than one thread each) when they and the ``load`` already on the machine (the one-minute
    load average) outnumber the cores by more than one: their threads would wait for one
    another at every parallel op, many times slower than one thread each. ``None`` otherwise."""
    demand = threads * processes
    threads_each = f"{threads} thread{'s' if threads > 1 else ''}"
    each = f"{threads_each} in each of {processes} processes" if processes > 1 else threads_each
    if demand > cores:
        # one thread each already: only fewer processes help
        advice = (
            CPU_ADVICE if threads > 1 else f"start no more processes than cores (torchrun --nproc-per-node {cores})"
        )
        return f"training runs {each} on {cores} CPU core(s), more threads than cores; {advice}"
    if threads > 1 and load + demand > cores + 1:
        return (
            f"the machine is busy (load average {load:.1f} over the last minute on {cores} CPU core(s)) and "
            f"training runs {each}, so they will wait for one another; {CPU_ADVICE}"
        )
    return None


class SlowdownWatch:
    """The iteration times of one stage's log windows; :meth:`add` returns a hint once."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.fastest = math.inf
        self.recent: deque[float] = deque(maxlen=RECENT_WINDOWS)
        self.hinted = False

    def add(self, iteration_ms: float) -> str | None:
        """Take a window's mean iteration time; the hint, the first time the median of the
        last :data:`RECENT_WINDOWS` windows is :data:`SLOWDOWN_FACTOR` times the fastest."""
        self.fastest = min(self.fastest, iteration_ms)
        self.recent.append(iteration_ms)
        if self.hinted or len(self.recent) < RECENT_WINDOWS or self.fastest <= 0:
            return None
        median = statistics.median(self.recent)
        if median < SLOWDOWN_FACTOR * self.fastest:
            return None
        self.hinted = True
        swing = (
            f"iterations now take {median:.0f} ms (median of the last {RECENT_WINDOWS} log windows), "
            f"{median / self.fastest:.0f}x this stage's fastest window ({self.fastest:.0f} ms)"
        )
        if self.device.type != "cpu":
            return f"{swing}: the device or the data loading is probably shared with other jobs"
        return (
            f"{swing}: other jobs are probably competing for the CPU. This process runs "
            f"{torch.get_num_threads()} threads; {CPU_ADVICE}"
        )
