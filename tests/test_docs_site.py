"""The documentation site (mkdocs.yml, docs/): it builds strictly, and a broken link, a
broken anchor, a page left out of the navigation or a docstring the API reference cannot
read fails the build, as CI (scripts/check.sh) runs it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytest.importorskip("mkdocs", reason="the `docs` extra builds the site")
pytest.importorskip("mkdocstrings", reason="the `docs` extra builds the site")


@pytest.fixture
def site(tmp_path):
    """A copy of the site's sources: mkdocs.yml, docs/ and the package the API pages read."""
    shutil.copy(REPO / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(REPO / "docs", tmp_path / "docs")
    shutil.copytree(REPO / "python", tmp_path / "python", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    return tmp_path


def build(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(root / "site")],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, NO_MKDOCS_2_WARNING="1"),
    )


def append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


def break_docstring(root: Path) -> None:
    """A parameter the docstring documents but the signature lacks."""
    path = root / "python" / "mper" / "ops" / "classify.py"
    text, count = re.subn(r"(\n        tau: )", r"\n        temperature: not a parameter.\1", path.read_text(), count=1)
    assert count == 1
    path.write_text(text)


FAULTS = {
    "link to a missing page": lambda root: append(root / "docs" / "data.md", "\n[gone](no-such-page.md)\n"),
    "missing anchor": lambda root: append(root / "docs" / "data.md", "\n[gone](training.md#no-such-section)\n"),
    "page outside the navigation": lambda root: (root / "docs" / "orphan.md").write_text("# Orphan\n"),
    "docstring of a parameter the op does not take": break_docstring,
}


def test_the_site_builds_strictly_with_the_api_reference(site):
    result = build(site)
    assert result.returncode == 0, result.stderr[-3000:]
    api = (site / "site" / "api" / "ops" / "index.html").read_text()
    for name in (
        "proto_classify",
        "proto_infonce",
        "proto_classify_infonce",
        "proto_accumulate",
        "proto_ema_update_",
        "largest_component",
    ):
        assert f'id="mper.ops.{name}"' in api or f'id="mper.ops.largest_component.{name}"' in api, name
    assert 'id="mper.nn.PrototypeHead"' in (site / "site" / "api" / "nn" / "index.html").read_text()


@pytest.mark.parametrize("fault", FAULTS)
def test_a_broken_site_fails_the_build(site, fault):
    FAULTS[fault](site)
    result = build(site)
    assert result.returncode != 0, f"{fault}: the strict build passed\n{result.stderr[-2000:]}"
    assert "WARNING" in result.stderr


def test_ci_installs_the_docs_extra_and_builds_the_site_strictly():
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r'MPER_EXTRAS="[^"]*\bdocs\b', ci)
    assert "scripts/check.sh" in ci
    check = (REPO / "scripts" / "check.sh").read_text()
    assert re.search(
        r"^[^#\n]*mkdocs build --strict(?![^\n]*--quiet)", check, re.M
    )  # --quiet hides the warnings and passes
