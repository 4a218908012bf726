"""Prediction from NIfTI and HDF5 files to NIfTI label maps."""
from __future__ import annotations

import h5py
import nibabel as nib
import numpy as np
import pytest
from test_inference import ThresholdNet

from mper.eval.predict import predict_file, predict_path

AFFINE = np.array(
    [[0.625, 0.0, 0.0, -40.0], [0.0, 0.625, 0.0, 12.5], [0.0, 0.0, 2.5, 7.0], [0.0, 0.0, 0.0, 1.0]]
)
LA_OPTIONS = {"patch_size": (16, 16, 8), "stride": (8, 8, 4)}


def half_bright(shape):
    """0 / 10 in equal halves: z-scored that is exactly -1 / +1."""
    raw = np.zeros(shape, np.float32)
    raw.reshape(-1)[::2] = 10.0
    return raw


def write_h5(path, **datasets):
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as file:
        for name, data in datasets.items():
            file.create_dataset(name, data=data)
    return path


def test_la_nifti_is_normalised_and_keeps_its_affine(tmp_path):
    raw = half_bright((18, 16, 6))
    nib.save(nib.Nifti1Image(raw, AFFINE), tmp_path / "scan.nii.gz")
    out = predict_file(ThresholdNet(), tmp_path / "scan.nii.gz", "la", tmp_path / "out", **LA_OPTIONS)
    assert out == tmp_path / "out" / "scan_pred.nii.gz"
    labels = nib.load(out)
    np.testing.assert_allclose(labels.affine, AFFINE)
    assert labels.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(labels.dataobj), (raw > 0).astype(np.uint8))


def test_acdc_nifti_is_segmented_along_its_last_axis(tmp_path):
    raw = np.random.default_rng(0).integers(0, 4, size=(20, 12, 3)).astype(np.float32) * 100
    raw[0, 0, 0], raw[0, 0, 1] = 0, 300  # min-max scaling maps {0, ..., 300} to {0, ..., 1}
    nib.save(nib.Nifti1Image(raw, AFFINE), tmp_path / "frame.nii")
    net = ThresholdNet(num_classes=4)
    out = predict_file(net, tmp_path / "frame.nii", "acdc", tmp_path, size=(32, 32))
    assert out.name == "frame_pred.nii.gz"
    assert net.inputs[0].shape == (3, 1, 32, 32)
    labels = nib.load(out)
    np.testing.assert_allclose(labels.affine, AFFINE)
    np.testing.assert_array_equal(np.asarray(labels.dataobj), (raw / 100).astype(np.uint8))


def test_h5_is_used_as_stored_with_an_identity_affine(tmp_path):
    image = np.where(half_bright((16, 16, 8)) > 0, 1.0, 0.0).astype(np.float32)
    path = write_h5(tmp_path / "case" / "mri_norm2.h5", image=image, label=np.zeros(image.shape, np.uint8))
    out = predict_file(ThresholdNet(), path, "la", tmp_path / "out", **LA_OPTIONS)
    labels = nib.load(out)
    np.testing.assert_array_equal(labels.affine, np.eye(4))
    np.testing.assert_array_equal(np.asarray(labels.dataobj), image.astype(np.uint8))


def test_directory_outputs_keep_the_case_folders(tmp_path):
    for case in ("caseA", "caseB"):
        write_h5(tmp_path / "in" / case / "mri_norm2.h5", image=np.zeros((16, 16, 8), np.float32))
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    outputs = predict_path(ThresholdNet(), tmp_path / "in", "la", tmp_path / "out", **LA_OPTIONS)
    assert outputs == [
        tmp_path / "out" / "caseA" / "mri_norm2_pred.nii.gz",
        tmp_path / "out" / "caseB" / "mri_norm2_pred.nii.gz",
    ]
    assert all(path.is_file() for path in outputs)
    one_file = tmp_path / "in" / "caseA" / "mri_norm2.h5"
    single = predict_path(ThresholdNet(), one_file, "la", tmp_path / "one", **LA_OPTIONS)
    assert single == [tmp_path / "one" / "mri_norm2_pred.nii.gz"]


def test_bad_inputs_name_the_file_and_what_was_expected(tmp_path):
    net = ThresholdNet()
    with pytest.raises(FileNotFoundError, match="missing.nii.gz"):
        predict_file(net, tmp_path / "missing.nii.gz", "la", tmp_path)
    (tmp_path / "scan.mha").write_bytes(b"\0")
    with pytest.raises(ValueError, match=r"scan.mha: unsupported file type; expected one of \.nii\.gz, "):
        predict_file(net, tmp_path / "scan.mha", "la", tmp_path)
    write_h5(tmp_path / "no_image.h5", volume=np.zeros((4, 4, 4)))
    with pytest.raises(ValueError, match=r"no_image.h5 has no dataset 'image'"):
        predict_file(net, tmp_path / "no_image.h5", "la", tmp_path)
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.float32), np.eye(4)), tmp_path / "cine.nii.gz")
    with pytest.raises(ValueError, match=r"cine.nii.gz: expected a 3D volume"):
        predict_file(net, tmp_path / "cine.nii.gz", "acdc", tmp_path)
    (tmp_path / "broken.nii.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match=r"broken.nii.gz: not a readable NIfTI file"):
        predict_file(net, tmp_path / "broken.nii.gz", "la", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no image files under .*empty"):
        predict_path(net, tmp_path / "empty", "la", tmp_path)
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        predict_path(net, tmp_path / "nowhere", "la", tmp_path)
