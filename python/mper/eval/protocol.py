"""The evaluation protocol's two choices: test-time post-processing and empty predictions.

* Post-processing (``eval.postprocess``): ``"largest-component"`` keeps, for every
  foreground class, only its largest connected component of the predicted label map
  (full connectivity), as the published LA evaluation does; ``"none"`` scores the
  prediction as it is. Checkpoint selection during training never post-processes. The
  components come from the ``largest_component`` op of the run's ``ops`` setting, as the
  pseudo labels do in training: the fused kernel of :mod:`mper.ops`, or
  :mod:`mper.reference` where the run chose the eager ops; both give the same labels.
* A class predicted nowhere (``eval.empty_prediction``): ``"zero"`` scores it Dice =
  Jaccard = 95HD = ASD = 0, as the published evaluation scripts of LA and ACDC do (a
  missed structure then lowers the mean Dice but also the mean distances);
  ``"undefined"`` keeps :func:`mper.eval.metrics.binary_metrics`' answer: Dice 0 and
  undefined distances that the report counts and leaves out of the means. A class that
  the ground truth lacks too is no missed structure but a right answer: under either rule
  it keeps ``binary_metrics``' perfect score (Dice 1, distances 0). The published scripts
  would score it 0, but the LA and ACDC test volumes hold every class, so that their
  scores are the same.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from mper.datasets import get_dataset
from mper.errors import ConfigError
from mper.train.runtime import load_ops

from .inference import predict_volume
from .metrics import Spacing, case_metrics

#: Test-time post-processing of predicted label maps (``eval.postprocess``).
POSTPROCESSING = ("none", "largest-component")
#: How a class predicted nowhere is scored (``eval.empty_prediction``).
EMPTY_PREDICTION_RULES = ("zero", "undefined")
#: The metrics of a class predicted nowhere under the ``"zero"`` rule.
ZERO_METRICS = {"dice": 0.0, "jaccard": 0.0, "hd95": 0.0, "asd": 0.0}


def check_protocol(postprocess: str = "none", empty_prediction: str = "zero") -> None:
    """Raise :class:`~mper.errors.ConfigError` (a ``ValueError``) unless ``postprocess`` is one
    of :data:`POSTPROCESSING` and ``empty_prediction`` one of :data:`EMPTY_PREDICTION_RULES`:
    the one check of these settings, run by :func:`mper.pipeline.train` before training
    and by every function here that applies them."""
    for name, value, choices in (
        ("eval.postprocess", postprocess, POSTPROCESSING),
        ("eval.empty_prediction", empty_prediction, EMPTY_PREDICTION_RULES),
    ):
        if value not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def postprocess_labels(labels: np.ndarray, method: str, num_classes: int, ops: str = "mper") -> np.ndarray:
    """``labels`` after the test-time post-processing ``method`` (one of
    :data:`POSTPROCESSING`), with the ops module the setting ``ops`` names
    (:func:`~mper.train.runtime.load_ops`)."""
    check_protocol(postprocess=method)
    if method == "none":
        return labels
    image = torch.from_numpy(np.ascontiguousarray(labels))[None]
    return load_ops(ops).largest_component(image, num_classes, check_labels=False)[0].numpy()


def segment_volume(
    net: nn.Module,
    image: np.ndarray,
    dataset: str,
    num_classes: int | None = None,
    postprocess: str = "none",
    ops: str = "mper",
    **options: Any,
) -> np.ndarray:
    """The label map a user gets for ``image``: :func:`~mper.eval.inference.predict_volume`
    (``options`` go there), then :func:`postprocess_labels`. ``mper-eval`` scores it and
    ``mper-predict`` writes it, so both apply ``eval.postprocess`` alike."""
    num_classes = num_classes or get_dataset(dataset).num_classes
    labels = predict_volume(net, image, dataset, num_classes, **options)
    return postprocess_labels(labels, postprocess, num_classes, ops)


def score_case(
    pred_labels: np.ndarray,
    gt_labels: np.ndarray,
    num_classes: int,
    empty_prediction: str = "undefined",
    spacing: Spacing = None,
) -> dict[int, dict[str, float]]:
    """:func:`~mper.eval.metrics.case_metrics` of one case (distances in the units of
    ``spacing``, voxels without it), with classes predicted nowhere that the ground truth
    holds scored by the rule ``empty_prediction`` (one of :data:`EMPTY_PREDICTION_RULES`);
    a class absent from both is a right answer, scored as one under either rule."""
    check_protocol(empty_prediction=empty_prediction)
    scores = case_metrics(pred_labels, gt_labels, num_classes, spacing)
    if empty_prediction == "zero":
        for label in scores:
            if not np.any(pred_labels == label) and np.any(gt_labels == label):
                scores[label] = dict(ZERO_METRICS)
    return scores


def ground_truth_classes(gt_labels: np.ndarray) -> set[int]:
    """The classes a ground-truth label map holds (background included), for
    :func:`mper.eval.report.summarize`'s classes absent from every ground truth."""
    return {int(value) for value in np.unique(gt_labels)}
