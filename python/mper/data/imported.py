"""An imported dataset: what ``mper-data import`` writes from raw scans, and what training reads.

Layout under a dataset root::

    ROOT/plan.toml             the plan (see :mod:`mper.data.scan_plan`)
    ROOT/cases/<case>.h5       image          float32 (C, X, Y, Z): cropped, normalised, resampled
                               label          uint8 (X, Y, Z) on the same grid (labeled cases)
                               original_label uint8, the raw label on the scan's grid (labeled cases)
                               attribute "geometry": the case's CaseGeometry as JSON
    ROOT/labeled.list          labeled training cases (the first ones are labeled first)
    ROOT/unlabeled.list        training cases without labels (may be empty)
    ROOT/test.list             test cases with labels (may be empty)

Array axes are the scan's (as stored in the NIfTI file); volumes carry their channels
first. Training items (:class:`ImportedLayout`, :class:`ScanItems`) are whole cases, cut
into patches of the planned size (3D networks), or the slices of the cases across the
plan's slice axis, each read alone and cut into patches (2D networks).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import h5py
import numpy as np

from mper.data.dataset import CaseDataset
from mper.data.files import read_h5_case, read_list, write_list
from mper.data.scan_preprocess import CaseGeometry
from mper.data.splits import check_labeled_count
from mper.errors import ConfigError, DataFormatError, MissingFileError

SCAN_CASES_DIR = "cases"
SCAN_LIST_FILES = {"labeled": "labeled.list", "unlabeled": "unlabeled.list", "test": "test.list"}
#: The splits :meth:`ImportedLayout.list_cases` lists: ``train`` is the training items of
#: the labeled cases, then of the unlabeled ones.
SCAN_SPLITS = ("train", *SCAN_LIST_FILES)
#: Between a case and a slice's index in the name of a 2D training item.
SLICE_SEPARATOR = "/"
#: Share of training patches centred on a voxel of a labeled class (nnU-Net samples a third so).
FOREGROUND_FRACTION = 1 / 3
_LAYOUT = f"an imported dataset: ROOT/{SCAN_CASES_DIR}/<case>.h5 with image (C, X, Y, Z) and label"


def scan_case_path(root: str | Path, case: str) -> Path:
    """The file of ``case`` under dataset root ``root``."""
    return Path(root) / SCAN_CASES_DIR / f"{case}.h5"


def write_scan_case(
    root: str | Path,
    case: str,
    image: np.ndarray,
    label: np.ndarray | None,
    original_label: np.ndarray | None,
    geometry: CaseGeometry,
) -> Path:
    """Write one preprocessed case (see the module docstring) and return its path."""
    path = scan_case_path(root, case)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as handle:
        handle.create_dataset("image", data=np.asarray(image, dtype=np.float32))
        for key, value in (("label", label), ("original_label", original_label)):
            if value is not None:
                handle.create_dataset(key, data=np.asarray(value, dtype=np.uint8), compression="gzip")
        handle.attrs["geometry"] = geometry.to_json()
    return path


def write_scan_lists(root: str | Path, lists: dict[str, Sequence[str]]) -> None:
    """Write the case lists (``labeled``, ``unlabeled``, ``test``); empty ones as empty files."""
    for split, file_name in SCAN_LIST_FILES.items():
        write_list(Path(root) / file_name, lists.get(split, ()))


def _list(root: str | Path, split: str) -> list[str]:
    path = Path(root) / SCAN_LIST_FILES[split]
    if path.is_file() and not path.read_text().strip():
        return []
    return read_list(path)


def _read(root: str | Path, case: str, keys: tuple[str, ...]) -> tuple[np.ndarray, ...]:
    arrays = read_h5_case(scan_case_path(root, case), keys, layout=_LAYOUT)
    image = arrays[0]
    if image.ndim != 4:
        raise DataFormatError(f"{scan_case_path(root, case)}: image has shape {image.shape}, expected (C, X, Y, Z)")
    if len(arrays) > 1 and arrays[1].shape != image.shape[1:]:
        raise DataFormatError(
            f"{scan_case_path(root, case)}: {keys[1]} has shape {arrays[1].shape}, expected {image.shape[1:]}"
        )
    return (image.astype(np.float32, copy=False), *(array.astype(np.uint8, copy=False) for array in arrays[1:]))


@contextmanager
def _opened(root: str | Path, case: str) -> Iterator[h5py.File]:
    path = scan_case_path(root, case)
    if not path.is_file():
        raise MissingFileError(f"{path} not found: expected {_LAYOUT}; import the dataset again")
    try:
        with h5py.File(path, "r") as handle:
            if "image" not in handle or handle["image"].ndim != 4:
                raise DataFormatError(f"{path}: no 4D image dataset; expected {_LAYOUT}")
            yield handle
    except OSError as error:
        raise DataFormatError(f"{path} is not a readable HDF5 file ({error}); import the dataset again") from error


def load_scan_item(root: str | Path, case: str) -> tuple[np.ndarray, np.ndarray]:
    """A training case: (image float32 (C, X, Y, Z), label uint8 (X, Y, Z)); a case without a
    label gets an all-background one (self-training never reads it as a label)."""
    with _opened(root, case) as handle:
        labeled = "label" in handle
    if labeled:
        image, label = _read(root, case, ("image", "label"))
        return image, label
    (image,) = _read(root, case, ("image",))
    return image, np.zeros(image.shape[1:], dtype=np.uint8)


@dataclass(frozen=True)
class ImportedLayout:
    """The case lists and readers of an imported dataset, whose training items are whole
    cases (3D networks, ``slice_axis`` ``None``) or the slices of the cases across
    ``slice_axis`` (2D networks), named ``<case>/<index>``."""

    slice_axis: int | None = None

    def label_group(self, item: str) -> str:
        """The case a training item belongs to."""
        return item if self.slice_axis is None else item.rsplit(SLICE_SEPARATOR, 1)[0]

    def items(self, root: str | Path, cases: Sequence[str]) -> list[str]:
        """The training items of ``cases``, case by case."""
        if self.slice_axis is None:
            return list(cases)
        items = []
        for case in cases:
            with _opened(root, case) as handle:
                depth = handle["image"].shape[self.slice_axis + 1]
            items += [f"{case}{SLICE_SEPARATOR}{index}" for index in range(depth)]
        return items

    def list_cases(self, root: str | Path, split: str) -> list[str]:
        """The cases of ``split`` (one of :data:`SCAN_SPLITS`); ``train`` lists the training
        items of the labeled cases, then of the unlabeled ones."""
        if split not in SCAN_SPLITS:
            raise ConfigError(f"split must be one of {', '.join(SCAN_SPLITS)}; got {split!r}")
        if split == "train":
            return self.items(root, _list(root, "labeled") + _list(root, "unlabeled"))
        return _list(root, split)

    def training_split(self, root: str | Path, labeled: int) -> tuple[list[str], list[str]]:
        """(labeled, unlabeled) items: those of the first ``labeled`` cases of ``labeled.list``,
        and those of the rest of it and of ``unlabeled.list``."""
        pool = _list(root, "labeled")
        check_labeled_count(labeled, len(pool), f"cases of {Path(root) / SCAN_LIST_FILES['labeled']}")
        return self.items(root, pool[:labeled]), self.items(root, pool[labeled:] + _list(root, "unlabeled"))

    def load_item(self, root: str | Path, item: str) -> tuple[np.ndarray, np.ndarray]:
        """A training item: a case (see :func:`load_scan_item`), or one slice of it, read alone."""
        if self.slice_axis is None:
            return load_scan_item(root, item)
        case, index = item.rsplit(SLICE_SEPARATOR, 1)
        with _opened(root, case) as handle:
            where = [slice(None)] * 3
            where[self.slice_axis] = slice(int(index), int(index) + 1)
            every_channel = (slice(None), *where)
            image = np.asarray(handle["image"][every_channel], dtype=np.float32)
            label = (
                np.asarray(handle["label"][tuple(where)], dtype=np.uint8)
                if "label" in handle
                else np.zeros(image.shape[1:], dtype=np.uint8)
            )
        return np.squeeze(image, self.slice_axis + 1), np.squeeze(label, self.slice_axis)


def load_scan_volume(root: str | Path, case: str) -> tuple[np.ndarray, np.ndarray]:
    """A labeled case on the preprocessed grid: (image (C, X, Y, Z), label (X, Y, Z))."""
    image, label = _read(root, case, ("image", "label"))
    return image, label


def load_original_label(root: str | Path, case: str) -> tuple[np.ndarray, CaseGeometry]:
    """The raw label of ``case`` on its scan's grid, and the case's :class:`CaseGeometry`."""
    path = scan_case_path(root, case)
    (label,) = read_h5_case(path, ("original_label",), ndim=3, layout=_LAYOUT)
    return label.astype(np.uint8, copy=False), load_geometry(root, case)


def load_geometry(root: str | Path, case: str) -> CaseGeometry:
    """The :class:`CaseGeometry` stored with ``case``."""
    path = scan_case_path(root, case)
    if not path.is_file():
        raise MissingFileError(f"{path} not found: expected {_LAYOUT}; import the dataset again")
    with h5py.File(path, "r") as handle:
        if "geometry" not in handle.attrs:
            raise DataFormatError(f"{path} has no geometry attribute; import the dataset again")
        return CaseGeometry.from_json(str(handle.attrs["geometry"]))


def _pad(image: np.ndarray, label: np.ndarray, size: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pad the spatial axes shorter than ``size`` symmetrically."""
    missing = [max(target - length, 0) for target, length in zip(size, label.shape)]
    if not any(missing):
        return image, label
    widths = [(gap // 2, gap - gap // 2) for gap in missing]
    return np.pad(image, [(0, 0), *widths]), np.pad(label, widths)


def _window_starts(
    label: np.ndarray, size: Sequence[int], rng: np.random.Generator, centre_on_foreground: bool
) -> list[int]:
    """Corner of a window of ``size`` in ``label``: around a random voxel of a random labeled
    class, or uniformly placed."""
    classes = np.unique(label)
    classes = classes[classes > 0]
    if centre_on_foreground and classes.size:
        voxels = np.argwhere(label == classes[int(rng.integers(classes.size))])
        centre = voxels[int(rng.integers(len(voxels)))]
        return [int(np.clip(c - s // 2, 0, length - s)) for c, s, length in zip(centre, size, label.shape)]
    return [int(rng.integers(0, length - s + 1)) for length, s in zip(label.shape, size)]


class ScanItems(CaseDataset):
    """Training items of an imported dataset (see :class:`ImportedLayout`): patches of
    ``patch_size`` of whole cases (3 sizes) or of slices (2 sizes), as ``{"image":
    (C, *patch), "label": (*patch), "case"}``.

    With ``augment``, a third of the patches (:data:`FOREGROUND_FRACTION`) are centred on
    a voxel of a labeled class present in the item, the rest placed uniformly; every axis
    is flipped with probability 1/2 and square in-plane patches are turned by a random
    multiple of 90 degrees. Without, the patch is centred on the labeled voxels' bounding
    box (the item's centre when it has none), so that one pass over the labeled items
    meets their classes (the prototypes' k-means reads it). Items smaller than the patch
    are zero-padded. Subclasses set :attr:`default_patch_size` and :attr:`layout` (see
    :func:`scan_items`).
    """

    layout: ClassVar[ImportedLayout] = ImportedLayout()

    def load(self, case: str) -> tuple[np.ndarray, np.ndarray]:
        return self.layout.load_item(self.root, case)

    def transform(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        image, label = _pad(image, label, self.patch_size)
        if self.augment:
            starts = _window_starts(label, self.patch_size, rng, bool(rng.random() < FOREGROUND_FRACTION))
        else:
            starts = _centred_window(label, self.patch_size)
        window = tuple(slice(start, start + size) for start, size in zip(starts, self.patch_size))
        every_channel = (slice(None), *window)
        image, label = image[every_channel], label[window]
        if not self.augment:
            return image, label
        for axis in range(label.ndim):
            if rng.random() < 0.5:
                image, label = np.flip(image, axis + 1), np.flip(label, axis)
        plane = [axis for axis in range(label.ndim) if label.ndim == 2 or axis != self.layout.slice_axis]
        if len(plane) == 2 and label.shape[plane[0]] == label.shape[plane[1]]:
            turns = int(rng.integers(0, 4))
            image = np.rot90(image, turns, axes=(plane[0] + 1, plane[1] + 1))
            label = np.rot90(label, turns, axes=(plane[0], plane[1]))
        return image, label


def _centred_window(label: np.ndarray, size: Sequence[int]) -> list[int]:
    """Corner of the window of ``size`` centred on the bounding box of the labeled voxels."""
    present = np.argwhere(label > 0)
    centre = (present.min(axis=0) + present.max(axis=0)) // 2 if present.size else np.asarray(label.shape) // 2
    return [int(np.clip(c - s // 2, 0, length - s)) for c, s, length in zip(centre, size, label.shape)]


def scan_items(patch_size: Sequence[int], layout: ImportedLayout) -> type[ScanItems]:
    """The :class:`ScanItems` of one plan: its patch size and layout."""
    if len(patch_size) != (3 if layout.slice_axis is None else 2):
        raise ValueError(f"patch_size {tuple(patch_size)} does not fit items of {layout}")
    return type(
        "ScanItems", (ScanItems,), {"default_patch_size": tuple(int(size) for size in patch_size), "layout": layout}
    )
