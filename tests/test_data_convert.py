"""Converters: tiny raw ACDC (NIfTI) and LA (NRRD) downloads round-trip into the public
layouts; missing and malformed raw files raise errors naming them."""

from __future__ import annotations

import os
import shlex
import signal
import time
from pathlib import Path
from types import ModuleType

import nibabel as nib
import numpy as np
import pytest

from mper import cli
from mper.data import (
    DataFormatError,
    acdc_cases,
    acdc_split,
    la_cases,
    load_acdc_slice,
    load_acdc_volume,
    load_la_case,
    normalize_intensity,
    raw_scans,
    read_list,
)
from mper.data import convert as convert_module
from mper.data.convert import crop_box
from mper.datasets import check_dataset_root, convert, get_dataset
from mper.errors import RunFolderError

ACDC_SHAPE = (12, 10, 3)  # (W, H, S) as stored in NIfTI
LA_SHAPE = (170, 160, 6)
LA_BOX = (slice(75, 95), slice(70, 90), slice(1, 4))  # far enough from the borders to crop unclipped


def save_nifti(path: Path, volume: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), str(path))
    return path


def acdc_volume(patient: int, frame: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([patient, frame])
    image = rng.uniform(10, 500, ACDC_SHAPE).astype(np.float32)
    label = rng.integers(0, 4, ACDC_SHAPE).astype(np.uint8)
    return image, label


def raw_acdc(root: Path, patients: range = range(1, 5), testing: range = range(0)) -> Path:
    """ACDC release layout: ``patients`` in training/, ``testing`` in testing/, two frames a
    patient, _4d files."""
    for patient in [*patients, *testing]:
        folder = root / ("training" if patient in patients else "testing") / f"patient{patient:03d}"
        for frame in (1, 12):
            image, label = acdc_volume(patient, frame)
            save_nifti(folder / f"patient{patient:03d}_frame{frame:02d}.nii.gz", image)
            save_nifti(folder / f"patient{patient:03d}_frame{frame:02d}_gt.nii.gz", label)
        save_nifti(folder / f"patient{patient:03d}_4d.nii.gz", np.zeros((2, 2, 2, 2), np.float32))
    return root


def test_acdc_round_trip_with_drawn_split(tmp_path):
    out = convert("acdc", raw_acdc(tmp_path / "raw"), tmp_path / "out", seed=1, progress=False)
    train, val, test = read_list(out / "train.list"), acdc_cases(out, "val"), acdc_cases(out, "test")
    assert (len(train), len(val), len(test)) == (4, 2, 2)  # 4 patients: 2 / 1 / 1
    frames = [f"patient{patient:03d}_frame{frame:02d}" for patient in range(1, 5) for frame in (1, 12)]
    assert sorted(train + val + test) == frames
    for frames in (train, val, test):
        assert all(name[:10] == frames[0][:10] for name in frames[:2])  # frames stay with their patient

    for name in train + val + test:
        image, label = load_acdc_volume(out, name)
        raw_image, raw_label = acdc_volume(int(name[7:10]), int(name[-2:]))
        assert image.shape == (3, 10, 12)
        expected = normalize_intensity(raw_image, "min-max").transpose(2, 1, 0)  # (W, H, S) -> (S, H, W)
        np.testing.assert_allclose(image, expected, atol=1e-6)
        np.testing.assert_array_equal(label, raw_label.transpose(2, 1, 0))
    assert acdc_cases(out, "train") == [f"{name}_slice_{i}" for name in train for i in range(3)]
    image, label = load_acdc_slice(out, f"{train[1]}_slice_2")
    np.testing.assert_array_equal(label, load_acdc_volume(out, train[1])[1][2])
    assert not (out / "data" / "slices" / f"{val[0]}_slice_0.h5").exists()


def test_acdc_frames_are_stored_as_the_ssl4mis_release_stores_them(tmp_path):
    # SSL4MIS's acdc_data_processing.py reads each frame with SimpleITK (whose arrays reverse
    # NIfTI's axis order), min-max normalises it and stores the array, slices first
    sitk = pytest.importorskip("SimpleITK")
    raw = raw_acdc(tmp_path / "raw", range(1, 4))
    out = convert("acdc", raw, tmp_path / "out", seed=1, progress=False)
    for image_path in sorted(raw.rglob("patient*_frame??.nii.gz")):
        name = image_path.name.removesuffix(".nii.gz")
        release_image = sitk.GetArrayFromImage(sitk.ReadImage(str(image_path))).astype(np.float64)
        release_image = (release_image - release_image.min()) / (release_image.max() - release_image.min())
        release_label = sitk.GetArrayFromImage(sitk.ReadImage(str(image_path.with_name(f"{name}_gt.nii.gz"))))
        image, label = load_acdc_volume(out, name)
        np.testing.assert_allclose(image, release_image, atol=1e-6)  # float32 rounding of values in [0, 1]
        np.testing.assert_array_equal(label, release_label)


def write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def test_acdc_split_copied_from_published_lists(tmp_path):
    lists = tmp_path / "lists"
    slices = [
        "patient002_frame01_slice_2",
        "patient002_frame01_slice_0",
        "/x/data/slices/patient001_frame12_slice_1.h5",
    ]
    write_lines(lists / "train_slices.list", slices)
    write_lines(lists / "val.list", ["patient003_frame01", "patient003_frame12"])
    write_lines(lists / "test.list", ["patient004_frame12"])
    out = convert("acdc", raw_acdc(tmp_path / "raw"), tmp_path / "out", split_from=lists, progress=False)
    labeled, unlabeled = acdc_split(out, 1)
    assert labeled == ["patient002_frame01_slice_2", "patient002_frame01_slice_0"]
    assert unlabeled == ["patient001_frame12_slice_1"]
    assert read_list(out / "train.list") == ["patient002_frame01", "patient001_frame12"]
    assert acdc_cases(out, "test") == ["patient004_frame12"]

    write_lines(lists / "test.list", ["patient099_frame01"])
    with pytest.raises(DataFormatError, match=r"test\.list.*patient099_frame01"):
        convert("acdc", tmp_path / "raw", tmp_path / "out2", split_from=lists, progress=False)
    write_lines(lists / "test.list", ["patient004_frame12"])
    write_lines(lists / "train_slices.list", ["patient002_frame01_slice_7"])
    with pytest.raises(DataFormatError, match=r"train_slices\.list.*slice_7"):
        convert("acdc", tmp_path / "raw", tmp_path / "out3", split_from=lists, progress=False)


def test_acdc_testing_patients_are_left_out_as_ssl4mis_split_the_training_patients(tmp_path, caplog):
    # newer releases label the 50 testing patients too; SSL4MIS's split is of the 100 training ones
    raw = raw_acdc(tmp_path / "raw", range(1, 4), testing=range(4, 6))
    with caplog.at_level("WARNING", logger="mper"):
        out = convert("acdc", raw, tmp_path / "out", seed=1, progress=False)
    listed = read_list(out / "train.list") + acdc_cases(out, "val") + acdc_cases(out, "test")
    assert sorted({name[:10] for name in listed}) == ["patient001", "patient002", "patient003"]
    assert caplog.messages == [
        f"converting the patients of {raw / 'training'} only, as SSL4MIS's split does; left out those of "
        f"{raw / 'testing'}/ (to convert them too, move their patient folders into {raw / 'training'})"
    ]
    # the download's own nesting, ACDC/database/{training,testing}, given from its top folder
    top = tmp_path / "ACDC"
    (top / "database").mkdir(parents=True)
    raw.rename(top / "database" / "raw")
    caplog.clear()
    with caplog.at_level("WARNING", logger="mper"):
        out = convert("acdc", top, tmp_path / "top", seed=1, progress=False)
    listed = read_list(out / "train.list") + acdc_cases(out, "val") + acdc_cases(out, "test")
    assert sorted({name[:10] for name in listed}) == ["patient001", "patient002", "patient003"]
    assert len(caplog.messages) == 1 and f"left out those of {top / 'database' / 'raw' / 'testing'}/" in caplog.text
    # a zip unpacked on macOS: __MACOSX/ repeats the folders, with no scans in them
    (tmp_path / "__MACOSX" / "ACDC" / "database" / "raw" / "training").mkdir(parents=True)
    out = convert("acdc", tmp_path, tmp_path / "unpacked", seed=1, progress=False)
    assert sorted({name[:10] for name in read_list(out / "train.list")}) <= ["patient001", "patient002", "patient003"]
    (tmp_path / "other" / "training").mkdir(parents=True)
    with pytest.raises(DataFormatError, match=r"holds 2 training/ folders .*; give --source the download's database/"):
        convert("acdc", tmp_path, tmp_path / "twice", seed=1, progress=False)


def test_acdc_patients_without_labels_are_left_out_by_name(tmp_path, caplog):
    # older releases ship the testing patients without their _gt files: given together
    raw = raw_acdc(tmp_path / "raw", range(1, 4), testing=range(4, 6))
    for patient in (raw / "testing").iterdir():
        patient.rename(raw / "training" / patient.name)
        for label in (raw / "training" / patient.name).glob("*_gt.nii.gz"):
            label.unlink()
    with caplog.at_level("WARNING", logger="mper"):
        out = convert("acdc", raw, tmp_path / "out", seed=1, progress=False)
    listed = read_list(out / "train.list") + acdc_cases(out, "val") + acdc_cases(out, "test")
    assert sorted({name[:10] for name in listed}) == ["patient001", "patient002", "patient003"]
    assert caplog.messages == [
        "left out 2 patient(s) none of whose frames has its <frame>_gt label file (a release that keeps the "
        "testing labels back): patient004, patient005"
    ]
    for label in raw.rglob("*_gt.nii.gz"):
        label.unlink()
    with pytest.raises(FileNotFoundError, match=r"none of the \d+ ACDC frames under .* has its label file beside it"):
        convert("acdc", raw, tmp_path / "unlabeled", progress=False)


def test_a_ctrl_c_dropped_where_it_was_raised_still_stops_the_conversion_and_removes_it(tmp_path, monkeypatch):
    """Ctrl-C during garbage collection raises in a weakref callback, where Python prints the
    KeyboardInterrupt and drops it; the conversion went on and exited 0."""
    read, original = [], convert_module.load_acdc_nifti

    def interrupted_in_a_callback(*paths):
        read.append(paths)
        if len(read) == 2:
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)  # the handler runs here
            except KeyboardInterrupt:
                pass  # dropped, as by a weakref callback
        return original(*paths)

    monkeypatch.setattr(convert_module, "load_acdc_nifti", interrupted_in_a_callback)
    with pytest.raises(KeyboardInterrupt):
        convert("acdc", raw_acdc(tmp_path / "raw"), tmp_path / "out", seed=1, progress=False)
    assert len(read) == 8 and not (tmp_path / "out").exists()  # every frame read, then stopped
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_header_fix_of_nibabels_is_said_once_naming_the_first_file(tmp_path, capsys, caplog, monkeypatch):
    monkeypatch.setattr(raw_scans, "_HEADER_FIXES_SAID", set())
    raw = raw_acdc(tmp_path / "raw", range(1, 4))
    for path in sorted(raw.glob("training/*/*_frame*.nii.gz")):  # pixdim[1] < 0, as old conversions write it
        scan = nib.load(path)
        image = nib.Nifti1Image(np.asarray(scan.dataobj), None, scan.header)
        image.header["pixdim"][1] *= -1
        nib.save(image, path)
    capsys.readouterr()
    with caplog.at_level("WARNING", logger="mper"):
        cli.data_main(["convert", "--dataset", "acdc", "--source", str(raw), "--out", str(tmp_path / "out")])
    said = [record.getMessage() for record in caplog.records if "pixdim" in record.getMessage()]
    first = raw / "training" / "patient001" / "patient001_frame01.nii.gz"
    assert said == [
        f"{first}: pixdim[1,2,3] should be positive; setting to abs of pixdim values (nibabel reading its header; "
        "said once, for the first such file)"
    ]
    assert "pixdim" not in capsys.readouterr().err.replace(said[0], "")


def test_acdc_a_damaged_download_is_refused_naming_the_missing_file(tmp_path):
    """A frame that a patient's Info.cfg names, or the frame of a _gt file, missing: the
    patient was converted with one frame (or left out) and the split changed, with exit 0."""
    raw = raw_acdc(tmp_path / "raw", range(1, 4))
    for patient in (raw / "training").iterdir():
        (patient / "Info.cfg").write_text("ED: 1\nES: 12\nGroup: DCM\nHeight: 184.0\nNbFrame: 30\nWeight: 95.0\n")
    folder = raw / "training" / "patient002"
    assert len(read_list(convert("acdc", raw, tmp_path / "whole", seed=1, progress=False) / "train.list")) == 2
    hidden = tmp_path / "hidden"
    hidden.mkdir()

    def refused(match: str) -> None:
        with pytest.raises(FileNotFoundError, match=match):
            convert("acdc", raw, tmp_path / "out", progress=False)
        assert not (tmp_path / "out").exists()

    image, label = folder / "patient002_frame12.nii.gz", folder / "patient002_frame12_gt.nii.gz"
    image.rename(hidden / image.name)  # the label left without its frame
    refused(
        f"{label} has no frame patient002_frame12.nii.gz beside it, whose label it is; the download is "
        "incomplete: unpack it again, or move that patient's folder out of --source to convert the others"
    )
    label.rename(hidden / label.name)  # frame and label missing: Info.cfg names it
    refused(
        f"{folder / 'Info.cfg'} names frame 12 as ES, but {folder} holds no patient002_frame12.nii.gz; the download"
    )
    for path in folder.glob("*.nii.gz"):  # a patient folder without any frame
        path.rename(hidden / path.name)
    refused(f"{folder / 'Info.cfg'} names frame 1 as ED, but {folder} holds no patient002_frame01.nii.gz")
    for path in hidden.iterdir():
        path.rename(folder / path.name)
    (folder / "patient002_frame01_gt.nii.gz").unlink()
    refused(r"patient002_frame01_gt.nii.gz not found: expected the label volume of .*; the download is incomplete")


def test_acdc_bad_raw_files(tmp_path):
    raw = raw_acdc(tmp_path / "raw", range(1, 4))
    folder = raw / "training" / "patient001"
    gt = folder / "patient001_frame12_gt.nii.gz"
    gt.unlink()
    with pytest.raises(FileNotFoundError, match="patient001_frame12_gt.nii.gz"):
        convert("acdc", raw, tmp_path / "out", progress=False)
    gt.write_bytes(b"not a nifti file")
    with pytest.raises(DataFormatError, match="patient001_frame12_gt.nii.gz: not a readable NIfTI file"):
        convert("acdc", raw, tmp_path / "out", progress=False)
    image = folder / "patient001_frame12.nii.gz"
    nan_image = acdc_volume(1, 12)[0]
    nan_image[3, 3, 1] = np.nan  # one voxel: its min-max normalisation made the whole volume NaN, with exit 0
    save_nifti(image, nan_image)
    save_nifti(gt, acdc_volume(1, 12)[1])
    with pytest.raises(DataFormatError, match=r"patient001_frame12.nii.gz: image has 1 NaN or infinite value\(s\)"):
        convert("acdc", raw, tmp_path / "out", progress=False)
    save_nifti(image, acdc_volume(1, 12)[0])
    save_nifti(gt, np.full(ACDC_SHAPE, 5, np.uint8))
    with pytest.raises(DataFormatError, match="classes 0..3"):
        convert("acdc", raw, tmp_path / "out", progress=False)
    save_nifti(gt, np.zeros((12, 10, 2), np.uint8))
    with pytest.raises(DataFormatError, match="one label per voxel"):
        convert("acdc", raw, tmp_path / "out", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no ACDC frame"):
        convert("acdc", tmp_path / "empty", tmp_path / "out", progress=False)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        convert("acdc", tmp_path / "nowhere", tmp_path / "out", progress=False)


def nrrd() -> ModuleType:
    """pynrrd (the `test` and `convert` extras), for the LA tests alone: without it they skip,
    and the other tests, and the collection of the whole suite (``pytest -m cuda``), still run."""
    return pytest.importorskip("nrrd", reason="pynrrd is not installed (pip install 'mper[test]')")


def la_volume(case: int, label_values: tuple[int, int] = (0, 255)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(case)
    image = rng.integers(0, 300, LA_SHAPE).astype(np.int16)
    label = np.full(LA_SHAPE, label_values[0], np.uint8)
    label[LA_BOX] = label_values[1]
    return image, label


def raw_la(root: Path, cases: int = 3) -> Path:
    for case in range(cases):
        folder = root / "Training Set" / f"CASE{case}"
        folder.mkdir(parents=True)
        image, label = la_volume(case, (0, 1) if case == 2 else (0, 255))
        nrrd().write(str(folder / "lgemri.nrrd"), image)
        nrrd().write(str(folder / "laendo.nrrd"), label)
    return root


def test_la_round_trip(tmp_path):
    out = convert("la", raw_la(tmp_path / "raw"), tmp_path / "out", seed=0, progress=False)
    train, test = la_cases(out, "train"), la_cases(out, "test")
    assert (len(train), len(test)) == (2, 1) and sorted(train + test) == ["CASE0", "CASE1", "CASE2"]
    for case in range(3):
        image, label = load_la_case(out, f"CASE{case}")
        raw_image, _ = la_volume(case)
        assert label.sum() == 20 * 20 * 3  # the whole atrium is inside the crop
        assert image.shape[2] == LA_SHAPE[2] and min(image.shape[:2]) >= 112 + 2 * 10
        # The crop window follows from where the atrium box landed.
        first = np.argwhere(label)[0]
        start = (LA_BOX[0].start - first[0], LA_BOX[1].start - first[1])
        window = (slice(start[0], start[0] + image.shape[0]), slice(start[1], start[1] + image.shape[1]))
        np.testing.assert_allclose(image, normalize_intensity(raw_image, "z-score")[window], atol=1e-5)


def test_crop_box_margins_follow_uamt():
    label = np.zeros((300, 300, 4), np.uint8)
    label[140:160, 100:250, :2] = 1
    for seed in range(20):
        rows, cols = crop_box(label, np.random.default_rng(seed), (112, 112))
        assert 140 - 46 - 19 <= rows.start <= 140 - 46 - 10 and 160 + 46 + 10 <= rows.stop <= 160 + 46 + 19
        assert 100 - 19 <= cols.start <= 100 - 10 and 250 + 10 <= cols.stop <= 250 + 19
    rows, _ = crop_box(label[130:170], np.random.default_rng(0), (112, 112))
    assert (rows.start, rows.stop) == (0, 40)  # clipped to the volume


def test_la_split_from_published_lists(tmp_path):
    lists = tmp_path / "lists"
    write_lines(lists / "train.list", ["/data/2018LA_Seg_Training Set/CASE2/mri_norm2.h5", "CASE0"])
    write_lines(lists / "test.list", ["CASE1"])
    out = convert("la", raw_la(tmp_path / "raw"), tmp_path / "out", split_from=lists, progress=False)
    assert la_cases(out, "train") == ["CASE2", "CASE0"] and la_cases(out, "test") == ["CASE1"]
    write_lines(lists / "test.list", ["CASE9"])
    with pytest.raises(DataFormatError, match=r"test\.list.*CASE9"):
        convert("la", tmp_path / "raw", tmp_path / "other", split_from=lists, progress=False)
    assert not (tmp_path / "other").exists()  # nothing of a failed conversion is left


def test_a_source_of_too_few_cases_for_the_split_says_which_folder_to_give(tmp_path, capsys):
    """A case folder given as --source (one of the folders it should hold)."""
    raw = raw_acdc(tmp_path / "acdc", range(1, 3))
    with pytest.raises(SystemExit):
        cli.data_main(["convert", "--dataset", "acdc", "--source", str(raw / "training"), "--out", str(tmp_path / "a")])
    assert capsys.readouterr().err.splitlines()[-1] == (
        "mper-data: error: --source holds 2 patient(s) (patient001, patient002), too few to split into "
        "train/val/test, which takes at least 3: give --source the folder that holds every patient folder"
    )
    case = raw_la(tmp_path / "la") / "Training Set" / "CASE0"
    with pytest.raises(SystemExit):
        cli.data_main(["convert", "--dataset", "la", "--source", str(case), "--out", str(tmp_path / "b")])
    assert capsys.readouterr().err.splitlines()[-1] == (
        "mper-data: error: --source holds 1 case(s) (CASE0), too few to split into train/test, which takes at least "
        "2: give --source the folder that holds every case folder"
    )
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_la_the_downloads_testing_set_is_left_out_as_ua_mt_split_the_training_set(tmp_path, caplog):
    # the 2018 challenge's zip holds Training Set/ and Testing Set/, whose scans have no laendo.nrrd:
    # the download's top folder (what mper-train suggests for it) was refused over a missing label
    raw = raw_la(tmp_path / "raw", cases=3)
    testing = raw / "Testing Set" / "TEST0"
    testing.mkdir(parents=True)
    nrrd().write(str(testing / "lgemri.nrrd"), la_volume(7)[0])
    with caplog.at_level("WARNING", logger="mper"):
        out = convert("la", raw, tmp_path / "out", seed=1, progress=False)
    assert sorted(read_list(out / "train.list") + read_list(out / "test.list")) == ["CASE0", "CASE1", "CASE2"]
    assert caplog.messages == [
        f"converting the cases of {raw / 'Training Set'} only, as UA-MT's split does; left out those of "
        f"{raw / 'Testing Set'}/ (to convert them too, move their case folders into {raw / 'Training Set'})"
    ]


def test_la_bad_raw_files(tmp_path):
    raw = raw_la(tmp_path / "raw", cases=2)
    label_path = raw / "Training Set" / "CASE0" / "laendo.nrrd"
    label_path.unlink()
    with pytest.raises(FileNotFoundError, match=r"CASE0/laendo\.nrrd not found: .*; the download is incomplete"):
        convert("la", raw, tmp_path / "out", progress=False)
    label_path.write_bytes(b"NRRD0004\ngarbage")
    with pytest.raises(DataFormatError, match=r"laendo\.nrrd could not be read"):
        convert("la", raw, tmp_path / "out", progress=False)
    nrrd().write(str(label_path), np.zeros(LA_SHAPE, np.uint8))
    with pytest.raises(DataFormatError, match="no atrium voxel"):
        convert("la", raw, tmp_path / "out", progress=False)
    nrrd().write(str(label_path), np.full(LA_SHAPE, 3, np.uint8))
    with pytest.raises(DataFormatError, match=r"\{0, 255\} or \{0, 1\}"):
        convert("la", raw, tmp_path / "out", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no LA case.*lgemri.nrrd"):
        convert("la", tmp_path / "empty", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_convert_writes_only_into_a_new_or_empty_folder_and_leaves_nothing_when_it_fails(tmp_path):
    raw = raw_la(tmp_path / "raw", cases=3)
    with pytest.raises(RunFolderError, match=r"--out .*raw is the raw dataset itself"):
        convert("la", raw, raw, progress=False)
    dataset = convert("la", raw, tmp_path / "LA", progress=False)
    listed = sorted(path.name for path in dataset.iterdir())
    with pytest.raises(RunFolderError, match=rf"--out {dataset} is not empty \(it holds "):
        convert("la", raw, dataset, progress=False)
    assert sorted(path.name for path in dataset.iterdir()) == listed
    # the third case is unreadable: the two written before it are removed, the empty folder kept
    (tmp_path / "empty").mkdir()
    (raw / "Training Set" / "CASE2" / "laendo.nrrd").write_bytes(b"NRRD0004\ngarbage")
    with pytest.raises(DataFormatError, match="CASE2/laendo.nrrd could not be read"):
        convert("la", raw, tmp_path / "empty", progress=False)
    assert list((tmp_path / "empty").iterdir()) == []


RAW_DOWNLOADS = {"la": raw_la, "acdc": raw_acdc}


@pytest.mark.parametrize("dataset, level", [("la", ""), ("la", "Training Set"), ("acdc", ""), ("acdc", "training")])
def test_a_data_root_at_the_raw_download_gives_the_convert_command_that_converts_it(tmp_path, capsys, dataset, level):
    root = RAW_DOWNLOADS[dataset](tmp_path / "raw download") / level
    with pytest.raises(SystemExit) as stop:
        cli.train_main(
            ["--dataset", dataset, "--data-root", str(root), "--device", "cpu", "--preset", "demo", "--print-config"]
        )
    assert stop.value.code == cli.USER_ERROR_EXIT_CODE
    spec = get_dataset(dataset)
    command = f"mper-data convert --dataset {dataset} --source {shlex.quote(str(root))} --out DIR"
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"mper-train: error: {root} holds {spec.raw_description}, the raw download, not the {spec.title} data mper "
        f"reads ({spec.layout_mark}/ and the list files): convert it first, {command}, then pass --data-root DIR"
    )
    # the command given converts the download into a data root that every command takes
    out = tmp_path / "converted"
    cli.data_main(shlex.split(command.replace("DIR", shlex.quote(str(out))))[1:])
    check_dataset_root(out, dataset, f"the run trains on {dataset}")
    assert spec.list_cases(out, "train")
