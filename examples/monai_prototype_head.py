"""MPER's prototype head on MONAI's UNet: a few training steps on toy data.

The head reads a network's last feature map. MONAI's ``UNet`` ends in a conv, so built
with ``out_channels = D`` it gives ``D``-channel features; a 1x1 conv on them is the
linear classifier and :class:`mper.nn.PrototypeHead` the prototype classifier. Each step
trains both on the labels, adds the head's contrastive loss, and moves every prototype
towards the mean feature of the voxels it classified right (a gated EMA step; MPER's
trainer gates unlabeled voxels by the teacher's confidence too).

    pip install 'mper[test]'        # monai comes with the test extra
    python examples/monai_prototype_head.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.nets import UNet
from torch import nn

from mper.nn import PrototypeHead


class UNetWithPrototypes(nn.Module):
    """MONAI's 2D UNet as a feature extractor, with a linear and a prototype classifier."""

    def __init__(self, num_classes: int, feature_dim: int = 16, num_prototypes: int = 3, ops: str = "mper"):
        super().__init__()
        self.backbone = UNet(
            spatial_dims=2, in_channels=1, out_channels=feature_dim, channels=(8, 16, 32), strides=(2, 2)
        )
        self.classifier = nn.Conv2d(feature_dim, num_classes, kernel_size=1)
        self.prototypes = PrototypeHead(num_classes, num_prototypes, feature_dim, ops=ops)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Linear logits and the features ``(B, D, H, W)``."""
        feat = self.backbone(image)
        return self.classifier(feat), feat


def toy_batch(batch: int = 4, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Bright discs (class 1) on a dark, noisy background (class 0)."""
    generator = torch.Generator().manual_seed(seed)
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centres = 8 + (size - 16) * torch.rand(batch, 2, 1, 1, generator=generator)
    radii = 4 + 4 * torch.rand(batch, 1, 1, generator=generator)
    label = ((rows - centres[:, 0]) ** 2 + (cols - centres[:, 1]) ** 2 < radii**2).long()
    image = 0.2 + 0.6 * label + 0.05 * torch.randn(batch, size, size, generator=generator)
    return image.unsqueeze(1), label


def initialize_prototypes(model: UNetWithPrototypes, image: torch.Tensor, label: torch.Tensor) -> None:
    """k-means of each class's features on labeled images gives its prototypes."""
    model.eval()
    with torch.no_grad():
        feat = model(image)[1]
    # mini-batch k-means on every labeled voxel, as the paper's presets do
    model.prototypes.initialize(
        [(feat, label)], torch.Generator().manual_seed(0), method="minibatch", max_voxels=0, iterations=20
    )
    model.train()


def train_step(
    model: UNetWithPrototypes,
    optimizer: torch.optim.Optimizer,
    image: torch.Tensor,
    label: torch.Tensor,
    momentum: float = 0.9,
    contrastive_weight: float = 0.1,
) -> float:
    """One step: CE of both classifiers plus the contrastive loss, and the bank's EMA step."""
    linear, feat = model(image)
    proto_logits, assign, contrastive = model.prototypes.forward_with_contrastive(feat)
    loss = F.cross_entropy(linear, label) + F.cross_entropy(proto_logits, label) + contrastive_weight * contrastive
    model.prototypes.update(feat, label, assign, gate=proto_logits.argmax(dim=1) == label, momentum=momentum)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def main(steps: int = 30) -> list[float]:
    torch.manual_seed(0)
    model = UNetWithPrototypes(num_classes=2)
    image, label = toy_batch()
    initialize_prototypes(model, image, label)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = [train_step(model, optimizer, image, label) for _ in range(steps)]
    print(f"loss: {losses[0]:.3f} at the first step, {losses[-1]:.3f} after {steps}")
    return losses


if __name__ == "__main__":
    main()
