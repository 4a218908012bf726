"""The datasets mper trains and evaluates on, one module each, found by name (a registry,
as ``torchvision.datasets``; the sibling :mod:`mper.data` holds the building blocks the
datasets are made of: file formats, layouts, transforms, sampling, synthetic data).

A dataset is a :class:`DatasetSpec`: its classes, network, patch size, inference and
normalisation, file layout and case lists, label budgets, validation splits, synthetic
generator and converter. Every other module reads the spec instead of asking which
dataset it has. Built in: ``la`` (:mod:`mper.datasets.la`) and ``acdc``
(:mod:`mper.datasets.acdc`). A new dataset is one module that builds a spec and calls
:func:`register_dataset` (CONTRIBUTING.md, "Adding a dataset"). Datasets imported from
one's own scans (:mod:`mper.datasets.scans`) are registered from their plan file by
:func:`register_plan`.
"""

from mper.datasets.registry import (
    check_data_folder,
    check_dataset_root,
    convert,
    dataset_names,
    detect_dataset,
    get_dataset,
    not_imported_yet,
    register_dataset,
    synthesize,
    ways_to_write,
)
from mper.datasets.spec import INFERENCE_MODES, SLICE_WISE, SLIDING_WINDOW, VALIDATION_SPLITS, DatasetSpec

# isort: split
# The built-in datasets register themselves on import, LA first (so it is listed first).
from mper.datasets import la, acdc  # noqa: I001

# isort: split
# Datasets imported from one's own scans register from their plan files.
from mper.datasets.scans import has_plan, import_scans, register_plan

__all__ = [
    "INFERENCE_MODES",
    "SLICE_WISE",
    "SLIDING_WINDOW",
    "VALIDATION_SPLITS",
    "DatasetSpec",
    "acdc",
    "check_data_folder",
    "check_dataset_root",
    "convert",
    "dataset_names",
    "detect_dataset",
    "get_dataset",
    "has_plan",
    "import_scans",
    "la",
    "not_imported_yet",
    "register_dataset",
    "register_plan",
    "synthesize",
    "ways_to_write",
]
