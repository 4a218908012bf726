"""The shipped experiment plans against the paper's tables, and plan files that are wrong.

Each shipped plan is expanded into its runs; every run's full config is compared with
the `paper` preset: it may differ only in what the paper's table varies (the row's
switch, the label budget, the seed).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mper.cli import experiment_main
from mper.datasets import get_dataset
from mper.experiment import SHIPPED_PLANS, find_plan, load_plan, run_plan
from mper.experiment.plan import PlanError, parse_plan
from mper.train.config import load_config
from mper.train.resume import setting_changes

REPO = Path(__file__).resolve().parents[1]
SEEDS = [1337, 1338, 1339]
PROTOTYPE_HEAD_OFF = {"baseline": "bcp"}

#: plan -> (dataset, label budgets, seeds, {row: settings that differ from `paper`}).
PAPER_TABLES = {
    # Table I: V-Net at 4 / 8 / all 80 labeled, BCP and MPER at 4 / 8
    "la-main": (
        "la",
        [4, 8],
        SEEDS,
        {
            "V-Net": {"baseline": "labeled-only"},
            "V-Net, all labeled": {"baseline": "full"},
            "BCP": PROTOTYPE_HEAD_OFF,
            "MPER": {},
        },
    ),
    # Table II: the same rows on ACDC at 3 / 7 / all 70 labeled patients
    "acdc-main": (
        "acdc",
        [3, 7],
        SEEDS,
        {
            "U-Net": {"baseline": "labeled-only"},
            "U-Net, all labeled": {"baseline": "full"},
            "BCP": PROTOTYPE_HEAD_OFF,
            "MPER": {},
        },
    ),
    # Table III: ACDC, 5% labeled; the losses added one by one, and the update off
    "acdc-components": (
        "acdc",
        [3],
        SEEDS,
        {
            "L_cons^l": PROTOTYPE_HEAD_OFF,
            "L_cons^l + L_cons^p": {"selftrain.contrastive_weight": 0.0},
            "L_cons^l + L_cons^p + L_cont": {},
            "L_cons^l + L_cons^p + L_cont, no prototype update": {"prototypes.update_source": "none"},
        },
    ),
    # Table IV: LA, 10% labeled; the voxels that update the prototypes
    "la-update-source": (
        "la",
        [8],
        SEEDS,
        {
            f"update from={source}": {} if source == "both" else {"prototypes.update_source": source}
            for source in ("none", "labeled", "unlabeled", "both")
        },
    ),
    # Table V: ACDC, 5% labeled; K = 1..5
    "acdc-prototypes": (
        "acdc",
        [3],
        SEEDS,
        {f"K={k}": {} if k == 3 else {"prototypes.per_class": k} for k in range(1, 6)},
    ),
    # Fig. 5: ACDC, 20% labeled; without and with the prototype classifier
    "acdc-tsne": ("acdc", [14], [1337], {"BCP": PROTOTYPE_HEAD_OFF, "MPER": {}}),
}
#: Plans that are not the paper's: what they are for is checked by their own tests.
OWN_PLANS = {"tiny"}


def test_every_shipped_plan_is_checked_here_and_lives_in_experiments():
    shipped = {path.stem for path in SHIPPED_PLANS.glob("*.toml")}
    assert shipped == set(PAPER_TABLES) | OWN_PLANS
    assert {path.stem for path in (REPO / "experiments").glob("*.toml")} == shipped


@pytest.mark.parametrize("name", sorted(PAPER_TABLES))
def test_a_shipped_plan_trains_what_the_papers_table_describes(name, tmp_path):
    dataset, budgets, seeds, rows = PAPER_TABLES[name]
    plan = load_plan(find_plan(name))
    cells = plan.cells(tmp_path)
    assert plan.dataset == dataset and list(plan.seeds) == seeds
    if name.endswith("-main"):  # the paper's 5% and 10%, as the dataset states them
        assert tuple(budgets) == get_dataset(dataset).label_budgets
    assert [row for row, _, _ in plan.rows()] == list(rows)
    expected_cells = set()
    for row, changes in rows.items():
        row_budgets = [None] if changes.get("baseline") == "full" else budgets
        expected_cells |= {(row, labeled, seed) for labeled in row_budgets for seed in seeds}
    assert {(cell.variant, cell.labeled, cell.seed) for cell in cells} == expected_cells
    for cell in cells:
        config = cell.config()
        paper = load_config(
            dataset,
            "paper",
            {"data_root": cell.data_root, "seed": cell.seed, "out": config.out, "labeled": config.labeled},
        )
        changed = {setting: new for setting, (_, new) in setting_changes(paper.to_dict(), config).items()}
        assert changed == rows[cell.variant], (name, cell.name)
        if cell.labeled is not None:
            assert config.labeled == cell.labeled


def test_runs_go_seed_by_seed_into_one_folder_each(tmp_path):
    plan = load_plan(find_plan("acdc-main"))
    cells = plan.cells(tmp_path)
    assert [cell.seed for cell in cells] == sorted(cell.seed for cell in cells)
    assert len({cell.run_dir for cell in cells}) == len(cells) == 3 * (3 * 2 + 1)
    full = [cell for cell in cells if cell.baseline == "full"]
    assert [cell.run_dir.relative_to(tmp_path).as_posix() for cell in full] == [
        f"u-net-all-labeled/all-labeled/seed{seed}" for seed in SEEDS
    ]
    mper = next(cell for cell in cells if cell.variant == "MPER" and cell.labeled == 7)
    assert mper.run_dir.relative_to(tmp_path).as_posix() == "mper/7-labeled/seed1337"
    assert mper.train_arguments("cuda") == [
        "--dataset",
        "acdc",
        "--preset",
        "paper",
        "--data-root",
        "data/acdc",
        "--seed",
        "1337",
        "--out",
        str(mper.run_dir),
        "--labeled",
        "7",
        "--device",
        "cuda",
    ]


@pytest.mark.parametrize("name, folder", [("..", "run"), (".", "run"), ("../MPER", "mper"), ("v2.", "v2")])
def test_a_row_trains_in_a_folder_of_its_own_inside_the_output_folder(tmp_path, name, folder):
    plan = parse_plan({**MINIMAL, "variant": [{"name": name}]}, name="dots")
    (cell,) = plan.cells(tmp_path / "out")
    assert cell.run_dir == tmp_path / "out" / folder / "3-labeled" / "seed1"


def test_a_setting_the_plan_lays_out_is_refused_from_the_command_line():
    with pytest.raises(PlanError, match=r"^--set: 'labeled=2' would give every run labeled = 2 .*\(or a variant's"):
        load_plan(find_plan("acdc-prototypes")).with_changes(assignments=["selftrain.iterations=10", "labeled=2"])


def test_a_seed_given_twice_on_the_command_line_is_refused(tmp_path, capsys):
    # one run counted as two seeds: "2/2" in the table, its value twice in the mean, a std of 0
    with pytest.raises(PlanError, match=r"^--seeds lists seed 1 twice \(1,2,1\); give each seed once$"):
        load_plan(find_plan("acdc-prototypes")).with_changes(seeds=[1, 2, 1])
    with pytest.raises(SystemExit) as exit_info:
        experiment_main(["tiny", "--seeds", "3,3", "--out", str(tmp_path / "out"), "--report-only"])
    assert exit_info.value.code == 2 and "--seeds lists seed 3 twice" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_plan_can_change_its_data_seeds_and_settings(tmp_path):
    plan = load_plan(find_plan("acdc-prototypes")).with_changes(
        data_root="elsewhere", seeds=[5], assignments=["selftrain.iterations=10"]
    )
    cells = plan.cells(tmp_path)
    assert len(cells) == 5 and {cell.seed for cell in cells} == {5}
    configs = [cell.config() for cell in cells]
    assert [config.prototypes.per_class for config in configs] == [1, 2, 3, 4, 5]
    assert {config.selftrain.iterations for config in configs} == {10}
    assert {config.data_root for config in configs} == {"elsewhere"}


MINIMAL = {"dataset": "acdc", "data_root": "d", "labeled": [3], "seeds": [1], "variant": [{"name": "MPER"}]}


@pytest.mark.parametrize("dataset, budgets", [("acdc", (3, 7)), ("la", (4, 8))])
def test_a_plan_without_budgets_takes_the_datasets_usual_ones(dataset, budgets):
    document = {key: value for key, value in MINIMAL.items() if key != "labeled"}
    assert parse_plan({**document, "dataset": dataset}, name="default").labeled == budgets


@pytest.mark.parametrize(
    "change, message",
    [
        ({"labeled": [3, 3]}, "labeled lists a value twice"),
        ({"seeds": []}, "seeds must be a non-empty list of integers >= 0"),
        ({"dataset": "brats"}, "dataset must be one of la, acdc"),
        ({"epochs": 3}, "unknown key epochs"),
        ({"variant": []}, "at least one [[variant]]"),
        ({"variant": [{"name": "A"}, {"name": "A"}]}, "two variants are named 'A'"),
        (
            {"variant": [{"name": "A", "baseline": "fully"}]},
            "variant[0].baseline must be one of none, labeled-only, full, bcp",
        ),
        ({"variant": [{"name": "A", "set": "x=1"}]}, "variant[0].set must be a list of strings"),
        (
            {"variant": [{"name": "All", "baseline": "full", "labeled": [3]}]},
            'variant[0].labeled = [3] has no effect on baseline = "full", which labels every training case',
        ),
        ({"variant": [{"name": "A", "iterations": 5}]}, "unknown key variant[0].iterations"),
        (
            {"set": ["labeled=2"]},
            "set: 'labeled=2' would give every run labeled = 2 while its folder and its row say otherwise; set it "
            "with labeled = [...] (or a variant's labeled)",
        ),
        (
            {"variant": [{"name": "A", "set": [" seed = 4"]}]},
            "variant[0].set: ' seed = 4' would give every run seed = 4",
        ),
        ({"set": ["baseline=bcp"]}, "set it with a variant's baseline"),
        ({"sweep": {"setting": "prototypes.per_class", "values": []}}, "sweep.values must be a non-empty list"),
        (
            {"sweep": {"setting": "labeled", "values": [2, 3]}},
            "sweep.setting = 'labeled' is laid out by the plan itself (each run's folder and row name it); set it "
            "with labeled = [...] (or a variant's labeled) instead of a [sweep]",
        ),
        ({"sweep": {"setting": "seed", "values": [2, 3]}}, "set it with seeds = [...] (or --seeds) instead"),
        ({"sweep": {"setting": "optim.lr", "values": [0.01, 0.001, 0.01]}}, "sweep.values lists 0.01 twice"),
        ({"sweep": {"setting": "prototypes.per_class", "values": [2, 2.0]}}, "sweep.values lists 2.0 twice"),
        (
            {
                "variant": [{"name": "MPER"}, {"name": "U-Net", "baseline": "labeled-only"}],
                "sweep": {"setting": "prototypes.per_class", "values": [1, 2, 3], "label": "K"},
            },
            "sweep.setting = 'prototypes.per_class' plays no part in variant[1] 'U-Net': baseline = \"labeled-only\" "
            "trains the network alone on labeled images (no teacher, no prototypes; of self-training only "
            "selftrain.iterations counts); its 3 rows would train the same runs 3 times; train 'U-Net' in a plan of "
            "its own without the [sweep] (or remove it from this one)",
        ),
        (
            {
                "variant": [{"name": "All", "baseline": "full"}],
                "sweep": {"setting": "selftrain.unlabeled_weight", "values": [0.5, 1.0]},
            },
            "sweep.setting = 'selftrain.unlabeled_weight' plays no part in variant[0] 'All': baseline = \"full\" ",
        ),
        (
            {
                "variant": [{"name": "U-Net", "baseline": "labeled-only"}],
                "sweep": {"setting": "pretrain.box_fraction", "values": [0.5, 0.7]},
            },
            'baseline = "labeled-only" trains on labeled images as they are, not copy-pasted; its 2 rows',
        ),
        (
            {
                "variant": [{"name": "BCP", "baseline": "bcp"}],
                "sweep": {"setting": "selftrain.contrastive_weight", "values": [0.1, 1.0]},
            },
            "plays no part in variant[0] 'BCP': baseline = \"bcp\" self-trains without the prototype head",
        ),
        ({"figures": {"tsne": ["BCP"]}}, "figures.tsne names 'BCP', which is not a variant"),
        ({"synthetic": {"cases": "12"}}, "synthetic.cases must be a whole number >= 1, e.g. cases = 16; got '12'"),
        ({"synthetic": {"seed": -1}}, "synthetic.seed must be a whole number >= 0; got -1"),
        (
            {"synthetic": {"size": 32}},
            "synthetic.size must be a list of 2 whole numbers for ACDC data, e.g. size = [224, 224]; got 32",
        ),
        ({"synthetic": {"size": [32, 32, 32]}}, "synthetic.size must be a list of 2 whole numbers"),
        ({"synthetic": {"family": "scaners"}}, "synthetic.family must be one of standard, scanners, thin"),
        ({"variant": [{"name": "mper"}, {"name": "MPER"}]}, "rows 'mper' and 'MPER' would share the run folder 'mper'"),
        ({"variant": [{"name": "a/b"}, {"name": "a-b"}]}, "rows 'a/b' and 'a-b' would share the run folder 'a-b'"),
        (
            {
                "variant": [{"name": "K"}],
                "sweep": {"setting": "prototypes.per_class", "values": [1, "1"], "label": "K"},
            },
            "rows 'K=1' and 'K=1' would share the run folder 'k=1'",
        ),
    ],
)
def test_a_wrong_plan_is_refused_naming_the_key(change, message):
    with pytest.raises(
        PlanError,
        match="plan 'broken': .*"
        + message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)"),
    ):
        parse_plan({**MINIMAL, **change}, name="broken")


@pytest.mark.parametrize(
    "baseline, setting, values",
    [
        ("none", "prototypes.per_class", [1, 2]),
        ("labeled-only", "selftrain.iterations", [10, 20]),  # it trains pretrain + selftrain iterations
        ("full", "optim.lr", [0.01, 0.001]),
        ("labeled-only", "pretrain.loss_scale", [0.5, 1.0]),
        ("bcp", "selftrain.unlabeled_weight", [0.5, 1.0]),
        ("bcp", "pretrain.box_fraction", [0.5, 0.7]),
    ],
)
def test_a_sweep_over_a_setting_the_baseline_trains_with_is_kept(baseline, setting, values):
    sweep = {"setting": setting, "values": values}
    plan = parse_plan({**MINIMAL, "variant": [{"name": "A", "baseline": baseline}], "sweep": sweep}, name="kept")
    assert len(plan.rows()) == 2


def test_a_sweep_of_one_value_trains_nothing_twice_and_is_kept():
    sweep = {"setting": "prototypes.per_class", "values": [2]}
    plan = parse_plan({**MINIMAL, "variant": [{"name": "A", "baseline": "labeled-only"}], "sweep": sweep}, name="one")
    assert len(plan.rows()) == 1


def test_a_run_setting_that_does_not_check_is_refused_before_anything_runs(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(
        'dataset = "acdc"\ndata_root = "d"\nlabeled = [3]\nseeds = [1]\n'
        '[[variant]]\nname = "MPER"\nset = ["prototypes.per_class=0"]\n'
        '[sweep]\nsetting = "selftrain.iterations"\nvalues = [10, 20]\n'
    )
    with pytest.raises(
        PlanError,
        match=r"bad\.toml: run selftrain\.iterations=10 / 3 labeled / seed 1: "
        r"prototypes\.per_class must be a positive integer",
    ):
        load_plan(path)


def test_synthetic_data_the_generator_refuses_stops_the_sweep_naming_the_plan(tmp_path):
    plan = parse_plan({**MINIMAL, "data_root": str(tmp_path / "d"), "synthetic": {"cases": 2}}, name="few")
    with pytest.raises(PlanError, match=r"^plan 'few': \[synthetic\]: ACDC needs at least 3 patients .*no run was"):
        run_plan(plan, tmp_path / "out")
    assert not (tmp_path / "d").exists() and not (tmp_path / "out").exists()


def test_a_missing_plan_lists_the_shipped_ones(tmp_path):
    with pytest.raises(PlanError, match="shipped plans: acdc-components, acdc-main"):
        find_plan("acdc-mian")
    with pytest.raises(PlanError, match="no experiment plan at"):
        load_plan(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("title = \n")
    with pytest.raises(PlanError, match="bad.toml is not valid TOML"):
        load_plan(tmp_path / "bad.toml")


def test_the_command_refuses_a_wrong_plan_file_in_one_line(tmp_path, capsys):
    path = tmp_path / "typo.toml"
    path.write_text(
        'dataset = "acdc"\ndata_root = "d"\nlabeled = [3]\nseeds = [1]\n[[variant]]\nname = "MPER"\nseed = 3\n'
    )
    with pytest.raises(SystemExit) as exit_info:
        experiment_main([str(path), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (
        f"mper-experiment: error: {path}: unknown key variant[0].seed; valid keys: baseline, labeled, name, preset, set"
    )
    assert not (tmp_path / "out").exists()
