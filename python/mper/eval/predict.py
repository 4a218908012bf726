"""Segment image files and write NIfTI label maps.

Inputs:

* NIfTI (``.nii``, ``.nii.gz``): a raw 3D scan. Its intensities are normalised as in
  training (:func:`mper.data.preprocess.normalize_intensity`); it is neither resampled
  nor reoriented. LA scans are segmented as stored, ``(H, W, D)``; ACDC scans are stored
  ``(H, W, S)`` and segmented slice by slice along the last axis. The label map keeps
  the input's header: affine, qform/sform codes, voxel sizes and units.
* HDF5 (``.h5``): a preprocessed volume from the public releases (docs/method.md,
  "Data layouts"), dataset ``image``, already normalised and laid out ``(H, W, D)``
  (LA, z-scored) or ``(S, H, W)`` (ACDC, scaled to ``[0, 1]``). It has no geometry, so
  the output's affine is the identity.

Each input is checked against the model before it is segmented: a 3D volume, every
intensity finite, and for HDF5 the intensity scaling of the model's dataset. The output
is named after the case, ``<case>_pred.nii.gz`` (the file name without its suffix, or
for an LA case file ``<case>/mri_norm2.h5`` the case folder's name): a uint8 label map
with the same array shape and axis order as the input, post-processed as ``mper-eval``
scores it (``eval.postprocess``, e.g. LA's largest connected component).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from torch import nn

from ..data.files import LA_CASE_FILE, check_finite, read_h5_case
from ..data.layout import DATASET_NAMES
from ..data.preprocess import normalize_intensity
from ..errors import ConfigError, DataFormatError, MissingFileError, UserError
from .datasets import check_dataset
from .protocol import segment_volume

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
H5_SUFFIXES = (".h5",)
SUPPORTED_SUFFIXES = NIFTI_SUFFIXES + H5_SUFFIXES
OUTPUT_SUFFIX = "_pred.nii.gz"
#: Slack on the [0, 1] range of ACDC volumes (float rounding of min-max scaling).
_RANGE_SLACK = 1e-3


def _matching_suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((suffix for suffix in SUPPORTED_SUFFIXES if name.endswith(suffix)), None)


def case_location(path: Path) -> tuple[Path, str]:
    """(folder that holds the case, case name) of an image file: ``dir/scan.nii.gz``
    is case ``scan`` in ``dir``; an LA case file ``dir/case/mri_norm2.h5`` is case
    ``case`` in ``dir``."""
    if path.name == LA_CASE_FILE:
        return path.parent.parent, path.parent.name
    return path.parent, path.name[: -len(_matching_suffix(path) or "")]


def _check_volume(path: Path, image: np.ndarray) -> None:
    if image.ndim != 3:
        raise DataFormatError(
            f"{path}: expected a 3D volume, got an array of shape {image.shape}; "
            "split 4D series into one 3D file per frame, and give whole volumes, not single slices"
        )
    check_finite(path, image)


def _load_nifti(path: Path, dataset: str) -> tuple[np.ndarray, nib.Nifti1Image]:
    """Normalised image in the network layout, and the scan (for its header)."""
    try:
        scan = nib.load(path)
        image = np.asarray(scan.dataobj, dtype=np.float32)
    except (ImageFileError, OSError, EOFError) as error:
        raise DataFormatError(f"{path}: not a readable NIfTI file ({error})") from error
    _check_volume(path, image)
    image = normalize_intensity(image, dataset)
    if dataset == "acdc":
        image = np.transpose(image, (2, 0, 1))
    return image, scan


def _check_h5_scaling(path: Path, image: np.ndarray, dataset: str) -> None:
    """A preprocessed LA volume is z-scored (it has negative values unless constant);
    an ACDC volume is scaled to [0, 1]. The other scaling means the other dataset."""
    low, high = float(image.min()), float(image.max())
    if dataset == "acdc" and (low < -_RANGE_SLACK or high > 1 + _RANGE_SLACK):
        expected, other = "intensities scaled to [0, 1]", "la"
    elif dataset == "la" and 0 <= low < high:
        expected, other = "z-scored intensities (mean 0, so some negative)", "acdc"
    else:
        return
    raise DataFormatError(
        f"{path}: intensities span [{low:.3g}, {high:.3g}], but the {DATASET_NAMES[dataset]} model "
        f"expects {expected}; is this a preprocessed {DATASET_NAMES[other]} volume? "
        "Give the raw scan as NIfTI to have it normalised"
    )


def _load_h5(path: Path, dataset: str) -> np.ndarray:
    """The ``image`` dataset as stored."""
    (image,) = read_h5_case(path, ("image",), layout="a preprocessed LA or ACDC volume")
    image = image.astype(np.float32, copy=False)
    _check_volume(path, image)
    _check_h5_scaling(path, image, dataset)
    return image


def _label_image(labels: np.ndarray, scan: nib.Nifti1Image | None) -> nib.Nifti1Image:
    """The label map as NIfTI with ``scan``'s header (geometry, codes, units), or with
    an identity affine when there is no scan."""
    labels = np.ascontiguousarray(labels, dtype=np.uint8)
    if scan is None:
        return nib.Nifti1Image(labels, np.eye(4))
    image = type(scan)(labels, scan.affine, scan.header.copy())
    header = image.header
    header.set_data_dtype(np.uint8)
    header.set_intent("label")
    header["cal_min"], header["cal_max"] = 0, 0
    image.set_qform(scan.get_qform(), int(scan.header["qform_code"]))
    image.set_sform(scan.get_sform(), int(scan.header["sform_code"]))
    return image


def _segment(net: nn.Module, path: Path, dataset: str, out_path: Path, device: str, **options: Any) -> Path:
    """Check, segment and write one file; ``options`` go to
    :func:`~mper.eval.protocol.segment_volume`."""
    suffix = _matching_suffix(path)
    if suffix is None:
        raise ConfigError(f"{path}: unsupported file type; expected one of {', '.join(SUPPORTED_SUFFIXES)}")
    scan = None
    if suffix in NIFTI_SUFFIXES:
        image, scan = _load_nifti(path, dataset)
    else:
        image = _load_h5(path, dataset)
    labels = segment_volume(net, image, dataset, device=device, **options)
    if dataset == "acdc" and scan is not None:
        labels = np.transpose(labels, (1, 2, 0))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(_label_image(labels, scan), out_path)
    return out_path


def predict_file(
    net: nn.Module,
    path: str | Path,
    dataset: str,
    out_dir: str | Path,
    device: str = "cpu",
    **options: Any,
) -> Path:
    """Segment one NIfTI or HDF5 file and write ``out_dir/<case>_pred.nii.gz``; returns its path.

    ``options`` go to :func:`~mper.eval.protocol.segment_volume`: ``postprocess`` (as
    ``mper-eval`` applies it), ``num_classes`` and the inference options (e.g. ``stride``).
    """
    path = Path(path)
    check_dataset(dataset)
    if not path.is_file():
        raise MissingFileError(f"no such image file: {path}")
    out_path = Path(out_dir) / f"{case_location(path)[1]}{OUTPUT_SUFFIX}"
    return _segment(net, path, dataset, out_path, device, **options)


def _folder_outputs(input_dir: Path, out_dir: Path) -> dict[Path, Path]:
    """Every supported file under ``input_dir`` and its output path, which keeps the
    case's sub-folder so that same-named cases do not overwrite each other."""
    files = sorted(p for p in input_dir.rglob("*") if p.is_file() and _matching_suffix(p))
    if not files:
        raise MissingFileError(
            f"no image files under {input_dir}; expected files ending in {', '.join(SUPPORTED_SUFFIXES)}"
        )
    outputs: dict[Path, Path] = {}
    for file in files:
        folder, case = case_location(file)
        relative = folder.relative_to(input_dir) if folder.is_relative_to(input_dir) else Path()
        outputs[file] = out_dir / relative / f"{case}{OUTPUT_SUFFIX}"
    by_output: dict[Path, Path] = {}
    for file, out_path in outputs.items():
        if out_path in by_output:
            raise ConfigError(f"{by_output[out_path]} and {file} are the same case; both would be written to {out_path}")
        by_output[out_path] = file
    return outputs


def predict_path(
    net: nn.Module,
    input_path: str | Path,
    dataset: str,
    out_dir: str | Path,
    device: str = "cpu",
    **options: Any,
) -> list[Path]:
    """Segment a file, or every supported file under a directory; returns the output paths.

    Each file is logged as it is done. In a directory, a file that cannot be segmented
    (unreadable, not a 3D volume, non-finite, the other dataset's scaling) is logged and
    skipped; after the rest is done a :class:`~mper.errors.UserError` says how many failed.
    """
    input_path = Path(input_path)
    if input_path.is_file():
        written = predict_file(net, input_path, dataset, out_dir, device, **options)
        log.info("[1/1] %s -> %s", input_path, written)
        return [written]
    if not input_path.is_dir():
        raise MissingFileError(f"no such file or directory: {input_path}")
    check_dataset(dataset)
    outputs = _folder_outputs(input_path, Path(out_dir))
    written, failed = [], []
    for index, (file, out_path) in enumerate(outputs.items(), start=1):
        try:
            written.append(_segment(net, file, dataset, out_path, device, **options))
        except UserError as error:
            failed.append(file)
            log.error("[%d/%d] skipped: %s", index, len(outputs), error)
            continue
        log.info("[%d/%d] %s -> %s", index, len(outputs), file, out_path)
    if failed:
        raise UserError(
            f"{len(failed)} of {len(outputs)} files could not be segmented (reasons above), "
            f"first {failed[0]}; the other {len(written)} label maps are in {out_dir}"
        )
    return written
