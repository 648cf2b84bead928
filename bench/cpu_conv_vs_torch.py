"""Our CPU conv path against PyTorch's CPU conv, side by side in one process.

    .venv/bin/python bench/cpu_conv_vs_torch.py [--threads 1 2] [--repeats 21] [--json out.json]

For each layer and thread count: forward, backward-data and backward-filter of
ours (gpucnn.functional, argument checks included) and of PyTorch (F.conv2d and
aten.convolution_backward), called in turn (ours, torch, ours, torch, ...) so
that load from other processes hits both alike. time.perf_counter per call; a
repeat's total is the sum of its three directions. The table reports the
median and the best (min) of the totals and their ratio ours / torch; the
load average (os.getloadavg) is printed next to every layer, because the
machine is shared. Thread counts are set for Numba, the BLAS under NumPy
(via threadpoolctl, a dependency) and PyTorch.
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import gpucnn.functional as F  # noqa: E402
from gpucnn.benchmark import env  # noqa: E402

# name: (N, C, H, K, R, padding), square inputs and kernels, stride 1
LAYERS = {
    "lenet1": (64, 1, 28, 6, 5, 2),
    "lenet2": (64, 6, 14, 16, 5, 0),
    "cifar1": (64, 3, 32, 32, 3, 1),
    "cifar2": (64, 32, 16, 64, 3, 1),
    "cifar3": (64, 64, 8, 128, 3, 1),
    "lenet_bn2": (128, 32, 14, 64, 3, 1),     # lenet_bn's second conv (the default model)
    "small4x4": (16, 256, 4, 256, 3, 1),      # small image, many channels
    "pointwise": (16, 256, 14, 256, 1, 0),    # a 1x1 conv
}
DIRECTIONS = ("fwd", "bwd_data", "bwd_filter")


def _calls(torch, N, C, H, K, R, pad):
    """{direction: (ours, torch)} zero-argument callables on one set of inputs."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C, H, H), dtype=np.float32)
    w = rng.standard_normal((K, C, R, R), dtype=np.float32)
    dy = rng.standard_normal(F.conv2d(x, w, padding=pad).shape, dtype=np.float32)
    tx, tw, tdy = (torch.from_numpy(a) for a in (x, w, dy))
    aten = torch.ops.aten

    def t_back(which):
        mask = [which == 0, which == 1, False]
        return lambda: aten.convolution_backward(tdy, tx, tw, None, [1, 1], [pad, pad], [1, 1],
                                                 False, [0, 0], 1, mask)[which]
    return {
        "fwd": (lambda: F.conv2d(x, w, padding=pad),
                lambda: torch.nn.functional.conv2d(tx, tw, None, 1, pad)),
        "bwd_data": (lambda: F.conv2d_backward_data(dy, w, x.shape, padding=pad), t_back(0)),
        "bwd_filter": (lambda: F.conv2d_backward_filter(dy, x, w.shape, padding=pad), t_back(1)),
    }


def _check(calls):
    """Max error of ours against PyTorch, relative to the largest value, per direction."""
    out = {}
    for d, (ours, theirs) in calls.items():
        a, b = ours(), theirs().numpy()
        out[d] = float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))
    return out


def _time(calls, repeats, warmup):
    """Per-repeat times (seconds) of ours and torch, interleaved: {(who, direction): [..]},
    direction "total" the sum of a repeat's three."""
    for _ in range(warmup):
        for ours, theirs in calls.values():
            ours(), theirs()
    times = {(who, d): [] for who in ("ours", "torch") for d in DIRECTIONS + ("total",)}
    for _ in range(repeats):
        for d, (ours, theirs) in calls.items():
            for who, fn in (("ours", ours), ("torch", theirs)):
                t0 = time.perf_counter()
                fn()
                times[who, d].append(time.perf_counter() - t0)
        for who in ("ours", "torch"):
            times[who, "total"].append(sum(times[who, d][-1] for d in DIRECTIONS))
    return times


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--layers", nargs="+", default=list(LAYERS), choices=list(LAYERS))
    ap.add_argument("--per-direction", action="store_true", help="also print each direction's best")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)

    torch, why = env.import_torch()   # OpenMP waiting passive: see env.OMP_WAIT_POLICY
    if torch is None:
        raise SystemExit(why)
    rows = []
    print(f"{'layer':8} {'thr':>3} {'ours med':>9} {'torch med':>9} {'ratio':>6}  "
          f"{'ours best':>9} {'torch best':>10} {'ratio':>6}  {'load1':>5} {'max rel err':>11}")
    for n in args.threads:
        with env.cpu_threads(n, torch):
            blas = env.blas_threads() or f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}"
            for name in args.layers:
                calls = _calls(torch, *LAYERS[name])
                err = max(_check(calls).values())
                t = _time(calls, args.repeats, args.warmup)
                med = {f"{who}/{d}": statistics.median(v) * 1e3 for (who, d), v in t.items()}
                best = {f"{who}/{d}": min(v) * 1e3 for (who, d), v in t.items()}
                load = os.getloadavg()[0]
                mo, mt, bo, bt = (m[f"{who}/total"] for m in (med, best) for who in ("ours", "torch"))
                print(f"{name:8} {n:3d} {mo:9.2f} {mt:9.2f} {mo / mt:6.2f}  {bo:9.2f} {bt:10.2f} "
                      f"{bo / bt:6.2f}  {load:5.1f} {err:11.1e}", flush=True)
                if args.per_direction:
                    print("         best ms, ours/torch: " + "  ".join(
                        f"{d} {best[f'ours/{d}']:.2f}/{best[f'torch/{d}']:.2f}" for d in DIRECTIONS))
                rows.append({"layer": name, "shape": LAYERS[name], "threads": n, "median_ms": med,
                             "best_ms": best, "load1": load, "max_rel_err": err, "blas": blas})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "repeats": args.repeats, "directions": DIRECTIONS}, f, indent=1)


if __name__ == "__main__":
    main()
