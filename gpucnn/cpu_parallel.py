"""The CPU path's one thread policy: how every CPU kernel uses the cores.

Thread count: numba.get_num_threads() (set by `gpucnn train --threads`, the
benchmarks' cpu_threads, or NUMBA_NUM_THREADS), for every kind of parallel
work below, so that no two pools ever run at once:

- over_parts / over_items: an op's work split into contiguous parts, the
  first in the calling thread, the others in one small pool of Python
  threads running serial Numba kernels compiled nogil (no Numba parallel
  regions: their workers spin after each region and fight the BLAS's and
  PyTorch's pools on a loaded machine). One fork and one join per op.
- over_samples: the same over a batch, with the BLAS pinned to one thread
  inside (each thread runs its own single-threaded GEMMs); for convs with
  work per sample large enough to keep per-sample GEMMs efficient.
- blas_threads(n): one multi-threaded GEMM (the BLAS's own pool, n =
  numba.get_num_threads()) where a single GEMM over the whole batch beats
  per-sample ones (small images with many channels, 1x1 convs, Linear).

Measured on a loaded 2-core machine, interleaving Numba's parallel regions
with multi-threaded BLAS calls was 10-100x slower (each pool's idle threads
spin while the other works); with exactly one pool busy at a time that does
not happen. Every split is contiguous and every reduction runs in part
order, so results are deterministic for a fixed thread count.
"""
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numba as nb
import threadpoolctl

FLOPS_PER_THREAD = 16e6          # below this much work per thread, a thread costs more than it saves
ELEMENTS_PER_THREAD = 1 << 17    # the same for memory-bound work (elements touched)

_executor = None   # (workers, ThreadPoolExecutor), made on first use
_blas = None       # threadpoolctl controllers of the loaded BLAS libraries, found on first use


def num_threads():
    """The thread count every CPU kernel uses (Numba's setting)."""
    return nb.get_num_threads()


@contextmanager
def blas_threads(n):
    """The BLAS libraries at n threads inside (process-wide), restored after.
    Talks to the libraries' controllers directly: threadpoolctl's limit()
    re-reads every library's state (measured 7.7 us a call)."""
    global _blas
    if _blas is None:
        _blas = threadpoolctl.ThreadpoolController().select(user_api="blas").lib_controllers
    before = [lib.num_threads for lib in _blas]
    for lib, b in zip(_blas, before):
        if b != n:
            lib.set_num_threads(n)
    try:
        yield
    finally:
        for lib, b in zip(_blas, before):
            if b != n:
                lib.set_num_threads(b)


def over_parts(fn, N, parts):
    """[fn(n0, n1) for each of `parts` contiguous parts of range(N)], the first
    part in the calling thread, the others in the pool; parts <= 1 runs
    fn(0, N) right here."""
    global _executor
    if parts <= 1:
        return [fn(0, N)]
    if _executor is None or _executor[0] < parts - 1:
        if _executor is not None:
            _executor[1].shutdown()
        _executor = (parts - 1, ThreadPoolExecutor(parts - 1, thread_name_prefix="gpucnn-cpu"))
    bounds = [(i * N // parts, (i + 1) * N // parts) for i in range(parts)]
    futures = [_executor[1].submit(fn, *b) for b in bounds[1:]]
    first = fn(*bounds[0])
    return [first] + [f.result() for f in futures]


def parts_for(items, elements):
    """How many threads memory-bound work over `items` touching `elements` gets."""
    return int(min(items, num_threads(), max(1, elements // ELEMENTS_PER_THREAD)))


def over_items(kernel_fn, items, elements, *args):
    """[kernel_fn(*args, i0, i1) for the parts [i0, i1) of range(items)] (planes
    of a pool, channels of a batch norm, chunks of a parameter), split across
    threads when the op touches enough `elements` (memory-bound work: no BLAS
    inside)."""
    return over_parts(lambda i0, i1: kernel_fn(*args, i0, i1), items, parts_for(items, elements))


def over_samples(fn, N, flops):
    """over_parts with up to num_threads() parts, fewer for small ops (under
    FLOPS_PER_THREAD a thread), the BLAS at one thread. Only an op with work
    for several threads but a single sample keeps the BLAS's own threads."""
    wanted = int(min(num_threads(), max(1, flops // FLOPS_PER_THREAD)))
    parts = min(N, wanted)
    if parts == 1 and wanted > 1:
        with blas_threads(wanted):
            return over_parts(fn, N, parts)
    with blas_threads(1):
        return over_parts(fn, N, parts)


def gemm_threads(flops):
    """BLAS threads for one GEMM of `flops` (fewer for small ones)."""
    return int(min(num_threads(), max(1, flops // FLOPS_PER_THREAD)))
