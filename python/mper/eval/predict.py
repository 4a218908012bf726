"""Segment image files and write NIfTI label maps.

Inputs:

* NIfTI (``.nii``, ``.nii.gz``): a raw 3D scan. Its intensities are normalised as in
  training (the dataset's ``normalization``, see
  :func:`mper.data.preprocess.normalize_intensity`); it is neither resampled nor
  reoriented, only its axes are put in the dataset's volume order (``scan_axes``): LA
  scans are segmented as stored, ``(H, W, D)``; ACDC scans are stored ``(W, H, S)`` (the
  SSL4MIS volumes hold them with the axes reversed) and segmented slice by slice along the
  last axis. The label map keeps the input's header:
  affine, qform/sform codes, voxel sizes and units.
* HDF5 (``.h5``): a preprocessed volume of the dataset's layout (docs/method.md, "Data
  layouts"), dataset ``image``, already normalised and laid out ``(H, W, D)`` (LA,
  z-scored) or ``(S, H, W)`` (ACDC, scaled to ``[0, 1]``). It has no geometry, so the
  output's affine is the identity.

Each input is checked against the model before it is segmented: a 3D volume (more than
one slice for LA's 3D network), every
intensity finite, for HDF5 the intensity scaling of the model's dataset, and the axis
order: the axis where the layout puts the slices (ACDC) or the depth (LA) must not be
more than :data:`~mper.data.files.AXIS_ORDER_RATIO` times as long as another axis (a short-axis stack
has far fewer slices than pixels across a slice). A volume that fails this, e.g. an
ACDC scan ``(7, 128, 128)`` stored slices first, is refused, or segmented as it is
with ``force`` after a warning. The output
is named after the case, ``<case>_pred.nii.gz`` (the file name without its suffix, or
for a layout with one folder per case, such as LA's ``<case>/mri_norm2.h5``, the case
folder's name): a uint8 label map with the same array shape and axis order as the input,
post-processed as ``mper-eval`` scores it (``eval.postprocess``, e.g. LA's largest
connected component).
"""

from __future__ import annotations

import glob
import logging
import os
import secrets
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from torch import nn

from mper.data.acdc import ACDC_DATA_DIR, ACDC_SLICES_DIR, is_training_slice
from mper.data.convert import ACDC_CINE_MARK, ACDC_LABEL_MARK
from mper.data.files import check_finite, misplaced_slice_axis, read_h5_case, written_whole
from mper.data.image_files import ITK_GRID, NIFTI_ENDINGS, image_ending, itk_grid, write_itk_label_map
from mper.data.preprocess import normalize_intensity, scaling_mismatch
from mper.data.raw_scans import CHANNEL_FILE, load_nifti, nifti_voxels, without_trailing_ones
from mper.datasets import SLIDING_WINDOW, DatasetSpec, get_dataset
from mper.errors import ConfigError, DataFormatError, MissingFileError, UserError

from .protocol import segment_volume

log = logging.getLogger(__name__)

H5_SUFFIXES = (".h5",)
SUPPORTED_SUFFIXES = NIFTI_ENDINGS + H5_SUFFIXES
OUTPUT_SUFFIX = "_pred.nii.gz"


def _matching_suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((suffix for suffix in SUPPORTED_SUFFIXES if name.endswith(suffix)), None)


def _stem_ending_with(path: Path, mark: str) -> str | None:
    """The name of ``path`` without its image suffix and ``mark`` when that name ends with
    ``mark`` (``patient001_frame01`` for ``patient001_frame01_gt.nii.gz`` and ``_gt``);
    ``None`` otherwise."""
    suffix = _matching_suffix(path)
    if suffix is None:
        return None
    stem = path.name[: -len(suffix)]
    return stem[: -len(mark)] if stem.endswith(mark) else None


def _is_label_beside_its_image(path: Path) -> bool:
    """Whether ``path`` is a label map named as the ACDC download names them,
    ``<image>_gt.nii.gz``, beside its image: segmenting it would write a meaningless map."""
    image = _stem_ending_with(path, ACDC_LABEL_MARK)
    return image is not None and any((path.parent / f"{image}{suffix}").is_file() for suffix in SUPPORTED_SUFFIXES)


def _is_cine_beside_its_frames(path: Path) -> bool:
    """Whether ``path`` is the 4D cine series the ACDC download keeps beside a patient's
    frames, ``<patient>_4d.nii.gz``: the frames are what is segmented."""
    patient = _stem_ending_with(path, ACDC_CINE_MARK)
    return patient is not None and any(path.parent.glob(f"{glob.escape(patient)}_frame*"))


def _channel_file_errors(files: list[Path], spec: DatasetSpec) -> dict[Path, DataFormatError]:
    """The refusal of each of ``files`` named as nnU-Net names the channels of one case,
    ``<case>_XXXX.nii.gz``, where its case has more than one such file numbered as nnU-Net
    numbers channels, from 0000 on without a gap (a series ``scan_0001``, ``scan_0002`` is a
    series of scans): the model takes one single-channel image per case."""
    groups: dict[tuple[Path, str], dict[int, Path]] = {}
    for path in files:
        suffix = _matching_suffix(path)
        match = CHANNEL_FILE.fullmatch(path.name[: -len(suffix)]) if suffix in NIFTI_ENDINGS else None
        if match is not None:
            groups.setdefault((path.parent, match["case"]), {})[int(match["channel"])] = path
    errors: dict[Path, DataFormatError] = {}
    for (folder, case), group in groups.items():
        if len(group) < 2 or sorted(group) != list(range(len(group))):
            continue
        channel_files = sorted(group.values())
        error = DataFormatError(
            f"{folder}: case {case} has {len(channel_files)} channel files "
            f"({', '.join(path.name for path in channel_files)}), as nnU-Net names the channels of one case, but "
            f"the {spec.title} model takes one single-channel image per case; give only the file of the channel it "
            "was trained on, or import the dataset with mper-data import to train a model on every channel (or "
            "pass --force if they are separate scans)"
        )
        errors.update(dict.fromkeys(channel_files, error))
    return errors


def case_location(path: Path, case_file: str | None = None) -> tuple[Path, str]:
    """(folder that holds the case, case name) of an image file: ``dir/scan.nii.gz``
    is case ``scan`` in ``dir``; a case file ``dir/case/<case_file>`` (a layout with
    one folder per case, e.g. LA's ``mri_norm2.h5``) is case ``case`` in ``dir``."""
    if case_file is not None and path.name == case_file:
        return path.parent.parent, path.parent.name
    return path.parent, path.name[: -len(_matching_suffix(path) or "")]


def _check_volume(path: Path, image: np.ndarray, spec: DatasetSpec) -> None:
    """A 3D volume of finite intensities; for a 3D network (sliding-window inference) one
    that is more than a single slice, which the network would segment as garbage."""
    if image.ndim != 3:
        raise DataFormatError(
            f"{path}: a {image.ndim}D array of shape {image.shape}, but the {spec.title} model takes 3D volumes "
            f"({expected_layouts(spec)}); split 4D series into one 3D file per frame, and give whole volumes, "
            "not single slices"
        )
    if spec.inference == SLIDING_WINDOW and 1 in image.shape:
        raise DataFormatError(
            f"{path}: a 2D image (one slice, shape {image.shape}), but the {spec.title} model is a 3D network "
            f"that takes 3D volumes ({expected_layouts(spec)}); give the whole volume"
        )
    check_finite(path, image)


def warn_if_blank(path: Path, image: np.ndarray) -> None:
    """Log that ``image`` (read from ``path``) holds one value everywhere: a blank or
    damaged scan, whose label map says nothing of it."""
    if image.size and image.min() == image.max():
        log.warning(
            "%s holds one value everywhere (%g): a blank or damaged scan? Its label map is what the model makes of "
            "a blank image",
            path,
            float(image.flat[0]),
        )


def expected_layouts(spec: DatasetSpec) -> str:
    """The axis orders a model of ``spec`` takes, NIfTI and HDF5, for messages and help."""
    scan, volume = (f"({', '.join(names)})" for names in (spec.scan_axes_names, spec.volume_axes))
    return f"NIfTI and h5 {scan}" if scan == volume else f"NIfTI {scan}, h5 {volume}"


def _check_axis_order(
    path: Path, image: np.ndarray, axes: tuple[str, str, str], spec: DatasetSpec, force: bool
) -> None:
    """Refuse ``image`` (as stored, axes named ``axes``) when another axis is
    :data:`~mper.data.files.AXIS_ORDER_RATIO` times shorter than the slice or depth axis; with ``force``,
    warn instead."""
    slice_axis = axes.index(spec.volume_axes[spec.slice_axis])
    shortest = misplaced_slice_axis(image.shape, slice_axis)
    if shortest is None:
        return
    problem = (
        f"{path}: shape {image.shape} looks like the wrong axis order for the {spec.title} model, which "
        f"takes ({', '.join(axes)}) here ({expected_layouts(spec)}), {spec.slice_name}s along axis "
        f"{slice_axis}: axis {shortest} ({image.shape[shortest]}) is far shorter than axis {slice_axis} "
        f"({image.shape[slice_axis]})"
    )
    if force:
        log.warning("%s; segmenting it as it is (--force)", problem)
        return
    raise DataFormatError(
        f"{problem}. Move the {spec.slice_name}s to axis {slice_axis} (e.g. numpy.moveaxis("
        f"image, {shortest}, {slice_axis})), or pass --force to segment it as it is"
    )


def _load_nifti(path: Path, spec: DatasetSpec, force: bool) -> tuple[np.ndarray, nib.Nifti1Image]:
    """Normalised image in the dataset's volume layout, and the scan (for its header)."""
    scan = load_nifti(path)
    image = without_trailing_ones(nifti_voxels(scan, path, np.float32))  # (x, y, z, 1, 1) as ITK writes it
    _check_volume(path, image, spec)
    warn_if_blank(path, image)  # before normalising, which maps any constant to 0
    _check_axis_order(path, image, spec.scan_axes_names, spec, force)
    return np.transpose(normalize_intensity(image, spec.normalization), spec.scan_axes), scan


def _load_h5(path: Path, spec: DatasetSpec, force: bool) -> np.ndarray:
    """The ``image`` dataset as stored, refused when it is not scaled as the dataset's
    volumes are (a volume preprocessed for another dataset)."""
    (image,) = read_h5_case(path, ("image",), layout=f"a preprocessed {spec.title} volume")
    image = image.astype(np.float32, copy=False)
    _check_volume(path, image, spec)
    expected = scaling_mismatch(image, spec.normalization)
    if expected is not None:
        low, high = float(image.min()), float(image.max())
        raise DataFormatError(
            f"{path}: intensities span [{low:.3g}, {high:.3g}], but the {spec.title} model expects "
            f"{expected}; is this a volume preprocessed for another dataset? "
            "Give the raw scan as NIfTI to have it normalised"
        )
    warn_if_blank(path, image)
    _check_axis_order(path, image, spec.volume_axes, spec, force)
    return image


def label_image(labels: np.ndarray, scan: nib.Nifti1Image | None) -> nib.Nifti1Image:
    """The label map as NIfTI with ``scan``'s header (geometry, codes, units), or with
    an identity affine when there is no scan; for a scan read through SimpleITK, with its
    ITK geometry, which :func:`save_label_map` writes it on."""
    labels = np.ascontiguousarray(labels, dtype=np.uint8)
    if scan is None:
        return nib.Nifti1Image(labels, np.eye(4))
    grid = itk_grid(scan)
    if grid is not None:
        return nib.Nifti1Image(labels, scan.affine, extra={ITK_GRID: grid})
    image = type(scan)(labels, scan.affine, scan.header.copy())
    header = image.header
    header.set_data_dtype(np.uint8)
    header.set_intent("label")
    header["cal_min"], header["cal_max"] = 0, 0
    image.set_qform(scan.get_qform(), int(scan.header["qform_code"]))
    image.set_sform(scan.get_sform(), int(scan.header["sform_code"]))
    return image


def save_label_map(image: nib.Nifti1Image, out_path: Path) -> Path:
    """Write ``image`` to ``out_path`` whole or not at all: into a hidden file beside it,
    then renamed over it, so that a stop while writing (Ctrl-C, a full disk, a killed job)
    leaves no truncated label map under a case's name. An image read through SimpleITK
    (:func:`label_image` of such a scan) is written by SimpleITK in the format of
    ``out_path``'s ending, on the scan's ITK geometry."""
    ending = image_ending(out_path.name) or out_path.suffix
    # the ending last: nibabel and SimpleITK pick the format by it
    temporary = out_path.with_name(f".{out_path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp{ending}")
    grid = itk_grid(image)
    with written_whole(out_path, temporary) as aside:
        if grid is not None:
            write_itk_label_map(np.asarray(image.dataobj), grid, aside)
        else:
            nib.save(image, aside)
    return out_path


def _segment(
    net: nn.Module, path: Path, dataset: str, out_path: Path, device: str, force: bool, **options: Any
) -> Path:
    """Check, segment and write one file (``force``: despite an axis order that looks
    wrong); ``options`` go to :func:`~mper.eval.protocol.segment_volume`."""
    suffix = _matching_suffix(path)
    if suffix is None:
        raise ConfigError(f"{path}: unsupported file type; expected one of {', '.join(SUPPORTED_SUFFIXES)}")
    spec = get_dataset(dataset)
    scan = None
    if suffix in NIFTI_ENDINGS:
        image, scan = _load_nifti(path, spec, force)
    else:
        image = _load_h5(path, spec, force)
    labels = segment_volume(net, image, dataset, device=device, **options)
    if scan is not None:
        labels = np.transpose(labels, np.argsort(spec.scan_axes))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    return save_label_map(label_image(labels, scan), out_path)


def predict_file(
    net: nn.Module,
    path: str | Path,
    dataset: str,
    out_dir: str | Path,
    device: str = "cpu",
    force: bool = False,
    **options: Any,
) -> Path:
    """Segment one NIfTI or HDF5 file and write ``out_dir/<case>_pred.nii.gz``; returns its path.

    ``force`` segments a volume whose axis order looks wrong (see the module docstring)
    after a warning instead of refusing it, and files named as the nnU-Net channel files
    of one case (``<case>_0000``, ``<case>_0001``, ...) each as a case of its own. ``options`` go to
    :func:`~mper.eval.protocol.segment_volume`: ``postprocess`` (as ``mper-eval`` applies
    it), ``num_classes`` and the inference options (e.g. ``stride``).
    """
    path = Path(path)
    case_file = get_dataset(dataset).case_file
    if not path.is_file():
        raise MissingFileError(f"no such image file: {path}")
    if not force:
        siblings = [file for file in path.parent.iterdir() if file.is_file()]
        refusal = _channel_file_errors(siblings, get_dataset(dataset)).get(path)
        if refusal is not None:
            raise refusal
    out_path = Path(out_dir) / f"{case_location(path, case_file)[1]}{OUTPUT_SUFFIX}"
    return _segment(net, path, dataset, out_path, device, force, **options)


def _note_ignored(input_dir: Path, noun: str, detail: str, paths: list[Path], listed: bool = True) -> None:
    """One log line for the ``paths`` under ``input_dir`` left alone: ``noun`` and
    ``detail`` say what they are; ``listed``: name each (relative to ``input_dir``), or
    only count them."""
    if paths:
        names = f": {', '.join(str(path.relative_to(input_dir)) for path in paths)}" if listed else ""
        log.warning("ignored %d %s of %s%s%s", len(paths), noun, input_dir, detail, names)


def _folder_outputs(input_dir: Path, out_dir: Path, case_file: str | None) -> dict[Path, Path]:
    """Every supported file under ``input_dir`` and its output path, which keeps the
    case's sub-folder so that same-named cases do not overwrite each other."""
    visible = sorted(p for p in input_dir.rglob("*") if p.is_file() and not p.name.startswith("."))
    labels = [path for path in visible if _is_label_beside_its_image(path)]
    series = [path for path in visible if _is_cine_beside_its_frames(path)]
    slices = [path for path in visible if is_training_slice(path)]
    left_alone = set(labels) | set(series) | set(slices)
    files = [path for path in visible if _matching_suffix(path) and path not in left_alone]
    if files:
        unknown = [path for path in visible if not _matching_suffix(path)]
        _note_ignored(input_dir, "file(s)", f" not ending in {', '.join(SUPPORTED_SUFFIXES)}", unknown)
    _note_ignored(input_dir, "label map(s)", f", named <image>{ACDC_LABEL_MARK} beside their image", labels)
    _note_ignored(
        input_dir,
        "4D cine series",
        f", named <patient>{ACDC_CINE_MARK} beside its frames, which are segmented instead",
        series,
    )
    _note_ignored(
        input_dir,
        "2D training slice(s)",
        f", in {ACDC_DATA_DIR}/{ACDC_SLICES_DIR}/ of the SSL4MIS ACDC layout: their frames' volumes in "
        f"{ACDC_DATA_DIR}/ are segmented instead",
        slices,
        listed=False,
    )
    if not files and slices:
        raise MissingFileError(
            f"{input_dir} holds only the 2D training slices of an ACDC dataset; give its {ACDC_DATA_DIR}/ folder, "
            "whose frames' volumes are segmented"
        )
    if not files:
        raise MissingFileError(
            f"no image files under {input_dir}; expected files ending in {', '.join(SUPPORTED_SUFFIXES)}"
        )
    outputs: dict[Path, Path] = {}
    for file in files:
        folder, case = case_location(file, case_file)
        relative = folder.relative_to(input_dir) if folder.is_relative_to(input_dir) else Path()
        outputs[file] = out_dir / relative / f"{case}{OUTPUT_SUFFIX}"
    by_output: dict[Path, Path] = {}
    for file, out_path in outputs.items():
        if out_path in by_output:
            raise ConfigError(
                f"{by_output[out_path]} and {file} are the same case; both would be written to {out_path}"
            )
        by_output[out_path] = file
    return outputs


def predict_path(
    net: nn.Module,
    input_path: str | Path,
    dataset: str,
    out_dir: str | Path,
    device: str = "cpu",
    force: bool = False,
    **options: Any,
) -> list[Path]:
    """Segment a file, or every supported file under a directory; returns the output paths
    (``force`` and ``options``: see :func:`predict_file`).

    Each file is logged as it is done. In a directory, files of other types are listed in
    one log line and left alone, and a file that cannot be segmented (unreadable, not a 3D
    volume, non-finite, the other dataset's scaling) is logged and skipped; after the rest
    is done a :class:`~mper.errors.UserError` says how many failed.
    """
    input_path = Path(input_path)
    if input_path.is_file():
        label_map = predict_file(net, input_path, dataset, out_dir, device, force, **options)
        log.info("[1/1] %s -> %s", input_path, label_map)
        return [label_map]
    if not input_path.is_dir():
        raise MissingFileError(f"no such file or directory: {input_path}")
    spec = get_dataset(dataset)
    outputs = _folder_outputs(input_path, Path(out_dir), spec.case_file)
    written: list[Path] = []
    failed: list[Path] = []
    multichannel = {} if force else _channel_file_errors(list(outputs), spec)
    for index, (file, out_path) in enumerate(outputs.items(), start=1):
        try:
            if file in multichannel:
                raise multichannel[file]
            written.append(_segment(net, file, dataset, out_path, device, force, **options))
        except UserError as error:
            failed.append(file)
            log.error("[%d/%d] skipped: %s", index, len(outputs), error)
            continue
        log.info("[%d/%d] %s -> %s", index, len(outputs), file, out_path)
    if failed:
        raise skipped_error(failed, len(outputs), "files", written, out_dir)
    return written


def skipped_error(failed: list[Any], total: int, unit: str, written: list[Path], out_dir: str | Path) -> UserError:
    """The error that ends a prediction which skipped the ``failed`` of its ``total``
    inputs (``unit``: "files", "cases") and wrote ``written`` into ``out_dir``."""
    kept = f"the other {len(written)} label maps are in {out_dir}" if written else "no label map was written"
    return UserError(
        f"{len(failed)} of {total} {unit} could not be segmented (reasons above), first {failed[0]}; {kept}"
    )
