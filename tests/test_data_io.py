"""List files, HDF5 cases, the LA/ACDC loaders and splits, on hand-made files of the
public layouts; every promised error on bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mper.data import (
    DataFormatError,
    acdc_cases,
    acdc_split,
    files,
    la_cases,
    la_split,
    load_acdc_slice,
    load_acdc_volume,
    load_la_case,
    normalize_intensity,
    read_h5_case,
    read_list,
)
from mper.data.files import check_writable
from mper.data.splits import partition
from mper.errors import RunFolderError


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


# read_list


def test_read_list_reduces_lines_to_case_names(tmp_path):
    lines = [
        "  0RZDK210BSMWAA6467LU  ",
        "",
        "/a/b/2018LA_Seg_Training Set/1D7CUD1955YZPGK8XHJX/mri_norm2.h5",
        "../data/2018LA_Seg_Training Set/1GU15S0GJJ8QGYF2JH7B/mri_norm2.h5",
        "patient001_frame01_slice_0.h5",
        "data\\slices\\patient002_frame12_slice_3.h5",
        "patient003_frame01",
    ]
    assert read_list(write_lines(tmp_path / "x.list", lines), case_file="mri_norm2.h5") == [
        "0RZDK210BSMWAA6467LU",
        "1D7CUD1955YZPGK8XHJX",
        "1GU15S0GJJ8QGYF2JH7B",
        "patient001_frame01_slice_0",
        "patient002_frame12_slice_3",
        "patient003_frame01",
    ]


def test_read_list_drops_a_utf8_byte_order_mark(tmp_path):
    # Windows editors (Notepad) may start a UTF-8 text file with a byte order mark; the
    # first case name must not keep it, or its file is reported missing under a name that
    # looks right on the screen.
    path = tmp_path / "train.list"
    path.write_bytes("\ufeff0RZDK210BSMWAA6467LU\r\n1D7CUD1955YZPGK8XHJX\r\n".encode("utf-8"))
    assert read_list(path) == ["0RZDK210BSMWAA6467LU", "1D7CUD1955YZPGK8XHJX"]


def test_read_list_refuses_a_case_named_twice(tmp_path):
    # the same case under two spellings of its line: a name and a path to its file
    lines = [
        "0RZDK210BSMWAA6467LU",
        "",
        "1D7CUD1955YZPGK8XHJX",
        "../data/2018LA_Seg_Training Set/0RZDK210BSMWAA6467LU/mri_norm2.h5",
    ]
    path = write_lines(tmp_path / "train.list", lines)
    with pytest.raises(DataFormatError) as refused:
        read_list(path, case_file="mri_norm2.h5")
    assert (
        str(refused.value) == f"list file {path} names 0RZDK210BSMWAA6467LU twice (lines 1 and 4); remove one of them"
    )


def test_read_list_missing_and_empty(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.list"):
        read_list(tmp_path / "nothere.list")
    with pytest.raises(DataFormatError, match="empty.list"):
        read_list(write_lines(tmp_path / "empty.list", ["", "   "]))
    assert "stopped while writing" not in _missing_list_error(tmp_path / "nothere.list")
    unfinished = tmp_path / "unfinished"  # what a conversion killed before its lists leaves
    (unfinished / "data").mkdir(parents=True)
    wrong = _missing_list_error(unfinished / "train.list")  # a folder of folders: a wrong --data-root, likelier
    assert "stopped while writing" not in wrong, wrong
    (unfinished / "data" / "patient001_frame01.h5").write_bytes(b"")
    assert _missing_list_error(unfinished / "train.list") == (
        f"list file {unfinished / 'train.list'} not found: expected a text file with one case name per line; "
        f"{unfinished} holds data but no list file at all: if mper-data convert or synth was stopped while writing "
        "it, write it again into a new folder"
    )


def _missing_list_error(path):
    with pytest.raises(FileNotFoundError) as missing:
        read_list(path)
    return str(missing.value)


# read_h5_case


def test_read_h5_case_returns_datasets_in_key_order(write_h5, tmp_path):
    image = np.arange(12, dtype=np.float32).reshape(3, 4)
    label = (image > 5).astype(np.uint8)
    path = write_h5(tmp_path / "case.h5", image=image, label=label)
    got_label, got_image = read_h5_case(path, keys=("label", "image"), ndim=2)
    np.testing.assert_array_equal(got_image, image)
    np.testing.assert_array_equal(got_label, label)


def test_read_h5_case_errors_name_the_file(write_h5, tmp_path):
    assert issubclass(DataFormatError, ValueError)
    with pytest.raises(FileNotFoundError, match=r"missing\.h5.*'image'"):
        read_h5_case(tmp_path / "missing.h5")
    no_label = write_h5(tmp_path / "no_label.h5", image=np.zeros((2, 2)))
    with pytest.raises(DataFormatError, match=r"no_label\.h5 has no dataset 'label'"):
        read_h5_case(no_label)
    flat = write_h5(tmp_path / "flat.h5", image=np.zeros((2, 2)), label=np.zeros((2, 2)))
    with pytest.raises(DataFormatError, match=r"flat\.h5.*3-D"):
        read_h5_case(flat, ndim=3)
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(b"\x89HDF\r\n not really an HDF5 file" * 4)
    with pytest.raises(DataFormatError, match=r"corrupt\.h5 is not a readable HDF5 file"):
        read_h5_case(corrupt)


# LA layout


def la_root(write_h5, tmp_path: Path, cases: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    for case, (image, label) in cases.items():
        write_h5(tmp_path / "2018LA_Seg_Training Set" / case / "mri_norm2.h5", image=image, label=label)
    return tmp_path


def test_load_la_case_reads_the_uamt_layout(write_h5, tmp_path):
    image = np.linspace(-1, 1, 4 * 5 * 3).reshape(4, 5, 3)  # float64 on disk
    label = (image > 0).astype(np.uint8)
    root = la_root(write_h5, tmp_path, {"CASEA": (image, label)})
    got_image, got_label = load_la_case(root, "CASEA")
    assert got_image.dtype == np.float32 and got_label.dtype == np.uint8
    np.testing.assert_allclose(got_image, image, rtol=1e-6)
    np.testing.assert_array_equal(got_label, label)


@pytest.mark.parametrize(
    ("image", "label", "message"),
    [
        (np.zeros((4, 5)), np.zeros((4, 5), np.uint8), "shape"),
        (np.zeros((4, 5, 3)), np.zeros((4, 5, 2), np.uint8), "differs from label shape"),
        (np.zeros((4, 5, 3)), np.full((4, 5, 3), 2, np.uint8), "label values"),
    ],
)
def test_load_la_case_rejects_malformed_cases(write_h5, tmp_path, image, label, message):
    root = la_root(write_h5, tmp_path, {"BAD": (image, label)})
    with pytest.raises(DataFormatError, match=message):
        load_la_case(root, "BAD")


@pytest.mark.parametrize(
    ("image", "label", "message"),
    [
        (
            np.where(np.eye(4)[:, :, None] > 0, np.nan, 0.0) * np.ones((4, 4, 3)),
            np.zeros((4, 4, 3), np.uint8),
            r"BAD/mri_norm2\.h5: image has 12 NaN or infinite value\(s\) among 48",
        ),
        (np.full((4, 5, 3), np.inf), np.zeros((4, 5, 3), np.uint8), r"BAD/mri_norm2\.h5: image has 60 NaN"),
        (
            np.zeros((4, 5, 3)),
            np.full((4, 5, 3), 0.7),
            r"BAD/mri_norm2\.h5: label holds float64 values that are not class indices \(e\.g\. 0\.7\)",
        ),
        (
            np.zeros((4, 5, 3)),
            np.full((4, 5, 3), np.nan),
            r"BAD/mri_norm2\.h5: label holds float64 values that are not class indices \(e\.g\. nan\)",
        ),
        (np.zeros((4, 0, 3)), np.zeros((4, 0, 3), np.uint8), r"BAD/mri_norm2\.h5: dataset 'image' is empty"),
        (np.zeros((4, 5, 3), "S1"), np.zeros((4, 5, 3), np.uint8), r"dataset 'image' holds \|S1 values"),
    ],
)
def test_non_finite_images_float_labels_and_empty_cases_are_refused_naming_the_file(
    write_h5, tmp_path, image, label, message
):
    root = la_root(write_h5, tmp_path, {"BAD": (image, label)})
    with pytest.raises(DataFormatError, match=message):
        load_la_case(root, "BAD")


def test_a_float_label_of_class_numbers_is_read_as_its_classes(write_h5, tmp_path):
    image = np.linspace(-1, 1, 4 * 5 * 3).reshape(4, 5, 3)
    classes = (image > 0).astype(np.uint8)
    root = la_root(write_h5, tmp_path, {"FLOAT": (image, classes.astype(np.float32))})
    _, label = load_la_case(root, "FLOAT")
    assert label.dtype == np.uint8
    np.testing.assert_array_equal(label, classes)


def test_an_empty_acdc_slice_names_its_file(write_h5, tmp_path):
    write_h5(tmp_path / "data" / "slices" / "p_slice_0.h5", image=np.zeros((0, 5)), label=np.zeros((0, 5), np.uint8))
    with pytest.raises(DataFormatError, match=r"p_slice_0\.h5: dataset 'image' is empty"):
        load_acdc_slice(tmp_path, "p_slice_0")


def test_load_la_case_missing_file_names_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"GONE.*mri_norm2\.h5"):
        load_la_case(tmp_path, "GONE")


def test_la_split_takes_the_first_cases_of_train_list(tmp_path):
    write_lines(tmp_path / "train.list", ["E", "B", "A", "D", "C"])
    write_lines(tmp_path / "test.list", ["F"])
    assert la_split(tmp_path, 2) == (["E", "B"], ["A", "D", "C"])
    assert la_cases(tmp_path, "test") == ["F"]
    for labeled in (0, 6):
        with pytest.raises(ValueError, match="labeled"):
            la_split(tmp_path, labeled)
    with pytest.raises(ValueError, match="split"):
        la_cases(tmp_path, "val")
    with pytest.raises(FileNotFoundError, match="train.list"):
        la_split(tmp_path / "elsewhere", 1)


# ACDC layout


def test_load_acdc_slice_and_volume(write_h5, tmp_path):
    volume = np.random.default_rng(0).random((3, 6, 5)).astype(np.float32)
    label = np.digitize(volume, [0.25, 0.5, 0.75]).astype(np.uint8)
    write_h5(tmp_path / "data" / "patient001_frame01.h5", image=volume, label=label)
    write_h5(tmp_path / "data" / "slices" / "patient001_frame01_slice_2.h5", image=volume[2], label=label[2])
    image, got_label = load_acdc_volume(tmp_path, "patient001_frame01")
    np.testing.assert_array_equal(image, volume)
    np.testing.assert_array_equal(got_label, label)
    image, got_label = load_acdc_slice(tmp_path, "patient001_frame01_slice_2")
    np.testing.assert_array_equal(image, volume[2])
    np.testing.assert_array_equal(got_label, label[2])


def test_images_scaled_otherwise_than_the_layout_are_refused_naming_the_file(write_h5, tmp_path):
    # the public releases: LA z-scored (negative values), ACDC min-max scaled to [0, 1]
    unsigned = np.linspace(25, 255, 4 * 5 * 3).reshape(4, 5, 3).astype(np.uint8)
    root = la_root(write_h5, tmp_path / "la", {"RAW": (unsigned, np.zeros((4, 5, 3), np.uint8))})
    with pytest.raises(
        DataFormatError,
        match=r"RAW/mri_norm2\.h5: intensities span \[25, 255\], but z-scored intensities \(mean 0, so some "
        r"negative\) are expected here \(UA-MT LA layout",
    ):
        load_la_case(root, "RAW")
    write_h5(tmp_path / "acdc" / "data" / "slices" / "s.h5", image=unsigned[..., 0], label=np.zeros((4, 5), np.uint8))
    with pytest.raises(DataFormatError, match=r"s\.h5: intensities span .* scaled to \[0, 1\] are expected here"):
        load_acdc_slice(tmp_path / "acdc", "s")
    write_h5(tmp_path / "acdc" / "data" / "v.h5", image=unsigned / 255.0, label=np.zeros((4, 5, 3), np.uint8))
    assert load_acdc_volume(tmp_path / "acdc", "v")[0].max() == pytest.approx(1.0)
    mask = np.full((4, 5, 3), 255, np.uint8)
    root = la_root(write_h5, tmp_path / "mask", {"MASK": (np.linspace(-1, 1, 60).reshape(4, 5, 3), mask)})
    with pytest.raises(DataFormatError, match=r"expected class indices 0..1; write the label as class indices"):
        load_la_case(root, "MASK")


def smallest_uamt_crop(rng: np.random.Generator) -> np.ndarray:
    """A z-scored scan cropped as UA-MT crops at the least: 112 x 112 of 640 x 640 voxels in-plane,
    every slice, with all of the scan's spread inside the crop (skewed: bright outliers), which
    puts the crop's mean and std as far from 0 and 1 as such a crop can have them."""
    scan = np.zeros((640, 640, 4), np.float32)
    scan[:112, :112] = rng.gamma(0.5, 100.0, (112, 112, 4))
    return normalize_intensity(scan, "z-score")[:112, :112]


def test_la_images_far_from_z_scored_are_refused_and_crops_of_a_z_scored_scan_are_read(write_h5, tmp_path):
    rng = np.random.default_rng(0)
    z_scored = normalize_intensity(rng.standard_normal((16, 16, 8)), "z-score")
    crop = smallest_uamt_crop(rng)
    assert np.hypot(crop.mean(), crop.std()) > 5  # near the bound of 1 / sqrt(112**2 / 640**2) = 5.7
    accepted = {"ZSCORED": z_scored, "CROP": crop, "FLAT": np.zeros((16, 16, 8), np.float32)}
    refused = {"SCALED": (z_scored * 300 + 200, 200, 300), "SHRUNK": (z_scored / 1000, 0, 0.001)}
    images = {**accepted, **{case: image for case, (image, _, _) in refused.items()}}
    root = la_root(
        write_h5, tmp_path, {case: (image, np.zeros(image.shape, np.uint8)) for case, image in images.items()}
    )
    for case, image in accepted.items():
        np.testing.assert_array_equal(load_la_case(root, case)[0], image.astype(np.float32))
    for case, (image, mean, std) in refused.items():
        with pytest.raises(DataFormatError) as error:
            load_la_case(root, case)
        assert str(error.value) == (
            f"{root}/2018LA_Seg_Training Set/{case}/mri_norm2.h5: intensities span [{image.min():.3g}, "
            f"{image.max():.3g}], but z-scored intensities (mean near 0, std near 1; these have mean {mean:.3g}, "
            f"std {std:.3g}) are expected here (UA-MT LA layout: ROOT/2018LA_Seg_Training Set/<case>/mri_norm2.h5); "
            "normalise the image (z-score per volume), as the public release and mper-data convert do"
        )


def test_acdc_loaders_check_rank_and_classes(write_h5, tmp_path):
    write_h5(tmp_path / "data" / "flat.h5", image=np.zeros((6, 5)), label=np.zeros((6, 5), np.uint8))
    with pytest.raises(DataFormatError, match=r"flat\.h5.*3-D"):
        load_acdc_volume(tmp_path, "flat")
    bad_class = np.full((6, 5), 4, np.uint8)
    write_h5(tmp_path / "data" / "slices" / "s.h5", image=np.zeros((6, 5)), label=bad_class)
    with pytest.raises(DataFormatError, match="class indices 0..3"):
        load_acdc_slice(tmp_path, "s")
    with pytest.raises(FileNotFoundError, match=r"patient009_frame01_slice_0\.h5"):
        load_acdc_slice(tmp_path, "patient009_frame01_slice_0")


def test_an_acdc_frame_stored_slices_last_is_refused(write_h5, tmp_path):
    """Read as (S, H, W), a (H, W, S) frame would be trained and scored slice by slice along
    the wrong axis with exit status 0."""
    volume = np.random.default_rng(0).random((6, 64, 56)).astype(np.float32)
    label = np.digitize(volume, [0.25, 0.5, 0.75]).astype(np.uint8)
    write_h5(tmp_path / "data" / "f.h5", image=np.moveaxis(volume, 0, -1), label=np.moveaxis(label, 0, -1))
    with pytest.raises(
        DataFormatError,
        match=r"f\.h5: shape \(64, 56, 6\), but ACDC frames are stored \(S, H, W\), slices first: axis 2 \(6\) is far "
        r"shorter than axis 0 \(64\); write image and label with the slices first \(numpy\.moveaxis\(array, 2, 0\)\)$",
    ):
        load_acdc_volume(tmp_path, "f")
    write_h5(tmp_path / "data" / "g.h5", image=volume, label=label)
    assert load_acdc_volume(tmp_path, "g")[0].shape == (6, 64, 56)


def test_acdc_split_takes_whole_patients_in_list_order(tmp_path):
    slices = [
        "patient007_frame01_slice_0",
        "patient007_frame01_slice_1",
        "patient002_frame01_slice_0",
        "patient007_frame09_slice_0",  # patient007 again, after patient002
        "patient004_frame01_slice_0",
        "patient002_frame12_slice_0",
    ]
    write_lines(tmp_path / "train_slices.list", slices)
    labeled, unlabeled = acdc_split(tmp_path, 1)
    assert labeled == [slices[0], slices[1], slices[3]]
    assert unlabeled == [slices[2], slices[4], slices[5]]
    labeled, unlabeled = acdc_split(tmp_path, 2)
    assert labeled == [slices[0], slices[1], slices[2], slices[3], slices[5]]
    assert unlabeled == [slices[4]]
    with pytest.raises(ValueError, match="labeled must be between 1 and the 3 patients"):
        acdc_split(tmp_path, 4)


def test_acdc_cases_reads_each_split_list(tmp_path):
    write_lines(tmp_path / "train_slices.list", ["patient001_frame01_slice_0"])
    write_lines(tmp_path / "val.list", ["patient002_frame01"])
    assert acdc_cases(tmp_path, "train") == ["patient001_frame01_slice_0"]
    assert acdc_cases(tmp_path, "val") == ["patient002_frame01"]
    with pytest.raises(FileNotFoundError, match="test.list"):
        acdc_cases(tmp_path, "test")
    with pytest.raises(ValueError, match="split"):
        acdc_cases(tmp_path, "training")


# normalisation and splitting


def test_normalize_intensity_by_method():
    values = np.array([[1.0, 2.0], [3.0, 4.0]])
    expected_z = (values - 2.5) / np.sqrt(1.25)
    np.testing.assert_allclose(normalize_intensity(values, "z-score"), expected_z, rtol=1e-6)
    np.testing.assert_allclose(normalize_intensity(np.array([2, 4, 6]), "min-max"), [0.0, 0.5, 1.0])
    assert normalize_intensity(values, "z-score").dtype == np.float32
    np.testing.assert_array_equal(normalize_intensity(np.full(3, 7.0), "min-max"), np.zeros(3))
    with pytest.raises(ValueError, match="z-score, min-max; got 'percentile'"):
        normalize_intensity(values, "percentile")


def test_partition_sizes_and_determinism():
    names = [f"n{i:03d}" for i in range(100)]
    parts = partition(names, (0.7, 0.1, 0.2), np.random.default_rng(1))
    assert [len(part) for part in parts] == [70, 10, 20]
    assert sorted(sum(parts, [])) == names
    assert all(part == sorted(part) for part in parts)
    assert parts == partition(names, (0.7, 0.1, 0.2), np.random.default_rng(1))
    assert parts != partition(names, (0.7, 0.1, 0.2), np.random.default_rng(2))
    smallest = partition(names[:3], (0.7, 0.1, 0.2), np.random.default_rng(0))
    assert [len(part) for part in smallest] == [1, 1, 1]
    with pytest.raises(ValueError, match="need at least 3 cases"):
        partition(names[:2], (0.7, 0.1, 0.2), np.random.default_rng(0))


def test_a_folder_that_cannot_be_written_is_refused_before_any_work(tmp_path, monkeypatch):
    """mper-eval into a read-only folder failed after scoring its first case."""
    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(files.os, "access", lambda path, mode: Path(path) != locked)  # root passes any chmod
    with pytest.raises(RunFolderError) as refused:
        check_writable(locked / "eval", "--out")
    assert str(refused.value) == (
        f"--out {locked / 'eval'}: {locked}, where it would be made, cannot be written (no permission, or a read-only "
        "file system); choose a folder you can write"
    )
    with pytest.raises(RunFolderError, match=r"--output .*locked: it cannot be written"):
        check_writable(locked, "--output")
    check_writable(tmp_path / "new" / "eval", "--out")
    monkeypatch.undo()
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(RunFolderError, match=rf"--out {afile / 'sub'}: {afile} is a file, not a folder"):
        check_writable(afile / "sub", "--out")


def test_a_system_error_without_a_file_gets_the_one_being_written(tmp_path):
    """A full disk while writing says "No space left on device" and names no file."""
    with pytest.raises(OSError) as raised, files.naming_the_file(tmp_path / "metrics.md"):
        raise OSError(28, "No space left on device")
    assert raised.value.filename == str(tmp_path / "metrics.md")
    with pytest.raises(OSError) as raised, files.naming_the_file(tmp_path / "metrics.md"):
        raise OSError(13, "Permission denied", str(tmp_path / "other"))
    assert raised.value.filename == str(tmp_path / "other")  # its own file kept
