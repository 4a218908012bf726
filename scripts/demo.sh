#!/usr/bin/env bash
# The demo: sets up the environment (scripts/setup.sh), writes a small synthetic dataset,
# trains MPER on it with the `demo` preset (copy-paste pre-training, prototype
# initialisation, self-training, evaluation of the best checkpoint on the test cases)
# and, at the same time, the labeled-only network on the same labeled cases for
# comparison, and prints both results. Sized for a CPU.
#
#   scripts/demo.sh [acdc|la] [mper-train options...]     (default: acdc)
#
# Writes data/<dataset>-demo/ and runs/demo-<dataset>/{mper,labeled-only}/ under the
# current folder; extra options go to both mper-train calls, e.g. --set pretrain.iterations=100.
# The two runs take one thread each (OMP_NUM_THREADS, if set, says how many): networks this
# small gain less from a second thread than from a second run on the other core.
#
# The environment is reused as scripts/test.sh reuses it (scripts/setup.sh says when it
# builds): with no NVIDIA GPU visible, a first build leaves out the CUDA kernels, which
# the demo would not use; MPER_WITH_CUDA=AUTO (or ON) scripts/demo.sh builds them anyway.
set -euo pipefail
dataset=acdc
if [ $# -gt 0 ] && [[ "$1" != -* ]]; then
  dataset="$1"
  shift
fi
case "$dataset" in
  acdc) synth=(--cases 30 --size 64 64) ;;
  la) synth=(--cases 30 --size 40 40 36) ;;
  *) echo "demo.sh: unknown dataset '$dataset'; use acdc or la" >&2; exit 2 ;;
esac
: "${MPER_EXTRAS=}"  # the demo needs none of the extras
export MPER_EXTRAS
. "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
data="data/$dataset-demo"
runs="runs/demo-$dataset"
rm -rf "$data" "$runs"  # the previous demo's data and runs, if any (mper-data synth writes only into a new folder)
mper-data synth --dataset "$dataset" --out "$data" "${synth[@]}" --seed 0
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
mkdir -p "$runs"
echo "training MPER here and the labeled-only network alongside it (its output: $runs/labeled-only.out)"
mper-train --dataset "$dataset" --data-root "$data" --preset demo --out "$runs/labeled-only" \
  --baseline labeled-only "$@" >"$runs/labeled-only.out" 2>&1 &
baseline=$!
# the shell starts a background job with Ctrl-C ignored, but mper-train installs its own handler, so
# Ctrl-C reaches both runs; when the demo ends otherwise (a failed MPER run), stop this one with it
trap 'kill "$baseline" 2>/dev/null || true' EXIT
status=0
mper-train --dataset "$dataset" --data-root "$data" --preset demo --out "$runs/mper" "$@" || status=$?
if [ "$status" -eq 130 ]; then
  # Ctrl-C reached the labeled-only run too: let it save its state (a signal from here now
  # would be its second, which stops it at once), for a minute at most
  for _ in $(seq 60); do
    kill -0 "$baseline" 2>/dev/null || break
    sleep 1
  done
  # both runs saved their state, but mper-train is on the PATH only in the demo's environment
  echo "demo.sh: interrupted; to resume the runs, activate the demo's environment first (. $mper_venv/bin/activate)," \
    "then run the 'continue with' command above and the one at the end of $runs/labeled-only.out;" \
    "scripts/demo.sh again starts over" >&2
fi
[ "$status" -eq 0 ] || exit "$status"
echo "waiting for the labeled-only network"
if ! wait "$baseline"; then
  tail -n 20 "$runs/labeled-only.out" >&2
  echo "demo.sh: the labeled-only run failed; its output is in $runs/labeled-only.out" >&2
  exit 1
fi
echo "labeled-only network, test metrics ($runs/labeled-only/metrics.md):"
cat "$runs/labeled-only/metrics.md"
python - "$runs" <<'EOF'
import json
import sys
from pathlib import Path

runs = Path(sys.argv[1])
dice = {name: json.loads((runs / name / "metrics.json").read_text())["summary"]["mean"]["dice"]["mean"]
        for name in ("mper", "labeled-only")}
print(f"\nmean Dice on the synthetic test cases: MPER {100 * dice['mper']:.2f}, "
      f"labeled-only {100 * dice['labeled-only']:.2f}")
print(f"runs, with metrics.md and figures/: {runs}/mper, {runs}/labeled-only")
EOF
