"""The generated table of CUDA kernel resources (benchmarks/cuda_resources.py): it was
generated from the sources as they are, its Markdown is the rendering of its JSON, its
occupancy follows from the resources by the occupancy calculator's arithmetic (checked
on hand-worked cases), and no shipped kernel uses local memory. Where nvcc is installed,
a slow test compiles the kernels again and compares every number."""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "cuda_resources.py"


@pytest.fixture(scope="module")
def resources():
    spec = importlib.util.spec_from_file_location("cuda_resources", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    sys.path.insert(0, str(SCRIPT.parent))  # for its sibling benchmarks/provenance.py
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(SCRIPT.parent))
    yield module
    del sys.modules[spec.name]


@pytest.fixture(scope="module")
def table(resources):
    return resources.committed()


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="the table is generated with nvcc, which is not installed")
def test_table_was_generated_from_the_sources_as_they_are(resources, table):
    assert table["sources_digest"] == resources.source_digest(), (
        "the CUDA sources (or CMakeLists.txt, csrc/common.h) changed since the resource table was generated: "
        "run `python benchmarks/cuda_resources.py` and commit benchmarks/results/cuda_kernel_resources.*"
    )


def test_markdown_is_the_rendering_of_the_json(resources, table):
    written = (resources.RESULTS / f"{resources.TABLE}.md").read_text()
    assert written == resources.render_markdown(table)
    assert (resources.RESULTS / f"{resources.TABLE}.json").read_text() == resources.render_json(table)


def test_every_kernel_of_every_source_is_listed_for_both_architectures(table):
    kernels = {(k["source"], k["kernel"]) for k in table["kernels"]}
    for source, kernel in kernels:
        assert {k["arch"] for k in table["kernels"] if (k["source"], k["kernel"]) == (source, kernel)} == {
            "sm_80",
            "sm_90",
        }
    sources = {k["source"] for k in table["kernels"]}
    cuda = SCRIPT.parent.parent / "csrc" / "ops" / "cuda"
    assert sources == {p.name for p in cuda.glob("*_kernel.cu")}
    # the head, for 3 dtypes: 6 forward variants (16x4, 32x2, 32x1, 64, 128 and the global
    # bank) and 5 backward ones (16x2, 32, 64, 128, global), then 3 finalizers
    assert sum(k["source"] == "proto_head_kernel.cu" for k in table["kernels"]) == 2 * (3 * (6 + 5) + 3)


def test_no_kernel_uses_local_memory(table):
    """What -warn-spills / -warn-lmem-usage make the build refuse (MPER_WERROR=ON)."""
    local = [
        (k["kernel"], k["arch"])
        for k in table["kernels"]
        if k["stack_bytes"] or k["spill_store_bytes"] or k["spill_load_bytes"]
    ]
    assert local == []


def test_the_head_runs_two_blocks_per_multiprocessor(table):
    """The head kernels' __launch_bounds__(kThreads, kMinBlocks = 2): at most 128 registers."""
    for k in table["kernels"]:
        if k["kernel"].startswith(("head_forward_kernel", "head_backward_kernel")):
            assert k["registers"] <= 128 and k["blocks_per_sm"] >= 2, k


def test_stored_occupancy_follows_from_the_resources(resources, table):
    for k in table["kernels"]:
        assert (
            resources.with_occupancy(
                {key: k[key] for key in k if key not in ("blocks_per_sm", "limited_by", "occupancy")}
            )
            == k
        )


@pytest.mark.parametrize(
    "arch,registers,shared,threads,blocks,limit",
    [
        # 255 registers: 8192 a warp (8160 rounded up to 256), 2 per sub-partition (16384 each), 8 per SM: 1 block
        ("sm_90", 255, 0, 256, 1, "registers"),
        # 128: 4096 a warp, 4 per sub-partition, 16 per SM: 2 blocks
        ("sm_80", 128, 32, 256, 2, "registers"),
        # 72: 2304 a warp, 7 per sub-partition, 28 per SM: 3 blocks of 8 warps
        ("sm_90", 72, 0, 256, 3, "registers"),
        # 32: 1024 a warp, 16 per sub-partition, 64 per SM: 8 blocks, as many as the 64 warps allow
        ("sm_80", 32, 0, 256, 8, "warps"),
        # 16 registers, 32 threads: 128 blocks by registers, 64 by warps, but at most 32 blocks
        ("sm_90", 16, 0, 32, 32, "blocks"),
        # 48 KiB static + 1 KiB reserved: 164 KiB holds 3 blocks on sm_80, 228 KiB 4 on sm_90
        ("sm_80", 32, 48 * 1024, 256, 3, "shared memory"),
        ("sm_90", 32, 48 * 1024, 256, 4, "shared memory"),
    ],
)
def test_blocks_per_multiprocessor(resources, arch, registers, shared, threads, blocks, limit):
    assert resources.blocks_per_multiprocessor(resources.MULTIPROCESSORS[arch], registers, shared, threads) == (
        blocks,
        limit,
    )


PTXAS_SAMPLE = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z6kernelPf' for 'sm_80'
ptxas info    : Function properties for _Z6kernelPf
    2088 bytes stack frame, 4808 bytes spill stores, 6716 bytes spill loads
ptxas info    : Used 32 registers, used 1 barriers, 2088 bytes cumulative stack size, 32 bytes smem, 440 bytes cmem[0]
ptxas info    : Compile time = 2197.168 ms
ptxas info    : Function properties for _Z6helperv
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Compiling entry function '_Z5otherv' for 'sm_90'
ptxas info    : Function properties for _Z5otherv
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 216 registers, used 0 barriers
"""


def test_ptxas_report_is_parsed_per_kernel(resources):
    assert resources.parse_ptxas(PTXAS_SAMPLE) == [
        {
            "mangled": "_Z6kernelPf",
            "arch": "sm_80",
            "registers": 32,
            "stack_bytes": 2088,
            "spill_store_bytes": 4808,
            "spill_load_bytes": 6716,
            "static_shared_bytes": 32,
        },
        {
            "mangled": "_Z5otherv",
            "arch": "sm_90",
            "registers": 216,
            "stack_bytes": 0,
            "spill_store_bytes": 0,
            "spill_load_bytes": 0,
            "static_shared_bytes": 0,
        },
    ]


def test_threads_per_block_are_each_sources_own(resources):
    for source in (SCRIPT.parent.parent / "csrc" / "ops" / "cuda").glob("*_kernel.cu"):
        launches = re.findall(r"<<<[^,]+,\s*(\w+)", source.read_text())
        assert launches and set(launches) == {"kThreads"}, source.name
        assert resources.threads_per_block(source) == 256


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_table_matches_a_fresh_compile(resources, table, tmp_path):
    if resources.nvcc_version() != table["nvcc"]:
        pytest.skip(f"the table comes from nvcc {table['nvcc']}, this machine has {resources.nvcc_version()}")
    fresh = resources.generate(tmp_path, jobs=2)
    assert fresh["kernels"] == table["kernels"]
