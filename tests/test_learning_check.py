"""The learning check's runs: the recipe under test with the check's own sizes, never the demo's."""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import pytest

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
    results = [{"family": "scanners", "recipe": "paper", "method": method, "seed": seed, "test_dice": dice,
                "selftrain_beat_pretrain": True, **{key: 0.5 for key in check.DIAGNOSTICS}}
               for method, scores in {"mper": (0.7, 0.8), "bcp": (0.8, 0.8), "labeled-only": (0.6, 0.7)}.items()
               for seed, dice in zip((1, 2), scores)]
    measured = check.provenance_line({"commit": "0123abc", "mper": "0.1.0", "kernel_version": 1})
    table = check.markdown(results, args, "a CPU", measured)

    assert "{" not in table
    assert table.splitlines()[2] == "Measured at commit 0123abc (mper 0.1.0, kernel version 1)."
    assert "2000 pre-training + 600 self-training iterations; labeled-only: 2600 iterations" in table
    assert "network.channels=[8, 16, 32, 64, 128]" in table
    assert "| scanners | paper | 75.00 ± 5.00 | 80.00 ± 0.00 | 65.00 ± 5.00 | yes | **no** |" in table
