"""The checks of a run's settings: every choice (:data:`CHOICES`), every numeric range
(:data:`RANGE_RULES`) and every rule that ties settings together
(:data:`CONSISTENCY_CHECKS`), run by :func:`check_config` so that a bad value is refused
before any work is done.

A new setting gets a row in :data:`RANGE_RULES` or :data:`CHOICES`, or a function in
:data:`CONSISTENCY_CHECKS`. The evaluation protocol's choices (``eval.postprocess``,
``eval.empty_prediction``) are checked by :func:`mper.eval.protocol.check_protocol`,
which this layer cannot import; :func:`mper.pipeline.check_settings` runs it for
``mper-train`` and its ``--print-config``.
"""

from __future__ import annotations

import difflib
import inspect
import math
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from mper.datasets import SLIDING_WINDOW, VALIDATION_SPLITS, get_dataset
from mper.errors import ConfigError
from mper.losses import DICE_BACKGROUNDS, DICE_FORMS
from mper.nets import SIZE_MULTIPLE
from mper.nn import OPS_MODULES
from mper.nn.kmeans import KMEANS_METHODS

from .prototypes import UPDATE_SOURCES, UPDATE_STEPS
from .teacher import EMA_SCHEDULES, EMA_SCOPES, TEACHER_MODES

if TYPE_CHECKING:
    from .config import TrainConfig

#: ``none``: MPER; ``labeled-only``: the network trained on the labeled cases alone;
#: ``full``: the network trained with every training case labeled (the upper bound);
#: ``bcp``: self-training without the prototype head (bidirectional copy-paste alone).
BASELINES = ("none", "labeled-only", "full", "bcp")
AMP_MODES = ("off", "bf16")
IMAGE_INTERPOLATIONS = ("nearest", "cubic")
PRETRAIN_LOSSES = ("per-region", "whole-image")
FORWARD_ORDERS = ("labeled-surround-first", "unlabeled-surround-first")
CONTRASTIVE_REDUCTIONS = ("sum", "mean")
DEVICE_NAME = re.compile(r"auto|cpu|cuda(:\d+)?")
FLOAT32_MAX = 3.4028234663852886e38


def _setting(config: TrainConfig, name: str) -> Any:
    """The value of ``section.key`` (or a top-level ``key``) in ``config``."""
    value: Any = config
    for part in name.split("."):
        value = getattr(value, part)
    return value


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _at_least(low: int) -> Callable[[Any], bool]:
    return lambda value: value >= low


def _finite_at_least(low: float) -> Callable[[Any], bool]:
    return lambda value: math.isfinite(value) and value >= low


def _finite_above(low: float) -> Callable[[Any], bool]:
    return lambda value: math.isfinite(value) and value > low


def _in_unit_interval(value: float) -> bool:
    return 0.0 <= value <= 1.0


def _below_one(value: float) -> bool:
    return 0.0 <= value < 1.0


def _temperature(value: float) -> bool:
    """Positive, finite, and ``1 / value`` finite in float32 (the kernels divide by it)."""
    return math.isfinite(value) and value > 0 and 1.0 / value < FLOAT32_MAX


def _optional_unit(value: float | None) -> bool:
    return value is None or _in_unit_interval(value)


def _optional_row(value: int | None) -> bool:
    return value is None or value >= 0


def _all_at_least_one(values: tuple[int, ...]) -> bool:
    return all(value >= 1 for value in values)


def _optional_sizes(values: tuple[int, ...] | None) -> bool:
    return values is None or _all_at_least_one(values)


#: Settings with a fixed set of values.
CHOICES: dict[str, tuple[str, ...]] = {
    "ops": tuple(OPS_MODULES),
    "baseline": BASELINES,
    "amp": AMP_MODES,
    "data.val_split": VALIDATION_SPLITS,
    "data.image_interpolation": IMAGE_INTERPOLATIONS,
    "pretrain.loss": PRETRAIN_LOSSES,
    "selftrain.teacher_mode": TEACHER_MODES,
    "selftrain.ema_schedule": EMA_SCHEDULES,
    "selftrain.ema_scope": EMA_SCOPES,
    "selftrain.forward_order": FORWARD_ORDERS,
    "selftrain.contrastive_reduction": CONTRASTIVE_REDUCTIONS,
    "prototypes.update_source": UPDATE_SOURCES,
    "prototypes.update_steps": UPDATE_STEPS,
    "prototypes.kmeans": KMEANS_METHODS,
    "losses.dice": DICE_FORMS,
    "losses.dice_background": DICE_BACKGROUNDS,
}

POSITIVE = "a positive integer"
NON_NEGATIVE = "a non-negative integer"
POSITIVE_NUMBER = "a positive finite number"
NON_NEGATIVE_NUMBER = "a finite number >= 0"
UNIT = "in [0, 1]"

#: (setting, accepts(value), what is expected) for every numeric setting.
RANGE_RULES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("labeled", _at_least(1), POSITIVE),
    ("num_classes", _at_least(2), "at least 2 (background and one class)"),
    ("seed", _at_least(0), NON_NEGATIVE),
    ("data.patch_size", _all_at_least_one, "positive sizes"),
    ("data.batch_size", _at_least(1), POSITIVE),
    ("data.labeled_batch_size", _at_least(1), POSITIVE),
    ("data.num_workers", _at_least(0), NON_NEGATIVE),
    ("data.holdout_cases", _at_least(0), NON_NEGATIVE),
    ("data.fold", _at_least(0), NON_NEGATIVE),
    ("data.folds", _at_least(2), "at least 2"),
    ("optim.lr", _finite_above(0.0), POSITIVE_NUMBER),
    ("optim.momentum", _below_one, "in [0, 1)"),
    ("optim.weight_decay", _finite_at_least(0.0), NON_NEGATIVE_NUMBER),
    ("optim.lr_step", _at_least(0), "a non-negative integer (0: constant learning rate)"),
    ("optim.lr_gamma", _finite_above(0.0), POSITIVE_NUMBER),
    ("pretrain.iterations", _at_least(1), POSITIVE),
    ("pretrain.loss_scale", _finite_above(0.0), POSITIVE_NUMBER),
    ("pretrain.box_fraction", lambda value: 0.0 < value <= 1.0, "in (0, 1]"),
    ("selftrain.iterations", _at_least(1), POSITIVE),
    ("selftrain.ema_decay", _in_unit_interval, UNIT),
    ("selftrain.unlabeled_weight", _finite_at_least(0.0), NON_NEGATIVE_NUMBER),
    ("selftrain.consistency_scale", _finite_at_least(0.0), NON_NEGATIVE_NUMBER),
    ("selftrain.ramp_weight", _finite_at_least(0.0), NON_NEGATIVE_NUMBER),
    ("selftrain.rampup_epochs", _finite_at_least(0.0), NON_NEGATIVE_NUMBER),
    ("selftrain.ramp_epoch_length", _at_least(1), POSITIVE),
    ("selftrain.contrastive_weight", _finite_at_least(0.0), NON_NEGATIVE_NUMBER),
    ("selftrain.pseudo_label_threshold", _optional_unit, f"none or {UNIT}"),
    ("selftrain.forward_passes", lambda value: value in (1, 2), "1 or 2"),
    ("prototypes.per_class", _at_least(1), POSITIVE),
    ("prototypes.tau", _temperature, "a positive finite number whose inverse is finite"),
    ("prototypes.nce_tau", _temperature, "a positive finite number whose inverse is finite"),
    ("prototypes.momentum", _in_unit_interval, UNIT),
    ("prototypes.confidence_threshold", _in_unit_interval, UNIT),
    ("prototypes.contrastive_ignore_row", _optional_row, "none or a bank row >= 0"),
    ("prototypes.kmeans_iterations", _at_least(0), NON_NEGATIVE),
    ("prototypes.kmeans_max_voxels", _at_least(0), "0 (every voxel) or a positive cap"),
    ("eval.val_interval", _at_least(1), POSITIVE),
    ("eval.checkpoint_interval", _at_least(1), POSITIVE),
    ("eval.log_interval", _at_least(1), POSITIVE),
    ("eval.stride", _optional_sizes, "none (slice by slice) or positive sizes"),
    ("eval.num_figures", _at_least(0), NON_NEGATIVE),
    ("losses.dice_smooth", _finite_at_least(0.0), NON_NEGATIVE_NUMBER),
    ("distributed.timeout", _at_least(1), "a positive number of seconds"),
)


def _check_dataset_shapes(config: TrainConfig) -> None:
    """Class count, patch and stride fit the dataset and its network."""
    spec = get_dataset(config.dataset)
    if config.num_classes != spec.num_classes:
        raise ConfigError(
            f"num_classes must be {spec.num_classes} for {config.dataset} (background included), "
            f"got {config.num_classes}"
        )
    patch = config.data.patch_size
    rank = len(spec.patch_size)
    if len(patch) != rank or any(size % SIZE_MULTIPLE for size in patch):
        raise ConfigError(
            f"data.patch_size must be {rank} sizes, each a multiple of {SIZE_MULTIPLE} (the network "
            f"halves it four times), e.g. {list(spec.patch_size)}; got {list(patch)}"
        )
    if spec.inference == SLIDING_WINDOW:
        stride = config.eval.stride
        if stride is None or len(stride) != rank or any(step > size for step, size in zip(stride, patch)):
            raise ConfigError(
                f"eval.stride must be {rank} steps, none larger than data.patch_size {list(patch)} "
                f"(a larger step leaves voxels that no window covers); got {'none' if stride is None else list(stride)}"
            )


def _check_batches(config: TrainConfig) -> None:
    """Copy-paste pairs halves of the labeled batch, and labeled with unlabeled images."""
    labeled_batch = config.data.labeled_batch_size
    if labeled_batch < 2 or labeled_batch % 2:
        raise ConfigError(
            f"data.labeled_batch_size must be even and at least 2 (copy-paste pairs its "
            f"two halves), got {labeled_batch}"
        )
    if config.data.batch_size != 2 * labeled_batch:
        raise ConfigError(
            f"data.batch_size must be twice data.labeled_batch_size (labeled and unlabeled "
            f"images are paired), got {config.data.batch_size} and {labeled_batch}"
        )


#: Why a dataset may lack a validation split, by split.
_NO_VALIDATION_SPLIT = {
    "val": "has no val.list",
    "holdout": "has no held-out training volumes",
    "test": "does not select checkpoints on its test cases",
    "fold": "has no cross-validation folds",
}


def _check_validation_split(config: TrainConfig) -> None:
    """The split is one the dataset offers (LA has no val.list; ACDC trains on slices, so
    it cannot hold out training volumes)."""
    split, spec = config.data.val_split, get_dataset(config.dataset)
    if split not in spec.validation_splits:
        offered = " or ".join(repr(name) for name in spec.validation_splits)
        raise ConfigError(f"{spec.title} {_NO_VALIDATION_SPLIT[split]}; use data.val_split = {offered}")
    if split == "holdout" and config.data.holdout_cases < 1:
        raise ConfigError("data.val_split = 'holdout' needs data.holdout_cases >= 1")
    if split == "fold" and config.data.fold >= config.data.folds:
        raise ConfigError(f"data.fold must be below data.folds ({config.data.folds}), got {config.data.fold}")
    if config.data.fold != 0:
        check_fold_chosen(config)


#: What selects checkpoints, by validation split other than ``"fold"``.
_SELECTED_ON = {"val": "its val.list", "holdout": "held-out training volumes", "test": "its test cases"}


def ignored_holdout(config: TrainConfig) -> str:
    """Why ``data.holdout_cases`` plays no part in ``config`` ("" when it does, or is 0): it
    holds cases out only under ``data.val_split = "holdout"``. A warning, not a refusal:
    presets stack (``strict`` holds 4 out; ``--set data.val_split=test`` on top leaves it set)."""
    split, held = config.data.val_split, config.data.holdout_cases
    if split == "holdout" or held == 0:
        return ""
    return (
        f"data.holdout_cases = {held} is ignored: it holds training cases out for validation only under "
        f"data.val_split = 'holdout', but it is {split!r} (checkpoints are selected on "
        f"{_SELECTED_ON.get(split, 'a fold of the labeled cases')}); add --set data.val_split=holdout to hold them out"
    )


def check_fold_chosen(config: TrainConfig) -> None:
    """A validation fold may be chosen (``mper-train --fold``, ``data.fold``) only where
    checkpoints are selected on a fold (``data.val_split = "fold"``, imported datasets)."""
    split = config.data.val_split
    if split != "fold":
        raise ConfigError(
            f"data.fold = {config.data.fold} (mper-train --fold) chooses a cross-validation fold, but "
            f"{get_dataset(config.dataset).title} has none: it selects checkpoints on {_SELECTED_ON[split]} "
            f"(data.val_split = {split!r}); drop --fold and any --set data.fold"
        )


def _check_prototype_settings(config: TrainConfig) -> None:
    """Settings that depend on the class count and the bank's size."""
    prototypes = config.prototypes
    rows = config.num_classes * prototypes.per_class
    row = prototypes.contrastive_ignore_row
    if row is not None and row >= rows:
        raise ConfigError(
            f"prototypes.contrastive_ignore_row must name a row of the {rows}-row bank "
            f"(num_classes x prototypes.per_class), or be none; got {row}"
        )
    if 0 < prototypes.kmeans_max_voxels < prototypes.per_class:
        raise ConfigError(
            f"prototypes.kmeans_max_voxels must be 0 (every voxel) or at least prototypes.per_class "
            f"({prototypes.per_class}) so that k-means has a voxel per prototype; got {prototypes.kmeans_max_voxels}"
        )
    if config.selftrain.pseudo_label_threshold is not None and config.num_classes != 2:
        raise ConfigError(
            "selftrain.pseudo_label_threshold applies to two-class tasks only; "
            f"set it to none for {config.num_classes} classes"
        )


def _check_device_name(config: TrainConfig) -> None:
    """The device's spelling; whether it exists is checked where training starts."""
    if not DEVICE_NAME.fullmatch(config.device):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N; got {config.device!r}")


def unknown_setting(name: str, valid: Sequence[str]) -> ConfigError:
    """The error for a setting ``name`` that is none of ``valid``, with the closest valid
    name when one is close (a typo)."""
    # the names of a table share their prefix: compare what follows it
    ends = {candidate.rpartition(".")[2]: candidate for candidate in valid}
    close = difflib.get_close_matches(name.rpartition(".")[2], list(ends), n=1)
    hint = f"did you mean {ends[close[0]]}? " if close else ""
    return ConfigError(f"unknown setting {name}; {hint}valid names here: {', '.join(valid)}")


def _check_network_options(config: TrainConfig) -> None:
    """``network`` holds only keyword arguments of the dataset's network that a preset
    may set (the class count and the single input channel follow from the dataset)."""
    parameters = inspect.signature(get_dataset(config.dataset).network).parameters
    accepted = [name for name in parameters if name not in ("in_channels", "num_classes")]
    unknown = sorted(set(config.network) - set(accepted))
    if unknown:
        raise unknown_setting(f"network.{unknown[0]}", [f"network.{name}" for name in accepted])
    for name, value in config.network.items():
        numbers = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(number, float) and not math.isfinite(number) for number in numbers):
            raise ConfigError(f"network.{name} must hold finite numbers, got {value!r}")
    kernel = config.network.get("classifier_kernel", 1)
    if isinstance(kernel, bool) or not isinstance(kernel, int) or kernel < 1 or kernel % 2 == 0:
        raise ConfigError(
            "network.classifier_kernel must be a positive odd integer (1: the per-voxel linear "
            f"classifier of Eq. 3; 3: the authors' 2D code), got {kernel!r}"
        )


#: Rules over several settings, run in this order after the range rules.
CONSISTENCY_CHECKS: tuple[Callable[[TrainConfig], None], ...] = (
    _check_dataset_shapes,
    _check_batches,
    _check_validation_split,
    _check_prototype_settings,
    _check_device_name,
    _check_network_options,
)


def check_config(config: TrainConfig) -> None:
    """Raise :class:`~mper.errors.ConfigError` naming the first invalid value of ``config``:
    its dataset, every choice, every numeric range, then every consistency rule."""
    get_dataset(config.dataset)
    for name, choices in CHOICES.items():
        _check_choice(name, _setting(config, name), choices)
    for name, accepts, expected in RANGE_RULES:
        value = _setting(config, name)
        if not accepts(value):
            raise ConfigError(f"{name} must be {expected}, got {value!r}")
    for check in CONSISTENCY_CHECKS:
        check(config)
