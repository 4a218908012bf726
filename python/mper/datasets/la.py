"""The left atrium (LA) benchmark: 3D LGE-MRI in the UA-MT layout, a 3D V-Net, sliding-window
inference (docs/method.md). The layout's readers are in :mod:`mper.data.la`, the synthetic
generator in :mod:`mper.data.synth_la`, the converter in :mod:`mper.data.convert`."""

from __future__ import annotations

from importlib import resources

from mper.data.convert import convert_la, holds_la_download
from mper.data.la import (
    LA_CASE_FILE,
    LA_CLASS_NAMES,
    LA_IMAGES_DIR,
    LA_NORMALIZATION,
    LA_PATCH_SIZE,
    LAPatches,
    la_cases,
    la_split,
    load_la_case,
)
from mper.data.synth_la import LA_SYNTH_CASES, LA_SYNTH_SIZE, synthesize_la
from mper.nets.vnet3d import VNet3D

from .registry import register_dataset
from .spec import SLIDING_WINDOW, DatasetSpec

LA = register_dataset(
    DatasetSpec(
        name="la",
        title="LA",
        class_names=LA_CLASS_NAMES,
        network=VNet3D,
        layout_mark=LA_IMAGES_DIR,
        list_cases=la_cases,
        training_split=la_split,
        load_item=load_la_case,
        load_volume=load_la_case,
        training_items=LAPatches,
        case_file=LA_CASE_FILE,
        preset_file=resources.files("mper.presets").joinpath("la.toml"),
        patch_size=LA_PATCH_SIZE,
        inference=SLIDING_WINDOW,
        stride=(18, 18, 4),
        slice_axis=2,  # volumes are (H, W, D): figures show axial slices
        slice_name="axial slice",
        normalization=LA_NORMALIZATION,
        validation_splits=("test", "holdout"),  # no val.list
        label_unit="cases",
        label_budgets=(4, 8),  # 5% and 10% of the 80 training cases
        synthesize=synthesize_la,
        synth_cases=LA_SYNTH_CASES,
        synth_size=LA_SYNTH_SIZE,
        convert=convert_la,
        raw_description="the 2018 atrial segmentation challenge download (<case>/lgemri.nrrd, <case>/laendo.nrrd)",
        holds_raw=holds_la_download,
    )
)
