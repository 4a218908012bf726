"""The classes of the two benchmarks, as evaluation names and counts them."""
from __future__ import annotations

from ..data.acdc import ACDC_CLASS_NAMES
from ..data.preprocess import check_dataset

#: Class names by label value, background first (docs/method.md, "Networks").
CLASS_NAMES: dict[str, tuple[str, ...]] = {"la": ("background", "LA"), "acdc": ACDC_CLASS_NAMES}


def dataset_num_classes(dataset: str) -> int:
    """Number of classes, background included (LA 2, ACDC 4)."""
    return len(CLASS_NAMES[check_dataset(dataset)])


__all__ = ["CLASS_NAMES", "check_dataset", "dataset_num_classes"]
