"""The environment a benchmark ran in, and the CPU thread settings it used.

Recorded with every run: CPU and GPU names, driver and CUDA versions, CuPy /
NumPy / Numba / PyTorch versions, thread counts (Numba, PyTorch, the BLAS
and OpenMP pools), the git commit and the date.
"""
import datetime
import os
import platform
import subprocess
from pathlib import Path

import numba
import numpy as np

from .. import backend


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args):
    """Read-only git query in the source checkout ('' outside one).
    GIT_OPTIONAL_LOCKS=0 keeps `git status` from refreshing the index."""
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10,
                             env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def git_info():
    """The commit, and whether the work tree differs from it (changed or
    untracked files): a dirty run did not measure that commit alone."""
    commit = _git("rev-parse", "HEAD")
    dirty = bool(_git("status", "--porcelain")) if commit else None
    return {"commit": commit or None, "dirty": dirty}


def git_describe():
    """`git describe --always --dirty` of the source checkout, or None outside one."""
    return _git("describe", "--always", "--dirty") or None


# PyTorch's CPU build runs its intra-op pool on OpenMP, whose idle workers
# spin-wait after every op. Timed side by side in one process, those spinning
# threads hold a core while our code runs (measured on 2 cores: our 2-thread
# conv lost half its speed). Passive waiting removes that interference; it
# cost PyTorch's own 2-thread conv times about 9% there. Set before the first
# import of torch; an explicit OMP_WAIT_POLICY in the environment wins.
OMP_WAIT_POLICY = "PASSIVE"


def import_torch():
    """(torch, '') or (None, why not); OpenMP waiting passive (see above)."""
    os.environ.setdefault("OMP_WAIT_POLICY", OMP_WAIT_POLICY)
    try:
        import torch
    except Exception as exc:  # ImportError or a broken install
        return None, f"PyTorch is not importable ({type(exc).__name__}: {exc})"
    return torch, ""


def blas_threads():
    """Thread pools of the loaded BLAS/OpenMP libraries (threadpoolctl, if present)."""
    try:
        import threadpoolctl
    except ImportError:
        return None
    return [{"library": i.get("prefix"), "api": i.get("user_api"), "threads": i.get("num_threads")}
            for i in threadpoolctl.threadpool_info()]


class cpu_threads:
    """Context: the same thread count for our Numba code, the BLAS under
    NumPy (through threadpoolctl) and PyTorch's intra-op pool, restored on exit."""

    def __init__(self, n, torch=None):
        self.n = usable_threads(n)
        self.torch = torch

    def __enter__(self):
        self._numba = numba.get_num_threads()
        numba.set_num_threads(self.n)
        if self.torch is not None:
            self._torch = self.torch.get_num_threads()
            self.torch.set_num_threads(self.n)
        try:
            import threadpoolctl
            self._limits = threadpoolctl.threadpool_limits(limits=self.n, user_api="blas")
        except ImportError:
            self._limits = None
        return self

    def __exit__(self, *exc):
        numba.set_num_threads(self._numba)
        if self.torch is not None:
            self.torch.set_num_threads(self._torch)
        if self._limits is not None:
            self._limits.restore_original_limits()


def default_threads():
    return numba.get_num_threads()


def usable_threads(n):
    """n clamped to what Numba can run (1 .. NUMBA_NUM_THREADS)."""
    return max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))


def environment(torch=None):
    """A JSON-ready dict describing this machine and software."""
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "cpu_name": cpu_name(),
        "cpu_count": os.cpu_count(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "numba_threads": numba.get_num_threads(),
        "blas_threads": blas_threads(),
        "cupy": backend.cupy.__version__ if backend.cupy is not None else None,
        "gpu_available": backend.gpu_available(),
        "gpu_unavailable_reason": backend.gpu_unavailable_reason() or None,
        "torch": None, "torch_threads": None, "cudnn": None,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "git": git_info(),
    }
    env.update(backend.device_info())  # gpu_name, driver, CUDA runtime, SMs (GPU only)
    if torch is not None:
        env["torch"] = torch.__version__
        env["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            env["cudnn"] = torch.backends.cudnn.version()
    return env
