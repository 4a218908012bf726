"""The learning check's runs: the recipe under test with the check's own sizes, never the demo's."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from mper.eval.report import summarize
from mper.train.config import load_config

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "learning_check.py"


@pytest.fixture(scope="module")
def check():
    spec = importlib.util.spec_from_file_location("learning_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    sys.path.insert(0, str(SCRIPT.parent))  # its sibling modules, as when it runs as a script
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(SCRIPT.parent))
        del sys.modules[spec.name]


def _config_of(command: list[str]):
    preset = command[command.index("--preset") + 1]
    assignments = [command[i + 1] for i, word in enumerate(command) if word == "--set"]
    return preset, load_config("acdc", preset, assignments=assignments)


@pytest.mark.parametrize("recipe", ["paper", "reference"])
@pytest.mark.parametrize("method", ["mper", "bcp", "labeled-only"])
def test_runs_take_the_recipe_and_the_checks_own_sizes(check, monkeypatch, tmp_path, recipe, method):
    monkeypatch.setattr(check, "data_root", lambda work, family: work / f"data-{family}")
    args = argparse.Namespace(pretrain=30, selftrain=45, assignments=["selftrain.contrastive_weight=0.01"])
    command = check.train_command(check.Run("thin", recipe, method, 2), tmp_path, args)
    preset, config = _config_of(command)

    assert preset == recipe
    assert list(config.network["channels"]) == [8, 16, 32, 64, 128]
    assert tuple(config.data.patch_size) == check.DATA_SIZE
    assert (config.data.batch_size, config.data.labeled_batch_size) == (8, 4)
    assert config.selftrain.ema_decay == 0.99
    assert (config.pretrain.iterations, config.selftrain.iterations) == (30, 45)
    assert config.selftrain.rampup_epochs == pytest.approx(45 / 150)
    assert config.selftrain.contrastive_weight == 0.01  # --set comes last and wins
    paper_or_reference = load_config("acdc", recipe)
    assert config.selftrain.consistency_scale == paper_or_reference.selftrain.consistency_scale
    assert config.network["classifier_kernel"] == paper_or_reference.network["classifier_kernel"]
    assert ("--baseline" in command) == (method != "mper")
    assert command[command.index("--labeled") + 1] == str(check.LABELED)


def test_table_states_the_budget_and_compares_the_means(check):
    args = argparse.Namespace(pretrain=2000, selftrain=600, assignments=[], families=["scanners"])
    results = [
        {
            "family": "scanners",
            "recipe": "paper",
            "method": method,
            "seed": seed,
            "test_dice": dice,
            "selftrain_beat_pretrain": True,
            **{key: 0.5 for key in check.DIAGNOSTICS},
        }
        for method, scores in {"mper": (0.7, 0.8), "bcp": (0.8, 0.8), "labeled-only": (0.6, 0.7)}.items()
        for seed, dice in zip((1, 2), scores)
    ]
    measured = check.provenance_line({"commit": "0123abc", "mper": "0.1.0", "kernel_version": 1})
    table = check.markdown(results, args, "a CPU", measured)

    assert "{" not in table
    assert table.splitlines()[2] == "Measured at commit 0123abc (mper 0.1.0, kernel version 1)."
    assert "2000 pre-training + 600 self-training iterations; labeled-only: 2600 iterations" in table
    assert "network.channels=[8, 16, 32, 64, 128]" in table
    assert "| scanners | paper | 75.00 ± 5.00 | 80.00 ± 0.00 | 65.00 ± 5.00 | yes | **no** |" in table


def test_a_run_records_all_four_metrics_per_class_from_its_metrics_file(check, tmp_path):
    per_case = {  # two cases, classes 1-3, as mper.eval.metrics.case_metrics scores them
        "a": {
            1: {"dice": 0.8, "jaccard": 0.6, "hd95": 2.0, "asd": 0.5},
            2: {"dice": 0.6, "jaccard": 0.4, "hd95": 5.0, "asd": 1.5},
            3: {"dice": 0.9, "jaccard": 0.8, "hd95": 1.0, "asd": 0.25},
        },
        "b": {
            1: {"dice": 0.6, "jaccard": 0.4, "hd95": 4.0, "asd": 1.5},
            2: {"dice": 0.0, "jaccard": 0.0, "hd95": math.nan, "asd": math.nan},
            3: {"dice": 0.7, "jaccard": 0.6, "hd95": 3.0, "asd": 0.75},
        },
    }
    run = check.Run("standard", "paper", "mper", 1)
    run.folder(tmp_path).mkdir(parents=True)
    summary = json.loads(json.dumps(summarize(per_case)))  # as metrics.json holds it: string labels, NaN as null
    (run.folder(tmp_path) / "metrics.json").write_text(json.dumps({"summary": summary}))

    result = check.run_result(run, tmp_path)

    assert result["test_class_metrics"]["1"] == pytest.approx({"dice": 0.7, "jaccard": 0.5, "hd95": 3.0, "asd": 1.0})
    assert result["test_class_metrics"]["2"] == pytest.approx({"dice": 0.3, "jaccard": 0.2, "hd95": 5.0, "asd": 1.5})
    assert result["test_class_metrics"]["3"] == pytest.approx({"dice": 0.8, "jaccard": 0.7, "hd95": 2.0, "asd": 0.5})
    assert result["test_metrics"]["dice"] == pytest.approx((0.8 + 0.6 + 0.9) / 6 + (0.6 + 0.0 + 0.7) / 6)


def test_the_per_class_table_holds_every_metric_of_every_class_over_seeds(check):
    args = argparse.Namespace(pretrain=2000, selftrain=600, assignments=[], families=["thin"])
    per_seed = {  # class 2 of seed 2: predicted nowhere, distances undefined
        1: {
            "1": {"dice": 0.7, "jaccard": 0.5, "hd95": 2.0, "asd": 1.0},
            "2": {"dice": 0.6, "jaccard": 0.4, "hd95": 6.0, "asd": 2.0},
        },
        2: {
            "1": {"dice": 0.9, "jaccard": 0.7, "hd95": 4.0, "asd": 3.0},
            "2": {"dice": 0.0, "jaccard": 0.0, "hd95": None, "asd": None},
        },
    }
    results = [
        {
            "family": "thin",
            "recipe": "paper",
            "method": "mper",
            "seed": seed,
            "test_dice": 0.5,
            "test_class_metrics": classes,
            "selftrain_beat_pretrain": True,
            **{key: 0.5 for key in check.DIAGNOSTICS},
        }
        for seed, classes in per_seed.items()
    ]
    table = check.markdown(results, args, "a CPU", "Measured at commit 0123abc (mper 0.1.0, kernel version 1).")

    assert "| family | recipe | method | class | Dice (%) | Jaccard (%) | 95HD (voxels) | ASD (voxels) |" in table
    assert "| thin | paper | mper | RV | 80.00 ± 10.00 | 60.00 ± 10.00 | 3.00 ± 1.00 | 2.00 ± 1.00 |" in table
    assert "| thin | paper | mper | myocardium | 30.00 ± 30.00 | 20.00 ± 20.00 | 6.00 ± 0.00 | 2.00 ± 0.00 |" in table
