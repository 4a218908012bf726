"""Cardiac (ACDC) data in the SSL4MIS layout (docs/method.md, "Data layouts").

Layout under a dataset root::

    ROOT/data/<case>.h5                 image float32 (S, H, W) in [0, 1], label uint8 (S, H, W)
    ROOT/data/slices/<case>_slice_<i>.h5  image float32 (H, W), label uint8 (H, W)
    ROOT/train_slices.list              training slices, patient by patient
    ROOT/train.list                     training frames (volumes)
    ROOT/val.list, ROOT/test.list       validation / test frames (volumes)

A case is one cardiac phase of one patient, named ``patientXXX_frameYY``. Labels follow
ACDC: 0 background, 1 right ventricle (RV), 2 myocardium, 3 left ventricle (LV).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mper.data.augment import INTERPOLATION_ORDERS, random_rot_flip, random_rotate, resize
from mper.data.dataset import CaseDataset
from mper.data.files import misplaced_slice_axis, read_image_label, read_list, write_image_label, write_list
from mper.data.splits import check_labeled_count
from mper.errors import ConfigError, DataFormatError

ACDC_DATA_DIR = "data"
ACDC_SLICES_DIR = "slices"
_SLICE_MARK = "_slice_"
ACDC_PATCH_SIZE = (256, 256)
ACDC_CLASS_NAMES = ("background", "RV", "myocardium", "LV")
ACDC_NUM_CLASSES = len(ACDC_CLASS_NAMES)
ACDC_NORMALIZATION = "min-max"
ACDC_LISTS = {"train": "train_slices.list", "val": "val.list", "test": "test.list"}
_SLICE_LAYOUT = "SSL4MIS ACDC layout: ROOT/data/slices/<case>_slice_<i>.h5, 2-D image and label"
_VOLUME_LAYOUT = "SSL4MIS ACDC layout: ROOT/data/<case>.h5, image and label of shape (S, H, W)"


def acdc_slice_path(root: str | Path, name: str) -> Path:
    """Path of training slice ``name`` (``patientXXX_frameYY_slice_<i>``)."""
    return Path(root) / ACDC_DATA_DIR / ACDC_SLICES_DIR / f"{name}.h5"


def acdc_volume_path(root: str | Path, case: str) -> Path:
    """Path of the volume of frame ``case`` (``patientXXX_frameYY``)."""
    return Path(root) / ACDC_DATA_DIR / f"{case}.h5"


def slice_name(case: str, index: int) -> str:
    """Name of slice ``index`` of frame ``case``."""
    return f"{case}{_SLICE_MARK}{index}"


def is_training_slice(path: Path) -> bool:
    """Whether ``path`` is a training slice of the layout, ``data/slices/<case>_slice_<i>.h5``,
    whose frame's volume ``data/<case>.h5`` is there too."""
    case, mark, index = path.stem.rpartition(_SLICE_MARK)
    folder = path.parent
    return (
        path.suffix == ".h5"
        and bool(mark)
        and index.isdigit()
        and folder.name == ACDC_SLICES_DIR
        and folder.parent.name == ACDC_DATA_DIR
        and acdc_volume_path(folder.parent.parent, case).is_file()
    )


def patient_id(name: str) -> str:
    """The ``patientXXX`` prefix of a frame or slice name."""
    return name.split("_", 1)[0]


def _read_acdc_file(path: Path, ndim: int, layout: str) -> tuple[np.ndarray, np.ndarray]:
    return read_image_label(path, ndim, ACDC_NUM_CLASSES, layout=layout, normalization=ACDC_NORMALIZATION)


def load_acdc_slice(root: str | Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one training slice: (image float32 (H, W), label uint8 (H, W) in 0..3)."""
    return _read_acdc_file(acdc_slice_path(root, name), 2, _SLICE_LAYOUT)


def load_acdc_volume(root: str | Path, case: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one frame: (image float32 (S, H, W), label uint8 (S, H, W) in 0..3). A frame
    stored in another axis order (slices last, say) is refused: it would be scored slice by
    slice along the wrong axis."""
    path = acdc_volume_path(root, case)
    image, label = _read_acdc_file(path, 3, _VOLUME_LAYOUT)
    shortest = misplaced_slice_axis(image.shape, 0)
    if shortest is not None:
        raise DataFormatError(
            f"{path}: shape {image.shape}, but ACDC frames are stored (S, H, W), slices first: axis {shortest} "
            f"({image.shape[shortest]}) is far shorter than axis 0 ({image.shape[0]}); write image and label with "
            f"the slices first (numpy.moveaxis(array, {shortest}, 0))"
        )
    return image, label


def acdc_cases(root: str | Path, split: str) -> list[str]:
    """Names listed for ``split``: slice names for ``"train"``, frame names for
    ``"val"`` and ``"test"``."""
    if split not in ACDC_LISTS:
        raise ConfigError(f"ACDC split must be one of {tuple(ACDC_LISTS)}, got {split!r}")
    return read_list(Path(root) / ACDC_LISTS[split])


def acdc_split(root: str | Path, labeled_patients: int) -> tuple[list[str], list[str]]:
    """(labeled slices, unlabeled slices) of ``train_slices.list``.

    Labeled are all slices of the first ``labeled_patients`` distinct patients in list
    order (3 patients give the standard 68 slices of the SSL4MIS list, 7 give 136); the
    others are unlabeled. List order is kept within both parts.
    """
    slices = acdc_cases(root, "train")
    patients = list(dict.fromkeys(patient_id(name) for name in slices))
    check_labeled_count(labeled_patients, len(patients), f"patients of {Path(root) / ACDC_LISTS['train']}")
    chosen = set(patients[:labeled_patients])
    labeled = [name for name in slices if patient_id(name) in chosen]
    unlabeled = [name for name in slices if patient_id(name) not in chosen]
    return labeled, unlabeled


def write_acdc_volume(
    root: str | Path, case: str, image: np.ndarray, label: np.ndarray, with_slices: bool
) -> list[str]:
    """Write frame ``case`` (S, H, W) as a volume file and, if ``with_slices``, as one
    file per slice; return the slice names written."""
    write_image_label(acdc_volume_path(root, case), image, label)
    if not with_slices:
        return []
    names = [slice_name(case, index) for index in range(image.shape[0])]
    for name, image_slice, label_slice in zip(names, image, label):
        write_image_label(acdc_slice_path(root, name), image_slice, label_slice)
    return names


def write_acdc_lists(
    root: str | Path,
    train_slices: Sequence[str],
    train: Sequence[str],
    val: Sequence[str],
    test: Sequence[str],
) -> None:
    """Write ``train_slices.list``, ``train.list``, ``val.list`` and ``test.list``."""
    root = Path(root)
    write_list(root / ACDC_LISTS["train"], train_slices)
    write_list(root / "train.list", train)
    write_list(root / ACDC_LISTS["val"], val)
    write_list(root / ACDC_LISTS["test"], test)


class ACDCSlices(CaseDataset):
    """Training slices of ACDC with the SSL4MIS ``RandomGenerator`` augmentation (docs/method.md, "Training").

    With ``augment``: with probability 1/2 a random rot90 + flip; otherwise, with
    probability 1/2, a random rotation in [-20, 20] degrees (nearest neighbour). Then, and
    always, a resize to ``patch_size`` (image by ``image_interpolation``, ``"cubic"`` or
    ``"nearest"``; label by nearest neighbour). Items are
    ``{"image": (1, h, w) float32, "label": (h, w) int64, "case": str}``. The other
    arguments are those of :class:`mper.data.dataset.CaseDataset` (``cases``: slice names;
    ``patch_size`` defaults to (256, 256)); draws are reproducible per (seed, epoch, index).
    """

    default_patch_size = ACDC_PATCH_SIZE

    def __init__(self, *args: Any, image_interpolation: str = "cubic", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if image_interpolation not in INTERPOLATION_ORDERS:
            raise ValueError(
                f"image_interpolation must be one of {tuple(INTERPOLATION_ORDERS)}, got {image_interpolation!r}"
            )
        self.image_interpolation = image_interpolation

    def load(self, case: str) -> tuple[np.ndarray, np.ndarray]:
        return load_acdc_slice(self.root, case)

    def transform(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.augment:
            if rng.random() < 0.5:
                image, label = random_rot_flip(image, label, rng)
            elif rng.random() < 0.5:
                image, label = random_rotate(image, label, rng)
        return resize(image, label, self.patch_size, self.image_interpolation)
