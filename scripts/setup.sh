#!/usr/bin/env bash
# Creates (or reuses) a virtual environment and installs mper into it with the extras
# asked for, then leaves it activated. Sourced by scripts/demo.sh and scripts/test.sh.
#
# What the environment holds is reused: mper is built only when the environment has none,
# when the sources it was built from (csrc/, python/, CMakeLists.txt, pyproject.toml)
# have changed since, or when a build switch below is set to a value other than the one
# the environment's build was made with. A switch left unset keeps the environment's
# value, on a rebuild too. The sources' hash and the switches are kept in the environment
# (.mper-build). Extras are installed on their own, without a new build, when the
# environment lacks them (.mper-extras).
#
#   MPER_VENV    where the environment lives (default: .venv in the repository)
#   MPER_TORCH   the PyTorch requirement installed when the environment has no torch
#                (default: torch==2.13.0; on a machine without a GPU, e.g.
#                "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu").
#                mper requires torch >= 2.13, the version CI tests.
#   MPER_EXTRAS  the extras installed with mper, comma-separated (default: test; CI adds
#                lint; scripts/demo.sh needs none and sets it empty)
#   MPER_WERROR  ON builds the compiled core with warnings as errors (CI does); first
#                build's default OFF
#   MPER_WITH_CUDA  ON (the CUDA kernels, a CUDA compiler required), AUTO (the CUDA
#                kernels when a CUDA compiler is found) or OFF; the first build's default
#                is AUTO where nvidia-smi lists a GPU and OFF elsewhere, where the kernels
#                would go unused and take minutes to compile
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
  mper_torch="${MPER_TORCH:-torch==2.13.0}"
  echo "setup: installing PyTorch ($mper_torch)"
  # shellcheck disable=SC2086
  python -m pip install --quiet $mper_torch
fi
mper_extras="${MPER_EXTRAS-test}"
mper_stamp="$mper_venv/.mper-build"
mper_extras_stamp="$mper_venv/.mper-extras"
# the stamp's line: the sources' hash, then MPER_WERROR=... MPER_WITH_CUDA=... as built
mper_built_sources='' mper_built_werror='' mper_built_cuda=''
if [ -f "$mper_stamp" ]; then read -r mper_built_sources mper_built_werror mper_built_cuda <"$mper_stamp" || true; fi
mper_sources="$(python "$mper_repo/scripts/source_hash.py" "$mper_repo")"
mper_gpu_visible() { nvidia-smi -L 2>/dev/null | grep -q '^GPU'; }
# a switch left unset keeps the build's value; the first build's defaults otherwise
mper_werror="${MPER_WERROR:-${mper_built_werror#MPER_WERROR=}}"
mper_werror="MPER_WERROR=${mper_werror:-OFF}"
mper_cuda="${MPER_WITH_CUDA:-${mper_built_cuda#MPER_WITH_CUDA=}}"
if [ -z "$mper_cuda" ]; then
  if mper_gpu_visible; then mper_cuda=AUTO; else mper_cuda=OFF; fi
fi
mper_cuda="MPER_WITH_CUDA=$mper_cuda"
mper_why=''
if ! python -c "import importlib.metadata as m; m.version('mper')" 2>/dev/null || [ -z "$mper_built_sources" ]; then
  mper_why="no mper build in $mper_venv yet"
elif [ "$mper_sources" != "$mper_built_sources" ]; then
  mper_why="sources changed since the last build"
elif [ "$mper_werror $mper_cuda" != "$mper_built_werror $mper_built_cuda" ]; then
  mper_why="$mper_werror $mper_cuda asked for, built with $mper_built_werror $mper_built_cuda"
fi
if [ -n "$mper_why" ]; then
  echo "setup: building and installing mper with $mper_werror $mper_cuda ($mper_why; a few minutes)"
  rm -f "$mper_stamp" "$mper_extras_stamp"  # a new pyproject.toml may ask for other extras
  env "$mper_werror" "$mper_cuda" python -m pip install --quiet "$mper_repo"
  echo "$mper_sources $mper_werror $mper_cuda" >"$mper_stamp"
fi
mper_missing_extras="$(python "$mper_repo/scripts/extras.py" missing "$mper_extras" "$mper_extras_stamp")"
if [ -n "$mper_missing_extras" ]; then
  echo "setup: installing the extras $mper_missing_extras"
  # shellcheck disable=SC2046
  python -m pip install --quiet $(python "$mper_repo/scripts/extras.py" requirements "$mper_missing_extras")
  echo "$mper_missing_extras" | tr ',' '\n' >>"$mper_extras_stamp"
fi
