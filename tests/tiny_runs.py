"""Settings that make an ACDC training run take seconds, shared by the tests that run the
commands end to end."""

from __future__ import annotations

from collections.abc import Sequence

#: A narrow U-Net on 32x32 patches, 3 + 3 iterations, one validation.
TINY_ACDC = [
    "network.channels=[4, 8, 16, 32, 64]",
    "data.patch_size=[32, 32]",
    "data.batch_size=4",
    "data.labeled_batch_size=2",
    "data.num_workers=0",
    "pretrain.iterations=3",
    "selftrain.iterations=3",
    "eval.val_interval=3",
    "eval.num_figures=1",
    "prototypes.kmeans_max_voxels=500",
]

#: Two iterations a stage, one validation, no figures: any dataset's network settings on top.
TWO_ITERATIONS = [
    "data.num_workers=0",
    "pretrain.iterations=2",
    "selftrain.iterations=2",
    "eval.val_interval=2",
    "eval.num_figures=0",
    "prototypes.kmeans_max_voxels=500",
]


def set_arguments(assignments: Sequence[str]) -> list[str]:
    """``--set KEY=VALUE`` for each assignment, as the commands take them."""
    return [argument for assignment in assignments for argument in ("--set", assignment)]


def acdc_run_arguments(data_root: object, run_dir: object, assignments: Sequence[str], *options: str) -> list[str]:
    """mper-train's arguments of a run on the ACDC data in ``data_root`` (one labeled patient,
    on the CPU) into ``run_dir``: ``options``, then ``--set`` each of ``assignments``."""
    return [
        "--dataset",
        "acdc",
        "--data-root",
        str(data_root),
        "--labeled",
        "1",
        "--device",
        "cpu",
        "--out",
        str(run_dir),
        *options,
        *set_arguments(assignments),
    ]
