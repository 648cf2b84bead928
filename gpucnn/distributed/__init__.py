"""Data-parallel training over processes, GPUs and machines (MPI and NCCL).

    comm = gpucnn.distributed.init()          # backend "auto" | "mpi" | "nccl" | "single"
    model = DistributedDataParallel(model)    # rank 0's weights everywhere; averaged gradients
    sampler = DistributedSampler(len(x), comm.size, comm.rank, seed=0)

Modules: launch (was this process started by mpiexec?), communicator (the
interface, the size-1 backend), mpi_backend, nccl_backend (compiled and
emulated, not yet run on a GPU), world (init), failure (one failing rank
ends the job), ddp, sampler. gpucnn.nn.SyncBatchNorm holds the batch-norm
layer with statistics over every rank. Importing this package imports
neither mpi4py nor CuPy; init() does when a launcher started the process.
See docs/distributed.md.
"""
from .communicator import Communicator, SingleCommunicator, Work
from .ddp import DistributedDataParallel
from .launch import launched_by_mpi, mpi4py_missing
from .sampler import DistributedSampler
from .world import BACKENDS, choose_backend, get_world, init, is_initialized

__all__ = ["BACKENDS", "Communicator", "DistributedDataParallel", "DistributedSampler", "SingleCommunicator",
           "Work", "choose_backend", "get_world", "init", "is_initialized", "launched_by_mpi", "mpi4py_missing"]
