"""The datasets mper trains and evaluates on, one module each, found by name.

A dataset is a :class:`DatasetSpec`: its classes, network, patch size, inference and
normalisation, file layout and case lists, label budgets, validation splits, synthetic
generator and converter. Every other module reads the spec instead of asking which
dataset it has. Built in: ``la`` (:mod:`mper.datasets.la`) and ``acdc``
(:mod:`mper.datasets.acdc`). A new dataset is one module that builds a spec and calls
:func:`register_dataset` (CONTRIBUTING.md, "Adding a dataset").
"""
from mper.datasets.registry import (
    check_dataset_root,
    convert,
    dataset_names,
    detect_dataset,
    get_dataset,
    register_dataset,
    synthesize,
)
from mper.datasets.spec import INFERENCE_MODES, SLICE_WISE, SLIDING_WINDOW, VALIDATION_SPLITS, DatasetSpec

# isort: split
# The built-in datasets register themselves on import, LA first (so it is listed first).
from mper.datasets import la, acdc  # noqa: I001

__all__ = [
    "INFERENCE_MODES",
    "SLICE_WISE",
    "SLIDING_WINDOW",
    "VALIDATION_SPLITS",
    "DatasetSpec",
    "acdc",
    "check_dataset_root",
    "convert",
    "dataset_names",
    "detect_dataset",
    "get_dataset",
    "la",
    "register_dataset",
    "synthesize",
]
