"""Layers: modules that go into a network, as in ``torch.nn``.

:class:`PrototypeHead`, the multi-prototype classifier any segmentation network can carry on
its features: the bank, the contrastive loss, the gated EMA update, the k-means
initialisation. The sibling :mod:`mper.nets` holds whole networks (as
``monai.networks.nets`` does), which end in ``(pred, feat)`` and know nothing of the head:
the trainer puts the two together, so the head serves any network and a network trains
without it.

Beside it: :mod:`mper.nn.kmeans` (the bank's k-means initialisation) and
:mod:`mper.nn.parallel` (sums and batch norm over the processes of a ``torch.distributed``
group).
"""

from mper.nn.head import OPS_MODULES, PrototypeHead

__all__ = ["OPS_MODULES", "PrototypeHead"]
