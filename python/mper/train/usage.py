"""Prototype usage: how many bank updates each prototype wins, per class, over time.

The prototype head's gated EMA update (:meth:`mper.nn.PrototypeHead.accumulate`, then
``apply_update``) counts, at every iteration, the voxels each prototype ``p_c^k``
receives (``proto_accumulate``'s counts). A prototype
that stops receiving voxels no longer follows its class: the class has collapsed onto
fewer sub-centres than ``K``. :class:`PrototypeUsage` adds the counts up on the device
(no host synchronisation per iteration) and, at the end of each window of iterations,
reports each prototype's share of its class's updates. A prototype whose share over a
full window is below :data:`COLLAPSE_SHARE` is logged as a warning. Classes that
received no update in a window (e.g. the background when
``prototypes.update_background`` is off) have no share.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from .distributed import sum_over_processes_
from .runtime import planned_host_read

log = logging.getLogger(__name__)

#: A prototype winning less than this share of its class's updates over a window has collapsed.
COLLAPSE_SHARE = 0.01
#: Iterations per window (or the whole self-training when it is shorter).
USAGE_WINDOW = 1000
#: Where a run folder keeps the summary (and ``metrics.json`` a copy, as ``prototype_usage``).
USAGE_FILE = "prototype_usage.json"


class PrototypeUsage:
    """Per-prototype update counts of a ``(C*K)``-row bank, in windows of ``window`` iterations."""

    def __init__(self, num_classes: int, per_class: int, window: int, device: torch.device | str = "cpu"):
        if window < 1:
            raise ValueError(f"window must be a positive number of iterations, got {window}")
        self.num_classes, self.per_class, self.window = num_classes, per_class, window
        # float64: counts of millions of voxels per iteration stay exact over long windows
        self.current = torch.zeros(num_classes * per_class, dtype=torch.float64, device=device)
        self.total = torch.zeros(num_classes * per_class, dtype=torch.float64)
        self.lowest_share = torch.full((num_classes, per_class), float("nan"), dtype=torch.float64)
        self.collapses: list[dict[str, Any]] = []
        self.windows = 0

    def add(self, counts: torch.Tensor, iteration: int, last_iteration: int) -> dict[str, float]:
        """Add one iteration's ``counts`` ``(C*K,)``; ``iteration`` counts from 1.

        At the end of a window (or at ``last_iteration``, which closes a partial one)
        returns each prototype's share of its class's updates over the window,
        ``{"prototype_usage/class<c>/k<k>": share}``; otherwise ``{}``.
        """
        self.current += counts.detach().to(self.current.dtype)
        if iteration % self.window and iteration != last_iteration:
            return {}
        with planned_host_read():  # once per window
            return self._close_window(iteration, full=iteration % self.window == 0)

    def _close_window(self, iteration: int, full: bool) -> dict[str, float]:
        sum_over_processes_(self.current)  # every process closes its window at the same iteration
        counts = self.current.to("cpu", copy=True).view(self.num_classes, self.per_class)
        self.current.zero_()
        self.total += counts.reshape(-1)
        self.windows += 1
        shares = _shares(counts)
        self.lowest_share = torch.fmin(self.lowest_share, shares)
        if full:
            self._warn_collapsed(shares, iteration)
        return {
            f"prototype_usage/class{c}/k{k}": float(shares[c, k])
            for c in range(self.num_classes)
            for k in range(self.per_class)
            if not torch.isnan(shares[c, k])
        }

    def _warn_collapsed(self, shares: torch.Tensor, iteration: int) -> None:
        for c, k in (shares < COLLAPSE_SHARE).nonzero().tolist():
            share = float(shares[c, k])
            self.collapses.append({"class": c, "prototype": k, "iteration": iteration, "share": share})
            log.warning(
                "prototype %d of class %d won %.2f%% of its class's updates in self-training iterations "
                "%d-%d (below %.0f%%): the class has collapsed onto fewer prototypes",
                k,
                c,
                100 * share,
                iteration - self.window + 1,
                iteration,
                100 * COLLAPSE_SHARE,
            )

    def summary(self) -> dict[str, Any]:
        """Counts and shares over all closed windows, the lowest share per window, and
        the collapses seen (JSON-ready; a class without updates has ``None`` shares)."""
        totals = self.total.view(self.num_classes, self.per_class)
        shares = _shares(totals)
        classes = {
            str(c): {
                "updates": [int(count) for count in totals[c].tolist()],
                "share": _optional(shares[c]),
                "lowest_window_share": _optional(self.lowest_share[c]),
            }
            for c in range(self.num_classes)
        }
        return {
            "window": self.window,
            "windows": self.windows,
            "collapse_share": COLLAPSE_SHARE,
            "classes": classes,
            "collapses": list(self.collapses),
        }

    def write(self, path: str | Path) -> Path:
        """Write :meth:`summary` as JSON."""
        path = Path(path)
        path.write_text(json.dumps(self.summary(), indent=2) + "\n")
        return path

    def state_dict(self) -> dict[str, Any]:
        """Everything :meth:`load_state_dict` needs to go on counting after a resume."""
        return {
            "window": self.window,
            "current": self.current.cpu().clone(),
            "total": self.total.clone(),
            "lowest_share": self.lowest_share.clone(),
            "collapses": list(self.collapses),
            "windows": self.windows,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state written by :meth:`state_dict`."""
        self.window, self.windows = state["window"], state["windows"]
        self.current.copy_(state["current"])
        self.total.copy_(state["total"])
        self.lowest_share.copy_(state["lowest_share"])
        self.collapses = list(state["collapses"])


def _shares(counts: torch.Tensor) -> torch.Tensor:
    """``counts (C, K)`` as shares of each class's total; NaN for a class without updates."""
    class_totals = counts.sum(dim=1, keepdim=True)
    return torch.where(class_totals > 0, counts / class_totals.clamp(min=1), torch.nan)


def _optional(values: torch.Tensor) -> list[float] | None:
    """A row of shares as a list, or ``None`` when the class had no update."""
    return None if bool(torch.isnan(values).all()) else [round(float(value), 6) for value in values]
