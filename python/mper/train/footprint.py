"""What one training iteration asks of the machine, worked out before training starts.

:func:`check_fits` runs the student network and the losses on PyTorch's meta device
(shapes only: no memory, no arithmetic) at the batch of every forward that the run's
stages make, and so finds two things a run would otherwise meet only once it is under
way:

* batch norm needs more than one value per channel in training: a patch that the
  network's halvings bring down to a single voxel, in a forward of a single image, cannot
  be trained (:class:`~mper.errors.ConfigError` naming the patch and the batch);
* the memory of one iteration (:func:`iteration_memory`) must fit into what the device
  has free: the available RAM on the CPU, the free device memory on CUDA.

The memory of an iteration is counted from what autograd keeps for the backward pass
(every tensor the forward saves, through :func:`torch.autograd.graph.saved_tensors_hooks`):
the network's activations at each forward's batch, the copy-paste losses of the linear
and prototype logits, the fused prototype head's logits and assignments, plus the weights,
their gradients and momentum buffers, the teacher, the batch, and the gradients of the
two largest activations alive at once during the backward pass. The teacher's forward
runs without gradient before the student's and holds less than the student's saved
activations, so it adds only its output. With ``amp = "bf16"`` the network's floating-point
activations count at 2 bytes a value (an assumption: autocast is not measured here).

Measured on the CPU against the peak resident memory that an iteration adds (the weights,
gradients and momentum exist before it), the estimate of its working memory
(activations, batch and backward) was 1.17 to 1.35 times the measured peak, for an ACDC
U-Net of full width at 128x128 with a labeled batch of 4 and an LA V-Net of 8 base filters
at 64x64x48 with a labeled batch of 2, in both stages. ``tests/test_footprint.py``
measures two of these on every run and holds the ratio within 1.5 either way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mper.datasets import get_dataset
from mper.errors import ConfigError
from mper.host import available_host_memory
from mper.losses import copy_paste_loss

from .config import TrainConfig, training_stages, with_prototypes
from .runtime import resolve_device

GIB = 2**30
#: Gradients of activations the backward pass holds at once, beyond the saved tensors.
BACKWARD_TRANSIENTS = 2


@dataclass(frozen=True)
class IterationMemory:
    """Bytes of one training iteration of the stage that needs the most (``stage``):
    ``activations`` (saved by the network, the losses and the head), ``weights``
    (student, gradients, momentum, teacher), ``batch`` and ``transient`` (the backward
    pass's largest gradients)."""

    stage: str
    activations: int
    weights: int
    batch: int
    transient: int

    @property
    def total(self) -> int:
        return self.activations + self.weights + self.batch + self.transient

    def describe(self) -> str:
        """One line: the total and its parts, in GiB."""
        return (
            f"{self.total / GIB:.2f} GiB in {self.stage} (activations {self.activations / GIB:.2f}, "
            f"weights and optimizer {self.weights / GIB:.2f}, batch {self.batch / GIB:.2f}, backward "
            f"{self.transient / GIB:.2f})"
        )


def _saved_bytes(compute: Callable[[], object]) -> tuple[int, int, int]:
    """(all bytes, floating-point bytes, largest tensor's bytes) of the tensors autograd saves
    while ``compute()`` runs."""
    saved: dict[int, torch.Tensor] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved[id(tensor)] = tensor  # the same tensor saved by two ops is held once
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        compute()
    sizes = [(tensor.numel() * tensor.element_size(), tensor.is_floating_point()) for tensor in saved.values()]
    return (
        sum(size for size, _ in sizes),
        sum(size for size, floating in sizes if floating),
        max((size for size, _ in sizes), default=0),
    )


def _meta_network(config: TrainConfig) -> nn.Module:
    with torch.device("meta"):
        net = get_dataset(config.dataset).build_network(config.num_classes, **config.network)
    return net.train()


def _forward(net: nn.Module, config: TrainConfig, images: int) -> tuple[int, int, int]:
    """What one training forward of ``images`` patches saves; refuses a batch norm with
    one value per channel."""
    shape = (images, int(getattr(net, "in_channels", 1)), *config.data.patch_size)
    try:
        return _saved_bytes(lambda: net(torch.empty(shape, device="meta", requires_grad=True)))
    except ValueError as error:
        if "more than 1" not in str(error):
            raise
        raise ConfigError(
            f"data.patch_size {list(config.data.patch_size)} is too small for the network at "
            f"data.labeled_batch_size {config.data.labeled_batch_size}: a forward of {images} image(s) reaches "
            f"batch norm with one value per channel ({error}); use a larger patch or labeled batch"
        ) from error


def _loss(config: TrainConfig, images: int) -> int:
    """What the copy-paste loss of one ``(images, C, *patch)`` logits map saves."""
    patch = config.data.patch_size
    logits = torch.empty(images, config.num_classes, *patch, device="meta", requires_grad=True)
    label = torch.empty(images, *patch, dtype=torch.int64, device="meta")
    mask = torch.empty(patch, device="meta")
    total, _, _ = _saved_bytes(lambda: copy_paste_loss(logits, label, label, mask, dice=config.losses.options()))
    return total


def _stage_forwards(config: TrainConfig, stage: str, processes: int) -> list[int]:
    """Images of each student forward of one iteration of ``stage`` (this process's share)."""
    labeled = config.data.labeled_batch_size // processes
    if stage == "baseline":
        return [labeled]
    if stage == "pretrain":
        return [labeled // 2]
    return [labeled // 2] * 2 if config.selftrain.forward_passes == 2 else [labeled]


def stage_memory(config: TrainConfig, stage: str, processes: int = 1) -> IterationMemory:
    """The memory of one iteration of ``stage`` (``pretrain``, ``selftrain`` or
    ``baseline``) for one of ``processes`` training processes (see the module docstring);
    raises :class:`~mper.errors.ConfigError` for a patch too small for batch norm."""
    net = _meta_network(config)
    parameters = sum(parameter.numel() * parameter.element_size() for parameter in net.parameters())
    voxels = 1
    for size in config.data.patch_size:
        voxels *= size
    amp_factor = 0.5 if config.amp == "bf16" else 1.0
    forwards = _stage_forwards(config, stage, processes)
    activations = transient = 0
    for images in forwards:
        total, floating, largest = _forward(net, config, images)
        activations += int(total - floating * (1 - amp_factor))
        transient = max(transient, BACKWARD_TRANSIENTS * largest)
    images = sum(forwards)
    if stage == "selftrain":
        # both directions' linear losses; with the head, their prototype losses and the
        # fused head's logits (float32) and assignments (int64)
        prototype_head = with_prototypes(config)
        activations += (2 if prototype_head else 1) * 2 * _loss(config, images // 2)
        if prototype_head:
            activations += images * config.num_classes * voxels * (4 + 8)
        # the teacher's softmax of the unlabeled images, their confidence and pseudo labels
        activations += images * voxels * (config.num_classes * 4 + 4 + 8)
    else:
        activations += _loss(config, images)
    loaded = config.data.labeled_batch_size // processes * (2 if stage == "selftrain" else 1)
    batch = loaded * voxels * (4 + 8) * 2  # images and int64 labels, and their mixed copies
    # student, its gradient and momentum; the teacher in self-training
    weights = parameters * (4 if stage == "selftrain" else 3)
    return IterationMemory(stage, activations, weights, batch, transient)


def iteration_memory(config: TrainConfig, processes: int = 1) -> IterationMemory:
    """:func:`stage_memory` of the stage of ``config``'s run that needs the most."""
    stages = training_stages(config)
    return max((stage_memory(config, stage, processes) for stage in stages), key=lambda memory: memory.total)


def available_memory(device: torch.device) -> int:
    """Bytes free for training on ``device``: free device memory on CUDA, the RAM the
    system reports available on the CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return available_host_memory()


def least_free(devices: Sequence[str]) -> str:
    """Of ``devices`` (named as ``--device`` takes them, e.g. ``cuda:2``), the one with the
    least memory free for training: an iteration that fits into it fits into each of them.
    A device this machine lacks is refused (:func:`~mper.train.runtime.resolve_device`)."""
    return min(devices, key=lambda name: available_memory(resolve_device(name)))


def check_fits(config: TrainConfig, device: torch.device, processes: int = 1, processes_here: int = 1) -> None:
    """Refuse, before training, a patch too small for the network's batch norm and an
    iteration that does not fit into ``device``'s free memory (shared by the
    ``processes_here`` training processes of this machine on the CPU)."""
    estimate = iteration_memory(config, processes)
    sharing = processes_here if device.type == "cpu" else 1
    free = available_memory(device)
    if estimate.total * sharing > free:
        shared = f" for each of {sharing} processes" if sharing > 1 else ""
        raise ConfigError(
            f"one training iteration needs about {estimate.describe()}{shared}, but only {free / GIB:.2f} GiB "
            f"is free on {device}; lower data.patch_size {list(config.data.patch_size)} or "
            f"data.labeled_batch_size {config.data.labeled_batch_size} (with data.batch_size twice it)"
        )
