"""--preset demo says, before training, when the data is far larger than the preset is made
for and when a validation pass will take long."""

from __future__ import annotations

import math
import re
import shlex

import pytest

from mper.cli import data_main, train_main
from mper.data.raw_scans import NNUNET, read_raw_dataset
from mper.data.scan_plan import read_plan
from mper.data.synth_scans import synthesize_scans
from mper.datasets import get_dataset, synthesize
from mper.datasets.registry import _REGISTRY
from mper.datasets.scans import import_scans, register_plan
from mper.eval import run_size
from mper.eval.run_size import DATA_SIZE_FACTOR, size_warnings, validation_passes
from mper.train.config import load_config
from mper.train.loaders import training_cases, validation_cases
from tiny_runs import acdc_run_arguments


@pytest.fixture(autouse=True)
def no_validation_is_long(monkeypatch):
    """Whether a validation pass is long depends on this machine's speed and load: the tests
    choose it (a test of that warning sets the threshold to 0)."""
    monkeypatch.setattr(run_size, "LONG_VALIDATION_S", math.inf)


@pytest.fixture(scope="module")
def acdc_root(tmp_path_factory):
    return synthesize("acdc", tmp_path_factory.mktemp("acdc"), cases=5, seed=0, size=(32, 32), progress=False)


@pytest.fixture(scope="module")
def la_root(tmp_path_factory):
    return synthesize("la", tmp_path_factory.mktemp("la"), cases=6, seed=0, size=(36, 34, 26), progress=False)


def config(dataset, root, preset, *assignments):
    values = {"data_root": str(root), "labeled": 1, "device": "cpu"}
    return load_config(dataset, preset, values, ["data.num_workers=0", *assignments])


def test_data_four_times_the_patch_or_more_is_named_with_the_size_the_preset_expects(acdc_root):
    (warning,) = size_warnings(config("acdc", acdc_root, "demo", "data.patch_size=[16, 16]"))
    assert warning.startswith(
        f"--preset demo is made for training images of about its 16x16 patch, but those of {acdc_root} are 32x32 ("
    )
    assert "4.0x the voxels: its 400 + 500 iterations and narrow networks can learn much less" in warning
    assert "write data of about 16x16 (mper-data synth --dataset acdc --size 16 16 --out data/acdc-16x16)" in warning
    assert size_warnings(config("acdc", acdc_root, "demo", "data.patch_size=[16, 32]")) == []  # 2x
    assert size_warnings(config("acdc", acdc_root, "reference+demo", "data.patch_size=[16, 16]"))
    assert size_warnings(config("acdc", acdc_root, "paper", "data.patch_size=[16, 16]")) == []


def _data_warning(run):
    return [
        warning for warning in size_warnings(run) if warning.startswith("--preset demo is made for training images")
    ]


@pytest.mark.parametrize("dims", ["3d", "2d"])
def test_imported_images_are_sized_in_voxels_and_the_command_named_writes_such_scans(
    tmp_path_factory, tmp_path, monkeypatch, dims
):
    folder = tmp_path_factory.mktemp("scans")
    raw = synthesize_scans(folder / "raw", NNUNET, cases=7, seed=0, size=(20, 20, 6), progress=False)
    root = import_scans(raw, folder / "imported", dims=dims, progress=False)
    name = register_plan(root).name
    try:
        run = load_config(name, "demo", {"data_root": str(root), "device": "cpu"}, ["data.num_workers=0"])
        labeled, _ = training_cases(run)
        image, _ = get_dataset(name).load_item(root, labeled[0])
        assert image.shape[0] == 2  # two channels, first
        voxels = image.shape[1:]
        ratio = math.prod(voxels) / math.prod(run.data.patch_size)
        monkeypatch.setattr(run_size, "DATA_SIZE_FACTOR", 1.5 * ratio)  # less than twice the voxels: no warning
        assert _data_warning(run) == []
        monkeypatch.setattr(run_size, "DATA_SIZE_FACTOR", ratio)
        (warning,) = _data_warning(run)
        assert f"are {'x'.join(map(str, voxels))} ({labeled[0]}), {ratio:.1f}x the voxels" in warning
        commands = re.search(r"For a quick run, write data of about \S+ \((.+)\); for this data", warning)[1]
        monkeypatch.chdir(tmp_path)
        written = []
        for command in commands.split(", then "):
            words = shlex.split(command)
            assert words[0] == "mper-data"
            data_main(words[1:])
            written.append(words[words.index("--out") + 1])
        assert read_raw_dataset(tmp_path / written[0]).layout == NNUNET
        small = tmp_path / written[1]
        assert read_plan(small).dims == dims
        small_run = load_config(
            register_plan(small).name, "demo", {"data_root": str(small), "device": "cpu"}, ["data.num_workers=0"]
        )
        assert small_run.data.patch_size == run.data.patch_size
        small_image, _ = get_dataset(name).load_item(small, training_cases(small_run)[0][0])
        assert math.prod(small_image.shape[1:]) / math.prod(run.data.patch_size) < DATA_SIZE_FACTOR
    finally:
        del _REGISTRY[name]


def windows(size, patch, step):
    """Window starts along one axis: every ``step``, the last flush with the end (the
    volume padded up to the patch)."""
    return 1 if size <= patch else math.ceil((size - patch) / step) + 1


def test_a_long_validation_pass_is_estimated_from_its_windows_and_passes(la_root, monkeypatch):
    run = config(
        "la",
        la_root,
        "demo",
        "data.patch_size=[16, 16, 16]",
        "eval.stride=[8, 8, 8]",
        "data.holdout_cases=2",
        "eval.val_interval=40",
    )
    assert size_warnings(run)[0].startswith("--preset demo is made for training images of about its 16x16x16")
    assert len(size_warnings(run)) == 1  # validation of seconds
    monkeypatch.setattr(run_size, "LONG_VALIDATION_S", 0.0)
    shapes = [get_dataset("la").load_volume(la_root, case)[0].shape for case in validation_cases(run)]
    expected = sum(math.prod(windows(size, 16, 8) for size in shape) for shape in shapes)
    warning = size_warnings(run)[1]
    assert warning.startswith("a validation pass will take about ")
    assert f" on cpu: 2 cases of {la_root}, {expected} windows of 16x16x16 at a step of 8x8x8, " in warning
    # 200 pre-training iterations: 5 passes; 300 self-training: 8, each of student and teacher
    assert "; this run validates 21 times (eval.val_interval = 40), about " in warning
    assert warning.endswith(
        "--preset demo is made for validation of seconds: use smaller data, or validate less often "
        "(--set eval.val_interval=N, --set eval.stride=[...] for fewer windows)"
    )


def test_slices_are_counted_in_batches_of_the_validation(acdc_root, monkeypatch):
    monkeypatch.setattr(run_size, "LONG_VALIDATION_S", 0.0)
    run = config("acdc", acdc_root, "demo")
    slices = [get_dataset("acdc").load_volume(acdc_root, case)[0].shape[0] for case in validation_cases(run)]
    (warning,) = size_warnings(run)
    assert f"{sum(math.ceil(count / 16) for count in slices)} batches of slices" in warning
    assert "eval.stride" not in warning


@pytest.mark.parametrize(
    "assignments, passes",
    [
        ([], 8 + 2 * 10),  # ACDC demo: 400 + 500 iterations every 50, the teacher validated too
        (["eval.teacher_dice=false"], 8 + 10),
        (["eval.val_interval=300"], 2 + 2 * 2),  # the end of a stage validates too
        (["baseline=labeled-only"], 18),  # one stage of 900 iterations
    ],
)
def test_validation_passes_are_counted_as_the_loop_validates(acdc_root, assignments, passes):
    assert validation_passes(config("acdc", acdc_root, "demo", *assignments)) == passes


def test_the_warning_is_one_line_on_screen_and_in_train_log(acdc_root, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assignments = [
        "data.patch_size=[16, 16]",
        "network.channels=[4, 8, 16, 32, 64]",
        "pretrain.iterations=2",
        "selftrain.iterations=2",
        "eval.val_interval=2",
        "eval.num_figures=0",
        "prototypes.kmeans_max_voxels=500",
    ]
    train_main(acdc_run_arguments(acdc_root, run_dir, assignments, "--preset", "demo"))
    screen = [line for line in capsys.readouterr().err.splitlines() if "--preset demo is made for" in line]
    log = [line for line in (run_dir / "train.log").read_text().splitlines() if "--preset demo is made for" in line]
    assert len(screen) == len(log) == 1 and log[0].endswith(screen[0])
    assert " WARNING " in log[0]
