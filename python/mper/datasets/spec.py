"""What a dataset is to mper: :class:`DatasetSpec`, the one record that every other module
reads instead of asking which dataset it has.

A spec holds plain values (class names, patch size, how volumes are predicted and
normalised, which case lists exist) and callables from :mod:`mper.data` and
:mod:`mper.nets` (read a case, split the training list, write synthetic data, convert a
raw download). Training and evaluation look everything up in it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mper.data.dataset import CaseDataset
from mper.data.preprocess import NORMALIZATIONS
from mper.data.scan_plan import ScanPlan
from mper.nets.base import SegmentationNet

if TYPE_CHECKING:
    from importlib.abc import Traversable

#: Whole-volume inference: 3D windows averaged where they overlap, or one 2D slice at a time.
SLIDING_WINDOW = "sliding-window"
SLICE_WISE = "slice-wise"
INFERENCE_MODES = (SLIDING_WINDOW, SLICE_WISE)
#: The one family of synthetic cases of a dataset that offers no others.
STANDARD_FAMILY = {"standard": "the dataset's synthetic cases"}
#: The splits a training run may select its checkpoints on: a ``val`` list, the ``test``
#: list (the published LA protocol), the last cases of the ``train`` list held out, or a
#: cross-validation ``fold`` of the labeled training cases held out.
VALIDATION_SPLITS = ("val", "holdout", "test", "fold")

#: ``(dataset root, split) -> case names``; split ``"train"`` gives the training items.
CaseLister = Callable[[str | Path, str], list[str]]
#: ``(dataset root, case) -> (image float32, label uint8)``.
CaseReader = Callable[[str | Path, str], tuple[np.ndarray, np.ndarray]]
#: ``(dataset root, labeled budget) -> (labeled items, unlabeled items)``.
TrainingSplit = Callable[[str | Path, int], tuple[list[str], list[str]]]
#: ``(out, cases, seed, size, progress, family) -> out``: a complete synthetic dataset root.
Synthesizer = Callable[[Path, int, int, tuple[int, ...], bool, str], Path]
#: ``(source, out, split_from, seed, progress) -> out``: the raw download in the layout.
Converter = Callable[[Path, Path, Path | None, int, bool], Path]


def same_name(item: str) -> str:
    """A training item that is its own labeling unit (a whole case)."""
    return item


@dataclass(frozen=True)
class DatasetSpec:
    """Everything dataset-specific, in one record (see :func:`mper.datasets.register_dataset`).

    Names and classes:
        name: how commands, presets and checkpoints name it (``--dataset NAME``).
        title: how messages and tables name it (``"LA"``).
        class_names: by label value, background first.
        network: the segmentation network class, built with ``num_classes`` and the
            preset's ``network`` table as keyword arguments.

    Layout:
        layout_mark: the folder under a dataset root that marks this layout.
        list_cases: the names of a split's list; ``"train"`` gives the training items, and
            for a dataset that validates on a ``"fold"``, ``"labeled"`` the labeled cases
            (volumes that ``label_group`` maps training items to; folds are dealt from
            them, see :func:`mper.data.splits.fold_cases`).
        training_split: labeled and unlabeled training items for a label budget.
        load_item: one training item (what ``training_items`` reads).
        load_volume: one evaluation volume with its label.
        training_items: the :class:`~mper.data.dataset.CaseDataset` of training patches.
        item_settings: the ``data`` settings ``training_items`` takes as keyword
            arguments (e.g. ``("image_interpolation",)``).
        case_file: the file name every case folder holds, for layouts with one folder per
            case (the case is then named by its folder); ``None`` otherwise.
        preset_file: the TOML file of the dataset's presets (``[paper]`` and the rest).
        preset_changes: tables merged into the preset file's, table by table (an imported
            dataset's plan: its patch size, batch size, classes).
        in_channels: the input channels of every image (volumes then carry them first).
        scans: for a dataset imported from raw scans, its plan: evaluation scores and
            prediction writes on the scans' own voxel grids (see :mod:`mper.eval.scans`).

    Training and evaluation:
        patch_size: the training patch, and the window (or slice size) of inference.
        flip_axes: the axes of a training patch (as ``patch_size`` counts them) that the
            training augmentation mirrors; ``mper-predict --mirror`` averages over the flips
            of these axes (default ``(0, 1)``: the (H, W) plane that LA's and ACDC's
            rot90 + flip mirrors).
        inference: :data:`SLIDING_WINDOW` or :data:`SLICE_WISE`.
        stride: the step of the sliding window (presets set it as ``eval.stride``).
        slice_axis: the axis of a volume (as ``load_volume`` gives it) that slices are
            taken along: by slice-wise inference and by the evaluation figures;
            ``slice_name`` is what the figures call such a slice.
        normalization: the intensity normalisation of the layout (one of
            :data:`mper.data.preprocess.NORMALIZATIONS`); raw scans get the same.
        scan_axes: the permutation that turns a raw NIfTI scan's axes into the volume
            layout (``(0, 1, 2)``: as stored).
        validation_splits: the values ``data.val_split`` may take (of
            :data:`VALIDATION_SPLITS`); ``"holdout"`` needs training items that
            ``load_volume`` reads.
        label_unit: what ``labeled`` counts (``"cases"``, ``"patients"``).
        label_group: the labeling unit a training item belongs to (a slice's patient).
        label_budgets: the usual labeled counts (for help texts and experiment plans).

    Data preparation:
        synthesize: writes a synthetic dataset root, creating it (``None``: none), after
            checking its options so that a refused call creates nothing; ``synth_cases`` and
            ``synth_size`` are its defaults, ``synth_families`` the families of cases it can
            write (name: description), the first the default.
        convert: turns the raw public download into the layout (``None``: none);
            ``raw_description`` says what that download looks like, and ``holds_raw``
            whether a folder holds it (itself, or a few folders down, as ``convert``
            finds it), so that a data root pointed at the download is told to convert
            it (``None``: not recognised).
    """

    name: str
    title: str
    class_names: tuple[str, ...]
    network: type[SegmentationNet]
    layout_mark: str
    list_cases: CaseLister
    training_split: TrainingSplit
    load_item: CaseReader
    load_volume: CaseReader
    training_items: type[CaseDataset]
    preset_file: Traversable | Path
    patch_size: tuple[int, ...]
    inference: str
    stride: tuple[int, ...]
    slice_axis: int
    normalization: str
    validation_splits: tuple[str, ...]
    label_unit: str
    label_budgets: tuple[int, ...]
    synthesize: Synthesizer | None = None
    synth_cases: int = 0
    synth_size: tuple[int, ...] = ()
    synth_families: Mapping[str, str] = field(default_factory=lambda: dict(STANDARD_FAMILY))
    label_group: Callable[[str], str] = same_name
    item_settings: tuple[str, ...] = ()
    slice_name: str = "slice"
    case_file: str | None = None
    scan_axes: tuple[int, int, int] = (0, 1, 2)
    convert: Converter | None = None
    raw_description: str = ""
    holds_raw: Callable[[Path], bool] | None = None
    preset_changes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    in_channels: int = 1
    scans: ScanPlan | None = None
    flip_axes: tuple[int, ...] = (0, 1)

    def __post_init__(self) -> None:
        checks = (
            (len(self.class_names) >= 2, "class_names must name the background and at least one class"),
            (self.inference in INFERENCE_MODES, f"inference must be one of {INFERENCE_MODES}"),
            (self.normalization in NORMALIZATIONS, f"normalization must be one of {tuple(NORMALIZATIONS)}"),
            (
                set(self.validation_splits) <= set(VALIDATION_SPLITS) and bool(self.validation_splits),
                f"validation_splits must be a non-empty subset of {VALIDATION_SPLITS}",
            ),
            (sorted(self.scan_axes) == [0, 1, 2], "scan_axes must be a permutation of (0, 1, 2)"),
            (-3 <= self.slice_axis < 3, "slice_axis must be an axis of a 3D volume"),
            (
                len(set(self.flip_axes)) == len(self.flip_axes)
                and all(0 <= axis < len(self.patch_size) for axis in self.flip_axes),
                "flip_axes must be distinct axes of patch_size",
            ),
            (len(self.synth_families) >= 1, "synth_families must name at least one family"),
            (self.in_channels >= 1, "in_channels must be at least 1"),
            (self.holds_raw is None or self.convert is not None, "holds_raw needs convert, which it points to"),
        )
        for holds, problem in checks:
            if not holds:
                raise ValueError(f"dataset {self.name!r}: {problem}")

    @property
    def num_classes(self) -> int:
        """Classes, background included."""
        return len(self.class_names)

    @property
    def volume_axes(self) -> tuple[str, str, str]:
        """The names of a volume's axes as ``load_volume`` gives them: the slice axis is
        ``S`` (slice-wise inference) or ``D`` (depth, sliding-window inference), the
        others ``H`` and ``W`` in order."""
        names = ["H", "W"]
        names.insert(self.slice_axis % 3, "S" if self.inference == SLICE_WISE else "D")
        return (names[0], names[1], names[2])

    @property
    def scan_axes_names(self) -> tuple[str, str, str]:
        """The names of a raw NIfTI scan's axes as stored (see ``scan_axes``)."""
        names = dict(zip(self.scan_axes, self.volume_axes))
        return (names[0], names[1], names[2])

    def build_network(self, num_classes: int | None = None, **options: Any) -> SegmentationNet:
        """The dataset's network; ``options`` go to its constructor (e.g. ``base_filters=8``)."""
        return self.network(in_channels=self.in_channels, num_classes=num_classes or self.num_classes, **options)
