#!/usr/bin/env bash
# Creates (or reuses) a virtual environment and installs mper into it with its test
# extras. Sourced by scripts/demo.sh and scripts/test.sh.
#
#   MPER_VENV    where the environment lives (default: .venv in the repository)
#   MPER_TORCH   the PyTorch requirement installed when the environment has no torch
#                (default: torch==2.13.0; e.g. "torch==2.13.0 --index-url ..." for a
#                specific CUDA build). mper itself works with torch >= 2.4.
#   MPER_EXTRAS  the extras installed with mper (default: test; CI adds lint)
#   MPER_WERROR  ON builds the compiled core with warnings as errors (CI does)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
venv="${MPER_VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
# shellcheck disable=SC1091
. "$venv/bin/activate"
if ! python -c "import torch" 2>/dev/null; then
  # shellcheck disable=SC2086
  python -m pip install --quiet ${MPER_TORCH:-torch==2.13.0}
fi
python -m pip install --quiet ".[${MPER_EXTRAS:-test}]"
