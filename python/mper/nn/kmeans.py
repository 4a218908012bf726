"""k-means for the prototype bank's initialisation: per-class voxel sampling, k-means++
seeding, Lloyd iterations and mini-batch k-means. Euclidean throughout."""

from __future__ import annotations

import torch

KMEANS_METHODS = ("minibatch", "lloyd")

#: Mini-batch k-means settings, those of scikit-learn's ``MiniBatchKMeans`` defaults
#: (which the authors' code uses): voxels per batch, passes over the data at most,
#: batches without a new low of the smoothed inertia before stopping, and seedings tried.
MINIBATCH_SIZE = 1024
MINIBATCH_MAX_PASSES = 100
MINIBATCH_PATIENCE = 10
MINIBATCH_SEEDINGS = 3


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
