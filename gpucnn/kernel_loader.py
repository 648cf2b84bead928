"""Loads the CUDA sources in kernels/*.cu and launches their kernels.

- Sources are read as text and every local `#include "x.cuh"` is inlined
  (recursively, once each): CuPy's compile cache is keyed on the source text,
  so an included file that changed would otherwise be served stale.
- Each (file, options) pair is compiled once per process into a
  cupy.RawModule; CuPy's on-disk cache (CUPY_CACHE_DIR, default
  ~/.cupy/kernel_cache) makes later processes skip NVRTC. The first call of a
  kernel family in a fresh cache compiles it (on an H100, vgg_small's first
  training epoch in a fresh process took 19.8 s, the second 7.6 s).
- `launch` casts Python scalars explicitly by the kernel's signature string
  (int -> np.int32 or np.int64, float -> np.float32 or np.float64) so that a
  wrong-width argument can never reach a kernel.
"""
import functools
import os
import re
from pathlib import Path

import numpy as np

from . import backend

_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$', re.MULTILINE)
COMPILE_OPTIONS = ("--std=c++17", "-lineinfo")


def kernel_dir():
    """Installed wheels ship kernels/ as gpucnn/_kernels; a checkout has ../kernels."""
    env = os.environ.get("GPUCNN_KERNEL_DIR")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve().parent
    candidates += [here / "_kernels", here.parent / "kernels"]
    for c in candidates:
        if c.is_dir() and any(c.glob("*.cu")):
            return c
    raise FileNotFoundError(
        "gpucnn: no CUDA kernel sources found; looked in " + ", ".join(map(str, candidates)))


def kernel_files():
    return sorted(kernel_dir().glob("*.cu"))


def read_source(filename, _seen=None):
    """The text of kernels/<filename> with its local #includes inlined."""
    path = kernel_dir() / filename
    if not path.is_file():
        raise FileNotFoundError(f"gpucnn: kernel source {path} does not exist")
    seen = set() if _seen is None else _seen
    seen.add(path.name)

    def inline(match):
        name = match.group(1)
        if name in seen:
            return f"// {name} already inlined"
        return f"// ---- begin {name}\n{read_source(name, seen)}\n// ---- end {name}"

    return _INCLUDE.sub(inline, path.read_text())


@functools.lru_cache(maxsize=None)
def get_module(filename, options=COMPILE_OPTIONS, name_expressions=None):
    """The compiled cupy.RawModule for kernels/<filename> (once per process)."""
    backend.require_gpu(f"compiling {filename}")
    cupy = backend.cupy
    kwargs = {"code": read_source(filename), "options": tuple(options)}
    if name_expressions:
        kwargs["name_expressions"] = tuple(name_expressions)
    return cupy.RawModule(**kwargs)


def get_kernel(filename, name, options=COMPILE_OPTIONS, name_expressions=None):
    """A kernel function (extern "C" name, or a template listed in name_expressions)."""
    return get_module(filename, tuple(options),
                      tuple(name_expressions) if name_expressions else None).get_function(name)


@functools.lru_cache(maxsize=None)
def elementwise_kernel(name, in_params, out_params, body):
    """A cupy.ElementwiseKernel: one launch for an elementwise formula over
    broadcast arrays (CuPy compiles it on first use, once per dtype)."""
    backend.require_gpu(f"the fused kernel {name}")
    return backend.cupy.ElementwiseKernel(in_params, out_params, body, name)


# Each .cu is written over `scalar_t` (kernels/common.cuh) and compiled once
# per dtype with -DSCALAR=float or -DSCALAR=double; names stay extern "C".
# float16: -DSCALAR=float -DSTORAGE_HALF, for the kernels whose arrays are
# `storage_t` (float16 in memory, float arithmetic; pool2d.cu's v2 only).
_SCALAR_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double", np.dtype(np.float16): "half"}
_SCALAR_OPTIONS = {"float": ("-DSCALAR=float",), "double": ("-DSCALAR=double",),
                   "half": ("-DSCALAR=float", "-DSTORAGE_HALF")}


def get_typed_kernel(filename, name, dtype):
    """The kernel `name` of kernels/<filename> built for float32, float64 or
    (storage_t kernels) float16; looked up once per (file, name, dtype):
    launches stay cheap."""
    return _typed_kernel(filename, name, _SCALAR_TYPES[np.dtype(dtype)])


@functools.lru_cache(maxsize=None)
def _typed_kernel(filename, name, scalar):
    return get_kernel(filename, name, options=COMPILE_OPTIONS + _SCALAR_OPTIONS[scalar])


_CASTS = {"i": np.int32, "l": np.int64, "f": np.float32, "d": np.float64}
# Plain ints: np.iinfo's min/max are recomputed on every access, and this
# check runs for every int argument of every launch.
_INT32_MIN, _INT32_MAX = int(np.iinfo(np.int32).min), int(np.iinfo(np.int32).max)


def cast_args(signature, args):
    """Cast `args` by a signature string: 'p' device array, 'i' int32, 'l' int64,
    'f' float32, 'd' float64. Raises if an int does not fit its width."""
    if len(signature) != len(args):
        raise TypeError(f"kernel signature {signature!r} takes {len(signature)} args, got {len(args)}")
    out = []
    for code, a in zip(signature, args):
        if code == "p":
            if not backend.is_gpu_array(a):
                raise TypeError(f"kernel argument must be a CuPy array, got {type(a).__name__}")
            out.append(a)
        elif code == "i":
            value = int(a)
            if not _INT32_MIN <= value <= _INT32_MAX:
                raise OverflowError(f"kernel int32 argument {a} out of range")
            out.append(np.int32(value))
        else:
            out.append(_CASTS[code](a))
    return tuple(out)


MAX_GRID_Y = 65535  # gridDim.y / gridDim.z limit; gridDim.x may go to 2**31 - 1
MAX_GRID_X = 2**31 - 1


def grid_1d(n, block):
    """Blocks for a 1-D launch over n items, checked against the x-dimension limit."""
    blocks = max(1, -(-int(n) // block))
    if blocks > MAX_GRID_X:
        raise ValueError(f"launch of {n} items exceeds the grid limit")
    return (blocks,)


def launch(kernel, grid, block, signature, args, shared_mem=0):
    """Launch `kernel` on the current stream after casting args by `signature`."""
    kernel(tuple(int(g) for g in grid), tuple(int(b) for b in block),
           cast_args(signature, args), shared_mem=int(shared_mem))


# Tests set this (or GPUCNN_POISON=1) so that every kernel output starts as
# NaN: an element a kernel forgot to write then fails the comparison.
POISON_OUTPUTS = os.environ.get("GPUCNN_POISON", "") == "1"


def alloc_output(shape, dtype):
    """A C-contiguous CuPy output buffer: uninitialised, or NaN/-1 when poisoning."""
    cupy = backend.cupy
    if not POISON_OUTPUTS:
        return cupy.empty(shape, dtype=dtype)
    fill = np.nan if np.dtype(dtype).kind == "f" else -1
    return cupy.full(shape, fill, dtype=dtype)
