"""Segment image files and write NIfTI label maps.

Inputs:

* NIfTI (``.nii``, ``.nii.gz``): a raw 3D scan. Its intensities are normalised as in
  training (:func:`mper.data.preprocess.normalize_intensity`). LA scans are segmented
  as stored, ``(H, W, D)``; ACDC scans are stored ``(H, W, S)`` and segmented slice by
  slice along the last axis. The output keeps the input's affine.
* HDF5 (``.h5``): a preprocessed volume from the public releases (SPEC 6), dataset
  ``image``, already normalised and laid out ``(H, W, D)`` (LA) or ``(S, H, W)`` (ACDC).
  It has no geometry, so the output's affine is the identity.

The output is ``<out_dir>/<input name>_pred.nii.gz``: a uint8 label map with the same
array shape and axis order as the input.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from torch import nn

from ..data.files import read_h5_case
from ..data.preprocess import normalize_intensity
from .datasets import check_dataset
from .inference import predict_volume

NIFTI_SUFFIXES = (".nii.gz", ".nii")
H5_SUFFIXES = (".h5",)
SUPPORTED_SUFFIXES = NIFTI_SUFFIXES + H5_SUFFIXES
OUTPUT_SUFFIX = "_pred.nii.gz"


def _matching_suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((suffix for suffix in SUPPORTED_SUFFIXES if name.endswith(suffix)), None)


def _load_nifti(path: Path, dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """Normalised image in the network layout, and the file's affine."""
    try:
        scan = nib.load(path)
        image = np.asarray(scan.dataobj, dtype=np.float32)
    except (ImageFileError, OSError) as error:
        raise ValueError(f"{path}: not a readable NIfTI file ({error})") from error
    if image.ndim != 3:
        raise ValueError(
            f"{path}: expected a 3D volume, got an array of shape {image.shape}; "
            "split 4D series into one 3D file per frame first"
        )
    image = normalize_intensity(image, dataset)
    if dataset == "acdc":
        image = np.transpose(image, (2, 0, 1))
    return image, scan.affine


def _load_h5(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The ``image`` dataset as stored, and an identity affine."""
    (image,) = read_h5_case(path, ("image",), ndim=3, layout="a preprocessed LA or ACDC volume")
    return image.astype(np.float32, copy=False), np.eye(4)


def predict_file(
    net: nn.Module,
    path: str | Path,
    dataset: str,
    out_dir: str | Path,
    device: str = "cpu",
    **options: Any,
) -> Path:
    """Segment one NIfTI or HDF5 file and write its label map; returns the output path.

    ``options`` go to :func:`~mper.eval.inference.predict_volume` (e.g. ``stride``).
    """
    path = Path(path)
    check_dataset(dataset)
    if not path.is_file():
        raise FileNotFoundError(f"no such image file: {path}")
    suffix = _matching_suffix(path)
    if suffix is None:
        raise ValueError(f"{path}: unsupported file type; expected one of {', '.join(SUPPORTED_SUFFIXES)}")
    if suffix in NIFTI_SUFFIXES:
        image, affine = _load_nifti(path, dataset)
    else:
        image, affine = _load_h5(path)
    labels = predict_volume(net, image, dataset, device=device, **options)
    if dataset == "acdc" and suffix in NIFTI_SUFFIXES:
        labels = np.transpose(labels, (1, 2, 0))
    out_path = Path(out_dir) / (path.name[: -len(suffix)] + OUTPUT_SUFFIX)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(labels, dtype=np.uint8), affine), out_path)
    return out_path


def predict_path(
    net: nn.Module,
    input_path: str | Path,
    dataset: str,
    out_dir: str | Path,
    device: str = "cpu",
    **options: Any,
) -> list[Path]:
    """Segment a file, or every supported file under a directory; returns the output paths.

    For a directory, the output keeps the input's sub-folders, so that same-named files
    (e.g. every LA case's ``mri_norm2.h5``) do not overwrite each other.
    """
    input_path = Path(input_path)
    if input_path.is_file():
        return [predict_file(net, input_path, dataset, out_dir, device, **options)]
    if not input_path.is_dir():
        raise FileNotFoundError(f"no such file or directory: {input_path}")
    files = sorted(p for p in input_path.rglob("*") if p.is_file() and _matching_suffix(p))
    if not files:
        raise FileNotFoundError(
            f"no image files under {input_path}; expected files ending in {', '.join(SUPPORTED_SUFFIXES)}"
        )
    out_dir = Path(out_dir)
    return [
        predict_file(net, file, dataset, out_dir / file.parent.relative_to(input_path), device, **options)
        for file in files
    ]
