"""Data layer: the public LA (UA-MT) and ACDC (SSL4MIS) layouts, their training datasets
and augmentations, the two-stream batch sampler, synthetic data and raw-data converters.
:mod:`mper.datasets` gathers each dataset's pieces into one spec.

Nothing here uses a global random state: every draw is a function of a seed and its
position (see :mod:`mper.data.seeding`), so interrupted training can resume exactly.
"""
from mper.data.acdc import (
    ACDC_CLASS_NAMES,
    ACDC_NUM_CLASSES,
    ACDC_PATCH_SIZE,
    ACDCSlices,
    acdc_cases,
    acdc_slice_path,
    acdc_split,
    acdc_volume_path,
    load_acdc_slice,
    load_acdc_volume,
)
from mper.data.files import read_h5_case, read_list, write_list
from mper.data.la import (
    LA_IMAGES_DIR,
    LA_NUM_CLASSES,
    LA_PATCH_SIZE,
    LAPatches,
    la_case_path,
    la_cases,
    la_split,
    load_la_case,
)
from mper.data.preprocess import normalize_intensity
from mper.data.sampler import TwoStreamBatchSampler, endless_batches
from mper.errors import DataFormatError

__all__ = [
    "ACDC_CLASS_NAMES",
    "ACDC_NUM_CLASSES",
    "ACDC_PATCH_SIZE",
    "ACDCSlices",
    "DataFormatError",
    "LA_IMAGES_DIR",
    "LA_NUM_CLASSES",
    "LA_PATCH_SIZE",
    "LAPatches",
    "TwoStreamBatchSampler",
    "acdc_cases",
    "acdc_slice_path",
    "acdc_split",
    "acdc_volume_path",
    "endless_batches",
    "la_case_path",
    "la_cases",
    "la_split",
    "load_acdc_slice",
    "load_acdc_volume",
    "load_la_case",
    "normalize_intensity",
    "read_h5_case",
    "read_list",
    "write_list",
]
