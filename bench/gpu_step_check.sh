#!/usr/bin/env bash
# Issue 11 (GPU training step): the exact GPU commands that confirm or refute
# what the CPU tests emulate. Not yet run on a GPU. From the repository root:
#
#   bash bench/gpu_step_check.sh OUT_DIR        # about 7-9 minutes on an H200 (estimate)
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
# Each step has its own time limit (STEP_TIMEOUT, default 150 s).
set -u
out=${1:?usage: bash bench/gpu_step_check.sh OUT_DIR}
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 GPUCNN_DATA_DIR=${GPUCNN_DATA_DIR:-$PWD/.data/fashion-mnist}
limit=${STEP_TIMEOUT:-150}
py=python3
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
