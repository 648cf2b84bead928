"""GPU launchers for the 3-D convolution kernels (kernels/conv3d.cu).

Called by gpucnn.functional.conv after validation (stride and padding are
3-tuples); the math is in that module's docstring and at the top of
conv3d.cu. Status: verified on an H100 (bench/results/gpu-h100-2026-11-24).

Inputs may be non-contiguous CuPy arrays of float32 or float64; each is made
C-contiguous once, and outputs come from kernel_loader.alloc_output. dtype
handling (one build of the .cu per dtype, -DSCALAR), version lookup and the
v2 tile constants are shared through _gpu_launch. Kernel versions: 1 = one thread
per output element, straight from the formula; 2 = implicit GEMM with
shared-memory tiles (forward and backward-data only). version=None picks by
shape, as for 2-D (_gpu_launch.resolve_version). Dilation and groups are
kernel arguments of every version (v2: one GEMM per group on grid z);
compiled and emulated, not yet run on a GPU. `precision` is accepted and
not used: the 3-D kernels are FP32 SIMT, which every precision permits.
"""
from math import prod

from .. import kernel_loader
from ._args import output_shape
from ._gpu_launch import BLOCK, TILE, check_gemm_size, contiguous, resolve_version, run_if_nonempty

CONV3D_FILE = "conv3d.cu"
VERSIONS = {"forward": (1, 2), "backward_data": (1, 2), "backward_filter": (1,)}

# Every kernel these launchers use, with its file (the tests check the names).
KERNELS = {
    "conv3d_forward_v1": CONV3D_FILE,
    "conv3d_forward_v2": CONV3D_FILE,
    "conv3d_backward_data_v1": CONV3D_FILE,
    "conv3d_backward_data_v2": CONV3D_FILE,
    "conv3d_backward_filter_v1": CONV3D_FILE,
}

# Geometry arguments after the three pointers, in kernel order:
# N, C, D, H, W, K, T, R, S, Do, Ho, Wo, sd, sh, sw, pd, ph, pw, dil_d, dil_h, dil_w, groups
_SIG = "ppp" + "i" * 22


def _dims(x_shape, w_shape, stride, padding, dilation=None, groups=1):
    """The kernels' geometry tuple and the output spatial shape (Do, Ho, Wo)."""
    N, C = x_shape[:2]
    K, _, T, R, S = w_shape
    dilation = tuple(dilation or (1, 1, 1))
    out = output_shape(tuple(x_shape[2:]), (T, R, S), stride, padding, dilation)
    return ((N, C) + tuple(x_shape[2:]) + (K, T, R, S) + out + tuple(stride) + tuple(padding)
            + dilation + (groups,)), out


def _launch(op, direction, version, dims, arrays, gemm=None, groups=1):
    """Run conv3d_<direction>_v<version> over `arrays` (src, w, out).
    v1: one thread per element of out. v2: gemm = (rows, cols, kgemm) per
    group, a 64x64 tile of the rows x cols product per block, rows on grid
    y, groups on grid z."""
    v = resolve_version(VERSIONS, direction, version, gemm_rows=gemm[0] if gemm else None)
    out = arrays[2]
    if not run_if_nonempty(out, *arrays[:2]):
        return
    if v == 1:
        grid = kernel_loader.grid_1d(out.size, BLOCK)
    else:
        rows, cols, kgemm = gemm
        check_gemm_size(op, rows, kgemm)
        if groups > kernel_loader.MAX_GRID_Y:
            raise ValueError(f"{op}: groups={groups} exceed the GPU kernel's grid limit")
        grid = (kernel_loader.grid_1d(cols, TILE)[0], -(-rows // TILE), groups)
    kernel = kernel_loader.get_typed_kernel(CONV3D_FILE, f"conv3d_{direction}_v{v}", out.dtype)
    kernel_loader.launch(kernel, grid, (BLOCK,), _SIG, arrays + dims)


def forward(x, w, stride, padding, dilation=None, groups=1, version=None,
             precision="highest"):
    """y = conv3d(x, w): x (N, C, D, H, W), w (K, C/G, T, R, S) -> y (N, K, Do, Ho, Wo)."""
    x, w = contiguous(x), contiguous(w)
    dims, out = _dims(x.shape, w.shape, stride, padding, dilation, groups)
    N, K = x.shape[0], w.shape[0]
    y = kernel_loader.alloc_output((N, K) + out, x.dtype)
    _launch("conv3d_forward", "forward", version, dims, (x, w, y),
            gemm=(K // groups, N * prod(out), prod(w.shape[1:])), groups=groups)
    return y


def backward_data(dy, w, x_shape, stride, padding, dilation=None, groups=1, version=None,
                   precision="highest"):
    """dx of shape x_shape (N, C, D, H, W) from dy (N, K, Do, Ho, Wo) and w (K, C/G, T, R, S)."""
    dy, w = contiguous(dy), contiguous(w)
    x_shape = tuple(x_shape)
    dims, _ = _dims(x_shape, w.shape, stride, padding, dilation, groups)
    dx = kernel_loader.alloc_output(x_shape, dy.dtype)
    N, C, D, H, W = x_shape
    _launch("conv3d_backward_data", "backward_data", version, dims, (dy, w, dx),
            gemm=(C // groups, N * D * H * W, w.shape[0] // groups * prod(w.shape[2:])), groups=groups)
    return dx


def backward_filter(dy, x, w_shape, stride, padding, dilation=None, groups=1, version=None,
                     precision="highest"):
    """dw of shape w_shape (K, C/G, T, R, S) from dy (N, K, Do, Ho, Wo) and x (N, C, D, H, W).
    Deterministic: no atomics, every sum in a fixed order."""
    dy, x = contiguous(dy), contiguous(x)
    w_shape = tuple(w_shape)
    dims, _ = _dims(x.shape, w_shape, stride, padding, dilation, groups)
    dw = kernel_loader.alloc_output(w_shape, x.dtype)
    _launch("conv3d_backward_filter", "backward_filter", version, dims, (dy, x, dw))
    return dw
