"""Warnings for a run whose data is far larger than its preset is made for.

``--preset demo`` is sized for a CPU and for data about the size of its training patch
(the demo's synthetic data): a few hundred iterations, small networks, frequent
validation. Given much larger data it still runs, but learns less in its iterations and
can spend most of its time validating. :func:`size_warnings` says so before training
starts, each in one line:

* the data: the first labeled training image has :data:`DATA_SIZE_FACTOR` times the
  voxels of the training patch or more;
* validation: its passes over the validation cases are estimated to take
  :data:`LONG_VALIDATION_S` seconds or more in all (:func:`validation_passes` of them).
  The estimate of a pass runs the validation's own
  inference (windows or slices) over every validation case with the run's network (as
  built, untrained: its speed does not depend on its weights), timing its first
  :data:`TIMED_CALLS` calls and answering the others with zeros: the time of the rest
  (loading, resizing, averaging windows) is measured, that of the network extrapolated.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mper.data.synth_scans import SYNTH_SCAN_SIZE
from mper.datasets import SLIDING_WINDOW, DatasetSpec, get_dataset
from mper.nets.base import SegmentationOutput
from mper.train.config import TrainConfig, stage_iterations, training_stages
from mper.train.loaders import training_cases, validation_cases
from mper.train.runtime import resolve_device

from .inference import predict_volume

#: The presets these warnings are for (in a stack such as ``reference+demo`` too).
SIZED_PRESETS = ("demo",)
#: Training images with this many times the voxels of the patch are far larger than the preset is made for.
DATA_SIZE_FACTOR = 4
#: Validation estimated to take this long (seconds, all passes of the run) or longer is worth a warning.
LONG_VALIDATION_S = 120.0
#: Network calls timed for the estimate; the first is a warm-up and is not counted.
TIMED_CALLS = 4


def size_warnings(config: TrainConfig) -> list[str]:
    """One line per way the run's data is far larger than its preset (see the module
    docstring) is made for; none for presets other than :data:`SIZED_PRESETS`."""
    presets = set(config.preset.split("+"))
    if not presets & set(SIZED_PRESETS):
        return []
    preset = " + ".join(sorted(presets & set(SIZED_PRESETS)))
    warnings = [_data_size_warning(config, preset), _validation_time_warning(config, preset)]
    return [warning for warning in warnings if warning]


def _size(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def _data_size_warning(config: TrainConfig, preset: str) -> str | None:
    spec, patch = get_dataset(config.dataset), tuple(config.data.patch_size)
    labeled, _ = training_cases(config)
    image, _ = spec.load_item(config.data_root, labeled[0])
    shape = image.shape[image.ndim - len(patch) :]  # the voxels: imported images carry their channels first
    ratio = math.prod(shape) / math.prod(patch)
    if ratio < DATA_SIZE_FACTOR:
        return None
    return (
        f"--preset {preset} is made for training images of about its {_size(patch)} patch, but those of "
        f"{config.data_root} are {_size(shape)} ({labeled[0]}), {ratio:.1f}x the voxels: its "
        f"{config.pretrain.iterations} + {config.selftrain.iterations} iterations and narrow networks can "
        f"learn much less from them. For a quick run, write data of about {_size(patch)} "
        f"({_synthetic_data_command(spec, patch)}); for this data, a preset sized for it"
    )


def _synthetic_data_command(spec: DatasetSpec, patch: tuple[int, ...]) -> str:
    """The commands that write synthetic data of ``spec``'s kind with images of about
    ``patch``: raw scans imported as ``spec``'s were (a 2D plan's patch is the slice's,
    the synthetic scans slice their last axis), or the built-in dataset's layout."""
    if spec.scans is None:
        folder = f"data/{spec.name}-{_size(patch)}"
        return f"mper-data synth --dataset {spec.name} --size {' '.join(map(str, patch))} --out {folder}"
    plan = spec.scans
    size = patch if plan.dims == "3d" else (*patch, SYNTH_SCAN_SIZE[2])
    name = f"synth-{_size(size)}"
    return (
        f"mper-data synth --format {plan.layout} --size {' '.join(map(str, size))} --out raw/{name}, then "
        f"mper-data import --source raw/{name} --out data/{name} --dims {plan.dims}"
    )


class _TimedNetwork(nn.Module):
    """``network`` for its first :data:`TIMED_CALLS` calls (timed), zero logits after
    that; counts the calls."""

    def __init__(self, network: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.network, self.num_classes = network, num_classes
        self.calls = 0
        self.seconds: list[float] = []

    def forward(self, batch: torch.Tensor) -> SegmentationOutput:
        self.calls += 1
        if self.calls > TIMED_CALLS:
            logits = batch.new_zeros((batch.shape[0], self.num_classes, *batch.shape[2:]))
            return SegmentationOutput(logits, logits)
        began = time.perf_counter()
        output = self.network(batch)
        float(output.pred.sum())  # waits for the device
        self.seconds.append(time.perf_counter() - began)
        return output

    def call_seconds(self) -> float:
        """The median time of a call, the warm-up left out when there are others."""
        return statistics.median(self.seconds[1:] or self.seconds)


def validation_passes(config: TrainConfig) -> int:
    """How many times a run validates: every ``eval.val_interval`` iterations and after
    each stage's last; self-training validates the teacher too (``eval.teacher_dice``)."""
    passes = 0
    for stage in training_stages(config):
        networks = 2 if stage == "selftrain" and config.eval.teacher_dice else 1
        passes += math.ceil(stage_iterations(config, stage) / config.eval.val_interval) * networks
    return passes


def _validation_time_warning(config: TrainConfig, preset: str) -> str | None:
    spec, device = get_dataset(config.dataset), resolve_device(config.device)
    network = spec.build_network(config.num_classes, **config.network).to(device)
    timed = _TimedNetwork(network, config.num_classes)
    cases = validation_cases(config)
    began = time.perf_counter()
    for case in cases:
        image, _ = spec.load_volume(config.data_root, case)
        predict_volume(
            timed,
            np.asarray(image),
            config.dataset,
            config.num_classes,
            patch_size=config.data.patch_size,
            stride=config.eval.stride,
            device=device,
        )
    untimed_calls = max(timed.calls - len(timed.seconds), 0)
    estimate = time.perf_counter() - began + untimed_calls * timed.call_seconds()
    passes = validation_passes(config)
    if passes * estimate < LONG_VALIDATION_S:
        return None
    sliding = spec.inference == SLIDING_WINDOW
    calls = (
        f"{timed.calls} windows of {_size(tuple(config.data.patch_size))} at a step of "
        f"{_size(tuple(config.eval.stride or spec.stride))}"
        if sliding
        else f"{timed.calls} batches of slices"
    )
    return (
        f"a validation pass will take about {_duration(estimate)} on {device.type}: {len(cases)} "
        f"case{'s' if len(cases) > 1 else ''} of {Path(config.data_root)}, {calls}, "
        f"{1e3 * timed.call_seconds():.0f} ms each; this run validates {passes} times (eval.val_interval = "
        f"{config.eval.val_interval}), about {_duration(passes * estimate)} in all. --preset {preset} is made "
        "for validation of seconds: use smaller data, or validate less often "
        f"(--set eval.val_interval=N{', --set eval.stride=[...] for fewer windows' if sliding else ''})"
    )


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
