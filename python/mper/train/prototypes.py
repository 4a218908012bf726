"""Which voxels update the prototype bank during self-training: the confidence gate.

The bank itself, its k-means initialisation and its EMA update are
:class:`mper.nn.PrototypeHead`'s (docs/method.md, "Prototype update"): voxels that pass
:func:`confidence_gate` add their features to the prototype they were assigned to.
"""

from __future__ import annotations

import torch

#: Which voxels may update the prototypes (paper Table IV): none, those taken from the
#: labeled image, those taken from the unlabeled image, or both.
UPDATE_SOURCES = ("none", "labeled", "unlabeled", "both")
#: One EMA step per iteration from all gated voxels, or one per region of each direction.
UPDATE_STEPS = ("combined", "region-wise")


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
