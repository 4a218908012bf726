"""Summaries, the paper's Markdown table and the JSON report."""
from __future__ import annotations

import json
import math

import pytest

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
