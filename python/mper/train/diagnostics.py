"""What self-training does, measured while it trains: pseudo labels, the gate, the teacher.

Between two validations :class:`SelfTrainingMonitor` adds up, from tensors each
iteration computes anyway and without a host synchronisation:

* the confusion of the teacher's pseudo labels with the unlabeled images' own labels
  (when they have them: the public LA and ACDC releases and the synthetic data carry a
  label for every training case; ``eval.pseudo_label_dice = false`` turns this off for
  unlabeled files whose labels are placeholders), giving each class's pseudo-label Dice
  over all the unlabeled images seen in the interval;
* the voxels of the mixed images that came from an unlabeled image, and how many of
  them pass the teacher's confidence gate (``prototypes.confidence_threshold``);
* all voxels of the mixed images, and how many take part in the prototype update.

At every validation :class:`TrainingRecord` keeps one entry per stage and iteration:
the student's validation Dice, the teacher's (``eval.teacher_dice``), the mean loss and
the monitor's interval summary. It is saved with the resume checkpoint, written to
``training.json`` in the run folder, and summarised into the run's ``metrics.json``
(:meth:`TrainingRecord.summary`): the trajectory of each stage, its best validation,
which stage's network ``best.pt`` holds and whether self-training ever beat
pre-training on the validation cases.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mper.data.files import written_whole

#: The record of a run's validations, beside its checkpoints.
TRAINING_RECORD = "training.json"


def pooled_dice(confusion: torch.Tensor) -> list[float]:
    """Dice of every class from a confusion matrix ``confusion[predicted, true]``
    ``(C, C)``; NaN for a class absent from both."""
    hits = confusion.diagonal().double()
    sizes = confusion.sum(dim=0).double() + confusion.sum(dim=1).double()
    return [2 * float(hit) / float(size) if size > 0 else math.nan for hit, size in zip(hits, sizes)]


class SelfTrainingMonitor:
    """Self-training's per-interval counts (see the module docstring)."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu"):
        self.num_classes = num_classes
        self.device = torch.device(device)
        self.reset()

    def reset(self) -> None:
        """Start a new interval."""
        classes = self.num_classes
        self.confusion = torch.zeros(classes, classes, dtype=torch.int64, device=self.device)
        # unlabeled-region voxels, of them confident, all mixed voxels, of them in the bank update
        self.counts = torch.zeros(4, dtype=torch.int64, device=self.device)

    def observe_pseudo_labels(self, pseudo: torch.Tensor, truth: torch.Tensor) -> None:
        """Add pseudo labels ``(B, *S)`` and the images' own labels ``(B, *S)``."""
        classes = self.num_classes
        pairs = pseudo.reshape(-1) * classes + truth.reshape(-1).to(pseudo.device)
        # index_add_, not bincount: bincount reads the pairs' min and max back to the host on CUDA
        self.confusion.view(-1).index_add_(0, pairs, torch.ones_like(pairs))

    def observe_mix(
        self, labeled_region: torch.Tensor, confident: torch.Tensor, gate: torch.Tensor | None = None
    ) -> None:
        """Add one copy-paste direction: ``labeled_region`` (1 where a voxel came from the
        labeled image, broadcasting to ``confident``), ``confident`` (the teacher's
        confidence passes the gate) and, with the prototype head, ``gate`` (the voxel
        takes part in the bank update), all ``(B, *S)``."""
        unlabeled = ~labeled_region.bool().expand_as(confident)
        device = confident.device
        gated = gate.sum() if gate is not None else torch.zeros((), dtype=torch.int64, device=device)
        # torch.full fills on the device; a tensor of a host number would be copied from the host
        voxels = torch.full((), 0 if gate is None else gate.numel(), dtype=torch.int64, device=device)
        counts = torch.stack([unlabeled.sum(), (unlabeled & confident).sum(), voxels, gated])
        self.counts += counts.to(self.counts.device)

    def summary(self) -> dict[str, float]:
        """The interval's scalars, then a new interval: ``pseudo_label_dice/<c>`` per
        foreground class and their ``mean`` (when pseudo labels were observed),
        ``confident_fraction`` and ``bank_update_fraction`` (when mixes were observed)."""
        confusion, counts = self.confusion.cpu(), self.counts.cpu().tolist()
        self.reset()
        scalars: dict[str, float] = {}
        if int(confusion.sum()) > 0:
            foreground = pooled_dice(confusion)[1:]
            for class_index, dice in enumerate(foreground, start=1):
                scalars[f"pseudo_label_dice/{class_index}"] = dice
            defined = [dice for dice in foreground if not math.isnan(dice)]
            scalars["pseudo_label_dice/mean"] = sum(defined) / len(defined) if defined else math.nan
        unlabeled, confident, voxels, gated = counts
        if unlabeled > 0:
            scalars["confident_fraction"] = confident / unlabeled
        if voxels > 0:
            scalars["bank_update_fraction"] = gated / voxels
        return scalars

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The open interval's counts, for exact resume (copies: the monitor adds in place)."""
        return {"confusion": self.confusion.to("cpu", copy=True), "counts": self.counts.to("cpu", copy=True)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.confusion = state["confusion"].to(self.device, copy=True)
        self.counts = state["counts"].to(self.device, copy=True)


def with_class_names(summary: dict[str, Any], class_names: Sequence[str]) -> dict[str, Any]:
    """:meth:`TrainingRecord.summary` with ``pseudo_label_dice/<c>`` keys named by
    ``class_names`` (background first), as ``metrics.json`` shows them."""

    def named(entry: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for key, value in entry.items():
            prefix, _, index = key.rpartition("/")
            if prefix == "pseudo_label_dice" and index.isdigit():
                key = f"{prefix}/{class_names[int(index)]}"
            out[key] = value
        return out

    stages = {
        stage: {"best": named(parts["best"]), "trajectory": [named(entry) for entry in parts["trajectory"]]}
        for stage, parts in summary["stages"].items()
    }
    return {**summary, "stages": stages}


def _finite_or_none(value: Any) -> Any:
    """JSON has no NaN: undefined values are written as ``null``."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


class TrainingRecord:
    """Every validation of a run, by stage (``pretrain``, ``selftrain``, ``baseline``)."""

    def __init__(self) -> None:
        self.stages: dict[str, list[dict[str, float]]] = {}
        self.selected_stage: str | None = None

    def add(self, stage: str, iteration: int, scalars: dict[str, float]) -> None:
        """One validation's scalars (``val_dice`` among them), in the order of iterations. An
        iteration already recorded (a resumed run validating again the iteration whose best
        checkpoint it kept from the session that stopped) keeps the better of the two: the
        best checkpoint holds that one, as a replay scoring lower does not replace it."""
        entries = self.stages.get(stage, [])
        earlier = next((entry for entry in entries if entry["iteration"] == iteration), None)
        if earlier is not None and earlier["val_dice"] > scalars["val_dice"]:
            return
        kept = [entry for entry in entries if entry is not earlier]
        self.stages[stage] = sorted([*kept, {"iteration": iteration, **scalars}], key=lambda entry: entry["iteration"])

    def best(self, stage: str) -> dict[str, float] | None:
        """The entry of ``stage`` with the highest ``val_dice`` (the first of equals)."""
        entries = self.stages.get(stage)
        return max(entries, key=lambda entry: entry["val_dice"]) if entries else None

    def selftrain_beat_pretrain(self) -> bool | None:
        """Whether some self-training validation beat the best pre-training one
        (``None`` before both stages have validated)."""
        pretrain, selftrain = self.best("pretrain"), self.best("selftrain")
        if pretrain is None or selftrain is None:
            return None
        return selftrain["val_dice"] > pretrain["val_dice"]

    def summary(self) -> dict[str, Any]:
        """The record as JSON-ready values: per stage its best entry and trajectory, the
        stage ``best.pt`` was selected from, and ``selftrain_beat_pretrain``."""

        def finite(entry: dict[str, float] | None) -> dict[str, Any] | None:
            return None if entry is None else {key: _finite_or_none(value) for key, value in entry.items()}

        stages = {
            stage: {"best": finite(self.best(stage)), "trajectory": [finite(entry) for entry in entries]}
            for stage, entries in self.stages.items()
        }
        return {
            "selected_stage": self.selected_stage,
            "selftrain_beat_pretrain": self.selftrain_beat_pretrain(),
            "stages": stages,
        }

    def write(self, path: str | Path) -> None:
        """Write :meth:`summary` as JSON, atomically."""
        with written_whole(Path(path)) as aside:
            aside.write_text(json.dumps(self.summary(), indent=2) + "\n")

    def state_dict(self) -> dict[str, Any]:
        return {"stages": self.stages, "selected_stage": self.selected_stage}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stages = {stage: [dict(entry) for entry in entries] for stage, entries in state["stages"].items()}
        self.selected_stage = state["selected_stage"]
