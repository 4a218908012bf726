#!/usr/bin/env bash
# The fast checks, run by CI before the tests: lint and import order (ruff, scripts
# included), types (mypy: every function of the package typed, stricter still on mper.ops
# and mper.data), C++/CUDA format (clang-format). Needs the tools of
# the `lint` extra: `pip install ".[lint]"`, or MPER_EXTRAS=test,lint scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
ruff check python tests benchmarks examples scripts
mypy
find csrc \( -name '*.h' -o -name '*.cpp' -o -name '*.cu' -o -name '*.cuh' \) -print0 \
  | xargs -0 clang-format --dry-run --Werror
