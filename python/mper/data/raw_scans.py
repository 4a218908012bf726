"""Raw scans in the nnU-Net v2 and the Medical Segmentation Decathlon (MSD) layouts.

nnU-Net v2 raw layout (one folder per dataset)::

    dataset.json      channel_names {"0": "CT", ...}, labels {"background": 0, "liver": 1, ...},
                      numTraining, file_ending (".nii.gz", ".nii", or an ending of image_files.IMAGE_ENDINGS)
    imagesTr/<case>_<XXXX><ending>   one file per input channel XXXX = 0000, 0001, ...
    labelsTr/<case><ending>          the label map of a training case
    imagesTs/<case>_<XXXX><ending>   test images (optional), labelsTs/<case><ending> their labels

MSD layout::

    dataset.json      modality {"0": "CT", ...}, labels {"0": "background", "1": "liver", ...},
                      training [{"image": "./imagesTr/<case>.nii.gz", "label": "./labelsTr/..."}],
                      test ["./imagesTs/<case>.nii.gz", ...]
    imagesTr/<case>.nii.gz           one file per case, 4D (x, y, z, channel) when it has several channels

Unlabeled scans (what self-training learns from) are the training images without a
label file (nnU-Net: an image of ``imagesTr`` with no ``labelsTr`` file; MSD: an image
of ``imagesTr`` that ``training`` does not list), the images of an optional
``imagesUnlabeled/`` folder and of a folder given by the user, named as ``imagesTr``.

:func:`read_raw_dataset` reads ``dataset.json`` and lists the cases, refusing a layout
it cannot use with one line that names the file and what to do. As nnU-Net does, it reads
only the files that end with the dataset's file ending and ignores the others (a
``readme.txt``, a ``.DS_Store``), naming them in one logged line per folder; a folder in
which no file ends so but some end in another ending mper reads is refused, naming
``file_ending``. :func:`read_case`
reads one case's channels and label (NIfTI through nibabel, the other endings of
:data:`~mper.data.image_files.IMAGE_ENDINGS` through SimpleITK as the same in-memory NIfTI
image: :mod:`mper.data.image_files`) and checks that they fit
together: one voxel grid (one shape, and no voxel placed more than
:data:`GEOMETRY_TOLERANCE` of a voxel apart), finite intensities, a 3D label holding only
declared classes. A channel's name in ``dataset.json`` chooses its normalisation as in
nnU-Net v2 (:func:`normalization_of`).
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.orientations import aff2axcodes, inv_ornt_aff, io_orientation, ornt_transform

from mper.data.files import check_finite, listed_names, why_unlistable
from mper.data.image_files import (
    IMAGE_ENDINGS,
    NATURAL_ENDINGS,
    NIFTI_ENDINGS,
    components,
    detached_data_files,
    image_ending,
    is_natural_image,
    is_nifti,
    itk_shape,
    read_itk_image,
    supported_endings,
)
from mper.errors import DataFormatError, MissingFileError

log = logging.getLogger(__name__)

NNUNET = "nnunet"
MSD = "msd"
RAW_LAYOUTS = (NNUNET, MSD)
DATASET_JSON = "dataset.json"
IMAGES_TRAIN = "imagesTr"
LABELS_TRAIN = "labelsTr"
IMAGES_TEST = "imagesTs"
LABELS_TEST = "labelsTs"
IMAGES_UNLABELED = "imagesUnlabeled"
#: The folders of a raw dataset that the import reads.
RAW_FOLDERS = (IMAGES_TRAIN, LABELS_TRAIN, IMAGES_TEST, LABELS_TEST, IMAGES_UNLABELED)
#: What a case is for: labeled training case, unlabeled training case, test case.
LABELED, UNLABELED, TEST = "labeled", "unlabeled", "test"

#: How a channel is normalised, by its name in ``dataset.json`` (nnU-Net's rules):
#: ``ct``: clipped to the 0.5 / 99.5 percentiles of the training set's foreground
#: intensities, then z-scored with their mean and standard deviation; ``z-score``: per
#: image (inside the nonzero region when cropping removes much); ``none``; ``rescale``:
#: to [0, 1] per image; ``rgb``: divided by 255.
CT, ZSCORE, NO_NORMALIZATION, RESCALE, RGB = "ct", "z-score", "none", "rescale", "rgb"
SCAN_NORMALIZATIONS = (CT, ZSCORE, NO_NORMALIZATION, RESCALE, RGB)
#: nnU-Net v2's channel names of its normalisation schemes, casefolded; any other name
#: (MRI, T2, cineMRI, ...) is z-scored (``get_normalization_scheme`` in its
#: ``map_channel_name_to_normalization.py``).
NAMED_SCHEMES = {
    "ct": CT,
    "nonorm": NO_NORMALIZATION,
    "zscore": ZSCORE,
    "rescale_to_0_1": RESCALE,
    "rgb_to_0_1": RGB,
}

#: How far, as a fraction of the (smallest) voxel spacing, the channels and the label of a
#: case may place a voxel apart. Headers written by different tools round positions (to a
#: few decimals of a millimetre, to float32), which moves a voxel by far less; a real
#: misalignment (a half-voxel corner-or-centre slip, a shifted crop) by far more. As
#: nnU-Net's ``verify_dataset_integrity`` does, the spacing, the origin and the direction
#: are compared apart, each part against the whole tolerance.
GEOMETRY_TOLERANCE = 0.01
#: The most classes (background included) an imported dataset may have: the imported cases,
#: the training batches and the predicted label maps hold class values as 8-bit integers.
MAX_CLASSES = int(np.iinfo(np.uint8).max) + 1
#: nnU-Net's name of an image file without its ending: ``<case>_<XXXX>``, XXXX the channel.
CHANNEL_FILE = re.compile(r"(?P<case>.+)_(?P<channel>\d{4})")


def channel_file_name(case: str, channel: int, ending: str) -> str:
    """nnU-Net's name of ``case``'s image file of ``channel`` (:data:`CHANNEL_FILE`, then ``ending``)."""
    return f"{case}_{channel:04d}{ending}"


@dataclass(frozen=True)
class RawCase:
    """One case of a raw dataset: ``images`` holds one file per channel (nnU-Net) or one
    file with every channel (MSD); ``label`` is ``None`` for an unlabeled case or a test
    case without labels; ``role`` is :data:`LABELED`, :data:`UNLABELED` or :data:`TEST`."""

    name: str
    images: tuple[Path, ...]
    label: Path | None
    role: str


@dataclass(frozen=True)
class RawDataset:
    """A raw dataset folder as :func:`read_raw_dataset` found it."""

    source: Path
    layout: str
    name: str
    channels: tuple[str, ...]
    normalization: tuple[str, ...]
    class_names: tuple[str, ...]
    file_ending: str
    cases: tuple[RawCase, ...]

    def with_role(self, role: str) -> list[RawCase]:
        """The cases of one role, in name order."""
        return [case for case in self.cases if case.role == role]


@dataclass
class Scan:
    """One case read by :func:`read_case`: ``image`` (C, X, Y, Z) float32 as stored (array
    axes as in the file), ``label`` uint8 (X, Y, Z) or ``None``, the ``affine`` and the
    voxel ``spacing`` (mm) of the first channel's file, and that file's ``header``."""

    image: np.ndarray
    label: np.ndarray | None
    affine: np.ndarray
    spacing: tuple[float, float, float]
    header: nib.Nifti1Header


def normalization_of(channel_name: str) -> str:
    """The normalisation scheme (of :data:`SCAN_NORMALIZATIONS`) of a channel named
    ``channel_name`` in ``dataset.json``, as nnU-Net v2 chooses it: the name, compared
    without regard to case, of one of :data:`NAMED_SCHEMES`, else a per-image z-score."""
    return NAMED_SCHEMES.get(str(channel_name).casefold(), ZSCORE)


def ending_in_other_case(file_name: str) -> str | None:
    """The ending mper reads (:data:`~mper.data.image_files.IMAGE_ENDINGS`) that ``file_name``
    ends with in other letter case (``.NII.GZ`` for ``.nii.gz``, ``.PNG``), which the readers do
    not take (endings are matched as written); ``None`` otherwise."""
    lowered = file_name.lower()
    if image_ending(file_name) is not None:
        return None
    return next((end for end in IMAGE_ENDINGS if lowered.endswith(end)), None)


def case_name(file_name: str, ending: str) -> str | None:
    """``file_name`` without ``ending``, or ``None`` when it does not end so."""
    return file_name[: -len(ending)] if file_name.endswith(ending) and len(file_name) > len(ending) else None


def _where_the_dataset_is(source: Path) -> str:
    """What to pass as ``--source`` instead of ``source``, a folder without dataset.json: the
    dataset folder above it (``source`` is its ``imagesTr/``, say), or those inside it."""
    said = "a raw dataset folder holds dataset.json (nnU-Net v2 or Medical Segmentation Decathlon layout) beside "
    said += "imagesTr/ and labelsTr/"
    if (source.parent / DATASET_JSON).is_file():
        return f"{said}; {source.parent} is one: pass --source {shlex.quote(str(source.parent))}"
    inside = sorted(folder.name for folder in source.iterdir() if (folder / DATASET_JSON).is_file())
    if inside:
        example = shlex.quote(str(source / inside[0]))
        named = f" ({listed_names(inside)})" if len(inside) > 1 else ""
        return f"{said}; {source} holds {len(inside)} such folder(s): pass one, e.g. --source {example}{named}"
    return said


def _json(path: Path) -> dict[str, Any]:
    try:
        # JSON is UTF-8; a byte order mark, which some Windows editors write, is not part of it
        document = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataFormatError(f"{path} is not valid JSON ({error}); fix the file") from error
    if not isinstance(document, dict):
        raise DataFormatError(f"{path} must hold a JSON object with channel_names (or modality) and labels")
    return document


def _layout_of(document: Mapping[str, Any], where: Path) -> str:
    if "channel_names" in document:
        return NNUNET
    if "modality" in document:
        return MSD
    raise DataFormatError(
        f"{where} has neither channel_names (nnU-Net v2) nor modality (Medical Segmentation Decathlon); "
        'add e.g. "channel_names": {"0": "CT"}'
    )


def _channels(table: Any, key: str, where: Path) -> tuple[str, ...]:
    """Channel names by index from ``{"0": name, "1": name}``: indices 0..C-1, each once."""
    if not isinstance(table, dict) or not table:
        raise DataFormatError(f'{where}: {key} must map channel indices to names, e.g. {{"0": "CT"}}')
    try:
        indexed = {int(index): str(name) for index, name in table.items()}
    except ValueError as error:
        raise DataFormatError(f"{where}: {key} keys must be channel indices 0, 1, ...; got {sorted(table)}") from error
    if sorted(indexed) != list(range(len(indexed))):
        raise DataFormatError(f"{where}: {key} must number the channels 0..{len(indexed) - 1}; got {sorted(indexed)}")
    return tuple(indexed[index] for index in range(len(indexed)))


def _class_names(labels: Any, layout: str, where: Path) -> tuple[str, ...]:
    """Class names by label value, from nnU-Net's ``{name: value}`` or MSD's ``{"value": name}``."""
    if not isinstance(labels, dict) or not labels:
        raise DataFormatError(f'{where}: labels must name the classes, e.g. {{"background": 0, "liver": 1}}')
    _refuse_other_layouts_labels(labels, layout, where)
    by_value: dict[int, str] = {}
    for key, value in labels.items():
        name, number = (key, value) if layout == NNUNET else (value, key)
        if isinstance(number, (list, tuple)):
            raise DataFormatError(
                f"{where}: label {name!r} is a region (a list of values); mper trains one class per label "
                "value: give each class its own value"
            )
        if str(name).lower() == "ignore":
            raise DataFormatError(
                f"{where}: an 'ignore' label (voxels left unannotated) is not supported, mper learns from fully "
                "annotated label maps: annotate those voxels, or remove the labels of the cases that have some (they "
                "then train as unlabeled scans) and the 'ignore' entry"
            )
        try:
            index = int(number)
        except (TypeError, ValueError, OverflowError):  # OverflowError: JSON's Infinity
            index = None
        if index is None or (isinstance(number, float) and number != index):  # int(1.5) would be 1
            raise DataFormatError(f"{where}: label {name!r} has the value {number!r}, expected an integer")
        if index in by_value:
            raise DataFormatError(f"{where}: labels {by_value[index]!r} and {name!r} share the value {index}")
        by_value[index] = str(name)
    if sorted(by_value) != list(range(len(by_value))) or len(by_value) < 2:
        raise DataFormatError(
            f"{where}: label values must be 0 (background) and 1, 2, ... without gaps; got {sorted(by_value)}: "
            "number the classes so, in labels and in the label files (relabel them)"
        )
    return tuple(by_value[index] for index in range(len(by_value)))


def _is_integer_text(text: Any) -> bool:
    return isinstance(text, str) and text.strip().lstrip("-").isdigit()


def _refuse_other_layouts_labels(labels: dict[Any, Any], layout: str, where: Path) -> None:
    """Refuse ``labels`` written the other layout's way round (``{"0": "background"}`` in an
    nnU-Net file, ``{"background": 0}`` in a Decathlon one) with a message that says so,
    rather than "label '0' has the value 'background'"."""
    numbered_keys = all(_is_integer_text(key) for key in labels)
    named_values = all(isinstance(value, str) and not _is_integer_text(value) for value in labels.values())
    if layout == NNUNET and numbered_keys and named_values:
        raise DataFormatError(
            f'{where}: labels map values to names ({{"0": "background"}}), the Decathlon\'s way, but this '
            "is an nnU-Net v2 dataset.json (it has channel_names), whose labels map names to values: write "
            '{"background": 0, ...}'
        )
    numbered_values = all(isinstance(value, int) or _is_integer_text(value) for value in labels.values())
    if layout == MSD and numbered_values and not numbered_keys:
        raise DataFormatError(
            f'{where}: labels map names to values ({{"background": 0}}), nnU-Net v2\'s way, but this is a '
            "Decathlon dataset.json (it has modality), whose labels map values to names: write "
            '{"0": "background", ...}, or use channel_names instead of modality'
        )


def read_class_names(path: str | Path) -> tuple[str, ...]:
    """The class names, by label value, that the ``dataset.json`` at ``path`` declares in its
    ``labels``: nnU-Net v2's ``{name: value}`` or the Decathlon's ``{"value": name}``, told
    apart by ``channel_names`` or ``modality`` as :func:`read_raw_dataset` does, else by the
    labels themselves (names mapped to numbers: nnU-Net). Refused as the import refuses them."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path} not found: give the dataset.json that names the classes")
    document = _json(path)
    labels = document.get("labels")
    if "channel_names" in document or "modality" in document:
        layout = _layout_of(document, path)
    else:
        values = labels.values() if isinstance(labels, dict) else ()
        layout = NNUNET if any(isinstance(value, (int, float, list)) for value in values) else MSD
    return _class_names(labels, layout, path)


def _split_by_ending(folder: Path, ending: str) -> tuple[list[Path], list[Path]]:
    """(the files of ``folder`` that end with ``ending``, the others), each sorted; hidden
    files (``._x``, ``.DS_Store``) are among the others."""
    used: list[Path] = []
    others: list[Path] = []
    for path in sorted(path for path in folder.iterdir() if path.is_file()):
        (used if path.name.endswith(ending) and not path.name.startswith(".") else others).append(path)
    return used, others


def _case_files(folder: Path, ending: str, declared: Path | None) -> list[Path]:
    """The files of ``folder`` that end with ``ending``, the others ignored and named in one
    logged line (but the data files of detached headers, ``.raw`` beside ``.mhd``). With
    ``declared`` (the ``dataset.json`` whose ``file_ending`` is ``ending``), a folder in which
    none ends so but some end in another ending mper reads is refused: ``file_ending`` does not
    match the files."""
    used, others = _split_by_ending(folder, ending)
    detached = detached_data_files([*used, *others])
    others = [path for path in others if path not in detached]
    rule = f"{declared.name}'s file_ending {ending!r}" if declared is not None else repr(ending)
    if not used and declared is not None:
        for found in IMAGE_ENDINGS:
            named = [path for path in others if image_ending(path.name) == found and not path.name.startswith(".")]
            if found != ending and named:
                raise DataFormatError(
                    f"{folder}: no file ends with {rule}, but {len(named)} end with {found!r} (e.g. "
                    f'{named[0].name}); set "file_ending": "{found}" in {declared} to read them'
                )
        for found in IMAGE_ENDINGS:  # the declared ending among them
            cased = [
                path for path in others if ending_in_other_case(path.name) == found and not path.name.startswith(".")
            ]
            if cased:
                also = "" if found == ending else f' and set "file_ending": "{found}" in {declared}'
                raise DataFormatError(
                    f"{folder}: no file ends with {rule}, but {len(cased)} end with {found!r} in other letter case "
                    f"(e.g. {cased[0].name}); rename them to end in {found!r}{also}: endings are matched with their "
                    "case, as nnU-Net does"
                )
    if others:
        names = listed_names([path.name for path in others])
        log.warning(
            "%s: ignored %d file(s) that do not end with %s or are hidden: %s", folder, len(others), rule, names
        )
    return used


def _channel_files(files: Sequence[Path], ending: str, channels: int) -> dict[str, tuple[Path, ...]]:
    """``{case: (channel 0 file, channel 1 file, ...)}`` of ``<case>_<XXXX><ending>`` files of one folder.
    A 2D natural image (``.png``, ...) holds as many channels as its pixels have components
    (an RGB file three), so a case of such files may have fewer files than channels: files
    ``0000`` on without a gap, their channels counted when read (:func:`read_image`)."""
    found: dict[str, dict[int, Path]] = {}
    for path in files:
        stem = case_name(path.name, ending)
        match = CHANNEL_FILE.fullmatch(stem) if stem is not None else None
        if match is None:
            raise DataFormatError(
                f"{path}: not named <case>_<XXXX>{ending} (XXXX the channel, 0000 for the first); rename or remove it"
            )
        found.setdefault(match["case"], {})[int(match["channel"])] = path
    cases = {}
    for case, by_channel in found.items():
        extra = sorted(set(by_channel) - set(range(channels)))
        unsuffixed = by_channel[extra[0]] if extra else None
        hint = ""
        if unsuffixed is not None:  # numbered beyond the channels: case names of four digits without the channel?
            stem = unsuffixed.name[: -len(ending)]
            hint = (
                f"; if {stem} is a case, name its image file {channel_file_name(stem, 0, ending)}: nnU-Net names "
                f"image files <case>_<XXXX>{ending}, XXXX the channel, and reads {unsuffixed.name} as channel "
                f"{extra[0]} of case {case}"
            )
        needed = range(channels)
        if ending in NATURAL_ENDINGS:
            needed = range(1 + max((channel for channel in by_channel if channel < channels), default=0))
        for channel in needed:
            if channel not in by_channel:
                folder = next(iter(by_channel.values())).parent
                raise MissingFileError(
                    f"{folder / channel_file_name(case, channel, ending)} not found: every case needs one file per "
                    f"channel ({channels} in dataset.json); add it or remove the case's other files{hint}"
                )
        if unsuffixed is not None:
            raise DataFormatError(
                f"{unsuffixed}: channel {extra[0]} is not in dataset.json, which names {channels} channel(s): add it "
                f"to channel_names or remove the file{hint}"
            )
        cases[case] = tuple(by_channel[channel] for channel in needed)
    return cases


def _volume_files(files: Sequence[Path], ending: str) -> dict[str, tuple[Path, ...]]:
    """``{case: (file,)}`` of ``<case><ending>`` files (MSD: all channels in one file)."""
    return {path.name[: -len(ending)]: (path,) for path in files}


def _label_files(files: Sequence[Path], ending: str, images: Mapping[str, object]) -> dict[str, Path]:
    """``{case: label file}`` of the files of a labels folder; a label whose case has no image is refused."""
    labels = {}
    for path in files:
        stem = case_name(path.name, ending)
        if stem is None or stem not in images:
            folder = path.parent
            image_folder = folder.parent / folder.name.replace("labels", "images")
            # the image named as its label: nnU-Net's naming reads <case>_0001.nii.gz as channel 1 of <case>
            unsuffixed = (
                f"; {image_folder / path.name} lacks the channel: name it {channel_file_name(stem, 0, ending)}, as "
                f"nnU-Net names image files <case>_<XXXX>{ending}, XXXX the channel"
                if stem is not None and (image_folder / path.name).is_file()
                else ""
            )
            raise DataFormatError(
                f"{path}: a label without an image of the same case in {image_folder}; add the image or remove the "
                f"label{unsuffixed}"
            )
        labels[stem] = path
    return labels


#: The folder of each kind of file a Decathlon dataset.json lists.
_MSD_FOLDERS = {"training image": IMAGES_TRAIN, "training label": LABELS_TRAIN, "test": IMAGES_TEST}


def _msd_path(source: Path, entry: Any, where: Path, key: str) -> Path:
    if not isinstance(entry, str) or not entry:
        raise DataFormatError(
            f"{where}: every {key} entry must be a file path such as ./{_MSD_FOLDERS[key]}/case.nii.gz"
        )
    return source / entry


def _refuse_msd_ending(listed: str, path: Path, where: Path, what: str) -> None:
    """Refuse the ``what`` file ``listed`` (at ``path``) of a Decathlon ``dataset.json``
    unless it is a ``.nii.gz`` file, the one ending the layout takes, saying what to do with
    its ending: a ``.nii`` file is compressed, a file of another format converted."""
    ending = NIFTI_ENDINGS[0]
    if path.name.endswith(ending):
        return
    if path.name.endswith(NIFTI_ENDINGS[1]):
        fix = f"compress it (gzip) and list it as {ending}, or use the nnU-Net v2 layout, whose file_ending may be "
        fix += NIFTI_ENDINGS[1]
    elif (other := image_ending(path.name)) is not None:
        fix = (
            f"convert it to NIfTI (e.g. with SimpleITK) and list it as {ending}, or use the nnU-Net v2 layout, whose "
            f"file_ending may be {other}"
        )
    else:
        fix = f"list a {ending} file"
    raise DataFormatError(f"{where}: {what} {listed} is not a {ending} file, which the Decathlon layout takes: {fix}")


CaseFiles = dict[str, tuple[Path, ...]]


def _refuse_nnunet_v1(image: Path, name: str, ending: str, where: Path) -> None:
    """Refuse a Decathlon-style ``dataset.json`` that lists ``image``, missing, while the
    image is there under nnU-Net's channel name (``<case>_0000``): an nnU-Net v1 task, whose
    dataset.json lists the Decathlon's names and whose files carry the channel."""
    channel_file = image.with_name(channel_file_name(name, 0, ending))
    if channel_file.is_file():
        raise DataFormatError(
            f"{where} lists {image.name} in training, but its folder holds {channel_file.name}, one file per "
            "channel: an nnU-Net v1 task (modality and the Decathlon's file names in dataset.json, channel files "
            "on disk), which mper does not read; convert it to nnU-Net v2 (nnUNetv2_convert_old_nnUNet_dataset "
            'FOLDER DatasetNNN_Name), or replace its dataset.json by a v2 one: "channel_names", "labels" as '
            '{"background": 0, ...} and "file_ending"'
        )


def _msd_cases(
    source: Path, document: Mapping[str, Any], where: Path, train_files: Sequence[Path], label_files: Sequence[Path]
) -> tuple[CaseFiles, dict[str, Path], CaseFiles]:
    """(training images, their labels, test images) of an MSD ``dataset.json``; the images
    of ``train_files`` (those of ``imagesTr``) that ``training`` does not list are
    unlabeled training cases. A file of ``label_files`` (those of ``labelsTr``) that
    ``training`` does not list is refused: its label would be silently unused."""
    ending = NIFTI_ENDINGS[0]
    training = document.get("training", [])
    if not isinstance(training, list):
        raise DataFormatError(f'{where}: training must be a list of {{"image": ..., "label": ...}} entries')
    images: dict[str, tuple[Path, ...]] = {}
    labels: dict[str, Path] = {}
    for entry in training:
        if not isinstance(entry, dict):
            raise DataFormatError(f'{where}: training entries must be {{"image": ..., "label": ...}}, got {entry!r}')
        image = _msd_path(source, entry.get("image"), where, "training image")
        label = _msd_path(source, entry.get("label"), where, "training label")
        name = case_name(image.name, ending)
        for what, listed, path in (("image", entry["image"], image), ("label", entry["label"], label)):
            _refuse_msd_ending(listed, path, where, f"training {what}")
        assert name is not None  # its ending was checked
        if name in images:
            raise DataFormatError(f"{where}: case {name} is listed twice in training; list each case once")
        for path in (image, label):
            if path is image and not path.is_file():
                _refuse_nnunet_v1(image, name, ending, where)
            if not path.is_file():
                raise MissingFileError(
                    f"{path} not found, though {where} lists it in training; add it or unlist the case"
                )
        images[name], labels[name] = (image,), label
    listed_labels = {path.resolve() for path in labels.values()}
    for path in label_files:
        if path.resolve() not in listed_labels:
            raise DataFormatError(
                f"{path}: a label that {where}'s training does not list, so it would go unused; list it with its "
                "image in training, or remove it"
            )
    for name, files in _volume_files(train_files, ending).items():
        if name not in images:
            images[name] = files
    test: dict[str, tuple[Path, ...]] = {}
    for entry in document.get("test", []) or []:
        path = _msd_path(source, entry, where, "test")
        _refuse_msd_ending(entry, path, where, "test image")
        name = case_name(path.name, ending)
        if name is None or not path.is_file():
            raise MissingFileError(f"{path} not found, though {where} lists it in test; add it or unlist it")
        if name in test:
            raise DataFormatError(f"{where}: case {name} is listed twice in test; list each case once")
        test[name] = (path,)
    return images, labels, test


def read_raw_dataset(source: str | Path, unlabeled: str | Path | None = None) -> RawDataset:
    """The cases of the raw dataset under ``source`` (nnU-Net v2 or MSD layout, told
    apart by ``dataset.json``), plus the unlabeled scans of ``unlabeled`` (a folder named
    as ``imagesTr``). Only file names and ``dataset.json`` are read here.

    Raises:
        MissingFileError: no folder ``source``, no ``dataset.json``, a channel file or a
            listed file missing.
        DataFormatError: ``dataset.json`` malformed (channels, labels,
            a file ending mper cannot read or that no file of a folder has), a file
            misnamed, a label without an image, a case twice, or no training image at all.
    """
    source = Path(source)
    if not source.is_dir():
        raise MissingFileError(
            f"raw dataset folder {source} does not exist: pass the folder that holds dataset.json, imagesTr/ and "
            f"labelsTr/ (mper-data synth --format nnunet --out {shlex.quote(str(source))} writes a synthetic one)"
        )
    where = source / DATASET_JSON
    if not where.is_file():
        raise MissingFileError(f"{where} not found: {_where_the_dataset_is(source)}")
    document = _json(where)
    layout = _layout_of(document, where)
    channels = _channels(
        document["channel_names" if layout == NNUNET else "modality"],
        "channel_names" if layout == NNUNET else "modality",
        where,
    )
    normalization = tuple(normalization_of(channel) for channel in channels)
    class_names = _class_names(document.get("labels"), layout, where)
    if len(class_names) > MAX_CLASSES:
        raise DataFormatError(
            f"{where}: labels declare {len(class_names)} classes (values 0 to {len(class_names) - 1}), but mper stores "
            f"class values as 8-bit integers, at most {MAX_CLASSES} classes (0 to {MAX_CLASSES - 1}); merge classes "
            f"so that at most {MAX_CLASSES} remain, in labels and in the label files"
        )
    if layout == NNUNET and "file_ending" not in document:
        raise DataFormatError(
            f'{where} has no "file_ending", which nnU-Net v2\'s dataset.json names: add "file_ending": ".nii.gz" '
            '(or ".nii", ".nrrd", ".mha", ".png", ...), the ending of the image files'
        )
    if "overwrite_image_reader_writer" in document:
        log.warning(
            "%s: overwrite_image_reader_writer %r is not used: mper reads NIfTI with nibabel (the other endings with "
            "SimpleITK) and keeps the files' axis order, as nnU-Net's default reader does (predictions are written "
            "on each input's own grid)",
            where,
            document["overwrite_image_reader_writer"],
        )
    ending = str(document["file_ending"]) if layout == NNUNET else NIFTI_ENDINGS[0]
    if ending not in IMAGE_ENDINGS and f".{ending}" in IMAGE_ENDINGS:
        raise DataFormatError(
            f'{where}: file_ending {ending!r} lacks its leading dot; write "file_ending": ".{ending}"'
        )
    if ending not in IMAGE_ENDINGS and ending.lower() in IMAGE_ENDINGS:
        raise DataFormatError(
            f"{where}: file_ending {ending!r}: mper reads files whose endings are lowercase "
            f"({', '.join(IMAGE_ENDINGS)}); rename the files to end in {ending.lower()!r} and write "
            f'"file_ending": "{ending.lower()}"'
        )
    if ending not in IMAGE_ENDINGS:
        raise DataFormatError(
            f"{where}: file_ending {ending!r} is not an ending mper reads; it reads {supported_endings()}: "
            "convert the images (e.g. with SimpleITK) and set file_ending"
        )

    def files_of(folder: Path) -> list[Path]:
        return _case_files(folder, ending, where if layout == NNUNET else None) if folder.is_dir() else []

    def listed(folder: Path) -> dict[str, tuple[Path, ...]]:
        files = files_of(folder)
        return _channel_files(files, ending, len(channels)) if layout == NNUNET else _volume_files(files, ending)

    if layout == NNUNET:
        train_images = listed(source / IMAGES_TRAIN)
        train_labels = _label_files(files_of(source / LABELS_TRAIN), ending, train_images)
        test_images = listed(source / IMAGES_TEST)
    else:
        train_images, train_labels, test_images = _msd_cases(
            source, document, where, files_of(source / IMAGES_TRAIN), files_of(source / LABELS_TRAIN)
        )
    test_labels = _label_files(files_of(source / LABELS_TEST), ending, test_images)
    if not train_labels:
        naming = channel_file_name("<case>", 0, ending) if layout == NNUNET else f"<case>{ending}"
        raise DataFormatError(
            f"{source / IMAGES_TRAIN} holds no labeled training case (an image {naming} with its label "
            f"<case>{ending} in {LABELS_TRAIN}/); mper needs labeled cases to learn from"
        )
    declared = document.get("numTraining")
    if isinstance(declared, int) and not isinstance(declared, bool) and declared != len(train_labels):
        # nnU-Net refuses such a dataset; here the unlabeled images may explain it, so a warning names both counts
        log.warning(
            "%s: numTraining is %d, but %d training case(s) have a label (%d image(s) in %s/ have none and train "
            "as unlabeled scans): check that no label or image is missing",
            where,
            declared,
            len(train_labels),
            len(train_images) - len(train_labels),
            IMAGES_TRAIN,
        )
    extra = [listed(Path(folder)) for folder in (source / IMAGES_UNLABELED, unlabeled) if folder is not None]
    if unlabeled is not None and not Path(unlabeled).is_dir():
        raise MissingFileError(f"unlabeled folder {unlabeled} not found; pass a folder of images named as imagesTr")
    cases: dict[str, RawCase] = {}

    def add(
        images: Mapping[str, tuple[Path, ...]], labels: Mapping[str, Path], labeled_role: str, unlabeled_role: str
    ) -> None:
        for name, files in sorted(images.items()):
            if name in cases:
                if files[0].resolve() == cases[name].images[0].resolve():  # --unlabeled at one of the dataset's folders
                    raise DataFormatError(
                        f"{files[0]}: read twice, as an unlabeled scan of --unlabeled {unlabeled} and as a case of "
                        f"{source}; --unlabeled must be a folder of other scans than the dataset's"
                    )
                raise DataFormatError(
                    f"{files[0]}: case {name} is there twice (also {cases[name].images[0]}); "
                    "give every case its own name"
                )
            unlistable = why_unlistable(name)
            if unlistable:
                raise DataFormatError(
                    f"{files[0]}: the case name {name!r} cannot be written to the imported dataset's case lists "
                    f"({unlistable}); rename the case's files (its image files and any label file)"
                )
            label = labels.get(name)
            cases[name] = RawCase(name, files, label, labeled_role if label is not None else unlabeled_role)

    add(train_images, train_labels, LABELED, UNLABELED)
    for folder in extra:
        add(folder, {}, UNLABELED, UNLABELED)
    add(test_images, test_labels, TEST, TEST)
    unscored = sorted(set(test_images) - set(test_labels))
    if unscored:
        log.warning(
            "%s: %d of %d test image(s) have no label in %s/ and are not imported, so not scored: %s "
            "(mper-predict segments them)",
            source / IMAGES_TEST,
            len(unscored),
            len(test_images),
            LABELS_TEST,
            listed_names(unscored),
        )
    name = str(document.get("name") or source.resolve().name)
    return RawDataset(source, layout, name, channels, normalization, class_names, ending, tuple(cases.values()))


#: What reading a damaged NIfTI file raises: nibabel's own error for a bad header, and, for
#: voxels cut short (an interrupted copy), EOFError or zlib.error (.nii.gz) and OSError (.nii).
NIFTI_READ_ERRORS = (ImageFileError, OSError, EOFError, ValueError, zlib.error)


#: The header fixes nibabel has reported (each once per process, naming the first file).
_HEADER_FIXES_SAID: set[str] = set()


class _HeaderFixes(logging.Filter):
    """Holds back what nibabel logs while it reads a header (a fix such as "pixdim[1,2,3]
    should be positive; setting to abs of pixdim values", without the file's name, once per
    file read), for :func:`load_nifti` to say once, naming the file."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.messages.append(record.getMessage())
        return False


def load_scan(path: Path) -> nib.Nifti1Image:
    """The image at ``path``: NIfTI through :func:`load_nifti`, the other endings of
    :data:`~mper.data.image_files.IMAGE_ENDINGS` through SimpleITK as an in-memory NIfTI image
    of the same array order and world coordinates (:func:`mper.data.image_files.read_itk_image`)."""
    if is_nifti(path) or image_ending(path.name) is None:
        return load_nifti(path)
    return read_itk_image(path)


def scan_shape(path: Path) -> tuple[int, ...] | None:
    """The array shape of the image file ``path`` from its header (a natural image's colours
    last, ``(x, y, 1, 3)`` for RGB); ``None`` when it cannot be read."""
    if is_nifti(path) or image_ending(path.name) is None:
        try:
            return tuple(load_nifti(path).shape)
        except DataFormatError:
            return None
    return itk_shape(path)


def load_nifti(path: Path) -> nib.Nifti1Image:
    """The NIfTI image at ``path``, its header read (nibabel reads the voxels only when asked:
    :func:`nifti_voxels`); :class:`~mper.errors.DataFormatError` naming the file otherwise.
    A fix nibabel makes to a header is logged once, naming the first file that needed it."""
    nibabel_log = logging.getLogger("nibabel.global")
    fixes = _HeaderFixes()
    nibabel_log.addFilter(fixes)
    try:
        scan = nib.load(path)
    except NIFTI_READ_ERRORS as error:
        raise DataFormatError(f"{path}: not a readable NIfTI file ({error}); replace it") from error
    finally:
        nibabel_log.removeFilter(fixes)
    for message in fixes.messages:
        if message not in _HEADER_FIXES_SAID:
            _HEADER_FIXES_SAID.add(message)
            log.warning("%s: %s (nibabel reading its header; said once, for the first such file)", path, message)
    if not isinstance(scan, nib.Nifti1Image):  # Nifti2Image derives from Nifti1Image
        raise DataFormatError(f"{path}: a {type(scan).__name__}, not a NIfTI image")
    return scan


def nifti_voxels(scan: nib.Nifti1Image, path: Path, dtype: type | None = None) -> np.ndarray:
    """The voxels of ``scan`` (read from ``path``), as ``dtype`` when given (scaled by the
    header's slope and intercept); a file cut short, or voxels that are not one real number
    each (RGB colours, complex values), raise :class:`~mper.errors.DataFormatError` naming it."""
    stored = np.dtype(scan.get_data_dtype())  # type: ignore[no-untyped-call]
    if stored.kind == "V":  # RGB24, RGBA32: a record of colours per voxel
        raise DataFormatError(
            f"{path}: its voxels are colours ({', '.join(stored.names or ()) or 'a record'} per voxel), not one number "
            "each; write each colour to a channel file of its own (<case>_0000, <case>_0001, ...: RGB as three "
            "channels), or convert the image to grey values"
        )
    if stored.kind == "c":  # a complex MR image: its real part alone would be read without a word
        raise DataFormatError(
            f"{path}: its voxels are complex numbers ({stored}), not one real number each; write the magnitude "
            "(or the real and imaginary parts as two channel files)"
        )
    try:
        return np.asarray(scan.dataobj, dtype=dtype)
    except NIFTI_READ_ERRORS as error:
        raise DataFormatError(f"{path}: not a readable NIfTI file ({error}); replace it") from error


#: What to do with an image file of several channels (or more axes).
_IMAGE_FIX = (
    "write each channel to a file of its own (nnU-Net: <case>_0000, <case>_0001, ...) or, in the Decathlon layout, "
    "list every channel in dataset.json's modality"
)
#: How far from a whole number (relative to it, at least 1) a value of a float label may be
#: and still be read as that class: float32 rounding, as of a header's scale factor.
LABEL_ROUNDING = 8 * float(np.finfo(np.float32).eps)
#: What a label file holds.
_A_LABEL = "a label is one 3D map of class values (0, 1, ...)"


def _spatial(array: np.ndarray, path: Path, what: str, fix: str) -> np.ndarray:
    """A 3D array: a 2D image gains a last axis of one slice, one with trailing axes of one
    beyond the third (``(x, y, z, 1)``, as some tools write every volume, or ITK's
    ``(x, y, z, 1, 1)``) loses them; several channels or volumes in one file are refused,
    saying what to do (``fix``)."""
    volume = without_trailing_ones(array)
    if volume.ndim == 2:
        return volume[:, :, None]
    if volume.ndim == 3:
        return volume
    raise DataFormatError(
        f"{path}: {what} has shape {array.shape}, expected one 3D volume (x, y, z), or with trailing axes of one "
        f"((x, y, z, 1), (x, y, z, 1, 1)); {fix}"
    )


def without_trailing_ones(array: np.ndarray) -> np.ndarray:
    """``array`` without its trailing axes of one beyond the third: the 3D volume of an
    ``(x, y, z, 1)`` file, as some tools write every volume, or of ITK's ``(x, y, z, 1, 1)``."""
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return array


def _grid(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(spacing, direction, origin) of a voxel-to-world ``affine``: the length of each array
    axis's step (mm), its unit vector (a column per axis) and the first voxel's position."""
    steps = np.asarray(affine, dtype=np.float64)[:3, :3]
    spacing = np.linalg.norm(steps, axis=0)
    return spacing, steps / np.where(spacing > 0, spacing, 1.0), np.asarray(affine, dtype=np.float64)[:3, 3]


def _values(values: np.ndarray, precision: float) -> str:
    """``(a, b, c)`` with one decimal more than ``precision`` needs."""
    decimals = max(1, int(np.ceil(-np.log10(precision))) + 1) if precision > 0 else 6
    return "(" + ", ".join(f"{round(float(value), decimals) + 0.0:.{decimals}f}" for value in values) + ")"


def _stored_otherwise(
    shape: tuple[int, ...], affine: np.ndarray, reference_shape: tuple[int, ...], reference_affine: np.ndarray
) -> str:
    """How an array of ``shape`` and ``affine`` stores the voxels of ``reference``'s grid in
    another orientation (its axes mirrored or in another order, e.g. LPS against RAS):
    "mirrored along array axis 0", ...; "" when it stores them as ``reference`` does, or
    holds other voxels."""
    if len(shape) != 3 or len(reference_shape) != 3:
        return ""
    affine, reference_affine = (np.asarray(matrix, dtype=np.float64) for matrix in (affine, reference_affine))
    try:
        transform = ornt_transform(  # type: ignore[no-untyped-call]
            io_orientation(affine),  # type: ignore[no-untyped-call]
            io_orientation(reference_affine),  # type: ignore[no-untyped-call]
        )
    except ValueError:  # an axis without a direction (a degenerate affine)
        return ""
    order = [int(axis) for axis in transform[:, 0]]
    # mirroring an axis of one voxel (a 2D image's slice) leaves every voxel where it was
    mirrored = [axis for axis in range(3) if transform[axis, 1] < 0 and shape[axis] > 1]
    if order == [0, 1, 2] and not mirrored:
        return ""
    reoriented_shape = [0, 0, 0]
    for axis, size in zip(order, shape):
        reoriented_shape[axis] = size
    if tuple(reoriented_shape) != tuple(reference_shape):
        return ""
    reoriented = affine @ inv_ornt_aff(transform, shape)  # type: ignore[no-untyped-call]
    corners = np.array(np.meshgrid(*[[0, size - 1] for size in reference_shape], indexing="ij")).reshape(3, -1)
    corners = np.vstack([corners, np.ones(corners.shape[1])])
    moved = np.abs((reoriented - reference_affine) @ corners)[:3].max()
    if moved > GEOMETRY_TOLERANCE * float(np.linalg.norm(reference_affine[:3, :3], axis=0).min()):
        return ""
    how = []
    if order != [0, 1, 2]:  # its axis i holds the reference's axis order[i]
        how.append(f"transposed to axes {tuple(order)}")
    if mirrored:
        axes = "axis" if len(mirrored) == 1 else "axes"
        how.append(f"mirrored along its array {axes} {' and '.join(map(str, mirrored))}")
    return ", ".join(how)


#: Which files :func:`check_geometry` says must share one voxel grid, by default.
CASE_FILES = "the channels and the label of a case"


def _forms_disagree(path: Path, scan: nib.Nifti1Image, shape: tuple[int, ...]) -> str:
    """A note naming ``path`` when its header's sform and qform, both set, place a voxel of its
    ``shape`` more than :data:`GEOMETRY_TOLERANCE` of a voxel apart; "" otherwise (also for a
    qform that cannot be read: nibabel, reading the sform, loads such a file)."""
    header = scan.header
    if int(header["sform_code"]) == 0 or int(header["qform_code"]) == 0 or len(shape) != 3:
        return ""
    sform = np.asarray(header.get_sform(), dtype=np.float64)  # type: ignore[no-untyped-call]
    try:
        qform = np.asarray(header.get_qform(), dtype=np.float64)  # type: ignore[no-untyped-call]
    except ValueError:  # quaternion parameters beyond a unit quaternion: the note is left out, not the refusal
        return ""
    corners = np.array(np.meshgrid(*[[0, size - 1] for size in shape], indexing="ij")).reshape(3, -1)
    moved = float(np.abs((sform - qform) @ np.vstack([corners, np.ones(corners.shape[1])]))[:3].max())
    voxel = float(np.linalg.norm(sform[:3, :3], axis=0).min())
    if moved <= GEOMETRY_TOLERANCE * voxel:
        return ""
    return (
        f"; note that {path.name}'s sform and qform disagree (by up to {moved:.3f} mm): mper reads the sform, as "
        "nibabel does, while ITK-based tools (SimpleITK, ITK-SNAP) may show the qform; make them agree"
    )


def _placed_nowhere(path: Path, scan: nib.Nifti1Image, reference: Path) -> str:
    """A note naming ``path`` when its header places it nowhere (the identity affine, or
    neither an sform nor a qform), as a map saved without its image's header; "" otherwise."""
    header = scan.header
    if int(header["sform_code"]) == 0 and int(header["qform_code"]) == 0:
        how, example = "neither an sform nor a qform (nibabel places it by its voxel sizes alone)", "None"
    elif np.allclose(scan.affine, np.eye(4)):
        how, example = "the identity affine (1 mm voxels from the origin)", "np.eye(4)"
    else:
        return ""
    return (
        f"; note that {path.name}'s header holds {how}, as a map saved without its image's header does "
        f"(nib.Nifti1Image(array, {example})): if it holds {reference.name}'s voxels, save it with "
        f"{reference.name}'s affine"
    )


def check_geometry(
    path: Path,
    shape: tuple[int, ...],
    affine: np.ndarray,
    reference: Path,
    reference_shape: tuple[int, ...],
    reference_affine: np.ndarray,
    together: str = CASE_FILES,
    scans: Sequence[nib.Nifti1Image] = (),
) -> None:
    """Refuse ``path`` unless its voxel grid is ``reference``'s: the same shape, and no voxel
    placed more than :data:`GEOMETRY_TOLERANCE` of a voxel apart by the spacing, the origin
    or the direction, each naming the part, both values and the file; the same voxels stored
    in another orientation are named as such. ``together`` names the files that must share
    a grid (:data:`CASE_FILES`: a case's channels and label). ``scans``, the images of
    ``path`` and ``reference`` when given, add to a refusal a note naming a file whose sform
    and qform disagree (tools that read the other one show the files aligned), and one when
    ``path`` alone is placed nowhere (a map saved without its image's header)."""
    try:
        _check_grid(path, shape, affine, reference, reference_shape, reference_affine, together)
    except DataFormatError as refused:
        notes = "".join(_forms_disagree(*named, shape) for named in zip((path, reference), scans))
        if scans and not _placed_nowhere(reference, scans[1], path):
            notes += _placed_nowhere(path, scans[0], reference)
        if not notes:
            raise
        raise DataFormatError(f"{refused}{notes}") from None


def _check_grid(
    path: Path,
    shape: tuple[int, ...],
    affine: np.ndarray,
    reference: Path,
    reference_shape: tuple[int, ...],
    reference_affine: np.ndarray,
    together: str,
) -> None:
    """:func:`check_geometry` without the notes on the headers."""
    stored = _stored_otherwise(shape, affine, reference_shape, reference_affine)
    if stored:
        codes, reference_codes = (
            "".join(aff2axcodes(matrix))  # type: ignore[no-untyped-call]
            for matrix in (affine, reference_affine)
        )
        raise DataFormatError(
            f"{path}: holds the voxels of {reference.name}'s grid in another orientation ({codes}, not "
            f"{reference_codes}: its array is {reference.name}'s {stored}); mper does not reorient scans: save it in "
            f"{reference.name}'s orientation (e.g. nibabel's as_reoriented, or resample it onto {reference.name})"
        )
    if shape != reference_shape:
        raise DataFormatError(
            f"{path}: shape {shape} differs from {reference.name}'s {reference_shape}; {together} must share one "
            "voxel grid: resample them to one grid"
        )
    spacing, direction, origin = _grid(affine)
    reference_spacing, reference_direction, reference_origin = _grid(reference_affine)
    voxel = float(reference_spacing.min())
    tolerance = GEOMETRY_TOLERANCE * voxel
    # a voxel n steps along an axis moves by n times that axis's change of step; an axis of one voxel (a 2D
    # image's slice, 999 mm thick as nnU-Net writes it, or 1 mm in a file of two axes) takes no step
    steps = np.asarray(reference_shape, dtype=np.float64) - 1
    spacing_moves = steps * np.abs(spacing - reference_spacing)
    direction_moves = steps * reference_spacing * np.linalg.norm(direction - reference_direction, axis=0)
    origin_move = float(np.abs(origin - reference_origin).max())
    allowed = f"more than the {_values(np.array([tolerance]), tolerance)[1:-1]} mm ({GEOMETRY_TOLERANCE:.0%} of a "
    allowed += f"{_values(np.array([voxel]), tolerance)[1:-1]} mm voxel) that {together} may"
    advice = "resample them to one voxel grid (or fix the header)"
    if spacing_moves.max() > tolerance:
        precision = tolerance / float(steps[int(spacing_moves.argmax())])
        raise DataFormatError(
            f"{path}: its spacing {_values(spacing, precision)} mm differs from {reference.name}'s "
            f"{_values(reference_spacing, precision)} mm, which places voxels up to "
            f"{_values(np.array([spacing_moves.max()]), tolerance)[1:-1]} mm apart, {allowed} differ by; {advice}"
        )
    if origin_move > tolerance:
        raise DataFormatError(
            f"{path}: its origin {_values(origin, tolerance)} mm differs from {reference.name}'s "
            f"{_values(reference_origin, tolerance)} mm by {_values(np.array([origin_move]), tolerance)[1:-1]} mm, "
            f"{allowed} differ by; {advice}"
        )
    if direction_moves.max() > tolerance:
        axis = int(direction_moves.argmax())
        precision = tolerance / float(steps[axis] * reference_spacing[axis])
        raise DataFormatError(
            f"{path}: its direction of array axis {axis} {_values(direction[:, axis], precision)} differs from "
            f"{reference.name}'s {_values(reference_direction[:, axis], precision)}, which places voxels up to "
            f"{_values(np.array([direction_moves.max()]), tolerance)[1:-1]} mm apart, {allowed} differ by; {advice}"
        )


def _file_channels(scan: nib.Nifti1Image, path: Path) -> np.ndarray:
    """The channels of one nnU-Net channel file as (C, X, Y, Z) float32: one, or a natural
    image's colours (an RGB file three, as nnU-Net's NaturalImage2DIO reads them)."""
    data = nifti_voxels(scan, path, np.float32)
    if components(scan) > 1:  # (x, y, 1, components)
        return np.ascontiguousarray(np.moveaxis(data, 3, 0))
    return _spatial(data, path, "the image", _IMAGE_FIX)[None]


def read_image(
    case: RawCase, channels: int, expected: str = "dataset.json's channel_names"
) -> tuple[np.ndarray, nib.Nifti1Image]:
    """The channels of ``case`` as (C, X, Y, Z) float32, and the first file's image (for
    its header and affine); shapes, affines and finiteness checked. The channels of a case of
    natural images (an RGB file holds three) must number ``channels``, as ``expected`` says."""
    first = load_scan(case.images[0])
    if len(case.images) == 1 and not is_natural_image(case.images[0]):  # MSD: one file, 4D for several channels
        data = nifti_voxels(first, case.images[0], np.float32)
        if channels > 1:
            if data.ndim != 4 or data.shape[3] != channels:
                raise DataFormatError(
                    f"{case.images[0]}: shape {data.shape}, expected a 4D image (x, y, z, {channels} channels) as "
                    "dataset.json's modality lists"
                )
            image = np.ascontiguousarray(np.moveaxis(data, 3, 0))
        else:
            image = _spatial(data, case.images[0], "the image", _IMAGE_FIX)[None]
        paths = case.images * len(image)
    else:
        volumes = [_file_channels(first, case.images[0])]
        for path in case.images[1:]:
            scan = load_scan(path)
            volume = _file_channels(scan, path)
            spatial, first_spatial = volume.shape[1:], volumes[0].shape[1:]
            check_geometry(path, spatial, scan.affine, case.images[0], first_spatial, first.affine, scans=(scan, first))
            volumes.append(volume)
        held = sum(len(volume) for volume in volumes)
        if held != channels:
            each = ", ".join(f"{path.name}: {len(volume)}" for path, volume in zip(case.images, volumes))
            raise DataFormatError(
                f"{case.images[0]}: case {case.name}'s image file(s) hold {held} channel(s) ({each}), but {channels} "
                f"are expected ({expected}); a grey image holds 1 channel, an RGB image 3, an RGBA image 4: give the "
                f"case files of {channels} channel(s) in all"
            )
        image = np.concatenate(volumes)
        paths = tuple(path for path, volume in zip(case.images, volumes) for _ in volume)
    for path, channel in zip(paths, image):
        check_finite(path, channel)
    return image, first


def read_label_map(path: Path, role: str = "label") -> tuple[np.ndarray, nib.Nifti1Image]:
    """The label map at ``path`` as one 3D array of whole values (its stored type: a float
    map of whole values is read as such) and its image (header, affine); a 4D map, a
    non-finite or a non-integer value is refused, naming the file and calling the map its
    ``role`` ("label", "prediction")."""
    scan = load_scan(path)
    if components(scan) > 1:
        raise DataFormatError(
            f"{path}: the {role} is a colour image ({components(scan)} components per pixel); {_A_LABEL}: save it as "
            "a one-component (grey) image of class values (a palette PNG is read as its colours, not its indices)"
        )
    data = nifti_voxels(scan, path)
    if data.ndim == 4 and data.shape[3] > 1:
        raise DataFormatError(f"{path}: a 4D {role} of shape {data.shape}; {_A_LABEL}: merge the channels into one map")
    label = _spatial(data, path, f"the {role}", f"{_A_LABEL}: save it with three axes")
    if not np.issubdtype(label.dtype, np.integer):
        check_finite(path, label, role)
        whole = np.round(label)
        # a scale factor in the header (scl_slope 0.1 over stored 10, 20, ...) leaves whole
        # classes off by the float32 rounding of the slope: those are the classes they mean
        fractional = np.abs(label - whole) > LABEL_ROUNDING * np.maximum(np.abs(whole), 1)
        if fractional.any():
            examples = ", ".join(str(value) for value in np.unique(label[fractional])[:3])  # as stored
            raise DataFormatError(
                f"{path}: the {role} holds non-integer values ({int(fractional.sum())} voxel(s), e.g. {examples}: "
                "a label map interpolated, or written with a scale factor?); write class values 0, 1, ..."
            )
        label = whole
    return label, scan


def check_declared(path: Path, label: np.ndarray, class_names: Sequence[str], declared_in: str = DATASET_JSON) -> None:
    """Refuse the label map ``label`` (read from ``path``) if it holds a value that is not
    one of the classes ``class_names`` (declared in ``declared_in``) numbers."""
    values = np.unique(label)
    undeclared = [int(value) for value in values if not 0 <= value < len(class_names)]
    if undeclared:
        # a binary mask as image editors save it: 0 and 255
        mask = " (a mask saved as 0 and 255: write 0 and 1)" if set(values.tolist()) <= {0, 255} else ""
        raise DataFormatError(
            f"{path}: label value(s) {undeclared} are not declared in {declared_in} (labels: "
            f"{', '.join(f'{index} {name}' for index, name in enumerate(class_names))}); declare them or relabel{mask}"
        )


def read_label(
    path: Path, shape: tuple[int, ...], reference: Path, reference_scan: nib.Nifti1Image, class_names: Sequence[str]
) -> np.ndarray:
    """The label map at ``path`` as uint8, checked against the grid of the image ``reference``
    (its first channel file, read as ``reference_scan``, of spatial ``shape``) and the declared classes."""
    label, scan = read_label_map(path)
    check_geometry(
        path, label.shape, scan.affine, reference, shape, reference_scan.affine, scans=(scan, reference_scan)
    )
    check_declared(path, label, class_names)
    return label.astype(np.uint8)


def read_case(case: RawCase, dataset: RawDataset) -> Scan:
    """Read and check one case: its channels, and its label when it has one."""
    key = "channel_names" if dataset.layout == NNUNET else "modality"
    image, first = read_image(case, len(dataset.channels), f"{DATASET_JSON}'s {key}: {', '.join(dataset.channels)}")
    label = None
    if case.label is not None:
        label = read_label(case.label, image.shape[1:], case.images[0], first, dataset.class_names)
    return Scan(image, label, first.affine, scan_spacing(first, case.images[0]), first.header)


def scan_spacing(scan: nib.Nifti1Image, path: Path) -> tuple[float, float, float]:
    """The voxel spacing (mm) of the three spatial axes in ``scan``'s header (1 for a
    2D image's missing third axis).

    Refused where the header's voxel size (``pixdim``) and its affine's disagree, as a
    writer that set one and left the other leaves them: the affine places the voxels (the
    grids are checked against it) while the spacing resamples them and measures distances,
    so either would be wrong. An axis of one voxel (a 2D image's slice) is not compared:
    nothing is resampled or measured along it."""
    zooms = tuple(float(zoom) for zoom in scan.header.get_zooms()[:3])  # type: ignore[no-untyped-call]
    spacing = (zooms + (1.0,) * 3)[:3]
    if min(spacing) <= 0 or not all(np.isfinite(spacing)):
        raise DataFormatError(f"{path}: voxel spacing {spacing} in the header; it must be positive")
    axes = len(zooms)
    from_affine = np.linalg.norm(np.asarray(scan.affine, dtype=np.float64)[:3, :axes], axis=0)
    measured = np.asarray(scan.shape[:axes]) > 1
    # ITK's geometry (NRRD, MetaImage) gives a sheared grid a voxel size that agrees with its affine: checked alone
    columns = (np.asarray(scan.affine, dtype=np.float64)[:3, :axes] / from_affine)[:, measured]
    if np.any(np.abs(np.triu(columns.T @ columns, 1)) > GEOMETRY_TOLERANCE):
        raise DataFormatError(
            f"{path}: its affine is sheared (its voxel axes are not at right angles, as a CT acquired with a "
            "tilted gantry is stored): mper, as nnU-Net, reads grids of right angles; resample it onto one "
            "(e.g. dcm2niix's gantry tilt correction) and save it"
        )
    if np.any(measured & (np.abs(from_affine - np.asarray(zooms)) > GEOMETRY_TOLERANCE * from_affine)):
        shown = (", ".join(f"{value:g}" for value in values) for values in (zooms, from_affine))
        raise DataFormatError(
            f"{path}: its header's voxel size (pixdim) ({next(shown)}) mm disagrees with the voxel size of its "
            f"affine ({next(shown)}) mm, which places the voxels; fix the header (e.g. with nibabel, "
            "image.set_qform(image.affine), which sets pixdim from the affine, then save it)"
        )
    return spacing[0], spacing[1], spacing[2]
