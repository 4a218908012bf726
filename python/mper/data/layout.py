"""Which dataset a folder holds, told from its layout, so that a mix-up is named as such."""
from __future__ import annotations

from pathlib import Path

from mper.data.acdc import ACDC_DATA_DIR
from mper.data.la import LA_IMAGES_DIR
from mper.errors import ConfigError

#: What marks each layout: the folder that holds its cases.
LAYOUT_MARKS = {"la": LA_IMAGES_DIR, "acdc": ACDC_DATA_DIR}
DATASET_NAMES = {"la": "LA", "acdc": "ACDC"}


def detect_dataset(root: str | Path) -> str | None:
    """``"la"`` or ``"acdc"`` when ``root`` holds that layout's case folder, else ``None``."""
    found = [dataset for dataset, mark in LAYOUT_MARKS.items() if (Path(root) / mark).is_dir()]
    return found[0] if len(found) == 1 else None


def check_dataset_root(root: str | Path, dataset: str, wanted_by: str) -> None:
    """Raise :class:`~mper.errors.ConfigError` when ``root`` holds the other dataset's layout.

    ``wanted_by`` says who expects ``dataset`` (e.g. "the checkpoint was trained on it").
    """
    found = detect_dataset(root)
    if found is not None and found != dataset:
        raise ConfigError(
            f"{root} holds {DATASET_NAMES[found]} data (it has {LAYOUT_MARKS[found]}/), but "
            f"{DATASET_NAMES[dataset]} is expected: {wanted_by}; pass the folder of the {DATASET_NAMES[dataset]} data"
        )
