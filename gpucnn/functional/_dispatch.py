"""Picks the implementation module of an op family for an array module.

CPU: conv_cpu / pool_cpu (NumPy + Numba, any of 1-3 spatial dims).
GPU: conv_gpu / pool_gpu run the 2-D kernels (1-D as 2-D with unit height);
     conv3d_gpu / pool3d_gpu run the 3-D kernels.
Imports are lazy so that `import gpucnn` costs nothing for the GPU side.
"""
import importlib

import numpy as np

_GPU_MODULES = {("conv", 1): "conv_gpu", ("conv", 2): "conv_gpu", ("conv", 3): "conv3d_gpu",
                ("pool", 1): "pool_gpu", ("pool", 2): "pool_gpu", ("pool", 3): "pool3d_gpu"}


def implementation(family, xp, nd):
    if xp is np:
        name = f"{family}_cpu"
    else:
        name = _GPU_MODULES[(family, nd)]
    return importlib.import_module(f"{__package__}.{name}")


def gpu_kwargs(xp, version):
    """The GPU modules take a kernel version; the CPU modules have none."""
    return {} if xp is np else {"version": version}
