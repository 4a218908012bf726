"""The plan of an imported dataset: ``ROOT/plan.toml``, a readable file the user may edit.

``mper-data import`` writes it (:func:`write_plan`); training, evaluation and prediction
read it (:func:`read_plan`). It has two parts:

* ``[dataset]``: what the import found and did. ``name`` (how runs name the data),
  ``dims`` (``"3d"``: a 3D V-Net on patches; ``"2d"``: a 2D U-Net on slices across
  ``slice_axis``), ``class_names`` (by label value) may be edited; the rest (layout,
  file ending, channels and their normalisation with the training set's CT statistics,
  the target spacing) describes the preprocessed files and changes only by importing again.
* ``[3d.<preset>...]`` and ``[2d.<preset>...]``: the settings derived from the data for
  each network, in ``mper-train``'s own names (``[3d.paper.data] patch_size = [...]`` is
  what ``--set data.patch_size=[...]`` sets). The tables of the plan's ``dims`` apply on
  top of the presets of the benchmark of the same dimensionality (LA's for 3D, ACDC's
  for 2D), preset by preset; ``--set`` still overrides them.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

from mper.data.raw_scans import CT, RAW_LAYOUTS, SCAN_NORMALIZATIONS
from mper.data.scan_preprocess import ChannelStatistics, ScanRules
from mper.errors import ConfigError, MissingFileError

PLAN_FILE = "plan.toml"
DIMS = ("2d", "3d")
#: Names a dataset may take: they name run folders too.
PLAN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
#: The runs of characters a plan's name cannot hold.
_NOT_IN_NAMES = re.compile(r"[^A-Za-z0-9_.-]+")


def plan_name(name: str, fallback: str = "scans") -> str:
    """``name`` as a plan may hold it (:data:`PLAN_NAME`): each run of other characters
    (spaces, brackets, accents) becomes one ``_``, and the name starts with a letter or
    digit; ``fallback`` when nothing is left (``dataset.json``'s free-text ``name``
    becomes the name of run folders)."""
    cleaned = _NOT_IN_NAMES.sub("_", name).lstrip("_.-").rstrip("_")
    return cleaned if PLAN_NAME.fullmatch(cleaned) else fallback


@dataclass(frozen=True)
class ScanPlan:
    """An imported dataset's plan (see the module docstring). ``settings`` holds the preset
    tables of each dimensionality, ``{"3d": {"paper": {...}, "demo": {...}}, "2d": ...}``."""

    name: str
    source: str
    layout: str
    file_ending: str
    dims: str
    slice_axis: int
    class_names: tuple[str, ...]
    channels: tuple[str, ...]
    rules: ScanRules
    median_shape: tuple[int, int, int]
    settings: Mapping[str, Mapping[str, Any]]

    @property
    def presets(self) -> Mapping[str, Any]:
        """The preset tables of the plan's ``dims``."""
        return self.settings[self.dims]

    @property
    def patch_size(self) -> tuple[int, ...]:
        return tuple(self.presets["paper"]["data"]["patch_size"])

    @property
    def stride(self) -> tuple[int, ...]:
        return tuple(self.presets["paper"]["eval"]["stride"])


# --- writing ------------------------------------------------------------------------------

_HEADER = """\
# The plan of the dataset imported from {source} by mper-data import.
# mper-train --data-root {root} trains on it; the run folder keeps a copy.
#
# [dataset]: what the import found and did. You may edit name, dims ("3d": a V-Net on 3D
# patches; "2d": a U-Net on slices across slice_axis) and class_names; the rest describes
# the preprocessed files in cases/ (import again to change it).
# [3d.*] and [2d.*]: the settings derived from the data for each dims, in mper-train's own
# names, applied on top of the presets of the benchmark of the same dimensionality (LA for
# 3d, ACDC for 2d), preset by preset: [3d.paper.data] patch_size = [...] is what
# --set data.patch_size=[...] sets. Edit them, or override any setting with --set.
"""

_COMMENTS = {
    "dims": "3d or 2d: which settings table below applies",
    "slice_axis": "the axis 2d networks slice across: the coarsest spacing",
    "class_names": "by label value, background first; rename freely",
    "spacing": "mm: every case was resampled to this grid",
    "median_shape": "voxels of the median case after cropping and resampling",
    "mask_for_norm": "true: z-scores inside the nonzero region (cropping removed a quarter of the median case)",
}


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"cannot write the non-finite value {value} into the plan")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {value!r} into the plan")


def _table(lines: list[str], name: str, table: Mapping[str, Any], comments: Mapping[str, str] | None = None) -> None:
    """``[name]`` with its values, then its sub-tables as ``[name.sub]``."""
    comments = comments or {}
    values = {key: value for key, value in table.items() if not isinstance(value, Mapping)}
    if values:
        lines += ["", f"[{name}]"]
        for key, value in values.items():
            comment = f"   # {comments[key]}" if key in comments else ""
            lines.append(f"{key} = {_value(value)}{comment}")
    for key, value in table.items():
        if isinstance(value, Mapping):
            _table(lines, f"{name}.{key}", value)


def plan_text(plan: ScanPlan, root: str | Path) -> str:
    """The text of ``plan.toml`` for ``plan`` of the dataset root ``root`` (see :func:`read_plan`)."""
    lines = _HEADER.format(source=plan.source, root=root).splitlines()
    dataset = {
        "name": plan.name,
        "source": plan.source,
        "layout": plan.layout,
        "file_ending": plan.file_ending,
        "dims": plan.dims,
        "slice_axis": plan.slice_axis,
        "class_names": list(plan.class_names),
        "spacing": list(plan.rules.spacing),
        "median_shape": list(plan.median_shape),
        "mask_for_norm": plan.rules.mask_for_norm,
    }
    _table(lines, "dataset", dataset, _COMMENTS)
    for channel, scheme, statistics in zip(plan.channels, plan.rules.schemes, plan.rules.statistics):
        lines += ["", "[[dataset.channels]]", f"name = {_value(channel)}", f"normalization = {_value(scheme)}"]
        if statistics is not None:
            lines += [
                f"mean = {_value(statistics.mean)}",
                f"std = {_value(statistics.std)}",
                f"clip = {_value([statistics.low, statistics.high])}   # foreground 0.5 and 99.5 percentiles",
            ]
    for dims in DIMS:
        for preset, table in plan.settings.get(dims, {}).items():
            _table(lines, f"{dims}.{preset}", table)
    return "\n".join(lines) + "\n"


def write_plan(plan: ScanPlan, folder: str | Path, root: str | Path | None = None) -> Path:
    """Write ``plan.toml`` into ``folder`` (the dataset root, or a run folder's copy of the
    plan of dataset root ``root``) and return its path."""
    path = Path(folder) / PLAN_FILE
    path.write_text(plan_text(plan, folder if root is None else root))
    return path


# --- reading ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _PlanFile:
    """A plan file as its errors name it: its ``path``, and ``copy_of``, the dataset root
    whose plan a run folder's copy repeats (``None`` for the dataset root's own plan)."""

    path: str
    copy_of: str | Path | None

    def __str__(self) -> str:
        return self.path

    def restore(self, by_import: str) -> str:
        """How to mend the file: ``by_import`` for a dataset root's plan; a run folder's copy
        is what the run trained with, so it comes back from the root's plan or a new run."""
        if self.copy_of is None:
            return by_import
        return f"restore it from {plan_path(self.copy_of)} or train again"


def _get(table: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: _PlanFile) -> Any:
    if key not in table:
        raise ConfigError(f"{where} lacks {key}; {where.restore('import the dataset again or restore the key')}")
    value = table[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ConfigError(f"{where}: {key} = {value!r} has the wrong type; restore the value the import wrote")
    return value


def _numbers(table: Mapping[str, Any], key: str, count: int, where: _PlanFile) -> tuple[float, ...]:
    values = _get(table, key, list, where)
    if len(values) != count or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ConfigError(f"{where}: {key} must be {count} numbers; got {values!r}")
    return tuple(float(value) for value in values)


def _channel(entry: Any, where: _PlanFile) -> tuple[str, str, ChannelStatistics | None]:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: every [[dataset.channels]] must be a table")
    name = _get(entry, "name", str, where)
    scheme = _get(entry, "normalization", str, where)
    if scheme not in SCAN_NORMALIZATIONS:
        raise ConfigError(
            f"{where}: channel {name} has normalization {scheme!r}; one of {', '.join(SCAN_NORMALIZATIONS)}"
        )
    if scheme != CT:
        return name, scheme, None
    clip = _numbers(entry, "clip", 2, where)
    statistics = ChannelStatistics(
        float(_get(entry, "mean", (int, float), where)),
        float(_get(entry, "std", (int, float), where)),
        clip[0],
        clip[1],
    )
    return name, scheme, statistics


def parse_scan_plan(text: str, path: str, copy_of: str | Path | None = None) -> ScanPlan:
    """The :class:`ScanPlan` in ``text`` (a ``plan.toml``); ``path`` names it in errors, and
    ``copy_of`` is the dataset root whose plan it copies when it is a run folder's copy."""
    where = _PlanFile(path, copy_of)
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{where} is not valid TOML ({error}); fix the line it names") from error
    dataset = document.get("dataset")
    if not isinstance(dataset, dict):
        raise ConfigError(f"{where} has no [dataset] table; {where.restore('import the dataset again')}")
    name = _get(dataset, "name", str, where)
    if not PLAN_NAME.fullmatch(name):
        raise ConfigError(f"{where}: name {name!r} must be letters, digits, '_', '.' or '-' (it names run folders)")
    dims = _get(dataset, "dims", str, where)
    if dims not in DIMS:
        raise ConfigError(f"{where}: dims must be 2d or 3d; got {dims!r}")
    layout = _get(dataset, "layout", str, where)
    if layout not in RAW_LAYOUTS:
        raise ConfigError(f"{where}: layout must be one of {', '.join(RAW_LAYOUTS)}; got {layout!r}")
    slice_axis = _get(dataset, "slice_axis", int, where)
    if slice_axis not in (0, 1, 2):
        raise ConfigError(f"{where}: slice_axis must be 0, 1 or 2; got {slice_axis}")
    class_names = _get(dataset, "class_names", list, where)
    if len(class_names) < 2 or not all(isinstance(item, str) and item for item in class_names):
        raise ConfigError(f"{where}: class_names must name the background and at least one class")
    channels = [_channel(entry, where) for entry in _get(dataset, "channels", list, where)]
    if not channels:
        raise ConfigError(f"{where}: [[dataset.channels]] must describe at least one channel")
    spacing = _numbers(dataset, "spacing", 3, where)
    median_shape = tuple(int(value) for value in _numbers(dataset, "median_shape", 3, where))
    settings = {key: document.get(key, {}) for key in DIMS}
    if not isinstance(settings[dims], dict) or "paper" not in settings[dims]:
        raise ConfigError(
            f"{where} has no [{dims}.paper] settings; {where.restore(f'import the dataset again with --dims {dims}')}"
        )
    _check_tables(document, dataset, settings[dims]["paper"], dims, where)
    rules = ScanRules(
        tuple(scheme for _, scheme, _ in channels),
        tuple(stats for _, _, stats in channels),
        bool(_get(dataset, "mask_for_norm", bool, where)),
        (spacing[0], spacing[1], spacing[2]),
    )
    return ScanPlan(
        name=name,
        source=str(dataset.get("source", "")),
        layout=layout,
        file_ending=_get(dataset, "file_ending", str, where),
        dims=dims,
        slice_axis=slice_axis,
        class_names=tuple(class_names),
        channels=tuple(name for name, _, _ in channels),
        rules=rules,
        median_shape=(median_shape[0], median_shape[1], median_shape[2]),
        settings=settings,
    )


#: The keys of a plan's [dataset] table, as :func:`plan_text` writes them.
_DATASET_KEYS = frozenset(
    {"name", "source", "layout", "file_ending", "dims", "slice_axis", "class_names", "spacing", "median_shape"}
    | {"mask_for_norm", "channels"}
)


def _check_tables(
    document: Mapping[str, Any], dataset: Mapping[str, Any], paper: Any, dims: str, where: _PlanFile
) -> None:
    """Refuse a table or a [dataset] key the plan does not hold (a typo would be ignored), and
    a ``[<dims>.paper]`` without the settings the dataset's spec reads from it."""
    unknown = sorted(set(document) - {"dataset", *DIMS})
    if unknown:
        raise ConfigError(f"{where}: unknown table [{unknown[0]}]; a plan holds [dataset], [2d.*] and [3d.*]")
    unknown = sorted(set(dataset) - _DATASET_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]} in [dataset]; its keys are {', '.join(sorted(_DATASET_KEYS))}"
        )
    axes = 3 if dims == "3d" else 2
    _check_paper_setting(paper, "data", "patch_size", axes, dims, where)
    _check_paper_setting(paper, "eval", "stride", axes, dims, where)
    _check_paper_setting(paper, None, "labeled", None, dims, where)


def _is_positive_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _check_paper_setting(
    paper: Any, table: str | None, key: str, count: int | None, dims: str, where: _PlanFile
) -> None:
    """Refuse ``[<dims>.paper(.table)] key`` unless it is a positive integer (``count`` is
    ``None``) or a list of ``count`` of them: the dataset's spec reads it."""
    holder = paper if table is None else paper.get(table) if isinstance(paper, dict) else None
    value = holder.get(key) if isinstance(holder, dict) else None
    if count is None:
        valid, described = _is_positive_integer(value), "a positive integer"
    else:
        valid = isinstance(value, list) and len(value) == count and all(map(_is_positive_integer, value))
        described = f"{count} positive integers"
    if not valid:
        name = f"[{dims}.paper{'' if table is None else '.' + table}] {key}"
        got = "it is missing" if value is None else f"got {value!r}"
        raise ConfigError(
            f"{where}: {name} must be {described}, {got}; {where.restore('restore what the import wrote')}"
        )


def plan_path(folder: str | Path) -> Path:
    return Path(folder) / PLAN_FILE


def read_plan(folder: str | Path, copy_of: str | Path | None = None) -> ScanPlan:
    """The plan in ``folder``: a dataset root's, or a run folder's copy of the plan of the
    dataset root ``copy_of``."""
    path = plan_path(folder)
    if not path.is_file():
        raise MissingFileError(f"{path} not found: a dataset imported by mper-data import holds its plan there")
    return parse_scan_plan(path.read_text(), str(path), copy_of)
