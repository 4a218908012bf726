"""CONTRIBUTING.md and docs/ops.md describe what is there: the files they name exist, and
every kernel and op has its line."""

from __future__ import annotations

import re
from pathlib import Path

import mper.ops

REPO = Path(__file__).resolve().parent.parent
CONTRIBUTING = (REPO / "CONTRIBUTING.md").read_text()


def test_every_file_contributing_names_exists():
    """A path in backquotes (a template such as ``<op>`` or a glob such as ``test_ops*.py``
    aside) is a file or folder of the repository or of ``python/mper``."""
    named = {path.rstrip("/") for path in re.findall(r"`([\w.-]*[\w-]/[\w./-]*)`", CONTRIBUTING)}
    roots = (REPO, REPO / "python", REPO / "python" / "mper")
    missing = [path for path in sorted(named) if not any((root / path).exists() for root in roots)]
    assert missing == []


def test_contributing_names_every_kernel():
    kernels = re.search(r"set\(MPER_OPS ([\w ]+)\)", (REPO / "CMakeLists.txt").read_text())
    assert kernels is not None
    assert [kernel for kernel in kernels.group(1).split() if f"`{kernel}`" not in CONTRIBUTING] == []


def test_the_op_list_of_docs_ops_md_has_every_op():
    listed = re.findall(r"^- `(\w+)\(", (REPO / "docs" / "ops.md").read_text(), re.MULTILINE)
    assert sorted(set(mper.ops.__all__) - {"cuda_available"} - set(listed)) == []
