"""Score a folder of predicted label maps against a folder of ground-truth label maps, as
nnU-Net's ``nnUNetv2_evaluate_folder`` does: no checkpoint, no inference.

* Pairs: a label ``<case><ending>`` (any ending mper reads,
  :data:`~mper.data.image_files.IMAGE_ENDINGS`: NIfTI, NRRD, MetaImage, ..., PNG) pairs with
  the prediction ``<case>`` of any such ending, or ``<case>_pred.nii.gz`` (what ``mper-predict``
  writes for an LA or ACDC model). In a labels folder holding ``<case>_gt.nii.gz`` files (the ACDC
  download's naming, beside the images) those alone are the labels, of ``<case>``. A
  label without a prediction is refused before anything is scored (left out, it would
  silently raise the mean); predictions without a label are named in one warning line
  and left out, as are files of other endings. Hidden files are ignored.
* Classes: from a ``dataset.json`` (nnU-Net v2 or Decathlon ``labels``, read by
  :func:`mper.data.raw_scans.read_class_names`): the one given, else the one beside the
  labels folder (nnU-Net's raw layout: ``labelsTs/`` next to ``dataset.json``); without
  one, the classes are 1 .. the largest value of any label or prediction, named
  ``class 1``, ... . A value outside the declared classes is refused, naming the file. A
  class no label and no prediction holds would score as a right answer in every case: below
  the largest value found (a mask of 0 and 255) it is refused, a declared one named in a
  warning.
* Every pair is read and checked before the first is scored: one 3D map of whole values
  each (:func:`mper.data.raw_scans.read_label_map`), the prediction on its label's voxel
  grid (:func:`mper.data.raw_scans.check_geometry`).
* Scores: :func:`mper.eval.protocol.score_case` (``empty_prediction``, a class absent from
  both a right answer), distances in millimetres from the label's voxel spacing, summarised
  and written as ``mper-eval`` writes them (:mod:`mper.eval.report`), with ``split``
  ``"folder"`` and both folders in ``metrics.json``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from mper.data.convert import ACDC_LABEL_MARK
from mper.data.files import listed_names, visible_files
from mper.data.image_files import IMAGE_ENDINGS, detached_data_files, image_ending
from mper.data.raw_scans import (
    DATASET_JSON,
    case_name,
    check_declared,
    check_geometry,
    read_class_names,
    read_label_map,
    scan_spacing,
)
from mper.errors import DataFormatError, MissingFileError

from .predict import OUTPUT_SUFFIX
from .protocol import check_protocol, score_case
from .report import markdown_table, summarize, write_report
from .scans import DISTANCE_UNIT, capitals_hint

log = logging.getLogger(__name__)

#: What ``metrics.json`` records as the split of a folder's evaluation.
FOLDER_SPLIT = "folder"
#: How a prediction may be named for the label ``<case><ending>``.
PREDICTION_NAMING = f"<case><ending>, an ending of {', '.join(IMAGE_ENDINGS)}, or <case>{OUTPUT_SUFFIX}"
#: How label maps may be named, for messages.
LABEL_NAMING = f"<case><ending>, an ending of {', '.join(IMAGE_ENDINGS)}"
#: How a class predicted nowhere scores unless told (``eval.empty_prediction`` of the presets'
#: published protocol).
DEFAULT_EMPTY_PREDICTION = "zero"
#: The option of ``mper-eval`` that chooses the rule, as the report names it.
EMPTY_PREDICTION_OPTION = "--empty-prediction"
#: What the classes are named where no ``dataset.json`` names them.
UNDECLARED = "the values found"


@dataclass(frozen=True)
class Pair:
    """One case: its ground-truth ``label`` and its ``prediction``."""

    case: str
    label: Path
    prediction: Path


def _image_files(folder: Path, role: str) -> dict[str, Path]:
    """``{name without its ending: file}`` of the visible files of ``folder`` that end with an
    ending mper reads; other files (but the data files of detached headers, the ``.raw`` of a
    ``.mhd``) are named in one warning line, a case there twice (two endings) refused."""
    if folder.is_file():
        raise MissingFileError(f"{role} folder {folder} is a file; give the folder that holds the {role}")
    if not folder.is_dir():
        raise MissingFileError(f"{role} folder {folder} not found; give the folder of the {role}")
    found: dict[str, Path] = {}
    others = []
    files = visible_files(folder)
    detached = detached_data_files(files)
    for path in (file for file in files if file not in detached):
        ending = image_ending(path.name)
        stem = case_name(path.name, ending) if ending is not None else None
        if stem is None:
            others.append(path.name)
        elif stem in found:
            raise DataFormatError(f"{folder}: {stem} is there twice, as {found[stem].name} and {path.name}; keep one")
        else:
            found[stem] = path
    if others:
        hint = capitals_hint(others)  # .NII.GZ: NIfTI, but endings are matched as written
        log.warning(
            "%s: ignored %d file(s) that are not image files mper reads%s: %s%s",
            folder,
            len(others),
            f" (named {LABEL_NAMING})" if hint else "",
            listed_names(others),
            f"; {hint}" if hint else "",
        )
    return found


def _label_files(labels: Path) -> dict[str, Path]:
    """``{case: label map}`` of the folder ``labels``. Where it holds label maps named as
    the ACDC download names them, ``<case>_gt.nii.gz``, beside their images, those alone
    are the labels, of the case ``<case>``; the other files are named in one line."""
    files = _image_files(labels, "labels")
    marked = {stem[: -len(ACDC_LABEL_MARK)]: path for stem, path in files.items() if stem.endswith(ACDC_LABEL_MARK)}
    if marked:
        others = sorted(path.name for stem, path in files.items() if not stem.endswith(ACDC_LABEL_MARK))
        if others:
            log.warning(
                "%s: took the %d label map(s) named <case>%s; left out %d other file(s): %s",
                labels,
                len(marked),
                ACDC_LABEL_MARK,
                len(others),
                listed_names(others),
            )
        return marked
    if not files:
        inside = sorted(
            folder.name
            for folder in labels.iterdir()
            if folder.is_dir()
            and any(path.is_file() and image_ending(path.name) is not None for path in folder.iterdir())
        )
        where = (
            f" (only its folder(s) {listed_names(inside)} do: give one folder that holds every label map, such "
            f"as an ACDC patient's folder, or copy the label maps into one)"
            if inside
            else ""
        )
        hint = capitals_hint([path.name for path in labels.iterdir() if path.is_file()])
        raise MissingFileError(
            f"no label maps in {labels}{where}; expected image files {LABEL_NAMING}" + (f": {hint}" if hint else "")
        )
    return files


def pair_files(predictions: str | Path, labels: str | Path) -> list[Pair]:
    """The pairs of the two folders, by case name, in case order (see the module docstring).

    Raises:
        MissingFileError: a folder missing, no label at all, or a label without its prediction.
        DataFormatError: a case there twice in a folder (both endings, or both namings).
    """
    predictions, labels = Path(predictions), Path(labels)
    if predictions.resolve() == labels.resolve():
        raise DataFormatError(f"--predictions and --labels are the same folder, {labels}; give two folders")
    label_files = _label_files(labels)
    paired: dict[str, Path] = {}
    unpaired = []
    for stem, path in _image_files(predictions, "predictions").items():
        case = stem
        if case not in label_files and path.name.endswith(OUTPUT_SUFFIX):
            case = path.name[: -len(OUTPUT_SUFFIX)]
        if case not in label_files:
            unpaired.append(path.name)
        elif case in paired:
            raise DataFormatError(
                f"{predictions}: case {case} has two predictions, {paired[case].name} and {path.name}; keep one"
            )
        else:
            paired[case] = path
    missing = [case for case in label_files if case not in paired]
    if missing:
        raise MissingFileError(
            f"{len(missing)} of {len(label_files)} label(s) in {labels} have no prediction in {predictions} "
            f"(named {PREDICTION_NAMING}): {listed_names(missing)}; predict them or move their labels aside, "
            "since a case left out would change the mean"
        )
    if unpaired:
        log.warning(
            "%s: left out %d prediction(s) without a label in %s: %s",
            predictions,
            len(unpaired),
            labels,
            listed_names(unpaired),
        )
    return [Pair(case, label_files[case], paired[case]) for case in sorted(label_files)]


def folder_class_names(
    labels: str | Path, dataset_json: str | Path | None = None
) -> tuple[tuple[str, ...] | None, str]:
    """(the class names by value, where they come from): ``dataset_json``, else the
    ``dataset.json`` beside ``labels``; ``(None, UNDECLARED)`` without either."""
    beside = Path(labels).resolve().parent / DATASET_JSON
    source = Path(dataset_json) if dataset_json is not None else beside if beside.is_file() else None
    if source is None:
        return None, UNDECLARED
    try:
        return read_class_names(source), str(source)
    except DataFormatError as refused:  # its advice is the import's: say what scoring needs
        how = "given as --dataset-json" if dataset_json is not None else f"found beside {labels}"
        raise DataFormatError(
            f"{refused} ({source}, {how}, names the classes to score: give --dataset-json FILE whose labels "
            'name one class per value, e.g. {"background": 0, "liver": 1})'
        ) from None


def _read_pair(pair: Pair) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """(prediction, label, the label's voxel spacing in mm), the prediction on the label's grid."""
    label, label_scan = read_label_map(pair.label)
    prediction, prediction_scan = read_label_map(pair.prediction, "prediction")
    check_geometry(
        pair.prediction,
        prediction.shape,
        prediction_scan.affine,
        pair.label,
        label.shape,
        label_scan.affine,
        together=f"a prediction and its label ({pair.label})",
        scans=(prediction_scan, label_scan),
    )
    return prediction, label, scan_spacing(label_scan, pair.label)


def _class_range(classes: list[int]) -> str:
    """``class 3`` or ``classes 2 .. 254`` (consecutive) or ``classes 2, 5``."""
    if len(classes) == 1:
        return f"class {classes[0]}"
    if classes[-1] - classes[0] == len(classes) - 1 and len(classes) > 2:
        return f"classes {classes[0]} .. {classes[-1]}"
    return f"classes {', '.join(map(str, classes))}"


def _checked_classes(
    pairs: list[Pair], class_names: tuple[str, ...] | None, declared_in: str, predictions: Path, labels: Path
) -> tuple[int, set[int]]:
    """Read and check every pair (:func:`_read_pair`, the declared classes): the number of
    classes, background included, that the scores count, and the classes the labels hold. A class that no label and no
    prediction holds would score as a right answer in every case and raise the means:
    without ``dataset.json`` (a gap below the largest value found, such as the 1 .. 254 of
    a mask written as 0 and 255) it is refused; a declared one is named in a warning."""
    largest, holder, held = 1, pairs[0].label, {0, 1}
    found: set[int] = set()
    in_labels: set[int] = set()
    for pair in tqdm(pairs, desc="checking", unit="case", leave=False):
        prediction, label, _ = _read_pair(pair)
        for path, label_map in ((pair.label, label), (pair.prediction, prediction)):
            values = np.unique(label_map)
            if class_names is not None:
                check_declared(path, values, class_names, declared_in)
            elif values[0] < 0:
                raise DataFormatError(f"{path}: label value {values[0]:g} is negative; write class values 0, 1, ...")
            values_found = {int(value) for value in values}
            found |= values_found
            if path == pair.label:
                in_labels |= values_found
            if max(values_found) > largest:
                largest, holder, held = max(values_found), path, values_found
    count = len(class_names) if class_names is not None else largest + 1
    if class_names is None and found <= {0}:
        raise DataFormatError(
            f"every label of {labels} and prediction of {predictions} holds background (0) alone: no class to score; "
            "name the classes with --dataset-json FILE"
        )
    nowhere = [value for value in range(1, count) if value not in found]
    if nowhere and class_names is None:
        mask = f" (a mask of 0 and {largest}: 0 and 1)" if held <= {0, largest} else ""
        raise DataFormatError(
            f"{_class_range(nowhere)} of the values 1 .. {largest} found (up to {largest} in {holder}) "
            f"{'is' if len(nowhere) == 1 else 'are'} in no label of {labels} and no prediction of {predictions}: "
            f"{'it' if len(nowhere) == 1 else 'each'} would score Dice 1 in every case and raise the mean; write "
            f"class values 0, 1, ...{mask}, or name the classes with --dataset-json FILE"
        )
    if nowhere and class_names is not None:
        log.warning(
            "%s (%s) that %s declares %s in no label of %s and no prediction of %s: scored Dice 1 and distances 0 "
            "in every case (a right answer), which raises the means",
            _class_range(nowhere),
            ", ".join(class_names[value] for value in nowhere),
            declared_in,
            "is" if len(nowhere) == 1 else "are",
            labels,
            predictions,
        )
    return count, in_labels


def evaluate_folders(
    predictions: str | Path,
    labels: str | Path,
    out_dir: str | Path | None = None,
    dataset_json: str | Path | None = None,
    empty_prediction: str = DEFAULT_EMPTY_PREDICTION,
) -> dict[str, Any]:
    """Score the predictions of ``predictions`` against the labels of ``labels`` (see the
    module docstring); with ``out_dir``, write ``metrics.md`` and ``metrics.json`` there.
    Every refusal (:class:`~mper.errors.UserError`) comes before the first case is scored.
    Returns ``{"per_case", "summary", "markdown"}``."""
    check_protocol(empty_prediction=empty_prediction)
    pairs = pair_files(predictions, labels)
    class_names, declared_in = folder_class_names(labels, dataset_json)
    num_classes, in_ground_truth = _checked_classes(pairs, class_names, declared_in, Path(predictions), Path(labels))
    per_case = {}
    for pair in tqdm(pairs, desc="evaluating", unit="case"):
        prediction, label, spacing = _read_pair(pair)
        per_case[pair.case] = score_case(prediction, label, num_classes, empty_prediction, spacing=spacing)
    summary = summarize(per_case, in_ground_truth)
    method = Path(predictions).resolve().name
    markdown = markdown_table(
        summary, method, "-", "-", class_names, DISTANCE_UNIT, FOLDER_SPLIT, EMPTY_PREDICTION_OPTION
    )
    if out_dir is not None:
        extra = {
            "split": FOLDER_SPLIT,
            "predictions": str(Path(predictions).resolve()),
            "labels": str(Path(labels).resolve()),
            "classes_from": declared_in,
            "empty_prediction": empty_prediction,
        }
        table = {"method": method, "labeled": "-", "unlabeled": "-"}
        write_report(out_dir, per_case, summary, markdown, table=table, extra=extra)
    return {"per_case": per_case, "summary": summary, "markdown": markdown}
