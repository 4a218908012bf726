"""Synthetic datasets: exact public layouts readable by the loaders, plausible anatomy,
real intra-class sub-populations, determinism in the seed."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from mper import cli
from mper.data import read_list
from mper.data.acdc import (
    ACDCSlices,
    acdc_cases,
    acdc_slice_path,
    acdc_split,
    load_acdc_slice,
    load_acdc_volume,
)
from mper.data.la import LAPatches, la_cases, la_split, load_la_case
from mper.data.synth_acdc import draw_heart, render_frame
from mper.data.synth_fields import REGION_STRIDE, SyntheticScan
from mper.data.synth_la import draw_atrium, render_case
from mper.datasets import synthesize

ACDC_SIZE = (64, 64)
LA_SIZE = (40, 40, 32)


@pytest.fixture(scope="module")
def acdc_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("acdc")
    return synthesize("acdc", root, cases=5, seed=3, size=ACDC_SIZE, progress=False)


@pytest.fixture(scope="module")
def la_root(tmp_path_factory) -> Path:
    return synthesize("la", tmp_path_factory.mktemp("la"), cases=3, seed=3, size=LA_SIZE, progress=False)


def test_acdc_layout_lists_and_files(acdc_root):
    train = read_list(acdc_root / "train.list")
    val, test = acdc_cases(acdc_root, "val"), acdc_cases(acdc_root, "test")
    assert (len(train), len(val), len(test)) == (6, 2, 2)  # 5 patients: 3 / 1 / 1, two frames each
    frames = train + val + test
    assert all(re.fullmatch(r"patient00[1-5]_frame(01|0[89]|1[0-6])", name) for name in frames)
    assert len({name.split("_")[0] for name in frames}) == 5  # patient-level split

    slices = acdc_cases(acdc_root, "train")
    depth = {frame: load_acdc_volume(acdc_root, frame)[0].shape[0] for frame in frames}
    assert slices == [f"{frame}_slice_{index}" for frame in train for index in range(depth[frame])]
    for frame in frames:
        image, label = load_acdc_volume(acdc_root, frame)
        assert 6 <= image.shape[0] <= 10 and image.shape[1:] == ACDC_SIZE
        assert image.min() == 0.0 and image.max() == 1.0
        assert set(np.unique(label)) == {0, 1, 2, 3}
        for index in (0, image.shape[0] - 1):
            name = f"{frame}_slice_{index}"
            assert acdc_slice_path(acdc_root, name).exists() == (frame in train)
    first_slice = load_acdc_slice(acdc_root, slices[0])
    np.testing.assert_array_equal(first_slice[0], load_acdc_volume(acdc_root, train[0])[0][0])
    labeled, unlabeled = acdc_split(acdc_root, 1)
    assert len(labeled) + len(unlabeled) == len(slices)
    assert ACDCSlices(acdc_root, labeled, patch_size=(32, 32), seed=0)[0]["image"].shape == (1, 32, 32)


def test_acdc_anatomy_shrinks_to_apex_and_systole(acdc_root):
    train = read_list(acdc_root / "train.list")
    for diastole, systole in zip(train[::2], train[1::2]):
        ed, es = load_acdc_volume(acdc_root, diastole)[1], load_acdc_volume(acdc_root, systole)[1]
        for structure in (1, 3):  # RV and LV cavities contract in systole
            assert (es == structure).sum() < (ed == structure).sum()
        lv_area = (ed == 3).sum(axis=(1, 2))
        assert lv_area[-1] < lv_area[0] / 2
        assert (ed[-1] == 1).sum() < (ed[0] == 1).sum()


def test_la_layout_lists_and_files(la_root):
    train, test = la_cases(la_root, "train"), la_cases(la_root, "test")
    assert (len(train), len(test)) == (2, 1)
    assert all(re.fullmatch(r"[A-Z0-9]{20}", case) for case in train + test)
    for case in train + test:
        image, label = load_la_case(la_root, case)
        assert all(abs(length - target) <= 1 for length, target in zip(image.shape, LA_SIZE))
        assert abs(image.mean()) < 1e-3 and abs(image.std() - 1) < 1e-3
        assert set(np.unique(label)) == {0, 1} and 0.03 < label.mean() < 0.4
    labeled, unlabeled = la_split(la_root, 1)
    patch = LAPatches(la_root, labeled + unlabeled, patch_size=(32, 32, 24), seed=0)[1]
    assert patch["image"].shape == (1, 32, 32, 24)


def first_image(dataset: str, root: Path) -> np.ndarray:
    if dataset == "acdc":
        return load_acdc_volume(root, "patient001_frame01")[0]
    return load_la_case(root, la_cases(root, "train")[0])[0]


@pytest.mark.parametrize("dataset", ["acdc", "la"])
def test_synthesis_is_deterministic_in_the_seed(dataset, tmp_path):
    size = ACDC_SIZE if dataset == "acdc" else LA_SIZE
    first, again, other = (
        synthesize(dataset, tmp_path / name, cases=3, seed=seed, size=size, progress=False)
        for name, seed in (("first", 1), ("again", 1), ("other", 2))
    )
    list_names = sorted(path.name for path in first.glob("*.list"))
    assert list_names == sorted(path.name for path in again.glob("*.list"))
    for name in list_names:
        assert read_list(first / name) == read_list(again / name)
    np.testing.assert_array_equal(first_image(dataset, first), first_image(dataset, again))
    assert not np.array_equal(first_image(dataset, first), first_image(dataset, other))


def acdc_scans(count: int = 3) -> list[SyntheticScan]:
    scans = []
    for patient in range(count):
        rng = np.random.default_rng([11, patient])
        scans.append(render_frame(rng, draw_heart(rng, ACDC_SIZE), ACDC_SIZE, 8, systole=False))
    return scans


def la_scans(count: int = 2) -> list[SyntheticScan]:
    scans = []
    for case in range(count):
        rng = np.random.default_rng([11, case])
        scans.append(render_case(rng, draw_atrium(rng, LA_SIZE), LA_SIZE))
    return scans


def sub_population_means(scan: SyntheticScan, structure: int) -> list[float]:
    """Mean intensity of each sub-population of ``structure`` covering >= 2% of it."""
    inside = scan.label == structure
    regions, counts = np.unique(scan.region[inside], return_counts=True)
    return [
        float(scan.image[scan.region == region].mean())
        for region, count in zip(regions, counts)
        if count >= 0.02 * inside.sum()
    ]


@pytest.mark.parametrize(("scans", "structures"), [(acdc_scans, (1, 2, 3)), (la_scans, (1,))])
def test_each_structure_has_distinct_sub_populations(scans, structures):
    for scan in scans():
        np.testing.assert_array_equal(scan.label, scan.region // REGION_STRIDE)
        class_means = {c: float(scan.image[scan.label == c].mean()) for c in np.unique(scan.label)}
        for structure in structures:
            means = sub_population_means(scan, structure)
            assert len(means) >= 2
            # A single mean does not describe the class: its sub-populations lie further
            # apart than the class mean lies from the nearest other class mean.
            others = [mean for other, mean in class_means.items() if other != structure]
            nearest_gap = min(abs(class_means[structure] - mean) for mean in others)
            assert max(means) - min(means) > nearest_gap


@pytest.mark.parametrize("scans", [acdc_scans, la_scans])
def test_class_boundaries_stand_out_from_noise(scans):
    for scan in scans():
        steps = np.abs(np.diff(scan.image, axis=-1))
        crosses = np.diff(scan.label.astype(int), axis=-1) != 0
        assert steps[crosses].mean() > 3 * steps[~crosses].mean()


SYNTH_KINDS = {
    "la": ["--dataset", "la", "--size", "32", "32", "32"],
    "acdc": ["--dataset", "acdc", "--size", "32", "32"],
    "nnunet": ["--format", "nnunet", "--size", "12", "12", "4"],
    "msd": ["--format", "msd", "--size", "12", "12", "4"],
}


def _synth_error(capsys, out: Path, options: list[str]) -> str:
    """The one line ``mper-data synth`` refuses with."""
    with pytest.raises(SystemExit) as stop:
        cli.data_main(["synth", "--out", str(out), *options])
    error = capsys.readouterr().err
    assert stop.value.code == cli.USER_ERROR_EXIT_CODE and "Traceback" not in error, error
    assert len(error.splitlines()) == 1, error
    return error.strip()


@pytest.mark.parametrize("kind", SYNTH_KINDS)
def test_synth_refuses_a_folder_that_holds_files_and_leaves_them_as_they_were(kind, tmp_path, capsys):
    mine = tmp_path / "mine"
    (mine / "imagesTr").mkdir(parents=True)
    (mine / "dataset.json").write_text('{"name": "my own"}\n')
    line = _synth_error(capsys, mine, [*SYNTH_KINDS[kind], "--cases", "5"])
    assert line == (
        f"mper-data: error: --out {mine} is not empty (it holds dataset.json, imagesTr); choose a new or empty "
        "folder, or empty it first"
    )
    assert (mine / "dataset.json").read_text() == '{"name": "my own"}\n'
    assert sorted(path.name for path in mine.rglob("*")) == ["dataset.json", "imagesTr"]
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    line = _synth_error(capsys, a_file, [*SYNTH_KINDS[kind], "--cases", "5"])
    assert line == f"mper-data: error: --out {a_file} is a file; choose a folder to create"


@pytest.mark.parametrize("kind", SYNTH_KINDS)
def test_a_refused_synth_creates_no_folder_and_an_empty_one_is_written(kind, tmp_path, capsys):
    out = tmp_path / "new" / "data"
    line = _synth_error(capsys, out, [*SYNTH_KINDS[kind], "--cases", "1"])
    assert "1" in line and "cases" in line, line
    assert not (tmp_path / "new").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    cli.data_main(["synth", "--out", str(empty), *SYNTH_KINDS[kind], "--cases", "5"])
    assert any(empty.iterdir())
