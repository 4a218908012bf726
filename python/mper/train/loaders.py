"""Which cases train and which validate, and the data loaders of each stage.

The dataset's spec (:mod:`mper.datasets`) splits the training list into labeled and
unlabeled items (ACDC: the slices of the first ``labeled`` patients of
``train_slices.list`` are labeled; LA: the first ``labeled`` cases of ``train.list``).
Checkpoints are selected on ``data.val_split``: the ``val`` list (ACDC), the ``test``
list (the published LA protocol), or, with ``"holdout"``, the last ``holdout_cases``
items of the training list, which are then kept out of training; with ``"fold"``, fold
``data.fold`` of ``data.folds`` of the labeled training items (an imported dataset's),
kept out of training: the labeled ones are then the first ``labeled`` of the others.

:func:`check_data` reads every file a run will use before it starts, so that a missing
or damaged file is reported at once rather than hours into training.

One training dataset holds the labeled items first, then the unlabeled ones; a
:class:`~mper.data.sampler.TwoStreamBatchSampler` draws from both (self-training) or
from the labeled ones only (pre-training, baseline). Batches depend only on the seed,
the stage and the iteration, which is what makes resumed runs exact; each stage draws
its own, so self-training does not replay pre-training's crops and pairs.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import signal
from collections.abc import Iterator
from dataclasses import replace
from typing import cast

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from mper.data.files import listed_names
from mper.data.imported import load_original_label
from mper.data.sampler import TwoStreamBatchSampler, endless_batches
from mper.data.seeding import stage_seed
from mper.data.splits import check_labeled_count, fold_cases
from mper.datasets import check_dataset_root, get_dataset
from mper.errors import ConfigError, DataFormatError, MissingFileError
from mper.host import available_cores

from .config import SUPERVISED_BASELINES, TrainConfig
from .distributed import current_world

log = logging.getLogger(__name__)


def training_cases(config: TrainConfig) -> tuple[list[str], list[str]]:
    """(labeled, unlabeled) training items (ACDC slice names, LA case names). The fully
    supervised baseline (``baseline = "full"``) labels them all."""
    if config.baseline == "full":  # ``labeled`` plays no part: every item is labeled
        labeled, unlabeled = _labeled_split(config, 1)
        return labeled + unlabeled, []
    return _labeled_split(config, config.labeled)


def _labeled_split(config: TrainConfig, labeled_count: int) -> tuple[list[str], list[str]]:
    if config.data.val_split == "fold":
        return _fold_split(config, labeled_count)
    split = get_dataset(config.dataset).training_split
    if config.data.val_split != "holdout":
        return split(config.data_root, labeled_count)
    _check_holdout_room(config, labeled_count)
    labeled, unlabeled = split(config.data_root, labeled_count)
    return labeled, unlabeled[: len(unlabeled) - config.data.holdout_cases]


def _check_holdout_room(config: TrainConfig, labeled_count: int) -> None:
    """Refuse a ``labeled_count`` beyond the training cases that ``data.holdout_cases``
    leaves to train on, saying how many are held out and the largest count the run can take
    (one less for self-training, which needs an unlabeled case)."""
    spec = get_dataset(config.dataset)
    total = len(spec.list_cases(config.data_root, "train"))
    holdout = config.data.holdout_cases
    room = total - holdout
    held = (
        f"data.holdout_cases = {holdout} holds the last {holdout} of the {total} training {spec.label_unit} "
        f"of {config.data_root} out for validation"
    )
    supervised = config.baseline in SUPERVISED_BASELINES
    most = room if supervised else room - 1
    if most < 1:
        needs = "a training case" if supervised else "a labeled and an unlabeled case"
        raise ConfigError(f"{held}, which leaves {max(room, 0)} to train on; the run needs {needs}: lower it")
    if not 0 < labeled_count <= room:
        left = "" if supervised else " (one training case left unlabeled for self-training)"
        raise ConfigError(f"labeled must be between 1 and {most}{left}: {held}; got {labeled_count}")


def labeled_pool(config: TrainConfig) -> list[str]:
    """The labeled training items that may be labeled in a run: all of them but the
    validation fold's (``data.val_split = "fold"``); what ``--labeled all`` labels."""
    if config.data.val_split != "fold":
        labeled, unlabeled = _labeled_split(config, 1)
        return labeled + unlabeled
    spec = get_dataset(config.dataset)
    allowed = set(spec.list_cases(config.data_root, "labeled")) - set(validation_cases(config))
    return [item for item in spec.list_cases(config.data_root, "train") if spec.label_group(item) in allowed]


def _fold_split(config: TrainConfig, labeled_count: int) -> tuple[list[str], list[str]]:
    """The items of the first ``labeled_count`` cases of :func:`labeled_pool` labeled; the
    others outside the validation fold unlabeled."""
    spec = get_dataset(config.dataset)
    pool = labeled_pool(config)
    cases = list(dict.fromkeys(map(spec.label_group, pool)))
    check_labeled_count(labeled_count, len(cases), f"labeled training cases outside validation fold {config.data.fold}")
    chosen = set(cases[:labeled_count])
    held_out = set(validation_cases(config))
    labeled = [item for item in pool if spec.label_group(item) in chosen]
    unlabeled = [
        item for item in spec.list_cases(config.data_root, "train") if spec.label_group(item) not in chosen | held_out
    ]
    return labeled, unlabeled


def validation_cases(config: TrainConfig) -> list[str]:
    """The cases whose Dice selects the best checkpoint (see the module docstring)."""
    split, list_cases = config.data.val_split, get_dataset(config.dataset).list_cases
    if split == "holdout":
        return list_cases(config.data_root, "train")[-config.data.holdout_cases :]
    if split == "fold":
        labeled = list_cases(config.data_root, "labeled")
        if len(labeled) < config.data.folds:
            raise ConfigError(
                f"data.folds = {config.data.folds} needs as many labeled training cases; "
                f"{config.data_root} has {len(labeled)}: lower data.folds"
            )
        return fold_cases(labeled, config.data.folds, config.data.fold)
    return list_cases(config.data_root, split)


def test_cases(config: TrainConfig) -> list[str]:
    """The cases the finished run is evaluated on (``test.list``)."""
    return get_dataset(config.dataset).list_cases(config.data_root, "test")


def check_split(config: TrainConfig) -> tuple[list[str], list[str]]:
    """The (labeled, unlabeled) training items, from the data root's lists alone.

    Raises :class:`~mper.errors.ConfigError` when the data root holds the other dataset,
    when ``labeled`` is more than the dataset has, leaves no unlabeled case for
    self-training or too few labeled items to fill a labeled batch,
    :class:`~mper.errors.DataFormatError` when a validation or test case is also a
    training one, and what the list readers raise for a missing list.
    """
    check_dataset_root(config.data_root, config.dataset, f"the run trains on {config.dataset}")
    labeled, unlabeled = training_cases(config)
    _check_scored_cases_unseen(config, labeled + unlabeled)
    if config.baseline not in SUPERVISED_BASELINES and not unlabeled:
        raise ConfigError(_no_unlabeled_case(config))
    if len(labeled) < config.data.labeled_batch_size:
        raise ConfigError(
            f"{len(labeled)} labeled training item(s) (labeled = {config.labeled}) cannot fill a labeled batch of "
            f"data.labeled_batch_size = {config.data.labeled_batch_size}; raise --labeled or lower the batch sizes"
        )
    return labeled, unlabeled


def _no_unlabeled_case(config: TrainConfig) -> str:
    """Why ``config.labeled`` leaves self-training no unlabeled case: the training cases it
    labels are all those left after the validation cases held out from them, which it
    names, and the largest ``labeled`` that leaves one."""
    spec = get_dataset(config.dataset)
    unit, labeled = spec.label_unit, config.labeled
    split = config.data.val_split
    if split == "holdout":
        holdout = config.data.holdout_cases
        total = len(spec.list_cases(config.data_root, "train"))
        why = (
            f"of the {total} training {unit} of {config.data_root}, data.holdout_cases = {holdout} holds the last "
            f"{holdout} out for validation and labeled = {labeled} labels all {total - holdout} others"
        )
        fewer = f"lower --labeled to at most {labeled - 1} or data.holdout_cases"
    elif split == "fold":
        why = (
            f"it labels all the training {unit} of {config.data_root} outside validation fold {config.data.fold} "
            f"(of data.folds = {config.data.folds})"
        )
        fewer = f"lower --labeled to at most {labeled - 1}"
    else:
        why = f"it labels all the training {unit} of {config.data_root}"
        fewer = f"lower --labeled to at most {labeled - 1}"
    if labeled < 2:
        fewer = f"self-training needs at least 2 training {unit}: add some"
    return (
        f"labeled = {labeled} leaves no unlabeled training case for self-training: {why}; "
        f"{fewer} (or train --baseline labeled-only)"
    )


def first_trained_on(config: TrainConfig, scored: list[str], trained: list[str]) -> tuple[str, str] | None:
    """The first of the ``scored`` cases that is one of the ``trained`` items (the same case,
    or for ACDC the same patient: ``label_group``), with the first such item; ``None`` when
    none is."""
    group_of = get_dataset(config.dataset).label_group
    learned: dict[str, str] = {}
    for item in trained:
        learned.setdefault(group_of(item), item)
    return next(((case, learned[group_of(case)]) for case in scored if group_of(case) in learned), None)


def _check_scored_cases_unseen(config: TrainConfig, items: list[str]) -> None:
    """Refuse a validation or test case that the run also trains on (the same case, or for
    ACDC the same patient: ``label_group``): its scores would not measure what the model
    does on unseen data."""
    group_of = get_dataset(config.dataset).label_group
    for role, cases in (("validation", validation_cases(config)), ("test", test_cases(config))):
        found = first_trained_on(config, cases, items)
        if found is not None:
            case, learned = found
            seen = learned if learned == case else f"{group_of(case)} ({learned})"
            raise DataFormatError(
                f"{config.data_root}: {role} case {case} is also trained on: {seen} is in the training list; "
                "a case that is scored must not be one the model learns from: remove it from one of the lists"
            )


def _check_label_values(config: TrainConfig, case: str, values: list[int]) -> None:
    """Refuse a label of ``case`` holding a class value the run has no output for (a
    ``class_names`` of an imported dataset's ``plan.toml`` edited to fewer names, say),
    which would fail in the loss at the first batch."""
    beyond = [int(value) for value in values if not 0 <= value < config.num_classes]
    if not beyond:
        return
    plan = get_dataset(config.dataset).scans
    where = (
        f"the {config.num_classes} of class_names in {config.data_root}/plan.toml "
        f"({', '.join(plan.class_names)}); name every class the import found there, one name per label value"
        if plan is not None
        else f"num_classes = {config.num_classes}; check the labels"
    )
    raise DataFormatError(
        f"{config.data_root}: the label of case {case} holds class value(s) {beyond}, more than {where}"
    )


def _class_names(config: TrainConfig, values: list[int]) -> str:
    """``class 3 (rare)``, or ``classes 3 (rare), 4 (cyst)``: the values with their names."""
    names = get_dataset(config.dataset).class_names
    named = [f"{value} ({names[value]})" if value < len(names) else str(value) for value in values]
    return ("class " if len(values) == 1 else "classes ") + ", ".join(named)


def _cases_phrase(cases: list[str]) -> str:
    """``case a``, or ``cases a, b``."""
    return ("case " if len(cases) == 1 else "cases ") + listed_names(cases)


def _labeling_with(config: TrainConfig, wanted: list[set[str]]) -> tuple[int, int] | None:
    """The (fold, labeled count) of the run nearest ``config`` whose labeled cases include one
    of each set of ``wanted`` and that check_split accepts: the run's own fold with a larger
    count first, else (``data.val_split = "fold"``) another fold with the fewest cases."""
    spec = get_dataset(config.dataset)
    folds = range(config.data.folds) if config.data.val_split == "fold" else [config.data.fold]
    options = []
    for fold in folds:
        other = replace(config, data=replace(config.data, fold=fold))
        cases = list(dict.fromkeys(map(spec.label_group, labeled_pool(other))))
        first = [next((index for index, case in enumerate(cases) if case in group), None) for group in wanted]
        if None in first:
            continue
        count = max([config.labeled] + [index + 1 for index in first if index is not None])
        try:
            labeled, unlabeled = _labeled_split(other, count)
        except ConfigError:
            continue
        if unlabeled and len(labeled) >= config.data.labeled_batch_size:
            options.append((fold != config.data.fold, count, fold))
    if not options:
        return None
    _, count, fold = min(options)
    return fold, count


def _vanished_in_resampling(root: str, cases: list[str], values: list[int]) -> list[str]:
    """The imported ``cases`` of ``root`` whose raw label (kept on the scan's grid) holds one
    of the class ``values`` that their resampled label has lost."""
    return [case for case in cases if set(values) & set(np.unique(load_original_label(root, case)[0]).tolist())]


def _absent_classes_error(
    config: TrainConfig, labeled_items: int, missing: list[int], classes_of: dict[str, set[int]]
) -> DataFormatError:
    """Why the ``missing`` classes have no voxel in the run's labeled items, and what gives them
    some, in one line: which other labeled cases hold them (``classes_of``: the class values of
    each case read) and the ``--fold``/``--labeled`` that labels one of those; when no labeled
    case holds a class, to label cases that hold it or to drop the class."""
    root = config.data_root
    spec = get_dataset(config.dataset)
    validation = set(map(spec.label_group, validation_cases(config)))
    labeled_cases = set(map(spec.label_group, labeled_pool(config))) | validation
    holding = {
        value: [case for case, values in classes_of.items() if case in labeled_cases and value in values]
        for value in missing
    }
    one = len(missing) == 1
    head = (
        f"{_class_names(config, missing)} {'has' if one else 'have'} no voxel in the {labeled_items} labeled "
        f"training item(s) of {root} (--labeled {config.labeled}), so {'its' if one else 'their'} prototypes "
        "cannot be initialised"
    )
    nowhere = [value for value in missing if not holding[value]]
    if nowhere:
        it = "it" if len(nowhere) == 1 else "them"
        tests = [case for case, values in classes_of.items() if case not in labeled_cases and set(nowhere) & values]
        only = f" (only test {_cases_phrase(tests)}, scored and never trained on)" if tests else ""
        vanished = _vanished_in_resampling(root, sorted(labeled_cases), nowhere) if spec.scans is not None else []
        if spec.scans is None:
            fix = "check the labels"
        elif vanished:
            fix = (
                f"the raw labels of {_cases_phrase(vanished)} hold {it}, but {it} vanished when the import resampled "
                f"them to its target spacing ({' x '.join(f'{value:g}' for value in spec.scans.rules.spacing)} mm: "
                f"too few voxels): import again with a finer --spacing"
            )
        elif not tests and nowhere == list(range(nowhere[0], config.num_classes)):  # the last values, in no label
            names = ", ".join(repr(spec.class_names[value]) for value in nowhere if value < len(spec.class_names))
            fix = f"label training cases that contain {it}, or remove {names} from class_names in {root}/plan.toml"
        else:  # the names cannot go alone: a label holds the value, or values above it stay
            fix = (
                f"label training cases that contain {it}, or drop {it}: remove {it} from labels in the raw "
                "dataset.json, renumber the label files to match and import again"
            )
        return DataFormatError(f"{head}; no labeled case holds {_class_names(config, nowhere)}{only}: {fix}")
    held = sorted({case for cases in holding.values() for case in cases})
    it = "it" if one else "them"
    parts = []
    left_unlabeled = [case for case in held if case not in validation]
    if left_unlabeled:
        parts.append(f"{_cases_phrase(left_unlabeled)} (left unlabeled by --labeled {config.labeled})")
    in_validation = [case for case in held if case in validation]
    if in_validation:
        fold = f"fold {config.data.fold}" if config.data.val_split == "fold" else "cases"
        parts.append(f"{_cases_phrase(in_validation)} of the validation {fold} (never trained on)")
    option = _labeling_with(config, [set(cases) for cases in holding.values()])
    if option is None:
        fix = f"label more training cases that contain {it}"
    elif option[0] == config.data.fold:
        fix = f"train with --labeled {option[1]}"
    else:
        fix = f"train another fold, e.g. --fold {option[0]} --labeled {option[1]}"
    holds = "holds" if len(held) == 1 else "hold"
    return DataFormatError(f"{head}; of the cases with labels only {' and '.join(parts)} {holds} {it}: {fix}")


def _warn_of_damaged_cases(config: TrainConfig, blank: list[str], unmarked: list[str]) -> None:
    """Warn of what reads as data yet looks damaged: ``blank`` files, whose image holds one
    value everywhere while their label marks foreground (trained on, or scored, as if the
    network could see it), and ``unmarked`` labeled cases, whose labels mark no foreground
    at all (learnt as all background)."""
    if blank:
        log.warning(
            "%s: the image of %s holds one value everywhere, yet its label marks foreground: a blank or damaged "
            "image? It is trained on or scored as it is",
            config.data_root,
            _cases_phrase(blank),
        )
    if unmarked:
        log.warning(
            "%s: the label of labeled %s marks no foreground, so the network learns it as all background: a label "
            "lost or damaged?",
            config.data_root,
            _cases_phrase(unmarked),
        )


def check_data(config: TrainConfig) -> None:
    """Read every case the run will use: training items, validation and test volumes.

    Raises what :func:`check_split` raises, what the readers raise for a missing or
    malformed file (naming it), and :class:`~mper.errors.DataFormatError` when a label holds
    a class value beyond ``num_classes`` or a class has no voxel in the labeled images (its
    prototypes could not be initialised).
    """
    labeled, unlabeled = check_split(config)
    self_training = config.baseline not in SUPERVISED_BASELINES
    items = labeled + unlabeled if self_training else labeled
    volumes = list(dict.fromkeys(validation_cases(config) + test_cases(config)))
    spec = get_dataset(config.dataset)
    # where items and volumes are read alike (LA), each file is read once
    reads = list(
        dict.fromkeys([(spec.load_item, case) for case in items] + [(spec.load_volume, case) for case in volumes])
    )
    seen_classes: set[int] = set()
    classes_of: dict[str, set[int]] = {}  # by case (label_group): the class values its files hold
    labeled_foreground: dict[str, bool] = {}  # by labeled case (label_group): whether its labels mark any
    blank: list[str] = []  # files whose image holds one value while their label marks foreground
    for position, (load, case) in enumerate(tqdm(reads, desc="checking data", unit="file", leave=False)):
        try:
            image, label = load(config.data_root, case)
        except MissingFileError as error:
            if spec.scans is not None:  # the import's own message says what to do
                raise
            listed_in = "training" if load is spec.load_item else "validation or test"
            raise MissingFileError(
                f"{error}; {case} is named by the {listed_in} list of {config.data_root}: restore its file or remove "
                "it from the list"
            ) from error
        values = np.unique(label).tolist()
        _check_label_values(config, case, values)
        if position < len(labeled):
            seen_classes.update(values)
            group = spec.label_group(case)
            labeled_foreground[group] = labeled_foreground.get(group, False) or values != [0]
        classes_of.setdefault(spec.label_group(case), set()).update(values)
        if image.size and image.min() == image.max() and values != [0]:
            blank.append(case)
    _warn_of_damaged_cases(config, blank, [group for group, marked in labeled_foreground.items() if not marked])
    missing = sorted(set(range(config.num_classes)) - seen_classes)
    if self_training and missing:
        raise _absent_classes_error(config, len(labeled), missing, classes_of)
    log.info("checked %d training items and evaluation volumes under %s", len(reads), config.data_root)


#: Draws of each stage (see :func:`~mper.data.seeding.stage_seed`): pre-training and the
#: supervised baselines draw from the run's seed, self-training from one of its own.
FIRST_STAGE, SELF_TRAINING = 0, 1


def training_dataset(config: TrainConfig, cases: list[str], augment: bool = True, stage: int = FIRST_STAGE) -> Dataset:
    """The dataset's training items of ``cases`` (its spec's ``training_items``, e.g.
    :class:`~mper.data.ACDCSlices`), with the ``data`` settings they take and the
    augmentation of training stage ``stage``."""
    spec = get_dataset(config.dataset)
    settings = {name: getattr(config.data, name) for name in spec.item_settings}
    return spec.training_items(
        config.data_root,
        cases,
        config.data.patch_size,
        augment=augment,
        seed=stage_seed(config.seed, stage),
        **settings,
    )


def loader_workers(config: TrainConfig) -> int:
    """``data.num_workers``, at most one worker per available CPU core: more only
    oversubscribe the machine (and enough of them exhaust its processes or memory),
    while the batches are the same for any worker count."""
    return min(config.data.num_workers, available_cores())


def stage_loader(
    config: TrainConfig, with_unlabeled: bool, device: torch.device, whole_batch: bool = False
) -> DataLoader:
    """Training batches: ``labeled_batch_size`` labeled items, then (``with_unlabeled``,
    self-training) as many unlabeled ones; under torch.distributed this process's share
    of them, unless ``whole_batch``. Self-training draws its batch order and
    augmentation from a seed of its own, the supervised stages from the run's seed."""
    labeled, unlabeled = training_cases(config)
    cases = labeled + unlabeled if with_unlabeled else labeled
    stage = SELF_TRAINING if with_unlabeled else FIRST_STAGE
    world = current_world()
    labeled_batch = config.data.labeled_batch_size
    unlabeled_batch = labeled_batch if with_unlabeled else 0
    sampler = TwoStreamBatchSampler(
        range(len(labeled)),
        range(len(labeled), len(cases)),
        labeled_batch + unlabeled_batch,
        unlabeled_batch,
        seed=stage_seed(config.seed, stage),
        share=(0, 1) if whole_batch else (world.rank, world.size),
    )
    return DataLoader(
        training_dataset(config, cases, stage=stage),
        batch_sampler=sampler,
        num_workers=loader_workers(config),
        pin_memory=device.type == "cuda",
        generator=_private_generator(config.seed),
        worker_init_fn=_leave_stop_signals_to_the_main_process,
    )


def labeled_images(config: TrainConfig, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Every labeled training item once, without augmentation, as ``(image, label)`` batches."""
    labeled, _ = training_cases(config)
    dataset = training_dataset(config, labeled, augment=False)
    for batch in DataLoader(dataset, batch_size=batch_size, generator=_private_generator(config.seed)):
        yield batch["image"], batch["label"]


def prototype_init_batches(config: TrainConfig, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The labeled ``(image, label)`` batches the prototype bank is initialised from.

    With ``prototypes.kmeans_augment`` (the authors' choice): one more epoch of the
    pre-training loader, the one after the last pre-training iteration, i.e. augmented
    crops of the labeled items in batches of ``labeled_batch_size`` (a remainder that
    does not fill a batch is left out). Otherwise every labeled item once, unaugmented.
    """
    if not config.prototypes.kmeans_augment:
        yield from labeled_images(config, config.data.labeled_batch_size)
        return
    loader = stage_loader(config, with_unlabeled=False, device=device, whole_batch=True)
    epoch_length = len(cast(TwoStreamBatchSampler, loader.batch_sampler))
    epoch = -(-config.pretrain.iterations // epoch_length)
    with contextlib.closing(endless_batches(loader, epoch * epoch_length)) as batches:
        for batch in itertools.islice(batches, epoch_length):
            yield batch["image"], batch["label"]


def _leave_stop_signals_to_the_main_process(worker_id: int) -> None:
    """Data workers ignore SIGINT and SIGTERM: a Ctrl-C in the terminal reaches every
    process of the group, as does a scheduler's SIGTERM to the whole job, and only the main
    process should react (save a checkpoint, say so once). torch's own SIGTERM handler in a
    worker dies of it, and the main process's SIGCHLD handler then raises "DataLoader worker
    is killed by signal" wherever training is, before the checkpoint is saved. The workers
    still end: the main process stops them through their queues, and a worker whose main
    process is gone exits by itself."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


def _private_generator(seed: int) -> torch.Generator:
    """A generator of its own for a DataLoader: without one, every new loader iterator
    draws a seed from the global RNG, whose state (dropout) must not depend on when an
    epoch starts or a loader is read."""
    return torch.Generator().manual_seed(seed)
