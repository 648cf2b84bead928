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


def gpu_kwargs(xp, version, family, nd, direction):
    """The GPU modules take a kernel version; the CPU modules have none, but a
    version the GPU would refuse is refused on the CPU too (same ValueError),
    so code tried on a CPU does not fail later on a GPU. `direction` keys the
    GPU module's VERSIONS table (forward, backward_data, max_forward, ...)."""
    if xp is not np:
        return {"version": version}
    if version is not None:
        from ._gpu_launch import resolve_version
        gpu = importlib.import_module(f"{__package__}.{_GPU_MODULES[(family, nd)]}")
        resolve_version(gpu.VERSIONS, direction, version)
    return {}
