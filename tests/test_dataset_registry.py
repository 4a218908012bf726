"""A dataset is one module: a toy one, defined whole in this file, trains, evaluates and
predicts through the public API like LA and ACDC do."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mper import cli, pipeline
from mper.data.dataset import CaseDataset
from mper.data.files import read_image_label, read_list, write_image_label, write_list
from mper.datasets import (
    SLICE_WISE,
    DatasetSpec,
    check_dataset_root,
    dataset_names,
    get_dataset,
    register_dataset,
)
from mper.datasets import synthesize as synthesize_dataset
from mper.datasets.registry import _REGISTRY
from mper.errors import ConfigError, MissingFileError
from mper.eval.inference import predict_volume
from mper.nets import UNet2D
from mper.train.checkpoint import load_checkpoint
from mper.train.config import load_config

# --- the toy dataset: bright discs on a dark background, volumes of a few 2D slices -----

CASES_DIR = "discs"
SLICE_SEPARATOR = "/"

PRESETS = """
# A dataset's preset file: [paper] sets every recipe setting.
[paper]
labeled = 2
num_classes = 2
seed = 3

[paper.network]
channels = [4, 8, 16, 32, 64]

[paper.data]
patch_size = [32, 32]
batch_size = 4
labeled_batch_size = 2
num_workers = 0
val_split = "test"
holdout_cases = 0
image_interpolation = "nearest"
fold = 0
folds = 5

[paper.optim]
lr = 0.01
momentum = 0.9
weight_decay = 0.0001
lr_step = 0
lr_gamma = 0.1
carry_over = true

[paper.pretrain]
iterations = 4
loss_scale = 0.5
box_fraction = 0.6666666666666666
loss = "per-region"

[paper.selftrain]
iterations = 4
ema_decay = 0.999
unlabeled_weight = 0.5
consistency_scale = 1.0
ramp_weight = 1.0
rampup_epochs = 200.0
ramp_epoch_length = 150
contrastive_weight = 0.1
pseudo_label_threshold = 0.5
teacher_mode = "train"
ema_schedule = "constant"
ema_scope = "state"
forward_passes = 2
forward_order = "unlabeled-surround-first"
contrastive_reduction = "sum"
keep_better_stage = true

[paper.prototypes]
per_class = 2
tau = 0.1
nce_tau = 0.1
momentum = 0.9
confidence_threshold = 0.9
update_source = "both"
update_background = true
contrastive_ignore_row = "none"
kmeans_iterations = 20
kmeans_max_voxels = 500
update_steps = "region-wise"
kmeans = "minibatch"
kmeans_augment = true

[paper.eval]
val_interval = 4
checkpoint_interval = 500
log_interval = 10
stride = "none"   # slice by slice
num_figures = 1
postprocess = "none"
empty_prediction = "zero"
pseudo_label_dice = true
teacher_dice = true

[paper.losses]
dice = "pooled-squared"
dice_background = "region"
dice_smooth = 1e-10

[paper.distributed]
sync_batchnorm = true
timeout = 1800
check_bank = false
force_group = false
"""


def volume_path(root: str | Path, case: str) -> Path:
    return Path(root) / CASES_DIR / f"{case}.h5"


def load_volume(root: str | Path, case: str) -> tuple[np.ndarray, np.ndarray]:
    return read_image_label(volume_path(root, case), ndim=3, num_classes=2)


def load_slice(root: str | Path, item: str) -> tuple[np.ndarray, np.ndarray]:
    case, index = item.split(SLICE_SEPARATOR)
    image, label = load_volume(root, case)
    return image[int(index)], label[int(index)]


def list_cases(root: str | Path, split: str) -> list[str]:
    cases = read_list(Path(root) / f"{'train' if split == 'train' else 'test'}.list")
    if split != "train":
        return cases
    return [f"{case}{SLICE_SEPARATOR}{index}" for case in cases for index in range(len(load_volume(root, case)[0]))]


def case_of(item: str) -> str:
    return item.split(SLICE_SEPARATOR)[0]


def training_split(root: str | Path, labeled: int) -> tuple[list[str], list[str]]:
    items = list_cases(root, "train")
    labeled_cases = list(dict.fromkeys(map(case_of, items)))[:labeled]
    return (
        [item for item in items if case_of(item) in labeled_cases],
        [item for item in items if case_of(item) not in labeled_cases],
    )


class DiscSlices(CaseDataset):
    default_patch_size = (32, 32)

    def load(self, case: str) -> tuple[np.ndarray, np.ndarray]:
        return load_slice(self.root, case)

    def transform(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator):
        if self.augment and rng.random() < 0.5:
            return image[:, ::-1], label[:, ::-1]
        return image, label


def synthesize(out: Path, cases: int, seed: int, size: tuple[int, ...], progress: bool, family: str) -> Path:
    """Discs of one family (the registry offers only ``standard``, the spec's default)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[: size[0], : size[1]]
    names = [f"disc{number:02d}" for number in range(cases)]
    for name in names:
        label = np.zeros((3, *size), np.uint8)
        for index in range(3):
            centre, radius = rng.uniform(10, 22, 2), rng.uniform(4, 8)
            label[index] = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 < radius**2
        image = 0.2 + 0.6 * label + rng.normal(0, 0.05, label.shape)
        write_image_label(volume_path(out, name), (image - image.min()) / (image.max() - image.min()), label)
    write_list(out / "train.list", names[:-2])
    write_list(out / "test.list", names[-2:])
    return out


def disc_spec(preset_file: Path) -> DatasetSpec:
    return DatasetSpec(
        name="discs",
        title="Discs",
        class_names=("background", "disc"),
        network=UNet2D,
        layout_mark=CASES_DIR,
        list_cases=list_cases,
        training_split=training_split,
        load_item=load_slice,
        load_volume=load_volume,
        training_items=DiscSlices,
        preset_file=preset_file,
        patch_size=(32, 32),
        inference=SLICE_WISE,
        stride=(),
        slice_axis=0,
        normalization="min-max",
        validation_splits=("test",),
        label_unit="cases",
        label_budgets=(2,),
        label_group=case_of,
        synthesize=synthesize,
        synth_cases=6,
        synth_size=(32, 32),
    )


# --- the tests ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def discs(tmp_path_factory):
    preset_file = tmp_path_factory.mktemp("presets") / "discs.toml"
    preset_file.write_text(PRESETS)
    spec = register_dataset(disc_spec(preset_file))
    yield spec
    del _REGISTRY[spec.name]


@pytest.fixture(scope="module")
def discs_run(discs, tmp_path_factory):
    root = pipeline.synthesize("discs", tmp_path_factory.mktemp("data") / "discs")
    config = load_config(
        "discs", "paper", {"data_root": str(root), "out": str(tmp_path_factory.mktemp("run") / "r"), "device": "cpu"}
    )
    return root, pipeline.train(config)


def test_a_registered_dataset_is_offered_by_name(discs):
    assert dataset_names()[-1] == "discs" and get_dataset("discs") is discs
    assert "discs" in cli.train_parser().format_help()
    with pytest.raises(ValueError, match="'discs' is registered already"):
        register_dataset(disc_spec(Path("elsewhere.toml")))
    with pytest.raises(ConfigError, match="Discs has no converter"):
        pipeline.convert("discs", ".", "out")


def test_a_toy_dataset_trains_and_evaluates_end_to_end(discs_run):
    root, run_dir = discs_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["summary"]["num_cases"] == 2
    assert "| MPER | 2 | 2 |" in (run_dir / "metrics.md").read_text()  # 2 labeled, 2 unlabeled cases
    last = load_checkpoint(run_dir / "last.pt")
    assert last["progress"] == {**last["progress"], "stage": "selftrain", "iteration": 4}
    assert last["bank"]["prototypes"].shape == (2 * 2, 4)

    result = pipeline.evaluate(run_dir / "best.pt", device="cpu", num_figures=0)
    assert result["per_case"] == {
        case: {int(label): scores for label, scores in classes.items()} for case, classes in metrics["per_case"].items()
    }
    net, config = pipeline.load_network(run_dir / "best.pt", device="cpu")
    for case, scores in result["per_case"].items():
        predicted = predict_volume(net, load_volume(root, case)[0], "discs", patch_size=config.data.patch_size)
        truth = load_volume(root, case)[1]
        overlap = 2 * np.sum((predicted == 1) & (truth == 1)) / (np.sum(predicted == 1) + np.sum(truth == 1))
        assert scores[1]["dice"] == pytest.approx(overlap)


def test_a_toy_model_predicts_a_file_of_its_layout(discs_run, tmp_path):
    root, run_dir = discs_run
    case = read_list(root / "test.list")[0]
    written = pipeline.predict(run_dir / "best.pt", volume_path(root, case), tmp_path, device="cpu")
    net, _ = pipeline.load_network(run_dir / "best.pt", device="cpu")
    expected = predict_volume(net, load_volume(root, case)[0], "discs")
    np.testing.assert_array_equal(nib.load(written[0]).get_fdata(), expected)


@pytest.mark.parametrize("dataset", ["la", "acdc"])
def test_a_data_folder_that_does_not_exist_is_named_with_the_commands_that_write_one(tmp_path, capsys, dataset):
    missing = tmp_path / "data" / dataset
    with pytest.raises(SystemExit) as stop:
        cli.train_main(["--dataset", dataset, "--data-root", str(missing), "--device", "cpu", "--preset", "demo"])
    assert stop.value.code == cli.USER_ERROR_EXIT_CODE
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"mper-train: error: data folder {missing} does not exist: mper-data synth --dataset {dataset} --out "
        f"{missing} writes synthetic {get_dataset(dataset).title} data; mper-data convert --dataset {dataset} "
        f"--source RAW --out {missing} converts the public download, or pass the folder that holds it (--data-root)"
    )
    missing.parent.mkdir()
    missing.write_text("a file")
    with pytest.raises(MissingFileError, match=rf"^data folder {missing} is not a folder: mper-data synth"):
        check_dataset_root(missing, dataset, f"the run trains on {dataset}")


@pytest.mark.parametrize("dataset, size", [("la", (24, 24, 24)), ("acdc", (32, 32))])
def test_a_data_root_one_level_too_deep_names_the_folder_above_it(tmp_path, capsys, dataset, size):
    spec = get_dataset(dataset)
    root = synthesize_dataset(dataset, tmp_path / "data root", cases=6, size=size, progress=False)
    case_folder = root / spec.layout_mark
    train = ["--dataset", dataset, "--device", "cpu", "--preset", "demo", "--labeled", "2", "--print-config"]
    with pytest.raises(SystemExit) as stop:
        cli.train_main([*train, "--data-root", str(case_folder)])
    assert stop.value.code == cli.USER_ERROR_EXIT_CODE
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"mper-train: error: {case_folder} is the {spec.title} case folder ({spec.layout_mark}) itself; pass the "
        f"folder above it, which holds it and the list files: --data-root {shlex.quote(str(root))}"
    )
    cli.train_main([*train, "--data-root", str(root)])  # the folder named is taken
    assert capsys.readouterr().out.startswith("dataset = ")
    # a folder of that name whose parent holds no list is no case folder: the missing list is named
    lone = tmp_path / "elsewhere" / spec.layout_mark
    lone.mkdir(parents=True)
    with pytest.raises(SystemExit):
        cli.train_main([*train, "--data-root", str(lone)])
    assert capsys.readouterr().err.splitlines()[-1].startswith(f"mper-train: error: list file {lone}/")
