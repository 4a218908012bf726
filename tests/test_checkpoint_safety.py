"""Checkpoints and run folders a user hands to the commands: truncated or non-finite
checkpoints, a run folder given as the checkpoint, a ``last.pt`` of another run, a
checkpoint of a newer format, an output path that is a file. Each ends in one line and exit status 2, before anything is evaluated,
predicted or trained; so does a negative figure count for mper-eval. Checkpoints of an
older format that is still readable resume as the current format does."""

from __future__ import annotations

import shutil
import sys

import pytest
import torch

from mper import pipeline
from mper.cli import eval_main, predict_main, train_main
from mper.datasets import synthesize
from mper.errors import CheckpointError, RunFolderError
from mper.train.checkpoint import (
    CHECKPOINT_VERSION,
    OLDEST_READABLE_VERSION,
    UPGRADES,
    load_checkpoint,
    save_checkpoint,
    upgrade_checkpoint,
)
from mper.train.config import load_config

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

TINY = [
    "network.channels=[4, 8, 16, 32, 64]",
    "data.patch_size=[32, 32]",
    "data.batch_size=4",
    "data.labeled_batch_size=2",
    "pretrain.iterations=2",
    "selftrain.iterations=2",
    "eval.val_interval=2",
    "eval.num_figures=0",
    "prototypes.kmeans_max_voxels=500",
]


@pytest.fixture(scope="module")
def acdc_root(tmp_path_factory):
    return synthesize("acdc", tmp_path_factory.mktemp("acdc"), cases=5, seed=0, size=(32, 32), progress=False)


def tiny_run(acdc_root, out, seed=1337):
    config = load_config(
        "acdc",
        "paper",
        {"data_root": str(acdc_root), "out": str(out), "labeled": 1, "device": "cpu", "ops": "reference", "seed": seed},
        TINY,
    )
    return pipeline.train(config)


@pytest.fixture(scope="module")
def run(acdc_root, tmp_path_factory):
    return tiny_run(acdc_root, tmp_path_factory.mktemp("runs") / "run")


def one_line_error(main, arguments, capsys) -> str:
    """The error ``main(arguments)`` prints; it must be one line with exit status 2."""
    with pytest.raises(SystemExit) as exit_info:
        main(arguments)
    error = capsys.readouterr().err
    assert exit_info.value.code == 2, error
    assert "Traceback" not in error and error.count("error:") == 1, error
    return error.strip().splitlines()[-1]


def test_a_truncated_checkpoint_is_refused_at_any_length(run, tmp_path):
    whole = (run / "best.pt").read_bytes()
    damaged = tmp_path / "best.pt"
    # torch.load fails differently depending on where the file ends (an OSError among them)
    for length in [0, 100, 20_000, 50_000, *range(1, len(whole), len(whole) // 40)]:
        damaged.write_bytes(whole[:length])
        with pytest.raises(CheckpointError, match="not a readable mper checkpoint .* truncated or damaged"):
            load_checkpoint(damaged)


def test_a_file_that_is_no_checkpoint_is_named_as_such(run, tmp_path):
    for name in ("config.toml", "train.log"):
        with pytest.raises(CheckpointError) as refused:
            load_checkpoint(run / name)
        assert str(refused.value) == (
            f"{run / name} is not a checkpoint; pass a .pt file written by mper-train (e.g. RUN_DIR/best.pt)"
        )


def test_every_command_refuses_a_truncated_checkpoint_in_one_line(run, acdc_root, tmp_path, capsys):
    folder = shutil.copytree(run, tmp_path / "run")
    for name in ("best.pt", "last.pt"):
        (folder / name).write_bytes((run / name).read_bytes()[:20_000])
    case = (acdc_root / "test.list").read_text().split()[0]
    commands = [
        (eval_main, ["--checkpoint", str(folder / "best.pt"), "--device", "cpu"]),
        (
            predict_main,
            [
                "--checkpoint",
                str(folder / "best.pt"),
                "--input",
                str(acdc_root / "data" / f"{case}.h5"),
                "--output",
                str(tmp_path / "labels"),
                "--device",
                "cpu",
            ],
        ),
        (train_main, ["--resume", "--out", str(folder)]),
    ]
    for main, arguments in commands:
        assert "not a readable mper checkpoint" in one_line_error(main, arguments, capsys)


def test_every_command_given_a_run_folder_for_its_checkpoint_names_the_file_to_pass(run, acdc_root, tmp_path, capsys):
    case = (acdc_root / "test.list").read_text().split()[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder, expected in [(run, f"pass the checkpoint in it, {run / 'best.pt'}"), (empty, "RUN_DIR/best.pt")]:
        commands = [
            (eval_main, ["--checkpoint", str(folder), "--device", "cpu"]),
            (
                predict_main,
                [
                    "--checkpoint",
                    str(folder),
                    "--input",
                    str(acdc_root / "data" / f"{case}.h5"),
                    "--output",
                    str(tmp_path / "labels"),
                    "--device",
                    "cpu",
                ],
            ),
        ]
        for main, arguments in commands:
            error = one_line_error(main, arguments, capsys)
            assert f"checkpoint {folder} is a folder, not a .pt file" in error and expected in error, error
            assert "does not exist" not in error, error


def test_a_checkpoint_with_non_finite_weights_is_refused_naming_the_tensors(run, acdc_root, tmp_path, capsys):
    state = load_checkpoint(run / "best.pt")
    name = next(iter(state["student"]))
    state["student"][name] = torch.full_like(state["student"][name], float("nan"))
    damaged = save_checkpoint(tmp_path / "nan.pt", state)
    with pytest.raises(
        CheckpointError,
        match=rf"1 tensor\(s\) of its student weights hold NaN or infinite values "
        rf"\({name}\)",
    ):
        pipeline.evaluate(damaged, device="cpu")
    case = (acdc_root / "test.list").read_text().split()[0]
    error = one_line_error(
        predict_main,
        [
            "--checkpoint",
            str(damaged),
            "--input",
            str(acdc_root / "data" / f"{case}.h5"),
            "--output",
            str(tmp_path / "labels"),
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert name in error
    assert not (tmp_path / "labels").exists()


def test_a_run_has_one_identity_in_its_config_and_every_checkpoint(run):
    run_id = tomllib.loads((run / "config.toml").read_text())["run_id"]
    assert len(run_id) >= 16
    for name in ("last.pt", "best.pt", "pretrain_best.pt"):
        assert load_checkpoint(run / name)["config"]["run_id"] == run_id, name


def test_resume_refuses_a_last_checkpoint_of_another_run(run, acdc_root, tmp_path, capsys):
    other = tiny_run(acdc_root, tmp_path / "other", seed=5)
    folder = shutil.copytree(run, tmp_path / "run")
    config_before = (folder / "config.toml").read_text()
    shutil.copy(other / "last.pt", folder / "last.pt")
    with pytest.raises(RunFolderError, match=r"last\.pt belongs to another run than config\.json there"):
        pipeline.resume(folder, assignments=["selftrain.iterations=3"])
    error = one_line_error(train_main, ["--resume", "--out", str(folder), "--set", "selftrain.iterations=3"], capsys)
    assert "would mix two runs in one folder" in error
    assert (folder / "config.toml").read_text() == config_before
    # the run's own last.pt resumes
    shutil.copy(run / "last.pt", folder / "last.pt")
    pipeline.resume(folder, assignments=["selftrain.iterations=3"])
    assert load_checkpoint(folder / "last.pt")["progress"]["iteration"] == 3


def test_predict_refuses_an_output_that_is_a_file(run, acdc_root, tmp_path, capsys):
    output = tmp_path / "labels"
    output.write_text("a file")
    case = (acdc_root / "test.list").read_text().split()[0]
    error = one_line_error(
        predict_main,
        [
            "--checkpoint",
            str(run / "best.pt"),
            "--input",
            str(acdc_root / "data" / f"{case}.h5"),
            "--output",
            str(output),
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert f"the output {output} is a file" in error


def test_eval_refuses_a_negative_figure_count_before_scoring(run, tmp_path, capsys):
    error = one_line_error(
        eval_main,
        ["--checkpoint", str(run / "best.pt"), "--device", "cpu", "--figures", "-1", "--out", str(tmp_path / "eval")],
        capsys,
    )
    assert "--figures) must be 0 or more, got -1" in error
    assert not (tmp_path / "eval").exists()


def as_format_2(state: dict, oldest: bool) -> dict:
    """``state`` (a ``last.pt`` of a CPU run) as format 2 wrote it: RNG states without CUDA
    had no list of CUDA states; ``oldest``: as the first writers of format 2 that kept the
    monitor wrote it, before the prototype usage, the RNG states of every process and the
    sessions were saved."""
    old = {**state, "version": 2}
    del old["scan_plan"], old["trained_cases"]  # formats 4 and 5's
    old["rng"] = {"torch": state["rng"]["torch"]}
    old["process_rng"] = [{"torch": rng["torch"]} for rng in state["process_rng"]]
    if oldest:
        for field in ("prototype_usage", "process_rng", "sessions"):
            del old[field]
    return old


@pytest.mark.parametrize("oldest", [False, True])
def test_a_resume_checkpoint_of_format_2_resumes_as_the_current_format_does(run, tmp_path, oldest):
    current = load_checkpoint(run / "last.pt")
    assert current["version"] == CHECKPOINT_VERSION == 5
    resumed = {}
    for name, state in (("current", current), ("format 2", as_format_2(current, oldest))):
        folder = shutil.copytree(run, tmp_path / name)
        torch.save(state, folder / "last.pt")  # as the older writer left it, version and all
        upgraded = load_checkpoint(folder / "last.pt")
        assert upgraded["version"] == CHECKPOINT_VERSION
        assert upgraded["rng"]["cuda"] == [] and all(rng["cuda"] == [] for rng in upgraded["process_rng"])
        assert upgraded["scan_plan"] is None  # a built-in dataset's run: no plan
        assert (upgraded["trained_cases"] is None) == (name == "format 2")
        pipeline.resume(folder, assignments=["selftrain.iterations=3"])
        resumed[name] = load_checkpoint(folder / "last.pt")
    expected, got = resumed["current"], resumed["format 2"]
    assert got["progress"] == expected["progress"] and got["progress"]["iteration"] == 3
    for part in ("student", "teacher", "bank"):
        assert expected[part].keys() == got[part].keys()
        for key, value in expected[part].items():
            assert torch.equal(value, got[part][key]), f"{part}.{key}"
    assert got["record"] == expected["record"]
    # what the oldest files lacked begins anew: the usage count and the sessions
    assert len(got["sessions"]) == (1 if oldest else len(expected["sessions"]))
    assert (got["prototype_usage"]["windows"] == expected["prototype_usage"]["windows"]) != oldest


def test_a_checkpoint_of_a_newer_format_is_refused_in_one_line_saying_to_upgrade(run, tmp_path, capsys):
    state = load_checkpoint(run / "best.pt")
    newer = tmp_path / "best.pt"
    torch.save({**state, "version": CHECKPOINT_VERSION + 1}, newer)
    with pytest.raises(
        CheckpointError,
        match=rf"written by a newer mper \(checkpoint format {CHECKPOINT_VERSION + 1}; "
        rf"this mper reads formats 2 to {CHECKPOINT_VERSION}\): upgrade mper",
    ):
        load_checkpoint(newer)
    error = one_line_error(eval_main, ["--checkpoint", str(newer), "--device", "cpu"], capsys)
    assert "upgrade mper" in error


def test_the_upgrades_lead_from_every_readable_format_to_the_current_one():
    assert sorted(UPGRADES) == list(range(OLDEST_READABLE_VERSION, CHECKPOINT_VERSION))
    weights = {"version": 2, "config": {}, "progress": {}, "student": {}, "teacher": None, "bank": None}
    assert upgrade_checkpoint(dict(weights), "best.pt") == {
        **weights,
        "scan_plan": None,
        "trained_cases": None,
        "version": CHECKPOINT_VERSION,
    }


def test_eval_refuses_to_score_a_case_the_checkpoint_was_trained_on(run, acdc_root, tmp_path, capsys):
    """A test list edited to hold a training patient scored the model on what it learnt from,
    with exit 0: named from the checkpoint's record of its training cases, from the run's
    record of its cases (a checkpoint of format 4), or from the folder's own lists."""
    moved = shutil.copytree(acdc_root, tmp_path / "moved")
    slices = (moved / "train_slices.list").read_text().split()
    patient = slices[0].split("_")[0]
    (moved / "train_slices.list").write_text("\n".join(name for name in slices if not name.startswith(patient)) + "\n")
    frame = next(name for name in (moved / "train.list").read_text().split() if name.startswith(patient))
    (moved / "test.list").write_text(f"{frame}\n")
    copied = tmp_path / "copied"  # the checkpoint alone, without the run's record
    copied.mkdir()
    shutil.copy(run / "best.pt", copied)
    arguments = ["--checkpoint", str(copied / "best.pt"), "--device", "cpu", "--figures", "0"]
    error = one_line_error(eval_main, [*arguments, "--data-root", str(moved), "--out", str(tmp_path / "e")], capsys)
    assert error == (
        f"mper-eval: error: {moved}: test case {frame} is one {copied / 'best.pt'} was trained on (the checkpoint "
        "lists it among the cases it trained on); a scored case must be one the model never learnt from: "
        "remove it from the list, or score another checkpoint"
    )
    format_4 = shutil.copytree(run, tmp_path / "format 4")
    state = load_checkpoint(run / "best.pt")
    del state["trained_cases"]
    torch.save({**state, "version": 4}, format_4 / "best.pt")
    arguments = ["--checkpoint", str(format_4 / "best.pt"), "--device", "cpu", "--figures", "0"]
    error = one_line_error(eval_main, [*arguments, "--data-root", str(moved), "--out", str(tmp_path / "e")], capsys)
    assert error.startswith(
        f"mper-eval: error: {moved}: test case {frame} is one {format_4 / 'best.pt'} was trained on "
        f"({format_4 / 'cases.json'} lists it among the cases the run trained on)"
    ), error
    (format_4 / "cases.json").unlink()
    both = shutil.copytree(acdc_root, tmp_path / "both")
    (both / "test.list").write_text(f"{frame}\n")  # its patient's slices stay in train_slices.list
    error = one_line_error(eval_main, [*arguments, "--data-root", str(both), "--out", str(tmp_path / "e")], capsys)
    assert error.startswith(
        f"mper-eval: error: {both}: test case {frame} is one {format_4 / 'best.pt'} was trained on (the training "
        f"list of {both} holds it)"
    ), error
    assert not (tmp_path / "e").exists()


def test_eval_refuses_an_out_folder_inside_a_dataset_before_scoring(run, acdc_root, tmp_path, capsys):
    inside = acdc_root / "data" / "eval"
    error = one_line_error(eval_main, ["--checkpoint", str(run / "best.pt"), "--out", str(inside)], capsys)
    assert error == (
        f"mper-eval: error: --out {inside} lies inside the dataset folder {acdc_root}: the evaluation's files would "
        "lie among its data; choose a folder outside it"
    )
    assert not inside.exists()
