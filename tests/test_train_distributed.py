"""Data-parallel training on the CPU: 2 gloo processes started as torchrun starts them.

The processes run ``mper-train`` with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT`` set, exactly the environment torchrun gives its
workers (without torchrun's agent, so that a killed process is noticed by the others
themselves). The network is the ACDC U-Net with batch norm, synchronised over the
processes (``distributed.sync_batchnorm``, the default); its dropout is set to 0
because each process draws its own dropout masks, and the bank is initialised by Lloyd
k-means, whose result does not hinge on a stopping test that weights differing in
their last bits could pass one batch earlier (mini-batch k-means).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mper.data.sampler import TwoStreamBatchSampler
from mper.datasets import get_dataset, synthesize
from mper.errors import ConfigError
from mper.train import distributed, runner
from mper.train.checkpoint import load_checkpoint
from mper.train.config import load_config
from mper.train.distributed import World, check_batch_shares, launched_world, process_device

REPO = Path(__file__).resolve().parent.parent
TINY = [
    "--labeled",
    "1",
    "--device",
    "cpu",
    "--set",
    "network.channels=[4,8,16,32,64]",
    "--set",
    "network.dropout=[0,0,0,0,0]",
    "--set",
    "data.patch_size=[32,32]",
    "--set",
    "data.batch_size=8",
    "--set",
    "data.labeled_batch_size=4",
    "--set",
    "data.num_workers=0",
    "--set",
    "pretrain.iterations=3",
    "--set",
    "selftrain.iterations=3",
    "--set",
    "eval.val_interval=1",
    "--set",
    "eval.num_figures=0",
    "--set",
    "prototypes.kmeans=lloyd",
    "--set",
    "prototypes.kmeans_max_voxels=500",
    "--set",
    "distributed.check_bank=true",
]
#: How far apart legitimate executions of the single-process run of TINY end: the largest
#: differences measured between single-process runs at ATEN_CPU_CAPABILITY default, avx2
#: and avx512 and at 1 and 2 threads (AMD EPYC with AVX-512, torch 2.13; with two sets of
#: self-training draws, before and after the stages drew their own), in the weights
#: (student, teacher, bank, batch-norm statistics, best validation Dice; absolute), the
#: optimizer's momentum buffers (absolute) and the losses of every iteration (relative).
#: The default kernels normalise batch norm in another order; self-training's pseudo
#: labels, confidence gates and bank updates then turn last-bit differences into these.
#: Two processes sum over the processes and then within each, yet another order, so they
#: may end as far from one process: on that EPYC 3.3e-7 in the weights, on an Intel Xeon
#: 2.1e-5. Without synchronised batch norm they end 0.09 (weights), 0.14 (momentum) and
#: 1.2e-3 (losses) apart.
SPREAD = {"weights": 4.7e-4, "optimizer": 3.0e-2, "losses": 1.7e-5}
#: Other CPUs and another order may reach further than the runs measured.
MARGIN = 4
WEIGHTS_TOLERANCE = {"rtol": 0.0, "atol": MARGIN * SPREAD["weights"]}
OPTIMIZER_TOLERANCE = {"rtol": 0.0, "atol": MARGIN * SPREAD["optimizer"]}
LOSS_TOLERANCE = {"rtol": MARGIN * SPREAD["losses"], "atol": 0.0}


@pytest.fixture(scope="module")
def acdc_root(tmp_path_factory):
    return synthesize("acdc", tmp_path_factory.mktemp("acdc"), cases=5, seed=0, size=(32, 32), progress=False)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(arguments: list[str], processes: int, log_dir: Path) -> list[subprocess.Popen]:
    """``mper-train arguments`` on ``processes`` processes, in torchrun's environment."""
    port = str(free_port())
    log_dir.mkdir(parents=True, exist_ok=True)
    started = []
    for rank in range(processes):
        env = dict(os.environ, OMP_NUM_THREADS="1")
        if processes > 1:
            env.update(
                RANK=str(rank),
                WORLD_SIZE=str(processes),
                LOCAL_RANK=str(rank),
                LOCAL_WORLD_SIZE=str(processes),
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=port,
            )
        with open(log_dir / f"rank{rank}.log", "w") as output:
            started.append(
                subprocess.Popen(
                    [sys.executable, "-c", "from mper.cli import train_main; train_main()", *arguments],
                    env=env,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )
    return started


def finish(started: list[subprocess.Popen], log_dir: Path, timeout: float = 600) -> None:
    for rank, process in enumerate(started):
        process.wait(timeout=timeout)
        assert process.returncode == 0, (log_dir / f"rank{rank}.log").read_text()[-3000:]


def train(acdc_root: Path, out: Path, processes: int, *extra: str) -> Path:
    finish(
        start(
            ["--dataset", "acdc", "--data-root", str(acdc_root), "--out", str(out), *TINY, *extra],
            processes,
            out.parent / f"{out.name}-logs",
        ),
        out.parent / f"{out.name}-logs",
    )
    return out


def resume(out: Path, processes: int, *extra: str) -> Path:
    log_dir = out.parent / f"{out.name}-resume-logs"
    finish(start(["--resume", "--out", str(out), *extra], processes, log_dir), log_dir)
    return out


def assert_close(first, second, tolerance, where="state"):
    """Recursive equality of checkpoint contents, floating-point values within ``tolerance``."""
    if isinstance(first, torch.Tensor):
        if first.is_floating_point():
            torch.testing.assert_close(first, second, **tolerance, msg=lambda text: f"{where}: {text}")
        else:
            assert torch.equal(first, second), where
    elif isinstance(first, dict):
        assert first.keys() == second.keys(), where
        for key in first:
            assert_close(first[key], second[key], tolerance, f"{where}.{key}")
    elif isinstance(first, float):
        assert first == pytest.approx(second, rel=tolerance["rtol"], abs=tolerance["atol"]), where
    else:
        assert first == second, where


def losses(run_dir: Path) -> dict[str, list[float]]:
    """Each stage's loss of every iteration (validation every iteration averages one)."""
    import json

    record = json.loads((run_dir / "training.json").read_text())
    return {stage: [entry["mean_loss"] for entry in parts["trajectory"]] for stage, parts in record["stages"].items()}


def assert_same_training(first: Path, second: Path) -> None:
    a, b = load_checkpoint(first / "last.pt"), load_checkpoint(second / "last.pt")
    for part in ("progress", "student", "teacher", "bank"):  # progress: the best validation Dice
        assert_close(a[part], b[part], WEIGHTS_TOLERANCE, part)
    assert_close(a["optimizer"], b["optimizer"], OPTIMIZER_TOLERANCE, "optimizer")
    first_losses, second_losses = losses(first), losses(second)
    assert first_losses.keys() == second_losses.keys() == {"pretrain", "selftrain"}
    for stage, values in first_losses.items():
        np.testing.assert_allclose(values, second_losses[stage], **LOSS_TOLERANCE)


@pytest.fixture(scope="module")
def single(acdc_root, tmp_path_factory):
    return train(acdc_root, tmp_path_factory.mktemp("single") / "run", 1)


def sessions(run_dir: Path) -> list[tuple]:
    """(processes, processes per machine, backend, stage, iteration) of each session in metrics.json."""
    import json

    recorded = json.loads((run_dir / "metrics.json").read_text())["sessions"]
    assert all(session["device"] == "cpu" for session in recorded)
    return [
        (
            session["processes"],
            session["processes_per_machine"],
            session["backend"],
            session["stage"],
            session["iteration"],
        )
        for session in recorded
    ]


@pytest.mark.numerics
def test_two_processes_on_half_batches_train_as_one_on_the_whole_batch(acdc_root, single, tmp_path):
    double = train(acdc_root, tmp_path / "double", 2)
    assert_same_training(single, double)
    assert len(losses(single)["selftrain"]) == 3
    # process 0 alone wrote the run folder, including the final evaluation
    assert (double / "metrics.json").is_file() and (double / "best.pt").is_file()
    assert "test metrics" in (double / "train.log").read_text()
    assert len(load_checkpoint(double / "last.pt")["process_rng"]) == 2
    # how the run ran: in the log, on the console, in metrics.json
    said = "data parallel: 2 training processes (2 on this machine), gloo backend, process 0 on cpu"
    assert (
        said in (double / "train.log").read_text() and said in (double.parent / "double-logs" / "rank0.log").read_text()
    )
    assert sessions(double) == [(2, 2, "gloo", "pretrain", 0)]
    assert sessions(single) == [(1, 1, "none", "pretrain", 0)]
    assert "1 training process on cpu (no data parallelism)" in (single / "train.log").read_text()


@pytest.mark.slow
@pytest.mark.numerics
def test_without_synchronised_batch_norm_two_processes_train_otherwise(acdc_root, single, tmp_path):
    # the control: batch statistics of half batches change the losses beyond the tolerance
    double = train(acdc_root, tmp_path / "unsynced", 2, "--set", "distributed.sync_batchnorm=false")
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(losses(single)["pretrain"], losses(double)["pretrain"], **LOSS_TOLERANCE)


@pytest.mark.numerics
def test_a_run_resumes_on_another_number_of_processes(acdc_root, single, tmp_path):
    # pre-training and the first self-training iteration on 2 processes, the rest on 1
    out = train(acdc_root, tmp_path / "two-then-one", 2, "--set", "selftrain.iterations=1")
    resume(out, 1, "--set", "selftrain.iterations=3")
    assert_same_training(single, out)
    assert "a run saved by 2" in (out / "train.log").read_text()
    assert sessions(out) == [(2, 2, "gloo", "pretrain", 0), (1, 1, "none", "selftrain", 1)]


@pytest.mark.slow
@pytest.mark.numerics
def test_a_single_process_run_resumes_on_two(acdc_root, single, tmp_path):
    out = train(acdc_root, tmp_path / "one-then-two", 1, "--set", "selftrain.iterations=1")
    resume(out, 2, "--set", "selftrain.iterations=3")
    assert_same_training(single, out)


def endless_run(acdc_root: Path, out: Path, log_dir: Path) -> list[subprocess.Popen]:
    """2 processes pre-training without end, saving every 2 iterations; returned once the
    first checkpoint is written."""
    arguments = [
        "--dataset",
        "acdc",
        "--data-root",
        str(acdc_root),
        "--out",
        str(out),
        *TINY,
        "--set",
        "pretrain.iterations=100000",
        "--set",
        "eval.val_interval=100000",
        "--set",
        "eval.checkpoint_interval=2",
        "--set",
        "distributed.timeout=60",
    ]
    started = start(arguments, 2, log_dir)
    deadline = time.monotonic() + 300
    while not (out / "last.pt").exists():
        if time.monotonic() > deadline or started[0].poll() is not None:
            stop_all(started)
            pytest.fail((log_dir / "rank0.log").read_text()[-3000:])
        time.sleep(0.5)
    return started


def stop_all(started: list[subprocess.Popen]) -> None:
    for process in started:
        process.kill()
        process.wait()


def test_a_killed_process_stops_the_others_with_a_message_and_keeps_the_checkpoint(acdc_root, tmp_path):
    out, log_dir = tmp_path / "killed", tmp_path / "killed-logs"
    started = endless_run(acdc_root, out, log_dir)
    try:
        started[1].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        started[0].wait(timeout=90)
        waited = time.monotonic() - killed_at
    finally:
        stop_all(started)
    output = (log_dir / "rank0.log").read_text()
    assert started[0].returncode == 2, output[-3000:]
    assert "another training process died or stopped answering" in output
    assert "A run that has saved a checkpoint (last.pt in its run folder" in output
    assert "Traceback" not in output
    run_log = (out / "train.log").read_text()  # the run's log says so too, not in gloo's traceback
    assert "ERROR mper.pipeline: process 0 of 2 stopped: another training process died" in run_log
    assert "Traceback" not in run_log
    assert waited < 60
    state = load_checkpoint(out / "last.pt")
    assert state["progress"]["stage"] == "pretrain" and state["progress"]["iteration"] % 2 == 0


def test_sigterm_to_every_process_saves_one_checkpoint_together(acdc_root, tmp_path):
    # what torchrun does on Ctrl-C or when a scheduler stops the job: signal each worker once
    out, log_dir = tmp_path / "stopped", tmp_path / "stopped-logs"
    started = endless_run(acdc_root, out, log_dir)
    try:
        for process in started:
            process.send_signal(signal.SIGTERM)
        for process in started:
            process.wait(timeout=90)
    finally:
        stop_all(started)
    outputs = [(log_dir / f"rank{rank}.log").read_text() for rank in range(2)]
    assert [process.returncode for process in started] == [128 + signal.SIGTERM] * 2, (
        outputs[0][-2000:] + outputs[1][-3000:]
    )
    assert f"state saved to {out / 'last.pt'}" in outputs[0] and "state saved" not in outputs[1]
    assert load_checkpoint(out / "last.pt")["progress"]["iteration"] >= 2


def test_on_the_cpu_processes_stop_together_after_the_current_iteration(acdc_root, tmp_path):
    # losses read back, checkpoints and validations all far away: only the per-iteration
    # agreement can stop the processes before torchrun's grace period ends
    out, log_dir = tmp_path / "stopped", tmp_path / "stopped-logs"
    rare = ["pretrain.iterations=100000", "eval.val_interval=100000", "eval.checkpoint_interval=100000"]
    arguments = ["--dataset", "acdc", "--data-root", str(acdc_root), "--out", str(out), *TINY]
    for setting in [*rare, "eval.log_interval=100000", "distributed.timeout=60"]:
        arguments += ["--set", setting]
    started = start(arguments, 2, log_dir)
    try:
        deadline = time.monotonic() + 300
        while not re.search(r"pretrain: .*\| *[3-9]\d*/", (log_dir / "rank0.log").read_text()):
            assert started[0].poll() is None and time.monotonic() < deadline, (log_dir / "rank0.log").read_text()
            time.sleep(0.2)
        for process in started:
            process.send_signal(signal.SIGTERM)
        for process in started:
            process.wait(timeout=60)
    finally:
        stop_all(started)
    assert [process.returncode for process in started] == [128 + signal.SIGTERM] * 2
    assert 3 <= load_checkpoint(out / "last.pt")["progress"]["iteration"] < 1000


def test_the_distributed_page_scale_note_matches_the_networks():
    page = (REPO / "docs" / "distributed.md").read_text()
    for dataset in ("la", "acdc"):
        config = load_config(dataset, "paper", {"data_root": "somewhere"})
        net = get_dataset(dataset).build_network(config.num_classes, **config.network)
        parameters = sum(parameter.numel() for parameter in net.parameters())
        assert f"{parameters:,} float32 parameters" in page or f"({parameters:,})" in page, dataset
        assert f"{4 * parameters / 1e6:.1f} MB" in page, dataset
        rows = config.num_classes * config.prototypes.per_class
        assert f"{rows} x {net.feature_dim}" in page, dataset
        # region-wise: 4 updates per iteration, each of float32 sums (rows x D) and counts (rows)
        assert f"{4 * 4 * rows * (net.feature_dim + 1) / 1e3:.1f} kB" in page, dataset


def test_each_process_draws_its_share_and_the_shares_make_the_whole_batch():
    whole = TwoStreamBatchSampler(range(12), range(12, 30), 16, 8, seed=3)
    for processes in (2, 4):
        shares = [
            TwoStreamBatchSampler(range(12), range(12, 30), 16, 8, seed=3, share=(rank, processes))
            for rank in range(processes)
        ]
        width = 4 // processes
        for epoch in range(3):
            for batch, *parts in zip(whole.epoch_batches(epoch), *(share.epoch_batches(epoch) for share in shares)):
                halves = [batch[start : start + 4] for start in range(0, 16, 4)]  # a, b, unlabeled a, unlabeled b
                # process r holds the r-th part of every half, in the halves' order
                expected = [
                    [index for half in halves for index in half[rank * width : (rank + 1) * width]]
                    for rank in range(processes)
                ]
                assert parts == expected
                assert sorted(index for part in parts for index in part) == sorted(batch)


def test_batches_that_do_not_split_evenly_are_refused():
    with pytest.raises(ValueError, match="multiple of 4"):
        TwoStreamBatchSampler(range(8), range(8, 20), 4, 2, seed=3, share=(0, 2))
    config = load_config("acdc", "paper", {"data_root": "somewhere"})
    check_batch_shares(config, 6)  # 12 labeled images: halves of 6
    with pytest.raises(ConfigError, match="data.labeled_batch_size = 12 cannot be shared by 4 processes"):
        check_batch_shares(config, 4)


def test_torchrun_environment_and_devices():
    assert launched_world({}) == World()
    assert launched_world({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == World(1, 2, 1)
    with pytest.raises(ConfigError, match="outside WORLD_SIZE"):
        launched_world({"RANK": "2", "WORLD_SIZE": "2"})
    assert process_device("cpu", World(1, 2, 1)) == "cpu"
    with pytest.raises(ConfigError, match="GPU of its local rank"):
        process_device("cuda:1", World(1, 2, 1))


def test_one_process_in_a_group_of_its_own_trains_as_without_one(acdc_root, single, tmp_path):
    # distributed.force_group: DistributedDataParallel and every reduction run, each over
    # one process, so they change nothing; batch norm stays PyTorch's own here, whose
    # cross-process replacement on the CPU rounds differently
    grouped = train(
        acdc_root,
        tmp_path / "grouped",
        1,
        "--set",
        "distributed.force_group=true",
        "--set",
        "distributed.sync_batchnorm=false",
    )
    a, b = load_checkpoint(single / "last.pt"), load_checkpoint(grouped / "last.pt")
    for part in ("progress", "student", "teacher", "bank", "optimizer", "monitor", "prototype_usage"):
        assert_identical(a[part], b[part], part)
    assert losses(single) == losses(grouped)
    log = (grouped / "train.log").read_text()
    assert "training in DistributedDataParallel, 1 process(es) in a gloo group" in log
    assert "DistributedDataParallel" not in (single / "train.log").read_text()


def _two_forwards_on_rank(rank: int, init_file: str, results) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 2, 1))
    network = distributed.data_parallel(student, sync_batchnorm=False, device=torch.device("cpu"))
    halves = torch.randn(2, 2, 1, 8, 8, generator=torch.Generator().manual_seed(rank))  # each process its own
    # two forwards, one backward: selftrain.forward_passes = 2 (before torch 2.13, DDP's
    # own broadcast of the buffers before the second forward failed the backward)
    sum(network(half).sum() for half in halves).backward()
    before = {name: buffer.clone() for name, buffer in student.named_buffers()}
    distributed.broadcast_buffers_(student)
    results[rank] = before, {name: buffer.clone() for name, buffer in student.named_buffers()}
    dist.destroy_process_group()


def test_two_forwards_before_a_backward_train_and_the_batch_norm_statistics_are_process_0s(tmp_path):
    results = torch.multiprocessing.Manager().dict()
    torch.multiprocessing.spawn(_two_forwards_on_rank, args=(str(tmp_path / "store"), results), nprocs=2)
    (before_0, after_0), (before_1, after_1) = results[0], results[1]
    assert int(after_0["1.num_batches_tracked"]) == 2
    assert not torch.equal(before_0["1.running_mean"], before_1["1.running_mean"])
    for name, value in after_0.items():
        assert torch.equal(value, before_0[name]) and torch.equal(after_1[name], value), name


def assert_identical(first, second, where):
    if isinstance(first, torch.Tensor):
        torch.testing.assert_close(first, second, rtol=0, atol=0, equal_nan=True, msg=where)
    elif isinstance(first, dict):
        assert first.keys() == second.keys(), where
        for key in first:
            assert_identical(first[key], second[key], f"{where}.{key}")
    else:
        assert first == second, where


@pytest.mark.parametrize(
    "sync_batchnorm, mode, refused", [(True, "error", True), (False, "error", False), (True, "warn", False)]
)
def test_the_synchronisation_check_refuses_sync_batchnorm_on_several_gpus(monkeypatch, sync_batchnorm, mode, refused):
    """torch.nn.SyncBatchNorm synchronises on several GPUs: MPER_SYNC_DEBUG=error would fail
    at the second iteration, so it is refused before training."""
    monkeypatch.setattr(runner, "resolve_device", lambda device: torch.device("cuda", 0))
    monkeypatch.setattr(runner, "current_world", lambda: World(0, 2, 0))
    monkeypatch.setattr(runner, "check_fits", lambda *arguments: None)
    monkeypatch.setenv("MPER_SYNC_DEBUG", mode)
    config = load_config("acdc", "paper", assignments=[f"distributed.sync_batchnorm={str(sync_batchnorm).lower()}"])
    if refused:
        with pytest.raises(ConfigError, match=r"^MPER_SYNC_DEBUG=error cannot pass with distributed.sync_batchnorm"):
            runner.check_machine(config)
    else:
        runner.check_machine(config)


def test_an_error_of_a_process_alone_is_never_taken_for_a_lost_peer():
    """Its words ("timed out") match a lost peer's, but one process has no peer to lose: the
    run's log keeps the real error and its traceback."""
    for error in (
        RuntimeError("CUDA error: the launch timed out and was terminated"),
        RuntimeError("connection reset"),
    ):
        assert distributed.lost_peer_failure(error) is None
