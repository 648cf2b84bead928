#!/usr/bin/env bash
# The CPU quick suite, recorded under bench/results/ as
# cpu-quick-t<threads>-<host>-<UTC date>.{json,md,png}.
# Usage: [THREADS=1] bench/run_quick.sh [more gpucnn bench options]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
THREADS=${THREADS:-$(nproc)}
name="cpu-quick-t${THREADS}-$(hostname -s)-$(date -u +%Y-%m-%d)"
"$PY" -m gpucnn bench --suite quick --device cpu --threads "$THREADS" --repeats 30 --warmup 3 \
  --json "bench/results/$name.json" --markdown "bench/results/$name.md" \
  --plot "bench/results/$name.png" "$@"
