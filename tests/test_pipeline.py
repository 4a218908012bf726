"""Tiny end-to-end runs through mper.pipeline: train, interrupt, resume, evaluate, predict.

Synthetic data, a narrow network and a handful of iterations keep these on CPU in
seconds; what they check is the plumbing and that resuming is exact.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import re
import shutil
import signal
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch

from mper import pipeline
from mper.cli import eval_main, train_main
from mper.data import acdc_slice_path, acdc_volume_path, la_case_path
from mper.datasets import get_dataset, synthesize
from mper.errors import ConfigError, DataFormatError, MissingFileError, RunFolderError, TrainingDiverged
from mper.eval.inference import predict_volume
from mper.eval.metrics import dice_score
from mper.eval.protocol import postprocess_labels
from mper.train.checkpoint import load_checkpoint, non_finite_tensors, save_checkpoint
from mper.train.config import load_config
from mper.train.loaders import check_data, check_split, training_cases, validation_cases
from mper.train.lock import run_folder_lock
from mper.train.loop import Trainer
from mper.train.runtime import TrainingInterrupted
from tiny_runs import TINY_ACDC

#: The shared tiny ACDC run, 4 + 6 iterations with a resume checkpoint every 4: one inside
#: each stage, for the interrupt-and-resume tests.
RESUMABLE_ACDC = [*TINY_ACDC, "pretrain.iterations=4", "selftrain.iterations=6", "eval.checkpoint_interval=4"]
RESUMABLE_STATE = ("progress", "student", "teacher", "bank", "optimizer", "mix_generator", "rng")


@pytest.fixture(scope="module")
def acdc_root(tmp_path_factory):
    return synthesize("acdc", tmp_path_factory.mktemp("acdc"), cases=5, seed=0, size=(32, 32), progress=False)


def tiny_config(data_root, out, *assignments, **overrides):
    values = {"data_root": str(data_root), "out": str(out), "labeled": 1, "device": "cpu"}
    return load_config("acdc", "paper", {**values, **overrides}, [*RESUMABLE_ACDC, *assignments])


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
    assert {
        "config.toml",
        "config.json",
        "train.log",
        "tensorboard",
        "last.pt",
        "pretrain_best.pt",
        "best.pt",
        "metrics.json",
        "metrics.md",
        "figures",
    } <= names
    assert any((finished_run / "tensorboard").iterdir())
    assert list((finished_run / "figures").glob("*.png"))
    assert "| MPER | 1 |" in (finished_run / "metrics.md").read_text()
    log = (finished_run / "train.log").read_text()
    assert re.search(r"selftrain iteration 6: mean loss [0-9.]+, validation Dice [0-9.]+", log)
    last = load_checkpoint(finished_run / "last.pt")
    assert last["progress"]["stage"] == "selftrain" and last["progress"]["iteration"] == 6
    assert last["bank"]["prototypes"].shape == (4 * 3, 4)
    best = load_checkpoint(finished_run / "best.pt")
    # best_iteration -1: self-training never beat pre-training, best.pt holds the network it started from
    assert best["progress"]["iteration"] == max(last["progress"]["best_iteration"], 0)


def after_optimizer_steps(monkeypatch, optimizer_steps, action):
    """Call ``action(trainer)`` right after the given number of SGD steps."""
    original = Trainer.optimize
    calls = {"count": 0}

    def optimize(self, loss):
        original(self, loss)
        calls["count"] += 1
        if calls["count"] == optimizer_steps:
            action(self)

    monkeypatch.setattr(Trainer, "optimize", optimize)


def interrupt_after(monkeypatch, optimizer_steps):
    """Press Ctrl-C (a real SIGINT) right after the given number of SGD steps."""
    after_optimizer_steps(monkeypatch, optimizer_steps, lambda trainer: signal.raise_signal(signal.SIGINT))


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
    # train.log says where the run stopped, as the console does
    stopped_at = f"{stage} iteration {saved['progress']['iteration']}"
    said = f"stopped by SIGINT at {stopped_at}; the state is saved in {run_dir / 'last.pt'}"
    assert said in (run_dir / "train.log").read_text()
    stale = run_dir / ".last.pt.99999-0badc0de.tmp"
    stale.write_bytes(b"what a killed write left")
    monkeypatch.undo()
    pipeline.resume(run_dir)
    assert not stale.exists()
    expected, resumed = load_checkpoint(finished_run / "last.pt"), load_checkpoint(run_dir / "last.pt")
    for key in RESUMABLE_STATE:
        assert_same(expected[key], resumed[key], key)
    assert_same(load_checkpoint(finished_run / "best.pt")["student"], load_checkpoint(run_dir / "best.pt")["student"])
    expected_metrics, resumed_metrics = (
        json.loads((folder / "metrics.json").read_text()) for folder in (finished_run, run_dir)
    )
    # the same results; the resumed run records both of its sessions, the second where it resumed
    sessions = resumed_metrics.pop("sessions")
    assert expected_metrics.pop("sessions") == sessions[:1]
    assert expected_metrics == resumed_metrics
    assert [(session["stage"], session["iteration"]) for session in sessions] == [
        ("pretrain", 0),
        (stage, saved["progress"]["iteration"]),
    ]


def test_a_best_checkpoint_written_after_last_pt_by_a_killed_session_is_kept_and_named(
    acdc_root, tmp_path, monkeypatch
):
    """Killed after a validation that wrote pretrain_best.pt but before the next last.pt:
    the resumed run (validating less often) named the network last.pt knew as the best,
    while pretrain_best.pt, which self-training starts from, held the later one."""
    original = Trainer._validate
    killed_session = {"on": True}

    def validate(self, mean_loss):  # the killed session's validations each beat the ones before, the resumed one's not
        self.validate = lambda network: float(self.progress.iteration) if killed_session["on"] else 0.5
        original(self, mean_loss)

    monkeypatch.setattr(Trainer, "_validate", validate)

    def killed(trainer):
        raise RuntimeError("killed")

    after_optimizer_steps(monkeypatch, 6, killed)  # once: the resumed run's steps count on from 6
    run_dir = tmp_path / "run"
    settings = ["pretrain.iterations=6", "eval.val_interval=1", "eval.checkpoint_interval=2"]
    with pytest.raises(RuntimeError, match="killed"):
        pipeline.train(tiny_config(acdc_root, run_dir, *settings))
    assert load_checkpoint(run_dir / "last.pt")["progress"]["iteration"] == 4
    assert load_checkpoint(run_dir / "pretrain_best.pt")["progress"]["best_iteration"] == 5
    killed_session["on"] = False
    pipeline.resume(run_dir, assignments=["eval.val_interval=1000"])
    best = json.loads((run_dir / "training.json").read_text())["stages"]["pretrain"]["best"]
    assert (best["iteration"], best["val_dice"]) == (5, 5.0)
    assert (
        "pretrain_best.pt holds the network of pretrain iteration 5 (validation Dice 5.0000), validated after last.pt "
        "was written: kept as the best so far" in (run_dir / "train.log").read_text()
    )


def test_a_self_training_best_written_after_last_pt_is_named_as_the_network_best_pt_holds(
    acdc_root, tmp_path, monkeypatch
):
    """The same in self-training, where best.pt held the pre-trained network until self-training
    beat it: the resumed run said "selftrain never beat pretrain" of a best.pt that it had."""
    original = Trainer._validate
    killed_session = {"on": True}

    def validate(self, mean_loss):  # pre-training 0.1; the killed session's self-training 0.9, the resumed 0.05
        scores = {"pretrain": 0.1, "selftrain": 0.9 if killed_session["on"] else 0.05}
        self.validate = lambda network: scores[self.progress.stage]
        original(self, mean_loss)

    monkeypatch.setattr(Trainer, "_validate", validate)

    def killed(trainer):
        raise RuntimeError("killed")

    after_optimizer_steps(monkeypatch, 4, killed)  # self-training's second step: after its first validation
    run_dir = tmp_path / "run"
    settings = ["pretrain.iterations=2", "selftrain.iterations=4", "eval.val_interval=1", "eval.checkpoint_interval=2"]
    with pytest.raises(RuntimeError, match="killed"):
        pipeline.train(tiny_config(acdc_root, run_dir, *settings))
    assert load_checkpoint(run_dir / "last.pt")["progress"] == {
        "stage": "selftrain",
        "iteration": 0,
        "best_score": 0.1,
        "best_iteration": -1,
    }
    assert load_checkpoint(run_dir / "best.pt")["progress"]["best_iteration"] == 1
    killed_session["on"] = False
    pipeline.resume(run_dir)
    training = json.loads((run_dir / "training.json").read_text())
    assert training["selected_stage"] == "selftrain" and training["selftrain_beat_pretrain"] is True
    assert "training finished; best.pt holds the network of selftrain iteration 1 (validation Dice 0.9000)" in (
        (run_dir / "train.log").read_text()
    )


def test_ctrl_c_during_the_last_validation_stops_before_the_evaluation(acdc_root, finished_run, tmp_path, monkeypatch):
    """A Ctrl-C that comes after the last iteration looked for one (while its validation
    runs) still stops the run, instead of being forgotten while the run evaluates (and a
    sweep goes on to its next run); resuming evaluates what an uninterrupted run does."""
    original = Trainer._validate

    def validate(self, mean_loss):
        original(self, mean_loss)
        if self.progress.stage == "selftrain" and self.progress.iteration == self.config.selftrain.iterations:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(Trainer, "_validate", validate)
    run_dir = tmp_path / "interrupted"
    with pytest.raises(TrainingInterrupted) as interrupted:
        pipeline.train(tiny_config(acdc_root, run_dir))
    assert interrupted.value.checkpoint == run_dir / "last.pt"
    assert load_checkpoint(run_dir / "last.pt")["progress"]["iteration"] == 6
    assert not (run_dir / "metrics.json").exists()
    monkeypatch.undo()
    pipeline.resume(run_dir)
    expected, resumed = (json.loads((folder / "metrics.json").read_text()) for folder in (finished_run, run_dir))
    assert expected["summary"] == resumed["summary"]


def test_sigterm_to_the_whole_job_saves_a_checkpoint_with_data_workers(acdc_root, tmp_path, monkeypatch):
    """A scheduler pre-empting the job signals every process, the data workers too."""
    children = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children")
    if not children.exists():
        pytest.skip("needs /proc to find the data workers")

    def sigterm_everyone(trainer):
        for pid in children.read_text().split():
            os.kill(int(pid), signal.SIGTERM)
        signal.raise_signal(signal.SIGTERM)

    after_optimizer_steps(monkeypatch, 1, sigterm_everyone)
    run_dir = tmp_path / "run"
    config = load_config(
        "acdc",
        "paper",
        {"data_root": str(acdc_root), "out": str(run_dir), "labeled": 1, "device": "cpu"},
        [*RESUMABLE_ACDC, "data.num_workers=1"],
    )
    with pytest.raises(TrainingInterrupted) as interrupted:
        pipeline.train(config)
    assert interrupted.value.signal_name == "SIGTERM"
    assert load_checkpoint(run_dir / "last.pt")["progress"]["iteration"] == 1
    # the workers, which ignore SIGTERM, are stopped with the stage, though its traceback lives
    # on: otherwise multiprocessing's exit would terminate them with SIGTERM and wait forever
    assert interrupted.value.__traceback__ is not None and not multiprocessing.active_children()


def test_a_run_folder_is_not_overwritten_without_resume(acdc_root, finished_run):
    with pytest.raises(RunFolderError, match="--resume"):
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


def tensorboard_scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    """Every scalar of a run's TensorBoard events: ``{tag: {step: value}}``."""
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events = accumulator.EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: {event.step: event.value for event in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def test_metrics_json_and_tensorboard_carry_the_self_training_diagnostics_per_class(finished_run):
    training = json.loads((finished_run / "metrics.json").read_text())["training"]
    assert training == json.loads((finished_run / "training.json").read_text()) | {"stages": training["stages"]}
    pretrain, selftrain = (training["stages"][stage]["trajectory"] for stage in ("pretrain", "selftrain"))
    assert [entry["iteration"] for entry in pretrain] == [3, 4]
    assert [entry["iteration"] for entry in selftrain] == [3, 6]
    assert all(set(entry) == {"iteration", "mean_loss", "val_dice"} for entry in pretrain)
    per_class = [f"pseudo_label_dice/{name}" for name in ("RV", "myocardium", "LV")]
    scalars = tensorboard_scalars(finished_run)
    for entry in selftrain:
        assert set(entry) == {
            "iteration",
            "mean_loss",
            "val_dice",
            "teacher_val_dice",
            "pseudo_label_dice/mean",
            "confident_fraction",
            "bank_update_fraction",
            *per_class,
        }
        defined = [entry[key] for key in per_class if entry[key] is not None]
        assert all(0 <= dice <= 1 for dice in defined)
        assert entry["pseudo_label_dice/mean"] == pytest.approx(sum(defined) / len(defined))
        assert 0 < entry["bank_update_fraction"] <= 1 and 0 <= entry["confident_fraction"] <= 1
        step = entry["iteration"]
        for key, tag in [
            ("val_dice", "val_dice"),
            ("teacher_val_dice", "teacher_val_dice"),
            ("confident_fraction", "confident_fraction"),
            ("bank_update_fraction", "bank_update_fraction"),
            ("pseudo_label_dice/mean", "pseudo_label_dice/mean"),
            *((name, f"pseudo_label_dice/{index}") for index, name in enumerate(per_class, 1)),
        ]:
            value = entry[key]
            assert scalars[f"selftrain/{tag}"][step] == pytest.approx(
                math.nan if value is None else value, rel=1e-6, nan_ok=True
            ), key
    losses = scalars["selftrain/loss_prototype"]
    assert sorted(losses) == list(range(1, 7)) and all(loss > 0 for loss in losses.values())
    assert all(voxels > 0 for voxels in scalars["selftrain/bank_update_voxels"].values())


def scripted_validation(monkeypatch, scores):
    """Validation Dice taken in turn from ``scores`` instead of measured: it decides
    which stage wins regardless of what a few iterations learn."""
    turns = iter(scores)
    monkeypatch.setattr(pipeline, "validator", lambda config: lambda network: next(turns))


SHORT_STAGES = [
    "pretrain.iterations=2",
    "selftrain.iterations=2",
    "eval.val_interval=1",
    "eval.teacher_dice=false",
    "eval.num_figures=0",
]


def short_run(acdc_root, out, *assignments, **overrides):
    return pipeline.train(tiny_config(acdc_root, out, *SHORT_STAGES, *assignments, **overrides))


@pytest.mark.parametrize("keep_better_stage", [True, False])
def test_a_run_whose_self_training_never_beats_pre_training_keeps_the_better_network(
    acdc_root, tmp_path, monkeypatch, keep_better_stage
):
    # pre-training validates 0.5, 0.6; self-training only 0.55, 0.58
    scripted_validation(monkeypatch, [0.5, 0.6, 0.55, 0.58])
    run_dir = short_run(acdc_root, tmp_path / "run", f"selftrain.keep_better_stage={str(keep_better_stage).lower()}")
    training = json.loads((run_dir / "metrics.json").read_text())["training"]
    assert training["selftrain_beat_pretrain"] is False
    assert training["stages"]["pretrain"]["best"]["val_dice"] == 0.6
    assert training["stages"]["selftrain"]["best"] == training["stages"]["selftrain"]["trajectory"][1]
    log = (run_dir / "train.log").read_text()
    comparison = (
        "self-training never beat pre-training: best self-training validation Dice 0.5800 (iteration 2) "
        "against pre-training's 0.6000 (iteration 2); best.pt holds "
    )
    best = load_checkpoint(run_dir / "best.pt")
    pretrained = load_checkpoint(run_dir / "pretrain_best.pt")
    same = {key: torch.equal(value, best["student"][key]) for key, value in pretrained["student"].items()}
    if keep_better_stage:
        assert training["selected_stage"] == "pretrain"
        assert comparison + "the pre-trained network (selftrain.keep_better_stage)" in log
        assert (
            "training finished; selftrain never beat pretrain, so best.pt holds the network of pretrain "
            "iteration 2 (validation Dice 0.6000)"
        ) in log
        assert all(same.values())
        assert best["progress"]["iteration"] == 0
    else:
        assert training["selected_stage"] == "selftrain"
        assert comparison + "self-training's best network nonetheless (selftrain.keep_better_stage = false)" in log
        assert "training finished; best.pt holds the network of selftrain iteration 2 (validation Dice 0.5800)" in log
        assert not all(same.values())
        assert best["progress"]["iteration"] == 2


@pytest.mark.parametrize("keep_better_stage", [True, False])
def test_a_run_whose_validation_never_rose_says_so_and_which_network_it_kept(
    acdc_root, tmp_path, monkeypatch, keep_better_stage
):
    scripted_validation(monkeypatch, [0.0, 0.0, 0.0, 0.0])
    run_dir = short_run(acdc_root, tmp_path / "run", f"selftrain.keep_better_stage={str(keep_better_stage).lower()}")
    finished = [line for line in (run_dir / "train.log").read_text().splitlines() if "training finished" in line]
    kept = "pretrain iteration 1" if keep_better_stage else "selftrain iteration 1"  # the first of equal scores
    assert finished[0].endswith(
        "training finished; the validation Dice never rose above its first value (0.0000, pretrain iteration 1) "
        "in 4 validations: training did not improve the network on the validation cases; best.pt holds the "
        f"network of {kept} (validation Dice 0.0000)"
    )
    assert load_checkpoint(run_dir / "best.pt")["progress"]["iteration"] == (0 if keep_better_stage else 1)


def test_bcp_alone_trains_without_the_prototype_terms(acdc_root, tmp_path, monkeypatch):
    scripted_validation(monkeypatch, [0.5, 0.6, 0.7, 0.8])
    run_dir = short_run(acdc_root, tmp_path / "bcp", baseline="bcp")
    assert "| BCP | 1 |" in (run_dir / "metrics.md").read_text()
    last = load_checkpoint(run_dir / "last.pt")
    assert last["progress"] == {"stage": "selftrain", "iteration": 2, "best_score": 0.8, "best_iteration": 2}
    assert not last["bank"]["prototypes"].any()  # never initialised, never updated
    scalars = tensorboard_scalars(run_dir)
    for name in ("loss_prototype", "loss_contrastive", "lambda", "bank_update_voxels"):
        assert scalars[f"selftrain/{name}"] == {1: 0.0, 2: 0.0}, name
    assert scalars["selftrain/loss"] == pytest.approx(scalars["selftrain/loss_linear"])
    selftrain = json.loads((run_dir / "metrics.json").read_text())["training"]["stages"]["selftrain"]
    for entry in selftrain["trajectory"]:
        assert "bank_update_fraction" not in entry
        assert 0 <= entry["confident_fraction"] <= 1 and "pseudo_label_dice/LV" in entry


def test_evaluate_scores_either_network_of_a_checkpoint(finished_run, acdc_root, tmp_path):
    result = pipeline.evaluate(
        finished_run / "best.pt", split="val", out_dir=tmp_path, device="cpu", weights="teacher", num_figures=0
    )
    assert set(result["per_case"]) == set((acdc_root / "val.list").read_text().split())
    assert (tmp_path / "metrics.json").exists() and (tmp_path / "metrics.md").exists()
    # the teacher's scores are those of its own label maps, class by class
    teacher, config = pipeline.load_network(finished_run / "best.pt", device="cpu", weights="teacher")
    compared = 0
    for case, scores in result["per_case"].items():
        image, label = get_dataset("acdc").load_volume(acdc_root, case)
        pred = predict_volume(
            teacher, image, "acdc", config.num_classes, device="cpu", **pipeline.inference_options(config)
        )
        pred = postprocess_labels(pred, config.eval.postprocess, config.num_classes)
        for class_index in range(1, config.num_classes):
            if (pred == class_index).any():
                expected = dice_score(pred == class_index, label == class_index)
                assert scores[class_index]["dice"] == pytest.approx(expected), (case, class_index)
                compared += 1
    assert compared > 0
    with pytest.raises(ValueError, match="weights must be one of"):
        pipeline.evaluate(finished_run / "best.pt", weights="ema")


def test_evaluate_writes_only_into_a_new_folder_or_an_earlier_evaluation(finished_run, acdc_root, tmp_path):
    missing = tmp_path / "missing.pt"  # refused before the checkpoint is read
    run_report = (finished_run / "metrics.json").read_bytes()
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    refused = {
        finished_run: rf"--out {re.escape(str(finished_run))} holds a training run \(it has best\.pt, config\.toml, "
        rf".*the run's own metrics\.json and figures; .* --out {re.escape(str(finished_run / 'eval-val'))}$",
        acdc_root: rf"--out {re.escape(str(acdc_root))} is a dataset's folder \(it holds data, test\.list, "
        r".*\): the evaluation would write among its data; choose a new or empty folder",
        notes: r"holds files mper-eval does not write \(todo\.txt\)",
        notes / "todo.txt": r"is a file; choose a folder",
    }
    for out, message in refused.items():
        with pytest.raises(RunFolderError, match=message):
            pipeline.evaluate(missing, split="val", out_dir=out, device="cpu")
    assert (finished_run / "metrics.json").read_bytes() == run_report
    assert not (acdc_root / "metrics.json").exists() and not (acdc_root / "figures").exists()
    # an earlier evaluation's folder is written again: its report replaced, its t-SNE map kept
    out = tmp_path / "eval"
    pipeline.evaluate(finished_run / "best.pt", split="val", out_dir=out, device="cpu", num_figures=1)
    (out / "tsne.png").write_bytes(b"an earlier map")
    (out / "metrics.json").write_text("{}")
    (out / ".DS_Store").write_bytes(b"a file browser's")  # hidden files are no one's output
    result = pipeline.evaluate(finished_run / "best.pt", split="val", out_dir=out, device="cpu", num_figures=1)
    assert set(json.loads((out / "metrics.json").read_text())["per_case"]) == set(result["per_case"])
    assert (out / "tsne.png").read_bytes() == b"an earlier map"


def test_mper_eval_refuses_a_run_folder_as_out_in_one_line(finished_run, capsys):
    run_report = (finished_run / "metrics.json").read_bytes()
    arguments = ["--checkpoint", str(finished_run / "best.pt"), "--split", "val", "--device", "cpu"]
    with pytest.raises(SystemExit) as exit_info:
        eval_main([*arguments, "--out", str(finished_run)])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(error.strip().splitlines()) == 1, error
    assert error.startswith(f"mper-eval: error: --out {finished_run} holds a training run (it has best.pt")
    assert (finished_run / "metrics.json").read_bytes() == run_report


def test_predict_writes_a_label_map_per_input(finished_run, acdc_root, tmp_path):
    config = json.loads((finished_run / "config.json").read_text())
    case = (acdc_root / "test.list").read_text().split()[0]
    source = acdc_volume_path(config["data_root"], case)
    written = pipeline.predict(finished_run / "best.pt", source, tmp_path, device="cpu")
    assert len(written) == 1
    labels = np.asarray(nib.load(written[0]).dataobj)
    # the label map lies as the input volume does, voxel for voxel: what evaluation predicts
    net, config = pipeline.load_network(finished_run / "best.pt", device="cpu")
    image, _ = get_dataset("acdc").load_volume(acdc_root, case)
    expected = predict_volume(
        net, image, "acdc", config.num_classes, device="cpu", **pipeline.inference_options(config)
    )
    assert labels.shape == image.shape
    np.testing.assert_array_equal(labels, expected)


def test_evaluate_draws_as_many_figures_as_the_run_by_default(finished_run, tmp_path):
    state = load_checkpoint(finished_run / "best.pt")
    assert state["config"]["eval"]["num_figures"] == 1
    state["config"]["eval"]["num_figures"] = 0
    without_figures = save_checkpoint(tmp_path / "without-figures.pt", state)
    for checkpoint, drawn in ((finished_run / "best.pt", 1), (without_figures, 0)):
        out = tmp_path / checkpoint.stem
        result = pipeline.evaluate(checkpoint, split="val", out_dir=out, device="cpu")
        assert len(result["figures"]) == drawn == len(list(out.glob("figures/*.png"))), checkpoint
    result = pipeline.evaluate(without_figures, split="val", out_dir=tmp_path / "asked", device="cpu", num_figures=1)
    assert len(result["figures"]) == 1


def test_predict_post_processes_as_the_checkpoint_is_evaluated(finished_run, acdc_root, tmp_path, monkeypatch):
    state = load_checkpoint(finished_run / "best.pt")
    assert state["config"]["eval"]["postprocess"] == "none"
    state["config"]["eval"]["postprocess"] = "largest-component"
    cleaning = save_checkpoint(tmp_path / "cleaning.pt", state)
    calls = []
    monkeypatch.setattr(pipeline, "predict_path", lambda *args, **options: calls.append(options) or [])
    for checkpoint in (finished_run / "best.pt", cleaning):
        pipeline.predict(checkpoint, acdc_root, tmp_path, device="cpu")
    assert [(call["postprocess"], call["num_classes"]) for call in calls] == [("none", 4), ("largest-component", 4)]


@pytest.fixture(scope="module")
def la_root(tmp_path_factory):
    return synthesize("la", tmp_path_factory.mktemp("la"), cases=6, seed=0, size=(32, 32, 32), progress=False)


def la_config(la_root, out, *assignments, **overrides):
    overrides = {"data_root": str(la_root), "out": str(out), "labeled": 2, "device": "cpu", **overrides}
    return load_config(
        "la",
        "paper",
        overrides,
        [
            "network.base_filters=4",
            "data.patch_size=[32, 32, 32]",
            "data.batch_size=4",
            "data.labeled_batch_size=2",
            "data.num_workers=0",
            "data.holdout_cases=1",
            "pretrain.iterations=2",
            "selftrain.iterations=2",
            "eval.val_interval=2",
            "eval.stride=[16, 16, 16]",
            "eval.num_figures=1",
            "prototypes.kmeans_max_voxels=500",
            *assignments,
        ],
    )


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


def test_labeled_counts_the_held_out_cases_leave_no_room_for_name_them_and_the_largest_count(la_root, tmp_path):
    total = len((la_root / "train.list").read_text().split())
    held = f"data.holdout_cases = 2 holds the last 2 of the {total} training cases of {la_root} out for validation"

    def config(labeled, *assignments, **overrides):
        holdout = ("data.val_split=holdout", "data.holdout_cases=2", *assignments)
        return la_config(la_root, tmp_path, *holdout, labeled=labeled, **overrides)

    # the largest count named is the largest taken: one case left unlabeled, the held-out ones untouched
    labeled, unlabeled = check_split(config(total - 3))
    assert (len(labeled), len(unlabeled)) == (total - 3, 1)
    with pytest.raises(ConfigError) as refused:
        check_split(config(total - 2))
    assert str(refused.value) == (
        f"labeled = {total - 2} leaves no unlabeled training case for self-training: of the {total} training cases "
        f"of {la_root}, data.holdout_cases = 2 holds the last 2 out for validation and labeled = {total - 2} labels "
        f"all {total - 2} others; lower --labeled to at most {total - 3} or data.holdout_cases "
        "(or train --baseline labeled-only)"
    )
    for beyond in (total - 1, total, total + 10):
        with pytest.raises(ConfigError) as refused:
            check_split(config(beyond))
        assert str(refused.value) == (
            f"labeled must be between 1 and {total - 3} (one training case left unlabeled for self-training): "
            f"{held}; got {beyond}"
        )
    # trained on the labeled cases alone, every case not held out may be labeled
    assert len(check_split(config(total - 2, baseline="labeled-only"))[0]) == total - 2
    with pytest.raises(ConfigError) as refused:
        check_split(config(total - 1, baseline="labeled-only"))
    assert str(refused.value) == f"labeled must be between 1 and {total - 2}: {held}; got {total - 1}"
    with pytest.raises(ConfigError) as refused:
        check_split(config(1, f"data.holdout_cases={total - 1}"))
    assert str(refused.value) == (
        f"data.holdout_cases = {total - 1} holds the last {total - 1} of the {total} training cases of {la_root} "
        "out for validation, which leaves 1 to train on; the run needs a labeled and an unlabeled case: lower it"
    )


def test_a_tiny_la_run_trains_and_evaluates(la_root, acdc_root, tmp_path):
    with pytest.raises(ConfigError, match=r"holds ACDC data .* LA is expected: the run trains on la"):
        pipeline.train(la_config(acdc_root, tmp_path / "la"))
    run_dir = pipeline.train(la_config(la_root, tmp_path / "la", "data.val_split=holdout"))
    summary = json.loads((run_dir / "metrics.json").read_text())["summary"]
    assert summary["num_cases"] == len((la_root / "test.list").read_text().split())
    assert load_checkpoint(run_dir / "best.pt")["bank"]["prototypes"].shape == (2 * 3, 4)
    held_out = pipeline.evaluate(run_dir / "best.pt", split="val", device="cpu", num_figures=0)
    assert list(held_out["per_case"]) == (la_root / "train.list").read_text().split()[-1:]
    with pytest.raises(
        ConfigError, match=r"holds ACDC data \(it has data/\), but LA is expected: .*best.pt was trained"
    ):
        pipeline.evaluate(run_dir / "best.pt", data_root=acdc_root, device="cpu", num_figures=0)


def test_evaluate_needs_only_the_test_list_and_its_volumes(finished_run, acdc_root, tmp_path):
    test_root = tmp_path / "test-only"
    cases = (acdc_root / "test.list").read_text().split()
    (test_root / "data").mkdir(parents=True)
    shutil.copy(acdc_root / "test.list", test_root)
    for case in cases:
        shutil.copy(acdc_volume_path(acdc_root, case), acdc_volume_path(test_root, case))
    elsewhere = load_checkpoint(finished_run / "best.pt")
    elsewhere["config"]["data_root"] = str(tmp_path / "the training data, on another machine")
    checkpoint = save_checkpoint(tmp_path / "best.pt", elsewhere)
    result = pipeline.evaluate(checkpoint, data_root=test_root, device="cpu", num_figures=0)
    assert list(result["per_case"]) == cases
    assert "| MPER | 1 | - |" in result["markdown"]


def test_a_checkpoint_evaluated_on_the_other_dataset_names_the_mismatch(finished_run, la_root):
    with pytest.raises(ConfigError, match=r"holds LA data .* but ACDC is expected"):
        pipeline.evaluate(finished_run / "best.pt", data_root=la_root, device="cpu", num_figures=0)


def test_a_checkpoint_evaluated_on_its_case_folder_or_the_raw_download_names_the_folder_to_pass(
    finished_run, acdc_root, tmp_path
):
    checkpoint = finished_run / "best.pt"
    with pytest.raises(
        ConfigError,
        match=rf"^{re.escape(str(acdc_root / 'data'))} is the ACDC case folder \(data\) itself; pass the folder "
        rf"above it, which holds it and the list files: --data-root {re.escape(str(acdc_root))}$",
    ):
        pipeline.evaluate(checkpoint, data_root=acdc_root / "data", device="cpu", num_figures=0)
    patient = tmp_path / "database" / "training" / "patient001"
    patient.mkdir(parents=True)
    (patient / "Info.cfg").write_text("ED: 1\nES: 12\n")
    for where in (tmp_path, tmp_path / "database"):
        with pytest.raises(
            ConfigError,
            match=rf"^{re.escape(str(where))} holds the ACDC challenge download .*, the raw download, not the ACDC "
            rf"data mper reads \(data/ and the list files\): convert it first, mper-data convert --dataset acdc "
            rf"--source {re.escape(str(where))} --out DIR, then pass --data-root DIR$",
        ):
            pipeline.evaluate(checkpoint, data_root=where, device="cpu", num_figures=0)


def fill_weights_with_nan(trainer):
    with torch.no_grad():
        for parameter in trainer.student.parameters():
            parameter.fill_(float("nan"))


@pytest.mark.parametrize(
    "optimizer_steps, message",
    [
        (3, "pretrain iteration 4: the loss is nan"),
        (4, r"pretrain iteration 4: \d+ tensor\(s\) hold NaN or infinite values, e.g. student\."),
    ],
)
def test_a_non_finite_run_stops_and_keeps_its_last_good_checkpoint(
    acdc_root, tmp_path, monkeypatch, optimizer_steps, message
):
    after_optimizer_steps(monkeypatch, optimizer_steps, fill_weights_with_nan)
    run_dir = tmp_path / "run"
    config = load_config(
        "acdc",
        "paper",
        {"data_root": str(acdc_root), "out": str(run_dir), "labeled": 1, "device": "cpu"},
        [*RESUMABLE_ACDC, "eval.checkpoint_interval=2", "eval.val_interval=4"],
    )
    with pytest.raises(TrainingDiverged, match=message):
        pipeline.train(config)
    last = load_checkpoint(run_dir / "last.pt")
    assert last["progress"]["iteration"] == 2 and not non_finite_tensors(last)
    assert not (run_dir / "pretrain_best.pt").exists() and not (run_dir / "metrics.json").exists()
    assert message.split(":")[0] in (run_dir / "train.log").read_text()


def test_a_run_that_diverges_before_its_first_checkpoint_keeps_its_folder_and_log(acdc_root, tmp_path):
    run_dir = tmp_path / "run"
    config = tiny_config(
        acdc_root,
        run_dir,
        "optim.lr=1e12",
        "eval.log_interval=1",
        "eval.val_interval=100",
        "eval.checkpoint_interval=100",
        "pretrain.iterations=50",
    )
    with pytest.raises(
        TrainingDiverged,
        match=r"pretrain iteration \d+: the loss is .*training stopped without saving "
        r"this state, before its first checkpoint; .*run keeps its settings and "
        r"train.log",
    ):
        pipeline.train(config)
    assert {"config.toml", "train.log"} <= {path.name for path in run_dir.iterdir()}
    assert not (run_dir / "last.pt").exists()
    assert re.search(r"ERROR .*pretrain iteration \d+: the loss is", (run_dir / "train.log").read_text())


def test_a_run_refused_by_the_lock_leaves_the_folder_to_the_run_holding_it(acdc_root, tmp_path, monkeypatch):
    # two runs started into one new --out at once: both see no folder, one takes the lock
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "train.log").write_text("the other run's log")
    monkeypatch.setattr(pipeline, "_make_run_dir", lambda path: True)  # as if this run had made the folder
    with run_folder_lock(run_dir), pytest.raises(RunFolderError, match="in use by another training run"):
        pipeline.train(tiny_config(acdc_root, run_dir))
    assert (run_dir / "train.log").read_text() == "the other run's log"


def damaged_copy(acdc_root, tmp_path, damage):
    root = shutil.copytree(acdc_root, tmp_path / "data")
    labeled, unlabeled = training_cases(tiny_config(root, tmp_path))
    test_case = (root / "test.list").read_text().split()[0]
    val_case = (root / "val.list").read_text().split()[-1]
    paths = {
        "labeled": acdc_slice_path(root, labeled[0]),
        "unlabeled": acdc_slice_path(root, unlabeled[-1]),
        "test": acdc_volume_path(root, test_case),
        "val": acdc_volume_path(root, val_case),
    }
    target = paths[damage[0]]
    if damage[1] == "missing":
        target.unlink()
    else:
        with h5py.File(target, "r+") as handle:
            image, label = handle["image"][()], handle["label"][()]
            del handle["image"], handle["label"]
            if damage[1] == "nan":
                image.reshape(-1)[5] = np.nan
            elif damage[1] == "float label":
                label = label.astype(np.float64) + 0.4
            else:
                image, label = image[:0], label[:0]
            handle["image"], handle["label"] = image, label
    return root, target.name


@pytest.mark.parametrize(
    "damage, error, message",
    [
        (("unlabeled", "missing"), MissingFileError, "not found.* is named by the training list of .*: restore its"),
        (("test", "missing"), MissingFileError, "not found.* is named by the validation or test list of .*: restore"),
        (("val", "missing"), MissingFileError, "not found.* is named by the validation or test list of .*: restore"),
        (("unlabeled", "nan"), DataFormatError, "image has 1 NaN or infinite value"),
        (("labeled", "float label"), DataFormatError, "label holds float64 values"),
        (("labeled", "empty"), DataFormatError, "dataset 'image' is empty"),
    ],
)
def test_the_data_is_checked_before_the_run_folder_is_made(acdc_root, tmp_path, damage, error, message):
    root, damaged_file = damaged_copy(acdc_root, tmp_path, damage)
    run_dir = tmp_path / "run"
    with pytest.raises(error, match=rf"{re.escape(damaged_file)}.*{message}"):
        pipeline.train(tiny_config(root, run_dir))
    assert not run_dir.exists()


def test_every_training_case_labeled_leaves_nothing_to_self_train_on(acdc_root, tmp_path):
    run_dir = tmp_path / "run"
    patients = {name.split("_")[0] for name in (acdc_root / "train_slices.list").read_text().split()}
    with pytest.raises(ConfigError, match=f"labeled = {len(patients)} leaves no unlabeled training case"):
        pipeline.train(tiny_config(acdc_root, run_dir, labeled=len(patients)))
    assert not run_dir.exists()


@pytest.mark.parametrize("emptied", [2, 5])
def test_a_class_the_labeled_la_cases_lack_names_the_cases_that_hold_it(la_root, tmp_path, emptied):
    """The atrium painted out of the first ``emptied`` training cases: the other training
    cases are labeled by a larger --labeled; the test cases, LA's validation cases, never."""
    root = shutil.copytree(la_root, tmp_path / "la")
    train, test = ((root / f"{split}.list").read_text().split() for split in ("train", "test"))
    for case in train[:emptied]:
        with h5py.File(la_case_path(root, case), "r+") as handle:
            handle["label"][...] = 0
    run_dir = tmp_path / "run"
    with pytest.raises(DataFormatError) as error:
        pipeline.train(la_config(root, run_dir))
    unlabeled = train[emptied:]
    where = f"cases {', '.join(unlabeled)} (left unlabeled by --labeled 2) and " if unlabeled else ""
    assert str(error.value) == (
        f"class 1 (LA) has no voxel in the 2 labeled training item(s) of {root} (--labeled 2), so its prototypes "
        f"cannot be initialised; of the cases with labels only {where}case {test[0]} of the validation cases (never "
        f"trained on) {'hold' if unlabeled else 'holds'} it: "
        + (f"train with --labeled {emptied + 1}" if unlabeled else "label more training cases that contain it")
    )
    assert not run_dir.exists()


def test_a_crash_keeps_its_traceback_in_train_log(acdc_root, tmp_path, monkeypatch):
    def fault(self, loss):
        raise ValueError("simulated fault")

    monkeypatch.setattr(Trainer, "optimize", fault)
    run_dir = tmp_path / "run"
    with pytest.raises(ValueError, match="simulated fault"):
        pipeline.train(tiny_config(acdc_root, run_dir))
    log = (run_dir / "train.log").read_text()
    assert "training failed" in log and "Traceback" in log and "ValueError: simulated fault" in log


def test_two_runs_cannot_share_a_run_folder(acdc_root, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with (
        run_folder_lock(run_dir),
        pytest.raises(RunFolderError, match=f"in use by another training run .*{os.getpid()}"),
    ):
        pipeline.train(tiny_config(acdc_root, run_dir))
    assert sorted(path.name for path in run_dir.iterdir()) == []


def test_resume_applies_more_iterations_and_refuses_what_would_change_the_run(finished_run, tmp_path):
    run_dir = shutil.copytree(finished_run, tmp_path / "run")
    refusals = [
        ({"seed": 5}, [], "seed cannot change \\(saved 1337, given 5\\)"),
        ({"labeled": 2}, [], "labeled cannot change"),
        ({"dataset": "la"}, [], "dataset cannot change"),
        ({"preset": "reference"}, [], "preset cannot change"),
        ({}, ["optim.lr=0.5"], "optim.lr cannot change"),
        ({}, ["prototypes.update_source=labeled"], "prototypes.update_source cannot change"),
        (
            {},
            ["selftrain.iterations=5"],
            "this run has done 6 selftrain iterations; the iteration counts can only grow",
        ),
        ({}, ["pretrain.iterations=8"], "this run has finished pre-training"),
    ]
    for overrides, assignments, message in refusals:
        with pytest.raises(ConfigError, match=message):
            pipeline.resume(run_dir, overrides=overrides, assignments=assignments)
    pipeline.resume(run_dir, overrides={"seed": 1337, "labeled": 1}, assignments=["selftrain.iterations=8"])
    assert load_checkpoint(run_dir / "last.pt")["progress"]["iteration"] == 8
    assert "resuming with selftrain.iterations = 8 (was 6)" in (run_dir / "train.log").read_text()


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_a_run_on_the_second_gpu_loads_its_batches_there(acdc_root, tmp_path, monkeypatch):
    """The data loader pins batches on the current CUDA device: a run on cuda:1 makes
    cuda:1 current while it trains, so that nothing opens a context on cuda:0."""
    from mper.train import loaders

    current = []

    class Recorded(loaders.DataLoader):
        def __iter__(self):
            current.append(torch.cuda.current_device())
            return super().__iter__()

    monkeypatch.setattr(loaders, "DataLoader", Recorded)
    pipeline.train(tiny_config(acdc_root, tmp_path / "second", device="cuda:1"))
    assert current and set(current) == {1}


@pytest.mark.cuda
def test_an_interrupted_cuda_run_resumes_to_the_uninterrupted_state(acdc_root, tmp_path, monkeypatch):
    uninterrupted = pipeline.train(tiny_config(acdc_root, tmp_path / "uninterrupted", device="cuda"))
    run_dir = tmp_path / "interrupted"
    interrupt_after(monkeypatch, 4 + 2)
    with pytest.raises(TrainingInterrupted):
        pipeline.train(tiny_config(acdc_root, run_dir, device="cuda"))
    monkeypatch.undo()
    pipeline.resume(run_dir)
    expected, resumed = load_checkpoint(uninterrupted / "last.pt"), load_checkpoint(run_dir / "last.pt")
    assert_same(expected["progress"], resumed["progress"])
    for key in ("mix_generator", "rng"):
        assert_same(expected[key], resumed[key], key)
    for name, value in expected["student"].items():
        torch.testing.assert_close(resumed["student"][name], value, rtol=1e-3, atol=1e-4, msg=name)


@pytest.mark.parametrize("dataset", ["acdc", "la"])
def test_a_scored_case_that_is_also_trained_on_is_refused_before_training(acdc_root, la_root, tmp_path, dataset):
    root = shutil.copytree(acdc_root if dataset == "acdc" else la_root, tmp_path / dataset)
    trained = (root / ("train_slices.list" if dataset == "acdc" else "train.list")).read_text().split()[0]
    scored = root / ("val.list" if dataset == "acdc" else "test.list")
    # ACDC: another frame of a training slice's patient; LA: the training case itself
    leaked = trained.split("_", 1)[0] + "_frame99" if dataset == "acdc" else trained
    scored.write_text(scored.read_text() + f"{leaked}\n")
    config = load_config(dataset, "paper", {"data_root": str(root), "labeled": 1, "device": "cpu"})
    role = "validation"  # LA's paper preset validates on test.list, as the authors' code does
    seen = f"{trained.split('_', 1)[0]} ({trained})" if dataset == "acdc" else trained
    with pytest.raises(DataFormatError) as refused:
        pipeline.settings_toml(config)
    assert str(refused.value) == (
        f"{root}: {role} case {leaked} is also trained on: {seen} is in the training list; a case that is scored "
        "must not be one the model learns from: remove it from one of the lists"
    )


def test_a_data_folder_given_relative_to_where_training_ran_is_named_as_such(
    finished_run, acdc_root, tmp_path, monkeypatch
):
    shutil.copytree(acdc_root, tmp_path / "data")
    state = load_checkpoint(finished_run / "best.pt")
    state["config"]["data_root"] = "data"  # as `mper-train --data-root data` run in tmp_path saves it
    checkpoint = save_checkpoint(tmp_path / "relative.pt", state)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with pytest.raises(MissingFileError) as refused:
        pipeline.evaluate(checkpoint, device="cpu", num_figures=0)
    assert str(refused.value) == (
        f"{checkpoint} was trained on acdc in data, a path relative to the folder training ran in, and {elsewhere} "
        "holds no data: run the command from that folder, or pass --data-root with the data folder's path from here"
    )
    assert pipeline.evaluate(checkpoint, data_root=tmp_path / "data", device="cpu", num_figures=0)["per_case"]
    monkeypatch.chdir(tmp_path)
    assert pipeline.evaluate(checkpoint, device="cpu", num_figures=0)["per_case"]


def test_a_run_stopped_while_it_writes_its_report_leaves_no_metrics_json(acdc_root, tmp_path, monkeypatch):
    """metrics.json marks a finished run (a sweep skips it): it is written last and whole."""
    from mper.eval import evaluate as evaluation
    from mper.train.runtime import TrainingAborted

    def stopped(*arguments, **options):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluation, "save_figures", stopped)
    run_dir = tmp_path / "stopped"
    with pytest.raises(TrainingAborted):
        pipeline.train(tiny_config(acdc_root, run_dir))
    assert (run_dir / "last.pt").is_file() and not (run_dir / "metrics.json").exists()
    monkeypatch.undo()
    pipeline.resume(run_dir)  # a finished training: evaluates again
    report = json.loads((run_dir / "metrics.json").read_text())
    assert {"summary", "per_case", "table", "training", "sessions", "prototype_usage"} <= set(report)
    assert not list(run_dir.glob(".*.tmp"))


def test_a_blank_image_and_a_labeled_case_without_foreground_are_warned_of(la_root, tmp_path, caplog):
    """Both read as data and were trained on, or scored, without a word."""
    root = shutil.copytree(la_root, tmp_path / "la")
    labeled = (root / "train.list").read_text().split()[0]
    tested = (root / "test.list").read_text().split()[0]
    with h5py.File(la_case_path(root, labeled), "r+") as handle:
        handle["label"][...] = 0
    with h5py.File(la_case_path(root, tested), "r+") as handle:
        handle["image"][...] = -0.5
    with caplog.at_level("WARNING", logger="mper"):
        check_data(la_config(root, tmp_path / "run"))
    assert f"{root}: the image of case {tested} holds one value everywhere, yet its label marks foreground" in (
        caplog.text
    )
    assert f"{root}: the label of labeled case {labeled} marks no foreground" in caplog.text


def test_resume_on_a_copy_missing_a_training_slice_counts_slices_as_slices(acdc_root, finished_run, tmp_path, capsys):
    run = shutil.copytree(finished_run, tmp_path / "run")
    copy = shutil.copytree(acdc_root, tmp_path / "acdc")
    slices = (copy / "train_slices.list").read_text().split()
    (copy / "train_slices.list").write_text("\n".join(slices[:-1]) + "\n")  # the last unlabeled slice gone
    with pytest.raises(SystemExit):
        train_main(["--resume", "--out", str(run), "--data-root", str(copy)])
    line = capsys.readouterr().err.splitlines()[-1]
    unlabeled = json.loads((run / "cases.json").read_text())["unlabeled"]
    assert f"(unlabeled slices: 1 of its {len(unlabeled)} missing, e.g. {slices[-1]})" in line, line
