"""Run configuration: the settings' schema, filled from the shipped preset files and overrides.

Two kinds of settings, each with one home:

* the recipe (every setting but :data:`RUN_SETTINGS`): what a run computes. Its home is
  the dataset's preset file (its spec's ``preset_file``, for the built-in ones
  ``mper/presets/<dataset>.toml``), whose ``[paper]`` table holds every recipe setting;
  the dataclasses below declare them without defaults. Any other table (``[reference]``,
  ``[strict]``, ``[demo]``) lists only what it changes on top of ``[paper]``, and presets
  stack with ``+`` (``reference+demo``).
* :data:`RUN_SETTINGS`: which data, where and how a run computes it (device, ops module,
  mixed precision, ...) and its identity; their home is the defaults below and the
  command line, never a preset.

Values are grouped in sections (``data``, ``optim``, ``pretrain``, ``selftrain``,
``prototypes``, ``eval``, ``losses``, ``network``, ``distributed``) and addressed as
``section.key`` by overrides, e.g. ``selftrain.iterations=500``. docs/method.md explains
every setting. The checks live in :mod:`mper.train.config_checks`, the TOML reading and
writing in :mod:`mper.train.config_io`; this module is their import point.

``network`` is passed as keyword arguments to the dataset's network (its spec's
``build_network``), so it accepts whatever that network accepts (``channels``, ``dropout`` for the U-Net;
``base_filters``, ``normalization`` for the V-Net).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from typing import Any

from mper.datasets import get_dataset
from mper.errors import ConfigError
from mper.losses import DiceOptions
from mper.nn import OPS_MODULES

from .config_checks import (
    AMP_MODES,
    BASELINES,
    CHOICES,
    CONSISTENCY_CHECKS,
    RANGE_RULES,
    check_config,
    unknown_setting,
)
from .config_io import NONE_TOKEN, flatten, merge, parse_override, preset_tables, read_preset, to_toml

__all__ = [
    "AMP_MODES",
    "BASELINES",
    "CHOICES",
    "CONSISTENCY_CHECKS",
    "NONE_TOKEN",
    "OPS_MODULES",
    "RANGE_RULES",
    "RUN_SETTINGS",
    "SUPERVISED_BASELINES",
    "DataConfig",
    "DistributedConfig",
    "EvalConfig",
    "LossConfig",
    "OptimConfig",
    "PretrainConfig",
    "PrototypeConfig",
    "SelfTrainConfig",
    "TrainConfig",
    "flatten",
    "ignored_by_baseline",
    "load_config",
    "merge",
    "parse_override",
    "preset_tables",
    "read_preset",
    "recipe_settings",
    "stage_iterations",
    "to_toml",
    "training_stages",
    "with_prototypes",
]

#: Baselines that train the network alone, supervised, in one stage (no self-training).
SUPERVISED_BASELINES = ("labeled-only", "full")
#: The settings that are not part of a recipe: which data and where a run reads and
#: writes, how its steps run (without changing what they compute) and its identity.
#: Their defaults below are their one home; presets never set them.
RUN_SETTINGS = (
    "dataset",
    "data_root",
    "preset",
    "device",
    "ops",
    "out",
    "baseline",
    "amp",
    "run_id",
    "compile",
    "channels_last",
)


@dataclass(kw_only=True)
class DataConfig:
    """Patches, batches and the validation cases used to pick the best checkpoint.

    ``val_split``: ``"val"`` (the val.list, e.g. ACDC's), ``"holdout"`` (the last
    ``holdout_cases`` cases of train.list, kept out of training; their labels only
    select checkpoints; e.g. LA) or ``"test"`` (the published LA protocol, which selects
    on the test set) or ``"fold"`` (fold ``fold`` of ``folds`` of the labeled training
    cases, kept out of training, see :func:`mper.data.splits.fold_cases`); each dataset's
    spec says which it offers. ``image_interpolation``:
    how 2D training slices are resized to ``patch_size`` (``"nearest"`` or ``"cubic"``;
    labels are always resized by nearest neighbour).
    """

    patch_size: tuple[int, ...]
    batch_size: int
    labeled_batch_size: int
    num_workers: int
    val_split: str
    holdout_cases: int
    image_interpolation: str
    fold: int
    folds: int


@dataclass(kw_only=True)
class OptimConfig:
    """SGD; the learning rate is multiplied by ``lr_gamma`` every ``lr_step`` iterations
    of a stage (``lr_step = 0``: constant). With ``carry_over``, self-training starts
    from the optimizer state (momentum buffers) saved with the best pre-training
    checkpoint instead of a fresh optimizer."""

    lr: float
    momentum: float
    weight_decay: float
    lr_step: int
    lr_gamma: float
    carry_over: bool


@dataclass(kw_only=True)
class PretrainConfig:
    """Supervised copy-paste pre-training on labeled images; loss ``scale * (CE + Dice)``.

    ``loss``: ``"per-region"`` (CE + Dice of the region kept from the first image plus
    CE + Dice of the pasted box, each against its own image's label) or
    ``"whole-image"`` (one CE + Dice over the whole mixed image).
    """

    iterations: int
    loss_scale: float
    box_fraction: float
    loss: str


@dataclass(kw_only=True)
class SelfTrainConfig:
    """Mean Teacher self-training with bidirectional copy-paste (docs/method.md, "Training").

    ``ema_decay`` is eta; ``unlabeled_weight`` is u; ``consistency_scale`` multiplies
    each ``CE + Dice`` of Eq. 4 (1 in the paper, 0.5 in BCP's code);
    ``ramp_weight``/``rampup_epochs``/``ramp_epoch_length`` define lambda(t);
    ``contrastive_weight`` is gamma; ``pseudo_label_threshold``: ``None`` for the argmax,
    a probability for two-class tasks (``p_1 >= threshold``).

    ``teacher_mode``: the teacher predicts pseudo labels in ``"train"`` mode (dropout on,
    batch statistics) or ``"eval"`` mode. ``ema_schedule``: ``"constant"`` decay eta, or
    ``"warmup"`` ``min(1 - 1/(t+1), eta)``. ``ema_scope``: the EMA averages the
    ``"parameters"`` only or the whole ``"state"`` (parameters and batch-norm buffers).
    ``forward_passes``: 1 (both copy-paste directions in one forward) or 2 (one forward
    per direction, and per unlabeled half for the teacher, each with its own batch-norm
    statistics). ``forward_order``: which direction goes first, the mix whose surround
    comes from the labeled image or the one whose surround comes from the unlabeled
    image. ``contrastive_reduction``: InfoNCE is a mean over each direction's voxels;
    ``"sum"`` adds the two directions' means, ``"mean"`` averages them.
    ``keep_better_stage``: self-training's best checkpoint must beat the best
    pre-training validation Dice, else ``best.pt`` keeps the pre-trained network.
    """

    iterations: int
    ema_decay: float
    unlabeled_weight: float
    consistency_scale: float
    ramp_weight: float
    rampup_epochs: float
    ramp_epoch_length: int
    contrastive_weight: float
    pseudo_label_threshold: float | None
    teacher_mode: str
    ema_schedule: str
    ema_scope: str
    forward_passes: int
    forward_order: str
    contrastive_reduction: str
    keep_better_stage: bool


@dataclass(kw_only=True)
class PrototypeConfig:
    """The prototype classifier and bank (docs/method.md, "Prototype classifier" and
    "Prototype update").

    ``per_class`` is K; ``tau``/``nce_tau`` are tau1/tau2; ``momentum`` is alpha;
    ``contrastive_ignore_row``: bank row whose nearest voxels InfoNCE leaves out
    (``None``: none; 0 in the reference code). ``update_steps``: ``"combined"`` (one EMA
    step per iteration from every gated voxel) or ``"region-wise"`` (for each direction
    in forward order, one step from its unlabeled region, then one from its labeled
    region: four steps, the second direction classified with the bank the first one
    moved). ``kmeans``: ``"minibatch"`` (mini-batch k-means) or ``"lloyd"`` (k-means++
    then ``kmeans_iterations`` Lloyd steps); ``kmeans_max_voxels`` caps the voxels kept
    per class (0: all); ``kmeans_augment``: the features come from one augmented epoch
    of the pre-training batches, or from every labeled item once, unaugmented.
    """

    per_class: int
    tau: float
    nce_tau: float
    momentum: float
    confidence_threshold: float
    update_source: str
    update_background: bool
    contrastive_ignore_row: int | None
    kmeans_iterations: int
    kmeans_max_voxels: int
    update_steps: str
    kmeans: str
    kmeans_augment: bool


@dataclass(kw_only=True)
class EvalConfig:
    """Validation during training and the final evaluation.

    ``stride``: the sliding window's step, for datasets predicted by a sliding window
    (``none`` for those predicted slice by slice);
    ``val_interval``/``checkpoint_interval``: iterations between validations / resume
    checkpoints; ``log_interval``: iterations between reads of the logged losses (the
    steps keep them on the device, so an iteration never waits for the GPU to finish;
    a non-finite loss stops the run at the next read);
    ``num_figures``: cases drawn as PNG overlays. ``postprocess``: applied
    to test predictions before scoring (``"none"`` or ``"largest-component"``: keep each
    class's largest connected component). ``empty_prediction``: how a class predicted
    nowhere that the ground truth holds is scored, ``"zero"`` (Dice, Jaccard, 95HD and ASD
    all 0, as the published evaluation scripts do) or ``"undefined"`` (Dice 0, distances
    undefined and counted); one the ground truth lacks too scores Dice 1, distances 0.
    ``pseudo_label_dice``: score self-training's pseudo labels against the unlabeled
    images' own labels (turn off when those files carry no real labels);
    ``teacher_dice``: validate the teacher too (see :mod:`mper.train.diagnostics`).
    """

    val_interval: int
    checkpoint_interval: int
    log_interval: int
    stride: tuple[int, ...] | None
    num_figures: int
    postprocess: str
    empty_prediction: str
    pseudo_label_dice: bool
    teacher_dice: bool


@dataclass(kw_only=True)
class LossConfig:
    """The soft Dice loss of both stages (docs/method.md, "Losses").

    ``dice``: ``"pooled-squared"`` (one ratio per class over the whole batch, denominator
    ``sum p^2 + sum y``) or ``"per-sample-linear"`` (one ratio per image and class,
    denominator ``sum p + sum y``). ``dice_background``: the background class's term is
    restricted to the loss region (``"region"``) or taken over the ``"whole-image"``.
    ``dice_smooth`` is added to numerator and denominator.
    """

    dice: str
    dice_background: str
    dice_smooth: float

    def options(self) -> DiceOptions:
        """These settings as the loss functions take them."""
        return DiceOptions(self.dice, self.dice_background, self.dice_smooth)


@dataclass(kw_only=True)
class DistributedConfig:
    """Training on several processes started by ``torchrun`` (see
    :mod:`mper.train.distributed`); nothing changes in a single process unless
    ``force_group`` is set.

    ``sync_batchnorm``: batch norm normalises with the statistics of the global batch
    (every process's share), as one process on the whole batch would. ``timeout``:
    seconds a process waits in a collective for the others before it stops with an
    error (the bound on noticing a dead or hung process where the backend cannot tell
    at once). ``check_bank``: after every iteration, assert that the prototype bank is
    bit-identical on every process (one broadcast of the bank; a debugging aid).
    ``force_group``: a single process joins a process group of its own (NCCL on CUDA,
    gloo on the CPU), so that the multi-process code runs there too: the student in
    ``DistributedDataParallel`` with its batch norms converted, the losses' pooled sums,
    the bank's update sums and the logged scalars all-reduced (a check of that code on
    one GPU; PyTorch's ``SyncBatchNorm`` itself normalises locally in a group of one).
    """

    sync_batchnorm: bool
    timeout: int
    check_bank: bool
    force_group: bool


@dataclass(kw_only=True)
class TrainConfig:
    """Everything a training run needs; ``to_dict``/``from_dict`` round-trip it.

    ``run_id`` names one training run: :func:`mper.pipeline.train` draws it when a run
    starts (whatever was given) and writes it into ``config.toml`` and every checkpoint,
    so that ``--resume`` can refuse a ``last.pt`` that belongs to another run.

    How the training steps run, without changing what they compute: ``amp`` (``"bf16"``:
    bfloat16 autocast, CUDA only); ``compile``: the student's and the teacher's steps
    through ``torch.compile`` (see :mod:`mper.train.compiled`); ``channels_last``: the
    networks and their inputs in the channels-last memory format (``channels_last`` in 2D,
    ``channels_last_3d`` in 3D).
    """

    dataset: str = ""
    data_root: str = ""
    preset: str = "paper"
    device: str = "auto"
    ops: str = "mper"
    out: str = ""
    baseline: str = "none"
    amp: str = "off"
    run_id: str = ""
    compile: bool = False
    channels_last: bool = False
    labeled: int
    num_classes: int
    seed: int
    network: dict[str, Any]
    data: DataConfig
    optim: OptimConfig
    pretrain: PretrainConfig
    selftrain: SelfTrainConfig
    prototypes: PrototypeConfig
    eval: EvalConfig
    losses: LossConfig
    distributed: DistributedConfig

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), for checkpoints, JSON and TOML."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build and check a config; unknown keys, missing recipe settings, wrong types and
        invalid values raise :class:`~mper.errors.ConfigError`.

        A config saved by a run before one of today's recipe settings existed takes that
        setting from the run's preset (``values["preset"]`` of ``values["dataset"]``).
        """
        if missing_settings(values) and values.get("dataset"):
            values = merge(read_preset(values["dataset"], values.get("preset", "paper")), values)
        config = _build(cls, values, "")
        config.check()
        return config

    def check(self) -> None:
        """Raise :class:`~mper.errors.ConfigError` naming the first invalid value.

        The dataset, every choice, every numeric range of :data:`RANGE_RULES` and every rule that
        ties settings together (:data:`CONSISTENCY_CHECKS`) is checked, so that a bad
        value is refused before any work is done (:func:`~mper.train.config_checks.check_config`).
        """
        check_config(self)


def with_prototypes(config: TrainConfig) -> bool:
    """Whether self-training has the prototype head (MPER) or not (``baseline = "bcp"``:
    bidirectional copy-paste alone, trained by ``L_cons^l`` only, with no prototype
    initialisation, classifier, contrastive term or bank update)."""
    return config.baseline != "bcp"


#: Self-training settings ``baseline = "bcp"`` leaves out with the prototype head: the
#: ramp and the weights of the terms it has no part of (Eq. 6 without ``L_cons^p``, ``L_cont``).
_BCP_IGNORED = (
    "selftrain.contrastive_weight",
    "selftrain.contrastive_reduction",
    "selftrain.ramp_weight",
    "selftrain.rampup_epochs",
    "selftrain.ramp_epoch_length",
)


def ignored_by_baseline(baseline: str, setting: str) -> str:
    """Why ``baseline`` trains the same network whatever ``setting`` (``section.key``) is;
    ``""`` when the setting plays a part in it. The supervised baselines
    (:data:`SUPERVISED_BASELINES`) train the network alone on labeled images, unmixed, for
    ``pretrain.iterations + selftrain.iterations``; ``bcp`` self-trains without the
    prototype head (see :func:`with_prototypes`)."""
    section, _, key = setting.partition(".")
    if baseline in SUPERVISED_BASELINES:
        if section == "prototypes" or (section == "selftrain" and key != "iterations"):
            return (
                f'baseline = "{baseline}" trains the network alone on labeled images (no teacher, no prototypes; '
                "of self-training only selftrain.iterations counts)"
            )
        if setting in ("pretrain.box_fraction", "pretrain.loss"):
            return f'baseline = "{baseline}" trains on labeled images as they are, not copy-pasted'
    if baseline == "bcp" and (section == "prototypes" or setting in _BCP_IGNORED):
        return 'baseline = "bcp" self-trains without the prototype head (no prototypes, L_cons^p or L_cont)'
    return ""


def training_stages(config: TrainConfig) -> tuple[str, ...]:
    """The stages a run trains, in order: ``baseline`` alone for the supervised baselines
    (:data:`SUPERVISED_BASELINES`), else ``pretrain`` then ``selftrain``."""
    return ("baseline",) if config.baseline in SUPERVISED_BASELINES else ("pretrain", "selftrain")


def stage_iterations(config: TrainConfig, stage: str) -> int:
    """The iterations of ``stage`` (one of :func:`training_stages`): a supervised baseline
    trains as many as pre-training and self-training together."""
    if stage == "baseline":
        return config.pretrain.iterations + config.selftrain.iterations
    return {"pretrain": config.pretrain.iterations, "selftrain": config.selftrain.iterations}[stage]


def recipe_settings() -> list[str]:
    """Every recipe setting as ``section.key`` (``network`` as one setting: what it holds
    depends on the dataset's network)."""
    names = []
    for item in dataclasses.fields(TrainConfig):
        if item.name in RUN_SETTINGS:
            continue
        hint = typing.get_type_hints(TrainConfig)[item.name]
        if dataclasses.is_dataclass(hint):
            names += [f"{item.name}.{inner.name}" for inner in dataclasses.fields(hint)]
        else:
            names.append(item.name)
    return names


def missing_settings(values: dict[str, Any]) -> list[str]:
    """The recipe settings that the nested dict ``values`` does not set."""
    given = set(flatten(values)) | {key for key, value in values.items() if isinstance(value, dict)}
    return [name for name in recipe_settings() if name not in given]


def load_config(
    dataset: str,
    preset: str = "paper",
    overrides: dict[str, Any] | None = None,
    assignments: list[str] | tuple[str, ...] = (),
) -> TrainConfig:
    """The preset's config with ``overrides`` (a nested dict) and ``assignments``
    (``"section.key=value"`` strings) applied, in that order.

    Raises :class:`~mper.errors.ConfigError` when the preset file's ``[paper]`` table
    misses a recipe setting or a preset sets one of :data:`RUN_SETTINGS`.
    """
    _check_preset_file(dataset)
    values = read_preset(dataset, preset)
    for change in [overrides or {}, *map(parse_override, assignments)]:
        values = merge(values, change)
    return TrainConfig.from_dict(values)


def _check_preset_file(dataset: str) -> None:
    """``[paper]`` holds every recipe setting and no table holds a run setting."""
    tables = preset_tables(dataset)
    where = f"{get_dataset(dataset).preset_file}"
    missing = missing_settings(tables["paper"])
    if missing:
        raise ConfigError(
            f"{where}: [paper] must hold every recipe setting, {len(missing)} missing: {', '.join(missing)}"
        )
    for name, table in tables.items():
        run_settings = sorted(set(table) & set(RUN_SETTINGS))
        if run_settings:
            raise ConfigError(
                f"{where}: [{name}] sets {run_settings[0]}, which is not a recipe setting; remove it and "
                "give it on the command line"
            )


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    """Instantiate dataclass ``cls`` from ``values``, checking names and types."""
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a table, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = {item.name for item in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise unknown_setting(prefix + unknown[0], [prefix + name for name in sorted(names)])
    missing = [
        item.name
        for item in dataclasses.fields(cls)
        if item.name not in values
        and item.default is dataclasses.MISSING
        and item.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(
            f"setting {prefix}{missing[0]} has no value; the preset's [paper] table sets every recipe setting, "
            f"or give it as {prefix}{missing[0]}=..."
        )
    arguments = {}
    for name, value in values.items():
        hint = hints[name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            arguments[name] = _build(hint, value, f"{prefix}{name}.")
        else:
            arguments[name] = _coerce(value, hint, prefix + name)
    return cls(**arguments)


class _WrongType(Exception):
    """``value`` is not of the type ``hint``; raised inside :func:`_coerce`, which names the setting."""

    def __init__(self, value: Any, hint: Any) -> None:
        super().__init__(value, hint)
        self.value, self.hint = value, hint


def _coerce(value: Any, hint: Any, name: str) -> Any:
    """``value`` as type ``hint`` (int for float and list for tuple allowed); otherwise a
    :class:`~mper.errors.ConfigError` that names the setting, the form it takes with an
    example in ``--set`` syntax, and what was given (and which item of a list is wrong)."""
    try:
        return _converted(value, hint)
    except _WrongType as wrong:
        item = "" if wrong.value is value else f" ({_shown(wrong.value)} is not {_form(wrong.hint)})"
        raise ConfigError(
            f"setting {name} expects {_form(hint, name)}, e.g. {name}={_example(value, hint, name)}; "
            f"got {_shown(value)}{item or _bad_item(value, hint)}"
        ) from None


def _converted(value: Any, hint: Any) -> Any:
    inner = _inner(hint)
    if inner is not hint:
        return None if value is None or value == NONE_TOKEN else _converted(value, inner)
    origin = typing.get_origin(hint)
    options = typing.get_args(hint)
    if origin is tuple and isinstance(value, (list, tuple)):
        return tuple(_converted(item, options[0]) for item in value)
    if origin is dict and isinstance(value, dict):
        return dict(value)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and type(value) is hint:
        return value
    raise _WrongType(value, hint)


#: What a value of each type looks like (one, and a list of them) and how one is written in an override.
_FORMS = {
    int: ("a whole number", "whole numbers", "3"),
    float: ("a number", "numbers", "0.5"),
    str: ("text", "texts", "text"),
    bool: ("true or false", "true or false values", "true"),
}
#: A list item written in place of one that is not a whole number, in examples.
_EXAMPLE_SIZE = "32"


def _inner(hint: Any) -> Any:
    """The type of an optional setting's value (``X`` of ``X | None``), else ``hint``."""
    options = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in options:
        return next(option for option in options if option is not type(None))
    return hint


def _form(hint: Any, name: str = "") -> str:
    """What a value of type ``hint`` (of the setting ``name``) looks like, in words."""
    inner = _inner(hint)
    prefix = "none or " if inner is not hint else ""
    if typing.get_origin(inner) is tuple:
        item = typing.get_args(inner)[0]
        return f"{prefix}a list of {_FORMS[item][1] if item in _FORMS else item} in brackets, without spaces"
    if typing.get_origin(inner) is dict:
        return f"{prefix}a table"
    if name in CHOICES:
        return f"{prefix}one of {', '.join(CHOICES[name])}"
    return prefix + (_FORMS[inner][0] if inner in _FORMS else getattr(inner, "__name__", str(inner)))


def _items(value: Any) -> list[str]:
    """The items of a list as given: a list, or the text of one that is not valid TOML."""
    if isinstance(value, (list, tuple)):
        return [_shown(item) for item in value]
    return [item for item in str(value).strip("[] ").replace(",", " ").split() if item]


def _example(value: Any, hint: Any, name: str) -> str:
    """An override of setting ``name`` that has the form ``hint`` needs: for a list, the
    given items where they are whole numbers."""
    inner = _inner(hint)
    if typing.get_origin(inner) is tuple:
        items = [item if item.lstrip("-").isdigit() else _EXAMPLE_SIZE for item in _items(value)]
        return "[" + ",".join(items if len(items) > 1 else [items[0] if items else _EXAMPLE_SIZE] * 2) + "]"
    if typing.get_origin(inner) is dict:
        return "{ key = 1 }"
    if name in CHOICES:
        return CHOICES[name][0]
    return _FORMS[inner][2] if inner in _FORMS else "..."


def _bad_item(value: Any, hint: Any) -> str:
    """`` (x is not a whole number)`` for the first item of a list given as text that is not one."""
    inner = _inner(hint)
    if typing.get_origin(inner) is not tuple or isinstance(value, (list, tuple)):
        return ""
    bad = [item for item in _items(value) if not item.lstrip("-").isdigit()]
    return f" ({bad[0]} is not {_form(typing.get_args(inner)[0])})" if bad and len(_items(value)) > 1 else ""


def _shown(value: Any) -> str:
    """``value`` as it is written in an override (a list in brackets, booleans in lower case)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(_shown, value)) + "]"
    return str(value)
