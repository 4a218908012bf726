#!/usr/bin/env bash
# Sets up the environment (scripts/setup.sh), writes a small synthetic ACDC-like dataset,
# trains MPER on it with the `demo` preset (copy-paste pre-training, prototype
# initialisation, self-training), evaluates the best checkpoint on the test patients and
# prints the metrics table; figures and the rest of the run are in runs/demo.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
rm -rf runs/demo  # the previous demo run, if any
mper-data synth --dataset acdc --out data/acdc-demo --cases 30 --size 64 64 --seed 0
mper-train --dataset acdc --data-root data/acdc-demo --preset demo --out runs/demo "$@"
echo "figures: runs/demo/figures/"
