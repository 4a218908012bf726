"""Tiny end-to-end runs through mper.pipeline: train, interrupt, resume, evaluate, predict.

Synthetic data, a narrow network and a handful of iterations keep these on CPU in
seconds; what they check is the plumbing and that resuming is exact.
"""
from __future__ import annotations

import json
import re
import os
import signal

import nibabel as nib
import pytest
import torch

from mper import pipeline
from mper.data import acdc_volume_path, synthesize
from mper.train.checkpoint import load_checkpoint
from mper.train.config import load_config
from mper.train.loaders import training_cases, validation_cases
from mper.train.loop import Trainer
from mper.train.runtime import TrainingInterrupted

TINY_ACDC = [
    "network.channels=[4, 8, 16, 32, 64]",
    "data.patch_size=[32, 32]",
    "data.batch_size=4",
    "data.labeled_batch_size=2",
    "data.num_workers=0",
    "pretrain.iterations=4",
    "selftrain.iterations=6",
    "eval.val_interval=3",
    "eval.checkpoint_interval=4",
    "eval.num_figures=1",
    "prototypes.kmeans_max_voxels=500",
]
RESUMABLE_STATE = ("progress", "student", "teacher", "bank", "optimizer", "mix_generator", "rng")


@pytest.fixture(scope="module")
def acdc_root(tmp_path_factory):
    return synthesize("acdc", tmp_path_factory.mktemp("acdc"), cases=5, seed=0, size=(32, 32), progress=False)


def tiny_config(data_root, out, **overrides):
    values = {"data_root": str(data_root), "out": str(out), "labeled": 1, "device": "cpu"}
    return load_config("acdc", "paper", {**values, **overrides}, TINY_ACDC)


@pytest.fixture(scope="module")
def finished_run(acdc_root, tmp_path_factory):
    return pipeline.train(tiny_config(acdc_root, tmp_path_factory.mktemp("runs") / "uninterrupted"))


def assert_same(first, second, where="state"):
    """Recursive exact equality of checkpoint contents."""
    if isinstance(first, torch.Tensor):
        assert torch.equal(first, second), where
    elif isinstance(first, dict):
        assert first.keys() == second.keys(), where
        for key in first:
            assert_same(first[key], second[key], f"{where}.{key}")
    elif isinstance(first, (list, tuple)):
        assert len(first) == len(second), where
        for index, (a, b) in enumerate(zip(first, second)):
            assert_same(a, b, f"{where}[{index}]")
    else:
        assert first == second, where


def test_a_run_folder_holds_config_log_checkpoints_metrics_and_figures(finished_run):
    names = {path.name for path in finished_run.iterdir()}
    assert {"config.toml", "config.json", "train.log", "tensorboard", "last.pt", "pretrain_best.pt",
            "best.pt", "metrics.json", "metrics.md", "figures"} <= names
    assert any((finished_run / "tensorboard").iterdir())
    assert list((finished_run / "figures").glob("*.png"))
    assert "| MPER | 1 |" in (finished_run / "metrics.md").read_text()
    log = (finished_run / "train.log").read_text()
    assert re.search(r"selftrain iteration 6: mean loss [0-9.]+, validation Dice [0-9.]+", log)
    last = load_checkpoint(finished_run / "last.pt")
    assert last["progress"]["stage"] == "selftrain" and last["progress"]["iteration"] == 6
    assert last["bank"]["prototypes"].shape == (4 * 3, 4)
    best = load_checkpoint(finished_run / "best.pt")
    assert best["progress"]["iteration"] == last["progress"]["best_iteration"]


def interrupt_after(monkeypatch, optimizer_steps):
    """Press Ctrl-C (a real SIGINT) right after the given number of SGD steps."""
    original = Trainer.optimize
    calls = {"count": 0}

    def optimize(self, loss):
        original(self, loss)
        calls["count"] += 1
        if calls["count"] == optimizer_steps:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(Trainer, "optimize", optimize)


@pytest.mark.parametrize("optimizer_steps, stage", [(3, "pretrain"), (4 + 2, "selftrain")])
def test_an_interrupted_run_resumes_to_the_uninterrupted_state(
    acdc_root, finished_run, tmp_path, monkeypatch, optimizer_steps, stage
):
    run_dir = tmp_path / "interrupted"
    interrupt_after(monkeypatch, optimizer_steps)
    with pytest.raises(TrainingInterrupted):
        pipeline.train(tiny_config(acdc_root, run_dir))
    saved = load_checkpoint(run_dir / "last.pt")
    assert saved["progress"]["stage"] == stage
    monkeypatch.undo()
    pipeline.resume(run_dir)
    expected, resumed = load_checkpoint(finished_run / "last.pt"), load_checkpoint(run_dir / "last.pt")
    for key in RESUMABLE_STATE:
        assert_same(expected[key], resumed[key], key)
    assert_same(load_checkpoint(finished_run / "best.pt")["student"], load_checkpoint(run_dir / "best.pt")["student"])
    assert json.loads((finished_run / "metrics.json").read_text()) == json.loads((run_dir / "metrics.json").read_text())


def test_a_run_folder_is_not_overwritten_without_resume(acdc_root, finished_run):
    with pytest.raises(FileExistsError, match="--resume"):
        pipeline.train(tiny_config(acdc_root, finished_run))


def test_resuming_a_finished_run_only_evaluates_again(finished_run):
    before = load_checkpoint(finished_run / "last.pt")
    pipeline.resume(finished_run)
    assert_same(before["student"], load_checkpoint(finished_run / "last.pt")["student"])


def test_the_baseline_trains_the_plain_network_on_labeled_data(acdc_root, tmp_path):
    run_dir = pipeline.train(tiny_config(acdc_root, tmp_path / "baseline", baseline="labeled-only"))
    best = load_checkpoint(run_dir / "best.pt")
    assert best["progress"]["stage"] == "baseline" and best["teacher"] is None and best["bank"] is None
    assert load_checkpoint(run_dir / "last.pt")["progress"]["iteration"] == 4 + 6
    assert "| U-Net | 1 | 0 |" in (run_dir / "metrics.md").read_text()
    assert not (run_dir / "pretrain_best.pt").exists()


def test_evaluate_scores_either_network_of_a_checkpoint(finished_run, acdc_root, tmp_path):
    result = pipeline.evaluate(finished_run / "best.pt", split="val", out_dir=tmp_path, device="cpu",
                               weights="teacher", num_figures=0)
    assert set(result["per_case"]) == set((acdc_root / "val.list").read_text().split())
    assert (tmp_path / "metrics.json").exists() and (tmp_path / "metrics.md").exists()
    assert 0.0 <= result["summary"]["mean"]["dice"]["mean"] <= 1.0
    with pytest.raises(ValueError, match="weights must be one of"):
        pipeline.evaluate(finished_run / "best.pt", weights="ema")


def test_predict_writes_a_label_map_per_input(finished_run, acdc_root, tmp_path):
    config = json.loads((finished_run / "config.json").read_text())
    case = (acdc_root / "test.list").read_text().split()[0]
    source = acdc_volume_path(config["data_root"], case)
    written = pipeline.predict(finished_run / "best.pt", source, tmp_path, device="cpu")
    assert len(written) == 1
    labels = nib.load(written[0]).get_fdata()
    assert labels.shape[0] >= 1 and set(labels.ravel().tolist()) <= {0.0, 1.0, 2.0, 3.0}


@pytest.fixture(scope="module")
def la_root(tmp_path_factory):
    return synthesize("la", tmp_path_factory.mktemp("la"), cases=6, seed=0, size=(32, 32, 32), progress=False)


def la_config(la_root, out, *assignments):
    overrides = {"data_root": str(la_root), "out": str(out), "labeled": 2, "device": "cpu"}
    return load_config("la", "paper", overrides, [
        "network.base_filters=4", "data.patch_size=[32, 32, 32]", "data.batch_size=4",
        "data.labeled_batch_size=2", "data.num_workers=0", "data.holdout_cases=1",
        "pretrain.iterations=2", "selftrain.iterations=2", "eval.val_interval=2", "eval.stride=[16, 16, 16]",
        "eval.num_figures=1", "prototypes.kmeans_max_voxels=500", *assignments,
    ])


def test_la_selects_on_the_test_cases_as_published_or_on_held_out_training_cases(la_root, tmp_path):
    train = (la_root / "train.list").read_text().split()
    published = la_config(la_root, tmp_path)
    assert training_cases(published) == (train[:2], train[2:])
    assert validation_cases(published) == (la_root / "test.list").read_text().split()
    held_out = la_config(la_root, tmp_path, "data.val_split=holdout")
    labeled, unlabeled = training_cases(held_out)
    assert labeled == train[:2] and unlabeled == train[2:-1]
    assert validation_cases(held_out) == train[-1:]
    with pytest.raises(ValueError, match="LA has no val.list"):
        validation_cases(la_config(la_root, tmp_path, "data.val_split=val"))


def test_a_tiny_la_run_trains_and_evaluates(la_root, tmp_path):
    run_dir = pipeline.train(la_config(la_root, tmp_path / "la"))
    summary = json.loads((run_dir / "metrics.json").read_text())["summary"]
    assert summary["num_cases"] == len((la_root / "test.list").read_text().split())
    assert load_checkpoint(run_dir / "best.pt")["bank"]["prototypes"].shape == (2 * 3, 4)
