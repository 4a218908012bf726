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
  ``<case><ending>`` (nnU-Net's naming) with the header of its first channel's file.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from torch import nn

from mper.data.imported import load_original_label, load_scan_volume
from mper.data.raw_scans import TEST, RawCase, group_input_files, read_image, scan_spacing
from mper.data.scan_plan import ScanPlan
from mper.data.scan_preprocess import CaseGeometry, preprocess_scan, restore_labels
from mper.datasets import get_dataset
from mper.errors import ConfigError, MissingFileError, UserError

from .figures import FigureSlice, figure_slice
from .inference import predict_probabilities
from .predict import label_image
from .protocol import postprocess_labels, score_case

log = logging.getLogger(__name__)

#: The unit of the distances scored on imported datasets.
DISTANCE_UNIT = "mm"


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
) -> tuple[dict[int, dict[str, float]], FigureSlice]:
    """The scores of ``case`` on its scan's grid against its raw label (distances in mm), and
    the figure slice of the network's view (first channel, preprocessed grid)."""
    image, label = load_scan_volume(data_root, case)
    original, geometry = load_original_label(data_root, case)
    restored, resampled = scan_labels(net, image, geometry, dataset, num_classes, postprocess, ops, **inference)
    scores = score_case(restored, original, num_classes, empty_prediction, spacing=geometry.spacing)
    return scores, figure_slice(image[0], label, resampled, dataset)


def _input_cases(input_path: Path, plan: ScanPlan) -> dict[str, tuple[Path, ...]]:
    """The raw cases under ``input_path`` (a folder, or one file of a case)."""
    if input_path.is_file():
        files = [input_path]
    elif input_path.is_dir():
        files = sorted(
            path
            for path in input_path.iterdir()
            if path.is_file() and path.name.endswith(plan.file_ending) and not path.name.startswith(".")
        )
    else:
        raise MissingFileError(f"no such file or directory: {input_path}")
    cases = group_input_files(files, plan.layout, len(plan.channels), plan.file_ending) if files else {}
    if not cases:
        naming = "<case>_0000" if plan.layout == "nnunet" else "<case>"
        raise MissingFileError(f"no scans under {input_path}; expected files named {naming}{plan.file_ending}")
    return cases


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
    """Segment the raw case of ``files`` and write its label map to ``out_path``."""
    plan = _plan(dataset)
    image, first = read_image(RawCase(name, files, None, TEST), len(plan.channels))
    spacing = scan_spacing(first, files[0])
    preprocessed, _, geometry = preprocess_scan(image, None, spacing, first.affine, plan.rules)
    labels, _ = scan_labels(net, preprocessed, geometry, dataset, num_classes, postprocess, ops, **inference)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # a 2D image was read as one slice: the label map takes the input's own array shape
    nib.save(label_image(labels.reshape(first.shape[:3]), first), out_path)
    return out_path


def predict_scans(
    net: nn.Module,
    input_path: str | Path,
    dataset: str,
    out_dir: str | Path,
    num_classes: int,
    postprocess: str = "none",
    ops: str = "mper",
    **inference: Any,
) -> list[Path]:
    """Segment every raw case under ``input_path`` (see the module docstring); returns the
    written label maps. A case that cannot be read is logged and skipped; a
    :class:`~mper.errors.UserError` then says how many failed once the rest is done."""
    plan = _plan(dataset)
    cases = _input_cases(Path(input_path), plan)
    written: list[Path] = []
    failed: list[str] = []
    for index, (name, files) in enumerate(cases.items(), start=1):
        out_path = Path(out_dir) / f"{name}{plan.file_ending}"
        try:
            written.append(
                predict_scan(net, files, name, dataset, out_path, num_classes, postprocess, ops, **inference)
            )
        except UserError as error:
            failed.append(name)
            log.error("[%d/%d] skipped: %s", index, len(cases), error)
            continue
        log.info("[%d/%d] %s -> %s", index, len(cases), files[0], out_path)
    if failed:
        raise UserError(
            f"{len(failed)} of {len(cases)} cases could not be segmented (reasons above), first {failed[0]}; "
            f"the other {len(written)} label maps are in {out_dir}"
        )
    return written
