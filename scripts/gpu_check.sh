#!/usr/bin/env bash
# Turns a machine with an NVIDIA GPU into a verdict on mper in at most 10 minutes: preflight,
# the build with CUDA kernels, the CUDA tests, trainings without host synchronisation,
# resume, torchrun, a NCCL process group, largest_component, the training step and the ops
# (scripts/gpu_check.py; the summary's format: docs/gpu-check.md). Exit status: 0 pass,
# 1 fail, 3 incomplete (sections skipped at the time budget).
#
#   scripts/gpu_check.sh                 # results in benchmarks/results/gpu-check/<date>-<commit>/
#   scripts/gpu_check.sh --dry-run       # every section on the CPU at tiny sizes (CI runs this)
#   scripts/gpu_check.sh --budget 900 --out DIR
#
#   MPER_PYTHON  the Python to check and build with (default: python3, the active
#                environment's if one is active); it must hold torch. mper is installed
#                into it with `pip install --no-build-isolation --no-deps .`
#   MPER_WHEELS  a folder of wheels (and sdists) to install missing Python packages from,
#                on a machine without a package index (default: wheels/ where it holds
#                wheels; scripts/gpu_wheels.sh writes it)
#   MPER_COMMIT  the commit the summary names when the checkout has no git metadata
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${MPER_PYTHON:-python3}" scripts/gpu_check.py "$@"
