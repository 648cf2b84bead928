"""Where the host time of a GPU training step goes: cProfile over N steps of
a model (forward, cross-entropy, backward, Adam), the GPU synchronized once
per step, after a warm-up that compiles every kernel.

    python bench/profile_gpu_step.py --model lenet_bn --batch 128 --steps 50

Prints the step time (the median over N steps, each ending in a device sync)
and the 30 functions with the most own time (--no-profile: only the step
time). To compare two checkouts, run each in turn in one session (PYTHONPATH
picks the gpucnn); both need gpucnn.benchmark.e2e.gpucnn_step with its `opt`
argument (commit f792033 and later).
"""
import argparse
import cProfile
import pstats
import time

import numpy as np

from gpucnn import backend, models, nn, optim
from gpucnn.benchmark.e2e import gpucnn_step


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="lenet_bn")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--no-profile", action="store_true", help="only the step time")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    model = models.build(args.model).to_gpu()
    x = backend.to_gpu(rng.standard_normal((args.batch, 1, 28, 28), dtype=np.float32))
    y = backend.to_gpu(rng.integers(0, 10, args.batch))
    step = gpucnn_step(model, nn, optim, x, y, opt=optim.Adam(model.parameters(), lr=1e-3))
    for _ in range(5):
        step()
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    plain = float(np.median(times))
    print(f"{args.model} batch {args.batch}: {plain * 1e3:.2f} ms/step (median) without the profiler", flush=True)
    if args.no_profile:
        return
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(args.steps):
        step()
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
