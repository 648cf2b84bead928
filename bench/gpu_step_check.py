"""Issue 11's GPU check: one short run that confirms (or refutes) what the CPU
tests can only emulate. Not yet run on a GPU.

    python3 bench/gpu_step_check.py --out OUT [--steps 200] [--quick]

Writes OUT/gpu_step.json and prints a table. In order of value:
1. graph == eager, bitwise, on the GPU (same kernels): Trainer(cuda_graph=True)
   against Trainer(cuda_graph=False, sync="deferred") for SGD momentum and
   Adam under StepLR, lenet_bn without dropout, 3 epochs with a smaller last
   batch; then the same after stressing the memory pool between replays
   (cupy#9655: blocks freed after capture refilled with NaN by other arrays).
2. host reads per step: backend.item/to_cpu counted during a graph epoch and
   a deferred eager epoch (expect 1 per epoch), and the capture itself (a
   synchronizing call inside the step makes the capture fail).
3. step times, side by side in one process (median of 5 epochs of --steps
   steps of one device-resident batch, after a warm-up epoch): gpucnn per-step
   reads (the old mode), deferred eager, graph, graph+bf16, deferred and graph
   with gpucnn.nn.fuse (fused conv/BN + ReLU epilogues); PyTorch eager and
   PyTorch with a CUDA graph (torch.cuda.graph), same model, SGD momentum 0.9,
   TF32 off on both sides; lenet_bn and vgg_small at batch 128 and 512.
(Accuracy of bf16/fp16 runs: gpucnn train steps in bench/gpu_step_check.sh.)
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gpucnn import backend, models, optim  # noqa: E402
from gpucnn import random as grandom  # noqa: E402
from gpucnn.benchmark import step_modes  # noqa: E402
from gpucnn.trainer import Trainer  # noqa: E402

LR, MOMENTUM = step_modes.LR, step_modes.MOMENTUM
DEVICE = "gpu"


def _model(name, seed=0):
    grandom.manual_seed(seed)
    return models.build(name, 1, 10, 28, dropout=0.0)


def _optimizer(kind, model):
    if kind == "sgd":
        return optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    return optim.Adam(model.parameters(), lr=1e-3)


def _batches(n_batches, batch, last, seed=0):
    rng = np.random.default_rng(seed)
    sizes = [batch] * n_batches + ([last] if last else [])
    return [(rng.standard_normal((b, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, b)) for b in sizes]


def graph_equals_eager(kind, stress=False):
    data = _batches(6, 64, 17)
    states = []
    for graph in (False, True):
        model = _model("lenet_bn")
        opt = _optimizer(kind, model)
        trainer = Trainer(model, opt, scheduler=optim.StepLR(opt, 1, gamma=0.5), device=DEVICE,
                          sync="deferred", cuda_graph=graph)
        records = []
        for _ in range(3):
            records.append(trainer.train_epoch(data))
            if stress and graph and DEVICE == "gpu":   # hand freed blocks to new arrays and poison them
                import cupy
                junk = [cupy.full(s, np.nan, np.float32) for s in (64 * 6 * 28 * 28, 64 * 16 * 10 * 10, 4096) * 8]
                del junk
        states.append(({k: backend.to_cpu(v) for k, v in model.state_dict().items()},
                       [(r["loss"], r["accuracy"]) for r in records],
                       trainer.step_graph.launches if trainer.step_graph else 0))
    (a, ra, _), (b, rb, launches) = states
    diff = max(float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) for k in a)
    return {"optimizer": kind, "stress_pool": stress, "bitwise_equal": all(np.array_equal(a[k], b[k]) for k in a),
            "max_abs_diff": diff, "metrics_equal": ra == rb, "graph_launches": launches}


def host_reads_per_epoch(graph):
    counts = {"reads": 0}
    item, to_cpu = backend.item, backend.to_cpu

    def counted(fn):
        def wrapper(*a, **k):
            counts["reads"] += 1
            return fn(*a, **k)
        return wrapper
    model = _model("lenet_bn")
    trainer = Trainer(model, _optimizer("sgd", model), device=DEVICE, sync="deferred", cuda_graph=graph)
    data = _batches(20, 128, 0)
    trainer.train_epoch(data)                      # warm-up and capture
    backend.item, backend.to_cpu = counted(item), counted(to_cpu)
    try:
        trainer.train_epoch(data)
    finally:
        backend.item, backend.to_cpu = item, to_cpu
    return {"graph": graph, "steps": len(data), "blocking_reads_in_epoch": counts["reads"]}


def _median_step(run, steps):
    run()                                   # warm-up: compiles, captures
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) / steps)
    return statistics.median(times)


def gpucnn_step_time(name, batch, steps, mode, precision="fp32", fuse=False):
    """Our step in gpucnn.benchmark.step_modes' mode ("per-step reads" = its eager)."""
    x, y = step_modes.batch((batch, 1, 28, 28))
    return _median_step(step_modes.ours(_model(name), x, y, "eager" if mode == "per-step reads" else mode,
                                        precision, DEVICE, steps, fuse), steps)


def torch_step_time(name, batch, steps, graph):
    import torch
    x, y = step_modes.batch((batch, 1, 28, 28))
    return _median_step(step_modes.theirs(torch, _model(name), x, y, "graph" if graph else "eager",
                                          "fp32", "cuda", steps), steps)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--quick", action="store_true", help="lenet_bn at batch 128 only")
    ap.add_argument("--device", default="gpu", help="cpu: a smoke test of steps 1-2 (the stand-in graph)")
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device
    os.makedirs(args.out, exist_ok=True)
    result = {"device": backend.device_info(), "correctness": [], "host_reads": [], "step_ms": []}

    def save():
        with open(os.path.join(args.out, "gpu_step.json"), "w") as f:
            json.dump(result, f, indent=2, default=str)

    for kind, stress in (("sgd", False), ("adam", False), ("sgd", True)):
        try:
            result["correctness"].append(graph_equals_eager(kind, stress))
        except Exception as exc:  # record and go on: every later step still has value
            result["correctness"].append({"optimizer": kind, "stress_pool": stress, "error": repr(exc)})
        print(result["correctness"][-1], flush=True)
        save()
    for graph in (False, True):
        try:
            result["host_reads"].append(host_reads_per_epoch(graph))
        except Exception as exc:
            result["host_reads"].append({"graph": graph, "error": repr(exc)})
        print(result["host_reads"][-1], flush=True)
        save()
    if DEVICE != "gpu":
        return
    shapes = [("lenet_bn", 128)] if args.quick else [("lenet_bn", 128), ("lenet_bn", 512), ("vgg_small", 128),
                                                     ("vgg_small", 512)]
    for name, batch in shapes:
        row = {"model": name, "batch": batch}
        for label, fn in (("gpucnn per-step reads", lambda: gpucnn_step_time(name, batch, args.steps, "per-step reads")),
                          ("gpucnn deferred", lambda: gpucnn_step_time(name, batch, args.steps, "deferred")),
                          ("gpucnn graph", lambda: gpucnn_step_time(name, batch, args.steps, "graph")),
                          ("gpucnn graph bf16", lambda: gpucnn_step_time(name, batch, args.steps, "graph", "bf16")),
                          ("gpucnn deferred fused",
                           lambda: gpucnn_step_time(name, batch, args.steps, "deferred", fuse=True)),
                          ("gpucnn graph fused", lambda: gpucnn_step_time(name, batch, args.steps, "graph", fuse=True)),
                          ("torch eager", lambda: torch_step_time(name, batch, args.steps, False)),
                          ("torch graph", lambda: torch_step_time(name, batch, args.steps, True))):
            try:
                row[label] = round(fn() * 1e3, 4)
            except Exception as exc:
                row[label] = repr(exc)
        result["step_ms"].append(row)
        print(row, flush=True)
        save()
    print("\nstep time (ms)          " + "  ".join(k for k in result["step_ms"][0] if k not in ("model", "batch")))
    for row in result["step_ms"]:
        print(f"{row['model']:>10} {row['batch']:>4}  " + "  ".join(str(v) for k, v in row.items()
                                                                    if k not in ("model", "batch")))


if __name__ == "__main__":
    main()
