"""Process-wide settings gpucnn makes when it is imported, before the CPU
path allocates or NumPy loads its BLAS: the BLAS's idle workers, and
glibc's malloc thresholds.

The BLAS. OpenBLAS's workers spin for 2**28 cycles (about 0.1 s) after each
multi-threaded call before they sleep, taking a core from whatever runs next
(measured here: a 2-thread Numba op right after a 2-thread GEMM took 4.3 ms
instead of 2.1). OPENBLAS_THREAD_TIMEOUT=4 (2**4 cycles) lets them sleep at
once: the op then took 2.3 ms, and the GEMM kept its 2-thread speed. OpenBLAS
reads the variable when it loads, with NumPy, so it applies only when gpucnn
is imported before NumPy (the CLI always is) or when the user set it before
Python started. BLAS_WORKERS_SLEEP says whether it applies: only then does
gpucnn.cpu_parallel give a product the BLAS's own threads.

malloc. A CPU training step allocates and frees the same large activation
and gradient arrays every step. glibc serves blocks above its mmap threshold
(dynamic, from 128 KiB) with fresh mappings and returns freed memory above
its trim threshold to the kernel, so each step touched fresh pages again:
3,469 page faults a lenet_bn step, 6,747 a vgg_small one (batch 128). With
the mmap threshold at its maximum (32 MiB) and the trim threshold at 1 GiB,
freed blocks are reused: no page faults after the first steps, lenet_bn
72.4 -> 61.5 ms at 1 thread and 43.7 -> 35.5 ms at 2, vgg_small 249 -> 242
ms at 1 (2-core Xeon VM). The cost: the process keeps up to 1 GiB of freed
memory at the top of its heap (its peak working set, in a training run).
Skipped where the user set either threshold (MALLOC_MMAP_THRESHOLD_,
MALLOC_TRIM_THRESHOLD_), with GPUCNN_MALLOC_TUNING=0, and off glibc.
"""
import ctypes
import os
import platform
import sys

_NAME = "OPENBLAS_THREAD_TIMEOUT"
_SLEEPS_AT = 8   # a timeout of at most 2**8 cycles: the workers sleep at once

_set_by_user = _NAME in os.environ
os.environ.setdefault(_NAME, "4")
try:
    _timeout = int(os.environ[_NAME])
except ValueError:
    _timeout = 30
# Set before OpenBLAS loaded: by the user before start-up, or here before NumPy.
BLAS_WORKERS_SLEEP = _timeout <= _SLEEPS_AT and (_set_by_user or "numpy" not in sys.modules)

# glibc mallopt parameters
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = 32 << 20    # glibc's largest allowed on 64-bit
_TRIM_THRESHOLD = 1 << 30


def _tune_malloc():
    """True if glibc's thresholds were set here."""
    if os.environ.get("GPUCNN_MALLOC_TUNING", "1") == "0" or platform.libc_ver()[0] != "glibc":
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))


MALLOC_TUNED = _tune_malloc()
