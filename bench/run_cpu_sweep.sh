#!/usr/bin/env bash
# The CPU training steps (lenet_bn, vgg_small; per-phase, per-layer profiles)
# and the quick suite's ops, each at 1 and 2 threads, ours against PyTorch,
# recorded under bench/results/ as cpu-{step,quick}-sweep-<UTC date><SUFFIX>.{json,md,png}
# (docs/cpu-performance.md). Run it on a quiet machine: the JSON records the load.
# Usage: [THREADS=1,2] [SUFFIX=-skylakex] bench/run_cpu_sweep.sh [more gpucnn bench options]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
THREADS=${THREADS:-1,2}
day=$(date -u +%Y-%m-%d)
out=bench/results
step="cpu-step-sweep-$day${SUFFIX:-}"
quick="cpu-quick-sweep-$day${SUFFIX:-}"
"$PY" -m gpucnn bench --device cpu --e2e only --e2e-model lenet_bn vgg_small --profile \
  --sweep-threads "$THREADS" --repeats 15 --warmup 3 \
  --json "$out/$step.json" --markdown "$out/$step.md" --plot "$out/$step.png" "$@"
"$PY" -m gpucnn bench --device cpu --suite quick --sweep-threads "$THREADS" --repeats 21 --warmup 3 \
  --json "$out/$quick.json" --markdown "$out/$quick.md" --plot "$out/$quick.png" "$@"
