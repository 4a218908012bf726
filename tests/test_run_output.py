"""What a person sees of a run: versions, the printed settings, train.log from its header
to the test metrics, progress of long steps, and one message per Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mper import __version__
from mper.cli import data_main, eval_main, experiment_main, predict_main, train_main
from mper.datasets import synthesize
from mper.train.config import load_config, read_preset
from tiny_runs import TINY_ACDC, acdc_run_arguments

# as TINY_ACDC, with two test figures
TINY = [*(setting for setting in TINY_ACDC if not setting.startswith("eval.num_figures=")), "eval.num_figures=2"]


def tiny_run_arguments(acdc_root, run_dir, *assignments):
    """mper-train's arguments of a tiny ACDC run into ``run_dir``: :data:`TINY`, then ``assignments``."""
    return acdc_run_arguments(acdc_root, run_dir, [*TINY, *assignments])


@pytest.fixture(scope="module")
def acdc_root(tmp_path_factory):
    return synthesize("acdc", tmp_path_factory.mktemp("acdc"), cases=5, seed=0, size=(32, 32), progress=False)


@pytest.mark.parametrize(
    "main, program",
    [
        (train_main, "mper-train"),
        (eval_main, "mper-eval"),
        (predict_main, "mper-predict"),
        (data_main, "mper-data"),
        (experiment_main, "mper-experiment"),
    ],
)
def test_every_command_prints_its_versions(main, program, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{program} {__version__} (torch {torch.__version__}, ")
    assert f"Python {sys.version_info.major}.{sys.version_info.minor}." in line
    assert "CUDA" in line or "CPU build" in line


def test_print_config_prints_the_resolved_settings_and_trains_nothing(tmp_path, capsys):
    train_main(
        [
            "--dataset",
            "la",
            "--preset",
            "paper",
            "--labeled",
            "4",
            "--set",
            "selftrain.iterations=7",
            "--out",
            str(tmp_path / "run"),
            "--print-config",
        ]
    )
    printed = capsys.readouterr().out
    import tomllib

    values = tomllib.loads(printed)
    expected = load_config(
        "la", "paper", {"labeled": 4, "out": str(tmp_path / "run")}, ["selftrain.iterations=7"]
    ).to_dict()
    values["prototypes"]["contrastive_ignore_row"] = expected["prototypes"]["contrastive_ignore_row"]  # "none"
    assert values == expected
    assert values["network"] == read_preset("la", "paper")["network"]
    assert not (tmp_path / "run").exists()


def test_train_log_opens_with_versions_device_and_settings_and_ends_with_the_test_metrics(acdc_root, tmp_path, capsys):
    run_dir = tmp_path / "run"
    train_main(tiny_run_arguments(acdc_root, run_dir))
    console = capsys.readouterr()
    lines = (run_dir / "train.log").read_text().splitlines()
    assert f": starting: mper {__version__} (torch {torch.__version__}, " in lines[0]
    assert re.search(r": device: cpu \(.*\d+ threads", lines[1])
    assert lines[2].endswith("settings:") and lines[3] == 'dataset = "acdc"'
    text = "\n".join(lines)
    assert 'out = "' + str(run_dir) + '"' in text and "[selftrain]\niterations = 3" in text
    for pattern in (
        r"stage pretrain \(copy-paste pre-training.*\): 3 iterations, from the start",
        r"initialising the prototype bank by k-means \(minibatch, 3 per class, at most 500 voxels per class\)",
        r"prototype bank ready: 4 x 3 \(classes x prototypes\) of dimension 4, in [0-9.]+ s",
        r"stage selftrain \(Mean Teacher.*\): 3 iterations",
        r"evaluating .*best.pt on the test split",
    ):
        assert re.search(pattern, text), pattern
    metrics = (run_dir / "metrics.md").read_text().rstrip()
    assert text.endswith(metrics) and "test metrics" in lines[-len(metrics.splitlines()) - 1]
    # the settings and the metrics go to train.log only; the console prints the table once
    assert 'dataset = "acdc"' not in console.err and console.out.count("| MPER | 1 |") == 1
    assert "stage selftrain" in console.err and "validation Dice" in console.err


def test_the_test_figures_are_in_tensorboard(acdc_root, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    train_main(tiny_run_arguments(acdc_root, run_dir))
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    figures = sorted(path.stem for path in (run_dir / "figures").glob("*.png"))
    assert figures  # two test cases: the worst is the median
    assert sorted(events.Tags()["images"]) == [f"test/{name}" for name in figures]


def test_validation_shows_progress(acdc_root, tmp_path, capsys):
    train_main(tiny_run_arguments(acdc_root, tmp_path / "run", "eval.log_interval=1"))
    shown = capsys.readouterr().err
    assert "validation:" in shown
    # the best score before the first validation is none yet, not -inf
    assert "best=-, " in shown and "best=-inf" not in shown, shown


@pytest.mark.parametrize(("signum", "said"), [(signal.SIGINT, "Ctrl-C"), (signal.SIGTERM, "SIGTERM")])
def test_a_stop_signal_with_data_workers_reports_once(acdc_root, tmp_path, signum, said):
    """A terminal's Ctrl-C reaches the whole process group, data workers included, and so
    does a scheduler's SIGTERM to the whole job: only the main process says so."""
    run_dir = tmp_path / "run"
    arguments = tiny_run_arguments(acdc_root, run_dir, "data.num_workers=2", "pretrain.iterations=100000")
    stderr_path = tmp_path / "stderr.txt"
    with open(stderr_path, "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-c", "import sys; from mper.cli import train_main; train_main(sys.argv[1:])", *arguments],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while not re.search(r"pretrain: .*\| *[2-9]\d*/", stderr_path.read_text()):
            assert process.poll() is None and time.monotonic() < deadline, stderr_path.read_text()
            time.sleep(0.2)
        os.killpg(process.pid, signum)
        assert process.wait(timeout=120) == 128 + signum, stderr_path.read_text()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    text = stderr_path.read_text()
    assert text.count(f"{said}: saving a checkpoint") == 1, text
    assert text.count(f"interrupted ({signum.name}); state saved to") == 1 and "Traceback" not in text, text
    assert (run_dir / "last.pt").is_file()


#: Python code that makes the import of mper.cli (torch loading) end in a Ctrl-C.
INTERRUPT_THE_CLI_IMPORT = (
    "import sys\n"
    "class Interrupt:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name == 'mper.cli':\n"
    "            raise KeyboardInterrupt\n"
    "sys.meta_path.insert(0, Interrupt())\n"
)


@pytest.mark.parametrize("command", ["train_main", "eval_main", "predict_main", "data_main", "experiment_main"])
def test_ctrl_c_while_the_command_starts_ends_in_one_line(command):
    """Ctrl-C during the import of the commands (torch loading) prints one line, no traceback."""
    code = f"{INTERRUPT_THE_CLI_IMPORT}from mper.entry_points import {command}\n{command}()\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 130, result.stderr
    assert result.stderr == "\ninterrupted\n"


def test_a_sweep_s_training_process_stopped_while_it_starts_ends_in_one_line():
    """mper-experiment starts each run as mper-train starts: a Ctrl-C that reaches it while
    it imports torch leaves one line in the run's log, no traceback."""
    from mper.experiment.executors import train_command

    python, switch, entry, *arguments = train_command(["--version"])
    command = [python, switch, INTERRUPT_THE_CLI_IMPORT + entry, *arguments]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 130, result.stderr
    assert result.stderr == "\ninterrupted\n"


def test_console_scripts_reach_the_commands(monkeypatch, capsys):
    """Each console script runs its own command: ``--version`` prints the program's name."""
    import tomllib

    from mper import entry_points

    scripts = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    assert sorted(scripts) == ["mper-data", "mper-eval", "mper-experiment", "mper-predict", "mper-train"]
    for program, target in scripts.items():
        module, function = target.split(":")
        assert module == "mper.entry_points"
        monkeypatch.setattr(sys, "argv", [program, "--version"])
        with pytest.raises(SystemExit) as exit_info:
            getattr(entry_points, function)()
        assert exit_info.value.code == 0 and capsys.readouterr().out.startswith(f"{program} ")


def test_sigterm_outside_training_ends_the_command_in_one_line():
    """Before training starts (reading data, say) or after it ends, SIGTERM is not the
    training loop's to handle: the command still ends in one line, exit status 143."""
    waiting = (
        "import argparse, time\n"
        "from mper import cli\n"
        "def action():\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(60)\n"
        "cli._run(argparse.ArgumentParser(prog='mper-train'), action)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", waiting], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout.readline() == "ready\n"
        process.send_signal(signal.SIGTERM)
        _, error = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 143 and error == "\nterminated (SIGTERM)\n", error
