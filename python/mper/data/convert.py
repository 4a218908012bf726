"""Conversion of the raw public downloads into the preprocessed layouts
(docs/method.md, "Data layouts").

* ACDC: the challenge release, ``patientXXX/patientXXX_frameYY.nii.gz`` with its
  ``patientXXX_frameYY_gt.nii.gz``, becomes the SSL4MIS layout; of a download's
  ``training/`` and ``testing/`` folders only ``training/`` is converted, as SSL4MIS did.
  A NIfTI volume is stored with its axes reversed, as SSL4MIS's SimpleITK reading stores
  it: NIfTI ``(W, H, S)`` becomes ``(S, H, W)`` (slice ``s`` is ``volume[:, :, s].T``),
  min-max normalised per volume.
* LA: the 2018 atrial segmentation challenge, ``<case>/lgemri.nrrd`` with
  ``<case>/laendo.nrrd`` (under ``Training Set/`` when ``source`` holds one: its
  ``Testing Set/`` is left out, as UA-MT's split does), becomes the UA-MT layout:
  label ``laendo == 255``, the whole scan z-scored, then cropped in (H, W) around the
  atrium with a random 10-19 voxel margin, the box first enlarged to at least 112 x 112;
  the through-plane axis is kept whole.

The split is copied from the list files of ``split_from`` when given (every name must
exist in the source), otherwise drawn per patient from ``seed``: ACDC 70/10/20
train/val/test, LA 80/20 train/test. Each dataset's spec (:mod:`mper.datasets`) names its
converter; :func:`mper.datasets.convert` runs it by name. Reading the LA download needs
``pynrrd`` (``pip install 'mper[convert]'``).
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
from tqdm import tqdm

from mper.data.acdc import ACDC_NORMALIZATION, ACDC_NUM_CLASSES, patient_id, write_acdc_lists, write_acdc_volume
from mper.data.files import check_finite, listed_names, read_list
from mper.data.la import LA_CASE_FILE, LA_NORMALIZATION, LA_PATCH_SIZE, write_la_case, write_la_lists
from mper.data.preprocess import normalize_intensity
from mper.data.raw_scans import NIFTI_READ_ERRORS, load_nifti
from mper.data.splits import ACDC_SPLIT_FRACTIONS, LA_SPLIT_FRACTIONS, partition
from mper.errors import ConfigError, DataFormatError, MissingFileError

log = logging.getLogger(__name__)

ACDC_FRAME_FILE = re.compile(r"^(patient\d+_frame\d+)\.nii(\.gz)?$")
#: Ends the name of an ACDC frame's label file, beside the frame: ``patient001_frame01_gt.nii.gz``.
ACDC_LABEL_MARK = "_gt"
ACDC_LABEL_FILE = re.compile(r"^(patient\d+_frame\d+)_gt\.nii(\.gz)?$")
#: A patient's description in the ACDC download, naming its labeled frames (``ED: 1``, ``ES: 12``).
ACDC_INFO_FILE = "Info.cfg"
ACDC_INFO_FRAMES = ("ED", "ES")
#: What to do about a damaged ACDC download (a file missing from a patient's folder).
ACDC_INCOMPLETE = (
    "the download is incomplete: unpack it again, or move that patient's folder out of --source to convert the others"
)
#: The ending of the 4D cine series the ACDC download keeps beside a patient's frames.
ACDC_CINE_MARK = "_4d"
LA_IMAGE_FILE = "lgemri.nrrd"
LA_LABEL_FILE = "laendo.nrrd"
LA_CROP_MARGIN = (10, 20)  # random margin in voxels, upper bound excluded
#: How many folders deep :func:`holds_files` looks: the downloads nest their cases two or
#: three folders down (``database/training/patientXXX/``, ``<zip folder>/Training Set/<case>/``).
RAW_SEARCH_DEPTH = 3

Reader = Callable[[Path], np.ndarray]
ReadErrors = tuple[type[Exception], ...]


def _check_listed(list_path: Path, names: Sequence[str], known: Collection[str]) -> list[str]:
    """``names`` as a list, after checking that each is in ``known``."""
    unknown = [name for name in names if name not in known]
    if unknown:
        raise DataFormatError(
            f"{list_path} names {len(unknown)} case(s) absent from the converted data, "
            f"e.g. {unknown[:3]}; expected only names of the source download"
        )
    return list(names)


def _read_listed(list_path: Path, known: Collection[str], case_file: str | None = None) -> list[str]:
    """The names of a list file, each of which must be in ``known``."""
    return _check_listed(list_path, read_list(list_path, case_file), known)


def _read_volume(path: Path, reader: Reader, errors: ReadErrors, expected: str) -> np.ndarray:
    """Read a 3-D volume, turning the reader's ``errors`` into :class:`DataFormatError`."""
    try:
        volume = np.asarray(reader(path))
    except errors as error:
        raise DataFormatError(f"{path} could not be read ({error}): expected {expected}") from error
    if volume.ndim != 3:
        raise DataFormatError(f"{path} has shape {volume.shape}: expected {expected}")
    return volume


def _read_pair(
    image_path: Path, label_path: Path, reader: Reader, errors: ReadErrors, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """Read an image and its label volume (both 3-D, same shape)."""
    # a NaN voxel would make the whole normalised volume NaN, refused later in the converted file
    image = check_finite(image_path, _read_volume(image_path, reader, errors, f"a 3-D {what} image"))
    label = check_finite(label_path, _read_volume(label_path, reader, errors, f"a 3-D {what} label volume"), "label")
    if image.shape != label.shape:
        raise DataFormatError(
            f"{label_path} has shape {label.shape} but its image {image_path} has {image.shape}; "
            "expected one label per voxel"
        )
    return image, label


def _pair_file(image_path: Path, label_name: str, hint: str = "") -> Path:
    """The label file ``label_name`` beside ``image_path``, which must exist (``hint``:
    what to do, added to the refusal)."""
    label_path = image_path.with_name(label_name)
    if not label_path.is_file():
        raise MissingFileError(
            f"{label_path} not found: expected the label volume of {image_path}" + (f"; {hint}" if hint else "")
        )
    return label_path


def holds_files(folder: Path, patterns: Sequence[str], depth: int = RAW_SEARCH_DEPTH) -> bool:
    """Whether a file matching one of ``patterns`` (relative globs) lies in ``folder`` or
    up to ``depth`` folders below it; stops at the first one found, so that a large folder
    answers quickly when it holds one."""
    for level in range(depth + 1):
        for pattern in patterns:
            if next(iter(folder.glob("/".join(["*"] * level + [pattern]))), None) is not None:
                return True
    return False


# ACDC


def holds_acdc_download(folder: Path) -> bool:
    """Whether ``folder`` holds raw ACDC patients (``patientXXX/Info.cfg`` or
    ``patientXXX_frameYY.nii.gz`` files, possibly under ``training/`` or ``database/``):
    what :func:`convert_acdc` reads."""
    return holds_files(folder, ("patient*/Info.cfg", "patient*_frame*.nii*"))


def _read_nifti(path: Path) -> np.ndarray:
    # load_nifti says a header fix nibabel makes (ACDC's qfac) once, naming the file,
    # rather than nibabel's bare line for every file read.
    image: np.ndarray = load_nifti(path).get_fdata(dtype=np.float32)
    return image


def find_acdc_frames(source: Path) -> dict[str, tuple[Path, Path]]:
    """``{frame name: (image path, label path)}`` of every labeled ACDC frame under
    ``source``. A patient none of whose frames has a label (the testing patients of the
    releases that kept their labels back) is left out, named in one logged line; a frame
    without its label beside others that have theirs is refused (a damaged download)."""
    images: dict[str, Path] = {}
    for path in sorted(source.rglob("patient*_frame*.nii*")):
        match = ACDC_FRAME_FILE.match(path.name)
        if not match:
            continue
        name = match.group(1)
        if name in images:
            raise DataFormatError(f"frame {name} appears twice: {images[name]} and {path}")
        images[name] = path
    labels = {
        name: path.with_name(path.name.replace(name, f"{name}{ACDC_LABEL_MARK}")) for name, path in images.items()
    }
    labeled_patients = {patient_id(name) for name, label in labels.items() if label.is_file()}
    unlabeled = sorted(name for name in images if patient_id(name) not in labeled_patients)
    if unlabeled and labeled_patients:
        patients = sorted({patient_id(name) for name in unlabeled})
        log.warning(
            "left out %d patient(s) none of whose frames has its <frame>%s label file (a release that keeps "
            "the testing labels back): %s",
            len(patients),
            ACDC_LABEL_MARK,
            listed_names(patients),
        )
    frames = {
        name: (path, _pair_file(path, labels[name].name, ACDC_INCOMPLETE))
        for name, path in images.items()
        if name not in unlabeled
    }
    _check_acdc_patients(source, images, {patient_id(name) for name in frames})
    if images and not frames:
        raise MissingFileError(
            f"none of the {len(images)} ACDC frames under {source} has its label file beside it "
            f"(patientXXX_frameYY{ACDC_LABEL_MARK}.nii.gz), e.g. no {labels[next(iter(images))]}; training needs "
            "the labeled training patients of the download"
        )
    if not frames:
        raise MissingFileError(
            f"no ACDC frame under {source}: expected patientXXX/patientXXX_frameYY.nii.gz "
            "files with their patientXXX_frameYY_gt.nii.gz labels"
        )
    return frames


def _check_acdc_patients(source: Path, images: dict[str, Path], converted: set[str]) -> None:
    """Refuse a damaged download before anything is written: a label file ``<frame>_gt``
    without its frame beside it, and a frame that a converted patient's ``Info.cfg`` names
    (``ED``, ``ES``) but that is missing (a patient whose folder holds no frame at all
    too). Without them the patient was converted with fewer frames, or left out, and the
    split, the slices and the test set changed with exit 0."""
    for label in sorted(source.rglob(f"patient*_frame*{ACDC_LABEL_MARK}.nii*")):
        match = ACDC_LABEL_FILE.match(label.name)
        if match and match.group(1) not in images:
            raise MissingFileError(
                f"{label} has no frame {match.group(1)}.nii.gz beside it, whose label it is; {ACDC_INCOMPLETE}"
            )
    with_frames = {patient_id(name) for name in images}
    for info in sorted(source.rglob(ACDC_INFO_FILE)):
        patient = info.parent.name
        if not re.fullmatch(r"patient\d+", patient) or (patient in with_frames and patient not in converted):
            continue  # not a patient's folder, or a patient without labels, left out and named
        for phase, number in _info_frames(info).items():
            name = f"{patient}_frame{number:02d}"
            if name not in images:
                raise MissingFileError(
                    f"{info} names frame {number} as {phase}, but {info.parent} holds no {name}.nii.gz; "
                    f"{ACDC_INCOMPLETE}"
                )


def _info_frames(info: Path) -> dict[str, int]:
    """``{"ED": 1, "ES": 12}``: the frames a patient's ``Info.cfg`` names (an entry that is
    not a whole number is not checked)."""
    frames = {}
    for line in info.read_text(errors="replace").splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key in ACDC_INFO_FRAMES and value.isdigit():
            frames[key] = int(value)
    return frames


def load_acdc_nifti(image_path: Path, label_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one raw ACDC frame as (image float32 (S, H, W) in [0, 1], label uint8 (S, H, W)):
    the NIfTI axes reversed, as SimpleITK's arrays of the files (SSL4MIS's release) hold them."""
    image, label = _read_pair(image_path, label_path, _read_nifti, NIFTI_READ_ERRORS, "ACDC NIfTI (W, H, S)")
    label = np.rint(label)
    if label.min() < 0 or label.max() >= ACDC_NUM_CLASSES:
        raise DataFormatError(
            f"{label_path} holds values {np.unique(label)[:8]}: expected ACDC classes 0..{ACDC_NUM_CLASSES - 1}"
        )
    image = normalize_intensity(np.transpose(image, (2, 1, 0)), ACDC_NORMALIZATION)
    return image, np.transpose(label, (2, 1, 0)).astype(np.uint8)


def _acdc_split(
    frames: dict[str, tuple[Path, Path]], split_from: Path | None, seed: int
) -> tuple[list[str], list[str], list[str], list[str] | None]:
    """(train, val, test frames, published train slices or None)."""
    if split_from is not None:
        return _published_acdc_split(frames, split_from)
    patients = sorted({patient_id(name) for name in frames})
    parts = _drawn_split(patients, ACDC_SPLIT_FRACTIONS, seed, "patient", ("train", "val", "test"))
    train, val, test = ([name for name in sorted(frames) if patient_id(name) in part] for part in parts)
    return train, val, test, None


def _drawn_split(
    names: Sequence[str], fractions: Sequence[float], seed: int, unit: str, parts: Sequence[str]
) -> list[list[str]]:
    """``names`` (each a ``unit``) drawn into ``parts`` of about ``fractions`` each; too few
    of them to give every part one (a case folder given as --source, say) is refused."""
    if len(names) < len(fractions):
        found = ", ".join(names)
        raise DataFormatError(
            f"--source holds {len(names)} {unit}(s) ({found}), too few to split into {'/'.join(parts)}, which takes "
            f"at least {len(fractions)}: give --source the folder that holds every {unit} folder"
        )
    return partition(names, fractions, np.random.default_rng([seed, 2]))


def _published_acdc_split(
    frames: dict[str, tuple[Path, Path]], split_from: Path
) -> tuple[list[str], list[str], list[str], list[str] | None]:
    """The split of the SSL4MIS list files in ``split_from``; training frames come from
    ``train.list`` or, without one, from the frames of ``train_slices.list``."""
    val, test = (_read_listed(split_from / name, frames) for name in ("val.list", "test.list"))
    slices_list, frames_list = split_from / "train_slices.list", split_from / "train.list"
    train_slices = read_list(slices_list) if slices_list.is_file() else None
    if frames_list.is_file():
        train = _read_listed(frames_list, frames)
    elif train_slices is not None:
        slice_frames = dict.fromkeys(name.rsplit("_slice_", 1)[0] for name in train_slices)
        train = _check_listed(slices_list, list(slice_frames), frames)
    else:
        raise MissingFileError(f"neither {slices_list} nor {frames_list} found: expected the training split")
    return train, val, test, train_slices


#: The download's folder of the 100 training patients, which SSL4MIS split 70/10/20.
ACDC_TRAINING_DIR = "training"


def _acdc_training_folder(source: Path) -> Path:
    """The download's ``training/`` folder when ``source`` holds one at any depth (``ACDC/``,
    ``database/``), else ``source``. The patients outside it, the testing ones that newer
    releases label, are left out (named in a logged line): SSL4MIS split the 100 training
    patients, and 150 would change what the split and the labeled counts mean."""
    return _training_folder(
        source, ACDC_TRAINING_DIR, "patient*_frame*.nii*", "SSL4MIS", "patient", "the download's database/ folder"
    )


def _training_folder(source: Path, name: str, case_file: str, split_by: str, unit: str, instead: str) -> Path:
    """The download's training folder ``name`` when ``source`` holds one at any depth, else
    ``source``; the ``unit`` folders outside it (those of a file matching ``case_file``: the
    download's testing cases) are named in a logged line and left out, as ``split_by``'s
    split does. Two such folders are refused, saying to give ``instead`` as --source."""
    trainings = [source / name] if (source / name).is_dir() else []
    trainings = trainings or sorted(
        path
        for path in source.rglob(name)
        if path.is_dir() and not any(part.startswith((".", "__MACOSX")) for part in path.relative_to(source).parts)
    )  # an archive unpacked on macOS leaves a copy of its folders under __MACOSX/
    if len(trainings) > 1:
        raise DataFormatError(
            f"--source {source} holds {len(trainings)} {name}/ folders "
            f"({', '.join(map(str, trainings))}); give --source {instead}"
        )
    if not trainings:
        return source
    training = trainings[0]
    outside = sorted(
        {
            found.parent.parent
            for found in source.rglob(case_file)
            if training not in found.parents and "__MACOSX" not in found.relative_to(source).parts
        }
    )
    if outside:
        log.warning(
            "converting the %ss of %s only, as %s's split does; left out those of %s (to convert them too, move "
            "their %s folders into %s)",
            unit,
            training,
            split_by,
            ", ".join(f"{folder}/" for folder in outside),
            unit,
            training,
        )
    return training


def convert_acdc(source: Path, out: Path, split_from: Path | None, seed: int, progress: bool = True) -> Path:
    """Convert a raw ACDC download (see the module docstring)."""
    frames = find_acdc_frames(_acdc_training_folder(source))
    train, val, test, published_slices = _acdc_split(frames, split_from, seed)
    training = set(train)
    written: dict[str, list[str]] = {}
    for name in tqdm(sorted(frames), desc="converting ACDC", disable=not progress):
        image, label = load_acdc_nifti(*frames[name])
        written[name] = write_acdc_volume(out, name, image, label, with_slices=name in training)
    all_slices = [name for frame in train for name in written[frame]]
    if published_slices is None or split_from is None:
        train_slices = all_slices
    else:
        train_slices = _check_listed(split_from / "train_slices.list", published_slices, set(all_slices))
    write_acdc_lists(out, train_slices, train, val, test)
    return out


# LA


def _nrrd() -> ModuleType:
    """The ``nrrd`` module (package ``pynrrd``), which only the LA converter needs."""
    try:
        return importlib.import_module("nrrd")
    except ImportError as error:
        raise ConfigError(
            "converting the LA download needs the NRRD reader pynrrd: pip install 'mper[convert]'"
        ) from error


def _read_nrrd(path: Path) -> np.ndarray:
    return np.asarray(_nrrd().read(str(path))[0])


def holds_la_download(folder: Path) -> bool:
    """Whether ``folder`` holds raw LA cases (``<case>/lgemri.nrrd``, possibly under
    ``Training Set/``): what :func:`convert_la` reads."""
    return holds_files(folder, (LA_IMAGE_FILE,))


#: The 2018 challenge's folder of the 100 labeled cases, which UA-MT split 80/20; its
#: ``Testing Set/`` holds scans without labels.
LA_TRAINING_DIR = "Training Set"


def find_la_cases(source: Path) -> dict[str, tuple[Path, Path]]:
    """``{case: (lgemri.nrrd path, laendo.nrrd path)}`` of every LA case under ``source``,
    or under the download's ``Training Set/`` when ``source`` holds one (the cases outside
    it, ``Testing Set/``'s, are named in a logged line and left out)."""
    source = _training_folder(source, LA_TRAINING_DIR, LA_IMAGE_FILE, "UA-MT", "case", "one of them")
    cases: dict[str, tuple[Path, Path]] = {}
    for path in sorted(source.rglob(LA_IMAGE_FILE)):
        case = path.parent.name
        if case in cases:
            raise DataFormatError(f"case {case} appears twice: {cases[case][0]} and {path}")
        cases[case] = (
            path,
            _pair_file(
                path,
                LA_LABEL_FILE,
                "the download is incomplete: unpack it again, or move that case's folder "
                "out of --source to convert the others",
            ),
        )
    if not cases:
        raise MissingFileError(
            f"no LA case under {source}: expected <case>/{LA_IMAGE_FILE} with <case>/{LA_LABEL_FILE}"
        )
    return cases


def _atrium_label(label: np.ndarray, path: Path) -> np.ndarray:
    values = set(np.unique(label).tolist())
    if values <= {0, 255}:
        return np.asarray(label == 255, dtype=np.uint8)
    if values <= {0, 1}:
        return np.asarray(label, dtype=np.uint8)
    raise DataFormatError(f"{path} holds values {sorted(values)[:8]}: expected a mask of {{0, 255}} or {{0, 1}}")


def crop_box(label: np.ndarray, rng: np.random.Generator, min_size: Sequence[int]) -> tuple[slice, ...]:
    """UA-MT's crop window: in each of the first ``len(min_size)`` axes the label's bounding
    box, enlarged evenly to ``min_size`` and by a random margin on each side (clipped to
    the volume); later axes are kept whole."""
    foreground = np.nonzero(label)
    window = []
    for axis, target in enumerate(min_size):
        low, high = int(foreground[axis].min()), int(foreground[axis].max()) + 1
        pad = max(target - (high - low), 0) // 2
        low = max(low - pad - int(rng.integers(*LA_CROP_MARGIN)), 0)
        high = min(high + pad + int(rng.integers(*LA_CROP_MARGIN)), label.shape[axis])
        window.append(slice(low, high))
    return tuple(window)


def load_la_nrrd(image_path: Path, label_path: Path, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Read one raw LA case as a UA-MT crop: (image float32 z-scored, label uint8 {0, 1})."""
    image, label = _read_pair(image_path, label_path, _read_nrrd, (_nrrd().NRRDError, OSError, ValueError), "LA NRRD")
    label = _atrium_label(label, label_path)
    if not label.any():
        raise DataFormatError(f"{label_path} has no atrium voxel: expected a non-empty mask to crop around")
    window = crop_box(label, rng, LA_PATCH_SIZE[:2])
    return normalize_intensity(image, LA_NORMALIZATION)[window], label[window]


def convert_la(source: Path, out: Path, split_from: Path | None, seed: int, progress: bool = True) -> Path:
    """Convert a raw LA 2018 challenge download (see the module docstring)."""
    cases = find_la_cases(source)
    if split_from is None:
        train, test = _drawn_split(sorted(cases), LA_SPLIT_FRACTIONS, seed, "case", ("train", "test"))
    else:
        lists = ("train.list", "test.list")
        train, test = (_read_listed(split_from / name, cases, LA_CASE_FILE) for name in lists)
    margins = np.random.default_rng([seed, 3])
    for case in tqdm(sorted(cases), desc="converting LA", disable=not progress):
        write_la_case(out, case, *load_la_nrrd(*cases[case], margins))
    write_la_lists(out, train, test)
    return out
