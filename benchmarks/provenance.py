"""What a benchmark result measured: the commit, mper's version and the kernels' version.

Every results writer in ``benchmarks/`` stores :func:`provenance` in its JSON (key
``provenance``) and :func:`provenance_line` at the top of its Markdown, so that a figure
can be traced to the code it measured and recognised as stale once the kernels change
(:data:`mper.versions.KERNEL_VERSION`).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import mper
from mper.versions import KERNEL_VERSION

ROOT = Path(__file__).resolve().parent.parent


def measured_commit() -> str:
    """This checkout's commit, ``+dirty`` when the worktree had changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def provenance() -> dict[str, Any]:
    """``commit``, ``mper`` (its version) and ``kernel_version`` of this run; a ``note``
    when mper was not imported from this checkout (an installed package may have been
    built from another commit)."""
    record: dict[str, Any] = {"commit": measured_commit(), "mper": mper.__version__, "kernel_version": KERNEL_VERSION}
    if not Path(mper.__file__).resolve().is_relative_to(ROOT / "python"):
        record["note"] = "mper was imported from an installed package, which may have been built from another commit."
    return record


def provenance_line(record: dict[str, Any]) -> str:
    """One sentence for a results table: the commit, versions and the record's note."""
    version = record["kernel_version"]
    kernels = f"kernel version {version}" if version is not None else "kernels older than kernel version 1"
    line = f"Measured at commit {record['commit']} (mper {record['mper']}, {kernels})."
    return f"{line} {record['note']}" if record.get("note") else line
