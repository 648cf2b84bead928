"""Max and average pooling in 1, 2 and 3 spatial dimensions, forward and
backward, checked and dispatched to the GPU kernels or the CPU path.

Notation: x (N, C, H, W), window R x S (kernel_size), stride (None = the
window), padding P (at most half the window, so every window holds a real
element), y (N, C, Ho, Wo) with Ho = (H + 2P - R) // stride + 1.

Max pooling: padding counts as -inf. argmax is int32 with y's shape and holds
the flat index h*W + w of the maximum in the unpadded (n, c) input plane
(d*H*W + h*W + w in 3-D, l in 1-D). Ties go to the first maximum in row-major
window order; a NaN counts as larger than any number (first NaN wins), so NaN
propagates as in PyTorch. The backward routes dy to argmax; overlapping
windows accumulate, in a fixed order (deterministic).
`version` picks the GPU kernel version (None = the default); ignored on the CPU.

float16 arrays are accepted (computed in float32, float16 result; max
pooling is exact, since float16 -> float32 is). On the GPU the 1-D/2-D v2
kernels read and write float16 directly; elsewhere the arrays are widened
to float32 and the result narrowed (the same bits).

Average pooling: padding counts as zeros and is included in the divisor
(R*S, count_include_pad in PyTorch's terms).

Dilated max pooling (PyTorch's `dilation`): the window taps are D apart, a
window spans D*(R-1) + 1 inputs, Ho = (H + 2P - D*(R-1) - 1) // stride + 1.

Adaptive pooling (adaptive_{avg,max}_pool{1,2,3}d(x, output_size)): output
o of an axis of size H pools PyTorch's window [floor(o*H/O), ceil((o+1)*H/O));
output_size is an int or a tuple (None keeps that input size). The average
divides by each window's own size; the max returns (y, argmax) with
max_pool's argmax encoding and tie/NaN rules, and its backward is
max_pool's routing (adaptive_max_pool*d_backward(dy, argmax, x_shape)).
Global average pooling is adaptive_avg_pool2d(x, 1).
"""
import numpy as np

from .. import backend
from . import _args
from ._dispatch import gpu_kwargs, implementation, narrow, widen, widen_for


def _max_forward(op, nd, x, kernel_size, stride, padding, dilation, version):
    x = backend.dlpack_or_same(x)  # DLPack inputs (PyTorch, JAX): zero-copy views
    xp, a = _args.pool_forward_args(op, nd, x, kernel_size, stride, padding, dilation)
    kw = gpu_kwargs(xp, version, "pool", nd, "max_forward")
    if any(d != 1 for d in a.dilation):
        kw["dilation"] = a.dilation
        if xp is np and version is not None and nd < 3:   # refused on the CPU as on the GPU
            from .pool_gpu import max_forward_version
            max_forward_version(version, a.dilation)
    impl = implementation("pool", xp, nd)
    (x,), half = widen_for(impl, x)
    return narrow(impl.max_forward(x, a.kernel, a.stride, a.padding, **kw), half)


def _max_backward(op, nd, dy, argmax, x_shape, kernel_size, stride, padding, dilation, version):
    """Without kernel_size the window geometry is unknown: the CPU scatters in
    output order and the GPU runs a plane-serial route (both deterministic).
    With it, each input element gathers from the windows that contain it
    (undilated windows; dilated ones take the route)."""
    dy, argmax = map(backend.dlpack_or_same, (dy, argmax))
    if kernel_size is None:
        xp, x_shape = _args.max_pool_backward_args(op, nd, dy, argmax, x_shape)
        geometry = None
    else:
        xp, a = _args.pool_backward_args(op, nd, dy, x_shape, kernel_size, stride, padding, argmax,
                                         dilation)
        dilated = any(d != 1 for d in a.dilation)
        x_shape, geometry = a.x_shape, None if dilated else (a.kernel, a.stride, a.padding)
    impl = implementation("pool", xp, nd)
    (dy,), half = widen_for(impl, dy)
    return narrow(impl.max_backward(dy, argmax, x_shape, geometry,
                                    **_max_backward_kwargs(xp, op, version, nd)), half)


def _max_backward_kwargs(xp, op, version, nd):
    """The GPU's kernel version; the CPU's op name (its scatter checks argmax, see pool_cpu)."""
    kwargs = gpu_kwargs(xp, version, "pool", nd, "max_backward")
    if xp is np:
        kwargs["op"] = op
    return kwargs


def _avg_forward(op, nd, x, kernel_size, stride, padding, version):
    x = backend.dlpack_or_same(x)
    xp, a = _args.pool_forward_args(op, nd, x, kernel_size, stride, padding)
    impl = implementation("pool", xp, nd)
    (x,), half = widen_for(impl, x)
    return narrow(impl.avg_forward(x, a.kernel, a.stride, a.padding,
                                                             **gpu_kwargs(xp, version, "pool", nd, "avg_forward")), half)


def _avg_backward(op, nd, dy, x_shape, kernel_size, stride, padding, version):
    dy = backend.dlpack_or_same(dy)
    xp, a = _args.pool_backward_args(op, nd, dy, x_shape, kernel_size, stride, padding)
    impl = implementation("pool", xp, nd)
    (dy,), half = widen_for(impl, dy)
    return narrow(impl.avg_backward(dy, a.x_shape, a.kernel, a.stride, a.padding,
                                                              **gpu_kwargs(xp, version, "pool", nd, "avg_backward")), half)


def max_pool1d(x, kernel_size, stride=None, padding=0, dilation=1, *, version=None):
    return _max_forward("max_pool1d", 1, x, kernel_size, stride, padding, dilation, version)


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, *, version=None):
    """x (N, C, H, W) -> (y, argmax), both (N, C, Ho, Wo); argmax int32 flat h*W + w."""
    return _max_forward("max_pool2d", 2, x, kernel_size, stride, padding, dilation, version)


def max_pool3d(x, kernel_size, stride=None, padding=0, dilation=1, *, version=None):
    return _max_forward("max_pool3d", 3, x, kernel_size, stride, padding, dilation, version)


def max_pool1d_backward(dy, argmax, x_shape, *, kernel_size=None, stride=None, padding=0, dilation=1,
                        version=None):
    return _max_backward("max_pool1d_backward", 1, dy, argmax, x_shape, kernel_size, stride, padding,
                         dilation, version)


def max_pool2d_backward(dy, argmax, x_shape, *, kernel_size=None, stride=None, padding=0, dilation=1,
                        version=None):
    """Route dy to argmax -> dx of shape x_shape. Passing the forward's
    kernel_size/stride/padding (the layers do) selects the gather, which
    parallelizes over input elements (the route without it runs a thread per plane)."""
    return _max_backward("max_pool2d_backward", 2, dy, argmax, x_shape, kernel_size, stride, padding,
                         dilation, version)


def max_pool3d_backward(dy, argmax, x_shape, *, kernel_size=None, stride=None, padding=0, dilation=1,
                        version=None):
    return _max_backward("max_pool3d_backward", 3, dy, argmax, x_shape, kernel_size, stride, padding,
                         dilation, version)


def avg_pool1d(x, kernel_size, stride=None, padding=0, *, version=None):
    return _avg_forward("avg_pool1d", 1, x, kernel_size, stride, padding, version)


def avg_pool2d(x, kernel_size, stride=None, padding=0, *, version=None):
    """x (N, C, H, W) -> y (N, C, Ho, Wo); zero padding counted in the divisor."""
    return _avg_forward("avg_pool2d", 2, x, kernel_size, stride, padding, version)


def avg_pool3d(x, kernel_size, stride=None, padding=0, *, version=None):
    return _avg_forward("avg_pool3d", 3, x, kernel_size, stride, padding, version)


def avg_pool1d_backward(dy, x_shape, kernel_size, stride=None, padding=0, *, version=None):
    return _avg_backward("avg_pool1d_backward", 1, dy, x_shape, kernel_size, stride, padding, version)


def avg_pool2d_backward(dy, x_shape, kernel_size, stride=None, padding=0, *, version=None):
    return _avg_backward("avg_pool2d_backward", 2, dy, x_shape, kernel_size, stride, padding, version)


def avg_pool3d_backward(dy, x_shape, kernel_size, stride=None, padding=0, *, version=None):
    return _avg_backward("avg_pool3d_backward", 3, dy, x_shape, kernel_size, stride, padding, version)


def _adaptive_avg(op, nd, x, output_size):
    x = backend.dlpack_or_same(x)
    xp, out = _args.adaptive_pool_args(op, nd, x, output_size)
    (x,), half = widen(x)
    return narrow(implementation("pool", xp, nd).adaptive_avg_forward(x, out), half)


def _adaptive_avg_backward(op, nd, dy, x_shape):
    dy = backend.dlpack_or_same(dy)
    xp, x_shape = _args.adaptive_pool_backward_args(op, nd, dy, x_shape)
    (dy,), half = widen(dy)
    return narrow(implementation("pool", xp, nd).adaptive_avg_backward(dy, x_shape), half)


def _adaptive_max(op, nd, x, output_size):
    x = backend.dlpack_or_same(x)
    xp, out = _args.adaptive_pool_args(op, nd, x, output_size)
    (x,), half = widen(x)
    return narrow(implementation("pool", xp, nd).adaptive_max_forward(x, out), half)


def _adaptive_max_backward(op, nd, dy, argmax, x_shape):
    """max_pool's route: dy to argmax, accumulating, in output order."""
    dy, argmax = map(backend.dlpack_or_same, (dy, argmax))
    xp, x_shape = _args.max_pool_backward_args(op, nd, dy, argmax, x_shape)
    impl = implementation("pool", xp, nd)
    (dy,), half = widen_for(impl, dy)
    return narrow(impl.max_backward(dy, argmax, x_shape, None, **_max_backward_kwargs(xp, op, None, nd)), half)


def adaptive_avg_pool1d(x, output_size):
    return _adaptive_avg("adaptive_avg_pool1d", 1, x, output_size)


def adaptive_avg_pool2d(x, output_size):
    """x (N, C, H, W) -> y (N, C, *output_size): the mean of each adaptive window."""
    return _adaptive_avg("adaptive_avg_pool2d", 2, x, output_size)


def adaptive_avg_pool3d(x, output_size):
    return _adaptive_avg("adaptive_avg_pool3d", 3, x, output_size)


def adaptive_avg_pool1d_backward(dy, x_shape):
    return _adaptive_avg_backward("adaptive_avg_pool1d_backward", 1, dy, x_shape)


def adaptive_avg_pool2d_backward(dy, x_shape):
    """dy (N, C, Ho, Wo) -> dx of shape x_shape: dy / window size over each window."""
    return _adaptive_avg_backward("adaptive_avg_pool2d_backward", 2, dy, x_shape)


def adaptive_avg_pool3d_backward(dy, x_shape):
    return _adaptive_avg_backward("adaptive_avg_pool3d_backward", 3, dy, x_shape)


def adaptive_max_pool1d(x, output_size):
    return _adaptive_max("adaptive_max_pool1d", 1, x, output_size)


def adaptive_max_pool2d(x, output_size):
    """x (N, C, H, W) -> (y, argmax), both (N, C, *output_size); argmax as max_pool2d's."""
    return _adaptive_max("adaptive_max_pool2d", 2, x, output_size)


def adaptive_max_pool3d(x, output_size):
    return _adaptive_max("adaptive_max_pool3d", 3, x, output_size)


def adaptive_max_pool1d_backward(dy, argmax, x_shape):
    return _adaptive_max_backward("adaptive_max_pool1d_backward", 1, dy, argmax, x_shape)


def adaptive_max_pool2d_backward(dy, argmax, x_shape):
    """Route dy to argmax -> dx of shape x_shape (overlapping windows accumulate)."""
    return _adaptive_max_backward("adaptive_max_pool2d_backward", 2, dy, argmax, x_shape)


def adaptive_max_pool3d_backward(dy, argmax, x_shape):
    return _adaptive_max_backward("adaptive_max_pool3d_backward", 3, dy, argmax, x_shape)
