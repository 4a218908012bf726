"""Experiment plans: which training runs make up a results table.

A plan is a TOML file::

    title = "ACDC: segmentation quality (paper Table II)"
    dataset = "acdc"                # or the name of scans imported into data_root (optional then)
    preset = "paper"                # default preset of every variant
    data_root = "data/acdc"         # relative paths are taken from the working folder
    labeled = [3, 7]                # label budgets: ACDC patients / LA cases (default: the
                                    # dataset's usual ones, 5% and 10%)
    seeds = [1337, 1338, 1339]
    set = ["data.num_workers=8"]    # overrides for every run (optional)

    [[variant]]                     # one row of the table per variant and budget
    name = "U-Net"
    baseline = "labeled-only"       # none (default), labeled-only, full or bcp

    [[variant]]
    name = "MPER"
    set = ["selftrain.iterations=30000"]   # the variant's own overrides (optional)

Optional tables: ``[sweep]`` (``setting``, ``values``, ``label``) turns every variant
into one row per value of one setting, e.g. ``prototypes.per_class`` over ``[1, 2, 3,
4, 5]`` (plotted as a line); ``[synthetic]`` (``cases``, ``size``, ``seed``, ``family``) writes
synthetic data into ``data_root`` when it does not exist yet; ``[figures]`` ``tsne``
names variants whose embeddings the report draws (:mod:`mper.eval.tsne`). A variant may
also give its own ``preset`` and ``labeled`` budgets; a ``full`` baseline is trained
once per seed, with every training case labeled.

A ``data_root`` that holds scans imported by ``mper-data import`` (its ``plan.toml``)
trains on them: ``dataset`` may then be left out, or must be the import's name.

Each cell (variant, budget, seed) is one ordinary training run in its own folder,
``<out>/<variant>/<budget>/seed<seed>``. :func:`load_plan` checks the whole plan, every
run's settings included, before anything runs.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

from mper.datasets import dataset_names, get_dataset, has_plan, not_imported_yet, register_plan
from mper.errors import ConfigError
from mper.eval.protocol import check_protocol
from mper.train.config import BASELINES, TrainConfig, ignored_by_baseline, load_config

#: Budget name of a fully supervised run (every training case labeled).
ALL_LABELED = "all"
PLAN_KEYS = {
    "title",
    "dataset",
    "preset",
    "data_root",
    "labeled",
    "seeds",
    "set",
    "variant",
    "sweep",
    "synthetic",
    "figures",
}
VARIANT_KEYS = {"name", "preset", "baseline", "set", "labeled"}
SWEEP_KEYS = {"setting", "values", "label"}
SYNTHETIC_KEYS = {"cases", "size", "seed", "family"}
FIGURE_KEYS = {"tsne"}


class PlanError(ConfigError):
    """An experiment plan cannot be used as written."""


#: The settings each run takes from the plan's layout, and where the plan gives them: set
#: otherwise (``set``, ``--set``), one value would train every run while the run's folder
#: and its row of the table name another.
PLAN_SETTINGS = {
    "labeled": "labeled = [...] (or a variant's labeled)",
    "seed": "seeds = [...] (or --seeds)",
    "baseline": "a variant's baseline",
    "data_root": "data_root (or --data-root)",
    "out": "mper-experiment --out",
    "dataset": "dataset",
    "preset": "preset (or a variant's preset)",
}


def check_assignments(assignments: Sequence[str], where: str) -> None:
    """Refuse an assignment of one of :data:`PLAN_SETTINGS`, naming where the plan sets it."""
    for assignment in assignments:
        key, _, value = (part.strip() for part in assignment.partition("="))
        if key in PLAN_SETTINGS:
            raise PlanError(
                f"{where}: {assignment!r} would give every run {key} = {value} while its folder and its row say "
                f"otherwise; set it with {PLAN_SETTINGS[key]}"
            )


@dataclass(frozen=True)
class Cell:
    """One training run of a plan: a variant at a label budget and a seed."""

    variant: str
    dataset: str
    preset: str
    baseline: str
    labeled: int | None  # None: every training case labeled (``baseline = "full"``)
    seed: int
    assignments: tuple[str, ...]
    data_root: str
    run_dir: Path
    sweep_value: Any = None
    series: str = ""  # the plan's variant the row comes from (a sweep makes several rows of one)

    @property
    def budget(self) -> str:
        """The label budget as the table and the folder name show it."""
        return ALL_LABELED if self.labeled is None else str(self.labeled)

    @property
    def name(self) -> str:
        """``variant / budget / seed``, for messages."""
        return f"{self.variant} / {self.budget} labeled / seed {self.seed}"

    @property
    def key(self) -> str:
        """The run as one file name: ``<variant>_<budget>-labeled_seed<seed>``."""
        return "_".join(self.run_dir.parts[-3:])

    def overrides(self, device: str | None = None) -> dict[str, Any]:
        """The settings given to :func:`~mper.train.config.load_config` besides the preset
        and the assignments."""
        values: dict[str, Any] = {
            "data_root": self.data_root,
            "seed": self.seed,
            "baseline": self.baseline,
            "out": str(self.run_dir),
        }
        if self.labeled is not None:
            values["labeled"] = self.labeled
        if device is not None:
            values["device"] = device
        return values

    def config(self, device: str | None = None) -> TrainConfig:
        """The run's checked config."""
        _register_import(self.data_root)  # a cluster job builds it in a process of its own
        config = load_config(self.dataset, self.preset, self.overrides(device), self.assignments)
        check_protocol(config.eval.postprocess, config.eval.empty_prediction)
        return config

    def train_arguments(self, device: str | None = None) -> list[str]:
        """The ``mper-train`` arguments that train this run (they give :meth:`config`)."""
        # mper-train finds imported scans from their plan in --data-root
        imported = get_dataset(self.dataset).scans is not None
        arguments = [
            *([] if imported else ["--dataset", self.dataset]),
            "--preset",
            self.preset,
            "--data-root",
            self.data_root,
            "--seed",
            str(self.seed),
            "--out",
            str(self.run_dir),
        ]
        if self.labeled is not None:
            arguments += ["--labeled", str(self.labeled)]
        if self.baseline != "none":
            arguments += ["--baseline", self.baseline]
        if device is not None:
            arguments += ["--device", device]
        for assignment in self.assignments:
            arguments += ["--set", assignment]
        return arguments


@dataclass(frozen=True)
class Sweep:
    """One setting taken over several values, one table row each."""

    setting: str
    values: tuple[Any, ...]
    label: str

    @property
    def numeric(self) -> bool:
        """Numbers are plotted as a line, anything else as bars."""
        return all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in self.values)


@dataclass(frozen=True)
class Variant:
    """A table row (before a sweep splits it): preset, baseline and overrides."""

    name: str
    preset: str
    baseline: str = "none"
    assignments: tuple[str, ...] = ()
    labeled: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Plan:
    """A checked experiment plan (see the module docstring)."""

    name: str
    title: str
    dataset: str
    data_root: str
    labeled: tuple[int, ...]
    seeds: tuple[int, ...]
    variants: tuple[Variant, ...]
    sweep: Sweep | None = None
    synthetic: dict[str, Any] | None = None
    tsne: tuple[str, ...] = ()
    path: Path | None = field(default=None, compare=False)

    def rows(self) -> list[tuple[str, Variant, Any]]:
        """``(row name, variant, sweep value)`` in table order: variants, then sweep values."""
        return _rows(self.variants, self.sweep)

    def budgets(self, variant: Variant) -> list[int | None]:
        """The label budgets a variant is trained at (``None``: all labeled)."""
        if variant.baseline == "full":
            return [None]
        return list(variant.labeled or self.labeled)

    def cells(self, out: str | Path) -> list[Cell]:
        """Every run of the plan under the output folder ``out``: seed by seed, budget by
        budget, in row order."""
        cells = []
        for row, variant, value in self.rows():
            assignments = variant.assignments
            if self.sweep is not None:
                assignments += (f"{self.sweep.setting}={_toml_literal(value)}",)
            for labeled in self.budgets(variant):
                for seed in self.seeds:
                    folder = Path(out) / slug(row) / _budget_folder(labeled) / f"seed{seed}"
                    cells.append(
                        Cell(
                            row,
                            self.dataset,
                            variant.preset,
                            variant.baseline,
                            labeled,
                            seed,
                            assignments,
                            self.data_root,
                            folder,
                            value,
                            variant.name,
                        )
                    )
        # seed by seed: a sweep stopped early already has whole tables of its first seeds
        return sorted(cells, key=lambda cell: (self.seeds.index(cell.seed), self._budget_order(cell.labeled)))

    def _budget_order(self, labeled: int | None) -> int:
        return self.labeled.index(labeled) if labeled in self.labeled else len(self.labeled)

    def with_changes(
        self, data_root: str | None = None, seeds: Sequence[int] | None = None, assignments: Sequence[str] = ()
    ) -> Plan:
        """This plan with another data folder, other seeds, or overrides added to every run."""
        check_assignments(assignments, "--set")
        if seeds is not None:
            twice = sorted({seed for seed in seeds if list(seeds).count(seed) > 1})
            if twice:
                # one run would count as several seeds: its value twice in the mean, a spread of 0
                raise PlanError(
                    f"--seeds lists seed {', '.join(map(str, twice))} twice ({','.join(map(str, seeds))}); give each "
                    "seed once"
                )
        variants = tuple(
            replace(variant, assignments=variant.assignments + tuple(assignments)) for variant in self.variants
        )
        return replace(
            self, data_root=data_root or self.data_root, seeds=tuple(seeds) if seeds else self.seeds, variants=variants
        )

    def check(self, out: str | Path = "runs") -> None:
        """Build every run's config: a bad setting raises :class:`PlanError` naming the run."""
        for cell in self.cells(out):
            try:
                cell.config()
            except ConfigError as error:
                raise PlanError(f"{self.source}: run {cell.name}: {error}") from error

    @property
    def source(self) -> str:
        """The plan as messages name it (:func:`_source`)."""
        return _source(self.name, self.path)


def _source(name: str, path: Path | None) -> str:
    """A plan as messages name it: its file, or ``plan '<name>'``."""
    return str(path) if path else f"plan {name!r}"


def slug(name: str) -> str:
    """A folder name for a row name: lower case, runs of other characters as ``-``, no
    dot or dash at either end (a row named ``..`` trains inside the output folder, not
    beside it)."""
    return re.sub(r"[^a-z0-9.=+]+", "-", name.lower()).strip("-.") or "run"


def _budget_folder(labeled: int | None) -> str:
    return "all-labeled" if labeled is None else f"{labeled}-labeled"


def _rows(variants: Sequence[Variant], sweep: Sweep | None) -> list[tuple[str, Variant, Any]]:
    if sweep is None:
        return [(variant.name, variant, None) for variant in variants]
    return [
        (_sweep_row(variant.name, sweep, value, len(variants)), variant, value)
        for variant in variants
        for value in sweep.values
    ]


def _sweep_row(variant: str, sweep: Sweep, value: Any, variant_count: int) -> str:
    label = f"{sweep.label}={value}"
    return label if variant_count == 1 else f"{variant} {label}"


def _toml_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return repr(value)


def load_plan(path: str | Path, data_root: str | Path | None = None) -> Plan:
    """Read and check the plan at ``path`` (imported scans read from ``data_root``, default
    the plan's own, see :func:`parse_plan`); raises :class:`PlanError` naming the file and
    what is wrong."""
    path = Path(path)
    try:
        document = tomllib.loads(path.read_text())
    except FileNotFoundError as error:
        raise PlanError(
            f"no experiment plan at {path}; give the path of a .toml plan (see the experiments/ folder)"
        ) from error
    except tomllib.TOMLDecodeError as error:
        raise PlanError(f"{path} is not valid TOML: {error}") from error
    plan = parse_plan(document, name=path.stem, path=path, data_root=data_root)
    plan.check()
    return plan


def parse_plan(
    document: dict[str, Any], name: str, path: Path | None = None, data_root: str | Path | None = None
) -> Plan:
    """A :class:`Plan` from a parsed TOML document (checked except for the runs' settings).

    Scans imported into ``data_root`` (default: the plan's ``data_root``) are registered
    from their ``plan.toml``, and are the plan's dataset when it names none.
    """
    where = _source(name, path)
    reader = _Reader(where)
    reader.known(document, PLAN_KEYS, "")
    dataset = _plan_dataset(reader, document, data_root or reader.text(document, "data_root"))
    preset = reader.text(document, "preset", default="paper")
    common = reader.strings(document, "set")
    check_assignments(common, f"{where}: set")
    variants = [
        _variant(reader, table, preset, common, index) for index, table in enumerate(reader.tables(document, "variant"))
    ]
    if not variants:
        raise PlanError(f"{where}: a plan needs at least one [[variant]]")
    names = [variant.name for variant in variants]
    duplicate = next((name for name in names if names.count(name) > 1), None)
    if duplicate:
        raise PlanError(f"{where}: two variants are named {duplicate!r}; give each its own name")
    sweep = _sweep(reader, document.get("sweep"))
    _check_sweep_used(reader, variants, sweep)
    _check_folders(reader, variants, sweep)
    figures = document.get("figures", {})
    reader.known(figures, FIGURE_KEYS, "figures.")
    tsne = tuple(reader.strings(figures, "tsne"))
    unknown = [entry for entry in tsne if entry not in names]
    if unknown:
        raise PlanError(f"{where}: figures.tsne names {unknown[0]!r}, which is not a variant ({', '.join(names)})")
    synthetic = document.get("synthetic")
    if synthetic is not None:
        reader.known(synthetic, SYNTHETIC_KEYS, "synthetic.")
        if get_dataset(dataset).scans is not None:
            reader.fail(
                f"[synthetic] writes data of a built-in dataset ({', '.join(dataset_names(imported=False))}), but "
                f"{dataset} is imported scans; remove [synthetic]"
            )
        _check_synthetic(reader, synthetic, dataset)
    return Plan(
        name=name,
        title=reader.text(document, "title", default=name),
        dataset=dataset,
        data_root=reader.text(document, "data_root"),
        labeled=(
            tuple(reader.integers(document, "labeled", minimum=1))
            if "labeled" in document
            else get_dataset(dataset).label_budgets
        ),
        seeds=tuple(reader.integers(document, "seeds", minimum=0)),
        variants=tuple(variants),
        sweep=sweep,
        synthetic=synthetic,
        tsne=tsne,
        path=path,
    )


def _check_synthetic(reader: _Reader, synthetic: dict[str, Any], dataset: str) -> None:
    """The types of ``[synthetic]``'s values, and its family, before anything is written (a
    wrong one stopped the sweep in a traceback, or in a line that named neither the plan nor
    the key, after the plan had been listed as sound)."""
    spec = get_dataset(dataset)
    if "cases" in synthetic and not _whole(synthetic["cases"], 1):
        reader.fail(f"synthetic.cases must be a whole number >= 1, e.g. cases = 16; got {synthetic['cases']!r}")
    if "seed" in synthetic and not _whole(synthetic["seed"], 0):
        reader.fail(f"synthetic.seed must be a whole number >= 0; got {synthetic['seed']!r}")
    size = synthetic.get("size", list(spec.synth_size))
    if not isinstance(size, list) or len(size) != len(spec.synth_size) or not all(_whole(n, 1) for n in size):
        example = ", ".join(map(str, spec.synth_size))
        reader.fail(
            f"synthetic.size must be a list of {len(spec.synth_size)} whole numbers for {spec.title} data, e.g. "
            f"size = [{example}]; got {size!r}"
        )
    family = synthetic.get("family", next(iter(spec.synth_families)))
    if family not in spec.synth_families:
        reader.fail(f"synthetic.family must be one of {', '.join(spec.synth_families)}; got {family!r}")


def _whole(value: Any, minimum: int) -> bool:
    """Whether ``value`` is a whole number (not a bool) of at least ``minimum``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _plan_dataset(reader: _Reader, document: dict[str, Any], root: str | Path) -> str:
    """The plan's ``dataset``, or the scans imported into ``root`` (registered from their
    plan) when it names none; refused when neither is a dataset or the two disagree."""
    imported = _register_import(root)
    dataset = document.get("dataset", imported)
    raw = not_imported_yet(root) if dataset is None else None
    if raw is not None:
        reader.fail(f"data_root {raw}, then set data_root (or --data-root) to DIR")
    if dataset not in dataset_names():
        given = "it is missing" if dataset is None else f"got {dataset!r}"
        found = f"holds the imported {imported!r}" if imported else "holds no plan.toml of mper-data import"
        reader.fail(
            f"dataset must be one of {', '.join(dataset_names(imported=False))}, or left out when data_root holds "
            f"scans imported by mper-data import; {given}, and {root} {found}"
        )
    if imported and dataset != imported:
        reader.fail(
            f"dataset = {dataset!r}, but data_root {root} holds the scans {imported!r} imported by mper-data import; "
            f"leave dataset out (or set it to {imported!r}) to train on them, or give the folder of the {dataset} data"
        )
    return dataset


def _register_import(data_root: str | Path) -> str | None:
    """The name of the scans imported into ``data_root``, registered from their plan;
    ``None`` when the folder holds no import."""
    return register_plan(data_root).name if has_plan(data_root) else None


def _variant(reader: _Reader, table: dict[str, Any], preset: str, common: list[str], index: int) -> Variant:
    prefix = f"variant[{index}]."
    reader.known(table, VARIANT_KEYS, prefix)
    name = reader.text(table, "name", prefix=prefix)
    labeled = tuple(reader.integers(table, "labeled", minimum=1, prefix=prefix)) if "labeled" in table else None
    assignments = reader.strings(table, "set", prefix=prefix)
    check_assignments(assignments, f"{reader.where}: {prefix}set")
    baseline = reader.choice(table, "baseline", BASELINES, default="none", prefix=prefix)
    if baseline == "full" and labeled is not None:
        reader.fail(
            f'{prefix}labeled = {list(labeled)} has no effect on baseline = "full", which labels every training '
            f"case (its row is 'all labeled'); remove {prefix}labeled"
        )
    return Variant(
        name=name,
        preset=reader.text(table, "preset", default=preset, prefix=prefix),
        baseline=baseline,
        assignments=tuple(common + assignments),
        labeled=labeled,
    )


def _check_folders(reader: _Reader, variants: list[Variant], sweep: Sweep | None) -> None:
    """Every row gets a folder of its own: two rows whose names differ only in case or in
    characters a folder name leaves out (``"MPER"`` and ``"mper"``, ``"a/b"`` and ``"a-b"``)
    would train into one folder and report one run for both."""
    seen: dict[str, str] = {}
    for row, _, _ in _rows(variants, sweep):
        folder = slug(row)
        if folder in seen:
            reader.fail(
                f"rows {seen[folder]!r} and {row!r} would share the run folder {folder!r}; "
                "give them names that differ in more than case and punctuation"
            )
        seen[folder] = row


def _check_sweep_used(reader: _Reader, variants: list[Variant], sweep: Sweep | None) -> None:
    """A sweep over a setting that a variant's baseline leaves out of its training would
    train that variant's row once per value, the same run each time."""
    if sweep is None or len(sweep.values) < 2:
        return
    for index, variant in enumerate(variants):
        why = ignored_by_baseline(variant.baseline, sweep.setting)
        if why:
            count = len(sweep.values)
            reader.fail(
                f"sweep.setting = {sweep.setting!r} plays no part in variant[{index}] {variant.name!r}: {why}; its "
                f"{count} rows would train the same runs {count} times; train {variant.name!r} in a plan of its own "
                "without the [sweep] (or remove it from this one)"
            )


def _sweep(reader: _Reader, table: dict[str, Any] | None) -> Sweep | None:
    if table is None:
        return None
    reader.known(table, SWEEP_KEYS, "sweep.")
    setting = reader.text(table, "setting", prefix="sweep.").strip()
    if setting in PLAN_SETTINGS:
        # the sweep's value would train every run of a row while its folder and its row name another
        reader.fail(
            f"sweep.setting = {setting!r} is laid out by the plan itself (each run's folder and row name it); "
            f"set it with {PLAN_SETTINGS[setting]} instead of a [sweep]"
        )
    values = table.get("values")
    if not isinstance(values, list) or not values:
        reader.fail("sweep.values must be a non-empty list of values for " + setting)
    twice = next((value for index, value in enumerate(values) if _same_value(value, values[:index])), None)
    if twice is not None:
        reader.fail(f"sweep.values lists {_toml_literal(twice)} twice: {values}; give each value once")
    return Sweep(setting, tuple(values), reader.text(table, "label", default=setting, prefix="sweep."))


def _same_value(value: Any, others: Sequence[Any]) -> bool:
    """Whether ``value`` is one of ``others`` as a setting takes it (``1`` and ``1.0`` alike,
    ``True`` and ``1`` not)."""
    return any(type(value) is type(other) and value == other for other in others) or any(
        _number(value) and _number(other) and value == other for other in others
    )


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class _Reader:
    """Typed access to a plan's values, failing with the file and the key."""

    def __init__(self, where: str):
        self.where = where

    def fail(self, message: str) -> NoReturn:
        raise PlanError(f"{self.where}: {message}")

    def known(self, table: Any, keys: set[str], prefix: str) -> None:
        if not isinstance(table, dict):
            self.fail(f"{prefix.rstrip('.')} must be a table")
        unknown = sorted(set(table) - keys)
        if unknown:
            self.fail(f"unknown key {prefix}{unknown[0]}; valid keys: {', '.join(sorted(keys))}")

    def text(self, table: dict[str, Any], key: str, default: str | None = None, prefix: str = "") -> str:
        value = table.get(key, default)
        if not isinstance(value, str) or not value:
            self.fail(f"{prefix}{key} must be a non-empty string" + ("" if key in table else " (it is missing)"))
        return value

    def choice(
        self, table: dict[str, Any], key: str, choices: Sequence[str], default: str | None = None, prefix: str = ""
    ) -> str:
        value = self.text(table, key, default, prefix)
        if value not in choices:
            self.fail(f"{prefix}{key} must be one of {', '.join(choices)}; got {value!r}")
        return value

    def strings(self, table: dict[str, Any], key: str, prefix: str = "") -> list[str]:
        values = table.get(key, [])
        if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
            self.fail(f'{prefix}{key} must be a list of strings, e.g. ["selftrain.iterations=500"]')
        return list(values)

    def integers(self, table: dict[str, Any], key: str, minimum: int, prefix: str = "") -> list[int]:
        values = table.get(key)
        if not isinstance(values, list) or not values or not all(_whole(value, minimum) for value in values):
            self.fail(f"{prefix}{key} must be a non-empty list of integers >= {minimum}")
        if len(set(values)) != len(values):
            self.fail(f"{prefix}{key} lists a value twice: {values}")
        return list(values)

    def tables(self, table: dict[str, Any], key: str) -> list[dict[str, Any]]:
        values = table.get(key, [])
        if not isinstance(values, list) or not all(isinstance(value, dict) for value in values):
            self.fail(f"{key} must be written as [[{key}]] tables")
        return values
