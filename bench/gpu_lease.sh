#!/usr/bin/env bash
# What one lease of a GPU machine runs, from the repository root, with the
# machine's own python3 (CuPy, NumPy, Numba, PyTorch, pytest) and no install:
#
#   bash bench/gpu_lease.sh OUT_DIR STEP...
#
# Steps (in the order given; a step written bg+STEP runs in the background,
# and the script waits for those at the end):
#   check[:SUITE]   python -m gpucnn.devtools.gpu_check (pytest -m gpu, compute-sanitizer
#                   memcheck + racecheck, bench --suite SUITE: default full,
#                   which outlasts a 10-minute call; none for no benchmark)
#   train:NAME:ARGS gpucnn train --device gpu ARGS (ARGS comma-separated),
#                   log, metrics and plot to OUT_DIR/train_NAME.{log,json,png}
#   stepcheck       bash bench/gpu_step_check.sh OUT_DIR/step_check check (issue 11:
#                   graphs, host reads, step times vs PyTorch, bf16/fp16 accuracy)
#   measure         bash bench/gpu_step_check.sh OUT_DIR/measure e2e tta (issue 11 item 6:
#                   bench --e2e modes x precisions x batches, whole epochs, time to 93%)
#   bench:SUITE[:ARGS] gpucnn bench --suite SUITE ARGS, at most BENCH_MAX_SECONDS
#                   (default 3) per measurement, to OUT_DIR/bench_SUITE.{log,json}
# Timings are only meaningful from steps that ran alone.
# Fashion-MNIST is read from .data/fashion-mnist (carried, git-ignored).
# Every step has a time limit (STEP_TIMEOUT, default 170 s; gpu_check applies
# it to each of its own steps): choose it so that the steps of one command
# end inside the machine's per-call limit, with their logs written.
set -u
out=${1:?usage: bash bench/gpu_lease.sh OUT_DIR STEP...}; shift
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 GPUCNN_DATA_DIR=$PWD/.data/fashion-mnist
limit=${STEP_TIMEOUT:-170}
py=python3
{ nvidia-smi; $py -c "import cupy, numpy, numba, torch; print('cupy', cupy.__version__, 'numpy', numpy.__version__, 'numba', numba.__version__, 'torch', torch.__version__, 'cudnn', torch.backends.cudnn.version())"; nproc; } > "$out/env.txt" 2>&1
run_step() {
  local step=$1
  echo "== $step ($(date +%T))"
  case $step in
    check*)
      suite=${step#check}; suite=${suite#:}
      $py -m gpucnn.devtools.gpu_check --out "$out/check" --data-dir "$GPUCNN_DATA_DIR" \
        --bench-suite "${suite:-full}" --step-timeout "$limit" ;;
    train:*)
      rest=${step#train:}; name=${rest%%:*}; args=${rest#*:}
      timeout "$limit" $py -m gpucnn train --device gpu --data-dir "$GPUCNN_DATA_DIR" --no-progress \
        --metrics-out "$out/train_$name.json" --plot "$out/train_$name.png" ${args//,/ } > "$out/train_$name.log" 2>&1
      echo "== $step: exit $?"; tail -2 "$out/train_$name.log" ;;
    bench:*)
      rest=${step#bench:}; suite=${rest%%:*}; args=; [ "$rest" != "$suite" ] && args=${rest#*:}
      timeout "$limit" $py -m gpucnn bench --suite "$suite" --max-seconds "${BENCH_MAX_SECONDS:-3}" \
        --json "$out/bench_$suite.json" ${args//,/ } > "$out/bench_$suite.log" 2>&1
      echo "== $step: exit $?" ;;
    stepcheck)
      bash bench/gpu_step_check.sh "$out/step_check" check; echo "== $step: exit $?" ;;
    measure)
      bash bench/gpu_step_check.sh "$out/measure" e2e tta; echo "== $step: exit $?" ;;
    *) echo "unknown step $step" ;;
  esac
}
for step in "$@"; do
  case $step in
    bg+*) run_step "${step#bg+}" & ;;
    *) run_step "$step" ;;
  esac
done
wait
