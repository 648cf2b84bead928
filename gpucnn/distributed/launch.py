"""Was this process started by an MPI launcher? Answered from the environment
alone, so a plain `python ...` run never imports mpi4py (a world of size 1).

Launchers set these variables in every process they start: MPICH's and
Intel MPI's Hydra (PMI_SIZE/PMI_RANK), Open MPI (OMPI_COMM_WORLD_SIZE), MVAPICH
(MV2_COMM_WORLD_SIZE), PMIx-based launchers (PMIX_RANK) and Slurm's srun with
PMI (PMI_SIZE).
"""
import os

_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_SIZE")
_RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK", "PMIX_RANK")


def launched_by_mpi():
    """True when an MPI launcher started this process."""
    return any(v in os.environ for v in _SIZE_VARIABLES + _RANK_VARIABLES)


def launcher_world_size():
    """The number of processes the launcher started (1 without a launcher)."""
    for name in _SIZE_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 1


def mpi4py_missing():
    """'' when mpi4py imports, else what to install (one sentence)."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return ("mpi4py is not installed: pip install 'gpucnn[mpi]' (mpi4py and an MPICH mpiexec) or "
                "'gpucnn[distributed]' (mpi4py only, for a cluster's own MPI)")
    return ""
