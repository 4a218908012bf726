"""Does self-training help? MPER against the labeled-only baseline on the same labels.

A small synthetic ACDC set (fixed seed) is trained twice with the ``demo`` preset: once
with MPER (copy-paste pre-training, then Mean Teacher self-training with the prototype
head) and once as the plain supervised U-Net (``baseline = "labeled-only"``, the same
labeled patients and as many iterations). Both are scored on the test split. Several
minutes on two CPU cores, so ``slow``: ``scripts/test.sh -m slow -k learning``.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mper import pipeline
from mper.datasets import synthesize
from mper.train.config import load_config

DATA_SEED = 0
DATA_CASES = 30
DATA_SIZE = (64, 64)


def mean_dice(run_dir: Path) -> float:
    """Mean foreground Dice of a finished run, from its metrics.json."""
    summary = json.loads((run_dir / "metrics.json").read_text())["summary"]
    return float(summary["mean"]["dice"]["mean"])


def train_and_score(data_root: Path, out: Path, baseline: str) -> float:
    overrides = {"data_root": str(data_root), "out": str(out), "device": "cpu", "baseline": baseline}
    return mean_dice(pipeline.train(load_config("acdc", "demo", overrides)))


@pytest.mark.slow
def test_self_training_beats_the_labeled_only_network(tmp_path):
    data_root = synthesize("acdc", tmp_path / "acdc", cases=DATA_CASES, seed=DATA_SEED, size=DATA_SIZE,
                           progress=False)
    with_mper = train_and_score(data_root, tmp_path / "mper", baseline="none")
    labeled_only = train_and_score(data_root, tmp_path / "baseline", baseline="labeled-only")
    assert labeled_only > 0.5, "the supervised network alone should learn the synthetic hearts"
    assert with_mper > labeled_only
