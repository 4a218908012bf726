"""The registry of datasets: :func:`register_dataset` adds a :class:`DatasetSpec`,
:func:`get_dataset` finds it by name. What can be done knowing only a dataset's name
(tell a layout apart, write synthetic data, convert a raw download) is done here."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

from mper.data.files import check_new_folder, check_output_folder, removed_on_failure
from mper.data.raw_scans import DATASET_JSON
from mper.data.scan_plan import PLAN_FILE
from mper.errors import ConfigError, MissingFileError, UserError

from .spec import DatasetSpec

_REGISTRY: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Make ``spec`` available under ``spec.name`` to every command and function; returns it.

    Raises ``ValueError`` when another dataset already has that name.
    """
    if spec.name in _REGISTRY and _REGISTRY[spec.name] is not spec:
        raise ValueError(f"a dataset named {spec.name!r} is registered already; choose another name")
    _REGISTRY[spec.name] = spec
    return spec


def register_imported(spec: DatasetSpec) -> DatasetSpec:
    """Register the spec of an imported dataset (``spec.scans`` set), replacing one imported
    earlier under the same name (its plan may have been edited or copied into a run
    folder); a built-in dataset's name is refused."""
    earlier = _REGISTRY.get(spec.name)
    if earlier is not None and earlier.scans is None:
        raise ConfigError(
            f"an imported dataset cannot be named {spec.name!r}, the name of a built-in dataset; "
            "change name in its plan.toml"
        )
    _REGISTRY[spec.name] = spec
    return spec


def dataset_names(imported: bool = True) -> tuple[str, ...]:
    """The registered datasets' names, in registration order; without those imported from
    raw scans unless ``imported``."""
    return tuple(name for name, spec in _REGISTRY.items() if imported or spec.scans is None)


def get_dataset(name: str) -> DatasetSpec:
    """The spec registered as ``name``; :class:`~mper.errors.ConfigError` for an unknown name."""
    if name not in _REGISTRY:
        raise ConfigError(f"dataset must be one of {', '.join(_REGISTRY)}; got {name!r}")
    return _REGISTRY[name]


def detect_dataset(root: str | Path) -> str | None:
    """The name of the dataset whose layout ``root`` holds (its case folder is there), or
    ``None`` when no layout, or more than one, matches."""
    found = [spec.name for spec in _REGISTRY.values() if (Path(root) / spec.layout_mark).is_dir()]
    return found[0] if len(found) == 1 else None


def check_dataset_root(root: str | Path, dataset: str, wanted_by: str) -> None:
    """Raise :class:`~mper.errors.MissingFileError` when ``root`` is not a folder (saying
    which commands write ``dataset``'s data), :class:`~mper.errors.ConfigError` when it
    holds another dataset's layout, or an import where a built-in dataset is expected.

    ``wanted_by`` says who expects ``dataset`` (e.g. "the checkpoint was trained on it").
    """
    check_data_folder(root, dataset)
    wanted = get_dataset(dataset)
    if wanted.scans is None and (Path(root) / PLAN_FILE).is_file():
        raise ConfigError(
            f"{root} holds a dataset imported by mper-data import (it has {PLAN_FILE}), but {wanted.title} data is "
            f"expected: {wanted_by}; pass the folder of the {wanted.title} data"
        )
    found = detect_dataset(root)
    if found is not None and found != dataset:
        other = _REGISTRY[found]
        raise ConfigError(
            f"{root} holds {other.title} data (it has {other.layout_mark}/), but {wanted.title} is "
            f"expected: {wanted_by}; pass the folder of the {wanted.title} data"
        )


def check_data_folder(root: str | Path, dataset: str | None = None) -> None:
    """Raise :class:`~mper.errors.MissingFileError` when ``root`` is not a folder, saying which
    commands write ``dataset``'s data (``None``: scans imported by ``mper-data import``), and
    :class:`~mper.errors.ConfigError` when ``dataset`` is ``None`` and ``root`` is a raw dataset
    not yet imported, or when ``root`` lacks ``dataset``'s layout but is its case folder
    (``layout_mark``) itself or holds its raw download (the spec's ``holds_raw``). (A run's
    data, named, that is missing says which import it was trained on.)"""
    spec = None if dataset is None else get_dataset(dataset)
    if not Path(root).is_dir():
        raise MissingFileError(
            f"data folder {root} {'is not a folder' if Path(root).exists() else 'does not exist'}: "
            f"{ways_to_write(spec, root)}, or pass the folder that holds it (--data-root)"
        )
    if spec is not None and spec.scans is None and not (Path(root) / spec.layout_mark).is_dir():
        _check_folder_level(Path(root), spec)
    raw = not_imported_yet(root) if spec is None else None
    if raw is not None:
        raise ConfigError(f"{raw}, then pass --data-root DIR")


def not_imported_yet(root: str | Path) -> str | None:
    """What to say of ``root`` where imported scans are expected but it is the raw dataset
    (it holds ``dataset.json`` and no import's plan): to import it first, with the command;
    ``None`` for any other folder."""
    if (Path(root) / PLAN_FILE).is_file() or not (Path(root) / DATASET_JSON).is_file():
        return None
    return (
        f"{root} is a raw dataset (it holds {DATASET_JSON}), not an imported one: import it first, "
        f"mper-data import --source {shlex.quote(str(root))} --out DIR"
    )


def _check_folder_level(root: Path, spec: DatasetSpec) -> None:
    """Refuse ``root``, a folder without ``spec``'s layout, when it is the layout's case
    folder itself and its parent holds the list files (a folder too deep), or when it holds
    the raw download that ``spec.convert`` reads (not yet converted)."""
    resolved = root.resolve()
    if resolved.name == spec.layout_mark:
        parent = root.parent if root.name == resolved.name else resolved.parent
        if _holds_lists(parent, spec):
            raise ConfigError(
                f"{root} is the {spec.title} case folder ({spec.layout_mark}) itself; pass the folder above it, "
                f"which holds it and the list files: --data-root {shlex.quote(str(parent))}"
            )
    if spec.holds_raw is not None and spec.holds_raw(root):
        raise ConfigError(
            f"{root} holds {spec.raw_description}, the raw download, not the {spec.title} data "
            f"mper reads ({spec.layout_mark}/ and the list files): convert it first, mper-data convert --dataset "
            f"{spec.name} --source {shlex.quote(str(root))} --out DIR, then pass --data-root DIR"
        )


def _holds_lists(folder: Path, spec: DatasetSpec) -> bool:
    """Whether ``spec`` reads the training or the test list from ``folder``."""
    for split in ("train", "test"):
        try:
            spec.list_cases(folder, split)
        except UserError:
            continue
        return True
    return False


def ways_to_write(spec: DatasetSpec | None, root: str | Path) -> str:
    """The commands that write ``spec``'s data (``None``: imported scans) into ``root``."""
    out = shlex.quote(str(root))
    if spec is None or spec.scans is not None:
        return f"import your scans into it with mper-data import --source RAW --out {out}"
    ways = []
    if spec.synthesize is not None:
        ways.append(f"mper-data synth --dataset {spec.name} --out {out} writes synthetic {spec.title} data")
    if spec.convert is not None:
        ways.append(f"mper-data convert --dataset {spec.name} --source RAW --out {out} converts the public download")
    return "; ".join(ways) or f"write the {spec.title} data into it"


def synthesize(
    dataset: str,
    out: str | Path,
    cases: int | None = None,
    seed: int = 0,
    size: Sequence[int] | None = None,
    progress: bool = True,
    family: str | None = None,
) -> Path:
    """Write a complete synthetic dataset root of ``dataset``, list files included, and return it.

    Args:
        dataset: a registered name (``"la"``: UA-MT layout, volumes of about ``size``
            (H, W, D), default (128, 128, 96), split 80/20 into train/test; ``"acdc"``:
            SSL4MIS layout, patients with an ED and an ES frame of 6-10 slices of ``size``
            (H, W), default (224, 224), split 70/10/20 into train/val/test).
        out: dataset root to create: a folder that does not exist or is empty
            (:func:`~mper.data.files.check_new_folder`); a refused or failed call leaves
            nothing behind (:func:`~mper.data.files.removed_on_failure`).
        cases: cases (LA volumes, ACDC patients); default the dataset's (100).
        seed: the output is a pure function of (dataset, family, cases, seed, size).
        size: see ``dataset``.
        progress: show a tqdm progress bar.
        family: how the cases vary, one of the dataset's ``synth_families`` (ACDC:
            ``standard``, ``scanners``, ``thin``; see :data:`mper.data.synth_acdc.ACDC_FAMILIES`);
            default the first.
    """
    check_new_folder(out)
    spec = get_dataset(dataset)
    if spec.synthesize is None:
        raise ConfigError(f"{spec.title} has no synthetic generator; mper-data synth --format nnunet writes raw scans")
    family = next(iter(spec.synth_families)) if family is None else family
    if family not in spec.synth_families:
        raise ConfigError(
            f"synthetic {spec.title} data has no family {family!r}; choose one of {', '.join(spec.synth_families)}"
        )
    count = spec.synth_cases if cases is None else int(cases)
    shape = spec.synth_size if size is None else tuple(int(length) for length in size)
    with removed_on_failure(out) as folder:
        return spec.synthesize(folder, count, seed, shape, progress, family)


def convert(
    dataset: str,
    source: str | Path,
    out: str | Path,
    split_from: str | Path | None = None,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Convert the raw release of ``dataset`` found under ``source`` into its layout under
    ``out``; return ``out`` (see :mod:`mper.data.convert` for LA and ACDC). A conversion
    that fails or is interrupted removes what it wrote into ``out``.

    Args:
        dataset: a registered name with a converter.
        source: folder holding the raw download.
        out: dataset root to write: a folder that does not exist or is empty, other
            than ``source`` (:func:`~mper.data.files.check_output_folder`).
        split_from: folder with the list files of a published split to reuse; ``None``
            draws a split from ``seed``.
        seed: seed of the split (and of any random crop).
        progress: show a tqdm progress bar.

    Raises:
        ConfigError: the dataset has no converter.
        RunFolderError: ``out`` is ``source`` or holds anything.
        MissingFileError: ``source`` holds no case, or a case lacks its label file.
        DataFormatError: a volume is unreadable or malformed, or a list names a case
            that ``source`` does not hold.
    """
    spec = get_dataset(dataset)
    if spec.convert is None:
        raise ConfigError(f"{spec.title} has no converter: write its data in the layout directly")
    source, out = Path(source), Path(out)
    if not source.is_dir():
        raise MissingFileError(f"source folder {source} not found: expected {spec.raw_description}")
    check_output_folder(out, source)
    with removed_on_failure(out):
        return spec.convert(source, out, None if split_from is None else Path(split_from), seed, progress)
