"""Prototype usage: per-(class, k) shares of the bank updates over windows, and collapse warnings."""

from __future__ import annotations

import logging

import pytest
import torch

from mper.train.usage import PrototypeUsage


def counts(*per_prototype):
    return torch.tensor(per_prototype, dtype=torch.float32)


def test_shares_are_per_class_over_a_window():
    usage = PrototypeUsage(num_classes=2, per_class=2, window=2)
    assert usage.add(counts(0, 0, 30, 10), iteration=1, last_iteration=10) == {}
    shares = usage.add(counts(0, 0, 10, 30), iteration=2, last_iteration=10)
    assert shares == {"prototype_usage/class1/k0": 0.5, "prototype_usage/class1/k1": 0.5}
    usage.add(counts(0, 0, 3, 1), iteration=3, last_iteration=10)
    shares = usage.add(counts(2, 6, 1, 3), iteration=4, last_iteration=10)
    assert shares == {
        "prototype_usage/class0/k0": 0.25,
        "prototype_usage/class0/k1": 0.75,
        "prototype_usage/class1/k0": 0.5,
        "prototype_usage/class1/k1": 0.5,
    }
    summary = usage.summary()
    assert summary["windows"] == 2
    assert summary["classes"]["1"] == {"updates": [44, 44], "share": [0.5, 0.5], "lowest_window_share": [0.5, 0.5]}
    assert summary["classes"]["0"]["updates"] == [2, 6] and summary["collapses"] == []


def test_the_last_iteration_closes_a_partial_window():
    usage = PrototypeUsage(num_classes=1, per_class=2, window=4)
    assert usage.add(counts(1, 3), iteration=1, last_iteration=2) == {}
    assert usage.add(counts(1, 3), iteration=2, last_iteration=2) == {
        "prototype_usage/class0/k0": 0.25,
        "prototype_usage/class0/k1": 0.75,
    }


def test_a_prototype_below_one_percent_over_a_full_window_is_a_collapse(caplog):
    usage = PrototypeUsage(num_classes=2, per_class=3, window=2)
    with caplog.at_level(logging.WARNING, logger="mper"):
        usage.add(counts(0, 0, 0, 500, 500, 0), iteration=1, last_iteration=5)
        usage.add(counts(0, 0, 0, 500, 495, 5), iteration=2, last_iteration=5)
        usage.add(counts(0, 0, 0, 0, 0, 1), iteration=3, last_iteration=5)
        usage.add(counts(0, 0, 0, 5, 5, 0), iteration=5, last_iteration=5)  # partial: no verdict
    assert [record.getMessage() for record in caplog.records] == [
        "prototype 2 of class 1 won 0.25% of its class's updates in self-training iterations 1-2 "
        "(below 1%): the class has collapsed onto fewer prototypes"
    ]
    summary = usage.summary()
    assert summary["collapses"] == [{"class": 1, "prototype": 2, "iteration": 2, "share": 0.0025}]
    assert summary["classes"]["1"]["lowest_window_share"] == pytest.approx([5 / 11, 5 / 11, 0.0025], abs=1e-6)
    assert summary["classes"]["0"]["share"] is None  # no update of class 0: no share, no verdict


def test_usage_counts_on_after_a_resume():
    usage = PrototypeUsage(num_classes=1, per_class=2, window=3)
    usage.add(counts(1, 2), iteration=1, last_iteration=6)
    resumed = PrototypeUsage(num_classes=1, per_class=2, window=3)
    resumed.load_state_dict(usage.state_dict())
    for target in (usage, resumed):
        target.add(counts(3, 4), iteration=2, last_iteration=6)
        shares = target.add(counts(0, 2), iteration=3, last_iteration=6)
    assert shares == pytest.approx({"prototype_usage/class0/k0": 4 / 12, "prototype_usage/class0/k1": 8 / 12})
    assert resumed.summary() == usage.summary()


def test_a_window_must_be_positive():
    with pytest.raises(ValueError, match="window must be a positive number of iterations"):
        PrototypeUsage(1, 1, window=0)
