"""The prototype bank: k-means initialisation and the confidence-gated EMA update.

The bank ``P`` is a ``(C*K, D)`` float32 tensor whose row ``c*K + k`` is prototype
``p_c^k`` (docs/method.md, "Prototype classifier"). It is not trained by gradient:

* Initialisation: the pre-trained network's ``feat`` on labeled training images is
  gathered per class (all voxels, or a seeded uniform subsample of at most
  ``max_voxels`` per class), and k-means with ``K`` clusters gives the class's ``K``
  prototypes: mini-batch k-means (:func:`minibatch_kmeans`, the authors' choice) or
  k-means++ seeding and Lloyd iterations (:func:`kmeans`). Euclidean in both.
* Update (docs/method.md, "Prototype update"): voxels that pass
  :func:`confidence_gate` add their ``emb`` to the prototype they were assigned to;
  every prototype with at least one voxel moves to ``alpha p + (1 - alpha) mean``.
  :meth:`PrototypeBank.accumulate` and :meth:`PrototypeBank.apply` split this so that
  one step can gather several forwards (``combined``) or each region take a step of its
  own (``region-wise``). Under ``torch.distributed`` the per-prototype sums and counts
  are all-reduced first, so every process keeps the same bank.
"""
from __future__ import annotations

from collections.abc import Iterable
from types import ModuleType

import torch
import torch.distributed as dist
from torch import nn

#: Which voxels may update the prototypes (paper Table IV): none, those taken from the
#: labeled image, those taken from the unlabeled image, or both.
UPDATE_SOURCES = ("none", "labeled", "unlabeled", "both")
#: One EMA step per iteration from all gated voxels, or one per region of each direction.
UPDATE_STEPS = ("combined", "region-wise")
KMEANS_METHODS = ("minibatch", "lloyd")

#: Mini-batch k-means settings, those of scikit-learn's ``MiniBatchKMeans`` defaults
#: (which the authors' code uses): voxels per batch, passes over the data at most,
#: batches without a new low of the smoothed inertia before stopping, and seedings tried.
MINIBATCH_SIZE = 1024
MINIBATCH_MAX_PASSES = 100
MINIBATCH_PATIENCE = 10
MINIBATCH_SEEDINGS = 3


def confidence_gate(
    proto_prediction: torch.Tensor,
    mixed_label: torch.Tensor,
    labeled_region: torch.Tensor,
    teacher_confidence: torch.Tensor,
    threshold: float,
    update_source: str = "both",
    include_background: bool = True,
) -> torch.Tensor:
    """Boolean ``(B, *S)`` mask of the voxels that take part in the prototype update.

    A voxel takes part when the prototype classifier is right (``q == Y^m``) and:
    it lies in ``labeled_region`` (if ``update_source`` is ``labeled`` or ``both``), or it
    lies outside it, i.e. came from the unlabeled image, and the teacher's confidence
    there exceeds ``threshold`` (if ``update_source`` is ``unlabeled`` or ``both``).
    Without ``include_background``, background voxels (class 0) never take part.
    """
    if update_source not in UPDATE_SOURCES:
        raise ValueError(f"update_source must be one of {UPDATE_SOURCES}, got {update_source!r}")
    labeled = labeled_region.bool().expand_as(mixed_label)
    correct = proto_prediction == mixed_label
    from_labeled = labeled & (update_source in ("labeled", "both"))
    from_unlabeled = ~labeled & (teacher_confidence > threshold) & (update_source in ("unlabeled", "both"))
    gate = correct & (from_labeled | from_unlabeled)
    if not include_background:
        gate &= mixed_label != 0
    return gate


def kmeans_plus_plus(points: torch.Tensor, num_clusters: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: each new centre drawn with probability proportional to the
    squared distance to the nearest centre chosen so far; ``(num_clusters, D)``."""
    first = int(torch.randint(len(points), (1,), generator=generator))
    centres = [points[first]]
    for _ in range(1, num_clusters):
        distance = torch.cdist(points, torch.stack(centres)).min(dim=1).values ** 2
        if distance.sum() > 0:
            chosen = int(torch.multinomial(distance, 1, generator=generator))
        else:
            chosen = int(torch.randint(len(points), (1,), generator=generator))
        centres.append(points[chosen])
    return torch.stack(centres).clone()


def _inertia(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Sum of squared distances of ``points`` to their nearest centre."""
    return (torch.cdist(points, centres).min(dim=1).values ** 2).sum()


def minibatch_kmeans(
    points: torch.Tensor,
    num_clusters: int,
    generator: torch.Generator,
    batch_size: int = MINIBATCH_SIZE,
    max_passes: int = MINIBATCH_MAX_PASSES,
    patience: int = MINIBATCH_PATIENCE,
    seedings: int = MINIBATCH_SEEDINGS,
) -> torch.Tensor:
    """Mini-batch k-means (Sculley, 2010): cluster centres ``(num_clusters, D)`` of
    ``points`` ``(N, D)``, ``N >= 1``.

    ``seedings`` k-means++ seedings, each on ``3 * batch_size`` random points, are
    scored on one further random sample and the best is kept. Then each step draws
    ``batch_size`` points (with replacement) and moves every centre to the running mean
    of all points ever assigned to it, ``c <- (n c + sum x) / (n + m)``. It stops after
    ``max_passes * N / batch_size`` steps, or earlier when the exponentially smoothed
    batch inertia has not reached a new low for ``patience`` steps.
    """
    points = points.float()
    count = len(points)
    sample_size = min(3 * batch_size, count)

    def draw(size: int) -> torch.Tensor:
        return points[torch.randint(count, (size,), generator=generator)]

    validation = draw(sample_size)
    seeded = [kmeans_plus_plus(draw(sample_size), num_clusters, generator) for _ in range(seedings)]
    centres = min(seeded, key=lambda candidate: float(_inertia(validation, candidate)))
    assigned = torch.zeros(num_clusters, dtype=points.dtype)
    smoothing = min(2.0 * batch_size / (count + 1), 1.0)
    smoothed, lowest, stale = None, float("inf"), 0
    for _ in range(max(1, max_passes * count // batch_size)):
        batch = draw(batch_size)
        distances = torch.cdist(batch, centres)
        nearest = distances.argmin(dim=1)
        batch_inertia = float((distances.min(dim=1).values ** 2).mean())
        sums = torch.zeros_like(centres).index_add_(0, nearest, batch)
        new = torch.bincount(nearest, minlength=num_clusters).to(points.dtype)
        hit = new > 0
        centres[hit] = (centres[hit] * assigned[hit, None] + sums[hit]) / (assigned[hit] + new[hit])[:, None]
        assigned += new
        smoothed = batch_inertia if smoothed is None else (1 - smoothing) * smoothed + smoothing * batch_inertia
        if smoothed < lowest:
            lowest, stale = smoothed, 0
        else:
            stale += 1
            if stale >= patience:
                break
    return centres


def kmeans(points: torch.Tensor, num_clusters: int, iterations: int, generator: torch.Generator) -> torch.Tensor:
    """Cluster centres ``(num_clusters, D)`` of ``points`` ``(N, D)``, ``N >= 1``.

    :func:`kmeans_plus_plus` seeding, then ``iterations`` Lloyd steps; a cluster that
    loses all its points keeps its centre. With fewer distinct points than clusters some
    centres coincide.
    """
    points = points.float()
    centres = kmeans_plus_plus(points, num_clusters, generator)
    for _ in range(iterations):
        nearest = torch.cdist(points, centres).argmin(dim=1)
        counts = torch.bincount(nearest, minlength=num_clusters).to(points.dtype)
        sums = torch.zeros_like(centres).index_add_(0, nearest, points)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled, None]
    return centres


class ClassVoxelSampler:
    """A uniform random subsample of at most ``max_voxels`` feature vectors per class
    (``max_voxels = 0``: every voxel).

    Every voxel seen gets a random key; each class keeps the voxels with the smallest
    keys, so the kept set is a uniform sample of everything added, in bounded memory.
    """

    def __init__(self, num_classes: int, max_voxels: int, generator: torch.Generator):
        if max_voxels < 0:
            raise ValueError(f"max_voxels must be 0 (every voxel) or positive, got {max_voxels}")
        self.max_voxels = max_voxels
        self.generator = generator
        self.keys: list[torch.Tensor] = [torch.empty(0) for _ in range(num_classes)]
        self.chunks: list[list[torch.Tensor]] = [[] for _ in range(num_classes)]

    def add(self, feat: torch.Tensor, labels: torch.Tensor) -> None:
        """Add the voxels of ``feat`` ``(B, D, *S)`` under their classes ``labels`` ``(B, *S)``."""
        vectors = feat.detach().movedim(1, -1).reshape(-1, feat.shape[1]).float().cpu()
        flat_labels = labels.reshape(-1).cpu()
        for class_index, chunks in enumerate(self.chunks):
            chosen = vectors[flat_labels == class_index]
            if len(chosen) == 0:
                continue
            chunks.append(chosen)
            if self.max_voxels:
                keys = torch.cat([self.keys[class_index], torch.rand(len(chosen), generator=self.generator)])
                keep = keys.argsort()[: self.max_voxels]
                self.keys[class_index], chunks[:] = keys[keep], [torch.cat(chunks)[keep]]

    def class_features(self, class_index: int) -> torch.Tensor:
        """The kept feature vectors of one class, ``(n, D)`` (``(0, 0)`` when none)."""
        chunks = self.chunks[class_index]
        return torch.cat(chunks) if chunks else torch.empty(0, 0)


class PrototypeBank:
    """``K`` prototypes per class, stored as a ``(C*K, D)`` float32 tensor ``prototypes``."""

    def __init__(self, num_classes: int, per_class: int, dim: int, device: torch.device | str = "cpu"):
        self.num_classes = num_classes
        self.per_class = per_class
        self.prototypes = torch.zeros(num_classes * per_class, dim, dtype=torch.float32, device=device)

    @torch.no_grad()
    def initialize(
        self,
        net: nn.Module,
        batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
        generator: torch.Generator,
        max_voxels: int = 50_000,
        kmeans_iterations: int = 20,
        method: str = "lloyd",
    ) -> None:
        """Set every class's prototypes to the k-means centres of its ``feat`` voxels.

        ``batches`` yields ``(image, label)`` pairs of labeled training images; ``net``
        runs on them in eval mode on the bank's device. ``method``: ``"minibatch"``
        (:func:`minibatch_kmeans`) or ``"lloyd"`` (:func:`kmeans` with
        ``kmeans_iterations`` steps); ``max_voxels`` (0: all) caps the voxels per class.
        """
        if method not in KMEANS_METHODS:
            raise ValueError(f"k-means method must be one of {KMEANS_METHODS}, got {method!r}")
        was_training = net.training
        net.eval()
        sampler = ClassVoxelSampler(self.num_classes, max_voxels, generator)
        for image, label in batches:
            sampler.add(net(image.to(self.prototypes.device)).feat, label)
        net.train(was_training)
        for class_index in range(self.num_classes):
            features = sampler.class_features(class_index)
            if features.numel() == 0:
                raise ValueError(
                    f"class {class_index} has no voxel in the labeled training images, so its "
                    "prototypes cannot be initialised; label more cases or check the labels"
                )
            if method == "minibatch":
                centres = minibatch_kmeans(features, self.per_class, generator)
            else:
                centres = kmeans(features, self.per_class, kmeans_iterations, generator)
            rows = slice(class_index * self.per_class, (class_index + 1) * self.per_class)
            self.prototypes[rows] = centres.to(self.prototypes.device)

    @torch.no_grad()
    def accumulate(
        self, ops: ModuleType, emb: torch.Tensor, labels: torch.Tensor, assign: torch.Tensor, gate: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-prototype sums ``(C*K, D)`` and counts ``(C*K,)`` of the gated voxels' ``emb``.

        ``emb`` ``(B, D, *S)``; ``labels`` (``Y^m``) and ``gate`` ``(B, *S)``; ``assign``
        ``(B, C, *S)`` from the prototype classifier. ``ops`` is :mod:`mper.ops` or
        :mod:`mper.reference`.
        """
        # labels are class indices by construction; the range check would cost a sync
        return ops.proto_accumulate(
            emb.detach(), labels, assign, gate, self.num_classes, self.per_class, check_labels=False
        )

    @torch.no_grad()
    def apply(self, ops: ModuleType, sums: torch.Tensor, counts: torch.Tensor, momentum: float) -> None:
        """One EMA step (``momentum`` is alpha) towards ``sums / counts`` where ``counts > 0``."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums)
            dist.all_reduce(counts)
        ops.proto_ema_update_(self.prototypes, sums, counts, momentum)

    def update(
        self,
        ops: ModuleType,
        emb: torch.Tensor,
        labels: torch.Tensor,
        assign: torch.Tensor,
        gate: torch.Tensor,
        momentum: float,
    ) -> torch.Tensor:
        """:meth:`accumulate` then :meth:`apply`; returns the per-prototype counts."""
        sums, counts = self.accumulate(ops, emb, labels, assign, gate)
        self.apply(ops, sums, counts, momentum)
        return counts

    def to(self, device: torch.device | str) -> PrototypeBank:
        """Move the bank to ``device`` (in place); returns ``self``."""
        self.prototypes = self.prototypes.to(device)
        return self

    def state_dict(self) -> dict:
        """The bank's shape and values, for checkpoints."""
        return {"num_classes": self.num_classes, "per_class": self.per_class,
                "prototypes": self.prototypes.detach().cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        """Restore values written by :meth:`state_dict`; the shapes must match."""
        expected = (self.num_classes, self.per_class, tuple(self.prototypes.shape))
        found = (state["num_classes"], state["per_class"], tuple(state["prototypes"].shape))
        if found != expected:
            raise ValueError(
                f"prototype bank shape mismatch: checkpoint has (classes, per class, rows x dim) "
                f"= {found}, this model expects {expected}"
            )
        self.prototypes.copy_(state["prototypes"])
