"""init(): the communicator of this process (one per process, made once).

backend="auto" picks: "single" when no MPI launcher started the process (a
plain run is a world of size 1 and never imports mpi4py), "nccl" for GPU
training under MPI when CuPy's NCCL binding is usable, else "mpi".
"""
from .. import backend as _backend
from .communicator import SingleCommunicator
from .failure import install_excepthook
from .launch import launched_by_mpi, mpi4py_missing

BACKENDS = ("auto", "mpi", "nccl", "single")
_world = None


def choose_backend(backend="auto", device=None):
    """The backend `init` would make, without making it."""
    if backend not in BACKENDS:
        raise ValueError(f"distributed.init: backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    if not launched_by_mpi():
        return "single"
    device = _backend.resolve_device(device)
    return "nccl" if device == "gpu" and _backend.nccl_available() else "mpi"


def init(backend="auto", device=None, timeout=None):
    """The communicator of this process (rank, size, local_rank, collectives,
    abort). Calling it again returns the same one; asking for another backend
    then is an error. device ("auto"/"cpu"/"gpu") guides backend="auto";
    timeout (seconds, MPI backend; default GPUCNN_DISTRIBUTED_TIMEOUT or 600)
    bounds every wait for the other ranks. Under a launcher on a GPU machine
    each process first makes the GPU of its node-local rank current. With
    more than one rank an uncaught exception on any rank aborts the job
    (failure.py)."""
    global _world
    name = choose_backend(backend, device)
    if _world is not None:
        if backend != "auto" and _world.backend != name:
            raise RuntimeError(f"distributed.init: already initialized with backend {_world.backend!r}, "
                               f"cannot switch to {name!r}")
        return _world
    if name in ("mpi", "nccl") and mpi4py_missing():
        raise RuntimeError(f"distributed.init(backend={name!r}): {mpi4py_missing()}")
    if name == "single":
        world = SingleCommunicator()
    elif name == "mpi":
        from .mpi_backend import MPICommunicator
        world = MPICommunicator(timeout=timeout)
        if launched_by_mpi() and _backend.resolve_device(device) == "gpu":   # one GPU per node-local rank
            _backend.use_device(world.local_rank % _backend.device_count())
    else:
        from .nccl_backend import NCCLCommunicator
        world = NCCLCommunicator(timeout=timeout)
    if world.size > 1:
        install_excepthook(world)
    _world = world
    return world


def get_world():
    """The communicator from init(); init("auto") on first use."""
    return _world if _world is not None else init()


def is_initialized():
    return _world is not None
