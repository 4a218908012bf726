#!/usr/bin/env bash
# Downloads into a folder (default wheels/) the wheels that a Python without a package index
# needs for mper, its tests and its build, less what that Python already holds; the GPU
# check installs them from there (scripts/gpu_wheels.py; docs/gpu-check.md). Run it where
# there is a package index, with the Python it uses here (PYTHON, default python3).
#
#   python -m pip list --format=freeze > have.txt     # on the target
#   scripts/gpu_wheels.sh --have have.txt             # here: CPython 3.12, manylinux x86_64
#   scripts/gpu_wheels.sh --have have.txt --python-version 3.11 --dest DIR
#   MPER_WHEELS=DIR scripts/gpu_check.sh              # on the target (wheels/ is found without it)
set -euo pipefail
exec "${PYTHON:-python3}" "$(dirname "$0")/gpu_wheels.py" "$@"
