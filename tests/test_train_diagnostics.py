"""Self-training diagnostics by value: pooled Dice, the monitor's interval summary and
resume state, the record of validations and its JSON form."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mper.train.diagnostics import SelfTrainingMonitor, TrainingRecord, pooled_dice, with_class_names


def reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def test_pooled_dice_of_hand_made_confusion_matrices():
    # confusion[predicted, true]
    confusion = torch.tensor([[5, 1, 4], [2, 3, 0], [0, 0, 0]])
    dice = pooled_dice(confusion)
    assert dice[0] == pytest.approx(2 * 5 / (10 + 7))
    assert dice[1] == pytest.approx(2 * 3 / (5 + 4))
    assert dice[2] == 0.0  # present in the truth, never predicted
    absent = pooled_dice(torch.tensor([[4, 0], [0, 0]]))
    assert absent[0] == 1.0 and math.isnan(absent[1])
    assert pooled_dice(torch.tensor([[0, 2], [3, 0]])) == [0.0, 0.0]


def hand_made_monitor() -> SelfTrainingMonitor:
    """Two batches of pseudo labels and two copy-paste directions, counted by hand below."""
    monitor = SelfTrainingMonitor(num_classes=4)
    pseudo = torch.tensor([[[0, 1, 1, 2]], [[2, 2, 0, 0]]])
    truth = torch.tensor([[[0, 1, 0, 2]], [[2, 1, 0, 1]]])
    monitor.observe_pseudo_labels(pseudo, truth)
    monitor.observe_pseudo_labels(torch.tensor([[[1, 1]]]), torch.tensor([[[1, 1]]]))
    labeled_region = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])  # 4 unlabeled voxels per image
    confident = torch.tensor(
        [
            [[True, False, True], [True, False, False]],  # 2 confident unlabeled voxels
            [[True, False, True], [False, True, True]],  # 3
        ]
    )
    gate = torch.zeros(2, 2, 3, dtype=torch.bool)
    gate[0, 0, 0] = gate[1, 1, 2] = gate[1, 0, 1] = True
    monitor.observe_mix(labeled_region, confident, gate)
    monitor.observe_mix(1 - labeled_region, confident)  # 2 unlabeled voxels per image, 1 + 1 confident
    return monitor


def test_monitor_summary_pools_the_interval_by_value():
    summary = hand_made_monitor().summary()
    # class 1: predicted 2 + 2, true 3 + 2, agreeing 1 + 2; class 2: predicted 3, true 2, agreeing 2
    assert summary["pseudo_label_dice/1"] == pytest.approx(2 * 3 / (4 + 5))
    assert summary["pseudo_label_dice/2"] == pytest.approx(2 * 2 / (3 + 2))
    assert math.isnan(summary["pseudo_label_dice/3"])  # in neither: left out of the mean
    assert summary["pseudo_label_dice/mean"] == pytest.approx((2 * 3 / 9 + 4 / 5) / 2)
    assert summary["confident_fraction"] == pytest.approx((2 + 3 + 1 + 1) / (8 + 4))
    assert summary["bank_update_fraction"] == pytest.approx(3 / 12)
    assert "pseudo_label_dice/0" not in summary
    assert set(summary) == {
        "pseudo_label_dice/1",
        "pseudo_label_dice/2",
        "pseudo_label_dice/3",
        "pseudo_label_dice/mean",
        "confident_fraction",
        "bank_update_fraction",
    }


def test_monitor_summary_starts_a_new_interval_and_reports_only_what_was_observed():
    monitor = hand_made_monitor()
    monitor.summary()
    assert monitor.summary() == {}
    monitor.observe_mix(torch.ones(2, 2), torch.ones(1, 2, 2, dtype=torch.bool))  # all labeled, no gate
    assert monitor.summary() == {}
    monitor.observe_mix(torch.zeros(2, 2), torch.tensor([[[True, False], [False, False]]]))
    assert monitor.summary() == {"confident_fraction": 0.25}
    monitor.observe_pseudo_labels(torch.zeros(1, 3, dtype=torch.int64), torch.zeros(1, 3, dtype=torch.int64))
    summary = monitor.summary()  # background only: every foreground Dice undefined
    assert all(math.isnan(summary[f"pseudo_label_dice/{c}"]) for c in (1, 2, 3))
    assert math.isnan(summary["pseudo_label_dice/mean"])


def test_monitor_state_dict_round_trip_continues_the_open_interval():
    monitor = hand_made_monitor()
    state = monitor.state_dict()
    restored = SelfTrainingMonitor(num_classes=4)
    restored.load_state_dict(state)
    for each in (monitor, restored):  # each counts its own: the state is a copy
        each.observe_pseudo_labels(torch.tensor([[1, 1]]), torch.tensor([[0, 0]]))
    expected, got = monitor.summary(), restored.summary()
    assert got.keys() == expected.keys()
    assert got["pseudo_label_dice/1"] == pytest.approx(2 * 3 / (6 + 5))
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, nan_ok=True), key
    assert int(state["confusion"].sum()) == 8 + 2 and state["counts"].tolist() == [12, 7, 12, 3]


def filled_record() -> TrainingRecord:
    record = TrainingRecord()
    for iteration, dice in ((3, 0.5), (6, 0.7), (9, 0.7)):
        record.add("pretrain", iteration, {"val_dice": dice, "mean_loss": 1.0})
    record.add(
        "selftrain",
        3,
        {
            "val_dice": 0.6,
            "mean_loss": math.inf,
            "pseudo_label_dice/1": math.nan,
            "pseudo_label_dice/2": 0.25,
            "confident_fraction": 0.5,
        },
    )
    record.add("selftrain", 6, {"val_dice": 0.7, "mean_loss": 2.0, "pseudo_label_dice/mean": 0.75})
    return record


def test_record_best_is_the_first_highest_validation_and_self_training_must_beat_it_strictly():
    record = filled_record()
    assert record.best("pretrain")["iteration"] == 6  # 0.7 twice: the first
    assert record.best("selftrain") == {
        "iteration": 6,
        "val_dice": 0.7,
        "mean_loss": 2.0,
        "pseudo_label_dice/mean": 0.75,
    }
    assert record.best("baseline") is None
    assert record.selftrain_beat_pretrain() is False  # a tie does not beat
    record.add("selftrain", 9, {"val_dice": 0.71})
    assert record.selftrain_beat_pretrain() is True
    only_pretrain = TrainingRecord()
    only_pretrain.add("pretrain", 1, {"val_dice": 0.1})
    assert only_pretrain.selftrain_beat_pretrain() is None
    assert TrainingRecord().selftrain_beat_pretrain() is None


def test_record_summary_writes_non_finite_values_as_null(tmp_path):
    record = filled_record()
    record.selected_stage = "pretrain"
    summary = record.summary()
    assert summary["selected_stage"] == "pretrain" and summary["selftrain_beat_pretrain"] is False
    assert set(summary["stages"]) == {"pretrain", "selftrain"}
    selftrain = summary["stages"]["selftrain"]
    assert selftrain["best"] == {"iteration": 6, "val_dice": 0.7, "mean_loss": 2.0, "pseudo_label_dice/mean": 0.75}
    assert selftrain["trajectory"][0] == {
        "iteration": 3,
        "val_dice": 0.6,
        "mean_loss": None,
        "pseudo_label_dice/1": None,
        "pseudo_label_dice/2": 0.25,
        "confident_fraction": 0.5,
    }
    assert [entry["iteration"] for entry in summary["stages"]["pretrain"]["trajectory"]] == [3, 6, 9]
    assert record.stages["selftrain"][0]["mean_loss"] == math.inf  # the record itself keeps the value

    path = tmp_path / "training.json"
    record.write(path)
    assert json.loads(path.read_text(), parse_constant=reject_constant) == summary
    assert [entry.name for entry in tmp_path.iterdir()] == ["training.json"]  # no temporary left
    record.add("selftrain", 9, {"val_dice": 0.9})
    record.write(path)
    assert json.loads(path.read_text())["selftrain_beat_pretrain"] is True


def test_record_state_dict_round_trip():
    record = filled_record()
    record.selected_stage = "selftrain"
    restored = TrainingRecord()
    restored.load_state_dict(record.state_dict())
    assert restored.stages == record.stages and restored.selected_stage == "selftrain"
    restored.add("selftrain", 9, {"val_dice": 0.8})
    assert len(record.stages["selftrain"]) == 2  # a copy, not the same lists


def test_with_class_names_names_only_the_per_class_pseudo_label_dice():
    summary = filled_record().summary()
    named = with_class_names(summary, ("background", "RV", "myocardium", "LV"))
    assert named["selftrain_beat_pretrain"] is False and named["selected_stage"] is None
    first = named["stages"]["selftrain"]["trajectory"][0]
    assert first == {
        "iteration": 3,
        "val_dice": 0.6,
        "mean_loss": None,
        "pseudo_label_dice/RV": None,
        "pseudo_label_dice/myocardium": 0.25,
        "confident_fraction": 0.5,
    }
    assert named["stages"]["selftrain"]["best"]["pseudo_label_dice/mean"] == 0.75
    assert named["stages"]["pretrain"] == summary["stages"]["pretrain"]
    assert "pseudo_label_dice/1" in summary["stages"]["selftrain"]["trajectory"][0]  # input left as it was
