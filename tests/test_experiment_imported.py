"""Experiment plans on scans imported by ``mper-data import``: a plan whose data_root holds
an import trains on it (each run an ordinary ``mper-train`` on that folder) and its table
names the distances in mm, as the runs' own evaluation does."""

from __future__ import annotations

import json

import pytest

from mper import cli
from mper.datasets import get_dataset
from mper.datasets.registry import _REGISTRY
from mper.experiment import DevicePoolExecutor, prepare_plan, run_plan
from mper.experiment.plan import PlanError, parse_plan
from mper.experiment.report import collect, markdown
from mper.experiment.runs import FINISHED, run_state
from tiny_runs import TWO_ITERATIONS

pytestmark = pytest.mark.usefixtures("only_built_in_datasets")

NAME = "Synth"
#: Two iterations a stage of a 4-filter V-Net; every test case scored once.
TINY = ["network.base_filters=4", *TWO_ITERATIONS]


@pytest.fixture(scope="module")
def imported_root(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scans")
    raw, root = tmp / "raw", tmp / "imported"
    cli.data_main(["synth", "--format", "nnunet", "--out", str(raw), "--cases", "7", "--size", "20", "20", "6"])
    cli.data_main(["import", "--source", str(raw), "--out", str(root), "--dims", "3d"])
    return root


def _document(data_root, **extra):
    """A plan without ``dataset``: the import's plan.toml names it."""
    return {
        "title": "imported",
        "data_root": str(data_root),
        "preset": "demo",
        "labeled": [2],
        "seeds": [0, 1],
        "set": TINY,
        "variant": [{"name": "MPER"}],
        **extra,
    }


def test_a_plan_on_imported_scans_trains_each_run_with_mper_train_and_tabulates_them(imported_root, tmp_path):
    plan = parse_plan(_document(imported_root), name="imported")
    assert plan.dataset == NAME and get_dataset(NAME).scans is not None
    _, cells, _ = prepare_plan(plan, tmp_path)
    assert "--dataset" not in cells[0].train_arguments()  # mper-train reads the import's plan.toml

    written = run_plan(plan, tmp_path, DevicePoolExecutor(["0", "1"], tmp_path / "logs", device="cpu"))

    runs = [tmp_path / "mper" / "2-labeled" / f"seed{seed}" for seed in (0, 1)]
    assert [run_state(run) for run in runs] == [FINISHED, FINISHED]
    run_metrics = [json.loads((run / "metrics.json").read_text()) for run in runs]
    for run, cell in zip(runs, cells):
        saved = json.loads((run / "config.json").read_text())
        assert (saved["dataset"], saved["labeled"], saved["seed"]) == (NAME, 2, cell.seed)
        assert (run / "plan.toml").is_file()  # the run keeps the plan it trained with
    (row,) = json.loads(written["results.json"].read_text())["rows"]
    assert row["seeds"] == [0, 1]
    for metric in ("dice", "hd95"):
        assert row["metrics"][metric]["values"] == [
            metrics["summary"]["mean"][metric]["mean"] for metrics in run_metrics
        ]
    table = written["results.md"].read_text()
    assert "95HD and ASD in mm" in table and "| MPER | 2 |" in table


def test_a_plan_file_without_dataset_lists_its_runs_from_the_command_line(imported_root, tmp_path, capsys):
    plan_file = tmp_path / "mine.toml"
    plan_file.write_text(
        f'data_root = "{imported_root}"\nlabeled = [2]\nseeds = [5]\nset = {json.dumps(TINY)}\n'
        '[[variant]]\nname = "U-Net"\nbaseline = "labeled-only"\n'
    )
    cli.experiment_main([str(plan_file), "--out", str(tmp_path / "out"), "--list"])
    (line,) = capsys.readouterr().out.splitlines()
    assert line.split()[:2] == ["new", "U-Net"] and line.endswith("u-net/2-labeled/seed5")


def test_the_tables_of_built_in_datasets_keep_voxels(imported_root):
    acdc = parse_plan({**_document("d"), "dataset": "acdc"}, name="acdc")
    imported = parse_plan(_document(imported_root), name="imported")
    assert "95HD and ASD in voxels" in markdown(acdc, [])
    assert "95HD and ASD in mm" in markdown(imported, collect(imported, imported.cells("nowhere")))


def test_a_plan_refuses_a_missing_dataset_and_synthetic_data_for_imported_scans(imported_root, tmp_path):
    with pytest.raises(
        PlanError,
        match=rf"plan 'p': dataset must be one of la, acdc, or left out when data_root holds scans imported by "
        rf"mper-data import; it is missing, and {tmp_path} holds no plan.toml of mper-data import$",
    ):
        parse_plan(_document(tmp_path), name="p")
    (tmp_path / "dataset.json").write_text("{}")
    with pytest.raises(
        PlanError,
        match=rf"plan 'p': data_root {tmp_path} is a raw dataset \(it holds dataset.json\), not an imported one: "
        rf"import it first, mper-data import --source {tmp_path} --out DIR, then set data_root \(or --data-root\) "
        r"to DIR$",
    ):
        parse_plan(_document(tmp_path), name="p")
    with pytest.raises(
        PlanError, match=r"\[synthetic\] writes data of a built-in dataset \(la, acdc\), but Synth is imported scans"
    ):
        parse_plan(_document(imported_root, synthetic={"cases": 5}), name="p")
    with pytest.raises(
        PlanError,
        match=rf"plan 'p': dataset = 'la', but data_root {imported_root} holds the scans 'Synth' imported by "
        r"mper-data import; leave dataset out \(or set it to 'Synth'\)",
    ):
        parse_plan(_document(imported_root, dataset="la"), name="p")
    assert parse_plan(_document(imported_root, dataset=NAME), name="p").dataset == NAME


def test_a_run_builds_its_settings_in_a_process_that_never_read_the_plan(imported_root, tmp_path):
    """As a cluster job does: the cell alone registers the import from its data_root."""
    (cell, *_) = parse_plan(_document(imported_root), name="imported").cells(tmp_path)
    del _REGISTRY[NAME]
    config = cell.config()
    assert (config.dataset, config.labeled, config.data_root) == (NAME, 2, str(imported_root))
    assert get_dataset(NAME).scans is not None
