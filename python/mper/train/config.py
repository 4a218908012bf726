"""Run configuration: dataclasses filled from the shipped preset files and overrides.

Every dataset has a preset file (its spec's ``preset_file``, for the built-in ones
``mper/presets/<dataset>.toml``). Its ``[paper]`` table
holds every value; any other table (``[reference]``, ``[strict]``, ``[demo]``) lists
only what it changes on top of ``[paper]``, and presets stack with ``+``
(``reference+demo``). Values are grouped in sections (``data``, ``optim``,
``pretrain``, ``selftrain``, ``prototypes``, ``eval``, ``losses``, ``network``, ``distributed``) and
addressed as ``section.key`` by overrides, e.g. ``selftrain.iterations=500``.
docs/method.md explains every setting.

``network`` is passed as keyword arguments to the dataset's network (its spec's
``build_network``), so it accepts whatever that network accepts (``channels``, ``dropout`` for the U-Net;
``base_filters``, ``normalization`` for the V-Net).
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import math
import re
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

from mper.datasets import SLIDING_WINDOW, VALIDATION_SPLITS, get_dataset
from mper.errors import ConfigError
from mper.losses import DICE_BACKGROUNDS, DICE_FORMS, DiceOptions
from mper.nets import SIZE_MULTIPLE
from mper.nn import OPS_MODULES
from mper.nn.kmeans import KMEANS_METHODS

from .prototypes import UPDATE_SOURCES, UPDATE_STEPS
from .teacher import EMA_SCHEDULES, EMA_SCOPES, TEACHER_MODES

#: ``none``: MPER; ``labeled-only``: the network trained on the labeled cases alone;
#: ``full``: the network trained with every training case labeled (the upper bound);
#: ``bcp``: self-training without the prototype head (bidirectional copy-paste alone).
BASELINES = ("none", "labeled-only", "full", "bcp")
#: Baselines that train the network alone, supervised, in one stage (no self-training).
SUPERVISED_BASELINES = ("labeled-only", "full")
AMP_MODES = ("off", "bf16")
VAL_SPLITS = VALIDATION_SPLITS
IMAGE_INTERPOLATIONS = ("nearest", "cubic")
PRETRAIN_LOSSES = ("per-region", "whole-image")
FORWARD_ORDERS = ("labeled-surround-first", "unlabeled-surround-first")
CONTRASTIVE_REDUCTIONS = ("sum", "mean")
#: Test-time post-processing of predicted label maps (see :mod:`mper.eval.protocol`).
POSTPROCESSING = ("none", "largest-component")
#: How a class predicted nowhere is scored (see :mod:`mper.eval.protocol`).
EMPTY_PREDICTION_RULES = ("zero", "undefined")
#: Written in TOML for "no value" (TOML has no null).
NONE_TOKEN = "none"
DEVICE_NAME = re.compile(r"auto|cpu|cuda(:\d+)?")
FLOAT32_MAX = 3.4028234663852886e38


@dataclass
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

    patch_size: tuple[int, ...] = (256, 256)
    batch_size: int = 24
    labeled_batch_size: int = 12
    num_workers: int = 0
    val_split: str = "val"
    holdout_cases: int = 0
    image_interpolation: str = "nearest"
    fold: int = 0
    folds: int = 5


@dataclass
class OptimConfig:
    """SGD; the learning rate is multiplied by ``lr_gamma`` every ``lr_step`` iterations
    of a stage (``lr_step = 0``: constant). With ``carry_over``, self-training starts
    from the optimizer state (momentum buffers) saved with the best pre-training
    checkpoint instead of a fresh optimizer."""

    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_step: int = 0
    lr_gamma: float = 0.1
    carry_over: bool = True


@dataclass
class PretrainConfig:
    """Supervised copy-paste pre-training on labeled images; loss ``scale * (CE + Dice)``.

    ``loss``: ``"per-region"`` (CE + Dice of the region kept from the first image plus
    CE + Dice of the pasted box, each against its own image's label) or
    ``"whole-image"`` (one CE + Dice over the whole mixed image).
    """

    iterations: int = 10000
    loss_scale: float = 0.5
    box_fraction: float = 2 / 3
    loss: str = "per-region"


@dataclass
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

    iterations: int = 30000
    ema_decay: float = 0.999
    unlabeled_weight: float = 0.5
    consistency_scale: float = 1.0
    ramp_weight: float = 1.0
    rampup_epochs: float = 200.0
    ramp_epoch_length: int = 150
    contrastive_weight: float = 0.1
    pseudo_label_threshold: float | None = None
    teacher_mode: str = "train"
    ema_schedule: str = "constant"
    ema_scope: str = "state"
    forward_passes: int = 2
    forward_order: str = "unlabeled-surround-first"
    contrastive_reduction: str = "sum"
    keep_better_stage: bool = True


@dataclass
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

    per_class: int = 3
    tau: float = 0.1
    nce_tau: float = 0.1
    momentum: float = 0.9
    confidence_threshold: float = 0.9
    update_source: str = "both"
    update_background: bool = True
    contrastive_ignore_row: int | None = None
    kmeans_iterations: int = 20
    kmeans_max_voxels: int = 50000
    update_steps: str = "region-wise"
    kmeans: str = "minibatch"
    kmeans_augment: bool = True


@dataclass
class EvalConfig:
    """Validation during training and the final evaluation.

    ``stride``: sliding-window stride for 3D volumes (ignored in 2D);
    ``val_interval``/``checkpoint_interval``: iterations between validations / resume
    checkpoints; ``log_interval``: iterations between reads of the logged losses (the
    steps keep them on the device, so an iteration never waits for the GPU to finish;
    a non-finite loss stops the run at the next read);
    ``num_figures``: cases drawn as PNG overlays. ``postprocess``: applied
    to test predictions before scoring (``"none"`` or ``"largest-component"``: keep each
    class's largest connected component). ``empty_prediction``: how a class predicted
    nowhere is scored, ``"zero"`` (Dice, Jaccard, 95HD and ASD all 0, as the published
    evaluation scripts do) or ``"undefined"`` (Dice 0, distances undefined and counted).
    ``pseudo_label_dice``: score self-training's pseudo labels against the unlabeled
    images' own labels (turn off when those files carry no real labels);
    ``teacher_dice``: validate the teacher too (see :mod:`mper.train.diagnostics`).
    """

    val_interval: int = 200
    checkpoint_interval: int = 500
    log_interval: int = 10
    stride: tuple[int, ...] = (18, 18, 4)
    num_figures: int = 3
    postprocess: str = "none"
    empty_prediction: str = "zero"
    pseudo_label_dice: bool = True
    teacher_dice: bool = True


@dataclass
class LossConfig:
    """The soft Dice loss of both stages (docs/method.md, "Losses").

    ``dice``: ``"pooled-squared"`` (one ratio per class over the whole batch, denominator
    ``sum p^2 + sum y``) or ``"per-sample-linear"`` (one ratio per image and class,
    denominator ``sum p + sum y``). ``dice_background``: the background class's term is
    restricted to the loss region (``"region"``) or taken over the ``"whole-image"``.
    ``dice_smooth`` is added to numerator and denominator.
    """

    dice: str = "pooled-squared"
    dice_background: str = "region"
    dice_smooth: float = 1e-10

    def options(self) -> DiceOptions:
        """These settings as the loss functions take them."""
        return DiceOptions(self.dice, self.dice_background, self.dice_smooth)


@dataclass
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

    sync_batchnorm: bool = True
    timeout: int = 1800
    check_bank: bool = False
    force_group: bool = False


@dataclass
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
    labeled: int = 7
    preset: str = "paper"
    num_classes: int = 4
    seed: int = 1337
    device: str = "auto"
    ops: str = "mper"
    out: str = ""
    baseline: str = "none"
    amp: str = "off"
    run_id: str = ""
    compile: bool = False
    channels_last: bool = False
    network: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    selftrain: SelfTrainConfig = field(default_factory=SelfTrainConfig)
    prototypes: PrototypeConfig = field(default_factory=PrototypeConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    losses: LossConfig = field(default_factory=LossConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), for checkpoints, JSON and TOML."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build and check a config; unknown keys, wrong types and invalid values raise
        :class:`~mper.errors.ConfigError`."""
        config = _build(cls, values, "")
        config.check()
        return config

    def check(self) -> None:
        """Raise :class:`~mper.errors.ConfigError` naming the first invalid value.

        The dataset, every choice, every numeric range of :data:`RANGE_RULES` and every rule that
        ties settings together (:data:`CONSISTENCY_CHECKS`) is checked, so that a bad
        value is refused before any work is done.
        """
        get_dataset(self.dataset)
        for name, choices in CHOICES.items():
            _check_choice(name, _setting(self, name), choices)
        for name, accepts, expected in RANGE_RULES:
            value = _setting(self, name)
            if not accepts(value):
                raise ConfigError(f"{name} must be {expected}, got {value!r}")
        for check in CONSISTENCY_CHECKS:
            check(self)


def with_prototypes(config: TrainConfig) -> bool:
    """Whether self-training has the prototype head (MPER) or not (``baseline = "bcp"``:
    bidirectional copy-paste alone, trained by ``L_cons^l`` only, with no prototype
    initialisation, classifier, contrastive term or bank update)."""
    return config.baseline != "bcp"


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


#: Settings with a fixed set of values.
CHOICES: dict[str, tuple[str, ...]] = {
    "ops": tuple(OPS_MODULES),
    "baseline": BASELINES,
    "amp": AMP_MODES,
    "data.val_split": VAL_SPLITS,
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
    "eval.postprocess": POSTPROCESSING,
    "eval.empty_prediction": EMPTY_PREDICTION_RULES,
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
    ("eval.stride", _all_at_least_one, "positive sizes"),
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
        if len(stride) != rank or any(step > size for step, size in zip(stride, patch)):
            raise ConfigError(
                f"eval.stride must be {rank} steps, none larger than data.patch_size {list(patch)} "
                f"(a larger step leaves voxels that no window covers); got {list(stride)}"
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


def _check_network_options(config: TrainConfig) -> None:
    """``network`` holds only keyword arguments of the dataset's network that a preset
    may set (the class count and the single input channel follow from the dataset)."""
    parameters = inspect.signature(get_dataset(config.dataset).network).parameters
    accepted = [name for name in parameters if name not in ("in_channels", "num_classes")]
    unknown = sorted(set(config.network) - set(accepted))
    if unknown:
        names = ", ".join(f"network.{name}" for name in accepted)
        raise ConfigError(f"unknown setting network.{unknown[0]}; valid names here: {names}")
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


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    """Instantiate dataclass ``cls`` from ``values``, checking names and types."""
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a table, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = {item.name for item in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(
            f"unknown setting {prefix}{unknown[0]}; valid names here: "
            f"{', '.join(prefix + name for name in sorted(names))}"
        )
    arguments = {}
    for name, value in values.items():
        hint = hints[name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            arguments[name] = _build(hint, value, f"{prefix}{name}.")
        else:
            arguments[name] = _coerce(value, hint, prefix + name)
    return cls(**arguments)


def _coerce(value: Any, hint: Any, name: str) -> Any:
    """``value`` as type ``hint`` (int for float and list for tuple allowed), or ``ValueError``."""
    origin = typing.get_origin(hint)
    options = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType) and type(None) in options:
        if value is None or value == NONE_TOKEN:
            return None
        inner = next(option for option in options if option is not type(None))
        return _coerce(value, inner, name)
    if origin is tuple and isinstance(value, (list, tuple)):
        return tuple(_coerce(item, options[0], name) for item in value)
    if origin is dict and isinstance(value, dict):
        return dict(value)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and type(value) is hint:
        return value
    raise ConfigError(
        f"setting {name} expects {_type_name(hint)}, got {value!r}; e.g. {name}={_example(value, hint)}"
    )


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is tuple:
        return f"tuple (a list of {_type_name(typing.get_args(hint)[0])} in brackets)"
    return getattr(hint, "__name__", str(hint))


#: How a value of each type is written in an override.
_EXAMPLES = {int: "3", float: "0.5", str: "text", bool: "true"}


def _example(value: Any, hint: Any) -> str:
    """The given value rewritten in the syntax ``hint`` needs, or a made-up value of it."""
    if typing.get_origin(hint) is tuple:
        items = value if isinstance(value, (list, tuple)) else str(value).replace(",", " ").split()
        return "[" + ", ".join(str(item) for item in items) + "]"
    if typing.get_origin(hint) is dict:
        return "{ key = 1 }"
    return _EXAMPLES.get(hint, "...")


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


def load_config(
    dataset: str,
    preset: str = "paper",
    overrides: dict[str, Any] | None = None,
    assignments: list[str] | tuple[str, ...] = (),
) -> TrainConfig:
    """The preset's config with ``overrides`` (a nested dict) and ``assignments``
    (``"section.key=value"`` strings) applied, in that order."""
    values = read_preset(dataset, preset)
    for change in [overrides or {}, *map(parse_override, assignments)]:
        values = merge(values, change)
    return TrainConfig.from_dict(values)


def to_toml(values: dict[str, Any]) -> str:
    """A TOML document for a config dict: top-level values and one level of tables.

    ``None`` is written as ``"none"``, which :class:`TrainConfig` reads back as ``None``.
    """
    scalars = {key: value for key, value in values.items() if not isinstance(value, dict)}
    tables = {key: value for key, value in values.items() if isinstance(value, dict)}
    lines = [f"{key} = {_toml_value(value)}" for key, value in scalars.items()]
    for name, table in tables.items():
        lines += ["", f"[{name}]"]
        lines += [f"{key} = {_toml_value(value)}" for key, value in table.items()]
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if value is None:
        return json.dumps(NONE_TOKEN)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))
