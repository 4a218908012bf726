"""Summaries, the paper's Markdown table and the JSON report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from mper.eval.protocol import score_case
from mper.eval.report import markdown_table, summarize, write_report

NAN = math.nan

# Two cases, two classes; case b misses class 2 entirely (distances undefined).
PER_CASE = {
    "a": {
        1: {"dice": 0.8, "jaccard": 0.6, "hd95": 2.0, "asd": 1.0},
        2: {"dice": 0.6, "jaccard": 0.4, "hd95": 4.0, "asd": 2.0},
    },
    "b": {
        1: {"dice": 1.0, "jaccard": 1.0, "hd95": 0.0, "asd": 0.0},
        2: {"dice": 0.0, "jaccard": 0.0, "hd95": NAN, "asd": NAN},
    },
}


def test_summary_per_class_and_over_classes():
    summary = summarize(PER_CASE)
    assert summary["num_cases"] == 2
    class1, class2 = summary["classes"][1], summary["classes"][2]
    assert class1["dice"] == pytest.approx({"mean": 0.9, "std": 0.1, "undefined": 0})
    assert class1["hd95"] == pytest.approx({"mean": 1.0, "std": 1.0, "undefined": 0})
    assert class2["dice"] == pytest.approx({"mean": 0.3, "std": 0.3, "undefined": 0})
    # Only case a has a class-2 distance.
    assert class2["hd95"] == pytest.approx({"mean": 4.0, "std": 0.0, "undefined": 1})
    # Over classes, per case first: a (0.8 + 0.6) / 2 = 0.7, b (1.0 + 0.0) / 2 = 0.5;
    # hd95: a 3.0, b 0.0 (its only defined class).
    over = summary["mean"]
    assert over["dice"] == pytest.approx({"mean": 0.6, "std": 0.1, "undefined": 0})
    assert over["jaccard"]["mean"] == pytest.approx(0.5)
    assert over["hd95"] == pytest.approx({"mean": 1.5, "std": 1.5, "undefined": 1})
    assert over["asd"] == pytest.approx({"mean": 0.75, "std": 0.75, "undefined": 1})


def test_summary_of_one_class_with_every_distance_undefined():
    summary = summarize({"a": {1: {"dice": 0.0, "jaccard": 0.0, "hd95": NAN, "asd": NAN}}})
    assert math.isnan(summary["mean"]["hd95"]["mean"]) and summary["mean"]["hd95"]["undefined"] == 1
    assert "| MPER | 4 | 76 | 0.00 | 0.00 | n/a | n/a |" in markdown_table(summary, "MPER", "4", "76")


def test_summary_refuses_empty_and_mismatched_input():
    with pytest.raises(ValueError, match="per_case is empty"):
        summarize({})
    with pytest.raises(ValueError, match="same num_classes"):
        summarize({"a": PER_CASE["a"], "b": {1: PER_CASE["b"][1]}})


def test_markdown_table_in_the_paper_format():
    table = markdown_table(summarize(PER_CASE), "MPER", "3 (5%)", "67 (95%)", ("background", "RV", "Myo"))
    assert table == (
        "| Method | Labeled | Unlabeled | Dice | Jaccard | 95HD | ASD |\n"
        "| --- | --- | --- | --- | --- | --- | --- |\n"
        "| MPER | 3 (5%) | 67 (95%) | 60.00 | 50.00 | 1.50 | 0.75 |\n"
        "\n"
        "| Class | Dice | Jaccard | 95HD | ASD |\n"
        "| --- | --- | --- | --- | --- |\n"
        "| RV | 90.00 | 80.00 | 1.00 | 0.50 |\n"
        "| Myo | 30.00 | 20.00 | 4.00 | 2.00 |\n"
        "\n"
        "Dice and Jaccard in %, 95HD and ASD in voxels; means over 2 cases.\n"
        "\n"
        "95HD and ASD were undefined (prediction or ground truth empty) for 1 of 4 "
        "case-class results; the means above leave them out.\n"
    )


def test_single_class_table_has_one_row_and_only_the_units_note():
    summary = summarize({"a": {1: PER_CASE["a"][1]}, "b": {1: PER_CASE["b"][1]}})
    table = markdown_table(summary, "MPER", "8", "72")
    assert table.splitlines() == [
        "| Method | Labeled | Unlabeled | Dice | Jaccard | 95HD | ASD |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        "| MPER | 8 | 72 | 90.00 | 80.00 | 1.00 | 0.50 |",
        "",
        "Dice and Jaccard in %, 95HD and ASD in voxels; means over 2 cases.",
    ]


def test_write_report_writes_valid_json_and_the_table(tmp_path):
    summary = summarize(PER_CASE)
    markdown = markdown_table(summary, "MPER", "3", "67")
    json_path, markdown_path = write_report(tmp_path / "out", PER_CASE, summary, markdown)
    document = json.loads(json_path.read_text())
    assert document["per_case"]["b"]["2"] == {"dice": 0.0, "jaccard": 0.0, "hd95": None, "asd": None}
    assert document["summary"]["classes"]["1"]["dice"]["mean"] == pytest.approx(0.9)
    assert document["summary"]["mean"]["hd95"]["undefined"] == 1
    assert markdown_path.read_text() == markdown


def test_a_report_that_cannot_be_written_leaves_no_part_of_a_file_and_names_it(tmp_path, monkeypatch):
    """A full disk left a 0-byte metrics.md, or the hidden aside copy of metrics.json, and named no file."""
    summary = summarize(PER_CASE)
    original = Path.write_text

    def disk_full_for(name):
        def write_text(self, text, *args, **kwargs):
            if self.name == f".{name}.tmp":
                original(self, text[:3], *args, **kwargs)  # a part, then the disk is full
                raise OSError(28, "No space left on device")
            return original(self, text, *args, **kwargs)

        return write_text

    for name in ("metrics.md", "metrics.json"):
        out = tmp_path / name
        monkeypatch.setattr(Path, "write_text", disk_full_for(name))
        with pytest.raises(OSError) as full:
            write_report(out, PER_CASE, summary, markdown_table(summary, "MPER", "3", "67"))
        monkeypatch.undo()
        assert full.value.filename == str(out / name)
        assert sorted(path.name for path in out.iterdir()) == ([] if name == "metrics.md" else ["metrics.md"])


def test_distances_that_count_a_class_predicted_nowhere_as_zero_are_marked_and_counted():
    truth = np.zeros((8, 8), dtype=np.uint8)
    truth[1:3, 1:3], truth[5:7, 5:7] = 1, 2
    right = truth.copy()
    no_class_2 = np.where(truth == 1, 1, 0).astype(np.uint8)
    disjoint = no_class_2.copy()
    disjoint[0, 7] = 2  # class 2 predicted, but away from the truth: Dice 0, measured distances
    per_case = {
        case: score_case(pred, truth, 3, "zero") for case, pred in (("a", right), ("b", no_class_2), ("c", disjoint))
    }
    assert per_case["b"][2] == {"dice": 0.0, "jaccard": 0.0, "hd95": 0.0, "asd": 0.0}
    assert per_case["c"][2]["dice"] == 0.0 and per_case["c"][2]["hd95"] >= 1.0
    summary = summarize(per_case)
    assert summary["predicted_nowhere"] == {"results": 1, "cases": 1, "classes": {1: 0, 2: 1}}
    table = markdown_table(summary, "MPER", "3", "67", ("background", "RV", "Myo"))
    mean_hd95, mean_asd = (summary["mean"][metric]["mean"] for metric in ("hd95", "asd"))
    assert table.splitlines()[2].endswith(f" | {mean_hd95:.2f}* | {mean_asd:.2f}* |")
    rows = {line.split(" | ")[0]: line for line in table.splitlines() if line.startswith(("| RV", "| Myo"))}
    assert rows["| RV"].endswith(" | 0.00 | 0.00 |")  # predicted everywhere it should be: no mark
    assert rows["| Myo"].endswith("* |") and rows["| Myo"].count("*") == 2
    assert table.endswith(
        "95HD and ASD marked * count 1 of 6 case-class results, in 1 of 3 cases, as 0: a class predicted nowhere, "
        'which the authors\' rule (eval.empty_prediction = "zero") scores 0 in every metric. These zeros lower '
        'the distance means; a run with eval.empty_prediction = "undefined" (preset strict) leaves them out '
        "instead.\n"
    )
    undefined = summarize(
        {
            case: score_case(pred, truth, 3, "undefined")
            for case, pred in (("a", right), ("b", no_class_2), ("c", disjoint))
        }
    )
    assert undefined["predicted_nowhere"]["results"] == 0
    assert "*" not in markdown_table(undefined, "MPER", "3", "67")
