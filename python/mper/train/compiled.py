"""How the training steps execute: ``torch.compile`` (setting ``compile``) and the
networks' memory format (setting ``channels_last``). Neither changes what a step
computes, only how fast: the results agree with the eager, channels-first run up to the
rounding of float sums taken in another order.

With ``compile``, the parts of an iteration that are tensor work alone go through
``torch.compile``, each with ``fullgraph=True`` (a graph break is an error, never a
silent fallback to eager) and static shapes:

* the teacher's step: its forward(s) on the unlabeled images and their softmax;
* the student's step: its forward(s) on the mixed images and the linear classifier's
  losses (in the supervised stages: the mix, the forward and the loss);
* the prototype head's step, once per copy-paste direction: the fused classifier +
  InfoNCE op (a custom op with a fake kernel, so the graph runs through it) and the
  prototype classifier's loss.

The backward of each compiled part is compiled with it. The rest stays eager: the
copy-paste box (drawn on the host), the pseudo labels' largest component, the bank
updates (in place, between the two directions' head steps), the diagnostics, the
optimizer step and the teacher's EMA. Compilation happens in the first iteration of
each stage; ``train.log`` says how long that iteration took.

With ``channels_last`` the student (and so the teacher, its copy) holds its weights in
``torch.channels_last`` (2D) or ``torch.channels_last_3d`` (3D) and the steps move their
images to the device in that format, so the convolutions run channels-last. The
network's feature map ``feat`` is then channels-last too; the fused prototype ops read
features whose spatial dimensions are contiguous, so they take a channels-first copy of
``feat`` (one read and one write of ``feat`` per head call and per bank accumulation).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


def memory_format(network: nn.Module, channels_last: bool) -> torch.memory_format:
    """The memory format of ``network``'s weights and inputs: channels-last of its rank
    (``network.spatial_dims``, 2 or 3) when ``channels_last``, else contiguous."""
    if not channels_last:
        return torch.contiguous_format
    return torch.channels_last if network.spatial_dims == 2 else torch.channels_last_3d


class StepCompiler:
    """Each step function through ``torch.compile`` (once per function), or the
    function itself when compilation is off."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._compiled: dict[Callable[..., Any], Callable[..., Any]] = {}

    def __call__(self, function: F) -> F:
        if not self.enabled:
            return function
        compiled = self._compiled.get(function)
        if compiled is None:
            compiled = self._compiled[function] = torch.compile(function, fullgraph=True, dynamic=False)
        return compiled  # type: ignore[return-value]
