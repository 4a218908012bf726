"""The presets against the paper and the authors' code: every recipe setting pinned by
value, and the recipe table of docs/recipe.md generated from the preset files."""

from __future__ import annotations

from pathlib import Path

import pytest

from mper.presets.table import (
    BEGIN_MARKER,
    END_MARKER,
    SILENT,
    paper_cell,
    preset_values,
    recipe_rows,
    recipe_table,
    reference_cell,
    replace_table,
)
from mper.train.config import load_config

RECIPE_PAGE = Path(__file__).resolve().parents[1] / "docs" / "recipe.md"

#: Settings outside the recipe: the experiment's own choices and bookkeeping.
NOT_RECIPE = {
    "dataset",
    "data_root",
    "labeled",
    "preset",
    "num_classes",
    "device",
    "ops",
    "out",
    "baseline",
    "amp",
    "compile",
    "channels_last",
    "data.num_workers",
    "eval.checkpoint_interval",
    "eval.log_interval",
    "eval.num_figures",
    "eval.pseudo_label_dice",
    "eval.teacher_dice",
    "prototypes.kmeans_iterations",  # Lloyd iterations, unused by the mini-batch k-means both presets run
    "run_id",  # the run's identity, drawn when it starts
    "data.fold",
    "data.folds",  # cross-validation of imported datasets; the paper's benchmarks have none
    # how several processes share the work, not what they compute
    "distributed.sync_batchnorm",
    "distributed.timeout",
    "distributed.check_bank",
    "distributed.force_group",
}

#: (setting, LA reference, ACDC reference, LA paper, ACDC paper): the recipe switches.
PINNED = [
    ("selftrain.teacher_mode", "train", "train", "train", "train"),
    ("selftrain.ema_schedule", "constant", "constant", "constant", "constant"),
    ("selftrain.ema_scope", "parameters", "state", "parameters", "state"),
    ("selftrain.ema_decay", 0.99, 0.99, 0.999, 0.999),
    ("selftrain.forward_passes", 2, 2, 2, 2),
    (
        "selftrain.forward_order",
        "labeled-surround-first",
        "unlabeled-surround-first",
        "labeled-surround-first",
        "unlabeled-surround-first",
    ),
    ("selftrain.contrastive_reduction", "sum", "sum", "sum", "sum"),
    ("selftrain.keep_better_stage", False, False, True, True),
    ("selftrain.consistency_scale", 0.5, 0.5, 1.0, 1.0),
    ("selftrain.ramp_weight", 1.0, 0.5, 1.0, 1.0),
    ("selftrain.rampup_epochs", 40, 200, 100, 200),
    ("selftrain.contrastive_weight", 0.02, 0.001, 0.02, 0.1),
    ("selftrain.iterations", 8000, 30000, 15000, 30000),
    ("pretrain.iterations", 1300, 10000, 2000, 10000),
    ("pretrain.loss", "whole-image", "per-region", "whole-image", "per-region"),
    ("prototypes.update_steps", "region-wise", "region-wise", "region-wise", "region-wise"),
    ("prototypes.momentum", 0.99, 0.99, 0.9, 0.9),
    ("prototypes.contrastive_ignore_row", 0, 0, None, None),
    ("prototypes.update_background", False, False, False, False),
    ("prototypes.kmeans", "minibatch", "minibatch", "minibatch", "minibatch"),
    ("prototypes.kmeans_max_voxels", 0, 0, 0, 0),
    ("prototypes.kmeans_augment", True, True, True, True),
    ("losses.dice", "per-sample-linear", "pooled-squared", "per-sample-linear", "pooled-squared"),
    ("losses.dice_background", "region", "whole-image", "region", "whole-image"),
    ("losses.dice_smooth", 1e-5, 1e-10, 1e-5, 1e-10),
    ("optim.carry_over", True, True, True, True),
    ("data.val_split", "test", "val", "test", "val"),
    ("data.image_interpolation", "nearest", "nearest", "nearest", "nearest"),
    ("eval.val_interval", 200, 200, 200, 200),
    ("eval.postprocess", "largest-component", "none", "largest-component", "none"),
    ("eval.empty_prediction", "zero", "zero", "zero", "zero"),
    ("network.classifier_kernel", 1, 3, 1, 1),
]


@pytest.mark.parametrize("setting, la_reference, acdc_reference, la_paper, acdc_paper", PINNED)
def test_presets_pin_every_recipe_setting(setting, la_reference, acdc_reference, la_paper, acdc_paper):
    section, _, key = setting.rpartition(".")
    for dataset, preset, expected in (
        ("la", "reference", la_reference),
        ("acdc", "reference", acdc_reference),
        ("la", "paper", la_paper),
        ("acdc", "paper", acdc_paper),
    ):
        config = load_config(dataset, preset)
        value = config.network[key] if section == "network" else getattr(getattr(config, section), key)
        assert value == expected, (dataset, preset, setting)


def test_strict_presets_select_on_held_out_cases_and_count_missed_structures():
    la, acdc = load_config("la", "strict"), load_config("acdc", "strict")
    assert (la.data.val_split, la.data.holdout_cases) == ("holdout", 4)
    assert la.eval.empty_prediction == acdc.eval.empty_prediction == "undefined"
    assert load_config("la", "reference+strict").selftrain.iterations == 8000


def test_every_recipe_setting_has_a_row_and_every_row_a_setting():
    rows = {row.setting for row in recipe_rows()}
    for dataset, values in preset_values("paper").items():
        assert set(values) - NOT_RECIPE - rows == set(), dataset
    assert rows - set(preset_values("paper")["la"]) - set(preset_values("paper")["acdc"]) == set()


def test_reference_does_what_the_authors_code_does_in_every_row():
    reference = preset_values("reference")
    for row in recipe_rows():
        assert reference_cell(row, reference) == "same" or row.reference_note, row.setting


#: Where preset ``paper`` deliberately departs from the authors' code on a point the paper
#: is silent about; the row's ``paper_note`` says why.
DELIBERATE = {"selftrain.keep_better_stage"}


def test_paper_follows_the_paper_where_it_speaks_and_the_authors_where_it_is_silent():
    paper = preset_values("paper")
    for row in recipe_rows():
        cell = paper_cell(row, paper)
        if row.setting in DELIBERATE:
            assert row.paper_note and row.paper_note in cell and row.paper is SILENT, row.setting
            continue
        assert not row.paper_note, row.setting
        assert set(cell.replace("LA: ", "").replace("ACDC: ", "").split("; ")) <= {"as paper", "as authors"}, (
            row.setting
        )
    stated = [row.setting for row in recipe_rows() if row.paper is not SILENT]
    assert {"selftrain.ema_decay", "prototypes.momentum", "network.classifier_kernel"} <= set(stated)


def test_paper_and_reference_differ_only_where_the_paper_says_so():
    reference, paper = preset_values("reference"), preset_values("paper")
    for row in recipe_rows():
        if row.paper is SILENT and row.setting not in DELIBERATE:
            for dataset in row.datasets:
                assert reference[dataset][row.setting] == paper[dataset][row.setting], (dataset, row.setting)


def test_the_recipe_page_holds_the_generated_recipe_table():
    page = RECIPE_PAGE.read_text()
    assert replace_table(page, recipe_table()) == page, (
        "docs/recipe.md's recipe table is stale: run python -m mper.presets.table --write docs/recipe.md"
    )


def test_replacing_the_table_keeps_everything_around_it():
    document = f"intro\n{BEGIN_MARKER}\nold\n{END_MARKER}\noutro\n"
    assert replace_table(document, "new\n") == f"intro\n{BEGIN_MARKER}\nnew\n{END_MARKER}\noutro\n"
    with pytest.raises(ValueError, match="markers"):
        replace_table("no table here", "new\n")
