"""Measured machine ceilings that the kernel figures are set against.

- copy GB/s: a large copy, bytes read + bytes written per second. On the GPU
  a device-to-device cudaMemcpy (1 GiB); on the CPU np.copyto of a buffer far
  larger than the last-level cache.
- matmul GFLOP/s: a large square float32 matmul, 2*n^3 flops. On the GPU
  CuPy's cuBLAS SGEMM (true float32 unless CUPY_TF32=1, which is recorded);
  on the CPU NumPy's BLAS with the benchmark's thread count.

`small=True` (the quick suite) uses sizes that take a fraction of a second.
The GPU branch ran on an H100 (bench/results/gpu-h100-2026-11-24).
"""
import os

import numpy as np

from .. import backend

from .timing import time_cpu, time_gpu


def _record(copy_bytes, copy_t, n, mm_t, how):
    return {"copy_gbps": 2 * copy_bytes / copy_t["median_s"] / 1e9,
            "matmul_gflops": 2 * n ** 3 / mm_t["median_s"] / 1e9,
            "copy_bytes": int(copy_bytes), "matmul_n": int(n),
            "copy_time": copy_t, "matmul_time": mm_t, "method": how}


def cpu_ceilings(small=False, repeats=5):
    nbytes = (64 if small else 512) << 20
    n = 1024 if small else 4096
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    copy_t = time_cpu(lambda: np.copyto(dst, src), repeats, warmup=1)
    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    b = rng.random((n, n), dtype=np.float32)
    mm_t = time_cpu(lambda: a @ b, repeats, warmup=1)
    return _record(nbytes, copy_t, n, mm_t, "numpy copyto / numpy float32 matmul (BLAS)")


def gpu_ceilings(small=False, repeats=20):
    cupy = backend.cupy
    nbytes = (256 if small else 1024) << 20
    n = 4096 if small else 8192
    src = cupy.ones(nbytes // 4, cupy.float32)
    dst = cupy.empty_like(src)
    copy_t = time_gpu(lambda: dst.data.copy_from_device_async(src.data, nbytes),
                      repeats, warmup=3)
    a = cupy.random.random((n, n), dtype=cupy.float32)
    b = cupy.random.random((n, n), dtype=cupy.float32)
    mm_t = time_gpu(lambda: a @ b, repeats, warmup=3)
    rec = _record(nbytes, copy_t, n, mm_t, "cudaMemcpy device-to-device / cupy float32 matmul (cuBLAS)")
    rec["cupy_tf32"] = os.environ.get("CUPY_TF32", "0")
    del src, dst, a, b
    cupy.get_default_memory_pool().free_all_blocks()
    return rec


def measure(device, small=False):
    """Ceilings of 'cpu' or 'gpu' ({'skipped': reason} if measuring failed)."""
    try:
        rec = gpu_ceilings(small) if device == "gpu" else cpu_ceilings(small)
    except Exception as exc:  # e.g. out of memory: keep the run, record why
        return {"device": device, "skipped": f"{type(exc).__name__}: {exc}"}
    rec["device"] = device
    return rec
