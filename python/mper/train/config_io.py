"""Settings as TOML and nested dicts: the preset files, ``section.key=value`` overrides,
and the ``config.toml`` a run folder keeps.

The ``[paper]`` table of a dataset's preset file (its spec's ``preset_file``) holds every
setting of the recipe; any other table (``[reference]``, ``[strict]``, ``[demo]``) lists
only what it changes on top of ``[paper]``, and presets stack with ``+``
(``reference+demo``). :func:`mper.train.config.load_config` checks that ``[paper]`` is
complete.
"""

from __future__ import annotations

import sys
from typing import Any

import tomli_w

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

from mper.datasets import get_dataset
from mper.errors import ConfigError

#: Written in TOML for "no value" (TOML has no null).
NONE_TOKEN = "none"


def preset_tables(dataset: str) -> dict[str, dict[str, Any]]:
    """The tables of ``dataset``'s preset file (``paper``, ``reference``, ...), with the
    spec's ``preset_changes`` merged in (an imported dataset's plan)."""
    spec = get_dataset(dataset)
    return merge(tomllib.loads(spec.preset_file.read_text()), dict(spec.preset_changes))


def read_preset(dataset: str, preset: str) -> dict[str, Any]:
    """The values of ``preset`` for ``dataset``: ``[paper]`` with the preset's changes.

    Presets stack with ``+``, applied left to right on top of ``[paper]``: e.g.
    ``"reference+demo"`` is the authors' recipe at the demo's sizes.
    """
    tables = preset_tables(dataset)
    values = tables["paper"]
    for name in preset.split("+"):
        if not name.strip():
            raise ConfigError(
                f"preset {preset!r} has an empty name between its + signs; name presets such as reference+demo "
                f"(available for {dataset}: {', '.join(tables)})"
            )
        if name not in tables:
            raise ConfigError(
                f"preset {name!r} is not defined for {dataset}; available: {', '.join(tables)} "
                "(stack them with +, e.g. reference+demo)"
            )
        if name != "paper":
            values = merge(values, tables[name])
    return merge(values, {"dataset": dataset, "preset": preset})


def merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` applied, recursing into sub-tables."""
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"section.key": value}`` of a nested settings dict."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def parse_override(assignment: str) -> dict[str, Any]:
    """``"section.key=value"`` as a nested dict; the value is read as a TOML value.

    Strings may be given without quotes (``prototypes.update_source=labeled``);
    ``none`` means no value.
    """
    key, separator, text = assignment.partition("=")
    if not separator or not key.strip():
        raise ConfigError(f"override {assignment!r} must look like section.key=value")
    try:
        value = tomllib.loads(f"value = {text.strip()}")["value"]
    except tomllib.TOMLDecodeError:
        value = text.strip()
    nested: dict[str, Any] = {}
    target = nested
    *sections, leaf = key.strip().split(".")
    for section in sections:
        target = target.setdefault(section, {})
    target[leaf] = value
    return nested


def to_toml(values: dict[str, Any]) -> str:
    """A TOML document for a config dict (:meth:`~mper.train.config.TrainConfig.to_dict`).

    ``None`` is written as ``"none"``, which :class:`~mper.train.config.TrainConfig` reads
    back as ``None``.
    """
    return tomli_w.dumps(_without_none(values))


def _without_none(value: Any) -> Any:
    if value is None:
        return NONE_TOKEN
    if isinstance(value, dict):
        return {key: _without_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_none(item) for item in value]
    return value
