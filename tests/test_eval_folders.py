"""``mper-eval --predictions DIR --labels DIR``: a folder of predicted label maps scored
against a folder of ground-truth label maps (mper.eval.folders), checked against Dice and
surface distances computed here independently, with numpy and scipy."""

from __future__ import annotations

import json
import logging

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from mper import pipeline
from mper.cli import eval_main
from mper.data.raw_scans import read_class_names
from mper.errors import DataFormatError, MissingFileError, RunFolderError
from mper.eval import folders
from mper.eval.report import MARKDOWN_FILE, METRICS_FILE

SHAPE = (12, 12, 6)
SPACING = (0.8, 1.2, 2.5)
AFFINE = np.diag([*SPACING, 1.0])


def _save(path, data, affine=AFFINE):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), affine), path)
    return path


def _maps():
    """Two cases of known overlaps: ``{case: (label, prediction)}``, classes 1 and 2."""
    label_a = np.zeros(SHAPE, np.uint8)
    label_a[2:8, 2:8, 1:4] = 1
    label_a[8:11, 3:9, 2:5] = 2
    pred_a = np.zeros(SHAPE, np.uint8)
    pred_a[3:8, 2:9, 1:5] = 1  # shifted and grown
    pred_a[8:11, 4:9, 2:5] = 2
    label_b = np.zeros(SHAPE, np.uint8)
    label_b[1:6, 1:7, 1:5] = 1
    pred_b = np.zeros(SHAPE, np.uint8)
    pred_b[1:6, 2:7, 2:5] = 1  # class 2 absent from both: a right answer
    return {"case_a": (label_a, pred_a), "case_b": (label_b, pred_b)}


@pytest.fixture
def raw(tmp_path):
    """An nnU-Net raw layout: dataset.json beside labelsTs/ (one .nii.gz, one .nii label), and
    predictions named <case>.nii.gz and <case>_pred.nii.gz."""
    root = tmp_path / "Dataset001"
    root.mkdir()
    document = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "tumour": 2}}
    (root / "dataset.json").write_text(json.dumps(document))
    maps = _maps()
    _save(root / "labelsTs" / "case_a.nii.gz", maps["case_a"][0])
    _save(root / "labelsTs" / "case_b.nii", maps["case_b"][0])
    _save(tmp_path / "predictions" / "case_a.nii.gz", maps["case_a"][1])
    _save(tmp_path / "predictions" / "case_b_pred.nii.gz", maps["case_b"][1])
    return tmp_path / "predictions", root / "labelsTs"


def _dice(pred, gt):
    return 2 * np.logical_and(pred, gt).sum() / (pred.sum() + gt.sum())


def _surface_mm(mask):
    """Coordinates (mm) of the voxels an erosion of face connectivity removes."""
    eroded = ndimage.binary_erosion(mask, ndimage.generate_binary_structure(3, 1))
    return np.argwhere(mask & ~eroded) * np.asarray(SPACING, np.float32)  # as the NIfTI header stores it


def _distances(pred, gt):
    """(95% Hausdorff distance, average surface distance from the prediction), brute force; the
    95th percentile of the distances of both directions together, as medpy takes it."""
    a, b = _surface_mm(pred), _surface_mm(gt)
    pairwise = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)
    a_to_b, b_to_a = pairwise.min(axis=1), pairwise.min(axis=0)
    return np.percentile(np.concatenate([a_to_b, b_to_a]), 95), a_to_b.mean()


def test_scores_match_an_independent_computation_in_mm_and_the_report_is_written(raw, tmp_path):
    predictions, labels = raw
    result = pipeline.evaluate_folders(predictions, labels)
    out = tmp_path / "predictions-metrics"
    assert result["out"] == out
    for case, (label, pred) in _maps().items():
        for value in (1, 2):
            scores = result["per_case"][case][value]
            if not (label == value).any():
                assert scores == {"dice": 1.0, "jaccard": 1.0, "hd95": 0.0, "asd": 0.0}
                continue
            dice = _dice(pred == value, label == value)
            assert scores["dice"] == pytest.approx(dice, abs=1e-12)
            assert scores["jaccard"] == pytest.approx(dice / (2 - dice), abs=1e-12)
            hd95, asd = _distances(pred == value, label == value)
            assert scores["hd95"] == pytest.approx(hd95, abs=1e-9)
            assert scores["asd"] == pytest.approx(asd, abs=1e-9)
    assert result["per_case"]["case_a"][1]["asd"] > 0
    document = json.loads((out / METRICS_FILE).read_text())
    assert document["split"] == "folder"
    assert document["predictions"] == str(predictions.resolve())
    assert document["labels"] == str(labels.resolve())
    assert sorted(document["per_case"]) == ["case_a", "case_b"]
    markdown = (out / MARKDOWN_FILE).read_text()
    assert markdown == result["markdown"]
    assert "| liver |" in markdown and "| tumour |" in markdown and "in mm; means over 2 cases" in markdown
    assert document["summary"]["absent_from_ground_truth"] == [] and "in none of the" not in markdown


def test_a_class_predicted_nowhere_scores_by_the_rule(raw):
    predictions, labels = raw
    label = _maps()["case_a"][0]
    _save(predictions / "case_a.nii.gz", np.where(label == 2, 0, label).astype(np.uint8))
    result = folders.evaluate_folders(predictions, labels)
    assert result["per_case"]["case_a"][2] == {"dice": 0.0, "jaccard": 0.0, "hd95": 0.0, "asd": 0.0}
    assert (
        "(--empty-prediction zero)" in result["markdown"]
        and "--empty-prediction undefined leaves" in result["markdown"]
    )
    undefined = folders.evaluate_folders(predictions, labels, empty_prediction="undefined")["per_case"]["case_a"][2]
    assert undefined["dice"] == 0.0 and np.isnan(undefined["hd95"])


def test_without_dataset_json_the_classes_are_the_values_found_in_labels_and_predictions(tmp_path, caplog):
    label = np.zeros(SHAPE, np.float32)  # a float map of whole values
    label[2:6, 2:6, 1:4] = 1.0
    pred = np.zeros(SHAPE, np.int16)
    pred[2:6, 2:6, 1:4] = 1
    pred[8:10, 8:10, 2:4] = 2  # a value the labels lack: a false class
    _save(tmp_path / "labels" / "x.nii.gz", label)
    _save(tmp_path / "preds" / "x.nii", pred)
    _save(tmp_path / "preds" / "y.nii.gz", pred)  # no label: left out, named
    (tmp_path / "preds" / "notes.txt").write_text("")
    (tmp_path / "preds" / ".DS_Store").write_text("")
    with caplog.at_level(logging.WARNING, logger="mper"):
        result = folders.evaluate_folders(tmp_path / "preds", tmp_path / "labels")
    assert sorted(result["per_case"]["x"]) == [1, 2]
    assert result["per_case"]["x"][1]["dice"] == 1.0 and result["per_case"]["x"][2]["dice"] == 0.0
    assert "| class 2 |" in result["markdown"]
    warnings = [record.getMessage() for record in caplog.records]
    assert any("1 prediction(s) without a label" in line and "y.nii.gz" in line for line in warnings)
    assert any("not image files mper reads: notes.txt" in line for line in warnings)
    assert not any(".DS_Store" in line for line in warnings)


def _refusal(predictions, labels, monkeypatch, **options):
    """The refusal of ``evaluate_folders``, asserting that no case was scored before it."""

    def no_scoring(*args, **kwargs):
        raise AssertionError("a case was scored before the refusal")

    monkeypatch.setattr(folders, "score_case", no_scoring)
    with pytest.raises((DataFormatError, MissingFileError, RunFolderError)) as refused:
        pipeline.evaluate_folders(predictions, labels, **options)
    assert "\n" not in str(refused.value)
    return str(refused.value)


def test_a_label_without_its_prediction_is_refused_naming_it(raw, monkeypatch):
    predictions, labels = raw
    (predictions / "case_b_pred.nii.gz").unlink()
    message = _refusal(predictions, labels, monkeypatch)
    assert "1 of 2 label(s)" in message and "case_b" in message and "_pred.nii.gz" in message


def test_pairs_on_other_grids_are_refused_naming_both_files(raw, monkeypatch):
    predictions, labels = raw
    label = _maps()["case_b"][0]
    _save(predictions / "case_b_pred.nii.gz", label[:, :, :5])
    message = _refusal(predictions, labels, monkeypatch)
    assert str(predictions / "case_b_pred.nii.gz") in message and str(labels / "case_b.nii") in message
    assert "shape (12, 12, 5)" in message
    shifted = AFFINE.copy()
    shifted[0, 3] = 2.0
    _save(predictions / "case_b_pred.nii.gz", label, shifted)
    message = _refusal(predictions, labels, monkeypatch)
    assert "origin" in message and str(labels / "case_b.nii") in message


def test_a_2d_prediction_of_two_axes_is_scored_against_its_label_of_one_999_mm_slice(tmp_path):
    # nnU-Net writes a 2D label as (x, y, 1) with a slice 999 mm thick; another tool's (x, y) prediction reads as
    # 1 mm thick: the same pixels, refused as "voxels up to 998 mm apart"
    label = np.zeros((12, 10), np.uint8)
    label[2:8, 3:9] = 1
    pred = np.zeros_like(label)
    pred[3:8, 3:9] = 1
    _save(tmp_path / "labels" / "case.nii.gz", label[:, :, None], np.diag([0.8, 1.2, 999.0, 1.0]))
    _save(tmp_path / "predictions" / "case.nii.gz", pred, np.diag([0.8, 1.2, 1.0, 1.0]))
    result = pipeline.evaluate_folders(tmp_path / "predictions", tmp_path / "labels")
    assert result["per_case"]["case"][1]["dice"] == pytest.approx(_dice(pred == 1, label == 1), abs=1e-12)


def test_a_prediction_saved_without_its_scans_header_is_refused_with_a_note_saying_so(raw, monkeypatch):
    predictions, labels = raw
    _save(predictions / "case_b_pred.nii.gz", _maps()["case_b"][1], np.eye(4))
    message = _refusal(predictions, labels, monkeypatch)
    assert "its spacing" in message and message.endswith(
        "; note that case_b_pred.nii.gz's header holds the identity affine (1 mm voxels from the origin), as a map "
        "saved without its image's header does (nib.Nifti1Image(array, np.eye(4))): if it holds case_b.nii's "
        "voxels, save it with case_b.nii's affine"
    ), message


def test_a_label_whose_header_voxel_size_disagrees_with_its_affine_is_refused(raw, monkeypatch):
    # an sform of the true grid and a pixdim left at 1 mm: scored with exit 0 in neither's mm
    predictions, labels = raw
    for path in (labels / "case_b.nii", predictions / "case_b_pred.nii.gz"):
        image = nib.load(path)
        stale = nib.Nifti1Image(np.asarray(image.dataobj), image.affine)
        stale.set_qform(None, code=0)
        stale.header["pixdim"][1:4] = 1.0
        nib.save(stale, path)
    message = _refusal(predictions, labels, monkeypatch)
    assert message.startswith(
        f"{labels / 'case_b.nii'}: its header's voxel size (pixdim) (1, 1, 1) mm disagrees with the voxel size of "
        "its affine (0.8, 1.2, 2.5) mm"
    )
    assert message.endswith(
        "fix the header (e.g. with nibabel, image.set_qform(image.affine), which sets pixdim "
        "from the affine, then save it)"
    )


def test_a_slice_axis_of_one_voxel_may_keep_any_thickness_in_its_header(tmp_path):
    """A 2D map stored as (x, y, 1) with a 1 mm pixdim beside a 999 mm affine slice: no
    distance runs along that axis, so its thickness does not matter and the pair is scored."""
    label, prediction = (np.zeros((12, 12, 1), np.uint8) for _ in range(2))
    label[2:8, 2:8] = 1
    prediction[3:8, 2:8] = 1
    affine = np.diag([0.8, 1.2, 999.0, 1.0])
    for path, data in ((tmp_path / "labels" / "c.nii.gz", label), (tmp_path / "pred" / "c.nii.gz", prediction)):
        image = nib.Nifti1Image(data, affine)
        image.set_qform(None, code=0)
        image.header["pixdim"][3] = 1.0
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(image, path)
    result = pipeline.evaluate_folders(tmp_path / "pred", tmp_path / "labels", tmp_path / "out")
    assert result["per_case"]["c"][1]["dice"] == pytest.approx(_dice(prediction, label))


def test_values_outside_the_declared_classes_and_fractions_are_refused(raw, monkeypatch):
    predictions, labels = raw
    pred = _maps()["case_b"][1].copy()
    pred[0, 0, 0] = 3
    _save(predictions / "case_b_pred.nii.gz", pred)
    message = _refusal(predictions, labels, monkeypatch)
    assert "case_b_pred.nii.gz: label value(s) [3] are not declared in" in message and "2 tumour" in message
    _save(predictions / "case_b_pred.nii.gz", pred.astype(np.float32) / 2)
    assert "case_b_pred.nii.gz: the prediction holds non-integer values" in _refusal(predictions, labels, monkeypatch)


def test_an_out_folder_inside_an_input_folder_is_refused(raw, monkeypatch):
    predictions, labels = raw
    for out in (predictions / "metrics", labels):
        assert "lies in the --" in _refusal(predictions, labels, monkeypatch, out_dir=out)
    inner = labels / "predictions"  # its default report, labelsTs/predictions-metrics, would lie in labelsTs
    predictions.rename(inner)
    message = _refusal(inner, labels, monkeypatch)
    assert message.startswith(
        f"the default --out, {labels.resolve() / 'predictions-metrics'} (beside the predictions),"
    )
    assert message.endswith("give --out DIR, a folder outside both inputs")


def test_two_predictions_of_one_case_are_refused(raw, monkeypatch):
    predictions, labels = raw
    _save(predictions / "case_b.nii.gz", _maps()["case_b"][1])
    assert "case case_b has two predictions" in _refusal(predictions, labels, monkeypatch)


def test_dataset_json_class_names_in_both_layouts(tmp_path):
    msd = tmp_path / "msd.json"
    msd.write_text(json.dumps({"labels": {"0": "background", "1": "heart"}}))
    nnunet = tmp_path / "nnunet.json"
    nnunet.write_text(json.dumps({"labels": {"background": 0, "heart": 1}}))
    assert read_class_names(msd) == read_class_names(nnunet) == ("background", "heart")


def _assert_refused_in_one_line(refusals, capsys):
    """Each ``(argv, message)``: mper-eval exits 2 with one error line holding ``message``."""
    for argv, message in refusals:
        with pytest.raises(SystemExit) as exit_info:
            eval_main(argv)
        error = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in error, error
        assert "Traceback" not in error and error.count("error:") == 1


def test_the_command_scores_folders_and_refuses_mistakes_in_one_line(raw, tmp_path, capsys):
    predictions, labels = raw
    out = tmp_path / "scores"
    eval_main(["--predictions", str(predictions), "--labels", str(labels), "--out", str(out)])
    printed = capsys.readouterr().out
    assert "| predictions | - | - |" in printed and f"written to {out}" in printed
    assert (out / METRICS_FILE).is_file()
    refusals = [
        (["--predictions", str(predictions), "--checkpoint", "best.pt"], "not allowed with argument --predictions"),
        (["--predictions", str(predictions)], "--predictions needs --labels"),
        (["--predictions", str(predictions), "--labels", str(labels), "--split", "val"], "--split cannot be used"),
        (["--checkpoint", "best.pt", "--labels", str(labels)], "--labels cannot be used with --checkpoint"),
        (["--predictions", str(predictions), "--labels", str(labels), "--out", str(labels)], "lies in the --labels"),
        (["--predictions", str(tmp_path / "none"), "--labels", str(labels)], "predictions folder"),
    ]
    _assert_refused_in_one_line(refusals, capsys)


def test_an_acdc_patient_folder_gives_its_gt_maps_as_labels_of_the_frames(tmp_path, caplog):
    """The ACDC download keeps <frame>_gt.nii.gz beside each frame and the 4D cine series;
    mper-predict names its maps <frame>_pred.nii.gz."""
    maps = _maps()
    patient = tmp_path / "patient001"
    for case, frame in (("case_a", "patient001_frame01"), ("case_b", "patient001_frame12")):
        _save(patient / f"{frame}_gt.nii.gz", maps[case][0])
        _save(patient / f"{frame}.nii.gz", maps[case][0].astype(np.float32) * 100.5)  # the image
        _save(tmp_path / "predictions" / f"{frame}_pred.nii.gz", maps[case][1])
    _save(patient / "patient001_4d.nii.gz", np.zeros((*SHAPE, 2), np.float32))
    with caplog.at_level(logging.WARNING, logger="mper"):
        result = folders.evaluate_folders(tmp_path / "predictions", patient)
    assert sorted(result["per_case"]) == ["patient001_frame01", "patient001_frame12"]
    label, pred = maps["case_a"]
    assert result["per_case"]["patient001_frame01"][1]["dice"] == pytest.approx(_dice(pred == 1, label == 1))
    assert caplog.messages == [
        f"{patient}: took the 2 label map(s) named <case>_gt; left out 3 other file(s): patient001_4d.nii.gz, "
        "patient001_frame01.nii.gz, patient001_frame12.nii.gz"
    ]


def test_classes_no_file_holds_are_refused_undeclared_and_named_declared(raw, tmp_path, monkeypatch, caplog):
    """A binary mask written as 0 and 255 by another tool made classes 2 .. 254, which no file
    holds, score Dice 1 each: a mean Dice of 99% for a prediction that missed everything."""
    label = np.zeros(SHAPE, np.uint8)
    label[2:6, 2:6, 1:4] = 1
    _save(tmp_path / "labels" / "x.nii.gz", label)
    _save(tmp_path / "masks" / "x.nii.gz", np.roll(label, 6, axis=0) * np.uint8(255))
    message = _refusal(tmp_path / "masks", tmp_path / "labels", monkeypatch)
    assert message.startswith("classes 2 .. 254 of the values 1 .. 255 found (up to 255 in ")
    assert "(a mask of 0 and 255: 0 and 1)" in message and "--dataset-json" in message
    _save(tmp_path / "masks" / "x.nii.gz", np.zeros(SHAPE, np.uint8))
    _save(tmp_path / "labels" / "x.nii.gz", np.zeros(SHAPE, np.uint8))
    assert "holds background (0) alone: no class to score" in _refusal(
        tmp_path / "masks", tmp_path / "labels", monkeypatch
    )
    predictions, labels = raw
    document = {"labels": {"background": 0, "liver": 1, "tumour": 2, "cyst": 3}}
    (tmp_path / "four.json").write_text(json.dumps(document))
    monkeypatch.undo()
    with caplog.at_level(logging.WARNING, logger="mper"):
        result = folders.evaluate_folders(predictions, labels, dataset_json=tmp_path / "four.json")
    assert result["per_case"]["case_a"][3]["dice"] == 1.0
    assert any(line.startswith("class 3 (cyst) that ") and "raises the means" in line for line in caplog.messages)


def test_a_file_or_a_folder_of_patient_folders_for_a_folder_is_refused_naming_what_to_give(raw, tmp_path, capsys):
    predictions, labels = raw
    patients = tmp_path / "testing"
    _save(patients / "patient001" / "patient001_frame01_gt.nii.gz", _maps()["case_a"][0])
    cases = [
        (["--predictions", str(predictions / "case_a.nii.gz"), "--labels", str(labels)], "is a file; give the"),
        (["--predictions", str(predictions), "--labels", str(labels / "case_a.nii.gz")], "is a file; give the"),
        (["--predictions", str(predictions), "--labels", str(patients)], "only its folder(s) patient001 do"),
    ]
    _assert_refused_in_one_line(cases, capsys)


def test_a_region_based_dataset_json_beside_the_labels_says_to_give_one_class_per_value(raw, monkeypatch):
    """nnU-Net's BraTS conversion declares regions; the import's advice alone spoke of training."""
    predictions, labels = raw
    regions = {"channel_names": {"0": "T1"}, "labels": {"background": 0, "whole": [1, 2], "core": 2}}
    (labels.parent / "dataset.json").write_text(json.dumps(regions))
    message = _refusal(predictions, labels, monkeypatch)
    assert "is a region" in message and f"found beside {labels}" in message
    assert "give --dataset-json FILE whose labels name one class per value" in message


def test_label_maps_ending_in_capitals_are_named_with_the_rename_to_do(tmp_path, monkeypatch, caplog):
    _save(tmp_path / "labels" / "x.NII.GZ", _maps()["case_a"][0])
    _save(tmp_path / "preds" / "x.NII", _maps()["case_a"][1])
    _save(tmp_path / "preds" / "y.nii.gz", _maps()["case_a"][1])
    message = _refusal(tmp_path / "preds", tmp_path / "labels", monkeypatch)
    assert message.endswith(": rename the endings of x.NII.GZ to lowercase (.nii.gz)")
    _save(tmp_path / "labels" / "y.nii.gz", _maps()["case_a"][0])
    with caplog.at_level(logging.WARNING, logger="mper"):
        folders.pair_files(tmp_path / "preds", tmp_path / "labels")
    assert any(line.endswith("x.NII; rename the endings of x.NII to lowercase (.nii)") for line in caplog.messages)


def test_a_declared_class_in_no_ground_truth_is_noted_in_the_report(raw, tmp_path):
    """Where no case holds the tumour, its Dice 100 (rightly absent) says only that it was not
    predicted: the report names it, and the summary lists it."""
    predictions, labels = raw
    maps = _maps()
    label_a, pred_a = (np.where(array == 2, 0, array) for array in maps["case_a"])
    _save(labels / "case_a.nii.gz", label_a)
    _save(predictions / "case_a.nii.gz", pred_a)
    result = folders.evaluate_folders(predictions, labels)
    assert result["summary"]["absent_from_ground_truth"] == [2]
    assert result["per_case"]["case_a"][2]["dice"] == result["per_case"]["case_b"][2]["dice"] == 1.0
    assert (
        "tumour: in none of the 2 ground truths, so its scores say only whether it was predicted"
        in (result["markdown"])
    )
