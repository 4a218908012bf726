"""Synthetic ACDC families: each keeps the properties it promises, by value, and is a
function of the seed; the standard family is the generator every other test uses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from mper.data import acdc_cases, load_acdc_volume
from mper.data.synth_acdc import ACDC_FAMILIES
from mper.datasets import get_dataset, synthesize
from mper.errors import ConfigError

SIZE = (48, 48)
CASES = 12
SEED = 5


@pytest.fixture(scope="module")
def family_volumes(tmp_path_factory) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """Every frame of every family (same seed, same patients), as (image, label)."""
    volumes = {}
    for family in ACDC_FAMILIES:
        root = synthesize(
            "acdc", tmp_path_factory.mktemp(family), cases=CASES, seed=SEED, size=SIZE, progress=False, family=family
        )
        frames = [frame for split in ("val", "test") for frame in acdc_cases(root, split)]
        frames += [line.strip() for line in (root / "train.list").read_text().split()]
        volumes[family] = [load_acdc_volume(root, frame) for frame in sorted(frames)]
    return volumes


def shapes(volumes: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[int, ...]]:
    return [image.shape for image, _ in volumes]


def test_standard_slices_are_square_of_the_requested_size(family_volumes):
    assert {shape[1:] for shape in shapes(family_volumes["standard"])} == {SIZE}
    assert {shape[0] for shape in shapes(family_volumes["standard"])} <= set(range(6, 11))


def test_scanner_slices_are_non_square_odd_and_vary_in_size_and_count(family_volumes):
    scanner_shapes = shapes(family_volumes["scanners"])
    in_plane = {shape[1:] for shape in scanner_shapes}
    assert len(in_plane) >= CASES // 2  # about one slice size per patient
    assert all(height % 2 == 1 and width % 2 == 1 for height, width in in_plane)
    assert sum(height != width for height, width in in_plane) >= len(in_plane) - 1
    sides = [side for shape in in_plane for side in shape]
    assert min(sides) < 0.85 * SIZE[0] and max(sides) > 1.15 * SIZE[0]
    counts = {shape[0] for shape in scanner_shapes}
    assert len(counts) >= 5 and (min(counts) < 6 or max(counts) > 10)


def foreground_fraction(label: np.ndarray) -> float:
    return float((label > 0).mean())


def heart_share(label: np.ndarray) -> float:
    """Foreground fraction of the frame's fullest slice: the heart's size relative to the
    field of view, whatever the slice count."""
    return max(foreground_fraction(plane) for plane in label)


def test_scanner_hearts_vary_more_in_size_than_standard_ones(family_volumes):
    """Relative spread (coefficient of variation), as the scanner family also changes the
    mean heart size through its larger fields of view."""
    shares = {
        family: [heart_share(label) for _, label in family_volumes[family]] for family in ("standard", "scanners")
    }
    spread = {family: np.std(values) / np.mean(values) for family, values in shares.items()}
    assert spread["scanners"] > 1.4 * spread["standard"]


def noise_level(image: np.ndarray, label: np.ndarray) -> float:
    """Median absolute difference between horizontal neighbours inside the myocardium,
    relative to the myocardium's mean: high for noisy scans."""
    inside = (label[:, :, 1:] == 2) & (label[:, :, :-1] == 2)
    steps = np.abs(np.diff(image, axis=2))[inside]
    return float(np.median(steps) / max(image[label == 2].mean(), 1e-6))


def test_scanner_noise_and_contrast_vary_between_patients(family_volumes):
    levels = {
        family: [noise_level(image, label) for image, label in family_volumes[family][::2]]
        for family in ("standard", "scanners")
    }
    assert np.ptp(levels["scanners"]) > 2 * np.ptp(levels["standard"])
    contrast = {
        family: [image[label == 3].mean() / image[label == 2].mean() for image, label in family_volumes[family][::2]]
        for family in ("standard", "scanners")
    }
    assert np.std(contrast["scanners"]) > 1.5 * np.std(contrast["standard"])


def wall_to_cavity(label: np.ndarray) -> float:
    """Myocardium pixels per LV cavity pixel: small for a thin wall around the cavity,
    whatever the heart's size (a distance transform cannot resolve walls of 1-2 pixels)."""
    return float((label == 2).sum() / max((label == 3).sum(), 1))


def test_thin_family_has_thinner_walls_and_fewer_foreground_pixels(family_volumes):
    ratio = {
        family: np.mean([wall_to_cavity(label) for _, label in family_volumes[family]])
        for family in ("standard", "thin")
    }
    assert ratio["thin"] < 0.75 * ratio["standard"]
    foreground = {
        family: np.mean([foreground_fraction(label) for _, label in family_volumes[family]])
        for family in ("standard", "thin")
    }
    assert foreground["thin"] < 0.8 * foreground["standard"]
    share = {
        family: np.mean([(label == 2).sum() / max((label > 0).sum(), 1) for _, label in family_volumes[family]])
        for family in ("standard", "thin")
    }
    assert share["thin"] < 0.75 * share["standard"]  # the wall loses its place as the dominant class


def test_thin_family_rv_and_lv_lie_within_two_pixels_across_the_septum(family_volumes):
    plane = ndimage.generate_binary_structure(2, 1)
    close = 0
    slices = 0
    for _, label in family_volumes["thin"]:
        for section in label:
            if (section == 1).any() and (section == 3).any():
                slices += 1
                reach = ndimage.binary_dilation(section == 3, structure=plane, iterations=3)
                close += bool((reach & (section == 1)).any())
    assert slices > 0 and close / slices > 0.5


@pytest.mark.parametrize("family", sorted(ACDC_FAMILIES))
def test_every_family_is_a_function_of_the_seed(family, tmp_path):
    first, again, other = (
        synthesize("acdc", tmp_path / name, cases=3, seed=seed, size=SIZE, progress=False, family=family)
        for name, seed in (("first", 1), ("again", 1), ("other", 2))
    )
    frame = acdc_cases(first, "test")[0]
    assert (first / "test.list").read_text() == (again / "test.list").read_text()
    np.testing.assert_array_equal(load_acdc_volume(first, frame)[0], load_acdc_volume(again, frame)[0])
    assert not np.array_equal(load_acdc_volume(first, frame)[0], load_acdc_volume(other, frame)[0])


def test_an_unknown_family_is_refused_with_the_choices(tmp_path):
    with pytest.raises(ConfigError, match="standard, scanners, thin"):
        synthesize("acdc", tmp_path, cases=3, family="crowded")
    with pytest.raises(ConfigError, match="choose one of standard"):
        synthesize("la", tmp_path, cases=3, family="thin")
    assert next(iter(get_dataset("acdc").synth_families)) == "standard"


def test_the_command_line_writes_a_family(tmp_path):
    from mper.cli import data_main

    data_main(
        [
            "synth",
            "--dataset",
            "acdc",
            "--out",
            str(tmp_path / "d"),
            "--cases",
            "3",
            "--size",
            "40",
            "40",
            "--family",
            "scanners",
        ]
    )
    image, _ = load_acdc_volume(tmp_path / "d", acdc_cases(tmp_path / "d", "test")[0])
    assert image.shape[1:] != (40, 40)
    assert Path(tmp_path / "d" / "train_slices.list").exists()
