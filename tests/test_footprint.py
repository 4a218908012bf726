"""What a training iteration asks of the machine, checked before training starts: a patch
too small for batch norm, an iteration too large for the free memory, more loader
workers than cores, too few labeled items for a labeled batch; and the memory estimate
against the memory a real iteration takes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mper import pipeline
from mper.datasets import synthesize
from mper.errors import ConfigError
from mper.host import available_cores
from mper.train import footprint
from mper.train.config import load_config
from tiny_runs import TWO_ITERATIONS

NARROW = {"acdc": "network.channels=[4, 8, 16, 32, 64]", "la": "network.base_filters=4"}


@pytest.fixture(scope="module")
def acdc_root(tmp_path_factory):
    return synthesize("acdc", tmp_path_factory.mktemp("acdc"), cases=5, seed=0, size=(32, 32), progress=False)


@pytest.fixture(scope="module")
def la_root(tmp_path_factory):
    return synthesize("la", tmp_path_factory.mktemp("la"), cases=6, seed=0, size=(32, 32, 32), progress=False)


def config(dataset, root, out, *assignments):
    return load_config(
        dataset,
        "paper",
        {"data_root": str(root), "out": str(out), "labeled": 1, "device": "cpu"},
        [NARROW[dataset], *TWO_ITERATIONS, *assignments],
    )


@pytest.mark.parametrize("dataset, patch", [("acdc", "[16, 16]"), ("la", "[16, 16, 16]")])
def test_a_patch_too_small_for_batch_norm_is_refused_before_the_run_folder_is_made(
    dataset, patch, acdc_root, la_root, tmp_path
):
    # a labeled batch of 2 pre-trains on 1 mixed image: 1 value per channel at the 1-voxel bottleneck
    root = {"acdc": acdc_root, "la": la_root}[dataset]
    run_dir = tmp_path / "run"
    too_small = config(
        dataset,
        root,
        run_dir,
        f"data.patch_size={patch}",
        "data.labeled_batch_size=2",
        "data.batch_size=4",
        "eval.stride=[4, 4, 4]",
    )
    with pytest.raises(
        ConfigError,
        match=r"data.patch_size \[16, 16.*\] is too small for the network at "
        r"data.labeled_batch_size 2: a forward of 1 image\(s\) reaches batch norm",
    ):
        pipeline.train(too_small)
    assert not run_dir.exists()
    # two images per forward give two values per channel
    footprint.iteration_memory(
        config(
            dataset,
            root,
            run_dir,
            f"data.patch_size={patch}",
            "data.labeled_batch_size=4",
            "data.batch_size=8",
            "eval.stride=[4, 4, 4]",
        )
    )


def test_an_iteration_larger_than_the_free_memory_is_refused_naming_the_estimate(acdc_root, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    huge = config("acdc", acdc_root, run_dir, "data.patch_size=[16384, 16384]")
    estimate = footprint.iteration_memory(huge)
    assert estimate.total > 1000 * footprint.GIB  # the paper's batch of 24 slices of 16384 x 16384
    with pytest.raises(
        ConfigError,
        match=rf"one training iteration needs about {estimate.total / 2**30:.2f} GiB "
        r"in selftrain \(activations .*\), but only .* GiB is free on cpu",
    ):
        pipeline.train(huge)
    assert not run_dir.exists()
    # what is refused is what does not fit into the memory there is
    small = config(
        "acdc", acdc_root, run_dir, "data.patch_size=[32, 32]", "data.labeled_batch_size=2", "data.batch_size=4"
    )
    need = footprint.iteration_memory(small).total
    monkeypatch.setattr(footprint, "available_memory", lambda device: need - 1)
    with pytest.raises(ConfigError, match="one training iteration needs about"):
        footprint.check_fits(small, footprint.torch.device("cpu"))
    monkeypatch.setattr(footprint, "available_memory", lambda device: 2 * need - 1)
    footprint.check_fits(small, footprint.torch.device("cpu"))
    # processes on one CPU share its memory
    half = footprint.iteration_memory(small, processes=2).total
    monkeypatch.setattr(footprint, "available_memory", lambda device: 2 * half - 1)
    footprint.check_fits(small, footprint.torch.device("cpu"), processes=2, processes_here=1)
    with pytest.raises(ConfigError, match="for each of 2 processes"):
        footprint.check_fits(small, footprint.torch.device("cpu"), processes=2, processes_here=2)


def test_more_workers_than_cores_start_one_per_core_and_say_so(acdc_root, tmp_path, caplog):
    cores = available_cores()
    run_dir = pipeline.train(
        config(
            "acdc",
            acdc_root,
            tmp_path / "run",
            "data.patch_size=[32, 32]",
            "data.labeled_batch_size=2",
            "data.batch_size=4",
            f"data.num_workers={cores + 3}",
        )
    )
    log = (run_dir / "train.log").read_text()
    assert f"data.num_workers = {cores + 3} is more than the {cores} CPU core(s)" in log
    assert f"the data loaders start {cores} worker(s)" in log
    assert "one training iteration needs about" in log


#: One training iteration after a first one, in a fresh process: its peak resident memory
#: above the memory before it, with large blocks returned to the system when freed (so
#: that the first iteration's freed memory does not hide the second's).
MEASURE = """
import json, sys, torch
from mper.train import pretrain, selftrain
from mper.train.config import load_config
from mper.train.footprint import stage_memory
from mper.train.loop import Trainer
from mper.train.teacher import create_teacher

def status(key):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key))

dataset, stage, *assignments = sys.argv[1:]
config = load_config(dataset, "paper", {"data_root": "", "device": "cpu", "labeled": 1}, assignments)
trainer = Trainer(config, "unused", validate=lambda net: 0.0)
generator = torch.Generator().manual_seed(0)
count = config.data.labeled_batch_size * (2 if stage == "selftrain" else 1)

def batch():
    return {"image": torch.randn(count, 1, *config.data.patch_size, generator=generator),
            "label": torch.randint(0, config.num_classes, (count, *config.data.patch_size), generator=generator)}

if stage == "selftrain":
    trainer.teacher = create_teacher(trainer.student, config.selftrain.teacher_mode)
    trainer.head = trainer.new_head()
    trainer.head.prototypes.copy_(torch.randn(trainer.head.prototypes.shape, generator=generator))
    step = lambda: selftrain.selftrain_step(trainer, batch(), 0)
else:
    step = lambda: pretrain.supervised_step(trainer, batch(), mix=True)
trainer.student.train()
step()
before = status("VmRSS:")
with open("/proc/self/clear_refs", "w") as reset:  # the peak (VmHWM) starts again from here
    reset.write("5")
step()
estimate = stage_memory(config, stage)
# weights, gradients and momentum exist before the measured iteration: compare the rest
print(json.dumps({"measured": status("VmHWM:") - before,
                  "estimate": estimate.activations + estimate.transient + estimate.batch}))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's per-process peak memory")
@pytest.mark.parametrize(
    "dataset, stage, assignments",
    [
        ("acdc", "selftrain", ["data.patch_size=[128, 128]", "data.labeled_batch_size=4", "data.batch_size=8"]),
        (
            "la",
            "pretrain",
            [
                "network.base_filters=8",
                "data.patch_size=[64, 64, 48]",
                "data.labeled_batch_size=2",
                "data.batch_size=4",
            ],
        ),
    ],
)
def test_the_memory_estimate_follows_the_memory_an_iteration_takes(dataset, stage, assignments, tmp_path):
    environment = dict(os.environ, OMP_NUM_THREADS="1", MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, dataset, stage, *assignments],
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sizes = json.loads(result.stdout.strip().splitlines()[-1])
    # the estimate may err either way by half the measured memory (see mper.train.footprint)
    assert sizes["measured"] / 1.5 <= sizes["estimate"] <= 1.5 * sizes["measured"], sizes


def test_too_few_labeled_items_for_a_labeled_batch_are_refused_before_the_run_folder_is_made(la_root, tmp_path):
    run_dir = tmp_path / "run"
    one_case = config(
        "la",
        la_root,
        run_dir,
        "data.patch_size=[32, 32, 32]",
        "eval.stride=[8, 8, 8]",
        "data.labeled_batch_size=2",
        "data.batch_size=4",
    )
    with pytest.raises(
        ConfigError,
        match=r"1 labeled training item\(s\) \(labeled = 1\) cannot fill a labeled batch "
        "of data.labeled_batch_size = 2",
    ):
        pipeline.train(one_case)
    assert not run_dir.exists()
