#!/usr/bin/env bash
# Sets up the environment (scripts/setup.sh) and runs the test suite. Extra arguments go
# to pytest, e.g. `scripts/test.sh -m cuda` for the GPU tests or `-m slow` for long runs.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
python -m pytest -q "$@"
