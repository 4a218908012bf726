"""The ACDC benchmark: cine-MRI short-axis stacks in the SSL4MIS layout, a 2D U-Net trained
on slices, slice-wise inference (docs/method.md). The layout's readers are in
:mod:`mper.data.acdc`, the synthetic generator in :mod:`mper.data.synth_acdc`, the
converter in :mod:`mper.data.convert`."""

from __future__ import annotations

from importlib import resources

from mper.data.acdc import (
    ACDC_CLASS_NAMES,
    ACDC_DATA_DIR,
    ACDC_NORMALIZATION,
    ACDC_PATCH_SIZE,
    ACDCSlices,
    acdc_cases,
    acdc_split,
    load_acdc_slice,
    load_acdc_volume,
    patient_id,
)
from mper.data.convert import convert_acdc, holds_acdc_download
from mper.data.synth_acdc import ACDC_FAMILIES, ACDC_SYNTH_CASES, ACDC_SYNTH_SIZE, synthesize_acdc
from mper.nets.unet2d import UNet2D

from .registry import register_dataset
from .spec import SLICE_WISE, DatasetSpec

ACDC = register_dataset(
    DatasetSpec(
        name="acdc",
        title="ACDC",
        class_names=ACDC_CLASS_NAMES,
        network=UNet2D,
        layout_mark=ACDC_DATA_DIR,
        list_cases=acdc_cases,
        training_split=acdc_split,
        load_item=load_acdc_slice,
        load_volume=load_acdc_volume,
        training_items=ACDCSlices,
        item_settings=("image_interpolation",),
        preset_file=resources.files("mper.presets").joinpath("acdc.toml"),
        patch_size=ACDC_PATCH_SIZE,
        inference=SLICE_WISE,
        stride=(),  # slice-wise inference takes no steps
        slice_axis=0,  # volumes are (S, H, W)
        # NIfTI scans are stored (W, H, S): the SSL4MIS volumes are SimpleITK's arrays of them,
        # which reverse NIfTI's axis order
        scan_axes=(2, 1, 0),
        normalization=ACDC_NORMALIZATION,
        validation_splits=("val", "test"),  # training items are slices: no held-out volumes
        label_unit="patients",
        label_group=patient_id,
        label_budgets=(3, 7),  # 5% and 10% of the 70 training patients
        synthesize=synthesize_acdc,
        synth_families={name: family.description for name, family in ACDC_FAMILIES.items()},
        synth_cases=ACDC_SYNTH_CASES,
        synth_size=ACDC_SYNTH_SIZE,
        convert=convert_acdc,
        raw_description="the ACDC challenge download (patientXXX/patientXXX_frameYY.nii.gz with its _gt labels)",
        holds_raw=holds_acdc_download,
    )
)
