"""Which cases train and which validate, and the data loaders of each stage.

ACDC: labeled slices are those of the first ``labeled`` patients of
``train_slices.list``, the other slices are unlabeled; checkpoints are selected on
``val.list``. LA: labeled cases are the first ``labeled`` of ``train.list``; with
``val_split = "holdout"`` its last ``holdout_cases`` cases are kept out of training and
select checkpoints; with ``"test"`` the test list does (the published protocol).

One training dataset holds the labeled items first, then the unlabeled ones; a
:class:`~mper.data.sampler.TwoStreamBatchSampler` draws from both (self-training) or
from the labeled ones only (pre-training, baseline). Batches depend only on the seed
and the iteration, which is what makes resumed runs exact.
"""
from __future__ import annotations

import signal
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from mper.data.acdc import ACDCSlices, acdc_cases, acdc_split
from mper.data.la import LAPatches, la_cases, la_split
from mper.data.sampler import TwoStreamBatchSampler

from .config import TrainConfig


def training_cases(config: TrainConfig) -> tuple[list[str], list[str]]:
    """(labeled, unlabeled) training cases: ACDC slice names or LA case names."""
    if config.dataset == "acdc":
        return acdc_split(config.data_root, config.labeled)
    labeled, unlabeled = la_split(config.data_root, config.labeled)
    if config.data.val_split != "holdout":
        return labeled, unlabeled
    holdout = config.data.holdout_cases
    if holdout > len(unlabeled):
        raise ValueError(
            f"data.holdout_cases = {holdout} leaves no room for {config.labeled} labeled cases "
            f"in the {config.labeled + len(unlabeled)} cases of train.list; lower one of them"
        )
    return labeled, unlabeled[: len(unlabeled) - holdout]


def validation_cases(config: TrainConfig) -> list[str]:
    """The cases whose Dice selects the best checkpoint (see the module docstring)."""
    split = config.data.val_split
    if config.dataset == "acdc":
        if split == "holdout":
            raise ValueError("data.val_split = 'holdout' is for LA; ACDC has val.list (use 'val')")
        return acdc_cases(config.data_root, split)
    if split == "val":
        raise ValueError("LA has no val.list; use data.val_split = 'holdout' or 'test'")
    if split == "test":
        return la_cases(config.data_root, "test")
    return la_cases(config.data_root, "train")[-config.data.holdout_cases :]


def training_dataset(config: TrainConfig, cases: list[str], augment: bool = True) -> Dataset:
    """The dataset's training items (:class:`ACDCSlices` or :class:`LAPatches`) of ``cases``."""
    dataset_type = ACDCSlices if config.dataset == "acdc" else LAPatches
    return dataset_type(config.data_root, cases, config.data.patch_size, augment=augment, seed=config.seed)


def stage_loader(config: TrainConfig, with_unlabeled: bool, device: torch.device) -> DataLoader:
    """Training batches: ``labeled_batch_size`` labeled items, then (``with_unlabeled``)
    as many unlabeled ones."""
    labeled, unlabeled = training_cases(config)
    cases = labeled + unlabeled if with_unlabeled else labeled
    labeled_batch = config.data.labeled_batch_size
    unlabeled_batch = labeled_batch if with_unlabeled else 0
    sampler = TwoStreamBatchSampler(
        range(len(labeled)), range(len(labeled), len(cases)),
        labeled_batch + unlabeled_batch, unlabeled_batch, seed=config.seed,
    )
    return DataLoader(
        training_dataset(config, cases),
        batch_sampler=sampler,
        num_workers=config.data.num_workers,
        pin_memory=device.type == "cuda",
        generator=_private_generator(config.seed),
        worker_init_fn=_leave_ctrl_c_to_the_main_process,
    )


def labeled_images(config: TrainConfig, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Every labeled training item once, without augmentation, as ``(image, label)`` batches."""
    labeled, _ = training_cases(config)
    dataset = training_dataset(config, labeled, augment=False)
    for batch in DataLoader(dataset, batch_size=batch_size, generator=_private_generator(config.seed)):
        yield batch["image"], batch["label"]


def _leave_ctrl_c_to_the_main_process(worker_id: int) -> None:
    """Data workers ignore SIGINT: a Ctrl-C in the terminal reaches every process of the
    group, and only the main one should react (save a checkpoint, say so once)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _private_generator(seed: int) -> torch.Generator:
    """A generator of its own for a DataLoader: without one, every new loader iterator
    draws a seed from the global RNG, whose state (dropout) must not depend on when an
    epoch starts or a loader is read."""
    return torch.Generator().manual_seed(seed)
