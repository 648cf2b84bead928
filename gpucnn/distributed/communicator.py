"""The communicator interface and the size-1 backend.

Every backend offers the same collectives on NumPy arrays (and, where it can,
CuPy arrays). Arrays are reduced in place:

    allreduce(a, op="sum"|"mean")  every rank ends with the elementwise sum (or mean)
    iallreduce(a) -> Work          the same sum, started now; Work.wait() finishes it
    broadcast(a, root=0)           every rank ends with root's values
    allgather(a) -> (size, *a.shape) array of every rank's a, in rank order
    barrier(), abort(errorcode=1, message=None)

`rank` (0..size-1), `size`, `local_rank` (rank among the processes of this
node, which picks the GPU) and `backend` ("single", "mpi" or "nccl").
"""
import os
import sys

import numpy as np

from .. import backend as _backend

OPS = ("sum", "mean")


class Work:
    """A started collective. wait() finishes it (then runs `then`); test() polls."""

    def __init__(self, then=None):
        self._then, self._done = then, False

    def _complete(self):
        if not self._done:
            self._done = True
            if self._then is not None:
                self._then()

    def test(self):
        self._complete()
        return True

    def wait(self):
        self._complete()


class Communicator:
    backend = None

    def __init__(self, rank, size, local_rank):
        self.rank, self.size, self.local_rank = int(rank), int(size), int(local_rank)

    # ---- what each backend provides -----------------------------------------
    def iallreduce(self, a):
        raise NotImplementedError

    def broadcast(self, a, root=0):
        raise NotImplementedError

    def allgather(self, a):
        raise NotImplementedError

    def barrier(self):
        raise NotImplementedError

    # ---- shared -----------------------------------------------------------------
    def allreduce(self, a, op="sum"):
        """Reduce `a` in place over every rank; returns `a`."""
        if op not in OPS:
            raise ValueError(f"allreduce: op must be one of {OPS}, got {op!r}")
        if op == "mean" and np.dtype(a.dtype).kind != "f":
            raise TypeError(f"allreduce: op='mean' needs a floating-point array, got {a.dtype}")
        self._check_array("allreduce", a)
        self.iallreduce(a).wait()
        if op == "mean" and self.size > 1:
            a /= self.size
        return a

    def _check_array(self, what, a):
        if not (isinstance(a, np.ndarray) or _backend.is_gpu_array(a)):
            raise TypeError(f"{what}: expected a NumPy or CuPy array, got {type(a).__name__}")
        if not a.flags.c_contiguous:
            raise ValueError(f"{what}: the array must be C-contiguous (reduced in place), "
                             f"got shape {tuple(a.shape)} with strides {a.strides}")

    def abort(self, errorcode=1, message=None):
        """End every process of the job now, printing `message` first."""
        if message:
            sys.stderr.write(message.rstrip("\n") + "\n")
        sys.stderr.flush()
        sys.stdout.flush()
        self._terminate(int(errorcode))

    def _terminate(self, errorcode):
        os._exit(errorcode)

    def __repr__(self):
        return f"<{type(self).__name__} rank {self.rank} of {self.size}, local rank {self.local_rank}>"


class SingleCommunicator(Communicator):
    """A world of one process: every collective leaves the data as it is."""
    backend = "single"

    def __init__(self):
        super().__init__(0, 1, 0)

    def iallreduce(self, a):
        self._check_array("iallreduce", a)
        return Work()

    def broadcast(self, a, root=0):
        if root != 0:
            raise ValueError(f"broadcast: root {root} out of range for a world of size 1")
        return a

    def allgather(self, a):
        return a.reshape((1,) + tuple(a.shape)).copy()

    def barrier(self):
        pass
