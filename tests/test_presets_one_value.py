"""One value per setting, from one home: a dataset's preset file holds every recipe setting
(its ``[paper]`` table all of them), the schema's defaults only the run settings, for every
registered dataset (the built-in ones and imported scans of both dimensionalities) and
every preset."""

from __future__ import annotations

import dataclasses
import inspect
import typing

import pytest

from mper.data.scan_plan import ScanPlan
from mper.data.scan_preprocess import ScanRules
from mper.datasets import dataset_names, get_dataset, register_dataset
from mper.datasets.registry import _REGISTRY, register_imported
from mper.datasets.scans import DataSummary, plan_settings, scan_spec
from mper.errors import ConfigError
from mper.nn import PrototypeHead
from mper.train.config import (
    NONE_TOKEN,
    RUN_SETTINGS,
    TrainConfig,
    flatten,
    load_config,
    preset_tables,
    read_preset,
    recipe_settings,
    to_toml,
)
from mper.train.teacher import slow_teacher_warning

IMPORTED = {"3d": "Imported3d", "2d": "Imported2d"}


def _imported_spec(dims: str):
    """An imported dataset's spec as ``mper-data import`` plans it (LA's or ACDC's presets
    with the plan's tables on top), without the files."""
    summary = DataSummary((48, 64, 40), (48, 64, 40), (1.0, 1.0, 1.5), 12, 10, 2, 1, 3)
    settings = {key: plan_settings(summary, key, memory_gb=1.0) for key in ("3d", "2d")}
    plan = ScanPlan(
        name=IMPORTED[dims],
        source="raw",
        layout="nnunet",
        file_ending=".nii.gz",
        dims=dims,
        slice_axis=2,
        class_names=("background", "a", "b"),
        channels=("MRI",),
        rules=ScanRules(("z-score",), (None,), False, (1.0, 1.0, 1.5)),
        median_shape=(48, 64, 40),
        settings=settings,
    )
    return scan_spec(plan)


@pytest.fixture(scope="module")
def datasets():
    imported = [register_imported(_imported_spec(dims)).name for dims in IMPORTED]
    yield dataset_names()
    for name in imported:
        del _REGISTRY[name]


def _schema_settings() -> dict[str, dataclasses.Field]:
    """Every setting of :class:`TrainConfig` as ``section.key`` (``network`` as one)."""
    fields = {}
    hints = typing.get_type_hints(TrainConfig)
    for item in dataclasses.fields(TrainConfig):
        if dataclasses.is_dataclass(hints[item.name]):
            fields |= {f"{item.name}.{inner.name}": inner for inner in dataclasses.fields(hints[item.name])}
        else:
            fields[item.name] = item
    return fields


def _has_default(item: dataclasses.Field) -> bool:
    return item.default is not dataclasses.MISSING or item.default_factory is not dataclasses.MISSING


def _flat_values(values: dict) -> dict:
    """``section.key: value`` with ``network`` as one value."""
    flat = flatten({key: value for key, value in values.items() if key != "network"})
    if "network" in values:
        flat["network"] = values["network"]
    return flat


def test_every_setting_is_a_recipe_setting_or_a_run_setting_and_only_run_settings_have_defaults():
    fields = _schema_settings()
    assert set(recipe_settings()) | set(RUN_SETTINGS) == set(fields)
    assert not set(recipe_settings()) & set(RUN_SETTINGS)
    with_default = {name for name, item in fields.items() if _has_default(item)}
    assert with_default == set(RUN_SETTINGS), "a recipe setting has a default beside its preset value"


def test_every_dataset_and_preset_gives_every_setting_one_value(datasets):
    assert {"la", "acdc", *IMPORTED.values()} <= set(datasets)
    defaults = TrainConfig.__dataclass_fields__
    for dataset in datasets:
        tables = preset_tables(dataset)
        paper = _flat_values(tables["paper"])
        assert set(recipe_settings()) - set(paper) == set(), f"{dataset}: [paper] misses a recipe setting"
        for name, table in tables.items():
            given = set(_flat_values(table))
            assert given <= set(recipe_settings()), f"{dataset} [{name}] sets {given - set(recipe_settings())}"
        for preset in [*tables, *(f"reference+{name}" for name in tables)]:
            config = load_config(dataset, preset)
            expected = _flat_values(read_preset(dataset, preset))
            built = _flat_values(config.to_dict())
            for name in recipe_settings():
                written = NONE_TOKEN if built[name] is None else built[name]
                assert expected[name] == written, f"{dataset} {preset}: {name}"
            for name in RUN_SETTINGS:
                if name not in ("dataset", "preset"):
                    assert built[name] == defaults[name].default, f"{dataset} {preset}: {name}"
            assert (config.dataset, config.preset) == (dataset, preset)


def test_the_prototype_heads_library_defaults_are_the_papers_and_kmeans_has_none():
    signature = inspect.signature(PrototypeHead.initialize)
    for name in ("method", "max_voxels", "iterations"):
        assert signature.parameters[name].default is inspect.Parameter.empty, name
    head = inspect.signature(PrototypeHead.__init__).parameters
    for dataset in ("la", "acdc"):
        prototypes = load_config(dataset).prototypes
        assert (head["tau"].default, head["nce_tau"].default) == (prototypes.tau, prototypes.nce_tau)
        assert head["ignore_index"].default == prototypes.contrastive_ignore_row


@pytest.fixture
def preset_file_dataset(tmp_path):
    """A dataset like ACDC whose preset file the test writes."""
    path = tmp_path / "presets.toml"
    spec = register_dataset(dataclasses.replace(get_dataset("acdc"), name="acdc-edited", preset_file=path))
    yield path
    del _REGISTRY[spec.name]


def test_a_preset_file_without_a_recipe_setting_is_refused_by_name(preset_file_dataset):
    tables = preset_tables("acdc")
    del tables["paper"]["eval"]["log_interval"]
    preset_file_dataset.write_text(to_toml(tables))
    with pytest.raises(
        ConfigError,
        match=r"presets.toml: \[paper\] must hold every recipe setting, 1 missing: "
        r"eval.log_interval$",
    ):
        load_config("acdc-edited", "demo")


def test_a_preset_file_that_sets_a_run_setting_is_refused(preset_file_dataset):
    tables = preset_tables("acdc")
    tables["demo"]["device"] = "cpu"
    preset_file_dataset.write_text(to_toml(tables))
    with pytest.raises(ConfigError, match=r"\[demo\] sets device, which is not a recipe setting"):
        load_config("acdc-edited", "paper")


def test_a_config_saved_before_a_setting_existed_takes_it_from_its_preset():
    saved = load_config("la", "reference+demo").to_dict()
    del saved["eval"]["log_interval"], saved["distributed"], saved["selftrain"]["keep_better_stage"]
    config = TrainConfig.from_dict(saved)
    assert config == load_config("la", "reference+demo")
    assert config.selftrain.keep_better_stage is False  # the reference preset's value
    del saved["dataset"]
    with pytest.raises(ConfigError, match="setting distributed has no value"):
        TrainConfig.from_dict(saved)


def test_no_shipped_preset_warns_that_its_own_teacher_is_slow(datasets):
    """The warning that training starts with (the teacher's EMA horizon, about
    ``1 / (1 - eta)`` iterations, above a fifth of self-training) comes from the settings
    alone: no preset of any dataset, alone or stacked on ``reference``, may give it."""
    assert {"la", "acdc", *IMPORTED.values()} <= set(datasets)
    for dataset in datasets:
        for preset in [*(tables := preset_tables(dataset)), *(f"reference+{name}" for name in tables)]:
            selftrain = load_config(dataset, preset).selftrain
            warning = slow_teacher_warning(selftrain.ema_decay, selftrain.ema_schedule, selftrain.iterations)
            assert warning is None, f"{dataset} {preset}: {warning}"
