"""GPU launchers for the 3-D pooling kernels (kernels/pool3d.cu).

Called by gpucnn.functional.pool after validation (window, stride and
padding are 3-tuples); the semantics are in that module's docstring and at
the top of pool3d.cu. Status: verified on an H100 (bench/results/gpu-h100-2026-11-24).

Inputs may be non-contiguous CuPy arrays of float32 or float64; each is made
C-contiguous once, and outputs come from kernel_loader.alloc_output. dtype
handling (one build per dtype, -DSCALAR) and version lookup are shared through
_gpu_launch; every op has one version so far.
"""
from .. import kernel_loader
from ._args import output_shape
from ._gpu_launch import BLOCK, check_plane, contiguous, resolve_version
from .adaptive_pool_gpu import adaptive_avg_backward, adaptive_avg_forward, adaptive_max_forward  # noqa: F401

POOL3D_FILE = "pool3d.cu"
VERSIONS = {"max_forward": (1,), "max_backward": (1,), "avg_forward": (1,), "avg_backward": (1,)}

# Every kernel these launchers use, with its file (the tests check the names).
KERNELS = {
    "max_pool3d_forward_v1": POOL3D_FILE,
    "max_pool3d_backward_v1": POOL3D_FILE,
    "max_pool3d_backward_route_v1": POOL3D_FILE,
    "avg_pool3d_forward_v1": POOL3D_FILE,
    "avg_pool3d_backward_v1": POOL3D_FILE,
}

# After the pointers: N, C, D, H, W, Do, Ho, Wo, T, R, S, sd, sh, sw, pd, ph, pw
_GEOM = "i" * 17


def _geometry(x_shape, window, stride, padding, dilation=None):
    """(Do, Ho, Wo) and the kernels' geometry tuple of a 3-D pooling."""
    out = output_shape(tuple(x_shape[2:]), window, stride, padding, dilation)
    return out, tuple(x_shape) + out + tuple(window) + tuple(stride) + tuple(padding)


def _run(name, version_key, version, out, signature, args):
    """Launch <name>_v<version> with one thread per element of `out`."""
    v = resolve_version(VERSIONS, version_key, version)
    if out.size:
        kernel = kernel_loader.get_typed_kernel(POOL3D_FILE, f"{name}_v{v}", out.dtype)
        kernel_loader.launch(kernel, kernel_loader.grid_1d(out.size, BLOCK), (BLOCK,), signature, args)


def max_forward(x, kernel_size, stride, padding, dilation=None, version=None):
    """(y, argmax int32): max over each window (taps `dilation` apart), first
    maximum / first NaN wins; argmax = d*H*W + h*W + w in the (n, c) volume."""
    check_plane("max_pool3d", x.shape)
    x = contiguous(x)
    dilation = tuple(dilation or (1, 1, 1))
    out, geom = _geometry(x.shape, kernel_size, stride, padding, dilation)
    y = kernel_loader.alloc_output(x.shape[:2] + out, x.dtype)
    argmax = kernel_loader.alloc_output(x.shape[:2] + out, "int32")
    _run("max_pool3d_forward", "max_forward", version, y, "ppp" + _GEOM + "iii",
         (x, y, argmax) + geom + dilation)
    return y, argmax


def max_backward(dy, argmax, x_shape, geometry, version=None):
    """dx: dy routed to argmax. geometry (kernel, stride, padding) selects the
    gather kernel (parallel over dx); None the volume-serial route kernel."""
    x_shape = tuple(x_shape)
    check_plane("max_pool3d_backward", x_shape)
    v = resolve_version(VERSIONS, "max_backward", version)
    dy, argmax = contiguous(dy), contiguous(argmax)
    dx = kernel_loader.alloc_output(x_shape, dy.dtype)
    if dx.size == 0:
        return dx
    if geometry is None:   # one thread per (n, c) volume
        N, C = x_shape[:2]
        kernel = kernel_loader.get_typed_kernel(POOL3D_FILE, f"max_pool3d_backward_route_v{v}", dy.dtype)
        kernel_loader.launch(kernel, kernel_loader.grid_1d(N * C, BLOCK), (BLOCK,), "ppp" + "i" * 8,
                             (dy, argmax, dx) + x_shape + tuple(dy.shape[2:]))
    else:
        _, geom = _geometry(x_shape, *geometry)
        kernel = kernel_loader.get_typed_kernel(POOL3D_FILE, f"max_pool3d_backward_v{v}", dy.dtype)
        kernel_loader.launch(kernel, kernel_loader.grid_1d(dx.size, BLOCK), (BLOCK,), "ppp" + _GEOM,
                             (dy, argmax, dx) + geom)
    return dx


def avg_forward(x, kernel_size, stride, padding, version=None):
    """Window means, zero padding counted in the divisor T*R*S."""
    x = contiguous(x)
    out, geom = _geometry(x.shape, kernel_size, stride, padding)
    y = kernel_loader.alloc_output(x.shape[:2] + out, x.dtype)
    _run("avg_pool3d_forward", "avg_forward", version, y, "pp" + _GEOM, (x, y) + geom)
    return y


def avg_backward(dy, x_shape, kernel_size, stride, padding, version=None):
    """dx[d, h, w] = sum of dy over the windows containing (d, h, w), / (T*R*S)."""
    x_shape = tuple(x_shape)
    dy = contiguous(dy)
    _, geom = _geometry(x_shape, kernel_size, stride, padding)
    dx = kernel_loader.alloc_output(x_shape, dy.dtype)
    _run("avg_pool3d_backward", "avg_backward", version, dx, "pp" + _GEOM, (dy, dx) + geom)
    return dx
