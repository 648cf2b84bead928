"""Convolution in 1, 2 and 3 spatial dimensions: forward, backward-data,
backward-filter, each checked and dispatched to the GPU kernels (CuPy input)
or the CPU path (NumPy input).

Notation: x (N, C, H, W), w (K, C, R, S), stride s, padding P,
y (N, K, Ho, Wo) with Ho = (H + 2P - R) // s + 1 (see _args.output_size).

    y[n,k,i,j]  = b[k] + sum_{c,p,q} x[n, c, i*s + p - P, j*s + q - P] * w[k,c,p,q]
    dx[n,c,h,w] = sum_{k,p,q} dy_dil[n, k, h + P - p, w + P - q] * w[k,c,p,q]
                  (dy dilated by the stride: the correlation of dy with the
                   180-degree rotated filter)
    dw[k,c,p,q] = sum_{n,i,j} dy[n,k,i,j] * x[n, c, i*s + p - P, j*s + q - P]
    db[k]       = sum_{n,i,j} dy[n,k,i,j]

The 1-D and 3-D ops are the same sums over one and three spatial offsets.
`version` picks the GPU kernel version (None = by shape, the faster one on
an H100: see _gpu_launch.resolve_version); it is ignored on the CPU.
`precision` ("highest" | "high" | "medium", None = the policy of
gpucnn.precision) is what float32 GPU convolutions may trade for speed; the
CPU computes every mode in float32. float16 arrays are accepted (float32
accumulation, float16 result); see docs/precision.md.
"""
from .. import backend
from . import _args
from ._dispatch import conv_kwargs, implementation, narrow, widen


def _forward(op, nd, x, w, b, stride, padding, version, precision):
    x, w, b = map(backend.dlpack_or_same, (x, w, b))  # DLPack inputs (PyTorch, JAX): zero-copy views
    xp, a = _args.conv_forward_args(op, nd, x, w, b, stride, padding)
    impl = implementation("conv", xp, nd)
    (x, w, b), half = widen(x, w, b)
    y = impl.forward(x, w, a.stride, a.padding, **conv_kwargs(xp, op, version, precision, nd, "forward"))
    if b is not None:
        y += b.reshape((1, -1) + (1,) * nd)
    return narrow(y, half)


def _backward_data(op, nd, dy, w, x_shape, stride, padding, version, precision):
    dy, w = map(backend.dlpack_or_same, (dy, w))
    xp, a = _args.conv_backward_data_args(op, nd, dy, w, x_shape, stride, padding)
    impl = implementation("conv", xp, nd)
    (dy, w), half = widen(dy, w)
    return narrow(impl.backward_data(dy, w, a.x_shape, a.stride, a.padding,
                                     **conv_kwargs(xp, op, version, precision, nd, "backward_data")), half)


def _backward_filter(op, nd, dy, x, w_shape, stride, padding, version, precision):
    dy, x = map(backend.dlpack_or_same, (dy, x))
    xp, a = _args.conv_backward_filter_args(op, nd, dy, x, w_shape, stride, padding)
    impl = implementation("conv", xp, nd)
    (dy, x), half = widen(dy, x)
    return narrow(impl.backward_filter(dy, x, a.w_shape, a.stride, a.padding,
                                       **conv_kwargs(xp, op, version, precision, nd, "backward_filter")), half)


def conv1d(x, w, b=None, stride=1, padding=0, *, version=None, precision=None):
    """x (N, C, L), w (K, C, S) -> y (N, K, Lo)."""
    return _forward("conv1d", 1, x, w, b, stride, padding, version, precision)


def conv2d(x, w, b=None, stride=1, padding=0, *, version=None, precision=None):
    """x (N, C, H, W), w (K, C, R, S) -> y (N, K, Ho, Wo)."""
    return _forward("conv2d", 2, x, w, b, stride, padding, version, precision)


def conv3d(x, w, b=None, stride=1, padding=0, *, version=None, precision=None):
    """x (N, C, D, H, W), w (K, C, T, R, S) -> y (N, K, Do, Ho, Wo)."""
    return _forward("conv3d", 3, x, w, b, stride, padding, version, precision)


def conv1d_backward_data(dy, w, x_shape, stride=1, padding=0, *, version=None, precision=None):
    return _backward_data("conv1d_backward_data", 1, dy, w, x_shape, stride, padding, version, precision)


def conv2d_backward_data(dy, w, x_shape, stride=1, padding=0, *, version=None, precision=None):
    """dy (N, K, Ho, Wo), w (K, C, R, S) -> dx of shape x_shape (N, C, H, W)."""
    return _backward_data("conv2d_backward_data", 2, dy, w, x_shape, stride, padding, version, precision)


def conv3d_backward_data(dy, w, x_shape, stride=1, padding=0, *, version=None, precision=None):
    return _backward_data("conv3d_backward_data", 3, dy, w, x_shape, stride, padding, version, precision)


def conv1d_backward_filter(dy, x, w_shape, stride=1, padding=0, *, version=None, precision=None):
    return _backward_filter("conv1d_backward_filter", 1, dy, x, w_shape, stride, padding, version, precision)


def conv2d_backward_filter(dy, x, w_shape, stride=1, padding=0, *, version=None, precision=None):
    """dy (N, K, Ho, Wo), x (N, C, H, W) -> dw of shape w_shape (K, C, R, S).
    Deterministic: the same inputs give bitwise the same dw on every run."""
    return _backward_filter("conv2d_backward_filter", 2, dy, x, w_shape, stride, padding, version, precision)


def conv3d_backward_filter(dy, x, w_shape, stride=1, padding=0, *, version=None, precision=None):
    return _backward_filter("conv3d_backward_filter", 3, dy, x, w_shape, stride, padding, version, precision)


def conv_backward_bias(dy):
    """db[k] = sum of dy over every axis but the channel axis 1."""
    return dy.sum(axis=(0,) + tuple(range(2, dy.ndim)))
