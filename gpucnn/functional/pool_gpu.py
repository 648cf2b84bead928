"""GPU launchers for the 2-D pooling kernels (kernels/pool2d.cu); 1-D pooling
runs on the same kernels with unit height.

Called by gpucnn.functional.pool after validation (tuples already normalized);
the semantics are in that module's docstring and at the top of pool2d.cu.
Status: v1 verified on an H100; v2 compiled and emulated, not yet run on a
GPU. dtype handling, the 1-D reshape and version lookup are shared through
_gpu_launch (one .cu build per dtype, -DSCALAR).

Versions (kernels/pool2d.cu): v1 one thread per element; v2 POOL_RUN = 4
consecutive elements of a row per thread with vector loads/stores, bit for
bit v1's results. version=None picks v2 everywhere it applies, which is
every op except dilated max pooling (v2 has adjacent taps only: None runs
v1 there, an explicit version=2 is a ValueError) and the max backward
without geometry (the plane-serial route kernel exists as v1 only and runs
for either version). v2 is an untimed default: no GPU has run it yet.
"""
from .. import kernel_loader
from ._args import output_shape
from ._dispatch import HALF, narrow, widen
from ._gpu_launch import BLOCK, as_2d, check_plane, geometry_2d, resolve_version
from .adaptive_pool_gpu import adaptive_avg_backward, adaptive_avg_forward, adaptive_max_forward  # noqa: F401

POOL_FILE = "pool2d.cu"
VERSIONS = {"max_forward": (1, 2), "max_backward": (1, 2), "avg_forward": (1, 2), "avg_backward": (1, 2)}
ROUTE_KERNEL = "max_pool2d_backward_route_v1"   # the max backward without geometry, any version
# float16 arrays are taken as they are (the front does not widen them): the
# v2 kernels read and write float16 (storage_t, float arithmetic); v1 and the
# route kernel get them widened to float32 here and narrowed back, bit for
# bit the same results (the float sums are the same; both round once, to
# nearest even).
HALF_IO = True

# Every kernel these launchers use, with its file (the tests check the names).
KERNELS = {
    "max_pool2d_forward_v1": POOL_FILE,
    "max_pool2d_backward_v1": POOL_FILE,
    "max_pool2d_backward_route_v1": POOL_FILE,
    "avg_pool2d_forward_v1": POOL_FILE,
    "avg_pool2d_backward_v1": POOL_FILE,
    "max_pool2d_forward_v2": POOL_FILE,
    "max_pool2d_backward_v2": POOL_FILE,
    "avg_pool2d_forward_v2": POOL_FILE,
    "avg_pool2d_backward_v2": POOL_FILE,
}

POOL_RUN = 4   # elements of a row per v2 thread (POOL_RUN in kernels/pool2d.cu)

# After the pointers: N, C, H, W, Ho, Wo, R, S, sh, sw, ph, pw
_GEOM = "i" * 12


def _geometry(x_shape, window, stride, padding, dilation=None):
    """2-D (N, C, H, W), window, stride, padding and (Ho, Wo) of an nd pooling
    (dilation, max pooling only, goes to the kernel after these)."""
    nd = len(x_shape) - 2
    window, stride, padding, dilation = geometry_2d(nd, (window, 1), (stride, 1), (padding, 0),
                                                    (dilation or (1,) * nd, 1))
    shape = tuple(x_shape) if nd == 2 else tuple(x_shape[:2]) + (1, x_shape[2])
    out = output_shape(shape[2:], window, stride, padding, dilation)
    return shape, out, shape + out + window + stride + padding, dilation


def _grid(version, shape):
    """Blocks over the elements of a 4-D output (v1: one thread each) or over
    its row runs (v2: POOL_RUN consecutive elements of a row per thread)."""
    n, c, h, w = shape
    threads = n * c * h * (w if version == 1 else -(-w // POOL_RUN))
    return kernel_loader.grid_1d(threads, BLOCK)


def _y_shape(x_shape, out):
    """(N, C, Ho, Wo), or (N, C, Wo) for a 1-D pooling."""
    return tuple(x_shape[:2]) + (out if len(x_shape) == 4 else out[1:])


def max_forward_version(version, dilation):
    """The max-pool forward's kernel version: v2 has adjacent taps only, so a
    dilated pooling runs v1 (None) or is refused (an explicit 2). The CPU
    front asks too, so a version refused here is refused there."""
    dilated = dilation is not None and any(d != 1 for d in dilation)
    v = resolve_version(VERSIONS, "max_forward", 1 if dilated and version is None else version)
    if dilated and v != 1:
        raise ValueError(f"max_forward: kernel version {v} has no dilation (dilation {tuple(dilation)}); "
                         f"use version 1 or None")
    return v


def max_forward(x, kernel_size, stride, padding, dilation=None, version=None):
    """(y, argmax int32): max over each window (taps `dilation` apart), first
    maximum / first NaN wins."""
    v = max_forward_version(version, dilation)
    if v == 1 and x.dtype == HALF:
        return narrow(max_forward(*widen(x)[0], kernel_size, stride, padding, dilation, 1), True)
    check_plane("max_pool_forward", x.shape)
    shape, out, geom, dilation = _geometry(x.shape, kernel_size, stride, padding, dilation)
    y = kernel_loader.alloc_output(shape[:2] + out, x.dtype)
    argmax = kernel_loader.alloc_output(shape[:2] + out, "int32")
    kernel = kernel_loader.get_typed_kernel(POOL_FILE, f"max_pool2d_forward_v{v}", x.dtype)
    if v == 1:
        kernel_loader.launch(kernel, kernel_loader.grid_1d(y.size, BLOCK), (BLOCK,), "ppp" + _GEOM + "ii",
                             (as_2d(x), y, argmax) + geom + tuple(dilation))
    else:
        kernel_loader.launch(kernel, _grid(v, y.shape), (BLOCK,), "ppp" + _GEOM, (as_2d(x), y, argmax) + geom)
    y_shape = _y_shape(x.shape, out)
    return y.reshape(y_shape), argmax.reshape(y_shape)


def max_backward(dy, argmax, x_shape, geometry, version=None):
    """dx: dy routed to argmax. geometry (kernel, stride, padding) selects the
    gather kernel (parallel over dx); None the plane-serial route kernel."""
    v = resolve_version(VERSIONS, "max_backward", version)
    if (v == 1 or geometry is None) and dy.dtype == HALF:
        return narrow(max_backward(*widen(dy)[0], argmax, x_shape, geometry, v), True)
    check_plane("max_pool_backward", x_shape)
    dy4 = as_2d(dy)
    argmax4 = as_2d(argmax)
    if geometry is None:
        N, C = dy4.shape[:2]
        shape = tuple(x_shape) if len(x_shape) == 4 else tuple(x_shape[:2]) + (1, x_shape[2])
        dx = kernel_loader.alloc_output(shape, dy.dtype)
        kernel = kernel_loader.get_typed_kernel(POOL_FILE, ROUTE_KERNEL, dy.dtype)
        kernel_loader.launch(kernel, kernel_loader.grid_1d(N * C, BLOCK), (BLOCK,), "ppp" + "i" * 6,
                             (dy4, argmax4, dx) + shape + dy4.shape[2:])
    else:
        shape, _, geom, _ = _geometry(x_shape, *geometry)
        dx = kernel_loader.alloc_output(shape, dy.dtype)
        kernel = kernel_loader.get_typed_kernel(POOL_FILE, f"max_pool2d_backward_v{v}", dy.dtype)
        kernel_loader.launch(kernel, _grid(v, dx.shape), (BLOCK,), "ppp" + _GEOM,
                             (dy4, argmax4, dx) + geom)
    return dx.reshape(tuple(x_shape))


def avg_forward(x, kernel_size, stride, padding, version=None):
    """Window means, zero padding counted in the divisor R*S."""
    v = resolve_version(VERSIONS, "avg_forward", version)
    if v == 1 and x.dtype == HALF:
        return narrow(avg_forward(*widen(x)[0], kernel_size, stride, padding, 1), True)
    shape, out, geom, _ = _geometry(x.shape, kernel_size, stride, padding)
    y = kernel_loader.alloc_output(shape[:2] + out, x.dtype)
    kernel = kernel_loader.get_typed_kernel(POOL_FILE, f"avg_pool2d_forward_v{v}", x.dtype)
    kernel_loader.launch(kernel, _grid(v, y.shape), (BLOCK,), "pp" + _GEOM, (as_2d(x), y) + geom)
    return y.reshape(_y_shape(x.shape, out))


def avg_backward(dy, x_shape, kernel_size, stride, padding, version=None):
    """dx[h, w] = sum of dy over the windows containing (h, w), / (R*S)."""
    v = resolve_version(VERSIONS, "avg_backward", version)
    if v == 1 and dy.dtype == HALF:
        return narrow(avg_backward(*widen(dy)[0], x_shape, kernel_size, stride, padding, 1), True)
    shape, _, geom, _ = _geometry(x_shape, kernel_size, stride, padding)
    dx = kernel_loader.alloc_output(shape, dy.dtype)
    kernel = kernel_loader.get_typed_kernel(POOL_FILE, f"avg_pool2d_backward_v{v}", dy.dtype)
    kernel_loader.launch(kernel, _grid(v, dx.shape), (BLOCK,), "pp" + _GEOM, (as_2d(dy), dx) + geom)
    return dx.reshape(tuple(x_shape))
