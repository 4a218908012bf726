"""Reading and writing the files of the public data layouts: case-list files and HDF5 cases.

Every loader in :mod:`mper.data` goes through these functions, so a missing or damaged
file always produces the same kind of error: :class:`~mper.errors.MissingFileError` for a
file that is not there, :class:`~mper.errors.DataFormatError` for one that is there but
does not hold what the layout promises (no dataset, wrong rank, empty, a label that is
not integer, an image with NaN or infinite values). Both messages name the file and say
what was expected. :func:`check_new_folder` refuses an output folder that already holds
files, before a command writes anything, and :func:`removed_on_failure` removes what a
command wrote there when it fails half-way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from types import FrameType

import h5py
import numpy as np

from mper.data.preprocess import scaling_mismatch
from mper.errors import DataFormatError, MissingFileError, RunFolderError

#: How many names a one-line message lists before it counts the rest.
NAMES_LISTED = 5


def listed_names(names: Sequence[str]) -> str:
    """``a, b, c`` for a message: the first :data:`NAMES_LISTED` names, then how many more."""
    more = f" and {len(names) - NAMES_LISTED} more" if len(names) > NAMES_LISTED else ""
    return ", ".join(names[:NAMES_LISTED]) + more


def check_new_folder(folder: str | Path, option: str = "--out") -> None:
    """Refuse ``folder``, given as ``option``, unless it is missing or an empty folder: what
    a command writes there would overwrite the files it holds or mix with them. Creates
    nothing, so that a command can check all its options before it writes.

    Raises:
        RunFolderError: ``folder`` is a file or a folder that holds anything.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"{option} {folder} is a file; choose a folder to create")
    held = sorted(path.name for path in folder.iterdir()) if folder.is_dir() else []
    if held:
        raise RunFolderError(
            f"{option} {folder} is not empty (it holds {listed_names(held)}); choose a new or empty folder, "
            "or empty it first"
        )


def check_output_folder(out: str | Path, source: str | Path) -> None:
    """Refuse ``out``, the ``--out`` of a command that reads the raw dataset ``source``,
    when it is ``source`` itself or holds anything (:func:`check_new_folder`).

    Raises:
        RunFolderError: ``out`` is ``source``, a file or a folder that holds anything.
    """
    if Path(out).resolve() == Path(source).resolve():
        raise RunFolderError(f"--out {out} is the raw dataset itself; choose another folder")
    check_new_folder(out)


@contextlib.contextmanager
def _interrupts_noted() -> Iterator[list[int]]:
    """A block during which Ctrl-C raises KeyboardInterrupt as it does by default, and is
    also noted in the list yielded: raised while a weakref or ``__del__`` callback runs
    (garbage collection, at any moment), the exception is printed and dropped, and the
    command would go on to the end and exit 0. Outside the main thread, or under another
    handler than Python's default one, nothing changes."""
    noted: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield noted
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is not signal.default_int_handler:
        yield noted
        return

    def note_and_raise(signum: int, _frame: FrameType | None) -> None:
        noted.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, note_and_raise)
    try:
        yield noted
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def removed_on_failure(folder: str | Path) -> Iterator[Path]:
    """Create ``folder``, which must be missing or empty (:func:`check_new_folder`, checked
    again here), for the block to write, and remove what the block wrote when it fails or
    is interrupted, so that a half-written dataset is never left to be read as a whole
    one. The folders this call created go too; nothing that was there before is touched."""
    folder = Path(folder)
    check_new_folder(folder)
    created = None  # the outermost folder this call creates
    for missing in (folder, *folder.parents):
        if missing.exists():
            break
        created = missing
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with _interrupts_noted() as interrupted:
            yield folder
        if interrupted:
            raise KeyboardInterrupt  # raised where Python could only print it (see _interrupts_noted)
    except BaseException:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        else:  # an empty folder that was there: empty it again
            for path in folder.iterdir():
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
        raise


def case_name_from_line(line: str, case_file: str | None = None) -> str:
    """Reduce one list-file line to a case name.

    Lists in the wild hold bare names (``patient001_frame01``), file names
    (``patient001_frame01_slice_0.h5``) or full paths
    (``/x/2018LA_Seg_Training Set/0RZDK210BSMWAA6467LU/mri_norm2.h5``). A path that ends
    in ``case_file``, the file every case folder of a layout holds, names its case by
    its folder.
    """
    path = PurePosixPath(line.strip().replace("\\", "/"))
    if case_file is not None and path.name == case_file and len(path.parts) > 1:
        return path.parent.name
    return path.name.removesuffix(".h5")


def why_unlistable(name: str) -> str:
    """Why a list file cannot name the case ``name`` (:func:`read_list` would read another
    name back from its line), or "" when it can: the reasons a file name of one's own may
    have (surrounding white space, which lists drop; an ending of ``.h5``, which they read as
    the case's file; a backslash, read as a folder separator; a line break)."""
    if name.splitlines() != [name]:
        return "it holds a line break"
    if name != name.strip():
        return "it begins or ends with white space, which case lists drop"
    if "\\" in name:
        return "it holds a backslash, which case lists read as a folder separator"
    if name.endswith(".h5"):
        return "it ends in '.h5', which case lists read as the case's file"
    if case_name_from_line(name) != name:
        return "case lists would read it as another name"
    return ""


def read_list(path: str | Path, case_file: str | None = None) -> list[str]:
    """Case names of a list file, one per non-empty line, in file order (see
    :func:`case_name_from_line` for ``case_file``). A UTF-8 byte order mark, which some
    Windows editors write, is not part of the first name.

    Raises:
        MissingFileError: the list file does not exist.
        DataFormatError: the file holds no case name, or one twice (the case would weigh
            twice in training, or be both trained on and held out).
    """
    path = Path(path)
    if not path.is_file():
        folder = path.parent
        # the writers (mper-data convert, synth) write the lists last: their case files (.h5, one or two folders
        # down in every layout) without any list are an unfinished write
        unfinished = (
            folder.is_dir()
            and not any(folder.glob("*.list"))
            and any(next(folder.glob(pattern), None) for pattern in ("*/*.h5", "*/*/*.h5"))
        )
        hint = (
            f"; {folder} holds data but no list file at all: if mper-data convert or synth was stopped while writing "
            "it, write it again into a new folder"
            if unfinished
            else ""
        )
        raise MissingFileError(f"list file {path} not found: expected a text file with one case name per line{hint}")
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    numbered = [(number, case_name_from_line(line, case_file)) for number, line in enumerate(lines, 1) if line.strip()]
    if not numbered:
        raise DataFormatError(f"list file {path} is empty: expected one case name per line")
    first_line: dict[str, int] = {}
    for number, name in numbered:
        if name in first_line:
            raise DataFormatError(
                f"list file {path} names {name} twice (lines {first_line[name]} and {number}); remove one of them"
            )
        first_line[name] = number
    return [name for _, name in numbered]


def write_list(path: str | Path, names: Iterable[str]) -> Path:
    """Write ``names`` one per line (the format :func:`read_list` reads) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{name}\n" for name in names))
    return path


def _expected(keys: Sequence[str], ndim: int | None) -> str:
    rank = f"{ndim}-D " if ndim is not None else ""
    return f"an HDF5 file with {rank}datasets {', '.join(repr(k) for k in keys)}"


#: An axis shorter than the slice (or depth) axis by this factor says the axes are out of order
#: (a short-axis stack has far fewer slices than pixels across a slice).
AXIS_ORDER_RATIO = 2


def misplaced_slice_axis(shape: Sequence[int], slice_axis: int) -> int | None:
    """The axis of ``shape`` that is :data:`AXIS_ORDER_RATIO` times shorter than
    ``slice_axis``, where the slices (or the depth) should be; ``None`` when there is none."""
    shortest = int(np.argmin(shape))
    return None if shape[shortest] * AXIS_ORDER_RATIO > shape[slice_axis] else shortest


def read_h5_case(
    path: str | Path,
    keys: Sequence[str] = ("image", "label"),
    ndim: int | None = None,
    layout: str = "",
) -> tuple[np.ndarray, ...]:
    """Read the datasets ``keys`` of one HDF5 case file, in the order of ``keys``.

    Args:
        path: the ``.h5`` file.
        keys: dataset names to read.
        ndim: if given, every dataset must have this many dimensions.
        layout: a short description of the expected layout, added to error messages.

    Raises:
        MissingFileError: the file does not exist.
        DataFormatError: the file is not readable HDF5, lacks a dataset, or a dataset has
            the wrong number of dimensions, no element or a non-numeric type.
    """
    path = Path(path)
    expected = _expected(keys, ndim) + (f" ({layout})" if layout else "")
    if not path.is_file():
        raise MissingFileError(f"{path} not found: expected {expected}")
    try:
        with h5py.File(path, "r") as handle:
            missing = [key for key in keys if key not in handle]
            if missing:
                raise DataFormatError(
                    f"{path} has no dataset {', '.join(map(repr, missing))}: "
                    f"expected {expected}; found {sorted(handle.keys())}"
                )
            arrays = tuple(np.asarray(handle[key][()]) for key in keys)
    except OSError as error:
        raise DataFormatError(f"{path} is not a readable HDF5 file ({error}): expected {expected}") from error
    for key, array in zip(keys, arrays):
        if ndim is not None and array.ndim != ndim:
            raise DataFormatError(f"{path}: dataset {key!r} has shape {array.shape}, expected {expected}")
        if array.size == 0:
            raise DataFormatError(f"{path}: dataset {key!r} is empty (shape {array.shape}), expected {expected}")
        if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_) or np.iscomplexobj(array):
            raise DataFormatError(f"{path}: dataset {key!r} holds {array.dtype} values, expected real numbers")
    return arrays


def visible_files(folder: Path) -> list[Path]:
    """The files of ``folder`` (not its sub-folders) but hidden ones (``.DS_Store``), sorted."""
    return sorted(path for path in folder.iterdir() if path.is_file() and not path.name.startswith("."))


@contextlib.contextmanager
def naming_the_file(path: str | Path) -> Iterator[None]:
    """Give a system error raised in the block the file ``path`` when it names none (a
    write that fails on a full disk says only "No space left on device"), so that the
    one-line report says which file could not be written."""
    try:
        yield
    except OSError as error:
        if error.filename is None:
            error.filename = str(path)
        raise


@contextlib.contextmanager
def written_whole(path: Path, temporary: Path | None = None) -> Iterator[Path]:
    """Yields the hidden file to write ``path``'s content into (``temporary``, by default
    ``.<name>.tmp`` beside it), renamed over ``path`` when the block ends: a stop or a full
    disk while writing leaves neither part of a file under ``path`` nor the hidden file, and
    a system error names ``path``."""
    aside = path.with_name(f".{path.name}.tmp") if temporary is None else temporary
    try:
        with naming_the_file(path):
            yield aside
            os.replace(aside, path)
    except BaseException:
        aside.unlink(missing_ok=True)
        raise


def check_writable(folder: str | Path, option: str) -> None:
    """Refuse ``folder`` (given as ``option``, e.g. ``--out``) when it, or the nearest folder
    above it that exists, cannot be written (no permission, a read-only file system): said
    before any work rather than when the first result is written."""
    resolved = Path(folder).resolve()
    existing = next((path for path in (resolved, *resolved.parents) if path.exists()), None)
    if existing is not None and not existing.is_dir():
        raise RunFolderError(f"{option} {folder}: {existing} is a file, not a folder; choose a folder")
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        where = "it" if existing == resolved else f"{existing}, where it would be made,"
        raise RunFolderError(
            f"{option} {folder}: {where} cannot be written (no permission, or a read-only file system); choose a "
            "folder you can write"
        )


def check_finite(path: str | Path, image: np.ndarray, key: str = "image") -> np.ndarray:
    """Return ``image`` if every value is finite, else raise :class:`DataFormatError`
    naming ``path`` and how many values are NaN or infinite."""
    finite = np.isfinite(image)
    if not finite.all():
        bad = image.size - int(finite.sum())
        raise DataFormatError(
            f"{path}: {key} has {bad} NaN or infinite value(s) among {image.size}; mper needs finite values: "
            "replace them (e.g. with 0) in that file"
        )
    return image


def read_image_label(
    path: str | Path, ndim: int, num_classes: int, layout: str = "", normalization: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read an ``image``/``label`` case: ``image`` float32, ``label`` uint8 in ``[0, num_classes)``.

    Raises what :func:`read_h5_case` raises, and :class:`DataFormatError` if the two
    shapes differ, the image holds NaN or infinite values or is not scaled as the layout's
    ``normalization`` scales (:func:`~mper.data.preprocess.scaling_mismatch`; the layout's
    models, and ``mper-predict``, expect it), the label holds values that are not whole
    numbers (a float label of whole values is read; others are refused rather than
    truncated) or a label value lies outside ``[0, num_classes)``.
    """
    image, label = read_h5_case(path, ("image", "label"), ndim=ndim, layout=layout)
    if not (np.issubdtype(label.dtype, np.integer) or label.dtype == np.bool_):
        whole = np.isfinite(label) & (label == np.round(label))
        if not whole.all():  # a whole-valued float label holds class indices; others are not truncated
            raise DataFormatError(
                f"{path}: label holds {label.dtype} values that are not class indices (e.g. {label[~whole].flat[0]}); "
                "write the label as whole class numbers 0, 1, ... (uint8)"
            )
    if image.shape != label.shape:
        raise DataFormatError(
            f"{path}: image shape {image.shape} differs from label shape {label.shape}; expected one label per voxel"
        )
    check_finite(path, image)
    expected = None if normalization is None else scaling_mismatch(image, normalization)
    if expected is not None:
        low, high = float(image.min()), float(image.max())
        raise DataFormatError(
            f"{path}: intensities span [{low:.3g}, {high:.3g}], but {expected} are expected here ({layout}); "
            f"normalise the image ({normalization} per volume), as the public release and mper-data convert do"
        )
    if label.min() < 0 or label.max() >= num_classes:
        raise DataFormatError(
            f"{path}: label values span [{label.min()}, {label.max()}], expected class indices 0..{num_classes - 1}; "
            "write the label as class indices (a 0/255 mask as label > 0)"
        )
    return image.astype(np.float32, copy=False), label.astype(np.uint8, copy=False)


def write_image_label(path: str | Path, image: np.ndarray, label: np.ndarray) -> Path:
    """Write an ``image`` (float32) / ``label`` (uint8, gzip-compressed) case file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as handle:
        handle.create_dataset("image", data=np.asarray(image, dtype=np.float32))
        handle.create_dataset("label", data=np.asarray(label, dtype=np.uint8), compression="gzip")
    return path
