"""The CPU path's one thread policy: how every CPU kernel uses the cores.

Thread count: numba.get_num_threads() (set by `gpucnn train --threads`, the
benchmarks' cpu_threads, or NUMBA_NUM_THREADS), for every kind of parallel
work below, so that no two pools ever run at once:

- over_parts / over_items: an op's work split into contiguous parts, the
  first in the calling thread, the others in one small pool of Python
  threads running serial Numba kernels compiled nogil (no Numba parallel
  regions: their workers spin after each region and fight the BLAS's and
  PyTorch's pools on a loaded machine). One fork and one join per op, each
  a hand-off through a pair of locks per worker (concurrent.futures'
  futures and queue cost about 20 us more per op here: a 2 x 185 us op
  took 270 us with them, 245-260 without; lenet_bn's 2-thread step 46.2 ->
  45.3 ms, interleaved). What is left per op is two thread wake-ups with
  their GIL hand-overs, 25-35 us each on this VM.
- over_samples: the same over a batch, with the BLAS pinned to one thread
  inside (each thread runs its own single-threaded GEMMs); for convs with
  work per sample large enough to keep per-sample GEMMs efficient.
- matmul: one product (Linear's forward and backward) on the BLAS's own
  threads when its idle workers sleep at once (gpucnn._process_env: gpucnn set
  OPENBLAS_THREAD_TIMEOUT before NumPy loaded the BLAS); otherwise its rows
  split across our pool, each part a single-threaded BLAS call. lenet_bn's
  Linear (128 x 3136 @ 3136 x 128), 1 -> 2 threads: 1.57-1.99x on the
  BLAS's threads, 0.77-1.24x as split rows.
- blas_threads(n): the BLAS's own pool at n threads, used only where an op
  has work for several threads in one product (then nothing else runs).

Measured on a loaded 2-core machine, interleaving Numba's parallel regions
with multi-threaded BLAS calls was 10-100x slower (each pool's idle threads
spin while the other works); with exactly one pool busy at a time that does
not happen. Every split is contiguous and every reduction runs in part
order, so results are deterministic for a fixed thread count.
"""
import os
import threading
from contextlib import contextmanager

import numba as nb
import numpy as np
import threadpoolctl

from ._process_env import BLAS_WORKERS_SLEEP

FLOPS_PER_THREAD = 16e6          # below this much work per thread, a thread costs more than it saves
ELEMENTS_PER_THREAD = 1 << 17    # the same for memory-bound work (elements touched)

_pool = None       # the _Pool, made on first use (and again in a forked child)
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


class _Worker:
    """A daemon thread that runs one task at a time, handed over through two
    locks: `go` released by the caller when a task is set, `done` released by
    the worker when it has finished (its result or exception kept)."""

    def __init__(self, index):
        self.go, self.done = threading.Lock(), threading.Lock()
        self.go.acquire()
        self.done.acquire()
        self.task = self.result = self.error = None
        threading.Thread(target=self._run, name=f"gpucnn-cpu-{index}", daemon=True).start()

    def _run(self):
        while True:
            self.go.acquire()
            try:
                self.result = self.task()
            except BaseException as e:   # handed to the caller, raised there
                self.error = e
            self.task = None
            self.done.release()

    def start(self, task):
        self.task, self.result, self.error = task, None, None
        self.go.release()

    def join(self):
        self.done.acquire()
        return self.result, self.error


class _Pool:
    """Workers for the parts beyond the first. One op at a time: a call made
    while the pool is busy (from another thread, or from inside a part) runs
    its parts one after another in the calling thread (the same parts, so the
    same results)."""

    def __init__(self, workers):
        self.workers = [_Worker(i) for i in range(workers)]
        self.busy = threading.Lock()


def _forget_pool_in_child():
    global _pool
    _pool = None   # a forked child has none of the parent's threads


os.register_at_fork(after_in_child=_forget_pool_in_child)


def over_parts(fn, N, parts):
    """[fn(n0, n1) for each of `parts` contiguous parts of range(N)], the first
    part in the calling thread, the others in the pool; parts <= 1 runs
    fn(0, N) right here."""
    global _pool
    if parts <= 1:
        return [fn(0, N)]
    bounds = [(i * N // parts, (i + 1) * N // parts) for i in range(parts)]
    if _pool is None or len(_pool.workers) < parts - 1:
        _pool = _Pool(parts - 1)   # grows only (an old, smaller pool's threads idle on)
    pool = _pool
    if not pool.busy.acquire(blocking=False):
        return [fn(*b) for b in bounds]
    try:
        started = []
        for worker, (n0, n1) in zip(pool.workers, bounds[1:]):
            worker.start(lambda n0=n0, n1=n1: fn(n0, n1))
            started.append(worker)
        try:
            first = fn(*bounds[0])
        finally:
            joined = [w.join() for w in started]   # every worker, even if the first part raised
        for _, error in joined:
            if error is not None:
                raise error
        return [first] + [result for result, _ in joined]
    finally:
        pool.busy.release()


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


def matmul(a, b):
    """a @ b for 2-D NumPy arrays (views allowed) on the BLAS's threads when
    its workers sleep after a call (BLAS_WORKERS_SLEEP), else with the rows
    of a and of the result split into contiguous parts across our pool, each
    part one single-threaded BLAS call. Small products run in the calling
    thread."""
    out = np.empty((a.shape[0], b.shape[1]), np.result_type(a, b))
    flops = 2 * a.shape[0] * a.shape[1] * b.shape[1]
    parts = int(min(a.shape[0], num_threads(), max(1, flops // FLOPS_PER_THREAD)))
    if BLAS_WORKERS_SLEEP and parts > 1:
        with blas_threads(parts):
            return np.matmul(a, b, out=out)

    def part(r0, r1):
        np.matmul(a[r0:r1], b, out=out[r0:r1])
    with blas_threads(1):
        over_parts(part, a.shape[0], parts)
    return out
