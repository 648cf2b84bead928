"""The BLAS's idle-worker setting, made before NumPy loads OpenBLAS.

OpenBLAS's workers spin for 2**28 cycles (about 0.1 s) after each
multi-threaded call before they sleep, taking a core from whatever runs next
(measured here: a 2-thread Numba op right after a 2-thread GEMM took 4.3 ms
instead of 2.1). OPENBLAS_THREAD_TIMEOUT=4 (2**4 cycles) lets them sleep at
once: the op then took 2.3 ms, and the GEMM kept its 2-thread speed. OpenBLAS
reads the variable when it loads, with NumPy, so it applies only when gpucnn
is imported before NumPy (the CLI always is) or when the user set it before
Python started. BLAS_WORKERS_SLEEP says whether it applies: only then does
gpucnn.cpu_parallel give a product the BLAS's own threads.
"""
import os
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
