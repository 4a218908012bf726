"""The command-line tools on tiny synthetic data: help, data, train, eval, predict, errors."""

from __future__ import annotations

import errno
import json
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch

from mper import cli, pipeline
from mper.cli import data_main, eval_main, predict_main, train_main
from mper.datasets import dataset_names
from mper.errors import ConfigError
from mper.train import checkpoint
from mper.train.config import preset_tables
from mper.train.loop import Trainer
from mper.train.runtime import TrainingAborted, TrainingInterrupted
from tiny_runs import TINY_ACDC, acdc_run_arguments, set_arguments


def tiny_arguments():
    return set_arguments(TINY_ACDC)


def train_arguments(acdc_root, run_dir):
    return acdc_run_arguments(acdc_root, run_dir, TINY_ACDC, "--ops", "reference")


@pytest.fixture(scope="module")
def acdc_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli") / "acdc"
    data_main(["synth", "--dataset", "acdc", "--out", str(root), "--cases", "5", "--size", "32", "32"])
    return root


@pytest.mark.parametrize(
    "main, options",
    [
        (
            train_main,
            [
                "--dataset",
                "--data-root",
                "--labeled",
                "--preset",
                "--ops",
                "--device",
                "--resume",
                "--baseline",
                "--update-source",
                "--set",
                "--amp",
            ],
        ),
        (eval_main, ["--checkpoint", "--data-root", "--split", "--weights"]),
        (predict_main, ["--checkpoint", "--input", "--output"]),
        (data_main, ["synth", "convert"]),
    ],
)
def test_every_tool_explains_its_options(main, options, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert all(option in help_text for option in options)


def test_train_help_names_every_preset_and_how_they_stack(capsys):
    with pytest.raises(SystemExit):
        train_main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    presets = {name for dataset in dataset_names(imported=False) for name in preset_tables(dataset)}
    assert {"paper", "reference", "strict", "demo"} <= presets
    assert all(name in help_text for name in presets)
    assert "stack with '+'" in help_text and "reference+demo" in help_text


def test_data_synth_writes_the_acdc_layout(acdc_root):
    for name in ("train_slices.list", "val.list", "test.list"):
        assert (acdc_root / name).is_file()
    assert list((acdc_root / "data" / "slices").glob("*_slice_*.h5"))


def test_train_eval_and_predict_from_the_command_line(acdc_root, tmp_path, capsys):
    run_dir = tmp_path / "run"
    train_main([*train_arguments(acdc_root, run_dir), "--update-source", "labeled"])
    printed = capsys.readouterr().out
    assert "| MPER | 1 |" in printed and f"run folder: {run_dir}" in printed
    assert 'update_source = "labeled"' in (run_dir / "config.toml").read_text()

    eval_main(["--checkpoint", str(run_dir / "best.pt"), "--split", "val", "--device", "cpu", "--figures", "1"])
    assert "| MPER |" in capsys.readouterr().out
    assert (run_dir / "eval-val" / "metrics.md").is_file()
    assert list((run_dir / "eval-val" / "figures").glob("*.png"))

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    case = (acdc_root / "test.list").read_text().split()[0]
    shutil.copy(acdc_root / "data" / f"{case}.h5", inputs)
    predict_main(
        [
            "--checkpoint",
            str(run_dir / "best.pt"),
            "--input",
            str(inputs),
            "--output",
            str(tmp_path / "labels"),
            "--device",
            "cpu",
        ]
    )
    assert (tmp_path / "labels" / f"{case}_pred.nii.gz").is_file()

    with h5py.File(acdc_root / "data" / f"{case}.h5") as volume:  # (S, H, W); NIfTI scans are (W, H, S)
        nib.save(nib.Nifti1Image(volume["image"][:], np.eye(4)), inputs / "slices_first.nii.gz")
    arguments = [
        "--checkpoint",
        str(run_dir / "best.pt"),
        "--input",
        str(inputs / "slices_first.nii.gz"),
        "--output",
        str(tmp_path / "labels"),
        "--device",
        "cpu",
    ]
    with pytest.raises(SystemExit) as exit_info:
        predict_main(arguments)
    assert exit_info.value.code == 2 and "looks like the wrong axis order" in capsys.readouterr().err
    predict_main([*arguments, "--force"])
    assert (tmp_path / "labels" / "slices_first_pred.nii.gz").is_file()


def signal_after_every_step(monkeypatch, signum):
    """Send ``signum`` to this process after every SGD step, as a user or a scheduler would."""
    original = Trainer.optimize

    def optimize_then_signal(self, loss):
        original(self, loss)
        signal.raise_signal(signum)

    monkeypatch.setattr(Trainer, "optimize", optimize_then_signal)


def test_ctrl_c_saves_and_resume_finishes_the_run(acdc_root, tmp_path, monkeypatch, capsys):
    signal_after_every_step(monkeypatch, signal.SIGINT)
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        train_main(train_arguments(acdc_root, run_dir))
    assert exit_info.value.code == 130
    assert f"mper-train --resume --out {run_dir}" in capsys.readouterr().err
    monkeypatch.undo()
    train_main(["--resume", "--out", str(run_dir)])
    assert "| MPER | 1 |" in capsys.readouterr().out


@pytest.mark.parametrize(
    "arguments, message",
    [
        (
            ["--dataset", "acdc", "--data-root", "{root}", "--set", "selftrain.iteratons=3"],
            "unknown setting selftrain.iteratons; did you mean selftrain.iterations? valid names here: ",
        ),
        (
            ["--dataset", "la", "--data-root", "{root}", "--preset", "reference+dmeo"],
            "preset 'dmeo' is not defined for la",
        ),
        (["--dataset", "acdc", "--data-root", "{missing}"], "missing does not exist: mper-data synth --dataset acdc"),
        (["--dataset", "acdc"], "--data-root is required (unless --resume): the folder of the acdc data"),
        ([], "--dataset and --data-root are required"),
        (["--data-root", "{missing}"], "missing does not exist: import your scans into it with mper-data import"),
        (["--data-root", "{file}", "--print-config"], "file is not a folder: import your scans into it with"),
        (["--resume"], "--resume needs --out"),
        (["--resume", "--out", "{missing}"], "missing/last.pt does not exist, nor does its folder; --out must name"),
        (
            ["--resume", "--out", "{tmp}"],
            "holds no checkpoint to continue from (the run stopped before its first "
            "checkpoint, or the folder is not a run's); start the run again without",
        ),
        (
            ["--dataset", "acdc", "--data-root", "{root}", "--set", "data.patch_size=64,64"],
            "e.g. data.patch_size=[64,64]; got 64,64",
        ),
        (["--dataset", "acdc", "--data-root", "{root}", "--set", "prototypes.tau=-1"], "prototypes.tau must be"),
        (["--dataset", "acdc", "--data-root", "{root}", "--set", "optim.lr=nan"], "optim.lr must be a positive"),
        (["--dataset", "acdc", "--data-root", "{root}", "--labeled", "3"], "leaves no unlabeled training case"),
        (["--dataset", "acdc", "--data-root", "{root}", "--out", "{file}/run"], "cannot create the run folder"),
        (
            ["--dataset", "acdc", "--data-root", "{root}", "--fold", "1"],
            "data.fold = 1 (mper-train --fold) chooses a cross-validation fold, but ACDC has none: it selects "
            "checkpoints on its val.list (data.val_split = 'val'); drop --fold and any --set data.fold",
        ),
        (["--dataset", "acdc", "--print-config", "--fold", "0"], "data.fold = 0 (mper-train --fold) chooses"),
        (["--dataset", "acdc", "--print-config", "--set", "data.fold=2"], "but ACDC has none: it selects"),
        (
            ["--dataset", "acdc", "--print-config", "--set", "eval.postprocess=biggest"],
            "eval.postprocess must be one of none, largest-component; got 'biggest'",
        ),
        (
            ["--dataset", "acdc", "--print-config", "--set", "eval.empty_prediction=skip"],
            "eval.empty_prediction must be one of zero, undefined; got 'skip'",
        ),
    ],
)
def test_user_errors_end_in_one_line_and_exit_code_2(arguments, message, acdc_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("a file, not a folder")
    paths = {"root": acdc_root, "missing": tmp_path / "missing", "file": tmp_path / "file", "tmp": tmp_path}
    arguments = [argument.format(**paths) for argument in arguments]
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--labeled", "1", *tiny_arguments(), *arguments, "--ops", "reference", "--device", "cpu"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert message in error.splitlines()[-1] and error.count("error:") == 1 and "Traceback" not in error
    assert sorted(path.name for path in tmp_path.iterdir()) == ["file"]


def test_a_fault_keeps_its_traceback_and_is_not_reported_as_a_user_error(acdc_root, tmp_path, monkeypatch):
    def fault(self, loss):
        raise ValueError("simulated fault")

    monkeypatch.setattr(Trainer, "optimize", fault)
    with pytest.raises(ValueError, match="simulated fault"):
        train_main(train_arguments(acdc_root, tmp_path / "run"))
    assert "Traceback" in (tmp_path / "run" / "train.log").read_text()


def test_a_full_disk_and_an_unwritable_folder_get_one_line(acdc_root, tmp_path, monkeypatch, capsys):
    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", disk_full)
    with pytest.raises(SystemExit) as exit_info:
        train_main(train_arguments(acdc_root, tmp_path / "run"))
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in error
    assert "cannot write checkpoint" in error and "No space left on device" in error
    (tmp_path / "file").write_text("a file, not a folder")
    with pytest.raises(SystemExit) as exit_info:
        data_main(["synth", "--dataset", "acdc", "--out", str(tmp_path / "file" / "data"), "--cases", "3"])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Not a directory" in error and "Traceback" not in error


def test_sigterm_saves_a_checkpoint_like_ctrl_c(acdc_root, tmp_path, monkeypatch, capsys):
    signal_after_every_step(monkeypatch, signal.SIGTERM)
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        train_main(train_arguments(acdc_root, run_dir))
    assert exit_info.value.code == 128 + signal.SIGTERM
    error = capsys.readouterr().err
    assert "interrupted (SIGTERM)" in error and f"mper-train --resume --out {run_dir}" in error
    assert checkpoint.load_checkpoint(run_dir / "last.pt")["progress"]["iteration"] == 1


def test_sigterm_during_the_final_evaluation_exits_with_sigterms_status(acdc_root, tmp_path, monkeypatch, capsys):
    """Outside the training loop SIGTERM ends a command with 143; the final evaluation of
    mper-train is no exception (it said 130, Ctrl-C's status)."""
    from mper.eval import evaluate as evaluation

    def terminated(*arguments, **options):
        signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(evaluation, "save_figures", terminated)
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        train_main(train_arguments(acdc_root, run_dir))
    assert exit_info.value.code == 128 + signal.SIGTERM
    error = capsys.readouterr().err
    assert f"{run_dir / 'last.pt'} holds the last complete checkpoint" in error
    assert not (run_dir / "metrics.json").exists()


@pytest.mark.parametrize(
    "environment, command",
    [
        ({}, "mper-train --resume --out runs/x"),
        (
            {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"},
            'torchrun --standalone --nproc-per-node 2 "$(command -v mper-train)" --resume --out runs/x',
        ),
        (
            {"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"},
            "the same torchrun command on every machine, running mper-train --resume --out runs/x",
        ),
    ],
)
def test_a_stopped_run_is_continued_on_as_many_processes(monkeypatch, capsys, tmp_path, environment, command):
    """A torchrun group resumes bit for bit only on as many processes: process 0's report says
    so, rather than a single mper-train that continues on one (docs/distributed.md)."""
    for name in ("WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {**environment, **({"RANK": "0", "LOCAL_RANK": "0"} if environment else {})}.items():
        monkeypatch.setenv(name, value)
    assert cli._report_stop(TrainingInterrupted(Path("runs/x/last.pt"))) == 130
    assert capsys.readouterr().err.splitlines()[-1] == f"continue with: {command}"
    run_dir = tmp_path / "x"
    run_dir.mkdir()
    (run_dir / "last.pt").write_bytes(b"a checkpoint")
    cli._report_stop(TrainingAborted(run_dir))
    assert capsys.readouterr().err.splitlines()[-1] == f"continue with: {command}".replace("runs/x", str(run_dir))


def test_a_second_ctrl_c_during_a_checkpoint_write_exits_with_a_message(acdc_root, tmp_path, monkeypatch, capsys):
    def press_ctrl_c_while_writing(state, stream):
        stream.write(b"part of a checkpoint")
        signal.raise_signal(signal.SIGINT)

    signal_after_every_step(monkeypatch, signal.SIGINT)
    monkeypatch.setattr(checkpoint.torch, "save", press_ctrl_c_while_writing)
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        train_main(train_arguments(acdc_root, run_dir))
    assert exit_info.value.code == 130
    error = capsys.readouterr().err
    assert "stopped at once, before the first checkpoint" in error and "Traceback" not in error
    assert not run_dir.exists()


def test_ctrl_c_during_the_final_evaluation_exits_with_a_message(acdc_root, tmp_path, monkeypatch, capsys):
    def press_ctrl_c(*args, **kwargs):
        signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(pipeline, "evaluate_cases", press_ctrl_c)  # scoring the best checkpoint
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        train_main(train_arguments(acdc_root, run_dir))
    assert exit_info.value.code == 130
    error = capsys.readouterr().err
    assert f"{run_dir / 'last.pt'} holds the last complete checkpoint" in error and "Traceback" not in error
    assert f"mper-train --resume --out {run_dir}" in error
    # and the run's log, which the console does not outlive, says how it ended
    assert (
        "ERROR mper.pipeline: stopped at once (a second Ctrl-C or SIGTERM, or one after the last iteration); "
        f"{run_dir / 'last.pt'} holds the last complete checkpoint"
    ) in (run_dir / "train.log").read_text()
    # a resume after a kill (a lock left by a process that no longer exists) says so in the log
    stale = {"pid": 999999999, "host": socket.gethostname(), "started": "earlier"}
    (run_dir / "train.lock").write_text(json.dumps(stale))
    monkeypatch.undo()
    train_main(["--resume", "--out", str(run_dir)])
    assert (
        "the session before (process 999999999 on "
        f"{socket.gethostname()}, started earlier) ended without releasing train.lock: it was killed"
    ) in (run_dir / "train.log").read_text()


def test_resume_refuses_changed_settings_in_one_line(acdc_root, tmp_path, capsys):
    run_dir = tmp_path / "run"
    train_main(train_arguments(acdc_root, run_dir))
    capsys.readouterr()
    for arguments in (["--seed", "3"], ["--labeled", "2"], ["--preset", "reference"], ["--set", "optim.lr=0.1"]):
        with pytest.raises(SystemExit) as exit_info:
            train_main(["--resume", "--out", str(run_dir), *arguments])
        error = capsys.readouterr().err
        assert exit_info.value.code == 2 and "cannot change" in error and "Traceback" not in error
    train_main(["--resume", "--out", str(run_dir), "--set", "selftrain.iterations=4"])
    assert "resuming with selftrain.iterations = 4 (was 3)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("scans", "labels", "relation"),
    [
        ("scans", "scans", "is the --input folder scans"),
        ("scans/", "./scans", "is the --input folder scans/"),
        ("scans", "scans/labels", "is inside the --input folder scans"),
        ("scans/case_0000.nii.gz", "scans", "is the folder of the --input scans/case_0000.nii.gz"),
        ("scans/case_0000.nii.gz", "scans/labels", "is inside the folder of the --input scans/case_0000.nii.gz"),
    ],
)
def test_predict_refuses_an_output_among_its_input_before_any_work(
    tmp_path, monkeypatch, capsys, scans, labels, relation
):
    monkeypatch.chdir(tmp_path)
    for folder in ("scans", "work/scans"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "scans" / "case_0000.nii.gz").write_bytes(b"")
    with pytest.raises(SystemExit) as exit_info:
        predict_main(["--checkpoint", "missing.pt", "--input", scans, "--output", labels])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        f"mper-predict: error: --output {labels} {relation}: the label maps would lie among the scans, where a later "
        "mper-predict or mper-data import reads them as scans; choose an output folder outside it\n"
    )
    assert sorted(path.name for path in (tmp_path / "scans").iterdir()) == ["case_0000.nii.gz"]


def test_predict_takes_an_output_folder_that_holds_the_scans_folder(tmp_path, monkeypatch, capsys):
    # label maps go to work/<case>.nii.gz, beside work/scans, not among the scans: the
    # check lets it through, and the missing checkpoint is what stops this call
    monkeypatch.chdir(tmp_path)
    (tmp_path / "work" / "scans").mkdir(parents=True)
    with pytest.raises(SystemExit) as exit_info:
        predict_main(["--checkpoint", "missing.pt", "--input", "work/scans", "--output", "work"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "missing.pt" in error and "--output" not in error, error


def test_a_second_ctrl_c_inside_a_checkpoint_write_keeps_the_last_complete_one(
    acdc_root, tmp_path, monkeypatch, capsys
):
    """torch.save's own writer, interrupted in the middle of a file, fails once more on its way
    out: the stop is still reported as a stop, and the previous checkpoint stays whole."""
    original_optimize, original_save = Trainer.optimize, checkpoint.torch.save
    pressed = []

    def press_ctrl_c_after_the_second_step(self, loss):
        original_optimize(self, loss)
        if self.progress.iteration == 1:  # counted after the step: the second one
            pressed.append(True)
            signal.raise_signal(signal.SIGINT)

    class PressedStream:
        """The checkpoint's file, with Ctrl-C pressed again after its first write."""

        def __init__(self, stream):
            self.stream, self.writes = stream, 0

        def write(self, data):
            self.writes += 1
            if self.writes == 2:
                signal.raise_signal(signal.SIGINT)
            return self.stream.write(data)

        def flush(self):
            self.stream.flush()

    def save_interrupted_once_pressed(state, stream):
        original_save(state, PressedStream(stream) if pressed else stream)

    monkeypatch.setattr(Trainer, "optimize", press_ctrl_c_after_the_second_step)
    monkeypatch.setattr(checkpoint.torch, "save", save_interrupted_once_pressed)
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        train_main([*train_arguments(acdc_root, run_dir), "--set", "eval.checkpoint_interval=1"])
    error = capsys.readouterr().err
    assert exit_info.value.code == 130 and "Traceback" not in error
    assert f"{run_dir / 'last.pt'} holds the last complete checkpoint" in error
    assert checkpoint.load_checkpoint(run_dir / "last.pt")["progress"]["iteration"] == 1
    assert not list(run_dir.glob(".*.tmp")) and not (run_dir / "train.lock").exists()
    assert "Traceback" not in (run_dir / "train.log").read_text()


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--device", "cuda"], "device 'cuda' requested but CUDA is not available here; use --device cpu"),
        (["--device", "cpu", "--amp", "bf16"], "amp = 'bf16' needs a CUDA device; use --amp off on cpu"),
        (["--device", "cpu", "--data-root", "{root}", "--labeled", "99"], "labeled must be between 1 and the 3 "),
    ],
)
def test_print_config_refuses_what_a_run_refuses_before_training(arguments, message, acdc_root, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        train_main(
            ["--dataset", "acdc", "--print-config", *(argument.format(root=acdc_root) for argument in arguments)]
        )
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in error
    assert message in error.splitlines()[-1]


def test_print_config_checks_the_labeled_count_only_against_a_given_data_folder(capsys):
    train_main(["--dataset", "acdc", "--print-config", "--labeled", "99", "--device", "cpu"])
    assert "labeled = 99" in capsys.readouterr().out


def test_the_python_api_makes_the_settings_mper_train_makes(acdc_root, capsys):
    """mper-train parses and calls pipeline.train_config: ``--labeled all`` and the options
    give the same settings from Python."""
    train_main(
        ["--dataset", "acdc", "--data-root", str(acdc_root), "--labeled", "all", "--preset", "demo"]
        + ["--baseline", "labeled-only", "--seed", "3", "--set", "optim.lr=0.02", "--print-config"]
    )
    printed = capsys.readouterr().out
    config = pipeline.train_config(
        "acdc",
        "demo",
        {"data_root": str(acdc_root), "baseline": "labeled-only", "seed": 3},
        ["optim.lr=0.02"],
        labeled_all=True,
    )
    assert printed == pipeline.settings_toml(config)
    assert config.labeled == 3 and config.optim.lr == 0.02  # the 3 training patients of acdc_root
    with pytest.raises(ConfigError, match="a run needs a dataset"):
        pipeline.train_config(None, "demo", {"seed": 3})


def test_train_refuses_an_out_folder_that_holds_files_but_no_run(acdc_root, tmp_path, capsys):
    for out, held in (
        (acdc_root, "data, test.list, train.list, train_slices.list, val.list"),
        (tmp_path / "mine", "notes.txt"),
    ):
        out.mkdir(exist_ok=True)
        if out.name == "mine":
            (out / "notes.txt").write_text("mine")
        before = sorted(path.name for path in out.iterdir())
        with pytest.raises(SystemExit) as exit_info:
            train_main(train_arguments(acdc_root, out))
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.splitlines()[-1] == (
            f"mper-train: error: --out {out} holds files but no run (no config.toml; it holds {held}): the run "
            "would write among them; choose a new or empty folder"
        )
        assert sorted(path.name for path in out.iterdir()) == before


def test_a_checkpoint_copied_alone_into_a_new_folder_resumes(acdc_root, tmp_path, monkeypatch, capsys):
    original_optimize = Trainer.optimize

    def press_ctrl_c_after_the_second_step(self, loss):
        original_optimize(self, loss)
        if self.progress.iteration == 1:
            signal.raise_signal(signal.SIGINT)

    run_dir, copy = tmp_path / "run", tmp_path / "copy"
    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "optimize", press_ctrl_c_after_the_second_step)
        with pytest.raises(SystemExit):
            train_main(train_arguments(acdc_root, run_dir))
    copy.mkdir()
    shutil.copy(run_dir / "last.pt", copy / "last.pt")  # the checkpoint alone, no log or settings
    capsys.readouterr()
    train_main(["--resume", "--out", str(copy)])
    assert (copy / "metrics.json").exists(), capsys.readouterr().err


def test_a_failed_hdf5_write_is_reported_in_one_line_naming_its_file():
    """h5py raises a full disk with errno 28 and HDF5's report of several lines as its text."""
    report = (
        "Can't synchronously write data (file write failed: time = Mon Dec  7 01:55:15 2026\n, filename = "
        "'/data/la/CASE1/mri_norm2.h5', file descriptor = 3, errno = 28, error message = 'No space left on device', "
        "buf = 0x5620dd9626a0, total write size = 6385664)"
    )
    assert cli._system_error_parts(OSError(28, report)) == ("/data/la/CASE1/mri_norm2.h5", "No space left on device")
    assert cli._system_error_parts(OSError(13, "Permission denied", "/data/x")) == ("/data/x", "Permission denied")
    assert cli._system_error_parts(OSError(28, "No space left on device")) == (None, "No space left on device")


def test_the_commands_start_without_importing_what_only_some_of_them_use():
    """medpy (scipy.stats) and tensorboard cost every command, ``--help`` included, a
    second or two on start: they are imported where they are used."""
    probe = "import sys, mper.cli; print(sorted({name.split('.')[0] for name in sys.modules}))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert "'medpy'" not in loaded and "'tensorboard'" not in loaded, loaded
