"""The NCCL backend (CuPy's binding, cupy.cuda.nccl), for CuPy arrays.

Written against CuPy's NcclCommunicator API; compiled and emulated, not yet
run on a GPU. Start-up follows ChainerMN/Horovod: MPI launches and connects the
processes, each process makes the GPU of its node-local rank current (before
NCCL or any GPU array exists), rank 0 creates the NCCL unique id and MPI
broadcasts it, then every rank joins the NCCL communicator.

CuPy arrays are reduced on a side stream that first waits for the compute
stream (an event), so iallreduce overlaps the rest of the backward; Work.wait()
makes the compute stream wait for the side stream (nothing blocks the host).
NumPy arrays (e.g. an integer counter kept on the host) go through the MPI
communicator underneath. No collective timeout here: NCCL work is queued on
streams, and a hang shows as a stalled stream (NCCL_ASYNC_ERROR_HANDLING / the
NCCL watchdog of the cluster are the tools for that).
"""
import numpy as np

from .. import backend as _backend
from .communicator import Communicator, Work
from .mpi_backend import MPICommunicator

_UNIQUE_ID_BYTES = 128  # NCCL_UNIQUE_ID_BYTES


class _StreamWork(Work):
    def __init__(self, event):
        super().__init__()
        self._event = event

    def wait(self):
        if not self._done:
            _backend.current_stream().wait_event(self._event)
            self._complete()

    def test(self):
        return self._done or self._event.done


class NCCLCommunicator(Communicator):
    backend = "nccl"

    def __init__(self, timeout=None):
        self.mpi = MPICommunicator(timeout=timeout)
        super().__init__(self.mpi.rank, self.mpi.size, self.mpi.local_rank)
        devices = _backend.device_count()
        if devices < 1:
            raise RuntimeError("the NCCL backend needs a GPU on every node")
        self.device = self.local_rank % devices
        _backend.use_device(self.device)
        self.nccl = nccl = _backend.nccl_module()
        uid = np.zeros(_UNIQUE_ID_BYTES, np.int64)
        if self.rank == 0:
            uid[:] = nccl.get_unique_id()
        self.mpi.broadcast(uid, root=0)
        self.comm = nccl.NcclCommunicator(self.size, tuple(int(v) for v in uid), self.rank)
        self.stream = _backend.new_stream()
        self._types = {np.dtype(np.float16): nccl.NCCL_FLOAT16, np.dtype(np.float32): nccl.NCCL_FLOAT32,
                       np.dtype(np.float64): nccl.NCCL_FLOAT64, np.dtype(np.int32): nccl.NCCL_INT32,
                       np.dtype(np.int64): nccl.NCCL_INT64}

    def _type(self, what, a):
        self._check_array(what, a)
        if np.dtype(a.dtype) not in self._types:
            raise TypeError(f"{what}: NCCL cannot reduce {a.dtype} arrays")
        return self._types[np.dtype(a.dtype)]

    def iallreduce(self, a):
        if not _backend.is_gpu_array(a):
            return self.mpi.iallreduce(a)
        dtype = self._type("iallreduce", a)
        self.stream.wait_event(_backend.current_stream().record())   # gradients written first
        ptr = _backend.array_pointer(a)
        self.comm.allReduce(ptr, ptr, a.size, dtype, self.nccl.NCCL_SUM, self.stream.ptr)
        return _StreamWork(self.stream.record())

    def broadcast(self, a, root=0):
        if not _backend.is_gpu_array(a):
            return self.mpi.broadcast(a, root)
        if not 0 <= root < self.size:
            raise ValueError(f"broadcast: root {root} out of range for a world of size {self.size}")
        self.comm.bcast(_backend.array_pointer(a), a.size, self._type("broadcast", a), root,
                        _backend.current_stream().ptr)
        return a

    def allgather(self, a):
        if not _backend.is_gpu_array(a):
            return self.mpi.allgather(a)
        dtype = self._type("allgather", a)
        xp = _backend.get_array_module(a)
        out = xp.empty((self.size,) + tuple(a.shape), dtype=a.dtype)
        self.comm.allGather(_backend.array_pointer(a), _backend.array_pointer(out), a.size, dtype,
                            _backend.current_stream().ptr)
        return out

    def barrier(self):
        _backend.current_stream().synchronize()
        self.mpi.barrier()

    def progress(self):
        pass

    def _terminate(self, errorcode):
        try:
            self.comm.abort()
        finally:
            self.mpi._terminate(errorcode)
