#!/usr/bin/env bash
# The fast checks, run by CI before the tests: lint, import order and formatting (ruff,
# scripts included), types (mypy: every function of the package typed, stricter still on mper.ops
# and mper.data), C++/CUDA format (clang-format), and the documentation site, built
# strictly so that a broken link, a missing page or a docstring the API reference cannot
# read fails. Needs the tools of the `lint` and `docs` extras: `pip install ".[lint,docs]"`,
# or MPER_EXTRAS=test,lint,docs scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
ruff check python tests benchmarks examples scripts
ruff format --check python tests benchmarks examples scripts
mypy
find csrc \( -name '*.h' -o -name '*.cpp' -o -name '*.cu' -o -name '*.cuh' \) -print0 \
  | xargs -0 clang-format --dry-run --Werror
# the site goes to .site/ (git-ignored); NO_MKDOCS_2_WARNING silences mkdocs-material's banner
NO_MKDOCS_2_WARNING=1 mkdocs build --strict
