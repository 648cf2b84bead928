"""gpucnn: a CNN framework with hand-written CUDA kernels and a NumPy/Numba CPU path."""
from . import backend, functional
from .backend import get_array_module, gpu_available, to_cpu, to_gpu

__version__ = "0.1.0"
