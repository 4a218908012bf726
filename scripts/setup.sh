#!/usr/bin/env bash
# Creates (or reuses) a virtual environment and installs mper into it with the extras
# asked for, then leaves it activated. Sourced by scripts/demo.sh and scripts/test.sh.
#
# mper is built only when the environment has none, or when the sources it was built
# from (csrc/, python/, CMakeLists.txt, pyproject.toml, MPER_WITH_CUDA) have changed
# since: their hash is kept in the environment (.mper-source-hash). Extras are installed
# on their own, without a new build, when the environment lacks them (.mper-extras).
#
#   MPER_VENV    where the environment lives (default: .venv in the repository)
#   MPER_TORCH   the PyTorch requirement installed when the environment has no torch
#                (default: torch==2.13.0; on a machine without a GPU, e.g.
#                "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu").
#                mper itself works with torch >= 2.4.
#   MPER_EXTRAS  the extras installed with mper, comma-separated (default: test; CI adds
#                lint; scripts/demo.sh needs none and sets it empty)
#   MPER_WERROR  ON builds the compiled core with warnings as errors (CI does)
#   MPER_WITH_CUDA  AUTO (default: the CUDA kernels too when a CUDA compiler is found),
#                ON or OFF; scripts/demo.sh sets OFF when no NVIDIA GPU is visible
#   MPER_KEEP_CUDA_BUILD  1: with MPER_WITH_CUDA=OFF, an environment already built with
#                the default (CUDA kernels included) is used as it is, not rebuilt
set -euo pipefail
mper_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mper_venv="${MPER_VENV:-$mper_repo/.venv}"
if [ ! -x "$mper_venv/bin/python" ]; then
  echo "setup: creating the environment $mper_venv"
  python3 -m venv "$mper_venv"
fi
# shellcheck disable=SC1091
. "$mper_venv/bin/activate"
if ! python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is None)"; then
  echo "setup: installing PyTorch (${MPER_TORCH:-torch==2.13.0})"
  # shellcheck disable=SC2086
  python -m pip install --quiet ${MPER_TORCH:-torch==2.13.0}
fi
mper_extras="${MPER_EXTRAS-test}"
mper_stamp="$mper_venv/.mper-source-hash"
mper_extras_stamp="$mper_venv/.mper-extras"
# the build depends on the sources (MPER_WITH_CUDA included) and the warning setting
mper_build_hash() { echo "$(python "$mper_repo/scripts/source_hash.py" "$mper_repo") ${MPER_WERROR:-OFF}"; }
mper_hash="$(mper_build_hash)"
mper_built="$(cat "$mper_stamp" 2>/dev/null || true)"
# a CPU-only request is met by a build of the same sources with the CUDA kernels too
if [ "${MPER_KEEP_CUDA_BUILD:-}" = 1 ] && [ "$mper_built" = "$(MPER_WITH_CUDA='' mper_build_hash)" ]; then
  mper_hash="$mper_built"
fi
if [ "$mper_built" != "$mper_hash" ] \
    || ! python -c "import importlib.metadata as m; m.version('mper')" 2>/dev/null; then
  echo "setup: building and installing mper (sources new or changed; a few minutes)"
  rm -f "$mper_stamp" "$mper_extras_stamp"  # a new pyproject.toml may ask for other extras
  python -m pip install --quiet "$mper_repo"
  echo "$mper_hash" >"$mper_stamp"
fi
mper_missing_extras="$(python "$mper_repo/scripts/extras.py" missing "$mper_extras" "$mper_extras_stamp")"
if [ -n "$mper_missing_extras" ]; then
  echo "setup: installing the extras $mper_missing_extras"
  # shellcheck disable=SC2046
  python -m pip install --quiet $(python "$mper_repo/scripts/extras.py" requirements "$mper_missing_extras")
  echo "$mper_missing_extras" | tr ',' '\n' >>"$mper_extras_stamp"
fi
