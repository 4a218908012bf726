"""Turns a machine with an NVIDIA GPU into a verdict on mper, in one command and a time
budget (``scripts/gpu_check.sh``; the summary's format: docs/gpu-check.md).

Sections, in order; each runs its commands in subprocesses and is ``pass``, ``fail``,
``timeout`` (stopped at the budget) or ``skipped`` (too little of the budget left):

* ``preflight``: GPU, driver, the driver's CUDA version >= nvcc's and torch's, Python
  packages;
* ``build``: the missing Python packages (from ``MPER_WHEELS``, a folder of wheels, when
  set, else ``wheels/`` where it holds wheels: scripts/gpu_wheels.sh), each importable, and
  mper with its CUDA kernels (``MPER_WITH_CUDA=ON``), unless the installed build is of
  these sources;
* ``cuda-tests``: ``pytest -m cuda``;
* ``sync-free``: short ACDC (bf16) and LA (fp32) trainings with ``MPER_SYNC_DEBUG=error``;
* ``resume``: ``mper-train`` in bf16, interrupted and resumed, against the same run
  uninterrupted, twice (the run-to-run spread of the GPU's kernels sets the allowance);
* ``torchrun``: the same run under ``torchrun --nproc-per-node 1``, and its resume;
* ``process-group``: the same run in a NCCL group of one process
  (``distributed.force_group``): DistributedDataParallel and the bank's all-reduce;
* ``largest-component``: adversarial label maps on the GPU, the CPU kernel and scipy;
* ``train-step``: one self-training iteration in fp32, bf16 and bf16 + compile;
* ``ops``: the fused ops against eager PyTorch and torch.compile.

``--dry-run`` runs every section on the CPU at tiny sizes; a section that needs a GPU
checks that its command lines parse and its inputs exist. It is part of the test suite.

This file runs with the standard library alone; ``probe`` subcommands (run as
subprocesses) import torch and mper.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
#: Seconds kept back from the budget to write the summary.
RESERVE_S = 5.0
#: A variant's distance from the reference run, in units of the run-to-run spread.
SPREAD_FACTOR = 4.0
#: The least distance allowed, as a fraction of the reference run's norm in each group: one
#: sample of the spread can be ten times smaller than the next (whether a near-tie flips),
#: while a resume that loses state (the optimiser's moments, the data order, the teacher)
#: moves a 6-iteration run by a percent of its norm or more.
STATE_FLOOR = 1e-3
#: The share of the budget the cuda tests may take, so that the sections after them run.
CUDA_TESTS_SHARE = 0.4
#: Tests the cuda-tests section leaves out: the README's GPU benchmark commands, which the
#: train-step and ops sections run within the budget.
CUDA_TESTS_LEFT_OUT = ("tests/test_readme.py::test_gpu_readme_command",)
#: Python packages a check imports, by import name: mper's runtime requirements (every
#: one of pyproject.toml's but torch), the test runner's, and the build's (``pip install
#: --no-build-isolation`` builds with the environment's scikit-build-core and pybind11).
#: tests/test_gpu_check.py checks that pyproject.toml's requirements are all here.
PACKAGES = {
    "numpy": "numpy",
    "h5py": "h5py",
    "scipy": "scipy",
    "medpy": "medpy",
    "nibabel": "nibabel",
    "tqdm": "tqdm",
    "tensorboard": "tensorboard",
    "PIL": "pillow",
    "tomli_w": "tomli-w",
    **({"tomli": "tomli"} if sys.version_info < (3, 11) else {}),
    "pytest": "pytest",
    "hypothesis": "hypothesis",
    "scikit_build_core": "scikit-build-core",
    "pybind11": "pybind11",
}
#: Modules mper imports below a package's top level whose requirements the top level's import
#: does not show: medpy.metric needs scipy, while medpy.io's SimpleITK is left out of the
#: wheels (scripts/gpu_wheels.py).
SUBMODULES = ("medpy.metric.binary", "nibabel.orientations")


@dataclass(frozen=True)
class Sizes:
    """What the sections train and measure: at the presets' shapes on a GPU, tiny on the CPU."""

    device: str
    acdc_data: tuple[str, ...]
    la_data: tuple[str, ...]
    acdc: tuple[str, ...]  # the short ACDC training
    la: tuple[str, ...]
    state: tuple[str, ...]  # the runs whose states are compared (ACDC), to the end
    state_split: int  # self-training iterations before the interruption
    state_end: int
    group: tuple[str, ...]  # the settings of the process-group run
    train_step: tuple[str, ...]
    largest_component: tuple[str, ...]
    ops: tuple[str, ...]


def _sets(*assignments: str) -> tuple[str, ...]:
    return tuple(part for assignment in assignments for part in ("--set", assignment))


GPU = Sizes(
    device="cuda",
    acdc_data=("--cases", "12", "--size", "256", "256"),
    la_data=("--cases", "12", "--size", "128", "128", "96"),
    acdc=(
        "--labeled",
        "3",
        "--amp",
        "bf16",
        *_sets(
            "pretrain.iterations=8",
            "selftrain.iterations=8",
            "eval.val_interval=8",
            "eval.checkpoint_interval=8",
            "eval.log_interval=4",
            "eval.num_figures=0",
            "prototypes.kmeans_max_voxels=20000",
        ),
    ),
    la=(
        "--labeled",
        "2",
        *_sets(
            "pretrain.iterations=6",
            "selftrain.iterations=6",
            "eval.val_interval=6",
            "eval.checkpoint_interval=6",
            "eval.log_interval=3",
            "eval.num_figures=0",
            "eval.stride=[56, 56, 40]",
            "prototypes.kmeans_max_voxels=20000",
        ),
    ),
    state=(
        "--labeled",
        "3",
        "--amp",
        "bf16",
        *_sets(
            "data.patch_size=[128, 128]",
            "data.batch_size=8",
            "data.labeled_batch_size=4",
            "pretrain.iterations=4",
            "eval.val_interval=100",
            "eval.checkpoint_interval=100",
            "eval.num_figures=0",
            "prototypes.kmeans_max_voxels=20000",
        ),
    ),
    state_split=3,
    state_end=6,
    group=_sets("distributed.force_group=true"),
    train_step=("--dataset", "acdc", "la", "--ops", "mper", "--iterations", "10"),
    largest_component=("--maps", "adversarial", "--dtypes", "int64", "--trials", "10"),
    ops=("--workloads", "acdc", "la_b2", "--ops", "classify+infonce", "update", "--trials", "10"),
)
_TINY_ACDC = _sets(
    "network.channels=[4, 8, 16, 32, 64]",
    "data.patch_size=[32, 32]",
    "data.batch_size=4",
    "data.labeled_batch_size=2",
    "data.num_workers=0",
    "eval.num_figures=0",
    "prototypes.kmeans_max_voxels=500",
)
DRY = Sizes(
    device="cpu",
    acdc_data=("--cases", "5", "--size", "32", "32"),
    la_data=("--cases", "5", "--size", "32", "32", "32"),
    acdc=(
        "--labeled",
        "1",
        *_TINY_ACDC,
        *_sets("pretrain.iterations=1", "selftrain.iterations=2", "eval.val_interval=3"),
    ),
    la=(
        "--labeled",
        "2",
        *_sets(
            "network.base_filters=4",
            "data.patch_size=[32, 32, 32]",
            "data.batch_size=4",
            "data.labeled_batch_size=2",
            "data.num_workers=0",
            "pretrain.iterations=1",
            "selftrain.iterations=2",
            "eval.val_interval=3",
            "eval.stride=[16, 16, 16]",
            "eval.num_figures=0",
            "prototypes.kmeans_max_voxels=500",
        ),
    ),
    state=("--labeled", "1", *_TINY_ACDC, *_sets("pretrain.iterations=1", "eval.val_interval=100")),
    state_split=1,
    state_end=2,
    # the CPU's batch norm across processes rounds otherwise than PyTorch's; CUDA's
    # SyncBatchNorm normalises as plain batch norm in a group of one
    group=_sets("distributed.force_group=true", "distributed.sync_batchnorm=false"),
    train_step=(
        "--dataset",
        "acdc",
        "--ops",
        "mper",
        "--iterations",
        "1",
        *_sets(
            "network.channels=[4, 8, 16, 32, 64]",
            "data.patch_size=[32, 32]",
            "data.batch_size=4",
            "data.labeled_batch_size=2",
        ),
    ),
    largest_component=(
        "--maps",
        "adversarial",
        "--dtypes",
        "int64",
        "--trials",
        "1",
        "--scale",
        "0.1",
        "--threads",
        "1",
    ),
    ops=("--workloads", "acdc", "la_b2", "--ops", "classify+infonce", "update", "--trials", "10"),
)


@dataclass
class Section:
    name: str
    title: str
    status: str = "pass"  # or "fail", "timeout", "skipped"
    seconds: float = 0.0
    figure: str = ""
    notes: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


class Failed(Exception):
    """The section fails; the message is its figure."""


class OutOfTime(Exception):
    """A command reached the end of the budget."""


class Check:
    def __init__(self, args: argparse.Namespace) -> None:
        self.dry = args.dry_run
        self.sizes = DRY if self.dry else GPU
        self.budget, self.began = args.budget, time.monotonic()
        self.out = args.out
        self.logs = self.out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.work = args.work or Path(tempfile.mkdtemp(prefix="mper-gpu-check-"))
        self.keep_work = args.keep_work or args.work is not None
        self.python = sys.executable
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.section: Section | None = None
        self.runs: dict[str, Path] = {}  # run folders the comparisons share

    # ------------------------------------------------------------------ running commands

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.began) - RESERVE_S

    def run(
        self,
        name: str,
        command: list[str],
        env: dict[str, str] | None = None,
        check: bool = True,
        cwd: Path = REPO,
        limit: float | None = None,
    ) -> str:
        """Run ``command`` within the budget, and within ``limit`` seconds if given; its
        output goes to logs/<name>.log and is returned."""
        assert self.section is not None
        shown = " ".join(_quoted(part) for part in command)
        self.section.commands.append(shown if not env else " ".join(f"{k}={v}" for k, v in env.items()) + " " + shown)
        log = self.logs / f"{name}.log"
        left = self.left()
        timeout = left if limit is None else min(limit, left)
        capped = timeout != left
        if timeout <= 1:
            raise OutOfTime(f"no time left for {name}")
        try:
            done = subprocess.run(
                command,
                cwd=cwd,
                env={**self.env, **(env or {})},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=timeout,
            )
            output = done.stdout
        except subprocess.TimeoutExpired as stopped:
            log.write_text(_text(stopped.stdout))
            end = f"its limit, {timeout:.0f} s" if capped else "the end of the budget"
            raise OutOfTime(f"{name} stopped at {end} (logs/{log.name})") from stopped
        log.write_text(output)
        if check and done.returncode:
            raise Failed(f"{name} exited with {done.returncode}: {_last_line(output)} (logs/{log.name})")
        return output

    def probe(self, name: str, *arguments: str) -> Any:
        """A ``probe`` subcommand of this script; its last output line is JSON."""
        output = self.run(f"probe-{name}", [self.python, str(Path(__file__).resolve()), "probe", name, *arguments])
        return json.loads(output.strip().splitlines()[-1])

    def tool(self, name: str) -> list[str]:
        """A console script of mper (mper-train, mper-data), beside this Python if there."""
        beside = Path(self.python).parent / name
        found = str(beside) if beside.exists() else shutil.which(name)
        if found is None:
            raise Failed(f"{name} is not installed (the build section installs it)")
        return [found]

    # ------------------------------------------------------------------ sections

    def preflight(self, section: Section) -> None:
        facts = self.probe("environment")
        section.details.update(facts)
        smi = shutil.which("nvidia-smi")
        if smi:
            query = (
                self.run(
                    "nvidia-smi",
                    [smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                    check=False,
                )
                .strip()
                .splitlines()
            )
            section.details["nvidia_smi"] = query
            banner = self.run("nvidia-smi-banner", [smi], check=False)
            found = re.search(r"CUDA Version:\s*([\d.]+)", banner)
            section.details["driver_cuda"] = found.group(1) if found else None
        nvcc = find_nvcc()
        if nvcc:
            found = re.search(r"release ([\d.]+)", self.run("nvcc", [nvcc, "--version"], check=False))
            section.details["nvcc"] = found.group(1) if found else None
        problems = preflight_problems(section.details)
        older = torch_below_requirement(facts["torch"], (REPO / "pyproject.toml").read_text())
        if older:
            section.notes.append(older)
        missing = facts["missing_packages"]
        if missing:
            section.notes.append(f"missing Python packages (the build section installs them): {', '.join(missing)}")
        gpu = facts.get("gpu") or "no GPU"
        section.figure = (
            f"{gpu}; driver {section.details.get('driver_cuda') or '-'} (CUDA), nvcc "
            f"{section.details.get('nvcc') or '-'}, torch {facts['torch']} (CUDA {facts['torch_cuda']})"
        )
        if problems and self.dry:
            section.notes += [f"on a GPU this would fail: {problem}" for problem in problems]
        elif problems:
            raise Failed("; ".join(problems))

    def build(self, section: Section) -> None:
        facts = self.probe("environment")
        pip = [self.python, "-m", "pip", "install", "--no-build-isolation", "--no-deps"]
        wheels = wheels_folder()
        packages = packages_to_install(facts["missing_packages"], wheels, facts["distributions"])
        if packages:
            source = ["--no-index", "--find-links", str(wheels)] if wheels else []
            # the dry run asks pip what it would install, from the folder only
            dry = ["--dry-run"] if self.dry else []
            if self.dry and not wheels:
                section.notes.append(f"not installed (no MPER_WHEELS): {', '.join(packages)}")
            else:
                try:
                    self.run("install-packages", [*pip, *dry, *source, *packages])
                except Failed as error:
                    hint = "; scripts/gpu_wheels.sh makes the folder MPER_WHEELS names" if wheels else ""
                    raise Failed(f"{error}{hint}") from error
                section.notes.append(f"{'would install' if self.dry else 'installed'}: {', '.join(packages)}")
        if not (self.dry and packages):
            broken = self.probe("imports")
            if broken:
                raise Failed(
                    "cannot import "
                    + "; ".join(f"{module} ({reason})" for module, reason in broken.items())
                    + (f" after installing from {wheels}" if wheels else "")
                )
        stamp = Path(sys.prefix) / ".mper-gpu-check-build"
        sources = self.run(
            "source-hash",
            [self.python, str(REPO / "scripts" / "source_hash.py"), str(REPO)],
            env={"MPER_WITH_CUDA": "ON"},
        ).strip()
        if self.dry:
            self.run("pip-version", [self.python, "-m", "pip", "--version"])
            for path in (REPO / "pyproject.toml", REPO / "CMakeLists.txt"):
                if "MPER_WITH_CUDA" not in path.read_text():
                    raise Failed(f"{path.name} does not mention MPER_WITH_CUDA")
            section.commands.append("MPER_WITH_CUDA=ON MPER_WERROR=ON " + " ".join([*pip, "."]) + " (not run)")
            installed = self.probe("mper")
            section.figure = f"dry run: mper {installed['version']} importable (CUDA kernels: {installed['with_cuda']})"
            return
        if stamp.exists() and stamp.read_text() == sources and self.probe("mper")["with_cuda"]:
            section.figure = "mper with CUDA kernels already installed from these sources"
            return
        began = time.monotonic()
        try:
            self.run("build", [*pip, "."], env={"MPER_WITH_CUDA": "ON", "MPER_WERROR": "ON", **compiler_env()})
        except Failed as error:
            section.status = "fail"
            section.notes.append(f"the build with warnings as errors failed ({error}); built again without")
            self.run(
                "build-without-werror",
                [*pip, "."],
                env={"MPER_WITH_CUDA": "ON", "MPER_WERROR": "OFF", **compiler_env()},
            )
        installed = self.probe("mper")
        if not installed["with_cuda"]:
            raise Failed("mper was installed without its CUDA kernels")
        try:
            stamp.write_text(sources)
        except OSError:
            section.notes.append(f"could not write {stamp}: the next run builds again")
        section.figure = f"mper {installed['version']} with CUDA kernels, built in {time.monotonic() - began:.0f} s"

    def cuda_tests(self, section: Section) -> None:
        report = self.logs / "cuda-tests.xml"
        command = [
            self.python,
            "-m",
            "pytest",
            "-q",
            "-m",
            "cuda",
            "-rfE",
            "-p",
            "no:cacheprovider",
            f"--junitxml={report}",
            "--durations=15",
            *(f"--deselect={test}" for test in CUDA_TESTS_LEFT_OUT),
            "tests",
        ]
        section.notes.append(
            f"left out: {', '.join(CUDA_TESTS_LEFT_OUT)} (the train-step and ops sections run these benchmarks)"
        )
        if self.dry:
            found = re.search(r"(\d+)(?:/\d+)? tests? collected", self.run("cuda-tests", [*command, "--collect-only"]))
            collected = int(found.group(1)) if found else 0
            section.figure = f"dry run: {collected} CUDA tests collected"
            if not collected:
                raise Failed("no test is marked cuda")
            return
        self.run("cuda-tests", command, check=False, limit=CUDA_TESTS_SHARE * self.budget)
        counts = junit_counts(report)
        section.details.update(counts)
        section.figure = (
            f"{counts['passed']} passed, {counts['failures']} failed, {counts['errors']} errors, "
            f"{counts['skipped']} skipped"
        )
        if counts["failures"] or counts["errors"] or not counts["passed"]:
            raise Failed(section.figure)

    def sync_free(self, section: Section) -> None:
        data = self.data()
        figures = []
        for dataset, options in (("acdc", self.sizes.acdc), ("la", self.sizes.la)):
            run_dir = self.work / f"sync-{dataset}"
            self.run(
                f"sync-free-{dataset}",
                [
                    *self.tool("mper-train"),
                    "--dataset",
                    dataset,
                    "--data-root",
                    str(data[dataset]),
                    "--out",
                    str(run_dir),
                    "--device",
                    self.sizes.device,
                    *options,
                ],
                env={"MPER_SYNC_DEBUG": "error"},
            )
            amp = "bf16" if "bf16" in options else "fp32"
            figures.append(f"{dataset.upper()} {amp} {iteration_ms(run_dir)}")
        section.figure = "; ".join(figures) + (
            " (CPU: the check is CUDA's, nothing checked)"
            if self.dry
            else ", no host synchronisation in any step but each stage's first"
        )

    def resume(self, section: Section) -> None:
        reference = self.state_run("reference")
        # on the CPU a run repeats bit for bit (mper.train.loop), so the comparison is exact
        again = reference if self.dry else self.state_run("reference-again")
        split = self.state_run("interrupted", end=self.sizes.state_split)
        self.run(
            "resume",
            [
                *self.tool("mper-train"),
                "--resume",
                "--out",
                str(split),
                "--set",
                f"selftrain.iterations={self.sizes.state_end}",
            ],
        )
        self.compare(section, split, reference, again)

    def torchrun(self, section: Section) -> None:
        launcher = [
            self.python,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "1",
            *self.tool("mper-train"),
        ]
        run_dir = self.state_run("torchrun", end=self.sizes.state_split, launcher=launcher)
        self.run(
            "torchrun-resume",
            [*launcher, "--resume", "--out", str(run_dir), "--set", f"selftrain.iterations={self.sizes.state_end}"],
        )
        self.compare(section, run_dir, self.runs.get("reference"), self.runs.get("reference-again"))

    def process_group(self, section: Section) -> None:
        run_dir = self.state_run("process-group", extra=self.sizes.group)
        backend = "gloo" if self.dry else "nccl"
        said = f"training in DistributedDataParallel, 1 process(es) in a {backend} group"
        if said not in (run_dir / "train.log").read_text():
            raise Failed(f"train.log does not say '{said}'")
        self.compare(section, run_dir, self.runs.get("reference"), self.runs.get("reference-again"))
        section.figure = f"{backend} group of one: " + section.figure

    def largest_component(self, section: Section) -> None:
        out = self.out / "largest_component.json"
        self.run(
            "largest-component",
            [
                self.python,
                "benchmarks/largest_component.py",
                "--device",
                self.sizes.device,
                *self.sizes.largest_component,
                "--out",
                str(out),
            ],
        )
        rows = json.loads(out.read_text())["results"]
        times: dict[str, dict[str, float]] = {}
        for row in rows:
            times.setdefault(row["workload"], {})[row["contender"]] = row["median_ms"]
        section.details["median_ms"] = times
        section.figure = "; ".join(
            f"{name}: " + ", ".join(f"{contender} {ms:.2f} ms" for contender, ms in found.items())
            for name, found in times.items()
            if name.startswith("la-")
        )
        section.notes.append("every contender gave scipy's labels on every map; all times in largest_component.md")

    def train_step(self, section: Section) -> None:
        variants = {"fp32": [], "bf16": ["--amp", "bf16"], "bf16+compile": ["--amp", "bf16", "--compile"]}
        command = [self.python, "benchmarks/train_step.py", "--device", self.sizes.device, *self.sizes.train_step]
        results: dict[str, list[dict[str, Any]]] = section.details.setdefault("results", {})
        for variant, switches in variants.items():
            out = self.out / f"train_step-{variant}.json"
            if self.dry and switches:  # bf16 and compile train on CUDA only
                self.run(f"train-step-{variant}", [*command, *switches, "--out", str(out), "--help"])
                section.notes.append(f"{variant}: command line checked (CUDA only)")
                continue
            try:
                self.run(f"train-step-{variant}", [*command, *switches, "--out", str(out)])
            finally:  # the variants measured before the budget ran out still count
                section.figure = train_step_figure(results)
            results[variant] = json.loads(out.read_text())["results"]
            section.figure = train_step_figure(results)

    def ops(self, section: Section) -> None:
        out = self.out / "ops.json"
        command = [self.python, "benchmarks/ops.py", "--device", self.sizes.device, *self.sizes.ops, "--out", str(out)]
        if self.dry:
            self.run("ops", [*command, "--help"])
            section.figure = "dry run: command line checked (the compiled contender takes minutes on a CPU)"
            return
        out.unlink(missing_ok=True)  # an earlier check's, in a reused --out: not this one's measurement
        try:
            self.run("ops", command)
        finally:  # the benchmark saves after each workload and dtype: those measured before the budget ran out count
            speedups = json.loads(out.read_text())["speedups"] if out.is_file() else []
            section.details["speedups"] = speedups
            section.figure = "; ".join(
                f"{row['workload']} {row['dtype']} {row['op']} {row['passes']}: x{row['vs_eager']:.1f} eager"
                for row in speedups
                if row["op"] == "classify+infonce" and row["passes"] == "fwd+bwd"
            )

    # ------------------------------------------------------------------ shared work

    def data(self) -> dict[str, Path]:
        """Synthetic ACDC and LA sets, made once."""
        folders = {"acdc": self.work / "data" / "acdc", "la": self.work / "data" / "la"}
        for dataset, options in (("acdc", self.sizes.acdc_data), ("la", self.sizes.la_data)):
            if not (folders[dataset] / "train.list").exists():
                self.run(
                    f"data-{dataset}",
                    [*self.tool("mper-data"), "synth", "--dataset", dataset, "--out", str(folders[dataset]), *options],
                )
        return folders

    def state_run(
        self, name: str, end: int | None = None, launcher: list[str] | None = None, extra: tuple[str, ...] = ()
    ) -> Path:
        """An ACDC run of :attr:`Sizes.state`, to ``end`` self-training iterations."""
        run_dir = self.work / "state" / name
        shutil.rmtree(run_dir, ignore_errors=True)
        data = self.data()
        self.run(
            f"train-{name}",
            [
                *(launcher or self.tool("mper-train")),
                "--dataset",
                "acdc",
                "--data-root",
                str(data["acdc"]),
                "--out",
                str(run_dir),
                "--device",
                self.sizes.device,
                *self.sizes.state,
                "--set",
                f"selftrain.iterations={end or self.sizes.state_end}",
                *extra,
            ],
        )
        self.runs[name] = run_dir
        return run_dir

    def compare(self, section: Section, run: Path, reference: Path | None, again: Path | None) -> None:
        """``run``'s state against ``reference``'s, allowing in each group SPREAD_FACTOR times
        the spread between ``reference`` and ``again`` (the same run twice), and at least
        STATE_FLOOR times the group's norm."""
        if reference is None:
            section.notes.append("no reference run (the resume section did not run): nothing compared")
            section.figure = "ran; not compared"
            return
        found = self.probe(
            "compare", str(run / "last.pt"), str(reference / "last.pt"), str((again or reference) / "last.pt")
        )
        section.details["distances"] = found
        section.figure = "state against the uninterrupted run: " + ", ".join(
            f"{group} {distance:.2g} (spread {spread:.2g}, norm {norm:.3g})"
            for group, (distance, spread, norm) in found.items()
        )
        beyond = state_beyond_allowance(found)
        if beyond:
            raise Failed(
                f"{section.figure}; beyond {SPREAD_FACTOR:g} x the spread and {STATE_FLOOR:g} x the norm: "
                + ", ".join(beyond)
            )


SECTIONS = (
    ("preflight", "GPU, driver, toolkit, packages", 10, Check.preflight),
    ("build", "mper built with its CUDA kernels", 120, Check.build),
    ("cuda-tests", "pytest -m cuda", 60, Check.cuda_tests),
    ("sync-free", "trainings under MPER_SYNC_DEBUG=error", 60, Check.sync_free),
    ("resume", "mper-train bf16, interrupted and resumed", 60, Check.resume),
    ("torchrun", "torchrun --nproc-per-node 1, and resume", 30, Check.torchrun),
    ("process-group", "a process group of one (distributed.force_group)", 20, Check.process_group),
    ("largest-component", "adversarial maps: GPU, CPU kernel, scipy", 30, Check.largest_component),
    ("train-step", "self-training iteration: fp32, bf16, bf16+compile", 90, Check.train_step),
    ("ops", "fused ops against eager and compiled PyTorch", 60, Check.ops),
)


def state_beyond_allowance(found: dict[str, list[float]]) -> list[str]:
    """The groups of ``found`` (``group: [distance, spread, norm]``, as the compare probe
    gives them) farther from the reference run than allowed: SPREAD_FACTOR times the
    spread, at least STATE_FLOOR times the norm; each as ``"group distance > allowed"``."""
    return [
        f"{group} {distance:.2g} > {allowed:.2g}"
        for group, (distance, spread, norm) in found.items()
        if distance > (allowed := max(SPREAD_FACTOR * spread, STATE_FLOOR * norm))
    ]


def wheels_folder() -> Path | None:
    """``MPER_WHEELS``, else the checkout's ``wheels/`` where it holds wheels (scripts/gpu_wheels.sh
    writes there), else None: packages come from the package index."""
    named = os.environ.get("MPER_WHEELS")
    if named:
        return Path(named).resolve()
    found = REPO / "wheels"
    return found if any(found.glob("*.whl")) else None


def packages_to_install(missing: list[str], wheels: Path | None, installed: list[str]) -> list[str]:
    """The distributions the build section installs: those of the ``missing`` modules
    (``PACKAGES``) and, when there are any, each distribution of the ``wheels`` folder not
    ``installed`` (canonical names): what the missing ones require, installed with them
    (``--no-deps``: pip does not look for what the folder leaves out as unneeded)."""
    names = [PACKAGES[module] for module in missing]
    if names and wheels is not None:
        have = {_canonical(name) for name in [*installed, *names]}
        for path in sorted(wheels.iterdir()):
            if path.name.endswith(".whl"):
                name = path.name.split("-")[0]
            elif path.name.endswith((".tar.gz", ".zip")):
                name = path.name.rsplit("-", 1)[0]
            else:
                continue
            if _canonical(name) not in have:
                have.add(_canonical(name))
                names.append(_canonical(name))
    return names


def _canonical(name: str) -> str:
    """A distribution's name as PyPI compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def find_nvcc() -> str | None:
    """nvcc on the PATH, else the toolkit's default place (/usr/local/cuda/bin)."""
    return shutil.which("nvcc") or shutil.which("nvcc", path="/usr/local/cuda/bin")


def compiler_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """``CUDACXX`` naming the nvcc the preflight found when it is not on the PATH (CMake
    looks for it there only), unless ``CUDACXX`` is set already; else nothing."""
    environ = os.environ if environ is None else environ
    if environ.get("CUDACXX") or shutil.which("nvcc", path=environ.get("PATH")):
        return {}
    nvcc = find_nvcc()
    return {"CUDACXX": nvcc} if nvcc else {}


def preflight_problems(facts: dict[str, Any]) -> list[str]:
    """What stops mper on this GPU machine, by the preflight's facts."""
    problems = []
    if not facts.get("gpu"):
        problems.append("torch sees no CUDA GPU")
    if not facts.get("nvcc"):
        problems.append("nvcc (the CUDA toolkit) is not on PATH: the CUDA kernels cannot be built")
    driver, nvcc, torch_cuda = (_version(facts.get(key)) for key in ("driver_cuda", "nvcc", "torch_cuda"))
    # the kernels' own check (cuda_version_problem): a driver of nvcc's major version runs
    # them even when its minor version is older (CUDA's minor version compatibility)
    if driver and nvcc and driver[0] < nvcc[0]:
        problems.append(
            f"the driver supports CUDA {facts['driver_cuda']}, an older major version than nvcc {facts['nvcc']}, "
            "whose runtime mper links: build with the toolkit that matches the driver"
        )
    if driver and torch_cuda and driver < torch_cuda:
        problems.append(f"the driver supports CUDA {facts['driver_cuda']}, older than torch's {facts['torch_cuda']}")
    return problems


def torch_below_requirement(version: str, pyproject: str) -> str:
    """A note when torch ``version`` is older than pyproject.toml's ``torch>=`` (the build
    section installs mper with ``--no-deps``, so nothing else says so), else ""."""
    found = re.search(r'"torch>=([\d.]+)"', pyproject)
    if not found or (_version(version) or ()) >= (_version(found.group(1)) or ()):
        return ""
    return (
        f"torch {version} is older than mper's requirement torch>={found.group(1)}: a failure may come from "
        "the older torch rather than from mper"
    )


def train_step_figure(results: dict[str, list[dict[str, Any]]]) -> str:
    """Per dataset: each variant's iteration time and its speed-up on eager fp32, and
    the iteration / network ratio."""
    parts = []
    baseline = {row["dataset"]: row["iteration_ms"] for row in results.get("fp32", [])}
    for dataset in dict.fromkeys(row["dataset"] for rows in results.values() for row in rows):
        cells = []
        for variant, rows in results.items():
            for row in (row for row in rows if row["dataset"] == dataset):
                speedup = f" (x{baseline[dataset] / row['iteration_ms']:.2f})" if dataset in baseline else ""
                cells.append(
                    f"{variant} {row['iteration_ms']:.1f} ms{speedup}, "
                    f"iteration/network {row['iteration_over_network']:.2f}"
                )
        parts.append(f"{dataset.upper()}: " + "; ".join(cells))
    return " | ".join(parts)


def iteration_ms(run_dir: Path) -> str:
    """The last iteration time train.log gives."""
    found = re.findall(r"per ([\d.]+) ms iteration", (run_dir / "train.log").read_text())
    return f"{found[-1]} ms/iteration" if found else "finished"


def junit_counts(report: Path) -> dict[str, int]:
    suite = ElementTree.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    assert suite is not None
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


def _version(text: str | None) -> tuple[int, ...] | None:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:2]) if text else None


def _quoted(part: str) -> str:
    return part if re.fullmatch(r"[\w@%+=:,./-]+", part) else "'" + part.replace("'", "'\\''") + "'"


def _text(output: str | bytes | None) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else (output or "")


def _last_line(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


# ---------------------------------------------------------------------- the run


def check(args: argparse.Namespace) -> int:
    checker = Check(args)
    sections = []
    commit = _git("rev-parse", "HEAD") or os.environ.get("MPER_COMMIT")
    for name, title, needs_s, method in SECTIONS:
        section = Section(name, title)
        checker.section = section
        began = time.monotonic()
        left = checker.left()
        if left < min(needs_s, 30):
            section.status = "skipped"
            section.notes.append(
                f"skipped: {max(left, 0):.0f} s of the {args.budget:.0f} s budget left, it needs about {needs_s} s"
            )
        else:
            try:
                method(checker, section)
            except Failed as error:
                section.status, section.figure = "fail", str(error)
            except OutOfTime as error:
                section.status = "timeout"
                section.notes.append(str(error))
            except Exception as error:  # a broken section must not hide the others
                section.status, section.figure = "fail", f"{type(error).__name__}: {error}"
        section.seconds = time.monotonic() - began
        sections.append(section)
        print(f"{section.name:18} {section.status:8} {section.seconds:6.1f} s  {section.figure}", flush=True)
    verdict = (
        "fail"
        if any(s.status == "fail" for s in sections)
        else "pass"
        if all(s.status == "pass" for s in sections)
        else "incomplete"
    )
    summary = {
        "verdict": verdict,
        "dry_run": args.dry_run,
        "budget_s": args.budget,
        "seconds": round(time.monotonic() - checker.began, 1),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": commit,
        "worktree_clean": _clean(),
        "host": platform.node(),
        "python": sys.executable,
        "sections": [asdict(section) for section in sections],
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (args.out / "summary.md").write_text(markdown(summary))
    if not checker.keep_work:
        shutil.rmtree(checker.work, ignore_errors=True)
    print(f"verdict: {verdict}; summary in {args.out / 'summary.md'}")
    return {"pass": 0, "fail": 1, "incomplete": 3}[verdict]


def markdown(summary: dict[str, Any]) -> str:
    kind = "dry run on the CPU" if summary["dry_run"] else "GPU check"
    changes = " (with local changes)" if summary["worktree_clean"] is False else ""
    lines = [
        f"# {kind}: {summary['verdict']}",
        "",
        f"Commit {summary['commit'] or 'unknown'}{changes}, "
        f"started {summary['started']} on {summary['host']}, {summary['seconds']} s of a "
        f"{summary['budget_s']:.0f} s budget.",
        "",
        "| section | result | seconds | figure |",
        "|---|---|---|---|",
    ]
    for section in summary["sections"]:
        figure = section["figure"].replace("|", "/") or "-"
        lines.append(f"| {section['name']} | {section['status']} | {section['seconds']:.1f} | {figure} |")
    notes = [(section["name"], note) for section in summary["sections"] for note in section["notes"]]
    if notes:
        lines += ["", "Notes:", ""] + [f"- {name}: {note}" for name, note in notes]
    lines += ["", "Commands and every figure: summary.json; each command's output: logs/."]
    return "\n".join(lines) + "\n"


def _clean() -> bool | None:
    """Whether the checkout has no local changes (None outside git)."""
    status = _git("status", "--porcelain")
    return None if status is None else status == ""


def _git(*arguments: str) -> str | None:
    try:
        done = subprocess.run(["git", *arguments], cwd=REPO, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


# ---------------------------------------------------------------------- probes (torch and mper)


def probe(name: str, arguments: list[str]) -> None:
    """Print one JSON line: facts of the environment, of the installed mper, or state distances."""
    if name == "environment":
        import importlib.metadata
        import importlib.util

        import torch

        gpu = torch.cuda.is_available()
        facts: dict[str, Any] = {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name(0) if gpu else None,
            "capability": ".".join(map(str, torch.cuda.get_device_capability(0))) if gpu else None,
            "missing_packages": [module for module in PACKAGES if importlib.util.find_spec(module) is None],
            "distributions": sorted({_canonical(d.metadata["Name"]) for d in importlib.metadata.distributions()}),
        }
        print(json.dumps(facts))
    elif name == "imports":
        import importlib

        broken = {}
        for module in (*PACKAGES, *SUBMODULES):
            try:
                importlib.import_module(module)
            except Exception as error:  # a missing requirement, or a broken build of one
                broken[module] = f"{type(error).__name__}: {error}"
        print(json.dumps(broken))
    elif name == "mper":
        import mper
        from mper import _C

        print(json.dumps({"version": mper.__version__, "with_cuda": bool(_C.with_cuda), "path": mper.__file__}))
    elif name == "compare":
        import torch

        from mper.train.checkpoint import load_checkpoint

        run, reference, again = (load_checkpoint(path) for path in arguments)
        # where the stage stands (the best score depends on when each run validated)
        where = [(state["progress"]["stage"], state["progress"]["iteration"]) for state in (run, reference)]
        if where[0] != where[1]:
            raise SystemExit(f"the runs stopped at different iterations: {where[0]} and {where[1]}")

        def values(state: dict[str, Any], part: str) -> torch.Tensor:
            tensors = state[part].values() if isinstance(state[part], dict) else [state[part]]
            return torch.cat([t.detach().double().flatten() for t in tensors if t.is_floating_point()])

        print(
            json.dumps(
                {
                    part: [
                        float((values(run, part) - values(reference, part)).norm()),
                        float((values(again, part) - values(reference, part)).norm()),
                        float(values(reference, part).norm()),
                    ]
                    for part in ("student", "teacher", "bank")
                }
            )
        )
    else:
        raise SystemExit(f"unknown probe {name!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="every section on the CPU at tiny sizes")
    parser.add_argument("--budget", type=float, default=600.0, help="seconds for all sections (default 600)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for the summary, logs and results (default: benchmarks/results/gpu-check/"
        "<date>-<commit>; a temporary folder with --dry-run)",
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=None,
        help="folder for data and run folders, kept (default: a temporary folder, removed)",
    )
    parser.add_argument("--keep-work", action="store_true", help="keep the temporary work folder")
    if len(sys.argv) > 1 and sys.argv[1] == "probe":
        probe(sys.argv[2], sys.argv[3:])
        return
    args = parser.parse_args()
    if args.out is None:
        if args.dry_run:
            args.out = Path(tempfile.mkdtemp(prefix="mper-gpu-check-dry-run-"))
        else:
            stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d-%H%M%S")
            commit = _git("rev-parse", "--short", "HEAD") or os.environ.get("MPER_COMMIT", "unknown")[:7]
            args.out = REPO / "benchmarks" / "results" / "gpu-check" / f"{stamp}-{commit}"
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"mper GPU check{' (dry run)' if args.dry_run else ''}: results in {args.out}", flush=True)
    sys.exit(check(args))


if __name__ == "__main__":
    main()
