"""The MPI backend (mpi4py): NumPy arrays directly, CuPy arrays staged
through page-locked host buffers (device -> host copy, the collective on the
host, host -> device copy when the Work is waited on).

Every collective is non-blocking underneath and is waited on by polling
Test() with a growing pause (20 us up to 1 ms, so idle ranks leave the cores
to the others); a wait longer than `timeout` seconds aborts the whole job
with a message that says which collective on which rank timed out. MPICH
progresses a non-blocking collective only inside MPI calls, so callers that
overlap (DistributedDataParallel) poke `progress()` between pieces of work;
MPICH_ASYNC_PROGRESS=1 gives a progress thread instead.
"""
import os
import time

import numpy as np

from .. import backend as _backend
from .communicator import Communicator, Work

TIMEOUT_VARIABLE = "GPUCNN_DISTRIBUTED_TIMEOUT"
DEFAULT_TIMEOUT = 600.0
# The launcher forwards each rank's stderr through a pipe it drains on its own
# schedule, and MPI_Abort tears that pipe down: without a pause the message
# printed just before the abort was lost in about one abort of five (MPICH hydra).
ABORT_GRACE_SECONDS = 1.0


def default_timeout():
    value = os.environ.get(TIMEOUT_VARIABLE)
    try:
        return float(value) if value else DEFAULT_TIMEOUT
    except ValueError:
        raise ValueError(f"{TIMEOUT_VARIABLE} must be a number of seconds, got {value!r}") from None


class _MPIWork(Work):
    def __init__(self, comm, request, what, keep, then=None):
        super().__init__(then)
        self._comm, self._request, self._what = comm, request, what
        self._keep = keep   # the buffers MPI reads and writes stay alive until completion

    def test(self):
        if not self._done and self._request.Test():
            self._complete()
        return self._done

    def wait(self):
        if not self._done:
            self._comm._wait(self._request, self._what)
            self._complete()


class MPICommunicator(Communicator):
    backend = "mpi"

    def __init__(self, comm=None, timeout=None):
        from mpi4py import MPI
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        super().__init__(self.comm.Get_rank(), self.comm.Get_size(), node.Get_rank())
        self.local_size = node.Get_size()
        node.Free()
        self.timeout = default_timeout() if timeout is None else float(timeout)
        self._pinned = {}
        self._in_flight = []

    # ---- waiting ----------------------------------------------------------------
    def _wait(self, request, what):
        if request.Test():
            return
        deadline = time.monotonic() + self.timeout if self.timeout > 0 else None
        pause = 2e-5
        while not request.Test():
            if deadline is not None and time.monotonic() > deadline:
                self.abort(1, f"gpucnn.distributed: rank {self.rank} of {self.size}: {what} waited more than "
                              f"{self.timeout:g} s for the other ranks (one failed, hangs, or runs other "
                              f"collectives); aborting the job. Set the limit with "
                              f"init(timeout=...) or {TIMEOUT_VARIABLE}.")
            time.sleep(pause)
            pause = min(2 * pause, 1e-3)

    def progress(self):
        """Let MPI advance the collectives in flight (cheap; called between layers)."""
        self._in_flight = [w for w in self._in_flight if not w.test()]

    # ---- host staging of CuPy arrays --------------------------------------------
    def _host(self, a, copy=True, write_back=True):
        """(host array MPI works on, what to run when the collective is done).
        Pinned buffers are pooled per (shape, dtype); one in flight is not reused."""
        if not _backend.is_gpu_array(a):
            return a, None
        pool = self._pinned.setdefault((tuple(a.shape), str(a.dtype)), [])
        host = pool.pop() if pool else _backend.pinned_empty(a.shape, a.dtype)
        if copy:
            _backend.copy_into(host, a)

        def done():
            if write_back:
                _backend.copy_into(a, host)
            pool.append(host)
        return host, done

    def _start(self, what, request, keep, then=None):
        work = _MPIWork(self, request, what, keep, then)
        self._in_flight.append(work)
        return work

    # ---- collectives ------------------------------------------------------------
    def iallreduce(self, a):
        self._check_array("iallreduce", a)
        host, done = self._host(a)
        request = self.comm.Iallreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM)
        return self._start(f"all-reduce of {a.size} {a.dtype} values", request, (a, host), done)

    def broadcast(self, a, root=0):
        self._check_array("broadcast", a)
        if not 0 <= root < self.size:
            raise ValueError(f"broadcast: root {root} out of range for a world of size {self.size}")
        host, done = self._host(a, copy=self.rank == root)
        request = self.comm.Ibcast(host, root=root)
        self._start(f"broadcast of {a.size} {a.dtype} values from rank {root}", request, (a, host), done).wait()
        return a

    def allgather(self, a):
        self._check_array("allgather", a)
        host, release = self._host(a, write_back=False)
        out = np.empty((self.size,) + tuple(a.shape), dtype=host.dtype)
        request = self.comm.Iallgather(host, out)
        self._start(f"all-gather of {a.size} {a.dtype} values", request, (a, host, out), release).wait()
        return _backend.to_gpu(out) if _backend.is_gpu_array(a) else out

    def barrier(self):
        self._start("barrier", self.comm.Ibarrier(), ()).wait()

    def _terminate(self, errorcode):
        time.sleep(ABORT_GRACE_SECONDS)   # let the launcher forward the message first
        self.comm.Abort(errorcode)        # the launcher then ends every rank
