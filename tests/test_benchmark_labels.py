"""Every measured figure says what it measured: the results under ``benchmarks/results/``,
their writers, the README and the docs pages name the commit, mper's version and the kernel version, and
the kernel version moves with the kernels."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import mper
from mper.versions import KERNEL_VERSION, version_line

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
#: sha256 of ``csrc/`` (every file's path and bytes, in path order) at each kernel version.
KERNEL_SOURCES = {
    1: "5a0e6a185fe90f946fb4d162edd4992106cc0f8e7b69457b5e52001cc8f822f4",
    2: "804db6d9307e8717f7e2a57bf6b660120b07cbe28aa0250fd09c99c0f7f16e1a",
    3: "b9e3f7b74140f9309cf9a61d2f11433fc8ba337d0b71cc118b1cecc2ed76914c",
    4: "fcebec8b7e42c179e636296131f8d3f2ef57f80909f75d8f1d410273d04e6b45",
    5: "f47e80c0f6268929d4b7a97db87135b138515174f2167c0b053bb983de2606c1",
}
COMMIT = r"[0-9a-f]{7,40}(\+dirty)?"


def kernel_sources_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted(path for path in (REPO / "csrc").rglob("*") if path.is_file()):
        digest.update(path.relative_to(REPO).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


@pytest.fixture(scope="module")
def provenance():
    spec = importlib.util.spec_from_file_location("provenance", REPO / "benchmarks" / "provenance.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def in_git_checkout() -> bool:
    return shutil.which("git") is not None and (REPO / ".git").exists()


def test_the_kernel_version_is_raised_with_every_change_to_the_kernels():
    digest, following = kernel_sources_hash(), max(KERNEL_SOURCES) + 1
    assert KERNEL_SOURCES.get(KERNEL_VERSION) == digest, (
        f"csrc/ is not the source of kernel version {KERNEL_VERSION}: after changing the kernels, raise "
        f'mper.versions.KERNEL_VERSION to {following} and add {following}: "{digest}" to KERNEL_SOURCES in '
        "tests/test_benchmark_labels.py (results measured before then keep their own version)"
    )
    assert len(set(KERNEL_SOURCES.values())) == len(KERNEL_SOURCES) and KERNEL_VERSION == max(KERNEL_SOURCES)
    assert f"kernel version {KERNEL_VERSION}" in version_line()


@pytest.mark.parametrize("path", sorted(RESULTS.glob("*.json")), ids=lambda path: path.name)
def test_every_result_names_its_commit_mper_version_and_kernel_version(provenance, path):
    record = json.loads(path.read_text())["provenance"]
    assert re.fullmatch(COMMIT, record["commit"])
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", record["mper"])
    version = record["kernel_version"]
    assert (isinstance(version, int) and 1 <= version <= KERNEL_VERSION) or (version is None and record["note"])
    table = path.with_suffix(".md")
    if table.exists():
        assert provenance.provenance_line(record) in table.read_text()
    if in_git_checkout():
        commit = record["commit"].removesuffix("+dirty")
        found = subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=REPO, capture_output=True)
        assert found.returncode == 0, f"{path.name} names commit {commit}, which this repository does not have"


def test_a_writer_records_the_checkout_commit_and_the_versions(provenance, monkeypatch):
    record = provenance.provenance()
    assert record["mper"] == mper.__version__ and record["kernel_version"] == KERNEL_VERSION
    assert re.fullmatch(COMMIT, record["commit"])
    if in_git_checkout():
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        assert record["commit"].removesuffix("+dirty") == head.stdout.strip()
    line = provenance.provenance_line(record)
    assert line.startswith(
        f"Measured at commit {record['commit']} (mper {mper.__version__}, kernel version {KERNEL_VERSION})."
    )
    monkeypatch.setattr(mper, "__file__", str(Path("/") / "elsewhere" / "mper" / "__init__.py"))
    assert "installed package" in provenance.provenance()["note"]


@pytest.mark.parametrize("script", sorted((REPO / "benchmarks").glob("*.py")), ids=lambda path: path.name)
def test_every_results_writer_records_its_provenance(script):
    text = script.read_text()
    if "json.dumps" in text:
        assert "provenance()" in text, f"{script.name} writes results without their provenance"


#: The README and the documentation pages that carry its measured figures.
MEASURED_PAGES = ("README.md", "docs/training.md", "docs/benchmarks.md")


def test_every_readme_or_docs_section_with_measured_figures_names_commit_and_kernel_version():
    header = r"^\|.*(\bms\b|Dice|wall time|NVIDIA H100).*\|\n\|(---\|)+$"  # a table's first row
    measured = [
        (page, section)
        for page in MEASURED_PAGES
        for section in re.split(r"\n(?=#+ )", (REPO / page).read_text())
        if re.search(header, section, re.M)
    ]
    assert len(measured) >= 4
    for page, section in measured:
        title = section.splitlines()[0]
        assert re.search(r"commits? [0-9a-f]{7}", section), f"{page} section {title!r} names no commit"
        assert "kernel version" in section, f"{page} section {title!r} names no kernel version"
