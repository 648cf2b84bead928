#!/usr/bin/env bash
# What one lease of a GPU machine runs, from the repository root, with the
# machine's own python3 (CuPy, NumPy, Numba, PyTorch, pytest) and no install:
#
#   bash bench/gpu_lease.sh OUT_DIR STEP...
#
# Steps (in the order given):
#   check[:SUITE]   python -m gpucnn.gpu_check (pytest -m gpu, compute-sanitizer
#                   memcheck + racecheck, bench --suite SUITE, default full)
#   train:NAME:ARGS gpucnn train --device gpu ARGS (ARGS comma-separated),
#                   log and metrics to OUT_DIR/train_NAME.{log,json}
#   e2e             bench --e2e only (a training step vs PyTorch)
# Fashion-MNIST is read from .data/fashion-mnist (carried, git-ignored).
# Every step has a time limit (STEP_TIMEOUT, default 170 s) so that the whole
# command ends inside the machine's per-call limit with its logs written.
set -u
out=${1:?usage: bash bench/gpu_lease.sh OUT_DIR STEP...}; shift
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 GPUCNN_DATA_DIR=$PWD/.data/fashion-mnist
limit=${STEP_TIMEOUT:-170}
py=python3
{ nvidia-smi; $py -c "import cupy, numpy, numba, torch; print('cupy', cupy.__version__, 'numpy', numpy.__version__, 'numba', numba.__version__, 'torch', torch.__version__, 'cudnn', torch.backends.cudnn.version())"; nproc; } > "$out/env.txt" 2>&1
for step in "$@"; do
  echo "== $step ($(date +%T))"
  case $step in
    check*)
      suite=${step#check}; suite=${suite#:}
      $py -m gpucnn.gpu_check --out "$out/check" --data-dir "$GPUCNN_DATA_DIR" \
        --bench-suite "${suite:-full}" --step-timeout "$limit" ;;
    train:*)
      rest=${step#train:}; name=${rest%%:*}; args=${rest#*:}
      timeout "$limit" $py -m gpucnn train --device gpu --data-dir "$GPUCNN_DATA_DIR" --no-progress \
        --metrics-out "$out/train_$name.json" ${args//,/ } > "$out/train_$name.log" 2>&1
      echo "exit $?"; tail -3 "$out/train_$name.log" ;;
    e2e)
      timeout "$limit" $py -m gpucnn bench --e2e only --json "$out/e2e.json" > "$out/e2e.log" 2>&1
      echo "exit $?"; tail -15 "$out/e2e.log" ;;
    *) echo "unknown step $step" ;;
  esac
done
