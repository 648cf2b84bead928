"""Launch helpers shared by the GPU launcher modules (conv_gpu, pool_gpu,
conv3d_gpu, pool3d_gpu): block and tile sizes, version lookup, the size
checks that keep kernel index arithmetic in range, and the 1-D -> 2-D view.
Verified on an H100 (bench/results/gpu-h100-2026-11-24/).
"""
import numpy as np

from .. import backend, kernel_loader
from . import _autotune

BLOCK = 256          # threads of every launch (TILE_THREADS for the v2 kernels)
TILE = 64            # TILE_M = TILE_N of the v2 kernels (kernels/common.cuh)
TILE_K = 16          # TILE_K of the v2 kernels
INT32_MAX = 2**31 - 1


def contiguous(a):
    """A C-contiguous version of a CuPy array (one copy at most)."""
    return backend.cupy.ascontiguousarray(a)


def as_2d(a):
    """Contiguous (N, C, H, W) view of a 4-D array, or (N, C, 1, L) of a 3-D one
    (one copy at most, for a non-contiguous input)."""
    a = contiguous(a)
    return a if a.ndim == 4 else a.reshape(a.shape[:2] + (1,) + a.shape[2:])


def geometry_2d(nd, *pairs):
    """Stride/padding/kernel tuples of an nd-op as 2-D tuples: a 1-D value v
    becomes (unit, v), unit 1 for kernel/stride and 0 for padding."""
    if nd == 2:
        return [tuple(p) for p, _ in pairs]
    return [(unit,) + tuple(p) for p, unit in pairs]


# version=None picks by shape. The v2 implicit GEMM spends a 64-row tile on
# the GEMM rows (K for forward, C for backward-data); with fewer than 16 rows
# most of the tile idles, and on an H100 v1 won every such case measured
# (bench/results/gpu-h100-2026-11-24): backward-data of ResNet-50's 7x7 stem
# (C=3) 11.1 ms vs 90.4 ms, convnet L1 (C=3) 36 vs 246, LeNet conv2 (C=6)
# 0.17 vs 0.28; forward of LeNet conv1 (K=6) 0.086 vs 0.111. From 16 rows up
# (C=24, K=16 and more) v2 won. Backward-filter v2 won everywhere (its rows,
# K, tile with C*R*S), so it gets no gemm_rows.
AUTO_V1_ROWS = 16


def resolve_version(table, op, version, gemm_rows=None):
    """The kernel version to run: `version`, else v1 when gemm_rows is below
    AUTO_V1_ROWS, else the highest."""
    if version is None:
        small = gemm_rows is not None and gemm_rows < AUTO_V1_ROWS and 1 in table[op]
        version = 1 if small else max(table[op])
    v = version
    if v not in table[op]:
        raise ValueError(f"{op}: kernel version {version!r} does not exist; choose from {table[op]}")
    return int(v)


def select_version(table, op, version, *, gemm_rows=None, dtype=np.float32, precision="highest",
                   tensor_core=(), shapes=None, run=None, tc_rows=None):
    """The kernel version of one GPU convolution.

    tensor_core: the tensor-core versions, as a sequence or as {version: rows
    of its block tile}. version given: checked, and a tensor-core version only
    for float32 (the launchers cast float16 to float32 first; float64 keeps
    its SIMT kernels). version None: among the versions the dtype permits, a
    fixed choice (resolve_version over the SIMT versions; for precision
    "high"/"medium" and at least AUTO_V1_ROWS GEMM rows, the tensor-core
    version with the largest block tile that the rows fill, else the smallest
    one: an untimed default, no GPU has run them yet; tc_rows, when given,
    stands for gemm_rows in that choice), or with
    gpucnn.backends.autotune the measured winner among them
    (_autotune.choose: run(v) runs the op with version v; `shapes` keys the cache)."""
    float32 = np.dtype(dtype) == np.float32
    if version is not None:
        v = resolve_version(table, op, version)
        if v in tensor_core and not float32:
            raise ValueError(f"{op}: kernel version {v} (tensor cores) takes float32 or float16 "
                             f"arrays, got {np.dtype(dtype)}")
        return v
    simt = {op: tuple(v for v in table[op] if v not in tensor_core)}
    default = resolve_version(simt, op, None, gemm_rows)
    tc = sorted(v for v in table[op] if v in tensor_core) if float32 else []
    rows_tc = gemm_rows if tc_rows is None else tc_rows
    if tc and precision != "highest" and (rows_tc is None or rows_tc >= AUTO_V1_ROWS):
        rows = tensor_core if isinstance(tensor_core, dict) else {}
        filled = [v for v in tc if rows_tc is None or rows.get(v, 0) <= rows_tc]
        default = max(filled) if filled else tc[0]
    candidates = list(simt[op]) + tc
    if run is None or shapes is None:
        return default
    return _autotune.choose(op, shapes, np.dtype(dtype).name, precision, candidates, default, run)


def check_gemm_size(op, m, *int32_sizes):
    """The v2 kernels put the M tiles on grid y and keep Kgemm (forward,
    backward-data) or Ngemm (backward-filter), their loop counters and the
    position within one spatial plane in int32."""
    if -(-m // TILE) > kernel_loader.MAX_GRID_Y:
        raise ValueError(f"{op}: {m} channels exceed the GPU kernel's grid limit")
    if any(n > INT32_MAX - TILE for n in int32_sizes):
        raise ValueError(f"{op}: sizes {int32_sizes} (filter, plane) exceed the GPU kernel's "
                         f"int32 index range")


def run_if_nonempty(out, *inputs):
    """False when there is nothing to launch: `out` is empty, or the sum that
    fills it runs over an empty input (then `out` is zeroed here, since a
    kernel whose loop is empty may return before writing)."""
    if out.size == 0:
        return False
    if any(a.size == 0 for a in inputs):
        out.fill(0)
        return False
    return True


def check_plane(op, x_shape):
    """argmax is an int32 flat index into one (n, c) plane."""
    plane = 1
    for d in x_shape[2:]:
        plane *= d
    if plane > INT32_MAX:
        raise ValueError(f"{op}: input plane {tuple(x_shape[2:])} is too large for int32 argmax")
