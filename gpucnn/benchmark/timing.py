"""Timers: time.perf_counter on the CPU, CUDA events on the GPU.

Both run `warmup` untimed calls first (Numba compiles, NVRTC compiles, cuDNN
autotunes, caches and clocks settle), then time `repeats` calls one by one and
report the median with two spreads: the interquartile range (q1..q3) and the
extremes (min..max). A `max_seconds` budget stops early, after at least one
timed call, so that a huge shape on a slow path does not stall a whole suite.

GPU: cupyx.profiler.benchmark records a CUDA event pair around each call on
the current stream, so the GPU times exclude Python launch overhead that
overlaps with earlier work. Inputs that fit in L2 would be timed hot; the
caller rotates through several copies (`rotation_count`, `rotating`) so that
the copy used by the next call was evicted by the ones before it.
The GPU branch ran on an H100 (bench/results/gpu-h100-2026-11-24).
"""
import itertools
import math
import time

import numpy as np

from .. import backend


def summarize(times_s, warmup, method):
    """Timing record (seconds) from per-call times."""
    t = np.asarray(times_s, dtype=np.float64)
    q1, med, q3 = np.percentile(t, [25, 50, 75])
    return {"median_s": float(med), "q1_s": float(q1), "q3_s": float(q3),
            "min_s": float(t.min()), "max_s": float(t.max()),
            "repeats": int(t.size), "warmup": int(warmup), "method": method}


def time_cpu(fn, repeats, warmup, max_seconds=math.inf):
    """Median etc. of `repeats` wall-clock calls of fn() after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times, spent = [], 0.0
    while len(times) < max(1, repeats) and (not times or spent < max_seconds):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        times.append(dt)
        spent += dt
    return summarize(times, warmup, "perf_counter")


def time_cpu_interleaved(fns, repeats, warmup, max_seconds=math.inf):
    """time_cpu for several functions called in turn (a, b, a, b, ...), so
    that a noisy neighbour or a clock change hits all of them alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times, spent = [[] for _ in fns], 0.0
    while len(times[0]) < max(1, repeats) and (not times[0] or spent < max_seconds):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
            spent += ts[-1]
    return [summarize(ts, warmup, "perf_counter") for ts in times]


def time_gpu(fn, repeats, warmup, max_seconds=math.inf):
    """GPU time per call from CUDA events (backend.gpu_event_times)."""
    return summarize(backend.gpu_event_times(fn, repeats, warmup, max_seconds), warmup, "cuda_events")


def rotation_count(bytes_per_set, cache_bytes, max_sets=16):
    """How many input copies to cycle so that they span at least twice the
    cache: then each copy was evicted before its next use. 1 when one copy
    already spans that much (or no cache size is known)."""
    if not cache_bytes or bytes_per_set >= 2 * cache_bytes:
        return 1
    return min(max_sets, math.ceil(2 * cache_bytes / max(1, bytes_per_set)))


def rotating(calls):
    """One zero-argument callable that runs calls[0], calls[1], ... in turn."""
    cycle = itertools.cycle(calls)
    return lambda: next(cycle)()
