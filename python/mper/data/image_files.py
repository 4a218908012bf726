"""Image files of the endings mper reads besides NIfTI, read and written through SimpleITK.

nnU-Net v2 reads NIfTI, and through SimpleITK (its ``SimpleITKIO`` and ``NaturalImage2DIO``)
NRRD, MetaImage, GIPL and 2D natural images; so does mper. :func:`read_itk_image` loads such
a file as an in-memory :class:`nibabel.Nifti1Image`, so that everything after reading (the
geometry checks, the spacing, the crop, the resampling, the way back) treats it as it treats
a NIfTI file:

* the array is in the file's index order ``(x, y, z)`` (SimpleITK's ``GetArrayFromImage``
  returns ``(z, y, x)``: it is transposed), as nibabel reads a NIfTI file;
* the affine is ITK's geometry (direction times spacing, and the origin) turned from ITK's
  LPS world coordinates into NIfTI's RAS ones (the first two rows' signs flipped), the
  affine nibabel would read from the same volume saved as NIfTI by ITK;
* a 2D natural image (``.png``, ``.bmp``, ``.tif``) of several components per pixel (RGB,
  RGBA) holds that many channels, ``(x, y, 1, components)``, as nnU-Net's
  ``NaturalImage2DIO`` reads them; a vector image of another ending is refused, as an RGB
  NIfTI is.

The image keeps ITK's own geometry (:class:`ItkGrid`, in ``extra``), with which
:func:`write_itk_label_map` writes a label map onto the file's grid in its format, nothing
rounded. SimpleITK is imported inside these functions, so that ``import mper`` does not wait
for it.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from mper.errors import DataFormatError, UserError

#: NIfTI, read by nibabel.
NIFTI_ENDINGS = (".nii.gz", ".nii")
#: Medical formats read by SimpleITK: NRRD (one file, or a ``.nhdr`` header beside its data
#: file), MetaImage (one ``.mha`` file, or a ``.mhd`` header beside its data file), GIPL.
ITK_ENDINGS = (".nrrd", ".nhdr", ".mha", ".mhd", ".gipl.gz", ".gipl")
#: 2D natural images read by SimpleITK: grey, or RGB(A) as that many channels; spacing 1.
NATURAL_ENDINGS = (".png", ".bmp", ".tif", ".tiff")
#: Every file ending mper reads images and label maps from (matched as written: lowercase).
IMAGE_ENDINGS = NIFTI_ENDINGS + ITK_ENDINGS + NATURAL_ENDINGS
#: The endings of a detached header's data file (``x.mhd`` beside ``x.raw`` or ``x.zraw``,
#: ``x.nhdr`` beside ``x.raw`` or ``x.raw.gz``): part of the header's image, not a file of their own.
DETACHED_DATA_ENDINGS = (".raw.gz", ".raw", ".zraw")
#: The headers that keep their voxels in another file, and the one-file ending of the same
#: format that a label map for such an input is written as (written whole, then renamed).
DETACHED_HEADERS = {".mhd": ".mha", ".nhdr": ".nrrd"}
#: The format of each ending, for messages.
_FORMAT_NAMES = {
    ".nrrd": "NRRD",
    ".nhdr": "NRRD",
    ".mha": "MetaImage",
    ".mhd": "MetaImage",
    ".gipl.gz": "GIPL",
    ".gipl": "GIPL",
    ".png": "PNG",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}


def _sitk(path: Path) -> Any:
    """SimpleITK, imported when first needed (to read or write ``path``): importing it takes
    longer than the rest of mper's data layer, and most commands never read a file of its
    formats. It comes with medpy from a package index, but a Python set up from wheels
    without it (``scripts/gpu_wheels.sh`` leaves it out) lacks it: that is said in one line.
    Its calls are untyped."""
    try:
        import SimpleITK  # noqa: PLC0415
    except ImportError as error:
        raise UserError(
            f"{path}: reading and writing {image_ending(path.name) or 'such'} files needs SimpleITK, which is not "
            "installed here: pip install SimpleITK (or convert the files to NIfTI, which nibabel reads)"
        ) from error
    return SimpleITK


def supported_endings() -> str:
    """The endings mper reads and the library that reads them, for messages."""
    return (
        f"NIfTI ({', '.join(NIFTI_ENDINGS)}) through nibabel, and through SimpleITK {', '.join(ITK_ENDINGS)} and "
        f"2D {', '.join(NATURAL_ENDINGS)} images"
    )


def image_ending(name: str) -> str | None:
    """The ending of :data:`IMAGE_ENDINGS` that ``name`` ends with (as written), or ``None``."""
    return next((ending for ending in IMAGE_ENDINGS if name.endswith(ending) and len(name) > len(ending)), None)


def is_nifti(path: Path) -> bool:
    """Whether ``path`` ends with a NIfTI ending (nibabel reads it)."""
    return path.name.endswith(NIFTI_ENDINGS)


def is_natural_image(path: Path) -> bool:
    """Whether ``path`` ends with a 2D natural image's ending (its colours are channels)."""
    return path.name.endswith(NATURAL_ENDINGS)


def detached_data_files(paths: Iterable[Path]) -> set[Path]:
    """The files among ``paths`` that are the data files of a detached header beside them
    (``x.raw`` or ``x.zraw`` beside ``x.mhd``, ``x.raw.gz`` beside ``x.nhdr``): read with
    their header, so neither cases nor stray files."""
    paths = list(paths)
    headers = {
        (path.parent, path.name[: -len(end)]) for path in paths for end in DETACHED_HEADERS if path.name.endswith(end)
    }
    detached = set()
    for path in paths:
        ending = next((end for end in DETACHED_DATA_ENDINGS if path.name.endswith(end)), None)
        if ending is not None and (path.parent, path.name[: -len(ending)]) in headers:
            detached.add(path)
    return detached


def label_map_ending(input_ending: str) -> str:
    """The ending of the label map written for an input of ``input_ending``: the same, but a
    detached header's one-file twin (``.mha`` for ``.mhd``, ``.nrrd`` for ``.nhdr``)."""
    return DETACHED_HEADERS.get(input_ending, input_ending)


@dataclass(frozen=True)
class ItkGrid:
    """ITK's geometry of a file read by :func:`read_itk_image`, as SimpleITK gives it (LPS):
    ``size`` in index order ``(x, y[, z])``, and the ``spacing``, ``origin`` and row-major
    ``direction`` of that many axes."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]


#: The key of :class:`ItkGrid` in a read image's ``extra``.
ITK_GRID = "itk_grid"
#: The key of the number of components per pixel (channels of a natural image) in ``extra``.
COMPONENTS = "components"


def itk_grid(scan: nib.Nifti1Image) -> ItkGrid | None:
    """The ITK geometry of ``scan`` when :func:`read_itk_image` read it; ``None`` for NIfTI."""
    grid = scan.extra.get(ITK_GRID)
    return grid if isinstance(grid, ItkGrid) else None


def components(scan: nib.Nifti1Image) -> int:
    """The components per pixel of ``scan`` (3 for an RGB natural image, else 1)."""
    return int(scan.extra.get(COMPONENTS, 1))


def _lps_to_ras_affine(spacing: np.ndarray, origin: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """The voxel-to-world affine (RAS, as NIfTI's) of ITK's geometry (LPS) of up to three axes."""
    axes = len(spacing)
    affine = np.eye(4)
    affine[:axes, :axes] = direction * spacing  # column j: axis j's step
    affine[:axes, 3] = origin
    affine[:2] *= -1  # LPS to RAS: x and y point the other way
    return affine


#: The header lines that name a detached header's data file: MetaImage's, NRRD's (two spellings).
_DATA_FILE_LINE = re.compile(r"^\s*(?:ElementDataFile\s*=|data ?file\s*:)\s*(\S.*?)\s*$", re.IGNORECASE | re.MULTILINE)


def _missing_data_file(path: Path) -> Path | None:
    """The data file that the detached header ``path`` (``.mhd``, ``.nhdr``) names, when
    there is none there; ``None`` for another file, a header whose data is in itself
    (``LOCAL``) or in several files (a list or pattern), or one whose data file is there."""
    if not path.name.endswith(tuple(DETACHED_HEADERS)):
        return None
    try:
        with path.open("rb") as file:
            header = file.read(65536).decode("latin-1")
    except OSError:
        return None
    found = _DATA_FILE_LINE.search(header)
    if found is None or found.group(1).upper() == "LOCAL" or " " in found.group(1) or "%" in found.group(1):
        return None
    data = path.parent / found.group(1)
    return None if data.is_file() else data


def _is_grey_bmp(path: Path) -> bool:
    """Whether ``path`` is a grey BMP file: 8 bits per pixel indexing a palette of the grey
    ramp (index ``i`` is the grey ``i``), as most programs save a grey image in BMP.
    SimpleITK reads it as RGB colours; nnU-Net's ``NaturalImage2DIO`` (through Pillow, which
    reads such a file as grey, its mode ``L``) as one grey channel, and so does mper."""
    if not path.name.endswith(".bmp"):
        return False
    from PIL import Image  # noqa: PLC0415  (only for this check)

    try:
        with Image.open(path) as image:
            return bool(image.mode == "L")
    except OSError:
        return False


def _itk_reason(error: RuntimeError, default: str) -> str:
    """What an error SimpleITK raised says went wrong, in one line: ITK's last line ("hit end
    of header, but no data file given"), without the C++ location before it."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # "itk::ERROR: MetaImageIO(0x55d0...): File cannot be written": the reason after the object's address
    return (
        re.sub(r"^(\[\w+\]\s*\w*:?\s*|s?itk::ERROR:\s*(\w+\(0x[0-9a-fA-F]+\):\s*)?)", "", lines[-1])
        if lines
        else default
    )


def read_itk_image(path: Path) -> nib.Nifti1Image:
    """The image at ``path`` (an ending of :data:`ITK_ENDINGS` or :data:`NATURAL_ENDINGS`),
    read by SimpleITK, as an in-memory NIfTI image in the file's index order with ITK's
    geometry in RAS (see the module docstring); :class:`~mper.errors.DataFormatError` naming
    the file when it cannot be read or holds vectors that are not a natural image's colours."""
    sitk = _sitk(path)

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        reason = _itk_reason(error, "unreadable")
        kind = _FORMAT_NAMES.get(image_ending(path.name) or "", "image")
        missing = _missing_data_file(path)
        if missing is not None:
            one_file = label_map_ending(image_ending(path.name) or "")
            raise DataFormatError(
                f"{path}: its data file {missing.name}, which the {kind} header names, is not beside it; put the data "
                f"file in {path.parent} (or write the image as one {one_file} file)"
            ) from error
        raise DataFormatError(f"{path}: not a readable {kind} file (SimpleITK: {reason}); replace it") from error
    if image.GetPixelID() in (sitk.sitkComplexFloat32, sitk.sitkComplexFloat64):
        raise DataFormatError(f"{path}: its voxels are complex numbers, not one real number each; write the magnitude")
    count = image.GetNumberOfComponentsPerPixel()
    if count > 1 and _is_grey_bmp(path):  # ITK reads its palette's colours, each grey: one is the grey value
        image, count = sitk.VectorIndexSelectionCast(image, 0), 1
    if count > 1 and not is_natural_image(path):
        raise DataFormatError(
            f"{path}: its voxels are vectors of {count} components ({image.GetPixelIDTypeAsString()}), not one "
            "number each; write each component to a channel file of its own (<case>_0000, <case>_0001, ...)"
        )
    dims = image.GetDimension()
    array = sitk.GetArrayFromImage(image)  # (..., y, x) then the components
    spatial_axes = list(range(dims))[::-1]
    array = np.transpose(array, spatial_axes + ([dims] if count > 1 else []))
    if count > 1:  # a natural image's colours: (x, y, 1, components), its channels
        array = array.reshape(*array.shape[:dims], *([1] * (3 - dims)), count)
    axes = min(dims, 3)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(dims, dims)[:axes, :axes]
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)[:axes]
    origin = np.asarray(image.GetOrigin(), dtype=np.float64)[:axes]
    grid = ItkGrid(
        size=tuple(int(size) for size in image.GetSize()),
        spacing=tuple(float(value) for value in image.GetSpacing()),
        origin=tuple(float(value) for value in image.GetOrigin()),
        direction=tuple(float(value) for value in image.GetDirection()),
    )
    affine = _lps_to_ras_affine(spacing, origin, direction)
    extra = {ITK_GRID: grid, COMPONENTS: count}
    return nib.Nifti1Image(np.ascontiguousarray(array), affine, extra=extra)  # type: ignore[no-untyped-call]


def itk_shape(path: Path) -> tuple[int, ...] | None:
    """The array shape (index order, components last when several) of the image file at
    ``path`` from its header alone; ``None`` when it cannot be read."""
    sitk = _sitk(path)

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    count = reader.GetNumberOfComponents()
    size = tuple(int(value) for value in reader.GetSize())
    return (*size, *([1] * (3 - len(size))), count) if count > 1 else size


def write_itk_label_map(labels: np.ndarray, grid: ItkGrid, path: Path) -> None:
    """Write ``labels`` (index order, the grid's voxels) to ``path`` as 8-bit class values on
    ``grid`` (its origin, spacing and direction as read, nothing rounded), in the format of
    ``path``'s ending, compressed where the format can be. A grid's axes beyond the third
    (ITK's ``(x, y, z, 1)``, a Decathlon case's channels) are left out, as a NIfTI label map
    leaves them out: ``labels`` are spatial. A failed write raises :class:`OSError`."""
    sitk = _sitk(path)

    dims = len(grid.size)
    axes = min(dims, 3)
    array = np.ascontiguousarray(np.asarray(labels, dtype=np.uint8).reshape(grid.size[:axes]).T)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(grid.spacing[:axes])
    image.SetOrigin(grid.origin[:axes])
    image.SetDirection(tuple(np.reshape(grid.direction, (dims, dims))[:axes, :axes].ravel().tolist()))
    compress = not path.name.endswith(NATURAL_ENDINGS)
    try:
        sitk.WriteImage(image, str(path), compress)
    except RuntimeError as error:
        # a system error (no space, no permission), which the caller names with the file it
        # writes (``path`` may be a hidden file renamed over it) and the commands say in one line
        raise OSError(errno.EIO, f"SimpleITK could not write it: {_itk_reason(error, 'write failed')}") from error
