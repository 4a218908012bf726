"""The hint when the measured iteration time swings: the median of the recent log windows
against the stage's fastest, said once per stage."""

from __future__ import annotations

import logging
import types

import pytest
import torch

from mper import pipeline
from mper.datasets import synthesize
from mper.train import loop, runner
from mper.train.loop import Trainer
from mper.train.slowdown import CPU_ADVICE, SlowdownWatch, contention_hint
from test_pipeline import tiny_config


def hints(times_ms, device="cpu"):
    watch = SlowdownWatch(torch.device(device))
    return [(index, hint) for index, hint in enumerate(map(watch.add, times_ms)) if hint]


def test_a_fivefold_slowdown_of_the_recent_median_is_hinted_once():
    # windows 0-3 near 20 ms, then 110 ms and more: the median of the last five first reaches
    # 5 x 20 ms at window 6 (21, 25, 110, 120, 130 -> 110)
    said = hints([20, 22, 21, 25, 110, 120, 130, 140, 400, 20, 500, 600])
    assert [index for index, _ in said] == [6]
    assert said[0][1].startswith(
        "iterations now take 110 ms (median of the last 5 log windows), "
        "6x this stage's fastest window (20 ms): other jobs are probably competing "
        f"for the CPU. This process runs {torch.get_num_threads()} threads"
    )
    assert "OMP_NUM_THREADS=1" in said[0][1]


@pytest.mark.parametrize(
    "times_ms",
    [
        [20, 90, 95, 99, 98, 97, 96],  # under 5x
        [20, 20, 20, 500, 20, 20, 500, 20, 20, 500],  # single slow windows: the median stays fast
        [500, 400, 300, 100, 110, 100, 120],  # a slow start (warm-up) is no swing
    ],
)
def test_swings_under_five_times_or_in_single_windows_are_not_hinted(times_ms):
    assert hints(times_ms) == []


def test_off_the_cpu_the_hint_does_not_speak_of_threads():
    ((index, hint),) = hints([10, 10, 10, 60, 60, 60], device="cuda")
    assert index == 5 and "OMP_NUM_THREADS" not in hint and "shared with other jobs" in hint


def test_train_log_gives_the_hint_once_when_iterations_slow_down(tmp_path, monkeypatch):
    data = synthesize("acdc", tmp_path / "acdc", cases=5, seed=0, size=(32, 32), progress=False)
    clock = [0.0]
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    optimize, steps = Trainer.optimize, [0]

    def timed_optimize(self, loss):  # 20 ms per iteration for 12 iterations, then 500 ms
        optimize(self, loss)
        steps[0] += 1
        clock[0] += 0.02 if steps[0] <= 12 else 0.5

    monkeypatch.setattr(Trainer, "optimize", timed_optimize)
    config = tiny_config(
        data,
        tmp_path / "run",
        "pretrain.iterations=24",
        "selftrain.iterations=4",
        "eval.log_interval=2",
        "eval.val_interval=24",
        "eval.teacher_dice=false",
    )
    run_dir = pipeline.train(config)
    log = (run_dir / "train.log").read_text()
    assert log.count("iterations now take") == 1
    assert (
        "iterations now take 500 ms (median of the last 5 log windows), 25x this stage's fastest window (20 ms)" in log
    )


@pytest.mark.parametrize(
    ("threads", "processes", "cores", "load", "said"),
    [
        (2, 1, 2, 0.1, None),  # an idle machine, one thread per core
        (1, 2, 2, 3.0, None),  # one thread each: a busy machine slows it, but threads cannot wait on each other
        (2, 1, 2, 1.0, None),  # the run's own start-up counts in the load: one more than the cores is no contention
        (4, 1, 2, 0.0, "training runs 4 threads on 2 CPU core(s), more threads than cores"),
        (2, 2, 2, 0.0, "training runs 2 threads in each of 2 processes on 2 CPU core(s), more threads than cores"),
        (2, 1, 2, 1.5, "the machine is busy (load average 1.5 over the last minute on 2 CPU core(s))"),
    ],
)
def test_the_contention_hint_before_training_on_the_cpu(threads, processes, cores, load, said):
    hint = contention_hint(threads, processes, cores, load)
    if said is None:
        assert hint is None
    else:
        assert hint is not None and hint.startswith(said) and hint.endswith(CPU_ADVICE)
        assert "OMP_NUM_THREADS=1" in hint


def test_more_single_thread_processes_than_cores_are_told_to_start_fewer():
    """With one thread each, OMP_NUM_THREADS=1 is what they run already: the hint asks for
    fewer processes instead."""
    hint = contention_hint(1, 4, 2, 0.0)
    assert hint == (
        "training runs 1 thread in each of 4 processes on 2 CPU core(s), more threads than cores; "
        "start no more processes than cores (torchrun --nproc-per-node 2)"
    )


def test_training_on_a_busy_cpu_logs_the_contention_hint_and_not_on_cuda(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(runner, "available_cores", lambda: 2)
    monkeypatch.setattr(runner.os, "getloadavg", lambda: (6.0, 5.0, 4.0))
    monkeypatch.setattr(runner.torch, "get_num_threads", lambda: 2)
    config = tiny_config(tmp_path / "data", tmp_path / "run")
    with caplog.at_level(logging.WARNING, logger="mper"):
        runner._log_machine_needs(config, torch.device("cuda"))
        assert not caplog.messages
        runner._log_machine_needs(config, torch.device("cpu"))
    assert caplog.messages == [contention_hint(2, 1, 2, 6.0)]
    assert caplog.messages[0].startswith("the machine is busy (load average 6.0")
