"""Prediction from NIfTI and HDF5 files to NIfTI label maps."""

from __future__ import annotations

import logging
import re

import nibabel as nib
import numpy as np
import pytest
import torch

from mper.data import normalize_intensity
from mper.data.acdc import write_acdc_volume
from mper.errors import DataFormatError, UserError
from mper.eval.predict import predict_file, predict_path
from test_inference import ThresholdNet

AFFINE = np.array([[0.625, 0.0, 0.0, -40.0], [0.0, 0.625, 0.0, 12.5], [0.0, 0.0, 2.5, 7.0], [0.0, 0.0, 0.0, 1.0]])
LA_OPTIONS = {"patch_size": (16, 16, 8), "stride": (8, 8, 4)}


def half_bright(shape):
    """0 / 10 in equal halves: z-scored that is exactly -1 / +1."""
    raw = np.zeros(shape, np.float32)
    raw.reshape(-1)[::2] = 10.0
    return raw


def test_la_nifti_is_normalised_and_keeps_its_header(tmp_path):
    raw = half_bright((18, 16, 6))
    scan = nib.Nifti1Image(raw, AFFINE)
    scan.header.set_xyzt_units("mm", "sec")
    scan.set_qform(AFFINE, code=1)
    scan.set_sform(AFFINE, code=4)
    nib.save(scan, tmp_path / "scan.nii.gz")
    out = predict_file(ThresholdNet(), tmp_path / "scan.nii.gz", "la", tmp_path / "out", **LA_OPTIONS)
    assert out == tmp_path / "out" / "scan_pred.nii.gz"
    labels = nib.load(out)
    np.testing.assert_allclose(labels.affine, AFFINE)
    assert (int(labels.header["qform_code"]), int(labels.header["sform_code"])) == (1, 4)
    assert labels.header.get_xyzt_units() == ("mm", "sec")
    assert labels.header.get_zooms() == scan.header.get_zooms()
    assert labels.header.get_intent()[0] == "label"
    assert labels.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(labels.dataobj), (raw > 0).astype(np.uint8))


@pytest.mark.parametrize("ones", [(1,), (1, 1)])
def test_an_la_volume_with_trailing_axes_of_one_is_segmented_as_its_3d_volume(tmp_path, ones):
    raw = half_bright((18, 16, 6))
    nib.save(nib.Nifti1Image(raw.reshape(*raw.shape, *ones), AFFINE), tmp_path / "scan.nii.gz")
    out = predict_file(ThresholdNet(), tmp_path / "scan.nii.gz", "la", tmp_path / "out", **LA_OPTIONS)
    labels = nib.load(out)
    assert labels.shape == raw.shape
    np.testing.assert_allclose(labels.affine, AFFINE)
    np.testing.assert_array_equal(np.asarray(labels.dataobj), (raw > 0).astype(np.uint8))


def test_a_label_map_stopped_while_written_leaves_the_previous_one_and_no_partial_file(tmp_path, monkeypatch):
    import gzip

    scan = nib.Nifti1Image(half_bright((18, 16, 6)), AFFINE)
    nib.save(scan, tmp_path / "scan.nii.gz")
    out = predict_file(ThresholdNet(), tmp_path / "scan.nii.gz", "la", tmp_path / "out", **LA_OPTIONS)
    before = out.read_bytes()
    write = gzip.GzipFile.write

    def stopped(self, data):  # Ctrl-C after the header went out
        write(self, data)
        raise KeyboardInterrupt

    monkeypatch.setattr(gzip.GzipFile, "write", stopped)
    with pytest.raises(KeyboardInterrupt):
        predict_file(ThresholdNet(), tmp_path / "scan.nii.gz", "la", tmp_path / "out", **LA_OPTIONS)
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["scan_pred.nii.gz"]
    assert out.read_bytes() == before


def test_postprocess_keeps_only_the_largest_component_as_evaluation_does(tmp_path):
    raw = np.zeros((24, 24, 8), np.float32)
    raw[2:12, 2:12, 1:7] = 10.0  # the atrium
    raw[18:21, 18:21, 3:5] = 10.0  # a stray blob
    nib.save(nib.Nifti1Image(raw, AFFINE), tmp_path / "scan.nii.gz")
    as_is = predict_file(ThresholdNet(), tmp_path / "scan.nii.gz", "la", tmp_path / "raw", **LA_OPTIONS)
    cleaned = predict_file(
        ThresholdNet(),
        tmp_path / "scan.nii.gz",
        "la",
        tmp_path / "clean",
        postprocess="largest-component",
        **LA_OPTIONS,
    )
    np.testing.assert_array_equal(np.asarray(nib.load(as_is).dataobj), (raw > 0).astype(np.uint8))
    atrium = np.zeros_like(raw, dtype=np.uint8)
    atrium[2:12, 2:12, 1:7] = 1
    np.testing.assert_array_equal(np.asarray(nib.load(cleaned).dataobj), atrium)


def test_acdc_nifti_is_segmented_along_its_last_axis(tmp_path):
    raw = np.random.default_rng(0).integers(0, 4, size=(20, 12, 3)).astype(np.float32) * 100
    raw[0, 0, 0], raw[0, 0, 1] = 0, 300  # min-max scaling maps {0, ..., 300} to {0, ..., 1}
    nib.save(nib.Nifti1Image(raw, AFFINE), tmp_path / "frame.nii")
    net = ThresholdNet(num_classes=4)
    out = predict_file(net, tmp_path / "frame.nii", "acdc", tmp_path, patch_size=(32, 32))
    assert out.name == "frame_pred.nii.gz"
    assert net.inputs[0].shape == (3, 1, 32, 32)
    labels = nib.load(out)
    np.testing.assert_allclose(labels.affine, AFFINE)
    np.testing.assert_array_equal(np.asarray(labels.dataobj), (raw / 100).astype(np.uint8))


def test_an_acdc_nifti_scan_reaches_the_network_as_its_ssl4mis_volume_does(write_h5, tmp_path):
    # the SSL4MIS volume of a scan is SimpleITK's array of it (NIfTI's axes reversed),
    # min-max normalised: both must give the network the same slices
    sitk = pytest.importorskip("SimpleITK")
    raw = np.random.default_rng(1).integers(0, 4, size=(20, 12, 3)).astype(np.float32) * 100
    raw[0, 0, 0], raw[0, 0, 1] = 0, 300
    nib.save(nib.Nifti1Image(raw, AFFINE), tmp_path / "frame.nii.gz")
    volume = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "frame.nii.gz"))) / 300
    write_h5(tmp_path / "volume" / "frame.h5", image=volume.astype(np.float32))
    from_nifti, from_h5 = ThresholdNet(num_classes=4), ThresholdNet(num_classes=4)
    scan_labels = predict_file(from_nifti, tmp_path / "frame.nii.gz", "acdc", tmp_path / "nifti", patch_size=(24, 16))
    volume_labels = predict_file(
        from_h5, tmp_path / "volume" / "frame.h5", "acdc", tmp_path / "h5", patch_size=(24, 16)
    )
    for scan_input, volume_input in zip(from_nifti.inputs, from_h5.inputs, strict=True):
        torch.testing.assert_close(scan_input, volume_input, rtol=0, atol=1e-6)  # float32 rounding of x / 300
    np.testing.assert_array_equal(
        np.asarray(nib.load(scan_labels).dataobj), np.asarray(nib.load(volume_labels).dataobj).transpose(2, 1, 0)
    )


def test_an_acdc_scan_stored_slices_first_is_refused_unless_forced(write_h5, tmp_path, caplog):
    # the same scan as (128, 128, 7), NIfTI's slices-last order, but stored as the h5 volumes are
    raw = np.random.default_rng(0).integers(0, 4, size=(7, 128, 128)).astype(np.float32) * 100
    raw[0, 0, 0], raw[0, 0, 1] = 0, 300
    nib.save(nib.Nifti1Image(raw, AFFINE), tmp_path / "slices_first.nii.gz")
    net = ThresholdNet(num_classes=4)
    with pytest.raises(
        DataFormatError,
        match=(
            r"slices_first.nii.gz: shape \(7, 128, 128\) looks like the wrong axis order for the ACDC model, which "
            r"takes \(W, H, S\) here \(NIfTI \(W, H, S\), h5 \(S, H, W\)\), slices along axis 2: axis 0 \(7\) is "
            r"far shorter than axis 2 \(128\)\. Move the slices to axis 2 \(e\.g\. numpy\.moveaxis\(image, 0, 2\)\), "
            r"or pass --force to segment it as it is"
        ),
    ):
        predict_file(net, tmp_path / "slices_first.nii.gz", "acdc", tmp_path / "out", patch_size=(128, 128))
    assert not (tmp_path / "out").exists() and not net.inputs
    with caplog.at_level(logging.WARNING, logger="mper"):
        forced = predict_file(
            net, tmp_path / "slices_first.nii.gz", "acdc", tmp_path / "out", force=True, patch_size=(128, 128)
        )
    assert [record.getMessage().endswith("segmenting it as it is (--force)") for record in caplog.records] == [True]
    assert nib.load(forced).shape == (7, 128, 128)
    assert sum(len(batch) for batch in net.inputs) == 128  # the 128 'slices' of 7 x 128 voxels
    nib.save(nib.Nifti1Image(np.moveaxis(raw, 0, 2), AFFINE), tmp_path / "slices_last.nii.gz")
    right = predict_file(net, tmp_path / "slices_last.nii.gz", "acdc", tmp_path / "out", patch_size=(128, 128))
    np.testing.assert_array_equal(np.asarray(nib.load(right).dataobj), np.moveaxis(raw / 100, 0, 2).astype(np.uint8))
    # h5 volumes are the other way round: slices first
    write_h5(tmp_path / "slices_last.h5", image=np.moveaxis(raw / 300, 0, 2))
    with pytest.raises(DataFormatError, match=r"takes \(S, H, W\) here .* numpy.moveaxis\(image, 2, 0\)"):
        predict_file(net, tmp_path / "slices_last.h5", "acdc", tmp_path / "out", patch_size=(128, 128))
    nib.save(nib.Nifti1Image(half_bright((8, 16, 16)), AFFINE), tmp_path / "depth_first.nii.gz")
    with pytest.raises(
        DataFormatError,
        match=r"for the LA model, which takes \(H, W, D\) here \(NIfTI and h5 "
        r"\(H, W, D\)\), axial slices along axis 2: axis 0 \(8\)",
    ):
        predict_file(ThresholdNet(), tmp_path / "depth_first.nii.gz", "la", tmp_path / "out", **LA_OPTIONS)


def test_h5_is_used_as_stored_with_an_identity_affine(write_h5, tmp_path):
    image = np.where(half_bright((16, 16, 8)) > 0, 1.0, -1.0).astype(np.float32)
    path = write_h5(tmp_path / "case" / "mri_norm2.h5", image=image, label=np.zeros(image.shape, np.uint8))
    out = predict_file(ThresholdNet(), path, "la", tmp_path / "out", **LA_OPTIONS)
    assert out == tmp_path / "out" / "case_pred.nii.gz"
    labels = nib.load(out)
    np.testing.assert_array_equal(labels.affine, np.eye(4))
    np.testing.assert_array_equal(np.asarray(labels.dataobj), (image > 0).astype(np.uint8))


def test_outputs_are_named_after_the_case_and_keep_its_folder(write_h5, tmp_path, caplog):
    for case in ("caseA", "caseB"):
        write_h5(tmp_path / "in" / case / "mri_norm2.h5", image=half_bright((16, 16, 8)) - 5)
    (tmp_path / "in" / "more").mkdir()
    nib.save(nib.Nifti1Image(half_bright((16, 16, 8)), AFFINE), tmp_path / "in" / "more" / "scan.nii.gz")
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    with caplog.at_level(logging.INFO, logger="mper"):
        outputs = predict_path(ThresholdNet(), tmp_path / "in", "la", tmp_path / "out", **LA_OPTIONS)
    assert outputs == [
        tmp_path / "out" / "caseA_pred.nii.gz",
        tmp_path / "out" / "caseB_pred.nii.gz",
        tmp_path / "out" / "more" / "scan_pred.nii.gz",
    ]
    assert all(path.is_file() for path in outputs)
    assert caplog.messages[0] == f"ignored 1 file(s) of {tmp_path / 'in'} not ending in .nii.gz, .nii, .h5: notes.txt"
    assert [line.split(" ")[0] for line in caplog.messages[1:]] == ["[1/3]", "[2/3]", "[3/3]"]
    one_file = tmp_path / "in" / "caseA" / "mri_norm2.h5"
    single = predict_path(ThresholdNet(), one_file, "la", tmp_path / "one", **LA_OPTIONS)
    assert single == [tmp_path / "one" / "caseA_pred.nii.gz"]


def test_label_maps_and_the_cine_series_beside_their_frames_are_left_alone_in_an_acdc_patient_folder(tmp_path, caplog):
    """The ACDC download keeps each frame's label map, <frame>_gt.nii.gz, and the patient's
    4D cine series, <patient>_4d.nii.gz, beside the frames."""
    patient = tmp_path / "in" / "patient017"
    patient.mkdir(parents=True)
    raw = np.random.default_rng(0).integers(0, 4, size=(20, 12, 3)).astype(np.float32) * 100
    raw[0, 0, 0], raw[0, 0, 1] = 0, 300
    for frame in ("patient017_frame01", "patient017_frame09"):
        nib.save(nib.Nifti1Image(raw, AFFINE), patient / f"{frame}.nii.gz")
        nib.save(nib.Nifti1Image((raw / 100).astype(np.uint8), AFFINE), patient / f"{frame}_gt.nii.gz")
    nib.save(nib.Nifti1Image(np.stack([raw, raw], axis=-1), AFFINE), patient / "patient017_4d.nii.gz")
    # a _gt file without its image is an image as any other, and so is a _4d file without frames
    nib.save(nib.Nifti1Image(raw, AFFINE), patient / "lonely_gt.nii.gz")
    nib.save(nib.Nifti1Image(raw, AFFINE), patient / "lonely_4d.nii.gz")
    with caplog.at_level(logging.INFO, logger="mper"):
        outputs = predict_path(
            ThresholdNet(num_classes=4), tmp_path / "in", "acdc", tmp_path / "out", patch_size=(32, 32)
        )
    assert [path.name for path in outputs] == [
        "lonely_4d_pred.nii.gz",
        "lonely_gt_pred.nii.gz",
        "patient017_frame01_pred.nii.gz",
        "patient017_frame09_pred.nii.gz",
    ]
    assert caplog.messages[:2] == [
        f"ignored 2 label map(s) of {tmp_path / 'in'}, named <image>_gt beside their image: "
        "patient017/patient017_frame01_gt.nii.gz, patient017/patient017_frame09_gt.nii.gz",
        f"ignored 1 4D cine series of {tmp_path / 'in'}, named <patient>_4d beside its frames, which are segmented "
        "instead: patient017/patient017_4d.nii.gz",
    ]


def test_the_training_slices_of_an_acdc_dataset_are_left_alone_for_their_volumes(tmp_path, caplog):
    """The SSL4MIS layout keeps each training frame twice: data/<case>.h5 and one 2D file
    per slice in data/slices/, which a 2D-slice model cannot take as volumes."""
    root = tmp_path / "acdc"
    image = np.random.default_rng(0).random((3, 32, 32)).astype(np.float32)
    for case in ("patient001_frame01", "patient002_frame01"):
        write_acdc_volume(root, case, image, np.zeros(image.shape, np.uint8), with_slices=True)
    # a slice file whose frame's volume is missing is an image as any other
    write_acdc_volume(tmp_path / "other", "patient009_frame01", image, np.zeros(image.shape, np.uint8), True)
    (tmp_path / "other" / "data" / "patient009_frame01.h5").rename(
        root / "data" / "slices" / "patient009_frame01_slice_0.h5"
    )
    net = ThresholdNet(num_classes=4)
    with caplog.at_level(logging.INFO, logger="mper"):
        outputs = predict_path(net, root, "acdc", tmp_path / "out", patch_size=(32, 32))
    assert [path.relative_to(tmp_path / "out").as_posix() for path in outputs] == [
        "data/patient001_frame01_pred.nii.gz",
        "data/patient002_frame01_pred.nii.gz",
        "data/slices/patient009_frame01_slice_0_pred.nii.gz",
    ]
    assert caplog.messages[0] == (
        f"ignored 6 2D training slice(s) of {root}, in data/slices/ of the SSL4MIS ACDC layout: their frames' "
        "volumes in data/ are segmented instead"
    )
    (root / "data" / "slices" / "patient009_frame01_slice_0.h5").unlink()
    with pytest.raises(UserError, match="holds only the 2D training slices of an ACDC dataset; give its data/"):
        predict_path(net, root / "data" / "slices", "acdc", tmp_path / "out2", patch_size=(32, 32))


def test_a_case_of_several_nnunet_channel_files_is_refused_by_a_single_channel_model(tmp_path, caplog):
    """Segmenting each channel file as a case of its own would write a label map of the
    wrong modality with exit 0."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("heart_0000.nii.gz", "heart_0001.nii.gz", "single_0000.nii.gz", "plain.nii.gz"):
        nib.save(nib.Nifti1Image(half_bright((16, 16, 8)), AFFINE), folder / name)
    with caplog.at_level(logging.INFO, logger="mper"), pytest.raises(UserError, match="2 of 4 files"):
        predict_path(ThresholdNet(), folder, "la", tmp_path / "out", **LA_OPTIONS)
    # a case of one channel file is an image as any other
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == [
        "plain_pred.nii.gz",
        "single_0000_pred.nii.gz",
    ]
    refusal = (
        f"{folder}: case heart has 2 channel files (heart_0000.nii.gz, heart_0001.nii.gz), as nnU-Net names the "
        "channels of one case, but the LA model takes one single-channel image per case"
    )
    assert all(f"[{index}/4] skipped: {refusal}" in caplog.text for index in (1, 2))
    with pytest.raises(DataFormatError, match=re.escape(refusal)):
        predict_file(ThresholdNet(), folder / "heart_0001.nii.gz", "la", tmp_path / "one", **LA_OPTIONS)
    assert not (tmp_path / "one").exists()
    # separate scans numbered as channels, segmented each as a case of its own when the user says so
    forced = predict_path(ThresholdNet(), folder, "la", tmp_path / "forced", force=True, **LA_OPTIONS)
    assert [path.name for path in forced] == [
        "heart_0000_pred.nii.gz",
        "heart_0001_pred.nii.gz",
        "plain_pred.nii.gz",
        "single_0000_pred.nii.gz",
    ]
    single = predict_file(
        ThresholdNet(), folder / "heart_0001.nii.gz", "la", tmp_path / "one", force=True, **LA_OPTIONS
    )
    assert single == tmp_path / "one" / "heart_0001_pred.nii.gz"


def test_a_numbered_series_of_scans_is_not_taken_for_channel_files(tmp_path):
    """nnU-Net numbers the channels of a case from 0000 on: scans numbered from 0001, or
    with a gap, are scans of their own and each is segmented."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("scan_0001.nii.gz", "scan_0002.nii.gz", "gap_0000.nii.gz", "gap_0002.nii.gz"):
        nib.save(nib.Nifti1Image(half_bright((16, 16, 8)), AFFINE), folder / name)
    written = predict_path(ThresholdNet(), folder, "la", tmp_path / "out", **LA_OPTIONS)
    assert sorted(path.name for path in written) == [
        "gap_0000_pred.nii.gz",
        "gap_0002_pred.nii.gz",
        "scan_0001_pred.nii.gz",
        "scan_0002_pred.nii.gz",
    ]
    assert predict_file(ThresholdNet(), folder / "scan_0002.nii.gz", "la", tmp_path / "one", **LA_OPTIONS).is_file()


def test_a_file_cut_short_is_reported_and_the_rest_is_segmented(tmp_path, caplog):
    """An interrupted copy leaves the header whole and the voxels short: nibabel fails only
    when it reads them (EOFError for .nii.gz, OSError for .nii)."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("good.nii.gz", "cut.nii.gz", "short.nii"):
        nib.save(nib.Nifti1Image(half_bright((16, 16, 8)), AFFINE), folder / name)
    for name in ("cut.nii.gz", "short.nii"):
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.INFO, logger="mper"), pytest.raises(UserError, match="2 of 3 files could not"):
        predict_path(ThresholdNet(), folder, "la", tmp_path / "out", **LA_OPTIONS)
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["good_pred.nii.gz"]
    errors = [record.getMessage() for record in caplog.records if record.levelno == logging.ERROR]
    assert len(errors) == 2 and all(": not a readable NIfTI file (" in error for error in errors), errors
    assert {error.split(": not a readable")[0].rsplit("/", 1)[-1] for error in errors} == {"cut.nii.gz", "short.nii"}


def test_a_bad_file_in_a_folder_is_reported_and_the_rest_is_segmented(write_h5, tmp_path, caplog):
    write_h5(tmp_path / "in" / "good.h5", image=np.zeros((16, 16, 8), np.float32))
    write_h5(tmp_path / "in" / "slice.h5", image=np.zeros((16, 16), np.float32))
    (tmp_path / "in" / "broken.nii.gz").write_bytes(b"not gzip at all")
    with caplog.at_level(logging.INFO, logger="mper"), pytest.raises(UserError, match="2 of 3 files could not"):
        predict_path(ThresholdNet(), tmp_path / "in", "la", tmp_path / "out", **LA_OPTIONS)
    assert (tmp_path / "out" / "good_pred.nii.gz").is_file()
    errors = [record.getMessage() for record in caplog.records if record.levelno == logging.ERROR]
    assert len(errors) == 2
    assert "broken.nii.gz: not a readable NIfTI file" in errors[0]
    assert (
        "slice.h5: a 2D array of shape (16, 16), but the LA model takes 3D volumes (NIfTI and h5 (H, W, D))"
        in errors[1]
    )


def test_a_single_slice_is_refused_by_a_3d_network_and_segmented_by_a_2d_one(write_h5, tmp_path):
    nib.save(nib.Nifti1Image(half_bright((16, 16, 1)), AFFINE), tmp_path / "slice.nii.gz")
    write_h5(tmp_path / "slice.h5", image=np.where(half_bright((16, 1, 16)) > 0, 1.0, -1.0).astype(np.float32))
    for name, shape in (("slice.nii.gz", (16, 16, 1)), ("slice.h5", (16, 1, 16))):
        with pytest.raises(
            DataFormatError,
            match=re.escape(
                f"{name}: a 2D image (one slice, shape {shape}), but the LA model is a 3D network that takes "
                "3D volumes (NIfTI and h5 (H, W, D)); give the whole volume"
            ),
        ):
            predict_file(ThresholdNet(), tmp_path / name, "la", tmp_path / "out", **LA_OPTIONS)
    assert not (tmp_path / "out").exists()
    out = predict_file(ThresholdNet(num_classes=4), tmp_path / "slice.nii.gz", "acdc", tmp_path, patch_size=(32, 32))
    assert nib.load(out).shape == (16, 16, 1)


def test_a_blank_volume_is_segmented_with_a_warning(write_h5, tmp_path, caplog):
    path = write_h5(tmp_path / "blank.h5", image=np.zeros((3, 32, 32), np.float32))
    with caplog.at_level(logging.WARNING, logger="mper"):
        out = predict_file(ThresholdNet(num_classes=4), path, "acdc", tmp_path / "out", patch_size=(32, 32))
    assert out.is_file()
    assert caplog.messages == [
        f"{path} holds one value everywhere (0): a blank or damaged scan? Its label map is what the model makes of "
        "a blank image"
    ]


def test_a_blank_nifti_is_named_with_the_value_it_holds_not_its_normalised_zero(tmp_path, caplog):
    nib.save(nib.Nifti1Image(np.full((18, 16, 6), 700.0, np.float32), AFFINE), tmp_path / "blank.nii.gz")
    with caplog.at_level(logging.WARNING, logger="mper"):
        predict_file(ThresholdNet(), tmp_path / "blank.nii.gz", "la", tmp_path / "out", **LA_OPTIONS)
    assert caplog.messages == [
        f"{tmp_path / 'blank.nii.gz'} holds one value everywhere (700): a blank or damaged scan? Its label map is "
        "what the model makes of a blank image"
    ]


def test_nan_voxels_are_refused_with_the_file_name(write_h5, tmp_path):
    raw = half_bright((16, 16, 8))
    raw[3, 4, 5] = np.nan
    nib.save(nib.Nifti1Image(raw, AFFINE), tmp_path / "scan.nii.gz")
    with pytest.raises(DataFormatError, match=r"scan.nii.gz: image has 1 NaN or infinite value"):
        predict_file(ThresholdNet(), tmp_path / "scan.nii.gz", "la", tmp_path / "out", **LA_OPTIONS)
    image = np.zeros((16, 16, 8), np.float32)
    image[0, 0, 0] = np.inf
    write_h5(tmp_path / "inf.h5", image=image)
    with pytest.raises(DataFormatError, match=r"inf.h5: image has 1 NaN or infinite value"):
        predict_file(ThresholdNet(), tmp_path / "inf.h5", "la", tmp_path / "out", **LA_OPTIONS)
    assert not (tmp_path / "out").exists()


def test_a_volume_of_the_other_dataset_is_named_as_such(write_h5, tmp_path):
    z_scored = np.where(half_bright((4, 16, 16)) > 0, 1.5, -0.5).astype(np.float32)
    write_h5(tmp_path / "la_case.h5", image=z_scored)
    with pytest.raises(
        DataFormatError, match=r"span \[-0.5, 1.5\], but the ACDC model .* preprocessed for another dataset"
    ):
        predict_file(ThresholdNet(num_classes=4), tmp_path / "la_case.h5", "acdc", tmp_path, patch_size=(32, 32))
    write_h5(tmp_path / "acdc_case.h5", image=np.linspace(0, 1, 16 * 16 * 8, dtype=np.float32).reshape(16, 16, 8))
    with pytest.raises(DataFormatError, match=r"the LA model expects z-scored .* preprocessed for another dataset"):
        predict_file(ThresholdNet(), tmp_path / "acdc_case.h5", "la", tmp_path, **LA_OPTIONS)


def test_an_la_volume_far_from_z_scored_is_refused_as_training_refuses_it(write_h5, tmp_path):
    rng = np.random.default_rng(0)
    z_scored = normalize_intensity(rng.standard_normal((16, 16, 8)), "z-score")
    write_h5(tmp_path / "z_scored.h5", image=z_scored)
    assert predict_file(ThresholdNet(), tmp_path / "z_scored.h5", "la", tmp_path / "out", **LA_OPTIONS).is_file()
    write_h5(tmp_path / "scaled.h5", image=z_scored * 300 + 200)
    with pytest.raises(
        DataFormatError,
        match=r"scaled\.h5: intensities span \[-960, 1\.13e\+03\], but the LA model expects z-scored intensities \(mean "
        r"near 0, std near 1; these have mean 200, std 300\); is this a volume preprocessed for another dataset\?",
    ):
        predict_file(ThresholdNet(), tmp_path / "scaled.h5", "la", tmp_path / "out", **LA_OPTIONS)


def test_bad_inputs_name_the_file_and_what_was_expected(write_h5, tmp_path):
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
    with pytest.raises(
        ValueError, match=r"cine.nii.gz: a 4D array of shape \(4, 4, 4, 2\), but the ACDC model takes 3D"
    ):
        predict_file(net, tmp_path / "cine.nii.gz", "acdc", tmp_path)
    (tmp_path / "broken.nii.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match=r"broken.nii.gz: not a readable NIfTI file"):
        predict_file(net, tmp_path / "broken.nii.gz", "la", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no image files under .*empty"):
        predict_path(net, tmp_path / "empty", "la", tmp_path)
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        predict_path(net, tmp_path / "nowhere", "la", tmp_path)
