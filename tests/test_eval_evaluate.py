"""End-to-end evaluation on tiny data sets written in the public layouts (docs/method.md, "Data layouts")."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from mper.eval.evaluate import evaluate_cases, mean_dice
from mper.eval.metrics import case_metrics, dice_score
from mper.nets import VNet3D
from test_inference import ThresholdNet

ACDC_CASES = ("patient001_frame01", "patient002_frame12")


@pytest.fixture
def acdc_root(write_h5, tmp_path):
    """Two frames (S, H, W) = (3, 16, 16). ThresholdNet predicts round(3 x); the labels
    agree with that on the first frame and disagree on part of the second."""
    rng = np.random.default_rng(0)
    for index, case in enumerate(ACDC_CASES):
        image = rng.integers(0, 4, size=(3, 8, 8)).repeat(2, 1).repeat(2, 2) / 3
        label = (3 * image).round()
        if index == 1:
            label[0, :4] = 2
        write_h5(tmp_path / "data" / f"{case}.h5", image=image.astype(np.float32), label=label.astype(np.uint8))
    (tmp_path / "test.list").write_text("".join(f"{case}\n" for case in ACDC_CASES))
    return tmp_path


def expected_metrics(root, case):
    with h5py.File(root / "data" / f"{case}.h5") as file:
        image, label = file["image"][()], file["label"][()]
    return case_metrics((3 * image).round().astype(np.uint8), label, 4)


def test_acdc_evaluation_scores_every_test_case_and_writes_the_report(acdc_root, tmp_path):
    out_dir = tmp_path / "report"
    result = evaluate_cases(
        ThresholdNet(num_classes=4),
        "acdc",
        acdc_root,
        out_dir=out_dir,
        num_figures=1,
        labeled="3 (5%)",
        unlabeled="67 (95%)",
        patch_size=(16, 16),
    )
    assert list(result["per_case"]) == list(ACDC_CASES)
    for case in ACDC_CASES:
        assert result["per_case"][case] == expected_metrics(acdc_root, case)
    assert result["per_case"][ACDC_CASES[0]][2]["dice"] == 1.0
    assert result["per_case"][ACDC_CASES[1]][2]["dice"] < 1.0
    assert result["summary"]["num_cases"] == 2
    assert result["markdown"].startswith("| Method | Labeled | Unlabeled | Dice | Jaccard | 95HD | ASD |\n")
    assert "| MPER | 3 (5%) | 67 (95%) |" in result["markdown"]
    assert "| myocardium |" in result["markdown"]
    saved = json.loads((out_dir / "metrics.json").read_text())
    assert saved["summary"]["classes"]["2"]["dice"]["mean"] == pytest.approx(
        result["summary"]["classes"][2]["dice"]["mean"]
    )
    assert (out_dir / "metrics.md").read_text() == result["markdown"]
    # one figure: the case with the lowest mean Dice
    assert result["figures"] == [out_dir / "figures" / f"{ACDC_CASES[1]}.png"]
    assert sorted(p.name for p in (out_dir / "figures").iterdir()) == [f"{ACDC_CASES[1]}.png"]


def test_mean_dice_is_the_mean_of_the_class_means(acdc_root):
    expected = np.mean(
        [np.mean([m["dice"] for m in expected_metrics(acdc_root, case).values()]) for case in ACDC_CASES]
    )
    score = mean_dice(ThresholdNet(num_classes=4), "acdc", acdc_root, ACDC_CASES, patch_size=(16, 16))
    assert score == pytest.approx(expected)
    assert 0.5 < score < 1.0


def test_la_evaluation_with_a_real_vnet(write_h5, tmp_path):
    rng = np.random.default_rng(1)
    for case in ("LA001", "LA002"):
        label = np.zeros((20, 18, 16), np.uint8)
        label[4:14, 5:12, 3:12] = 1
        image = label + rng.normal(0, 0.3, label.shape)
        write_h5(
            tmp_path / "2018LA_Seg_Training Set" / case / "mri_norm2.h5",
            image=image.astype(np.float32),
            label=label.astype(np.uint8),
        )
    (tmp_path / "test.list").write_text("LA001\nLA002\n")
    net = VNet3D(base_filters=4)
    options = {"patch_size": (16, 16, 16), "stride": (8, 8, 8)}
    result = evaluate_cases(net, "la", tmp_path, method="V-Net", **options)
    assert sorted(result["per_case"]) == ["LA001", "LA002"]
    assert all(list(metrics) == [1] for metrics in result["per_case"].values())
    assert result["markdown"].splitlines()[2].startswith("| V-Net | - | - |")
    assert mean_dice(net, "la", tmp_path, ["LA001", "LA002"], **options) == pytest.approx(
        result["summary"]["mean"]["dice"]["mean"]
    )


def test_missing_cases_are_reported(tmp_path):
    (tmp_path / "test.list").write_text("patient009_frame01\n")
    with pytest.raises(FileNotFoundError, match="patient009_frame01.h5"):
        evaluate_cases(ThresholdNet(num_classes=4), "acdc", tmp_path)
    with pytest.raises(ValueError, match="no acdc cases to evaluate"):
        mean_dice(ThresholdNet(num_classes=4), "acdc", tmp_path, [])
    with pytest.raises(ValueError, match="dataset must be one of"):
        evaluate_cases(ThresholdNet(), "brats", tmp_path)


def test_dice_score_counts_agreeing_empties_as_perfect():
    assert dice_score(np.zeros(4), np.zeros(4)) == 1.0
    assert dice_score(np.array([1, 1, 0, 0]), np.array([1, 0, 0, 0])) == pytest.approx(2 / 3)
