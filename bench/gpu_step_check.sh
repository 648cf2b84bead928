#!/usr/bin/env bash
# Issue 11 (GPU training step): the exact GPU commands that confirm or refute
# what the CPU tests emulate. Not yet run on a GPU. From the repository root:
#
#   bash bench/gpu_step_check.sh OUT_DIR [PART...]
#
# PART: check (items 1-3 below, about 7-9 minutes on an H200, estimate), e2e
# (item 4, about 5-6 minutes, at most 11 by its limits), tta (item 5, about
# 4-7 minutes, at most 8); all estimates; default: all
# three. The device lease is 15 minutes, so run `check` and `e2e tta` in two
# leases if one does not fit.
#
# 1. bench/gpu_step_check.py: graph == eager bitwise (SGD momentum, Adam +
#    StepLR, a pool-stress variant for cupy#9655), blocking host reads per
#    epoch (graph and deferred), step times of gpucnn per-step reads /
#    deferred / graph / graph+bf16 against PyTorch eager and PyTorch CUDA
#    graphs (lenet_bn, vgg_small; batch 128, 512) -> OUT/gpu_step.json
# 2. Fashion-MNIST lenet_bn, 3 epochs each: fp32 eager (reads per step: the
#    old path), fp32 graph, bf16 graph, fp16 (eager: the GradScaler reads on
#    the host), all with --dropout 0 (dropout cannot be captured)
#    -> OUT/train_*.json; the bf16/fp16 test accuracies should be
#    within 0.5 points of fp32's, and the graph run's epoch seconds lower.
# 3. The input pipeline and GPU augmentations (docs/gpu-step.md section 5):
#    pytest -m gpu of tests/test_batch_augment.py and tests/test_input_pipeline.py
#    (CuPy draw statistics, pipeline == no pipeline bitwise) -> OUT/pipeline_tests.log;
#    fp32 graph with --input-pipeline off (compare its epoch seconds with
#    fp32_graph, which has the pipeline on by default), and --augment crop flip
#    cutout with the augmentations on the GPU and on the CPU (accuracy and
#    epoch seconds side by side). Adds about 2 minutes (estimate).
# 4. Issue 11 item 6, `gpucnn bench --e2e`, every variant side by side in one
#    run per model (docs/gpu-step.md section 7): lenet_bn and vgg_small at batch 128 and 512, fp32 and
#    bf16; ours eager / deferred / graph against PyTorch eager and PyTorch
#    with the whole step in a CUDA graph; plus images/s of one whole
#    Fashion-MNIST epoch per (model, batch), ours and PyTorch's
#    -> OUT/e2e_modes_<model>.{json,md} (limit 200 s each); then torch.compile
#    (its compile time is long) for each model at batch 128, fp32 and bf16 -> OUT/e2e_compile_<model>.{json,md}
#    (limit 150 s each).
# 5. Time to 93% Fashion-MNIST test accuracy, the README's best recipe
#    (vgg_small, 30 epochs, crop flip, cosine, label smoothing 0.1), gpucnn then
#    a PyTorch script of the same recipe, each stopping at the target
#    -> OUT/time_to_accuracy.json (bench/time_to_accuracy.py; limit 480 s; the
#    JSON is written after each side).
# Each step has its own time limit (STEP_TIMEOUT, default 150 s; the
# measurements' limits are stated at each).
set -u
out=${1:?usage: bash bench/gpu_step_check.sh OUT_DIR}
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 GPUCNN_DATA_DIR=${GPUCNN_DATA_DIR:-$PWD/.data/fashion-mnist}
limit=${STEP_TIMEOUT:-150}
py=python3
shift
parts=${*:-check e2e tta}
has() { case " $parts " in *" $1 "*) return 0;; esac; return 1; }
if has check; then
echo "== gpu_step_check.py ($(date +%T))"
timeout $((limit * 2 + 60)) $py bench/gpu_step_check.py --out "$out" --steps 100 > "$out/gpu_step.log" 2>&1
echo "== exit $?"; tail -6 "$out/gpu_step.log"
train() {  # name, then gpucnn train arguments
  local name=$1; shift
  echo "== train $name ($(date +%T))"
  timeout "$limit" $py -m gpucnn train --device gpu --dataset fashion-mnist --data-dir "$GPUCNN_DATA_DIR" \
    --model lenet_bn --dropout 0 --epochs 3 --batch-size 128 --no-progress --seed 0 \
    --metrics-out "$out/train_$name.json" "$@" > "$out/train_$name.log" 2>&1
  echo "== exit $?"; tail -2 "$out/train_$name.log"
}
train fp32_eager --precision fp32 --cuda-graph off
train fp32_graph --precision fp32 --cuda-graph on
train bf16_graph --precision bf16 --cuda-graph on
train fp16 --precision fp16 --cuda-graph auto
echo "== pytest -m gpu: input pipeline and augmentations ($(date +%T))"
timeout "$limit" $py -m pytest -q -m gpu tests/test_batch_augment.py tests/test_input_pipeline.py \
  > "$out/pipeline_tests.log" 2>&1
echo "== exit $?"; tail -3 "$out/pipeline_tests.log"
train fp32_graph_no_pipeline --precision fp32 --cuda-graph on --input-pipeline off
train augment_gpu --precision fp32 --cuda-graph on --augment crop flip cutout --gpu-augment on
train augment_cpu --precision fp32 --cuda-graph on --augment crop flip cutout --gpu-augment off
$py - "$out" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
for name in ("fp32_eager", "fp32_graph", "bf16_graph", "fp16", "fp32_graph_no_pipeline", "augment_gpu",
             "augment_cpu"):
    f = out / f"train_{name}.json"
    if f.exists():
        m = json.loads(f.read_text())
        print(f"{name:>11}: test accuracy {m['test_accuracy']:.4f}, epoch seconds "
              f"{[round(e['seconds'], 2) for e in m['epochs']]}")
    else:
        print(f"{name:>11}: no metrics (see train_{name}.log)")
PY
fi
if has e2e; then
  for model in lenet_bn vgg_small; do   # one run per model: a time-out loses only that model's JSON
    echo "== bench --e2e $model: batches x precisions x modes, whole epochs ($(date +%T))"
    timeout 200 $py -m gpucnn bench --device gpu --e2e only --no-cpu-baseline --e2e-model $model \
      --e2e-batch 128 512 --e2e-precision fp32 bf16 --e2e-mode eager deferred graph --repeats 10 --warmup 2 \
      --e2e-steps 20 --e2e-epoch --e2e-data-dir "$GPUCNN_DATA_DIR" \
      --json "$out/e2e_modes_$model.json" --markdown "$out/e2e_modes_$model.md" > "$out/e2e_modes_$model.log" 2>&1
    echo "== exit $?"; grep -A12 "our step time / PyTorch" "$out/e2e_modes_$model.log"
  done
  for model in lenet_bn vgg_small; do
    echo "== bench --e2e torch.compile $model ($(date +%T))"
    timeout 150 $py -m gpucnn bench --device gpu --e2e only --no-cpu-baseline --e2e-model $model \
      --e2e-batch 128 --e2e-precision fp32 bf16 --e2e-mode eager graph compile --repeats 10 --warmup 2 \
      --json "$out/e2e_compile_$model.json" --markdown "$out/e2e_compile_$model.md" \
      > "$out/e2e_compile_$model.log" 2>&1
    echo "== exit $?"; grep -A6 "our step time / PyTorch" "$out/e2e_compile_$model.log"
  done
fi
if has tta; then
  echo "== time to 93% test accuracy, gpucnn then PyTorch ($(date +%T))"
  timeout 480 $py bench/time_to_accuracy.py --out "$out/time_to_accuracy.json" --device gpu \
    --dataset fashion-mnist --data-dir "$GPUCNN_DATA_DIR" > "$out/time_to_accuracy.log" 2>&1
  echo "== exit $?"; tail -3 "$out/time_to_accuracy.log"
fi
