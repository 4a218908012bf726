"""Left atrium (LA) data in the UA-MT layout (docs/method.md, "Data layouts").

Layout under a dataset root::

    ROOT/2018LA_Seg_Training Set/<case>/mri_norm2.h5   image float32 (H, W, D), z-scored
                                                       label uint8 (H, W, D), 1 = atrium
    ROOT/train.list                                    training cases, labeled ones first
    ROOT/test.list                                     test cases

Axis order is (H, W, D) = the NRRD (x, y, z) order of the 2018 challenge scans; D is the
through-plane axis, and rotations/flips act in the (H, W) plane.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mper.data.augment import random_crop, random_rot_flip
from mper.data.dataset import CaseDataset
from mper.data.files import read_image_label, read_list, write_image_label, write_list
from mper.data.splits import check_labeled_count
from mper.errors import ConfigError

LA_IMAGES_DIR = "2018LA_Seg_Training Set"
#: File name of every LA case inside its case folder.
LA_CASE_FILE = "mri_norm2.h5"
LA_PATCH_SIZE = (112, 112, 80)
LA_CLASS_NAMES = ("background", "LA")
LA_NUM_CLASSES = len(LA_CLASS_NAMES)
LA_NORMALIZATION = "z-score"
LA_SPLITS = ("train", "test")
_LAYOUT = f"UA-MT LA layout: ROOT/{LA_IMAGES_DIR}/<case>/{LA_CASE_FILE}"


def la_case_path(root: str | Path, case: str) -> Path:
    """Path of the h5 file of LA case ``case`` under dataset root ``root``."""
    return Path(root) / LA_IMAGES_DIR / case / LA_CASE_FILE


def load_la_case(root: str | Path, case: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one LA volume: (image float32 (H, W, D), label uint8 (H, W, D) in {0, 1}).

    Raises:
        MissingFileError: the case file is missing.
        DataFormatError: the file is corrupt, lacks ``image``/``label``, is not 3-D, or
            its label is not binary.
    """
    return read_image_label(
        la_case_path(root, case), ndim=3, num_classes=LA_NUM_CLASSES, layout=_LAYOUT, normalization=LA_NORMALIZATION
    )


def la_cases(root: str | Path, split: str) -> list[str]:
    """Case names of ``split`` (``"train"`` or ``"test"``), read from ``ROOT/<split>.list``."""
    if split not in LA_SPLITS:
        raise ConfigError(f"LA split must be one of {LA_SPLITS}, got {split!r}")
    return read_list(Path(root) / f"{split}.list", case_file=LA_CASE_FILE)


def la_split(root: str | Path, labeled: int) -> tuple[list[str], list[str]]:
    """(labeled cases, unlabeled cases): the first ``labeled`` cases of ``train.list`` and
    the rest (the standard settings are 4 and 8 labeled of 80)."""
    train = la_cases(root, "train")
    check_labeled_count(labeled, len(train), f"cases of {Path(root) / 'train.list'}")
    return train[:labeled], train[labeled:]


def write_la_case(root: str | Path, case: str, image: np.ndarray, label: np.ndarray) -> Path:
    """Write one case in the UA-MT layout and return its path."""
    return write_image_label(la_case_path(root, case), image, label)


def write_la_lists(root: str | Path, train: Sequence[str], test: Sequence[str]) -> None:
    """Write ``train.list`` and ``test.list`` under ``root``."""
    write_list(Path(root) / "train.list", train)
    write_list(Path(root) / "test.list", test)


class LAPatches(CaseDataset):
    """Training patches of LA volumes (docs/method.md, "Training").

    Each item is a random rot90 + flip in the (H, W) plane (when ``augment``), then a
    uniformly placed crop of ``patch_size`` (zero-padded first where the volume is
    smaller), as ``{"image": (1, H, W, D) float32, "label": (H, W, D) int64, "case": str}``.
    Volumes are read once and kept in memory (``cache``). Arguments are those of
    :class:`mper.data.dataset.CaseDataset` (``cases``: LA case names; ``patch_size``
    defaults to (112, 112, 80)); draws are reproducible per (seed, epoch, index).
    """

    default_patch_size = LA_PATCH_SIZE

    def load(self, case: str) -> tuple[np.ndarray, np.ndarray]:
        return load_la_case(self.root, case)

    def transform(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.augment:
            image, label = random_rot_flip(image, label, rng)
        return random_crop(image, label, self.patch_size, rng)
