"""Registers, stack, spills and shared memory of every CUDA kernel as ptxas reports them
for sm_80 and sm_90, and the theoretical occupancy they allow:
``benchmarks/results/cuda_kernel_resources.{md,json}``.

Each CUDA source is compiled with the command the CMake build gives it (read from
``compile_commands.json`` of a configure in a scratch folder, so the flags and
architectures are the build's own) plus ``-Xptxas=-v``. Blocks per multiprocessor follow
the CUDA occupancy calculator (``cuda_occupancy.h``): registers are allocated per warp in
units of 256 within each of the 4 sub-partitions, shared memory in units of 128 bytes
with 1 KiB reserved per block, at most 32 blocks and 64 warps per multiprocessor. The
shared-memory limit counts the kernel's static shared memory only: the head's bank and
the accumulation table are dynamic and grow with the prototype bank. The threads per
block are each source's ``kThreads``.

The JSON records a digest of the files the kernels are compiled from;
``tests/test_cuda_resources.py`` fails once they change until the table is generated again.
No GPU is needed, only nvcc and CMake (a few minutes):

    python benchmarks/cuda_resources.py            # writes the table
    python benchmarks/cuda_resources.py --check    # compiles and compares with the committed table
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provenance import provenance, provenance_line

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
TABLE = "cuda_kernel_resources"
ARCHITECTURES = "80;90"


@dataclass(frozen=True)
class Multiprocessor:
    """Per-multiprocessor limits of a compute capability (CUDA C++ Programming Guide,
    "Compute Capabilities"; allocation units as in cuda_occupancy.h)."""

    registers: int = 65536
    registers_per_block: int = 65536
    sub_partitions: int = 4
    register_unit: int = 256  # registers per warp are rounded up to this
    max_warps: int = 64
    max_blocks: int = 32
    shared_bytes: int = 0  # the largest shared-memory carve-out
    shared_unit: int = 128
    reserved_shared_per_block: int = 1024


MULTIPROCESSORS = {
    "sm_80": Multiprocessor(shared_bytes=164 * 1024),
    "sm_90": Multiprocessor(shared_bytes=228 * 1024),
}


def round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def blocks_per_multiprocessor(sm: Multiprocessor, registers: int, static_shared: int, threads: int) -> tuple[int, str]:
    """Resident blocks of `threads` threads and what limits them (cuda_occupancy.h)."""
    warps = -(-threads // 32)
    warp_registers = round_up(registers * 32, sm.register_unit)
    if warp_registers * round_up(warps, sm.sub_partitions) > sm.registers_per_block:
        by_registers = 0
    elif warp_registers:
        by_registers = sm.registers // sm.sub_partitions // warp_registers * sm.sub_partitions // warps
    else:
        by_registers = sm.max_blocks
    block_shared = round_up(static_shared + sm.reserved_shared_per_block, sm.shared_unit)
    limits = {  # on a tie, the hardware's own limits name it
        "warps": sm.max_warps // warps,
        "blocks": sm.max_blocks,
        "registers": by_registers,
        "shared memory": sm.shared_bytes // block_shared,
    }
    fewest = min(limits.values())
    return fewest, next(name for name, value in limits.items() if value == fewest)


# ---------------------------------------------------------------- sources and compilation


def source_files(root: Path = ROOT) -> list[Path]:
    """What the kernels are compiled from: the CUDA sources, the header they share, the build."""
    cuda = sorted((root / "csrc" / "ops" / "cuda").iterdir())
    return [root / "CMakeLists.txt", root / "csrc" / "common.h", *cuda]


def source_digest(root: Path = ROOT) -> str:
    digest = hashlib.sha256()
    for path in source_files(root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def threads_per_block(source: Path) -> int:
    match = re.search(r"constexpr int kThreads = (\d+);", source.read_text())
    if not match:
        raise SystemExit(f"{source}: no `constexpr int kThreads = N;` giving its kernels' block size")
    return int(match[1])


def compile_commands(build: Path) -> list[dict[str, str]]:
    """The CUDA sources' compile commands from a configure of the build in `build`."""
    import pybind11

    subprocess.run(
        [
            "cmake",
            "-S",
            str(ROOT),
            "-B",
            str(build),
            "-G",
            "Ninja",
            "-DCMAKE_BUILD_TYPE=Release",
            "-DMPER_WITH_CUDA=ON",
            "-DMPER_WERROR=OFF",
            f"-DMPER_CUDA_ARCHITECTURES={ARCHITECTURES}",
            "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DPython_EXECUTABLE={sys.executable}",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    entries = json.loads((build / "compile_commands.json").read_text())
    return [entry for entry in entries if entry["file"].endswith(".cu")]


def ptxas_report(entry: dict[str, str]) -> str:
    """What ptxas says about every kernel of one source, compiled as the build does."""
    command = [*shlex.split(entry["command"]), "-Xptxas=-v"]
    done = subprocess.run(command, cwd=entry["directory"], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"compiling {entry['file']} failed:\n{done.stdout}{done.stderr}")
    return done.stdout + done.stderr


ENTRY = re.compile(r"Compiling entry function '(?P<name>[^']+)' for '(?P<arch>sm_\d+)'")
FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
USAGE = re.compile(r"Used (\d+) registers")
SHARED = re.compile(r"(\d+) bytes smem")


def parse_ptxas(text: str) -> list[dict[str, Any]]:
    """One record per kernel and architecture: mangled name, registers, bytes of stack,
    spill stores, spill loads and static shared memory."""
    records = []
    for block in re.split(r"(?=ptxas info\s+: Compiling entry function)", text):
        entry = ENTRY.search(block)
        if not entry:
            continue
        frame, usage, shared = FRAME.search(block), USAGE.search(block), SHARED.search(block)
        if not (frame and usage):
            raise ValueError(f"ptxas gave no resource usage for {entry['name']}:\n{block}")
        records.append(
            {
                "mangled": entry["name"],
                "arch": entry["arch"],
                "registers": int(usage[1]),
                "stack_bytes": int(frame[1]),
                "spill_store_bytes": int(frame[2]),
                "spill_load_bytes": int(frame[3]),
                "static_shared_bytes": int(shared[1]) if shared else 0,
            }
        )
    return records


def demangle(names: list[str]) -> list[str]:
    """Readable kernel names: the template and its arguments, without namespaces or parameters."""
    tool = shutil.which("cu++filt") or str(Path(shutil.which("nvcc") or "nvcc").parent / "cu++filt")
    if not Path(tool).exists():
        tool = "c++filt"
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    readable = []
    for name in out.splitlines():
        name = re.sub(r"^void ", "", name)
        name = re.sub(r"mper::cuda::(\(anonymous namespace\)::)?", "", name)
        readable.append(re.sub(r"\((mper::)?\w+Args(, int)?\)$", "", name))
    return readable


def nvcc_version() -> str:
    out = subprocess.run(["nvcc", "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"V(\d+\.\d+\.\d+)", out)
    return match[1] if match else out.strip().splitlines()[-1]


def with_occupancy(record: dict[str, Any]) -> dict[str, Any]:
    sm = MULTIPROCESSORS[record["arch"]]
    blocks, limit = blocks_per_multiprocessor(sm, record["registers"], record["static_shared_bytes"], record["threads"])
    warps = -(-record["threads"] // 32)
    return {
        **record,
        "blocks_per_sm": blocks,
        "limited_by": limit,
        "occupancy": round(blocks * warps / sm.max_warps, 4),
    }


def generate(build: Path, jobs: int) -> dict[str, Any]:
    entries = compile_commands(build)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        reports = list(pool.map(ptxas_report, entries))
    kernels = []
    for entry, report in zip(entries, reports):
        source = Path(entry["file"])
        records = parse_ptxas(report)
        for record, name in zip(records, demangle([r.pop("mangled") for r in records])):
            record = {"source": source.name, "kernel": name, "threads": threads_per_block(source), **record}
            kernels.append(with_occupancy(record))
    kernels.sort(key=lambda k: (k["source"], k["kernel"], k["arch"]))
    return {
        "generated_by": "benchmarks/cuda_resources.py",
        "provenance": provenance(),
        "sources_digest": source_digest(),
        "nvcc": nvcc_version(),
        "multiprocessors": {arch: vars(sm) for arch, sm in MULTIPROCESSORS.items()},
        "kernels": kernels,
    }


# ---------------------------------------------------------------- the table


def render_markdown(table: dict[str, Any]) -> str:
    lines = [
        "# CUDA kernel resources",
        "",
        provenance_line(table["provenance"]),
        "",
        f"Generated by `{table['generated_by']}` with nvcc {table['nvcc']} (the build's flags, "
        "`-Xptxas=-v`); do not edit. Per kernel and architecture: registers per thread, stack "
        "frame and spill bytes (local memory), static shared memory, threads per block, and "
        "the blocks each multiprocessor holds at once with what limits them (dynamic shared "
        "memory, the head's bank and the accumulation table, comes on top). Occupancy: "
        "resident warps over the 64 a multiprocessor can hold.",
        "",
        f"Sources digest: `{table['sources_digest']}`",
    ]
    sources = sorted({k["source"] for k in table["kernels"]})
    for source in sources:
        lines += [
            "",
            f"## {source}",
            "",
            "| kernel | arch | registers | stack B | spill stores / loads B | static shared B | threads "
            "| blocks / SM (limited by) | occupancy |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for k in table["kernels"]:
            if k["source"] != source:
                continue
            lines.append(
                f"| `{k['kernel']}` | {k['arch']} | {k['registers']} | {k['stack_bytes']} "
                f"| {k['spill_store_bytes']} / {k['spill_load_bytes']} | {k['static_shared_bytes']} "
                f"| {k['threads']} | {k['blocks_per_sm']} ({k['limited_by']}) | {k['occupancy']:.0%} |"
            )
    return "\n".join(lines) + "\n"


def render_json(table: dict[str, Any]) -> str:
    return json.dumps(table, indent=1) + "\n"


def committed() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((RESULTS / f"{TABLE}.json").read_text())
    return loaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed table instead of writing it")
    parser.add_argument("--jobs", type=int, default=2, help="sources compiled at once")
    args = parser.parse_args()
    if not shutil.which("nvcc"):
        raise SystemExit("nvcc is not on PATH: the table comes from compiling the CUDA kernels")
    with tempfile.TemporaryDirectory(prefix="mper-cuda-resources-") as build:
        table = generate(Path(build), args.jobs)
    if args.check:
        old = committed()
        if old["kernels"] != table["kernels"] or old["sources_digest"] != table["sources_digest"]:
            raise SystemExit(
                f"benchmarks/results/{TABLE}.json (nvcc {old['nvcc']}) differs from a fresh compile "
                f"(nvcc {table['nvcc']}): run this script again"
            )
        print(f"{len(table['kernels'])} kernel records match the committed table")
        return
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{TABLE}.json").write_text(render_json(table))
    (RESULTS / f"{TABLE}.md").write_text(render_markdown(table))
    spilling = [k for k in table["kernels"] if k["stack_bytes"] or k["spill_store_bytes"]]
    print(
        f"{len(table['kernels'])} kernel records written to benchmarks/results/{TABLE}.{{md,json}}; "
        f"{len(spilling)} use local memory"
    )


if __name__ == "__main__":
    main()
