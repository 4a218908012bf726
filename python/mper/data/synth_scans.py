"""Synthetic raw scans in the nnU-Net v2 or the Medical Segmentation Decathlon layout: data
to try ``mper-data import`` and the training on one's own scans with.

Every case is an abdomen-like volume with two channels, a CT-like one (Hounsfield-like
units: air -1000, soft tissue 30, organs brighter; stored int16) and an MR-like one
(positive intensities with a smooth bias field and an arbitrary gain per case, zero
outside the body; stored float32), and four foreground classes: liver (with brighter
vessel-like blobs inside, a second intensity sub-population), kidneys (two), spleen,
and a tumour inside the liver. No class is told apart by its side alone, so mirroring
(the training's flips) keeps every class what it is. Cases differ in shape, in voxel spacing (strongly anisotropic:
slices about three times thicker than the in-plane spacing) and in orientation (a
non-identity affine: flipped in-plane axes, a rotation about the slice axis, an
offset). A zero border (outside the scanner's field of view) surrounds every volume.

Roles: labeled training cases, unlabeled training cases (nnU-Net: images of
``imagesTr`` without a label; MSD: ``imagesUnlabeled/``) and test cases with labels
(``imagesTs`` and ``labelsTs``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage
from tqdm import tqdm

from mper.data.files import check_new_folder, removed_on_failure
from mper.data.image_files import NIFTI_ENDINGS
from mper.data.raw_scans import (
    DATASET_JSON,
    IMAGES_TEST,
    IMAGES_TRAIN,
    IMAGES_UNLABELED,
    LABELS_TEST,
    LABELS_TRAIN,
    NNUNET,
    RAW_LAYOUTS,
    channel_file_name,
)
from mper.errors import ConfigError

SYNTH_SCAN_CASES = 30
#: Median array shape (x, y, z) and spacing (mm) of the synthetic cases.
SYNTH_SCAN_SIZE = (64, 64, 20)
SYNTH_SCAN_SPACING = (1.5, 1.5, 5.0)
SYNTH_SCAN_CLASSES = ("background", "liver", "kidney", "spleen", "tumour")
SYNTH_SCAN_CHANNELS = ("CT", "MRI")
SYNTH_SCAN_NAME = "Synth"
MIN_SCAN_SIZE = (12, 12, 4)
#: CT-like and MR-like intensity of each region: background body, organs, the liver's vessels.
_CT = {"air": -1000.0, "body": 30.0, "liver": 60.0, "kidney": 160.0, "spleen": 100.0, "tumour": 10.0, "vessel": 120.0}
_MR = {"air": 0.0, "body": 200.0, "liver": 350.0, "kidney": 500.0, "spleen": 420.0, "tumour": 650.0, "vessel": 250.0}


@dataclass
class SyntheticRawCase:
    """One case: ``ct`` and ``mr`` channels, ``label``, and the ``affine`` of all three."""

    ct: np.ndarray
    mr: np.ndarray
    label: np.ndarray
    affine: np.ndarray


def _ellipsoid(grid: Sequence[np.ndarray], centre: Sequence[float], semi_axes: Sequence[float]) -> np.ndarray:
    distance = np.zeros(grid[0].shape)
    for axis, c, s in zip(grid, centre, semi_axes):
        distance += ((axis - c) / s) ** 2
    return distance <= 1.0


def _affine(rng: np.random.Generator, spacing: Sequence[float]) -> np.ndarray:
    """Voxel to world: in-plane axes flipped at random, a rotation about the slice axis, an offset."""
    angle = float(rng.uniform(-0.25, 0.25))
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]])
    signs = np.array([rng.choice([-1.0, 1.0]), rng.choice([-1.0, 1.0]), 1.0])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(signs * np.asarray(spacing))
    affine[:3, 3] = rng.uniform(-150, 150, 3)
    return affine


def synthetic_raw_case(rng: np.random.Generator, size: Sequence[int]) -> SyntheticRawCase:
    """One synthetic case of about ``size`` voxels (x, y, z) at about the median spacing."""
    spacing = np.asarray(SYNTH_SCAN_SPACING) * np.array([*(rng.uniform(0.85, 1.15),) * 2, rng.uniform(0.8, 1.25)])
    extent = np.asarray(size) * np.asarray(SYNTH_SCAN_SPACING) * rng.uniform(0.9, 1.1, 3)  # field of view, mm
    shape = tuple(max(int(round(length)), low) for length, low in zip(extent / spacing, MIN_SCAN_SIZE))
    grid = np.meshgrid(*((np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)), indexing="ij")
    fx, fy, fz = extent
    body = _ellipsoid(grid, (0, 0, 0), (0.44 * fx, 0.4 * fy, 0.7 * fz))
    liver_centre = (0.12 * fx + rng.normal(0, 0.02 * fx), -0.04 * fy + rng.normal(0, 0.02 * fy), 0.0)
    liver_axes = (0.2 * fx * rng.uniform(0.85, 1.15), 0.2 * fy * rng.uniform(0.85, 1.15), 0.4 * fz)
    liver = _ellipsoid(grid, liver_centre, liver_axes) & body
    kidneys = np.zeros(shape, bool)
    for side in (-1, 1):
        centre = (-0.2 * fx + rng.normal(0, 0.015 * fx), side * 0.18 * fy, rng.normal(0, 0.05 * fz))
        kidneys |= _ellipsoid(grid, centre, (0.08 * fx, 0.06 * fy, 0.3 * fz)) & body
    spleen_centre = (0.05 * fx + rng.normal(0, 0.015 * fx), 0.3 * fy, rng.normal(0, 0.05 * fz))
    spleen = _ellipsoid(grid, spleen_centre, (0.1 * fx * rng.uniform(0.8, 1.2), 0.06 * fy, 0.3 * fz)) & body
    offset = rng.uniform(-0.35, 0.35, 3) * np.asarray(liver_axes)
    tumour_axes = [0.45 * axis * rng.uniform(0.8, 1.2) for axis in liver_axes]
    tumour = _ellipsoid(grid, np.add(liver_centre, offset), tumour_axes)
    tumour &= liver
    vessels = liver & ~tumour & (ndimage.gaussian_filter(rng.normal(size=shape), 1.5) > 0.12)

    label = np.zeros(shape, np.uint8)
    label[liver] = 1
    label[kidneys] = 2
    label[spleen] = 3
    label[tumour] = 4
    regions = {
        "body": body,
        "liver": liver & ~vessels,
        "vessel": vessels,
        "kidney": kidneys,
        "spleen": spleen,
        "tumour": tumour,
    }
    ct = np.full(shape, _CT["air"], np.float32)
    mr = np.full(shape, _MR["air"], np.float32)
    for region, mask in regions.items():
        ct[mask], mr[mask] = _CT[region], _MR[region]
    ct += rng.normal(0, 12, shape).astype(np.float32)
    bias = 1 + 0.2 * ndimage.gaussian_filter(rng.normal(size=shape), 4) / 0.05
    mr = mr * np.clip(bias, 0.6, 1.4) * rng.uniform(0.5, 2.0) + body * np.abs(rng.normal(0, 15, shape))
    mr = mr.astype(np.float32)
    border = [int(rng.integers(1, 4)) for _ in range(2)]  # outside the scanner's field of view: zero
    outside = np.ones(shape, bool)
    outside[border[0] : shape[0] - border[0], border[1] : shape[1] - border[1], :] = False
    ct[outside], mr[outside], label[outside] = 0, 0, 0
    return SyntheticRawCase(np.round(ct).astype(np.int16), mr, label, _affine(rng, spacing))


def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), path)  # type: ignore[no-untyped-call]


def _roles(cases: int) -> list[str]:
    """Labeled, unlabeled and test counts of ``cases``: a fifth (at least 2) test, a third
    of the rest (at least 1) unlabeled, the others labeled (at least 2)."""
    test = max(2, cases // 5)
    unlabeled = max(1, (cases - test) // 3)
    labeled = cases - test - unlabeled
    if labeled < 2:
        raise ConfigError(f"--cases must be at least 5 (2 labeled, 1 unlabeled, 2 test), got {cases}")
    return ["labeled"] * labeled + ["unlabeled"] * unlabeled + ["test"] * test


def synthesize_scans(
    out: str | Path,
    layout: str = NNUNET,
    cases: int = SYNTH_SCAN_CASES,
    seed: int = 0,
    size: Sequence[int] = SYNTH_SCAN_SIZE,
    progress: bool = True,
) -> Path:
    """Write a synthetic raw dataset of ``cases`` cases into ``out`` (``layout``: ``"nnunet"``
    or ``"msd"``) and return ``out``. About a fifth are test cases (with labels), a third
    of the rest unlabeled. The output is a function of (layout, cases, seed, size).
    Every option is checked before anything is written, ``out`` must be missing or
    empty (:func:`~mper.data.files.check_new_folder`), and a failed or interrupted call
    removes what it wrote.
    """
    check_new_folder(out)
    if layout not in RAW_LAYOUTS:
        raise ConfigError(f"format must be one of {', '.join(RAW_LAYOUTS)}; got {layout!r}")
    size = tuple(int(length) for length in size)
    if len(size) != 3 or any(length < low for length, low in zip(size, MIN_SCAN_SIZE)):
        raise ConfigError(f"--size must be three sizes (x y z) of at least {MIN_SCAN_SIZE}; got {list(size)}")
    roles = _roles(int(cases))
    out = Path(out)
    ending = NIFTI_ENDINGS[0]
    folders = {
        "labeled": (IMAGES_TRAIN, LABELS_TRAIN),
        "test": (IMAGES_TEST, LABELS_TEST),
        "unlabeled": (IMAGES_TRAIN if layout == NNUNET else IMAGES_UNLABELED, None),
    }
    with removed_on_failure(out):
        training, test = [], []
        rng = np.random.default_rng(seed)
        for index, role in enumerate(tqdm(roles, desc=f"writing synthetic {layout} scans", disable=not progress)):
            name = f"synth_{index:03d}"
            case = synthetic_raw_case(rng, size)
            images, labels = folders[role]
            if layout == NNUNET:
                _save(case.ct, case.affine, out / images / channel_file_name(name, 0, ending))
                _save(case.mr, case.affine, out / images / channel_file_name(name, 1, ending))
            else:
                both = np.stack([case.ct.astype(np.float32), case.mr], axis=-1)
                _save(both, case.affine, out / images / f"{name}{ending}")
            if labels is not None:
                _save(case.label, case.affine, out / labels / f"{name}{ending}")
            if role == "labeled":
                training.append(
                    {"image": f"./{IMAGES_TRAIN}/{name}{ending}", "label": f"./{LABELS_TRAIN}/{name}{ending}"}
                )
            elif role == "test":
                test.append(f"./{IMAGES_TEST}/{name}{ending}")
        channels = {str(index): channel for index, channel in enumerate(SYNTH_SCAN_CHANNELS)}
        if layout == NNUNET:
            document = {
                "name": SYNTH_SCAN_NAME,
                "channel_names": channels,
                "labels": {name: value for value, name in enumerate(SYNTH_SCAN_CLASSES)},
                "numTraining": len(training),
                "file_ending": ending,
            }
        else:
            document = {
                "name": SYNTH_SCAN_NAME,
                "description": "synthetic abdomen-like scans",
                "tensorImageSize": "4D",
                "modality": channels,
                "labels": {str(value): name for value, name in enumerate(SYNTH_SCAN_CLASSES)},
                "numTraining": len(training),
                "numTest": len(test),
                "training": training,
                "test": test,
            }
        (out / DATASET_JSON).write_text(json.dumps(document, indent=2) + "\n")
    return out
