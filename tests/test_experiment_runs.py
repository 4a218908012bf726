"""Experiment plans that train: a micro plan end to end, stop and restart, the executors,
the results table from runs' metrics, and the tiny shipped plan (slow)."""

from __future__ import annotations

import json
import math
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mper import experiment, pipeline
from mper.cli import experiment_main
from mper.data import acdc_slice_path
from mper.datasets import synthesize
from mper.errors import ConfigError
from mper.experiment import (
    DevicePoolExecutor,
    LocalExecutor,
    RunsFailed,
    SubmititExecutor,
    SweepInterrupted,
    check_runs,
    prepare_plan,
    run_plan,
)
from mper.experiment.executors import ClusterOptions
from mper.experiment.plan import PlanError, parse_plan
from mper.experiment.report import collect, markdown
from mper.experiment.runs import FINISHED, INTERRUPTED, run_state
from test_pipeline import RESUMABLE_ACDC, after_optimizer_steps, interrupt_after

#: The pipeline tests' tiny runs, with a checkpoint every 2 iterations and no figures.
MICRO = [*RESUMABLE_ACDC, "eval.checkpoint_interval=2", "eval.num_figures=0"]


@pytest.fixture(scope="module")
def acdc_root(tmp_path_factory):
    return synthesize("acdc", tmp_path_factory.mktemp("acdc"), cases=5, seed=0, size=(32, 32), progress=False)


def micro_plan(data_root, seeds=(0,), variants=({"name": "MPER"},), **extra):
    document = {
        "title": "micro",
        "dataset": "acdc",
        "data_root": str(data_root),
        "labeled": [1],
        "seeds": list(seeds),
        "set": MICRO,
        "variant": [dict(variant) for variant in variants],
        **extra,
    }
    return parse_plan(document, name="micro")


@pytest.fixture(scope="module")
def micro_results(acdc_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("micro")
    plan = micro_plan(acdc_root, figures={"tsne": ["MPER"]})
    return out, run_plan(plan, out)


def test_a_one_run_plan_trains_and_writes_the_table_files_and_plot(micro_results):
    out, written = micro_results
    run_dir = out / "mper" / "1-labeled" / "seed0"
    assert run_state(run_dir) == FINISHED
    run_metrics = json.loads((run_dir / "metrics.json").read_text())
    results = json.loads((out / "results.json").read_text())
    (row,) = results["rows"]
    assert (row["method"], row["labeled"], row["seeds"], row["missing_seeds"]) == ("MPER", "1", [0], [])
    assert row["unlabeled"] == run_metrics["table"]["unlabeled"] == "2"
    for metric in ("dice", "jaccard", "hd95", "asd"):
        assert row["metrics"][metric]["values"] == [run_metrics["summary"]["mean"][metric]["mean"]]
        assert row["metrics"][metric]["std"] is None  # one seed: no spread to report
    dice = 100 * run_metrics["summary"]["mean"]["dice"]["mean"]
    assert f"| MPER | 1 | 2 | 1/1 | {dice:.2f} |" in written["results.md"].read_text()
    assert written["results.csv"].read_text().splitlines()[0].startswith("method,budget,sweep_value,labeled")
    assert written["results.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert written["tsne-mper-1.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_run_reports_its_prototype_usage_in_metrics_and_tensorboard(micro_results):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = micro_results[0] / "mper" / "1-labeled" / "seed0"
    usage = json.loads((run_dir / "metrics.json").read_text())["prototype_usage"]
    assert usage["window"] == 6 and usage["windows"] == 1  # the whole (short) self-training
    assert set(usage["classes"]) == {"0", "1", "2", "3"}
    assert usage["classes"]["0"]["share"] is None  # the background is not updated (paper preset)
    updated = [c for c in ("1", "2", "3") if usage["classes"][c]["share"] is not None]
    assert updated
    for c in updated:
        assert sum(usage["classes"][c]["share"]) == pytest.approx(1.0, abs=1e-5)
        assert len(usage["classes"][c]["updates"]) == 3
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    tags = set(events.Tags()["scalars"])
    for c in updated:
        for k in range(3):
            (point,) = events.Scalars(f"selftrain/prototype_usage/class{c}/k{k}")
            assert point.step == 6 and point.value == pytest.approx(usage["classes"][c]["share"][k], abs=1e-5)
    assert "selftrain/prototype_usage/class0/k0" not in tags


def test_a_finished_plan_is_not_trained_again(micro_results, acdc_root):
    out, _ = micro_results
    checkpoint = out / "mper" / "1-labeled" / "seed0" / "last.pt"
    before = checkpoint.stat().st_mtime_ns
    run_plan(micro_plan(acdc_root), out)
    assert checkpoint.stat().st_mtime_ns == before


def test_a_folder_holding_a_run_of_other_settings_is_refused(micro_results, acdc_root):
    out, _ = micro_results
    plan = micro_plan(acdc_root, set=[*MICRO, "prototypes.momentum=0.5"])
    with pytest.raises(
        PlanError,
        match=r"mper/1-labeled/seed0 holds a run with prototypes\.momentum = 0\.9 but "
        r"the plan asks for 0\.5 .*another --out",
    ):
        run_plan(plan, out)


def test_a_stopped_sweep_resumes_where_it_stopped(acdc_root, tmp_path, monkeypatch):
    plan = micro_plan(acdc_root, seeds=(0, 1), variants=({"name": "U-Net", "baseline": "labeled-only"},))
    first, second = (tmp_path / "u-net" / "1-labeled" / f"seed{seed}" for seed in (0, 1))
    interrupt_after(monkeypatch, 10 + 3)  # the first run (10 iterations) and 3 of the second
    with pytest.raises(SweepInterrupted) as stop:
        run_plan(plan, tmp_path)
    assert (stop.value.finished, stop.value.total) == (1, 2)
    assert run_state(first) == FINISHED and run_state(second) == INTERRUPTED
    monkeypatch.undo()
    written = run_plan(plan, tmp_path)
    assert run_state(second) == FINISHED
    assert "resuming baseline at iteration 3" in (second / "train.log").read_text()
    (row,) = json.loads(written["results.json"].read_text())["rows"]
    assert row["seeds"] == [0, 1] and row["method"] == "U-Net"
    assert len(set(row["metrics"]["dice"]["values"])) == 2  # the seeds train different networks


def test_a_sweep_stopped_by_sigterm_ends_as_a_terminated_command(acdc_root, tmp_path, monkeypatch, capsys):
    # a scheduler pre-empting the job: the training saves its state, the command says SIGTERM and
    # exits with 143 as mper-train does (it said Ctrl-C's 130)
    plan = tmp_path / "one.toml"
    plan.write_text(
        f'dataset = "acdc"\ndata_root = "{acdc_root}"\nlabeled = [1]\nseeds = [0]\n'
        f'set = {json.dumps(MICRO)}\n[[variant]]\nname = "U-Net"\nbaseline = "labeled-only"\n'
    )
    after_optimizer_steps(monkeypatch, 3, lambda trainer: signal.raise_signal(signal.SIGTERM))
    with pytest.raises(SystemExit) as exit_info:
        experiment_main([str(plan), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 128 + signal.SIGTERM
    assert "sweep stopped (SIGTERM): 0 of 1 runs finished" in capsys.readouterr().err
    assert run_state(tmp_path / "out" / "u-net" / "1-labeled" / "seed0") == INTERRUPTED


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_this_machine_lacks_is_refused_before_any_run_trains(acdc_root, tmp_path, capsys):
    # every run failed in turn ("4 of 4 runs failed") and a table of none was written
    plan = two_variant_plan_file(tmp_path, acdc_root, [1])
    out = tmp_path / "out"
    for listing in ([], ["--list"]):
        error = one_line_error([str(plan), "--out", str(out), "--device", "cuda", *listing], capsys)
        assert error == (
            f"mper-experiment: error: {plan}: run U-Net / 1 labeled / seed 0: device 'cuda' requested but CUDA is "
            "not available here; use --device cpu; no run was started: change --device (or the plan's settings) "
            "and run the command again"
        )
        assert not out.exists()
    with pytest.raises(PlanError, match="needs a CUDA device"):
        run_plan(micro_plan(acdc_root).with_changes(assignments=["amp=bf16"]), out, LocalExecutor("cpu"))
    assert not out.exists()
    # a cluster job's machine is not this one: nothing of it is checked here
    check_runs(micro_plan(acdc_root), micro_plan(acdc_root).cells(out))


def test_a_plan_on_other_data_does_not_count_the_runs_in_its_folder(micro_results, acdc_root, tmp_path):
    # data_root may differ (a moved data folder), but other data reported the runs' scores as its own
    out, _ = micro_results
    other = synthesize("acdc", tmp_path / "other", cases=6, seed=1, size=(32, 32), progress=False)
    with pytest.raises(
        PlanError,
        match=rf"^MPER / 1 labeled / seed 0: --data-root {other} holds other cases than the run in {out}/mper/"
        r"1-labeled/seed0 trained on \(.*test cases: .*\); the plan would count the run's scores, or resume it, as "
        rf"its own: give --data-root the folder it trained on, {acdc_root}, or a copy of it; or move .* away, or "
        "give the experiment another --out$",
    ):
        prepare_plan(micro_plan(other), out)
    copy = shutil.copytree(acdc_root, tmp_path / "copy")  # the same cases elsewhere: the run counts
    _, cells, _ = prepare_plan(micro_plan(copy), out)
    assert [run_state(cell.run_dir) for cell in cells] == [FINISHED]


def test_an_interrupted_run_resumes_on_the_plans_data_folder(acdc_root, tmp_path, monkeypatch):
    data = Path(shutil.copytree(acdc_root, tmp_path / "data"))
    variants = ({"name": "U-Net", "baseline": "labeled-only"},)
    interrupt_after(monkeypatch, 3)
    with pytest.raises(SweepInterrupted):
        run_plan(micro_plan(data, variants=variants), tmp_path / "out")
    monkeypatch.undo()
    moved = data.rename(tmp_path / "moved")  # it resumed on the folder it started on, now gone
    run_plan(micro_plan(moved, variants=variants), tmp_path / "out")
    run_dir = tmp_path / "out" / "u-net" / "1-labeled" / "seed0"
    assert run_state(run_dir) == FINISHED
    assert json.loads((run_dir / "config.json").read_text())["data_root"] == str(moved)


def test_t_sne_maps_that_cannot_be_drawn_are_said_before_the_runs_train(acdc_root, tmp_path, monkeypatch, caplog):
    def missing():
        raise ConfigError("the t-SNE figure needs sklearn: pip install 'mper[figures]'")

    monkeypatch.setattr(experiment, "require_figure_packages", missing)
    said_before = []

    class Recording:
        def run(self, cells):
            said_before.append(list(caplog.messages))
            return []

    with caplog.at_level("WARNING", logger="mper"):
        run_plan(micro_plan(acdc_root, figures={"tsne": ["MPER"]}), tmp_path / "out", Recording())
    (messages,) = said_before
    assert messages == [
        "the t-SNE figure needs sklearn: pip install 'mper[figures]'; the plan's [figures] tsne (MPER) is drawn after "
        "the runs only with them installed: the runs train and the tables are written; install them before the runs "
        "end, or draw the maps later with the same command and --report-only"
    ]


def test_a_failed_run_is_reported_and_the_others_still_run(acdc_root, tmp_path):
    plan = micro_plan(
        acdc_root,
        variants=({"name": "diverges", "set": ["optim.lr=1e30"]}, {"name": "U-Net", "baseline": "labeled-only"}),
    )
    log = tmp_path / "diverges" / "1-labeled" / "seed0" / "train.log"
    with pytest.raises(
        RunsFailed,
        match=r"1 of 2 runs failed \(diverges / 1 labeled / seed 0: .*training stopped without saving.* \(see "
        + re.escape(str(log)),
    ):
        run_plan(plan, tmp_path)
    assert "training stopped without saving" in log.read_text()
    assert run_state(tmp_path / "u-net" / "1-labeled" / "seed0") == FINISHED
    table = (tmp_path / "results.md").read_text()
    assert "| diverges | 1 | - | 0/1 | - |" in table and "1 run(s) not finished yet" in table


def test_the_fully_supervised_baseline_labels_every_training_case(acdc_root, tmp_path):
    plan = micro_plan(acdc_root, variants=({"name": "U-Net, all labeled", "baseline": "full"},))
    written = run_plan(plan, tmp_path)
    (row,) = json.loads(written["results.json"].read_text())["rows"]
    assert (row["budget"], row["labeled"], row["unlabeled"]) == ("all", "3", "0")  # 3 training patients
    assert (tmp_path / "u-net-all-labeled" / "all-labeled" / "seed0" / "metrics.json").exists()


def test_one_training_process_per_device(acdc_root, tmp_path):
    plan = micro_plan(acdc_root, seeds=(0, 1), variants=({"name": "U-Net", "baseline": "labeled-only"},))
    written = run_plan(plan, tmp_path, DevicePoolExecutor(["0", "1"], tmp_path / "logs", device="cpu"))
    logs = sorted((tmp_path / "logs").glob("*.log"))
    assert [path.name for path in logs] == ["u-net_1-labeled_seed0.log", "u-net_1-labeled_seed1.log"]
    devices = {re.match(r"CUDA_VISIBLE_DEVICES=(\d) ", path.read_text()).group(1) for path in logs}
    assert devices == {"0", "1"}
    (row,) = json.loads(written["results.json"].read_text())["rows"]
    assert row["seeds"] == [0, 1]


def test_sigterm_while_the_device_pool_runs_stops_it_as_any_command_is_stopped(tmp_path, monkeypatch, capsys):
    # the pool turns SIGTERM into the one interrupt every command knows (mper.host, not a copy
    # of its own): its trainings are asked to save and stop, the previous handler is back, and
    # the command ends as a terminated one, in one line with exit status 143
    from mper import cli, host
    from mper.experiment import executors

    job = SimpleNamespace(process=SimpleNamespace(poll=lambda: None))
    stopped = []
    monkeypatch.setattr(DevicePoolExecutor, "_start", lambda self, cell, device: job)
    monkeypatch.setattr(DevicePoolExecutor, "_stop", staticmethod(stopped.extend))
    monkeypatch.setattr(executors.time, "sleep", lambda seconds: signal.raise_signal(signal.SIGTERM))
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(host.Terminated) as stop:
        DevicePoolExecutor(["0"], tmp_path / "logs", device="cpu").run(["a cell"])
    assert stopped == [job] and signal.getsignal(signal.SIGTERM) is before
    assert cli._report_stop(stop.value) == 128 + signal.SIGTERM
    assert capsys.readouterr().err == "\nterminated (SIGTERM)\n"


def test_one_submitit_job_per_run(acdc_root, tmp_path):
    pytest.importorskip("submitit")
    plan = micro_plan(acdc_root, variants=({"name": "U-Net", "baseline": "labeled-only"},))
    executor = SubmititExecutor(
        tmp_path / "jobs",
        cluster="local",
        options=ClusterOptions(gpus_per_job=0, cpus_per_job=1, time_minutes=30),
        device="cpu",
    )
    written = run_plan(plan, tmp_path, executor)
    assert run_state(tmp_path / "u-net" / "1-labeled" / "seed0") == FINISHED
    assert len(list((tmp_path / "jobs").glob("*_submitted.pkl"))) == 1  # one job for the one run
    assert "| U-Net | 1 | 0 | 1/1 |" in written["results.md"].read_text()


def test_the_command_lists_runs_and_refuses_what_it_cannot_use(micro_results, acdc_root, tmp_path, capsys):
    out, _ = micro_results
    plan_file = tmp_path / "micro.toml"
    plan_file.write_text(
        f'dataset = "acdc"\ndata_root = "{acdc_root}"\nlabeled = [1]\nseeds = [0, 7]\n'
        f'set = {json.dumps(MICRO)}\n[[variant]]\nname = "MPER"\n'
    )
    experiment_main([str(plan_file), "--out", str(out), "--list"])
    listed = capsys.readouterr().out.splitlines()
    assert re.match(r"finished +MPER / 1 labeled / seed 0 ", listed[0])
    assert re.match(r"new +MPER / 1 labeled / seed 7 ", listed[1])
    nowhere = tmp_path / "nowhere"
    error = one_line_error([str(plan_file), "--data-root", str(nowhere), "--out", str(tmp_path / "o")], capsys)
    # the plan and its data_root named, and the commands that write the data
    assert error.startswith(
        f"mper-experiment: error: {plan_file}: data_root (a relative data_root is taken from the folder the command "
        f"runs in): data folder {nowhere} does not exist: mper-data synth --dataset acdc --out {nowhere} writes"
    )
    assert error.endswith("; no run was started") and not (tmp_path / "o").exists()


def two_variant_plan_file(folder, data_root, labeled):
    """A plan file of a labeled-only U-Net and MPER at the budgets ``labeled``, seed 0."""
    path = folder / "two.toml"
    path.write_text(
        f'dataset = "acdc"\ndata_root = "{data_root}"\nlabeled = {json.dumps(labeled)}\nseeds = [0]\n'
        f'set = {json.dumps(MICRO)}\n[[variant]]\nname = "U-Net"\nbaseline = "labeled-only"\n'
        '[[variant]]\nname = "MPER"\n'
    )
    return path


def one_line_error(arguments, capsys) -> str:
    """The one line ``mper-experiment arguments`` ends in, with exit status 2 and nothing printed."""
    with pytest.raises(SystemExit) as exit_info:
        experiment_main(arguments)
    printed = capsys.readouterr()
    assert exit_info.value.code == 2 and "Traceback" not in printed.err
    assert printed.out == "" and len(printed.err.strip().splitlines()) == 1, printed
    return printed.err.strip()


def pretend_gpus(monkeypatch, free_gib):
    """CUDA on this machine as torch reports it: GPU ``i`` with ``free_gib[i]`` GiB free."""

    def mem_get_info(device=None):
        index = torch.device(device).index if device is not None else None
        return int(free_gib[index or 0] * 2**30), 80 * 2**30

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(free_gib))
    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)


def test_a_device_pool_is_checked_on_each_of_its_gpus(acdc_root, tmp_path, monkeypatch, capsys):
    # --devices 2,3 checked the free memory of cuda:0, where no run of the pool trains: the GPU
    # of the pool with the least free memory is checked, and named
    from mper.experiment import executors

    def no_training(*arguments, **options):
        raise AssertionError("a training process was started")

    monkeypatch.setattr(executors.subprocess, "Popen", no_training)
    pretend_gpus(monkeypatch, [80, 80, 80, 0.001])
    plan = two_variant_plan_file(tmp_path, acdc_root, [1])
    out = tmp_path / "out"
    for listing in ([], ["--list"]):
        error = one_line_error([str(plan), "--out", str(out), "--devices", "2,3", *listing], capsys)
        assert error.startswith(f"mper-experiment: error: {plan}: run U-Net / 1 labeled / seed 0: one training ")
        assert "but only 0.00 GiB is free on cuda:3;" in error and error.endswith(
            "no run was started: change --devices (or the plan's settings) and run the command again"
        )
        assert not out.exists()
    # a GPU the machine lacks is named
    error = one_line_error([str(plan), "--out", str(out), "--devices", "2,4", "--list"], capsys)
    assert error == (
        f"mper-experiment: error: {plan}: --devices: device 'cuda:4' requested but only 4 CUDA device(s) exist; "
        "no run was started"
    )
    # enough memory on the pool's GPUs, little on one it does not use: the runs may start
    pretend_gpus(monkeypatch, [0.001, 80, 80, 80])
    experiment_main([str(plan), "--out", str(out), "--devices", "2,3", "--list"])
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == ["new", "new"]
    # a sweep that itself sees only some GPUs names them by their place among those it sees
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,3")
    assert DevicePoolExecutor(["1", "2", "3"], tmp_path / "logs").machine_device == ["cuda:0", "cuda:1"]
    assert DevicePoolExecutor(["1", "3"], tmp_path / "logs", device="cpu").machine_device == "cpu"


@pytest.mark.parametrize("listing", [False, True])
def test_a_label_budget_beyond_the_data_is_refused_before_any_run_trains(acdc_root, tmp_path, capsys, listing):
    # the data has 3 training patients: the budget 1 could train, 4 cannot
    plan = two_variant_plan_file(tmp_path, acdc_root, [1, 4])
    out = tmp_path / "out"
    error = one_line_error([str(plan), "--out", str(out), *(["--list"] if listing else [])], capsys)
    assert error == (
        f"mper-experiment: error: {plan}: run U-Net / 4 labeled / seed 0: labeled must be between 1 and the 3 "
        f"patients of {acdc_root / 'train_slices.list'}, got 4; no run was started: change the plan (or --set, "
        "--data-root) and run the command again"
    )
    assert not out.exists()  # nothing trained, no results table


@pytest.mark.parametrize("listing", [False, True])
def test_a_data_folder_without_the_layout_is_refused_before_any_run_trains(tmp_path, capsys, listing):
    raw = tmp_path / "raw"  # the public download, not converted: no lists
    (raw / "patient001").mkdir(parents=True)
    (raw / "patient001" / "patient001_frame01.nii.gz").write_bytes(b"")
    plan = two_variant_plan_file(tmp_path, raw, [1])
    out = tmp_path / "out"
    error = one_line_error([str(plan), "--out", str(out), *(["--list"] if listing else [])], capsys)
    assert error.startswith(
        f"mper-experiment: error: {plan}: data_root: {raw} holds the ACDC challenge download"
    ) and error.endswith(
        f"mper-data convert --dataset acdc --source {raw} --out DIR, then pass --data-root DIR; no run was started"
    )
    (raw / "patient001" / "patient001_frame01.nii.gz").unlink()  # a folder of something else
    error = one_line_error([str(plan), "--out", str(out), *(["--list"] if listing else [])], capsys)
    assert error.startswith(
        f"mper-experiment: error: {plan}: run U-Net / 1 labeled / seed 0: list file {raw / 'train_slices.list'} "
        f"not found: expected a text file with one case name per line; the plan's data_root (--data-root) {raw} "
        "must hold ACDC data as mper reads it ("
    )
    assert "mper-data convert --dataset acdc --source RAW --out DIR converts the public download" in error
    assert error.endswith("then give --data-root DIR); no run was started") and "train.log" not in error
    assert not out.exists()


def test_runs_are_checked_once_per_distinct_settings_and_finished_runs_not_at_all(
    micro_results, acdc_root, tmp_path, monkeypatch
):
    checked = []
    monkeypatch.setattr(
        pipeline, "check_before_training", lambda config: checked.append((config.baseline, config.labeled))
    )
    variants = ({"name": "U-Net", "baseline": "labeled-only"}, {"name": "MPER"})
    plan = micro_plan(acdc_root, seeds=(0, 1, 2), variants=variants, labeled=[1, 2])
    check_runs(plan, plan.cells(tmp_path))
    # seeds do not change what is checked: 4 checks for the 12 runs
    assert checked == [("labeled-only", 1), ("none", 1), ("labeled-only", 2), ("none", 2)]
    out, _ = micro_results
    checked.clear()
    finished = micro_plan(tmp_path / "data-moved-away")
    check_runs(finished, finished.cells(out))  # its one run is finished: neither data nor settings are checked
    assert checked == []


def test_a_run_that_fails_before_its_folder_is_made_points_to_no_log(acdc_root, tmp_path):
    data = Path(shutil.copytree(acdc_root, tmp_path / "data"))
    first = (data / "train_slices.list").read_text().split()[0]
    acdc_slice_path(data, first).write_bytes(b"not HDF5")
    plan = micro_plan(data)
    (cell,) = plan.cells(tmp_path / "out")
    check_runs(plan, [cell])  # the lists are sound: the run finds the damaged file as it starts
    (failure,) = LocalExecutor("cpu").run([cell])
    assert "is not a readable HDF5 file" in failure.reason and "(see" not in failure.reason
    assert not cell.run_dir.exists()


def test_a_table_is_the_mean_and_sample_std_over_seeds(tmp_path):
    plan = parse_plan(
        {"dataset": "acdc", "data_root": "d", "labeled": [3], "seeds": [0, 1, 2], "variant": [{"name": "MPER"}]},
        name="made-up",
    )
    cells = plan.cells(tmp_path)
    for cell, dice, hd95 in zip(cells[:2], (0.80, 0.90), (2.0, None)):
        cell.run_dir.mkdir(parents=True)
        means = {"dice": dice, "jaccard": dice - 0.1, "hd95": hd95, "asd": 1.0}
        summary = {"mean": {m: {"mean": v, "std": 0.0, "undefined": 1 if v is None else 0} for m, v in means.items()}}
        (cell.run_dir / "metrics.json").write_text(
            json.dumps({"summary": summary, "table": {"method": "MPER", "labeled": "3", "unlabeled": "67"}})
        )
    (row,) = collect(plan, cells)
    assert row.seeds == [0, 1] and row.missing_seeds == [2]
    assert row.mean("dice") == pytest.approx(0.85) and row.std("dice") == pytest.approx(0.0707107, rel=1e-5)
    assert row.mean("hd95") == 2.0 and math.isnan(row.std("hd95"))  # one defined value
    table = markdown(plan, [row])
    assert "| MPER | 3 | 67 | 2/3 | 85.00 ± 7.07 | 75.00 ± 7.07 | 2.00 | 1.00 ± 0.00 |" in table
    assert "1 run(s) not finished yet, their seeds left out (column Seeds): MPER, 3 labeled: seed 2." in table
    assert "undefined (prediction or ground truth empty) for 1 " in table
    assert "marked *" not in table


def _one_scored_run(folder, variant, means, **record):
    """A plan of one run of ``variant``, its metrics.json holding the mean ``means`` and
    ``record``'s other fields (``summary`` extras under ``summary``); returns (plan, cell)."""
    plan = parse_plan(
        {"dataset": "acdc", "data_root": "d", "labeled": [3], "seeds": [0], "variant": [{"name": variant}]},
        name="made-up",
    )
    (cell,) = plan.cells(folder)
    cell.run_dir.mkdir(parents=True)
    summary = {"mean": {m: {"mean": v, "std": 0.0, "undefined": 0} for m, v in means.items()}}
    summary.update(record.pop("summary", {}))
    (cell.run_dir / "metrics.json").write_text(json.dumps({"summary": summary, **record}))
    return plan, cell


def test_a_row_name_with_a_pipe_keeps_the_numbers_in_their_columns(tmp_path):
    means = {"dice": 0.8, "jaccard": 0.7, "hd95": 2.0, "asd": 1.0}
    plan, cell = _one_scored_run(tmp_path, "MPER | K=3", means)
    table = markdown(plan, collect(plan, [cell]))
    assert "| MPER \\| K=3 | 3 | - | 1/1 | 80.00 | 70.00 | 2.00 | 1.00 |" in table


def test_a_plan_replacing_another_plans_results_says_so(micro_results, acdc_root, tmp_path, caplog):
    out = Path(shutil.copytree(micro_results[0], tmp_path / "out"))
    other = tmp_path / "other.toml"
    other.write_text(
        f'dataset = "acdc"\ndata_root = "{acdc_root}"\nlabeled = [1]\nseeds = [0]\n'
        f'set = {json.dumps(MICRO)}\n[[variant]]\nname = "MPER"\n'
    )
    with caplog.at_level("WARNING", logger="mper"):
        experiment_main([str(other), "--out", str(out), "--report-only"])
    assert caplog.messages == [
        f"{out} held the results of the plan micro; replacing them with those of {other} (its runs are kept: "
        f"mper-experiment micro --out {out} --report-only writes them again; give each plan its own --out)"
    ]
    caplog.clear()
    with caplog.at_level("WARNING", logger="mper"):
        experiment_main([str(other), "--out", str(out), "--report-only"])  # its own table: nothing to say
    assert caplog.messages == []


def test_the_same_plan_given_from_another_folder_is_not_another_plan(
    micro_results, acdc_root, tmp_path, monkeypatch, caplog
):
    # plans/x.toml run from the repository, then ../repo/plans/x.toml from a folder beside it:
    # "held the results of the plan plans/x.toml" (taken from the second folder) was warned
    out = Path(shutil.copytree(micro_results[0], tmp_path / "out"))
    plans, elsewhere = tmp_path / "repo" / "plans", tmp_path / "elsewhere"
    plans.mkdir(parents=True)
    elsewhere.mkdir()
    text = (
        f'dataset = "acdc"\ndata_root = "{acdc_root}"\nlabeled = [1]\nseeds = [0]\n'
        f'set = {json.dumps(MICRO)}\n[[variant]]\nname = "MPER"\n'
    )
    (plans / "x.toml").write_text(text)
    (plans / "y.toml").write_text(text)

    def warnings(folder, plan):
        caplog.clear()
        monkeypatch.chdir(folder)
        with caplog.at_level("WARNING", logger="mper"):
            experiment_main([str(plan), "--out", str(out), "--report-only"])
        return caplog.messages

    assert len(warnings(plans.parent, "plans/x.toml")) == 1  # it replaces the table of the plan micro
    assert warnings(elsewhere, "../repo/plans/x.toml") == []
    assert json.loads((out / "results.json").read_text())["plan"] == str((plans / "x.toml").resolve())
    assert warnings(elsewhere, plans / "x.toml") == []
    assert warnings(plans, "x.toml") == []
    # recorded as given by an earlier version, relative to a folder not known now
    results = json.loads((out / "results.json").read_text())
    (out / "results.json").write_text(json.dumps({**results, "plan": "plans/x.toml"}))
    assert warnings(elsewhere, "../repo/plans/x.toml") == []
    # another plan still says so, whatever its content
    (y_warning,) = warnings(elsewhere, "../repo/plans/y.toml")
    assert y_warning.startswith(f"{out} held the results of the plan {(plans / 'x.toml').resolve()}; replacing")


def test_distance_means_with_classes_predicted_nowhere_scored_0_are_marked_as_in_each_runs_table(tmp_path):
    """A run that never predicts a class scores its distances 0 (the authors' rule): the
    sweep's table would show it far better on 95HD and ASD without a word."""
    means = {"dice": 0.8, "jaccard": 0.7, "hd95": 0.85, "asd": 0.16}
    nowhere = {"predicted_nowhere": {"results": 2, "cases": 2, "classes": {}}}
    plan, cell = _one_scored_run(tmp_path, "MPER", means, summary=nowhere, split="val")
    (row,) = collect(plan, [cell])
    table = markdown(plan, [row])
    assert "1 run(s) were scored on their validation cases, not test cases" in table
    assert "| 80.00 | 70.00 | 0.85* | 0.16* |" in table
    assert "95HD and ASD marked * count 2 case-class result(s) in all as 0: a class predicted nowhere" in table
    assert row.to_dict()["distances_of_classes_predicted_nowhere_as_zero"] == 2


@pytest.mark.slow
def test_the_tiny_plan_runs_end_to_end_from_the_command_line(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from mper.cli import experiment_main; experiment_main()",
            "tiny",
            "--out",
            str(tmp_path / "runs"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "runs" / "results.json").read_text())
    assert [row["method"] for row in results["rows"]] == ["U-Net", "MPER"]
    for row in results["rows"]:
        assert row["seeds"] == [0, 1]
        dice = row["metrics"]["dice"]["values"]
        # every seed learned something (a background-only network scores 0) and the seeds differ
        assert dice[0] != dice[1] and min(dice) > 0.1
        for run, value in zip(row["runs"], dice):  # the table holds each run's own test mean
            assert value == json.loads((Path(run) / "metrics.json").read_text())["summary"]["mean"]["dice"]["mean"]
    for name in ("results.md", "results.csv", "results.png", "tsne-mper-2.png"):
        assert (tmp_path / "runs" / name).stat().st_size > 0
    assert "| MPER | 2 |" in result.stdout
