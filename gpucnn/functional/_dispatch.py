"""Picks the implementation module of an op family for an array module.

CPU: conv_cpu / pool_cpu (NumPy + Numba, any of 1-3 spatial dims);
     conv_fused_cpu (conv_cpu plus the fused epilogues' Numba passes).
GPU: conv_gpu / pool_gpu run the 2-D kernels (1-D as 2-D with unit height);
     conv3d_gpu / pool3d_gpu run the 3-D kernels.
Imports are lazy so that `import gpucnn` costs nothing for the GPU side.

float16: every op accepts float16 arrays on both devices and returns float16,
accumulating in float32. The implementations only know float32 and float64,
so `widen` casts float16 inputs to float32 (one NumPy/CuPy astype each) and
`narrow` casts the float32 result back: the sums then run in float32 as
asked, at the cost of one extra pass over the inputs and the output. The GPU
kernels stay float32-only, except pool_gpu (HALF_IO): its v2 kernels read
and write float16 (`widen_for` leaves its arrays as they are; see
docs/precision.md).
"""
import importlib

import numpy as np

from .. import precision as _precision

HALF = np.dtype(np.float16)

_GPU_MODULES = {("conv", 1): "conv_gpu", ("conv", 2): "conv_gpu", ("conv", 3): "conv3d_gpu",
                ("conv_fused", 2): "conv_gpu",   # conv_gpu's launchers take bias/relu/relu_y/bias_grad
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


def conv_kwargs(xp, op, version, precision, nd, direction):
    """gpu_kwargs plus the conv precision: the per-call keyword, else the policy
    (gpucnn.precision). Checked on both devices; the CPU computes every mode
    in float32, so it gets no precision."""
    precision = _precision.resolve(precision, op)
    kwargs = gpu_kwargs(xp, version, "conv", nd, direction)
    if xp is not np:
        kwargs["precision"] = precision
    return kwargs


def widen(*arrays):
    """(arrays with float16 ones as float32, whether any was float16). None passes."""
    half = any(a is not None and a.dtype == HALF for a in arrays)
    if not half:
        return arrays, False
    return tuple(None if a is None else a.astype(np.float32) for a in arrays), True


def widen_for(impl, *arrays):
    """widen(arrays), unless the implementation module takes float16 arrays
    itself (HALF_IO = True: pool_gpu, whose v2 kernels read and write float16)."""
    if getattr(impl, "HALF_IO", False):
        return arrays, False
    return widen(*arrays)


def narrow(result, half):
    """The float result(s) of an op as float16 when its inputs were (argmax stays int32)."""
    if not half:
        return result
    if isinstance(result, tuple):
        return tuple(narrow(r, half) for r in result)
    return result.astype(np.float16) if result.dtype.kind == "f" else result
