"""scripts/gpu_check.sh: the dry run passes on the CPU (so the GPU check cannot rot), the
summary says what each section did, the budget skips what it cannot fit, and the
preflight names what would stop mper on a GPU machine."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "gpu_check.sh"
_spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
assert _spec is not None and _spec.loader is not None
gpu_check = importlib.util.module_from_spec(_spec)
sys.modules["gpu_check"] = gpu_check
_spec.loader.exec_module(gpu_check)


def run_check(out: Path, *arguments: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, MPER_PYTHON=sys.executable, OMP_NUM_THREADS="1")
    return subprocess.run(
        [str(SCRIPT), "--dry-run", "--out", str(out), *arguments], env=env, capture_output=True, text=True, timeout=900
    )


def test_the_dry_run_passes_every_section_on_the_cpu(tmp_path):
    done = run_check(tmp_path / "check")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((tmp_path / "check" / "summary.json").read_text())
    assert summary["verdict"] == "pass" and summary["dry_run"]
    assert [section["name"] for section in summary["sections"]] == [name for name, *_ in gpu_check.SECTIONS]
    sections = {section["name"]: section for section in summary["sections"]}
    assert all(section["status"] == "pass" and section["figure"] for section in sections.values())
    # the resumed, torchrun and grouped runs ended in the uninterrupted run's state, bit for bit
    for name in ("resume", "torchrun", "process-group"):
        assert all(distance == 0.0 < norm for distance, _, norm in sections[name]["details"]["distances"].values())
    assert any("MPER_SYNC_DEBUG=error" in command for command in sections["sync-free"]["commands"])
    assert any(
        "torch.distributed.run --standalone --nproc-per-node 1" in command
        for command in sections["torchrun"]["commands"]
    )
    table = (tmp_path / "check" / "summary.md").read_text()
    assert "# dry run on the CPU: pass" in table
    assert table.count("| pass |") == len(gpu_check.SECTIONS)
    assert (tmp_path / "check" / "largest_component.json").is_file()
    assert (tmp_path / "check" / "logs" / "sync-free-la.log").is_file()


def test_sections_that_do_not_fit_the_budget_are_skipped_with_a_note(tmp_path):
    done = run_check(tmp_path / "check", "--budget", "6")
    assert done.returncode == 3, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((tmp_path / "check" / "summary.json").read_text())
    assert summary["verdict"] == "incomplete"
    assert {section["status"] for section in summary["sections"]} == {"skipped"}
    assert "s of the 6 s budget left" in summary["sections"][0]["notes"][0]


@pytest.mark.parametrize(
    "facts, problem",
    [
        ({"gpu": None, "nvcc": "13.0"}, "torch sees no CUDA GPU"),
        ({"gpu": "H100", "nvcc": None}, "nvcc (the CUDA toolkit) is not on PATH"),
        (
            {"gpu": "H100", "nvcc": "13.0", "driver_cuda": "12.8", "torch_cuda": "12.8"},
            "the driver supports CUDA 12.8, an older major version than nvcc 13.0",
        ),
        ({"gpu": "H100", "nvcc": "12.8", "driver_cuda": "12.8", "torch_cuda": "13.0"}, "older than torch's 13.0"),
    ],
)
def test_the_preflight_names_what_stops_mper_on_a_gpu(facts, problem):
    problems = gpu_check.preflight_problems(facts)
    assert len(problems) == 1 and problem in problems[0]


def test_a_matching_driver_passes_the_preflight():
    facts = {"gpu": "NVIDIA H100 80GB HBM3", "nvcc": "13.0", "driver_cuda": "13.0", "torch_cuda": "13.0"}
    assert gpu_check.preflight_problems(facts) == []
    assert gpu_check.preflight_problems({**facts, "driver_cuda": "13.1"}) == []
    assert gpu_check.preflight_problems({**facts, "nvcc": "13.2"}) == []  # as the kernels' own check rules


def _requirement_names(requirements: list[str]) -> set[str]:
    """The normalised names of the requirements whose markers hold for this Python."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    parsed = [Requirement(text) for text in requirements]
    return {canonicalize_name(r.name) for r in parsed if r.marker is None or r.marker.evaluate()}


def test_the_check_installs_every_requirement_of_mper_its_build_and_the_tests():
    """A requirement the GPU machine lacks and the build section does not install
    (``pip install --no-deps``) fails every section after the build, e.g. tomli-w, which
    every training imports."""
    from packaging.utils import canonicalize_name

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    needed = _requirement_names(project["project"]["dependencies"] + project["build-system"]["requires"])
    needed -= {"torch"}  # the environment's own, never installed by the check
    installed = {canonicalize_name(name) for name in gpu_check.PACKAGES.values()}
    assert needed <= installed, f"scripts/gpu_check.py's PACKAGES lacks {sorted(needed - installed)}"
    assert {"pytest", "hypothesis"} <= installed


def test_the_preflight_notes_a_torch_older_than_mper_requires():
    pyproject = (REPO / "pyproject.toml").read_text()
    assert "older than mper's requirement torch>=" in gpu_check.torch_below_requirement("2.11.0+cu130", pyproject)
    assert gpu_check.torch_below_requirement("99.0.0", pyproject) == ""


def test_the_build_names_an_nvcc_off_the_path_to_cmake(tmp_path, monkeypatch):
    """The preflight also finds nvcc in /usr/local/cuda/bin; CMake looks on the PATH only."""
    nvcc = tmp_path / "nvcc"
    nvcc.write_text("#!/bin/sh\n")
    nvcc.chmod(0o755)
    monkeypatch.setattr(gpu_check, "find_nvcc", lambda: str(nvcc))
    assert gpu_check.compiler_env({"PATH": "/nonexistent"}) == {"CUDACXX": str(nvcc)}
    assert gpu_check.compiler_env({"PATH": str(tmp_path)}) == {}
    assert gpu_check.compiler_env({"PATH": "/nonexistent", "CUDACXX": "/opt/nvcc"}) == {}


def test_the_training_step_figure_gives_speed_ups_on_eager_fp32():
    def row(dataset, ms, ratio):
        return {"dataset": dataset, "iteration_ms": ms, "iteration_over_network": ratio}

    figure = gpu_check.train_step_figure(
        {"fp32": [row("acdc", 100.0, 1.5)], "bf16": [row("acdc", 60.0, 1.4)], "bf16+compile": [row("acdc", 40.0, 1.2)]}
    )
    assert figure == (
        "ACDC: fp32 100.0 ms (x1.00), iteration/network 1.50; bf16 60.0 ms (x1.67), "
        "iteration/network 1.40; bf16+compile 40.0 ms (x2.50), iteration/network 1.20"
    )


def test_cuda_test_counts_come_from_the_junit_report(tmp_path):
    report = tmp_path / "report.xml"
    report.write_text(
        '<testsuites><testsuite name="pytest" errors="1" failures="2" skipped="3" tests="10"></testsuite></testsuites>'
    )
    assert gpu_check.junit_counts(report) == {"tests": 10, "failures": 2, "errors": 1, "skipped": 3, "passed": 4}


def test_an_ops_benchmark_stopped_by_the_budget_keeps_what_it_measured(tmp_path, monkeypatch):
    import argparse

    check = gpu_check.Check(
        argparse.Namespace(dry_run=False, budget=600.0, out=tmp_path, work=tmp_path, keep_work=True)
    )
    check.section = section = gpu_check.Section("ops", "fused ops")
    measured = {"workload": "acdc", "dtype": "float32", "op": "classify+infonce", "passes": "fwd+bwd", "vs_eager": 3.25}

    def stopped(name, command, **_):
        # the benchmark saved its first workload, then the budget ran out
        Path(command[command.index("--out") + 1]).write_text(json.dumps({"speedups": [measured]}))
        raise gpu_check.OutOfTime("ops stopped at the end of the budget")

    monkeypatch.setattr(check, "run", stopped)
    with pytest.raises(gpu_check.OutOfTime):
        check.ops(section)
    assert section.details["speedups"] == [measured]
    assert section.figure == "acdc float32 classify+infonce fwd+bwd: x3.2 eager"


def test_an_ops_benchmark_stopped_before_it_saved_reports_no_speed_up_of_an_earlier_check(tmp_path, monkeypatch):
    """A check written into the --out folder of an earlier one: that check's ops.json is
    not this one's measurement."""
    import argparse

    check = gpu_check.Check(
        argparse.Namespace(dry_run=False, budget=600.0, out=tmp_path, work=tmp_path, keep_work=True)
    )
    check.section = section = gpu_check.Section("ops", "fused ops")
    earlier = {"workload": "acdc", "dtype": "float32", "op": "classify+infonce", "passes": "fwd+bwd", "vs_eager": 3.25}
    (tmp_path / "ops.json").write_text(json.dumps({"speedups": [earlier]}))

    def stopped(name, command, **_):
        raise gpu_check.OutOfTime("ops stopped at the end of the budget")  # before the first workload was saved

    monkeypatch.setattr(check, "run", stopped)
    with pytest.raises(gpu_check.OutOfTime):
        check.ops(section)
    assert section.details["speedups"] == [] and section.figure == ""


def test_a_state_passes_within_the_spread_or_the_floor_and_fails_beyond_both():
    norm = 100.0
    within_floor = {"student": [0.05, 0.0, norm]}  # GPU runs that happened to agree: the floor, 0.1
    assert gpu_check.state_beyond_allowance(within_floor) == []
    within_spread = {"bank": [0.7, 0.2, norm]}  # 4 x 0.2 = 0.8 allowed
    assert gpu_check.state_beyond_allowance(within_spread) == []
    lost_state = {"student": [0.05, 0.0, norm], "teacher": [1.0, 0.01, norm]}  # a percent of the norm
    assert gpu_check.state_beyond_allowance(lost_state) == ["teacher 1 > 0.1"]


def test_the_cuda_tests_leave_out_the_readme_benchmarks_that_later_sections_run():
    for test in gpu_check.CUDA_TESTS_LEFT_OUT:
        path, _, name = test.partition("::")
        assert f"def {name}(" in (REPO / path).read_text(), f"{test} names no test"
    assert 0 < gpu_check.CUDA_TESTS_SHARE < 1


def test_collecting_the_tests_needs_only_what_the_check_installs():
    """`pytest -m cuda` collects every test module: one that imports at its top a package the
    check does not install (an extra's, e.g. pynrrd) stops the whole CUDA test run on a GPU
    machine without it. Such a test imports it with ``pytest.importorskip``."""
    import ast

    local = {path.stem for path in (REPO / "tests").glob("*.py")}
    # packaging: pytest's own requirement
    allowed = set(sys.stdlib_module_names) | set(gpu_check.PACKAGES) | local | {"mper", "torch", "packaging"}
    found = []
    for path in sorted((REPO / "tests").rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            found += [f"{path.name}: {name}" for name in names if name.split(".")[0] not in allowed]
    assert not found, f"imported at the top of a test module, and not installed by the GPU check: {found}"


def test_the_build_installs_the_missing_packages_and_what_the_wheels_folder_holds_for_them(tmp_path):
    for name in (
        "medpy-0.5.2-py3-none-any.whl",
        "tomli_w-1.2.0-py3-none-any.whl",
        "Typing_Extensions-4.6.0-py3-none-any.whl",
        "numpy-2.0.0-cp312-cp312-manylinux_2_28_x86_64.whl",
        "pynrrd-1.0.0.tar.gz",
        "notes.txt",
    ):
        (tmp_path / name).write_text("")
    installed = ["numpy", "scipy"]
    packages = gpu_check.packages_to_install(["medpy", "tomli_w"], tmp_path, installed)
    assert packages[:2] == ["medpy", "tomli-w"] and sorted(packages[2:]) == ["pynrrd", "typing-extensions"]
    assert gpu_check.packages_to_install(["medpy"], None, installed) == ["medpy"]
    assert gpu_check.packages_to_install([], tmp_path, installed) == []  # nothing missing: nothing installed


def test_the_wheels_folder_is_mper_wheels_else_the_checkouts_wheels_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "REPO", tmp_path)
    monkeypatch.delenv("MPER_WHEELS", raising=False)
    assert gpu_check.wheels_folder() is None
    (tmp_path / "wheels").mkdir()
    assert gpu_check.wheels_folder() is None  # empty: the index
    (tmp_path / "wheels" / "tomli_w-1.2.0-py3-none-any.whl").write_text("")
    assert gpu_check.wheels_folder() == tmp_path / "wheels"
    monkeypatch.setenv("MPER_WHEELS", str(tmp_path / "elsewhere"))
    assert gpu_check.wheels_folder() == tmp_path / "elsewhere"


def _build_section(tmp_path, monkeypatch, imports_broken, install_fails=False):
    """The build section of a check on a GPU (not a dry run), its commands faked: the
    environment lacks medpy, and ``imports_broken`` is what the imports probe finds."""
    import argparse

    wheels = tmp_path / "wheels"
    wheels.mkdir(exist_ok=True)
    (wheels / "medpy-0.5.2-py3-none-any.whl").write_text("")
    monkeypatch.setenv("MPER_WHEELS", str(wheels))
    args = argparse.Namespace(
        dry_run=False, budget=600.0, out=tmp_path / "out", work=tmp_path / "work", keep_work=False
    )
    checker = gpu_check.Check(args)
    section = gpu_check.Section("build", "build")
    checker.section = section
    ran = []

    def run(name, command, env=None, check=True, **_):
        ran.append(name)
        if name == "install-packages" and install_fails:
            raise gpu_check.Failed("install-packages exited with 1: ERROR: No matching distribution found for medpy")
        return ""

    facts = {"environment": {"missing_packages": ["medpy"], "distributions": ["numpy"]}, "imports": imports_broken}
    monkeypatch.setattr(checker, "run", run)
    monkeypatch.setattr(checker, "probe", lambda name, *_: facts[name])
    with pytest.raises(gpu_check.Failed) as failed:
        checker.build(section)
    return str(failed.value), ran, section


def test_a_package_that_cannot_be_imported_after_the_install_fails_the_build_before_compiling(tmp_path, monkeypatch):
    broken = {"medpy.metric.binary": "ModuleNotFoundError: No module named 'scipy'"}
    message, ran, section = _build_section(tmp_path, monkeypatch, broken)
    assert message.startswith("cannot import medpy.metric.binary (ModuleNotFoundError: No module named 'scipy')")
    assert "after installing from" in message and "build" not in ran  # failed before minutes of compiling
    assert section.notes == ["installed: medpy"]


def test_a_failed_install_from_the_wheels_folder_says_how_to_make_it(tmp_path, monkeypatch):
    message, ran, _ = _build_section(tmp_path, monkeypatch, {}, install_fails=True)
    assert "No matching distribution found for medpy" in message and "scripts/gpu_wheels.sh" in message
    assert ran == ["install-packages"]
