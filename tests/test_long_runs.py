"""Long runs (``-m slow``): a 3D run interrupted twice, with data workers, resumes bit for bit.

The long commands of the README and the docs (the demos, the learning check, the CPU benchmarks) run under
``-m slow`` in ``tests/test_readme.py``.
"""

from __future__ import annotations

import json

import pytest

from mper import pipeline
from mper.datasets import synthesize
from mper.train.checkpoint import load_checkpoint
from mper.train.config import load_config
from mper.train.runtime import TrainingInterrupted
from test_pipeline import RESUMABLE_STATE, assert_same, interrupt_after

LA_LONGER = [
    "network.base_filters=4",
    "data.patch_size=[32, 32, 32]",
    "data.batch_size=4",
    "data.labeled_batch_size=2",
    "data.num_workers=2",
    "data.holdout_cases=1",
    "pretrain.iterations=24",
    "selftrain.iterations=40",
    "eval.val_interval=8",
    "eval.checkpoint_interval=7",
    "eval.stride=[16, 16, 16]",
    "eval.num_figures=2",
    "prototypes.kmeans_max_voxels=2000",
]


def la_config(data_root, out):
    overrides = {"data_root": str(data_root), "out": str(out), "labeled": 2, "device": "cpu"}
    return load_config("la", "paper", overrides, LA_LONGER)


@pytest.mark.slow
def test_a_3d_run_interrupted_in_both_stages_resumes_to_the_uninterrupted_state(tmp_path, monkeypatch):
    data_root = synthesize("la", tmp_path / "la", cases=8, seed=0, size=(40, 40, 36), progress=False)
    finished = pipeline.train(la_config(data_root, tmp_path / "uninterrupted"))
    run_dir = tmp_path / "interrupted"
    # Ctrl-C after 17 pre-training steps; resumed, again after 7 more and 29 self-training steps
    for optimizer_steps, stage in ((17, "pretrain"), (7 + 29, "selftrain")):
        interrupt_after(monkeypatch, optimizer_steps)
        with pytest.raises(TrainingInterrupted):
            if stage == "pretrain":
                pipeline.train(la_config(data_root, run_dir))
            else:
                pipeline.resume(run_dir)
        assert load_checkpoint(run_dir / "last.pt")["progress"]["stage"] == stage
        monkeypatch.undo()
    pipeline.resume(run_dir)
    expected, resumed = load_checkpoint(finished / "last.pt"), load_checkpoint(run_dir / "last.pt")
    for key in RESUMABLE_STATE:
        assert_same(expected[key], resumed[key], key)
    expected_metrics, resumed_metrics = (
        json.loads((folder / "metrics.json").read_text()) for folder in (finished, run_dir)
    )
    # the same results; the resumed run records each of its three sessions
    assert len(resumed_metrics.pop("sessions")) == 3 and len(expected_metrics.pop("sessions")) == 1
    assert expected_metrics == resumed_metrics
