"""Synthetic datasets in the exact public layouts, for running everything without the
real downloads (see :mod:`mper.data.synth_la` and :mod:`mper.data.synth_acdc`)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mper.data.preprocess import check_dataset
from mper.data.synth_acdc import ACDC_FAMILIES, ACDC_SYNTH_CASES, ACDC_SYNTH_SIZE, synthesize_acdc
from mper.data.synth_la import LA_SYNTH_CASES, LA_SYNTH_SIZE, synthesize_la
from mper.errors import ConfigError

_DEFAULTS = {"la": (LA_SYNTH_CASES, LA_SYNTH_SIZE), "acdc": (ACDC_SYNTH_CASES, ACDC_SYNTH_SIZE)}
#: The families of synthetic data each dataset offers; the first is the default.
FAMILIES = {"la": ("standard",), "acdc": tuple(ACDC_FAMILIES)}


def synthesize(
    dataset: str,
    out: str | Path,
    cases: int | None = None,
    seed: int = 0,
    size: Sequence[int] | None = None,
    progress: bool = True,
    family: str = "standard",
) -> Path:
    """Write a complete synthetic dataset root, list files included, and return it.

    Args:
        dataset: ``"la"`` (UA-MT layout: volumes of about ``size`` (H, W, D), default
            (128, 128, 96), split 80/20 into train/test) or ``"acdc"`` (SSL4MIS layout:
            patients with an ED and an ES frame of 6-10 slices of ``size`` (H, W), default
            (224, 224), split 70/10/20 into train/val/test).
        out: dataset root to create (existing files of the same names are overwritten).
        cases: LA volumes or ACDC patients; default 100.
        seed: the output is a pure function of (dataset, family, cases, seed, size).
        size: see ``dataset``.
        progress: show a tqdm progress bar.
        family: how the cases vary, one of :data:`FAMILIES` of the dataset (ACDC:
            ``standard``, ``scanners``, ``thin``; see :data:`mper.data.synth_acdc.ACDC_FAMILIES`).
    """
    default_cases, default_size = _DEFAULTS[check_dataset(dataset)]
    if family not in FAMILIES[dataset]:
        raise ConfigError(
            f"synthetic {dataset} data has no family {family!r}; choose one of {', '.join(FAMILIES[dataset])}"
        )
    cases = default_cases if cases is None else int(cases)
    size = default_size if size is None else tuple(int(length) for length in size)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if dataset == "la":
        return synthesize_la(out, cases, seed, size, progress)
    return synthesize_acdc(out, cases, seed, size, progress, family)
