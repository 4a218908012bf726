"""Data building blocks, as in ``torch.utils.data`` and ``monai.data``: file formats and
layouts (the public LA (UA-MT) and ACDC (SSL4MIS) ones, raw NIfTI scans and their
preprocessing), training datasets, augmentation, the two-stream batch sampler, seeding,
synthetic data and converters.

The sibling :mod:`mper.datasets` is the registry, one module per dataset (as
``torchvision.datasets``): each gathers the pieces it uses from here into one
:class:`~mper.datasets.DatasetSpec`, which every other module reads. Pieces live here,
datasets there, so that a new dataset reuses the pieces without copying them.

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
