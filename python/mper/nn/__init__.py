"""Building blocks for any segmentation network: :class:`PrototypeHead`, the multi-prototype
classifier with its bank, contrastive loss, gated EMA update and k-means initialisation."""
from mper.nn.head import OPS_MODULES, PrototypeHead

__all__ = ["OPS_MODULES", "PrototypeHead"]
