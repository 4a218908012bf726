"""A dataset imported from raw scans (its spec's ``scans`` plan), on the scans' own voxel grids.

* :func:`scan_labels`: the class probabilities on the preprocessed grid (sliding window),
  resampled back to the case's cropped box on its scan, the most probable class taken,
  the box placed back into background (:func:`mper.data.scan_preprocess.restore_labels`),
  then ``eval.postprocess``.
* :func:`score_scan_case`: ``mper-eval``'s scores of one imported case in the original
  geometry, against the raw label, distances in millimetres from the scan's spacing.
* :func:`predict_scans`: ``mper-predict`` on raw scans named as the dataset's raw layout
  names them (``<case>_<XXXX><ending>`` per channel, or one ``<case><ending>`` file per
  case in the Decathlon layout): each case is read, cropped, normalised and resampled by
  the plan's rules, segmented, brought back to its grid, and written as
  ``<case><ending>`` (nnU-Net's naming) with the header of its first channel's file: in the
  input's format (:func:`label_map_ending`), a NIfTI input as the training data's NIfTI ending.
  Files of the folder named otherwise are listed in one log line and left alone. A case
  that lacks a channel file, has more than the model takes (unless ``force``), holds its
  channels otherwise than the model takes them, or
  is a 2D image for a model trained on 3D volumes (or the reverse) is skipped like an
  unreadable one: nothing is written for it, and the command ends with an error.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from mper.data import image_files
from mper.data.files import visible_files
from mper.data.image_files import NATURAL_ENDINGS, NIFTI_ENDINGS, detached_data_files, image_ending, is_natural_image
from mper.data.imported import load_original_label, load_scan_volume
from mper.data.raw_scans import (
    CHANNEL_FILE,
    DATASET_JSON,
    IMAGES_TEST,
    IMAGES_TRAIN,
    NNUNET,
    TEST,
    RawCase,
    case_name,
    channel_file_name,
    ending_in_other_case,
    read_image,
    scan_shape,
    scan_spacing,
)
from mper.data.scan_plan import ScanPlan
from mper.data.scan_preprocess import CaseGeometry, preprocess_scan, restore_labels
from mper.datasets import get_dataset
from mper.errors import ConfigError, DataFormatError, MissingFileError, UserError

from .figures import FigureSlice, figure_slice
from .inference import predict_probabilities
from .predict import label_image, save_label_map, skipped_error, warn_if_blank
from .protocol import ground_truth_classes, postprocess_labels, score_case

log = logging.getLogger(__name__)

#: The unit of the distances scored on imported datasets.
DISTANCE_UNIT = "mm"


def distance_unit(dataset: str) -> str:
    """The unit of ``dataset``'s 95HD and ASD: :data:`DISTANCE_UNIT` for imported scans
    (scored on each scan's grid), voxels for the built-in datasets (as the paper's tables)."""
    return DISTANCE_UNIT if get_dataset(dataset).scans is not None else "voxels"


def _plan(dataset: str) -> ScanPlan:
    plan = get_dataset(dataset).scans
    if plan is None:
        raise ConfigError(f"{dataset} was not imported from raw scans: it has no plan")
    return plan


def scan_labels(
    net: nn.Module,
    image: np.ndarray,
    geometry: CaseGeometry,
    dataset: str,
    num_classes: int,
    postprocess: str = "none",
    ops: str = "mper",
    **inference: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """(labels on the scan's grid, labels on the preprocessed grid) of a preprocessed
    ``image`` (channels first), both post-processed (with the ops of the setting ``ops``); ``inference`` goes to
    :func:`~mper.eval.inference.predict_probabilities` (``patch_size``, ``stride``, ``device``)."""
    probabilities = predict_probabilities(net, image, dataset, num_classes, **inference)
    restored = restore_labels(probabilities, geometry, _plan(dataset).rules.spacing)
    resampled = probabilities.argmax(axis=0).astype(np.uint8)
    return (
        postprocess_labels(restored, postprocess, num_classes, ops),
        postprocess_labels(resampled, postprocess, num_classes, ops),
    )


def score_scan_case(
    net: nn.Module,
    dataset: str,
    data_root: str | Path,
    case: str,
    num_classes: int,
    postprocess: str = "none",
    empty_prediction: str = "undefined",
    ops: str = "mper",
    **inference: Any,
) -> tuple[dict[int, dict[str, float]], FigureSlice, set[int]]:
    """The scores of ``case`` on its scan's grid against its raw label (distances in mm),
    the figure slice of the network's view (first channel, preprocessed grid) and the
    classes the label holds."""
    image, label = load_scan_volume(data_root, case)
    original, geometry = load_original_label(data_root, case)
    restored, resampled = scan_labels(net, image, geometry, dataset, num_classes, postprocess, ops, **inference)
    scores = score_case(restored, original, num_classes, empty_prediction, spacing=geometry.spacing)
    return scores, figure_slice(image[0], label, resampled, dataset), ground_truth_classes(original)


def _case_of(path: Path, plan: ScanPlan) -> tuple[str, str, bool] | None:
    """The case ``path`` is an input file of, named as the plan's raw layout names them, its
    ending (any mper reads, whatever the ending of the training data), and whether it is a
    channel file beyond those the model takes (nnU-Net: ``<case>_<XXXX>`` with XXXX at
    least the model's channel count); ``None`` for any other file."""
    ending = image_ending(path.name)
    stem = case_name(path.name, ending) if ending is not None else None
    if ending is None or stem is None:
        return None
    if plan.layout != NNUNET:
        return stem, ending, False
    match = CHANNEL_FILE.fullmatch(stem)
    return (match["case"], ending, int(match["channel"]) >= len(plan.channels)) if match else None


def _case_files(folder: Path, case: str, plan: ScanPlan, ending: str) -> tuple[Path, ...]:
    """The files the model reads for ``case``: one per channel (nnU-Net), or one in all. Of
    2D natural images, whose colours are channels (an RGB file holds three), the case's files
    from ``0000`` on that are there (at least ``0000``); :func:`read_image` counts their channels."""
    if plan.layout != NNUNET:
        return (folder / f"{case}{ending}",)
    files = [folder / channel_file_name(case, channel, ending) for channel in range(len(plan.channels))]
    if ending in NATURAL_ENDINGS:
        present = [path.is_file() for path in files]
        files = files[: max(1, present.index(False) if False in present else len(files))]
    return tuple(files)


def label_map_ending(input_ending: str, plan: ScanPlan) -> str:
    """The ending of the label map predicted for an input of ``input_ending``: its own format
    (:func:`mper.data.image_files.label_map_ending`: ``.mha`` for a ``.mhd`` header), and for a
    NIfTI input of a model trained on NIfTI the training data's ending (nnU-Net's naming)."""
    if input_ending in NIFTI_ENDINGS and plan.file_ending in NIFTI_ENDINGS:
        return plan.file_ending
    return image_files.label_map_ending(input_ending)


def _input_naming(plan: ScanPlan) -> str:
    if plan.layout != NNUNET:
        return f"<case>{plan.file_ending}"
    return " ... ".join(
        channel_file_name("<case>", channel, plan.file_ending) for channel in sorted({0, len(plan.channels) - 1})
    )


def capitals_hint(names: list[str]) -> str:
    """Advice for the ``names`` ending in an ending mper reads written in other letter case
    (``.NII.GZ``, ``.PNG``), which are matched as written; "" when none does."""
    capitals = [name for name in names if ending_in_other_case(name)]
    lowercase = sorted({str(ending_in_other_case(name)) for name in capitals}, key=len, reverse=True)
    return (
        f"rename the endings of {', '.join(sorted(capitals))} to lowercase ({' or '.join(lowercase)})"
        if capitals
        else ""
    )


def _input_cases(input_path: Path, plan: ScanPlan) -> tuple[dict[str, tuple[Path, ...]], dict[str, list[Path]]]:
    """The raw cases under ``input_path`` (a folder, or one file of a case), each with the
    files the model reads (some may be missing: :func:`predict_scan` refuses that case), and
    the channel files of those cases beyond the model's channels (:func:`_check_no_surplus`).
    Other files are listed in one log line and left alone."""
    if input_path.is_file():
        folder = input_path.parent
        found = _case_of(input_path, plan)
        if found is None:
            raise DataFormatError(
                f"{input_path} is not named as the model's input, {_input_naming(plan)} (or ending in another "
                f"ending mper reads: {', '.join(e for e in image_files.IMAGE_ENDINGS if e != plan.file_ending)}); "
                f"{capitals_hint([input_path.name]) or 'rename it'}"
            )
        case, ending, beyond = found
        if beyond:
            raise DataFormatError(
                f"{input_path} is a channel file of case {case} beyond the {len(plan.channels)} the model takes "
                f"({', '.join(plan.channels)}); give the case's first file, {channel_file_name(case, 0, ending)}"
            )
        # the case's other files: its channels, and any the model does not take
        siblings = ((path, _case_of(path, plan)) for path in visible_files(folder))
        candidates = [path for path, of in siblings if of is not None and of[0] == case]
    elif input_path.is_dir():
        folder = input_path
        candidates = visible_files(folder)
    else:
        raise MissingFileError(f"no such file or directory: {input_path}")
    cases: dict[str, tuple[Path, ...]] = {}
    surplus: dict[str, list[Path]] = {}
    ignored = []
    detached = detached_data_files(candidates)  # the .raw beside a .mhd: read with it
    for path in (candidate for candidate in candidates if candidate not in detached):
        found = _case_of(path, plan)
        if found is None:
            ignored.append(path.name)
            continue
        case, ending, beyond = found
        if beyond:
            surplus.setdefault(case, []).append(path)
            continue
        files = cases.setdefault(case, _case_files(folder, case, plan, ending))
        first_ending = image_ending(files[0].name)
        if first_ending != ending:  # an earlier file of the case has another ending
            twin = path.with_name(f"{path.name[: -len(ending)]}{first_ending}")
            if twin.is_file():
                problem = f"is there twice, as {twin.name} and {path.name}; keep one of them"
            else:
                other = next(file for file in files if file.is_file())
                endings = " and ".join(sorted((str(first_ending), ending)))
                problem = f"mixes the endings {endings} ({other.name}, {path.name}); give all its files one of them"
            raise DataFormatError(f"{folder}: case {case} {problem}")
    ignored += [path.name for case, paths in surplus.items() if case not in cases for path in paths]
    if ignored:
        log.warning(
            "ignored %d file(s) of %s not named as the model's input, %s: %s%s",
            len(ignored),
            folder,
            _input_naming(plan),
            ", ".join(sorted(ignored)),
            "; " + hint if (hint := capitals_hint(ignored)) else "",
        )
    if not cases:
        if (input_path / DATASET_JSON).is_file():
            folders = [folder for folder in (IMAGES_TEST, IMAGES_TRAIN) if (input_path / folder).is_dir()]
            example = f", e.g. --input {input_path / folders[0]}" if folders else ""
            raise MissingFileError(
                f"no scans in {input_path}, a raw dataset's folder: give the folder of its scans{example}"
            )
        raise MissingFileError(f"no scans in {input_path}; expected files named {_input_naming(plan)}")
    return cases, {case: paths for case, paths in surplus.items() if case in cases}


def _check_no_surplus(name: str, surplus: list[Path], plan: ScanPlan, force: bool) -> None:
    """Refuse case ``name`` whose channel files go beyond the model's (``surplus``): a scan
    of more channels than the model was trained on, which the model would segment from
    some of them, silently worse; with ``force``, warn and segment it so."""
    if not surplus:
        return
    taken = f"the {len(plan.channels)} the model takes ({', '.join(plan.channels)})"
    problem = f"case {name} has {len(surplus)} channel file(s) beyond {taken}: {', '.join(p.name for p in surplus)}"
    if force:
        log.warning("%s; segmenting it from the model's channels (--force)", problem)
        return
    raise DataFormatError(
        f"{surplus[0].parent}: {problem}; segment it with a model trained on all its channels, or pass --force to "
        "segment it from the model's channels alone"
    )


def _check_input_files(files: tuple[Path, ...], name: str, plan: ScanPlan) -> None:
    """Every channel file of case ``name`` is there; a single file holds every channel."""
    for channel, path in enumerate(files):
        if not path.is_file():
            raise MissingFileError(
                f"{path} not found: case {name} lacks channel {channel} ({plan.channels[channel]}) of the "
                f"{len(plan.channels)} the model takes ({', '.join(plan.channels)}); add the file"
            )
    if plan.layout == NNUNET:
        for path in files:
            # a natural image's colours are channels: read_image counts them
            shape = None if is_natural_image(path) else scan_shape(path)
            if shape is not None and any(size != 1 for size in shape[3:]):
                naming = _input_naming(plan)
                raise DataFormatError(
                    f"{path}: shape {shape}, more than one 3D volume, but the model takes one per channel file "
                    f"({naming}: {', '.join(plan.channels)}); write each channel to a file of its own"
                )
    if len(files) == 1 < len(plan.channels) and not is_natural_image(files[0]):
        shape = scan_shape(files[0])
        if shape is not None and (len(shape) != 4 or shape[3] != len(plan.channels)):
            raise DataFormatError(
                f"{files[0]}: shape {shape}, but the model takes {len(plan.channels)} channels "
                f"({', '.join(plan.channels)}) in one 4D image (x, y, z, {len(plan.channels)}); "
                "stack the case's channels along a fourth axis in that order"
            )


def _check_dimensionality(path: Path, shape: tuple[int, ...], spatial: tuple[int, ...], plan: ScanPlan) -> None:
    """Refuse a 2D image (one slice) for a model trained on 3D volumes, unless it is a 2D
    network's slice across its slice axis, and a 3D volume for a model trained on 2D images:
    the network would segment what it never saw, silently wrong."""
    trained_on_images = 1 in plan.median_shape
    single_slice = 1 in spatial
    slice_of_volume = single_slice and plan.dims == "2d" and spatial[plan.slice_axis] == 1
    if single_slice == trained_on_images or (slice_of_volume and not trained_on_images):
        return
    network = "a 3D V-Net" if plan.dims == "3d" else f"a 2D U-Net on slices across axis {plan.slice_axis}"
    trained = "2D images" if trained_on_images else "3D volumes"
    if single_slice:
        fix = "give the whole 3D volume" + (
            f", or its slices across axis {plan.slice_axis}" if plan.dims == "2d" else ""
        )
    else:
        fix = "give its slices as 2D images, one file each"
    raise DataFormatError(
        f"{path}: a {'2D image' if single_slice else '3D volume'} of shape {shape}, but the model is {network} "
        f"trained on {trained} (median shape {list(plan.median_shape)} after import); {fix}"
    )


def predict_scan(
    net: nn.Module,
    files: tuple[Path, ...],
    name: str,
    dataset: str,
    out_path: Path,
    num_classes: int,
    postprocess: str = "none",
    ops: str = "mper",
    **inference: Any,
) -> Path:
    """Segment the raw case of ``files`` and write its label map to ``out_path``; a case
    that lacks a channel file or whose dimensionality differs from the training images'
    is refused with :class:`~mper.errors.UserError`, and nothing is written for it."""
    plan = _plan(dataset)
    _check_input_files(files, name, plan)
    expected = f"the model's channels: {', '.join(plan.channels)}"
    image, first = read_image(RawCase(name, files, None, TEST), len(plan.channels), expected)
    _check_dimensionality(files[0], first.shape, image.shape[1:], plan)
    for index, channel in enumerate(image):  # a file per channel, or one file of them all (Decathlon)
        warn_if_blank(files[index] if len(files) == len(image) else Path(f"{files[0]} (channel {index})"), channel)
    spacing = scan_spacing(first, files[0])
    preprocessed, _, geometry = preprocess_scan(image, None, spacing, first.affine, plan.rules)
    labels, _ = scan_labels(net, preprocessed, geometry, dataset, num_classes, postprocess, ops, **inference)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # a 2D image was read as one slice: the label map takes the input's own array shape
    return save_label_map(label_image(labels.reshape(first.shape[:3]), first), out_path)


def predict_scans(
    net: nn.Module,
    input_path: str | Path,
    dataset: str,
    out_dir: str | Path,
    num_classes: int,
    postprocess: str = "none",
    ops: str = "mper",
    force: bool = False,
    **inference: Any,
) -> list[Path]:
    """Segment every raw case under ``input_path`` (see the module docstring); returns the
    written label maps. A case that cannot be read or is refused is logged and skipped; a
    :class:`~mper.errors.UserError` then says how many failed once the rest is done.
    ``force`` segments a case with more channel files than the model takes from the
    model's channels, with a warning."""
    plan = _plan(dataset)
    cases, surplus = _input_cases(Path(input_path), plan)
    written: list[Path] = []
    failed: list[str] = []
    for index, (name, files) in enumerate(cases.items(), start=1):
        out_path = Path(out_dir) / f"{name}{label_map_ending(str(image_ending(files[0].name)), plan)}"
        try:
            _check_no_surplus(name, surplus.get(name, []), plan, force)
            written.append(
                predict_scan(net, files, name, dataset, out_path, num_classes, postprocess, ops, **inference)
            )
        except UserError as error:
            failed.append(name)
            log.error("[%d/%d] skipped: %s", index, len(cases), error)
            continue
        log.info("[%d/%d] %s -> %s", index, len(cases), files[0], out_path)
    if failed:
        raise skipped_error(failed, len(cases), "cases", written, out_dir)
    return written
