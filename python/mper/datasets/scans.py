"""Datasets imported from one's own scans (nnU-Net v2 or Medical Segmentation Decathlon
layout): the import, the plan derived from the data, and the dataset spec built from a plan.

:func:`import_scans` reads a raw dataset twice, one case at a time. The first pass reads
and checks every case (so that a bad file is refused before anything is written) and
gathers what the preprocessing needs: spacings, nonzero boxes and, for CT channels, a
sample of the labeled voxels' intensities; and the classes the labeled training cases
hold, to warn about a declared class that none holds (self-training refuses it). The second pass preprocesses each case
(:func:`mper.data.scan_preprocess.preprocess_scan`) and writes it
(:mod:`mper.data.imported`); the plan (:mod:`mper.data.scan_plan`) is written last.

The plan holds, for a 3D V-Net and for a 2D U-Net, the settings the data suggests:

* the patch: the median case's shape (after cropping and resampling), each side
  rounded to a multiple of 16 (the networks halve it four times) and at least 32, shrunk side by side
  (the side largest relative to the median case first) until a batch of four fits the
  memory budget;
* the batch: as many as fit in ``memory_gb`` (an estimate: every layer's output of one
  forward, from the network itself, twice for the backward pass), in multiples of four
  (two labeled and two unlabeled images), no more than 5% of the training voxels, and
  no more than twice the labeled items (each batch's labeled half reads distinct items);
* a CPU-sized ``demo`` preset: sides of at most 32 (3D) or 64 (2D) and a batch of four;
* validation on a cross-validation fold of the labeled cases (``data.val_split = "fold"``,
  at most five folds); the default labeled count (:func:`default_labeled`): every labeled
  case outside the fold when there are unlabeled scans, else a fifth of them, within
  what training needs (:func:`labeled_range`): enough labeled items for a labeled batch
  and, without unlabeled scans, one case outside the fold left for self-training to read
  unlabeled. Data too small for that in the chosen ``dims`` is refused at import;
* the soft Dice pooled over the batch (``losses.dice = "pooled-squared"``, ACDC's form)
  for 3D too: LA's per-image Dice suits one class present in nearly every patch, but
  drives the probability of a class that a patch lacks towards zero, and small classes
  are absent from most patches of one's own scans.

``dims`` defaults to 2D for strongly anisotropic data (see
:func:`~mper.data.scan_preprocess.is_strongly_anisotropic`), else 3D.
"""

from __future__ import annotations

import difflib
import functools
import logging
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

from mper.data.files import check_output_folder, listed_names, removed_on_failure
from mper.data.imported import (
    SCAN_CASES_DIR,
    ImportedLayout,
    load_geometry,
    load_scan_volume,
    scan_items,
    write_scan_case,
    write_scan_lists,
)
from mper.data.raw_scans import (
    CT,
    DATASET_JSON,
    LABELED,
    TEST,
    UNLABELED,
    ZSCORE,
    RawCase,
    RawDataset,
    read_case,
    read_raw_dataset,
)
from mper.data.scan_plan import DIMS, ScanPlan, plan_name, plan_path, read_plan, write_plan
from mper.data.scan_preprocess import (
    FOREGROUND_SAMPLES,
    MASK_FOR_NORM_FRACTION,
    ChannelStatistics,
    ScanRules,
    crop,
    foreground_sample,
    foreground_statistics,
    is_strongly_anisotropic,
    nonzero_box,
    preprocess_scan,
    resampled_shape,
    rules_difference,
    target_spacing,
)
from mper.errors import ConfigError, DataFormatError
from mper.host import available_host_memory
from mper.nets import SIZE_MULTIPLE

from .registry import dataset_names, get_dataset, register_imported
from .spec import SLIDING_WINDOW, DatasetSpec

log = logging.getLogger(__name__)

#: The benchmark whose presets and network a plan of each dimensionality builds on.
BASE_DATASETS = {"3d": "la", "2d": "acdc"}
DEFAULT_MEMORY_GB = 8.0
#: Images per batch come in fours: two labeled and two unlabeled, each pair copy-pasted.
BATCH_STEP = 4
#: The batch may hold at most this share of the training set's voxels (nnU-Net's cap).
BATCH_DATASET_SHARE = 0.05
#: Longest patch side of the CPU-sized ``demo`` preset, by dimensionality.
DEMO_SIDE = {"3d": 32, "2d": 64}
MAX_FOLDS = 5
#: The labeled share used by default when the data has no unlabeled scans.
DEFAULT_LABELED_SHARE = 0.2
#: The smallest labeled half of a batch: one copy-paste pair.
MIN_LABELED_BATCH = BATCH_STEP // 2
#: Shortest patch side: the networks' deepest map is then 2 voxels wide, enough for batch
#: norm's statistics over the single image of a copy-paste half-batch.
MIN_PATCH_SIDE = 2 * SIZE_MULTIPLE
#: Backward keeps every layer's output and adds as much again in gradients.
BACKWARD_FACTOR = 2
#: Bytes of a float32 value.
FLOAT32_BYTES = 4


# --- planning -------------------------------------------------------------------------------


@functools.cache
def _base_presets(dims: str) -> Mapping[str, Any]:
    """The preset tables of the benchmark a plan of ``dims`` builds on (read-only: shared)."""
    return tomllib.loads(get_dataset(BASE_DATASETS[dims]).preset_file.read_text())


def _network_options(dims: str, preset: str) -> dict[str, Any]:
    """The ``network`` settings of the base benchmark's preset (``paper`` or ``demo``)."""
    tables = _base_presets(dims)
    return {**tables["paper"].get("network", {}), **tables.get(preset, {}).get("network", {})}


def bytes_per_voxel(dims: str, in_channels: int, num_classes: int) -> float:
    """Training memory per voxel of a patch: the outputs of every layer of the ``paper``
    network of ``dims`` in one forward, counted on a small input, times
    :data:`BACKWARD_FACTOR`."""
    net = get_dataset(BASE_DATASETS[dims]).network(
        in_channels=in_channels, num_classes=num_classes, **_network_options(dims, "paper")
    )
    side = 2 * SIZE_MULTIPLE
    sample = torch.zeros((1, in_channels, *(side,) * (3 if dims == "3d" else 2)))
    elements = 0

    def count(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
        nonlocal elements
        elements += sum(item.numel() for item in (output if isinstance(output, tuple) else (output,)))

    hooks = [module.register_forward_hook(count) for module in net.modules() if not list(module.children())]
    with torch.no_grad():
        net(sample)
    for hook in hooks:
        hook.remove()
    return BACKWARD_FACTOR * FLOAT32_BYTES * elements / sample[0, 0].numel()


def _sides(median: Sequence[float], limit: int | None = None) -> list[int]:
    """Each side rounded to a multiple of :data:`~mper.nets.SIZE_MULTIPLE`, at least
    :data:`MIN_PATCH_SIDE`, at most ``limit``."""
    sides = [max(MIN_PATCH_SIDE, SIZE_MULTIPLE * int(round(length / SIZE_MULTIPLE))) for length in median]
    return sides if limit is None else [max(MIN_PATCH_SIDE, min(side, limit)) for side in sides]


def patch_and_batch(
    median: Sequence[float], voxel_bytes: float, memory_gb: float, training_voxels: float
) -> tuple[list[int], int]:
    """The patch and batch that fit ``memory_gb`` (see the module docstring)."""
    patch = _sides(median)
    budget = memory_gb * 2**30
    while BATCH_STEP * voxel_bytes * math.prod(patch) > budget and max(patch) > MIN_PATCH_SIDE:
        ratios = [side / length if side > MIN_PATCH_SIDE else 0 for side, length in zip(patch, median)]
        patch[int(np.argmax(ratios))] -= SIZE_MULTIPLE
    fits = int(budget // (voxel_bytes * math.prod(patch)))
    share = int(BATCH_DATASET_SHARE * training_voxels // math.prod(patch))
    batch = max(BATCH_STEP, min(fits, share) // BATCH_STEP * BATCH_STEP)
    return patch, batch


@dataclass(frozen=True)
class DataSummary:
    """What planning needs to know of the imported training cases; ``smallest_shape`` is
    the fewest voxels of a labeled case along each axis (after cropping and resampling)."""

    median_shape: tuple[int, int, int]
    smallest_shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    training_cases: int
    labeled_cases: int
    unlabeled_cases: int
    in_channels: int
    num_classes: int


def slice_axis_of(spacing: Sequence[float], median_shape: Sequence[int]) -> int:
    """The axis 2D networks slice across: a single-slice axis, else the coarsest spacing (the
    last of equals)."""
    flat = [axis for axis, length in enumerate(median_shape) if length == 1]
    if flat:
        return flat[-1]
    return int(max(range(len(spacing)), key=lambda axis: (spacing[axis], axis)))


def shaped_dims(summary: DataSummary) -> list[str]:
    """The networks the cases' shape allows: 2D always, 3D unless the cases are single slices."""
    return [dims for dims in DIMS if dims == "2d" or min(summary.median_shape) > 1]


def validation_folds(summary: DataSummary) -> int:
    """The cross-validation folds of the labeled cases: as many as the cases, at most :data:`MAX_FOLDS`."""
    return min(MAX_FOLDS, summary.labeled_cases)


def labeled_outside_fold(summary: DataSummary) -> int:
    """The labeled cases outside the largest validation fold: those a run may label."""
    return summary.labeled_cases - math.ceil(summary.labeled_cases / validation_folds(summary))


def items_per_case(summary: DataSummary, dims: str) -> int:
    """The training items every labeled case gives at least: itself in 3D, its slices in 2D."""
    if dims == "3d":
        return 1
    return summary.smallest_shape[slice_axis_of(summary.spacing, summary.median_shape)]


def labeled_range(summary: DataSummary, dims: str) -> range:
    """The labeled case counts a run of the plan can train with: enough cases for
    :data:`MIN_LABELED_BATCH` labeled items, and none beyond the cases outside the
    validation fold, less one without unlabeled scans (self-training reads it unlabeled).
    Empty when the data has too few labeled cases for ``dims``."""
    fewest = math.ceil(MIN_LABELED_BATCH / items_per_case(summary, dims))
    pool = labeled_outside_fold(summary)
    return range(fewest, (pool if summary.unlabeled_cases else pool - 1) + 1)


def too_few_cases(summary: DataSummary, dims: str) -> str:
    """Why :func:`labeled_range` is empty for ``dims``, and what to do, in one line."""
    pool, fewest = labeled_outside_fold(summary), labeled_range(summary, dims).start
    needs = f"a run needs {fewest} to label (one labeled batch)"
    if not summary.unlabeled_cases:
        needs += " and 1 more to leave unlabeled for self-training"
    others = [other for other in shaped_dims(summary) if other != dims and labeled_range(summary, other)]
    # unlabeled scans help only where the labeled cases already fill the labeled batch
    add = (
        "add unlabeled scans (imagesUnlabeled/ or mper-data import --unlabeled DIR) or labeled cases"
        if pool >= fewest
        else "add labeled cases"
    )
    return (
        f"{summary.labeled_cases} labeled training cases and {summary.unlabeled_cases} unlabeled are too few for a "
        f"{dims} network: the validation fold takes {summary.labeled_cases - pool}, leaving {pool}, and {needs}; "
        + add
        + "".join(f", or import with --dims {other}" for other in others)
    )


def default_labeled(summary: DataSummary, dims: str) -> int:
    """Labeled cases by default: every one outside the largest fold when unlabeled scans
    exist, else a fifth of them, within :func:`labeled_range` (which must not be empty)."""
    allowed = labeled_range(summary, dims)
    pool = labeled_outside_fold(summary)
    wanted = pool if summary.unlabeled_cases else round(DEFAULT_LABELED_SHARE * pool)
    return min(allowed[-1], max(allowed.start, wanted))


def plan_settings(summary: DataSummary, dims: str, memory_gb: float) -> dict[str, Any]:
    """The preset tables of ``dims`` for the data of ``summary`` (see the module docstring);
    :func:`labeled_range` must not be empty for ``dims``."""
    slice_axis = slice_axis_of(summary.spacing, summary.median_shape)
    median = [float(length) for axis, length in enumerate(summary.median_shape) if dims == "3d" or axis != slice_axis]
    voxels = summary.training_cases * math.prod(summary.median_shape)
    patch, batch = patch_and_batch(
        median, bytes_per_voxel(dims, summary.in_channels, summary.num_classes), memory_gb, voxels
    )
    labeled = default_labeled(summary, dims)
    batch = min(batch, 2 * labeled * items_per_case(summary, dims) // BATCH_STEP * BATCH_STEP)
    demo_patch = _sides(median, DEMO_SIDE[dims])
    validation = {"val_split": "fold", "folds": validation_folds(summary), "holdout_cases": 0}
    paper: dict[str, Any] = {
        "labeled": labeled,
        "data": {"patch_size": patch, "batch_size": batch, "labeled_batch_size": batch // 2, **validation},
        "eval": {
            "stride": [max(1, side // 2) for side in patch],
            "postprocess": "none",
            "pseudo_label_dice": summary.unlabeled_cases == 0,
        },
    }
    if summary.num_classes > 2:
        paper["selftrain"] = {"pseudo_label_threshold": "none"}
    # a class absent from an image's patch would be driven to zero by a per-image Dice
    paper["losses"] = {"dice": "pooled-squared"}
    # k-means meets every class when it reads each labeled item once, centred on its labels
    paper["prototypes"] = {"kmeans_augment": False}
    demo = {
        "labeled": labeled,
        "data": {
            "patch_size": demo_patch,
            "batch_size": BATCH_STEP,
            "labeled_batch_size": BATCH_STEP // 2,
            **validation,
        },
        "eval": {"stride": [max(1, side // 2) for side in demo_patch]},
    }
    return {"paper": paper, "strict": {"data": validation}, "demo": demo}


# --- the import -----------------------------------------------------------------------------


@dataclass
class _Fingerprint:
    """Pass one's findings: each case's spacing and cropped shape, CT samples, the
    class values the labeled training cases hold, and the cases of a single slice."""

    spacings: dict[str, tuple[float, float, float]]
    cropped: dict[str, tuple[int, ...]]
    kept_fraction: dict[str, float]
    samples: dict[int, list[np.ndarray]]
    labeled_classes: set[int]
    single_slices: list[str]


def _fingerprint(raw: RawDataset, cases: Sequence[RawCase], progress: bool) -> _Fingerprint:
    ct_channels = [index for index, scheme in enumerate(raw.normalization) if scheme == CT]
    labeled = [case for case in cases if case.role == LABELED]
    per_case = max(1, FOREGROUND_SAMPLES // max(1, len(labeled)))
    rng = np.random.default_rng(0)
    found = _Fingerprint({}, {}, {}, {index: [] for index in ct_channels}, set(), [])
    for case in tqdm(cases, desc="checking scans", unit="case", disable=not progress):
        _add_case(found, case, raw, ct_channels, per_case, rng)
    if 0 < len(found.single_slices) < len(cases):
        log.warning(
            "%s: %d case(s) are a single slice among 3D volumes, and train as volumes of one slice: %s "
            "(give their whole volumes, or leave them out)",
            raw.source,
            len(found.single_slices),
            listed_names(found.single_slices),
        )
    return found


def _add_case(
    found: _Fingerprint,
    case: RawCase,
    raw: RawDataset,
    ct_channels: Sequence[int],
    per_case: int,
    rng: np.random.Generator,
) -> None:
    """Read and check one case and add what pass one gathers; its arrays go when it returns."""
    scan = read_case(case, raw)
    box = nonzero_box(scan.image)
    found.spacings[case.name] = scan.spacing
    found.cropped[case.name] = tuple(stop - start for start, stop in box)
    found.kept_fraction[case.name] = math.prod(found.cropped[case.name]) / math.prod(scan.image.shape[1:])
    if 1 in scan.image.shape[1:]:
        found.single_slices.append(case.name)
    flat = [raw.channels[index] for index, channel in enumerate(scan.image) if channel.min() == channel.max()]
    if len(flat) == len(raw.channels) and case.role != LABELED:
        log.warning(
            "%s: the image of %s case %s holds one value everywhere (%g): a blank or damaged image file? It is "
            "imported, but %s",
            case.images[0].parent,
            case.role,
            case.name,
            float(scan.image.flat[0]),
            "teaches self-training nothing" if case.role == UNLABELED else "its test score measures nothing",
        )
    if case.role == LABELED and scan.label is not None:
        found.labeled_classes.update(int(value) for value in np.unique(scan.label))
        if flat and scan.label.any():
            log.warning(
                "%s: channel(s) %s of case %s hold one value everywhere, yet its label marks %d foreground "
                "voxel(s): a blank or damaged image file?",
                case.images[0].parent,
                ", ".join(flat),
                case.name,
                int(np.count_nonzero(scan.label)),
            )
        label = crop(scan.label, box)
        for index in ct_channels:
            found.samples[index].append(foreground_sample(crop(scan.image[index], box), label, per_case, rng))


def _check_import_memory(found: _Fingerprint, rules: ScanRules, channels: int, source: Path, chosen: bool) -> None:
    """Refuse a target spacing under which the largest case cannot be resampled in the
    memory free (a slip such as ``--spacing 0.01 0.01 0.01`` asks for thousands of times the
    voxels): the cropped image and, at the target spacing, its resampled channels and a
    class of the label at a time with its output, all float32."""
    # extents in voxels as floats: a spacing of 1e-320 mm overflows any integer shape
    resampled = {
        name: [size * spacing / target for size, spacing, target in zip(cropped, found.spacings[name], rules.spacing)]
        for name, cropped in found.cropped.items()
    }
    need = {
        name: FLOAT32_BYTES * (math.prod(found.cropped[name]) * channels + math.prod(shape) * (channels + 2))
        for name, shape in resampled.items()
    }
    largest = max(need, key=lambda name: need[name])
    free = available_host_memory()
    if need[largest] > free:
        advice = (
            "check --spacing: millimetres per voxel, x y z as stored"
            if chosen
            else "import on a machine with more memory, or pass a coarser --spacing"
        )
        raise ConfigError(
            f"{source}: case {largest} resampled to the spacing {list(rules.spacing)} mm becomes "
            f"[{', '.join(f'{size:.0f}' for size in resampled[largest])}] voxels, about {need[largest] / 2**30:.1f} "
            f"GiB to import, but only "
            f"{free / 2**30:.1f} GiB of memory is free; {advice}"
        )


def _check_collapsed_axes(found: _Fingerprint, rules: ScanRules, source: Path, training: Sequence[str]) -> None:
    """Refuse a chosen ``--spacing`` under which a case's axis of several voxels becomes a
    single voxel (a slip such as ``325`` for ``3.25`` mm turns every volume into one slice,
    and the import into a 2D dataset); the message gives the data's own target spacing,
    from the ``training`` cases."""
    for name, cropped in found.cropped.items():
        shape = resampled_shape(cropped, found.spacings[name], rules.spacing)
        for axis, (before, after) in enumerate(zip(cropped, shape)):
            if before > 1 and after == 1:
                raise ConfigError(
                    f"{source}: --spacing {list(rules.spacing)} mm resamples case {name}'s axis {axis} from "
                    f"{before} voxels of {found.spacings[name][axis]:g} mm to a single voxel; check --spacing: "
                    f"millimetres per voxel, x y z as stored (the data's own would be "
                    f"{[round(value, 4) for value in _own_spacing(found, training)]})"
                )


def _warn_absent_classes(raw: RawDataset, found: _Fingerprint, training: Sequence[str]) -> None:
    """One warning per class of ``dataset.json`` that no labeled training case holds: it may
    be meant (a class only the test cases show), but self-training refuses it, as its
    prototypes start from the labeled voxels of each class."""
    for value, name in enumerate(raw.class_names):
        if value not in found.labeled_classes:
            log.warning(
                "%s: class %d (%s) has no voxel in any of the %d labeled training case(s), so self-training will "
                "refuse it (its prototypes start from labeled voxels): label cases that contain it, or remove it "
                "from labels (renumbering the values above it)",
                raw.source / DATASET_JSON,
                value,
                name,
                len(training),
            )


def _import_case(case: RawCase, raw: RawDataset, rules: ScanRules, out: Path) -> tuple[set[int], int]:
    """Preprocess and write one case; its arrays go when it returns, before the next is read.
    Returns the class values its raw label holds and its resampled label lost, and the
    number of labeled voxels outside the crop box (the image's nonzero region)."""
    scan = read_case(case, raw)
    image, label, geometry = preprocess_scan(scan.image, scan.label, scan.spacing, scan.affine, rules)
    write_scan_case(out, case.name, image, label, scan.label, geometry)
    if scan.label is None or label is None:
        return set(), 0
    outside = int(np.count_nonzero(scan.label)) - int(np.count_nonzero(crop(scan.label, geometry.crop)))
    return set(np.unique(scan.label).tolist()) - set(np.unique(label).tolist()), outside


def _warn_labels_outside_crop(raw: RawDataset, outside: Mapping[str, int]) -> None:
    """One warning naming the cases whose label marks voxels outside the image's nonzero
    region: cropping to that region (as nnU-Net does) drops them, so the network never
    learns them; a label shifted against its image, or an image zeroed there, shows so."""
    if outside:
        log.warning(
            "%s: %d case(s) mark labeled voxels where their image is zero in every channel, outside the region "
            "the import crops to (as nnU-Net does), and lose them: %s; check that those labels fit their images",
            raw.source,
            len(outside),
            ", ".join(f"{name} ({count} voxel(s))" for name, count in sorted(outside.items())),
        )


def _warn_vanished_classes(raw: RawDataset, lost: Mapping[int, list[str]], spacing: Sequence[float]) -> None:
    """One warning per class that resampling to ``spacing`` erased from the labels of some
    cases (``lost``: class value to cases): a structure of a few voxels at the scans'
    spacing that the target grid is too coarse to hold; the network never sees it there."""
    for value, cases in sorted(lost.items()):
        log.warning(
            "%s: class %d (%s) vanished from the label of %d case(s) when resampled to the target spacing %s mm (it "
            "holds too few voxels there): %s; import with a finer --spacing if it matters",
            raw.source / DATASET_JSON,
            value,
            raw.class_names[value],
            len(cases),
            " x ".join(f"{length:g}" for length in spacing),
            listed_names(cases),
        )


def _own_spacing(found: _Fingerprint, training: Sequence[str]) -> tuple[float, ...]:
    """The target spacing the data of the ``training`` cases suggests (no ``--spacing``)."""
    return target_spacing([found.spacings[name] for name in training], [found.cropped[name] for name in training])


def _scan_rules(
    raw: RawDataset, found: _Fingerprint, training: Sequence[str], spacing: Sequence[float] | None
) -> ScanRules:
    statistics: list[ChannelStatistics | None] = []
    for index, scheme in enumerate(raw.normalization):
        if scheme != CT:
            statistics.append(None)
            continue
        samples = np.concatenate(found.samples[index]) if found.samples[index] else np.empty(0)
        if samples.size == 0:
            raise DataFormatError(
                f"{raw.source}: the labeled cases have no foreground voxel, so channel {index} ({raw.channels[index]}) "
                "has no CT statistics; check the labels"
            )
        statistics.append(foreground_statistics(samples))
    if spacing is None:
        target = _own_spacing(found, training)
    else:
        target = tuple(float(value) for value in spacing)
        if len(target) != 3 or not all(np.isfinite(value) and value > 0 for value in target):
            raise ConfigError(f"--spacing must be three positive numbers (mm), got {list(spacing)}")
    mask = float(np.median([found.kept_fraction[name] for name in training])) < MASK_FOR_NORM_FRACTION
    return ScanRules(raw.normalization, tuple(statistics), mask, (target[0], target[1], target[2]))


def import_scans(
    source: str | Path,
    out: str | Path,
    spacing: Sequence[float] | None = None,
    dims: str | None = None,
    memory_gb: float = DEFAULT_MEMORY_GB,
    unlabeled: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Import the raw dataset under ``source`` into ``out`` (see the module docstring) and
    return ``out``.

    Args:
        source: a raw dataset folder (nnU-Net v2 or MSD layout).
        out: the dataset root to write: a folder that does not exist or is empty.
        spacing: the target spacing in mm (x, y, z as stored); default from the data.
        dims: ``"2d"`` or ``"3d"``, the plan's network; default from the anisotropy.
        memory_gb: the training memory the plan's batch fits.
        unlabeled: a folder of further unlabeled scans, named as ``imagesTr``.
        progress: show progress bars.

    Raises:
        UserError: a raw file or ``dataset.json`` is unusable, or ``out`` holds files;
            nothing is written then.
    """
    source, out = Path(source), Path(out)
    if dims is not None and dims not in DIMS:
        raise ConfigError(f"--dims must be 2d or 3d; got {dims!r}")
    if not memory_gb > 0:
        raise ConfigError(f"--memory must be a positive number of GB; got {memory_gb}")
    raw = read_raw_dataset(source, unlabeled)
    name = plan_name(raw.name)
    if name != raw.name:
        log.warning(
            "%s: the dataset's name %r names run folders, so the plan names it %r (edit name in plan.toml)",
            source,
            raw.name,
            name,
        )
    if name in dataset_names() and get_dataset(name).scans is None:
        raise ConfigError(f"{source}: the dataset's name {name!r} is a built-in dataset's; rename it in dataset.json")
    check_output_folder(out, source)
    cases = [case for case in raw.cases if case.role != TEST or case.label is not None]
    training = [case.name for case in raw.with_role(LABELED)]
    if len(training) < 2:
        raise DataFormatError(
            f"{source}: {len(training)} labeled training case; mper needs at least 2 (one to learn from, one to "
            "validate on)"
        )
    found = _fingerprint(raw, cases, progress)
    _warn_absent_classes(raw, found, training)
    rules = _scan_rules(raw, found, training, spacing)
    _check_import_memory(found, rules, len(raw.channels), source, chosen=spacing is not None)
    if spacing is not None:
        _check_collapsed_axes(found, rules, source, training)
    shapes = [resampled_shape(found.cropped[name], found.spacings[name], rules.spacing) for name in training]
    median = tuple(int(round(value)) for value in np.median(np.asarray(shapes, dtype=np.float64), axis=0))
    smallest = np.min(np.asarray(shapes), axis=0).tolist()
    unlabeled_cases = len(raw.with_role(UNLABELED))
    summary = DataSummary(
        (median[0], median[1], median[2]),
        (smallest[0], smallest[1], smallest[2]),
        rules.spacing,
        len(training) + unlabeled_cases,
        len(training),
        unlabeled_cases,
        len(raw.channels),
        len(raw.class_names),
    )
    chosen = dims or ("2d" if is_strongly_anisotropic(rules.spacing, median) or 1 in median else "3d")
    if chosen not in shaped_dims(summary):
        raise ConfigError(f"{source}: the cases are single slices; import them with --dims 2d")
    if not labeled_range(summary, chosen):
        raise DataFormatError(f"{source}: {too_few_cases(summary, chosen)}")
    settings = {
        key: plan_settings(summary, key, memory_gb) for key in shaped_dims(summary) if labeled_range(summary, key)
    }
    plan = ScanPlan(
        name=name,
        source=str(source),
        layout=raw.layout,
        file_ending=raw.file_ending,
        dims=chosen,
        slice_axis=slice_axis_of(rules.spacing, median),
        class_names=raw.class_names,
        channels=raw.channels,
        rules=rules,
        median_shape=summary.median_shape,
        settings=settings,
    )
    with removed_on_failure(out):
        lost: dict[int, list[str]] = {}
        outside: dict[str, int] = {}
        for case in tqdm(cases, desc=f"importing {name}", unit="case", disable=not progress):
            vanished, dropped = _import_case(case, raw, rules, out)
            for value in vanished:
                lost.setdefault(value, []).append(case.name)
            if dropped:
                outside[case.name] = dropped
        _warn_vanished_classes(raw, lost, rules.spacing)
        _warn_labels_outside_crop(raw, outside)
        write_scan_lists(
            out,
            {
                "labeled": training,
                "unlabeled": [case.name for case in raw.with_role(UNLABELED)],
                "test": [case.name for case in cases if case.role == TEST],
            },
        )
        write_plan(plan, out)
    return out


# --- the dataset a plan describes ----------------------------------------------------------


def scan_spec(plan: ScanPlan) -> DatasetSpec:
    """The :class:`DatasetSpec` of an imported dataset: the base benchmark's network and
    presets (LA for 3D, ACDC for 2D) with the plan's settings on top."""
    base = get_dataset(BASE_DATASETS[plan.dims])
    changes: dict[str, Mapping[str, Any]] = {name: table for name, table in plan.presets.items()}
    changes["paper"] = {**changes["paper"], "num_classes": len(plan.class_names)}
    layout = ImportedLayout(plan.slice_axis if plan.dims == "2d" else None)
    return DatasetSpec(
        name=plan.name,
        title=plan.name,
        class_names=plan.class_names,
        network=base.network,
        layout_mark=SCAN_CASES_DIR,
        list_cases=layout.list_cases,
        training_split=layout.training_split,
        load_item=layout.load_item,
        load_volume=load_scan_volume,
        label_group=layout.label_group,
        training_items=scan_items(plan.patch_size, layout),
        preset_file=base.preset_file,
        patch_size=plan.patch_size,
        inference=SLIDING_WINDOW,
        stride=plan.stride,
        slice_axis=plan.slice_axis,
        normalization="z-score",  # the plan's rules normalise raw scans; imported volumes are mostly z-scored
        validation_splits=("fold",),
        label_unit="cases",
        label_budgets=(int(plan.presets["paper"]["labeled"]),),
        preset_changes=changes,
        in_channels=len(plan.channels),
        scans=plan,
        flip_axes=tuple(range(len(plan.patch_size))),  # ScanItems flips every axis of a patch
    )


def register_plan(folder: str | Path) -> DatasetSpec:
    """Register the imported dataset whose root ``folder`` holds its plan and return its spec."""
    plan = read_plan(folder)
    _check_settings_tables(plan, plan_path(folder))
    check_plan_against_cases(plan, folder)
    return register_imported(scan_spec(plan))


def check_plan_against_cases(plan: ScanPlan, folder: str | Path) -> None:
    """Refuse the plan of the dataset root ``folder`` when its fixed values (normalisation,
    CT statistics, masking, spacing) are not those its cases were imported with: training
    reads the imported files, mper-predict preprocesses raw scans by the plan, so an edit
    would give predictions of another preprocessing than the network learnt, with exit 0."""
    path = plan_path(folder)
    advice = (
        "the [dataset] values other than name, dims and class_names describe how the import preprocessed the "
        "cases, and change only by importing again: restore the import's value, or import again"
    )
    masked = False
    for case_file in sorted((Path(folder) / SCAN_CASES_DIR).glob("*.h5")):
        geometry = load_geometry(folder, case_file.stem)
        difference = rules_difference(plan.rules, plan.channels, geometry)
        if difference:
            raise ConfigError(f"{path}: {difference} (case {case_file.stem}); {advice}")
        masked = masked or any(normalization.masked for normalization in geometry.normalization)
    if plan.rules.mask_for_norm and ZSCORE in plan.rules.schemes and not masked:
        raise ConfigError(f"{path}: mask_for_norm = true, but no case was z-scored inside its nonzero mask; {advice}")


def _flat_keys(table: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The ``section.key`` names of a nested settings table."""
    keys: list[str] = []
    for key, value in table.items():
        keys += _flat_keys(value, f"{prefix}{key}.") if isinstance(value, Mapping) else [prefix + key]
    return keys


def _unknown_setting(path: Path, table: str, key: str, settings: list[str]) -> ConfigError:
    """The error for ``key`` of the plan's table ``[table]``, which is none of ``settings``
    (``section.key`` names), with the closest section or key when one is close."""
    section, _, leaf = key.rpartition(".")
    sections = sorted({setting.rpartition(".")[0] for setting in settings} - {""})
    if section and section not in sections:
        near = difflib.get_close_matches(section, sections, n=1)
        hint = f"did you mean [{table}.{near[0]}]? " if near else ""
        return ConfigError(
            f"{path}: [{table}.{section}] is not a table of settings; {hint}the tables are {', '.join(sections)}"
        )
    where = f"[{table}{'.' + section if section else ''}]"
    names = [setting.rpartition(".")[2] for setting in settings if setting.rpartition(".")[0] == section]
    near = difflib.get_close_matches(leaf, names, n=1)
    elsewhere = [setting.rpartition(".")[0] for setting in settings if setting.rpartition(".")[2] == leaf]
    if near:
        hint = f"did you mean {near[0]}? "
    elif elsewhere:  # the right name in the wrong table ([3d.demo] patch_size)
        hint = f"it is a setting of [{table}{'.' + elsewhere[0] if elsewhere[0] else ''}]; "
    else:
        hint = ""
    return ConfigError(f"{path}: {where} {leaf} is not a setting; {hint}the settings of {where} are {', '.join(names)}")


def _check_settings_tables(plan: ScanPlan, path: Path) -> None:
    """Refuse, naming ``path`` (the plan), what a typo in its settings tables would make of
    them: a table named nearly as a preset of the benchmark its dims builds on
    (``[3d.demoo]``, ``[3d.Demo]``) would leave the preset it meant unchanged, silently,
    and a key that is no setting (``[3d.demo.data] patch_sise``) would fail later without
    naming the file. Other table names are presets of the plan's own (``[3d.mine]``,
    trained with ``--preset mine``). ``network`` keys are the network's arguments, which
    the training settings check."""
    for dims, tables in plan.settings.items():
        if not isinstance(tables, Mapping):
            continue
        presets = _base_presets(dims)
        for name in sorted(set(tables) - set(presets)):
            near = difflib.get_close_matches(name.lower(), list(presets), n=1, cutoff=0.75)
            if near:
                raise ConfigError(
                    f"{path}: [{dims}.{name}] is not the preset {near[0]!r}, whose settings it seems meant to change; "
                    f"rename the table [{dims}.{near[0]}] (a preset of your own needs a name of its own)"
                )
        settings = _flat_keys(presets["paper"])
        for name, table in tables.items():
            for key in _flat_keys(table) if isinstance(table, Mapping) else []:
                if key not in settings and not key.startswith("network."):
                    raise _unknown_setting(path, f"{dims}.{name}", key, settings)


def has_plan(folder: str | Path) -> bool:
    """Whether ``folder`` holds a plan (an imported dataset's root, or a run on one)."""
    return plan_path(folder).is_file()
