"""The multi-prototype head as a module: what a MONAI, nnU-Net or any other network adds
to its decoder to classify voxels by prototypes (docs/method.md, "Prototype classifier").

:class:`PrototypeHead` holds the bank ``P`` ``(C*K, D)`` (row ``c*K + k`` is prototype
``p_c^k``) as a buffer, so it is in the module's ``state_dict`` and moves with ``.to()``.
It is not trained by gradient:

* Initialisation (:meth:`PrototypeHead.initialize`): the features of labeled images are
  gathered per class (all voxels, or a seeded uniform subsample of at most
  ``max_voxels`` per class) and k-means with ``K`` clusters gives each class's
  prototypes: mini-batch k-means (the authors' choice) or k-means++ seeding and Lloyd
  iterations (:mod:`mper.nn.kmeans`).
* Update (docs/method.md, "Prototype update"): the voxels a gate lets through add their
  features to the prototype they were assigned to; every prototype with at least one
  voxel moves to ``alpha p + (1 - alpha) mean``. :meth:`PrototypeHead.accumulate` and
  :meth:`PrototypeHead.apply_update` split this so that one step can gather several
  forwards, or each region take a step of its own. Under ``torch.distributed`` the
  per-prototype sums and counts are all-reduced first, and the initial bank is
  broadcast from rank 0, so every process keeps the same bank.

The forward passes read the bank as it is when they run: the bank may be updated in
place before their backward pass.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable
from types import ModuleType

import torch
import torch.distributed as dist
from torch import nn

from mper.errors import DataFormatError

from .kmeans import KMEANS_METHODS, ClassVoxelSampler, kmeans, minibatch_kmeans

#: The implementations of the prototype ops the setting ``ops`` chooses from: the fused
#: kernels, or eager PyTorch. :mod:`mper.reference` is the tests' definition of the ops and
#: also a choice a user may make (no compiled core, or to check a kernel); production code
#: reaches it only through this choice.
OPS_MODULES = {"mper": "mper.ops", "reference": "mper.reference"}


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


class PrototypeHead(nn.Module):
    """``K`` prototypes per class over ``D``-channel features, and the ops that use them.

    Args:
        num_classes: C, background included.
        num_prototypes: K, prototypes per class.
        dim: D, the channels of the features it reads.
        tau: the classifier's temperature tau1 (Eq. 3).
        nce_tau: the contrastive loss's temperature tau2 (Eq. 5).
        ignore_index: bank row whose nearest voxels the contrastive loss leaves out
            (``None``: none).
        ops: ``"mper"`` (fused kernels) or ``"reference"`` (eager PyTorch, the same
            results); a name, so the module deep-copies and pickles.

    Example, on the last decoder map ``feat`` of any network::

        head = PrototypeHead(num_classes=4, num_prototypes=3, dim=feat.shape[1])
        head.initialize([(feat_of_labeled_batch, label)], torch.Generator().manual_seed(0),
                        method="minibatch", max_voxels=0, iterations=20)
        logits, assign, contrastive = head.forward_with_contrastive(feat)
        head.update(feat, label, assign, gate=logits.argmax(1) == label, momentum=0.9)
    """

    prototypes: torch.Tensor

    def __init__(
        self,
        num_classes: int,
        num_prototypes: int,
        dim: int,
        tau: float = 0.1,
        nce_tau: float = 0.1,
        ignore_index: int | None = None,
        ops: str = "mper",
    ) -> None:
        super().__init__()
        sizes = {"num_classes": num_classes, "num_prototypes": num_prototypes, "dim": dim}
        for name, value in sizes.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if ops not in OPS_MODULES:
            raise ValueError(f"ops must be one of {', '.join(OPS_MODULES)}; got {ops!r}")
        self.num_classes, self.num_prototypes, self.dim = num_classes, num_prototypes, dim
        self.tau, self.nce_tau, self.ignore_index = tau, nce_tau, ignore_index
        self.ops_name = ops
        self.register_buffer("prototypes", torch.zeros(num_classes * num_prototypes, dim))

    @property
    def ops(self) -> ModuleType:
        """:mod:`mper.ops` or :mod:`mper.reference`."""
        name = OPS_MODULES[self.ops_name]
        # the loaded module first: torch.compile traces a dictionary look-up, not an import
        return sys.modules.get(name) or importlib.import_module(name)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, num_prototypes={self.num_prototypes}, dim={self.dim}, "
            f"tau={self.tau}, nce_tau={self.nce_tau}, ops={self.ops_name!r}"
        )

    def bank(self) -> torch.Tensor:
        """A copy of the bank as it is now: what the forward passes read by default. A
        copy, so that an in-place update before the backward pass does not change what it
        reads; under ``torch.compile`` take it outside the compiled code and pass it in
        (the compiler may otherwise keep the bank itself for the backward pass)."""
        return self.prototypes.clone()

    def forward(self, feat: torch.Tensor, bank: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Prototype logits ``(B, C, *S)`` (``max_k cos(z, p_c^k) / tau``, differentiable in
        ``feat``) and the assignment ``(B, C, *S)`` int64 (the winning k of each class)
        of features ``feat`` ``(B, D, *S)``, against ``bank`` (default :meth:`bank`)."""
        return self.ops.proto_classify(feat, self._read(bank), self.num_classes, self.tau)

    def forward_with_contrastive(
        self, feat: torch.Tensor, bank: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`forward` and :meth:`contrastive_loss` from one read of ``feat``:
        ``(logits, assign, loss)``."""
        return self.ops.proto_classify_infonce(
            feat, self._read(bank), self.num_classes, self.tau, self.nce_tau, self.ignore_index
        )

    def contrastive_loss(self, feat: torch.Tensor, bank: torch.Tensor | None = None) -> torch.Tensor:
        """InfoNCE of every voxel against all prototypes, its nearest one the positive (Eq. 5)."""
        return self.ops.proto_infonce(feat, self._read(bank), self.nce_tau, self.ignore_index)

    def _read(self, bank: torch.Tensor | None) -> torch.Tensor:
        return self.bank() if bank is None else bank

    @torch.no_grad()
    def accumulate(
        self, feat: torch.Tensor, labels: torch.Tensor, assign: torch.Tensor, gate: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-prototype sums ``(C*K, D)`` and counts ``(C*K,)`` of the gated voxels' features.

        ``feat`` ``(B, D, *S)``; ``labels`` (class indices) and ``gate`` (bool, ``None``:
        every voxel) ``(B, *S)``; ``assign`` ``(B, C, *S)`` from :meth:`forward`.
        """
        # labels are class indices by construction; the range check would cost a sync
        return self.ops.proto_accumulate(
            feat.detach(), labels, assign, gate, self.num_classes, self.num_prototypes, check_labels=False
        )

    @torch.no_grad()
    def apply_update(self, sums: torch.Tensor, counts: torch.Tensor, momentum: float) -> None:
        """One EMA step (``momentum`` is alpha) towards ``sums / counts`` where ``counts > 0``.

        Under ``torch.distributed``, ``sums`` and ``counts`` are all-reduced in place first.
        """
        if _distributed():
            dist.all_reduce(sums)
            dist.all_reduce(counts)
        self.ops.proto_ema_update_(self.prototypes, sums, counts, momentum)

    def update(
        self,
        feat: torch.Tensor,
        labels: torch.Tensor,
        assign: torch.Tensor,
        gate: torch.Tensor | None,
        momentum: float,
    ) -> torch.Tensor:
        """:meth:`accumulate` then :meth:`apply_update`; returns the per-prototype counts."""
        sums, counts = self.accumulate(feat, labels, assign, gate)
        self.apply_update(sums, counts, momentum)
        return counts

    @torch.no_grad()
    def initialize(
        self,
        samples: Iterable[tuple[torch.Tensor, torch.Tensor]],
        generator: torch.Generator,
        *,
        method: str,
        max_voxels: int,
        iterations: int,
    ) -> None:
        """Set every class's prototypes to the k-means centres of its voxels' features.

        ``samples`` yields ``(feat (B, D, *S), labels (B, *S))`` pairs of labeled images.
        ``method``: ``"minibatch"`` (:func:`~mper.nn.kmeans.minibatch_kmeans`) or
        ``"lloyd"`` (:func:`~mper.nn.kmeans.kmeans` with ``iterations`` steps);
        ``max_voxels`` (0: all) caps the voxels kept per class. No defaults: a training
        run passes ``prototypes.kmeans``, ``kmeans_max_voxels`` and ``kmeans_iterations``
        of its preset, whose ``[paper]`` values are the paper's recipe. Under
        ``torch.distributed`` rank 0 alone reads ``samples`` and runs k-means, and
        broadcasts its bank to every process.
        """
        if method not in KMEANS_METHODS:
            raise ValueError(f"k-means method must be one of {KMEANS_METHODS}, got {method!r}")
        if not _distributed() or dist.get_rank() == 0:
            self._initialize(samples, generator, method, max_voxels, iterations)
        if _distributed():
            dist.broadcast(self.prototypes, src=0)

    def _initialize(
        self,
        samples: Iterable[tuple[torch.Tensor, torch.Tensor]],
        generator: torch.Generator,
        method: str,
        max_voxels: int,
        iterations: int,
    ) -> None:
        sampler = ClassVoxelSampler(self.num_classes, max_voxels, generator)
        for feat, labels in samples:
            sampler.add(feat, labels)
        for class_index in range(self.num_classes):
            features = sampler.class_features(class_index)
            if features.numel() == 0:
                # a user's data, not a caller's mistake: one line, naming what to change
                raise DataFormatError(
                    f"class {class_index} has no voxel in the labeled images (or patches of them) that the "
                    "prototype bank is initialised from, so its prototypes cannot be initialised; label more "
                    "cases or check the labels"
                )
            if method == "minibatch":
                centres = minibatch_kmeans(features, self.num_prototypes, generator)
            else:
                centres = kmeans(features, self.num_prototypes, iterations, generator)
            rows = slice(class_index * self.num_prototypes, (class_index + 1) * self.num_prototypes)
            self.prototypes[rows] = centres.to(self.prototypes)
