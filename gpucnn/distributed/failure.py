"""One failing rank ends the whole job.

Without this, an uncaught exception ends only its own process and the other
ranks wait forever in their next collective. `install_excepthook(comm)`
(called by init for worlds larger than one) prints which rank failed and
the traceback, then aborts every rank through the communicator (MPI_Abort:
the launcher ends all processes within seconds). It does not rely on the
user running `python -m mpi4py`.
"""
import sys
import threading
import traceback


def failure_message(comm, exc_type, exc, tb):
    trace = "".join(traceback.format_exception(exc_type, exc, tb))
    return (f"gpucnn.distributed: rank {comm.rank} of {comm.size} failed: {exc_type.__name__}: {exc}\n"
            f"{trace}gpucnn.distributed: aborting all {comm.size} ranks because rank {comm.rank} failed")


def install_excepthook(comm):
    """Abort the job on an uncaught exception in the main thread or any thread."""
    def hook(exc_type, exc, tb):
        comm.abort(1, failure_message(comm, exc_type, exc, tb))

    def thread_hook(args):
        if args.exc_type is SystemExit:
            return
        hook(args.exc_type, args.exc_value, args.exc_traceback)

    sys.excepthook = hook
    threading.excepthook = thread_hook
