"""Convolution in 1, 2 and 3 spatial dimensions: forward, backward-data,
backward-filter, each checked and dispatched to the GPU kernels (CuPy input)
or the CPU path (NumPy input).

Notation: x (N, C, H, W), w (K, C/G, R, S), stride s, padding P, dilation D,
groups G, y (N, K, Ho, Wo) with Ho = (H + 2P - D*(R-1) - 1) // s + 1 (see
_args.output_size).

    y[n,k,i,j]  = b[k] + sum_{c,p,q} x[n, c, i*s + p*D - P, j*s + q*D - P] * w[k,c,p,q]
    dx[n,c,h,w] = sum_{k,p,q} dy_dil[n, k, h + P - p*D, w + P - q*D] * w[k,c,p,q]
                  (dy dilated by the stride: the correlation of dy with the
                   180-degree rotated filter)
    dw[k,c,p,q] = sum_{n,i,j} dy[n,k,i,j] * x[n, c, i*s + p*D - P, j*s + q*D - P]
    db[k]       = sum_{n,i,j} dy[n,k,i,j]

with c running over k's group only (channels c in [g*C/G, (g+1)*C/G) for
k in [g*K/G, (g+1)*K/G); w's channel axis holds C/G). Depthwise is G = C.
padding="same" (stride 1) keeps the size: the total D*(R-1) is split as
PyTorch does, the odd element at the end (right/bottom), which the ops
realize by extending x with one zero there (_pad_end) around symmetric
padding; "valid" is padding 0.

Transposed convolution (conv_transpose*d, PyTorch's ConvTransposeNd math):
x (N, C_in, H, W), w (C_in, K/G, R, S) -> y (N, K, Ho, Wo) with
Ho = (H - 1)*s - 2P + D*(R-1) + output_padding + 1. It is the backward-data
of the convolution y -> x with weight w (C_in plays K there), so

    conv_transpose(x)          = conv_backward_data(x, w, y_shape)
    its backward-data  dx      = conv(dy, w)
    its backward-filter dw     = conv_backward_filter(x, dy, w_shape)

An output_padding >= s (PyTorch allows it when < D) leaves output rows no
input reaches through the conv geometry; x is then zero-extended at the end
to the conv's output size, and dx cropped back.

The 1-D and 3-D ops are the same sums over one and three spatial offsets.
`version` picks the GPU kernel version (None = by shape, the faster one on
an H100: see _gpu_launch.resolve_version); it is ignored on the CPU.
`precision` ("highest" | "high" | "medium", None = the policy of
gpucnn.precision) is what float32 GPU convolutions may trade for speed; the
CPU computes every mode in float32. float16 arrays are accepted (float32
accumulation, float16 result); see docs/precision.md. Any array with
__dlpack__ (PyTorch, JAX) is taken as a zero-copy NumPy/CuPy view.
"""
from .. import backend
from . import _args
from ._dispatch import conv_kwargs, implementation, narrow, widen


def _pad_end(xp, a, extra):
    """a zero-extended by extra[d] elements at the end of each spatial axis."""
    if not any(extra):
        return a
    return xp.pad(a, [(0, 0), (0, 0)] + [(0, e) for e in extra])


def _crop(xp, a, shape):
    """The leading corner of a with `shape`, C-contiguous."""
    if tuple(a.shape) == tuple(shape):
        return a
    return xp.ascontiguousarray(a[tuple(slice(0, n) for n in shape)])


def _kw(xp, op, a, version, precision, nd, direction):
    """Keyword arguments of the implementation modules: version and precision
    (GPU), dilation and groups only when not the defaults (the plain path stays
    the plain call). `direction` is the kernel direction that runs."""
    kw = conv_kwargs(xp, op, version, precision, nd, direction)
    if any(d != 1 for d in a.dilation):
        kw["dilation"] = a.dilation
    if a.groups != 1:
        kw["groups"] = a.groups
    return kw


def _bias(y, b, nd):
    if b is not None:
        y += b.reshape((1, -1) + (1,) * nd)
    return y


def _forward(op, nd, x, w, b, stride, padding, dilation, groups, version, precision):
    x, w, b = map(backend.dlpack_or_same, (x, w, b))
    xp, a = _args.conv_forward_args(op, nd, x, w, b, stride, padding, dilation, groups)
    impl = implementation("conv", xp, nd)
    (x, w, b), half = widen(x, w, b)
    y = impl.forward(_pad_end(xp, x, a.extra), w, a.stride, a.padding,
                     **_kw(xp, op, a, version, precision, nd, "forward"))
    return narrow(_bias(y, b, nd), half)


def _backward_data(op, nd, dy, w, x_shape, stride, padding, dilation, groups, version, precision):
    dy, w = map(backend.dlpack_or_same, (dy, w))
    xp, a = _args.conv_backward_data_args(op, nd, dy, w, x_shape, stride, padding, dilation, groups)
    impl = implementation("conv", xp, nd)
    (dy, w), half = widen(dy, w)
    dx = impl.backward_data(dy, w, a.x_ext_shape, a.stride, a.padding,
                            **_kw(xp, op, a, version, precision, nd, "backward_data"))
    return narrow(_crop(xp, dx, a.x_shape), half)


def _backward_filter(op, nd, dy, x, w_shape, stride, padding, dilation, groups, version, precision):
    dy, x = map(backend.dlpack_or_same, (dy, x))
    xp, a = _args.conv_backward_filter_args(op, nd, dy, x, w_shape, stride, padding, dilation, groups)
    impl = implementation("conv", xp, nd)
    (dy, x), half = widen(dy, x)
    dw = impl.backward_filter(dy, _pad_end(xp, x, a.extra), a.w_shape, a.stride, a.padding,
                              **_kw(xp, op, a, version, precision, nd, "backward_filter"))
    return narrow(dw, half)


def _extension(a):
    """How much the conv's output (the transposed op's input side) exceeds x."""
    return tuple(e - h for e, h in zip(a.x_ext_shape[2:], a.x_shape[2:]))


# The transposed ops run the conv kernels with the roles swapped: their forward
# is the conv's backward-data, their backward-data the conv's forward.
def _transpose(op, nd, x, w, b, stride, padding, output_padding, groups, dilation, version, precision):
    x, w, b = map(backend.dlpack_or_same, (x, w, b))
    xp, a = _args.conv_transpose_args(op, nd, x, w, b, stride, padding, output_padding, groups, dilation)
    c = a.conv
    impl = implementation("conv", xp, nd)
    (x, w, b), half = widen(x, w, b)
    y = impl.backward_data(_pad_end(xp, x, _extension(a)), w, a.y_shape, c.stride, c.padding,
                           **_kw(xp, op, c, version, precision, nd, "backward_data"))
    return narrow(_bias(y, b, nd), half)


def _transpose_backward_data(op, nd, dy, w, x_shape, stride, padding, output_padding, groups, dilation,
                             version, precision):
    dy, w = map(backend.dlpack_or_same, (dy, w))
    xp, a = _args.conv_transpose_backward_data_args(op, nd, dy, w, x_shape, stride, padding,
                                                    output_padding, groups, dilation)
    c = a.conv
    (dy, w), half = widen(dy, w)
    dx = implementation("conv", xp, nd).forward(dy, w, c.stride, c.padding,
                                                **_kw(xp, op, c, version, precision, nd, "forward"))
    return narrow(_crop(xp, dx, a.x_shape), half)


def _transpose_backward_filter(op, nd, dy, x, w_shape, stride, padding, output_padding, groups,
                               dilation, version, precision):
    dy, x = map(backend.dlpack_or_same, (dy, x))
    xp, a = _args.conv_transpose_backward_filter_args(op, nd, dy, x, w_shape, stride, padding,
                                                      output_padding, groups, dilation)
    c = a.conv
    (dy, x), half = widen(dy, x)
    dw = implementation("conv", xp, nd).backward_filter(
        _pad_end(xp, x, _extension(a)), dy, a.w_shape, c.stride, c.padding,
        **_kw(xp, op, c, version, precision, nd, "backward_filter"))
    return narrow(dw, half)


def conv1d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, *, version=None, precision=None):
    """x (N, C, L), w (K, C/groups, S) -> y (N, K, Lo)."""
    return _forward("conv1d", 1, x, w, b, stride, padding, dilation, groups, version, precision)


def conv2d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, *, version=None, precision=None):
    """x (N, C, H, W), w (K, C/groups, R, S) -> y (N, K, Ho, Wo).
    padding: int, pair, "same" (stride 1) or "valid"."""
    return _forward("conv2d", 2, x, w, b, stride, padding, dilation, groups, version, precision)


def conv3d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, *, version=None, precision=None):
    """x (N, C, D, H, W), w (K, C/groups, T, R, S) -> y (N, K, Do, Ho, Wo)."""
    return _forward("conv3d", 3, x, w, b, stride, padding, dilation, groups, version, precision)


def conv1d_backward_data(dy, w, x_shape, stride=1, padding=0, dilation=1, groups=1, *, version=None, precision=None):
    return _backward_data("conv1d_backward_data", 1, dy, w, x_shape, stride, padding, dilation, groups,
                          version, precision)


def conv2d_backward_data(dy, w, x_shape, stride=1, padding=0, dilation=1, groups=1, *, version=None, precision=None):
    """dy (N, K, Ho, Wo), w (K, C/groups, R, S) -> dx of shape x_shape (N, C, H, W)."""
    return _backward_data("conv2d_backward_data", 2, dy, w, x_shape, stride, padding, dilation, groups,
                          version, precision)


def conv3d_backward_data(dy, w, x_shape, stride=1, padding=0, dilation=1, groups=1, *, version=None, precision=None):
    return _backward_data("conv3d_backward_data", 3, dy, w, x_shape, stride, padding, dilation, groups,
                          version, precision)


def conv1d_backward_filter(dy, x, w_shape, stride=1, padding=0, dilation=1, groups=1, *, version=None, precision=None):
    return _backward_filter("conv1d_backward_filter", 1, dy, x, w_shape, stride, padding, dilation, groups,
                            version, precision)


def conv2d_backward_filter(dy, x, w_shape, stride=1, padding=0, dilation=1, groups=1, *, version=None, precision=None):
    """dy (N, K, Ho, Wo), x (N, C, H, W) -> dw of shape w_shape (K, C/groups, R, S).
    Deterministic: the same inputs give bitwise the same dw on every run."""
    return _backward_filter("conv2d_backward_filter", 2, dy, x, w_shape, stride, padding, dilation, groups,
                            version, precision)


def conv3d_backward_filter(dy, x, w_shape, stride=1, padding=0, dilation=1, groups=1, *, version=None, precision=None):
    return _backward_filter("conv3d_backward_filter", 3, dy, x, w_shape, stride, padding, dilation, groups,
                            version, precision)


def conv_backward_bias(dy):
    """db[k] = sum of dy over every axis but the channel axis 1."""
    return dy.sum(axis=(0,) + tuple(range(2, dy.ndim)))


def conv_transpose1d(x, w, b=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1, *,
                     version=None, precision=None):
    """x (N, C_in, L), w (C_in, K/groups, S) -> y (N, K, Lo)."""
    return _transpose("conv_transpose1d", 1, x, w, b, stride, padding, output_padding, groups, dilation,
                      version, precision)


def conv_transpose2d(x, w, b=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1, *,
                     version=None, precision=None):
    """x (N, C_in, H, W), w (C_in, K/groups, R, S) -> y (N, K, Ho, Wo),
    Ho = (H - 1)*stride - 2*padding + dilation*(R - 1) + output_padding + 1."""
    return _transpose("conv_transpose2d", 2, x, w, b, stride, padding, output_padding, groups, dilation,
                      version, precision)


def conv_transpose3d(x, w, b=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1, *,
                     version=None, precision=None):
    """x (N, C_in, D, H, W), w (C_in, K/groups, T, R, S) -> y (N, K, Do, Ho, Wo)."""
    return _transpose("conv_transpose3d", 3, x, w, b, stride, padding, output_padding, groups, dilation,
                      version, precision)


def conv_transpose1d_backward_data(dy, w, x_shape, stride=1, padding=0, output_padding=0, groups=1,
                                   dilation=1, *, version=None, precision=None):
    return _transpose_backward_data("conv_transpose1d_backward_data", 1, dy, w, x_shape, stride, padding,
                                    output_padding, groups, dilation, version, precision)


def conv_transpose2d_backward_data(dy, w, x_shape, stride=1, padding=0, output_padding=0, groups=1,
                                   dilation=1, *, version=None, precision=None):
    """dy (N, K, Ho, Wo), w (C_in, K/groups, R, S) -> dx of shape x_shape (N, C_in, H, W):
    the convolution of dy with w."""
    return _transpose_backward_data("conv_transpose2d_backward_data", 2, dy, w, x_shape, stride, padding,
                                    output_padding, groups, dilation, version, precision)


def conv_transpose3d_backward_data(dy, w, x_shape, stride=1, padding=0, output_padding=0, groups=1,
                                   dilation=1, *, version=None, precision=None):
    return _transpose_backward_data("conv_transpose3d_backward_data", 3, dy, w, x_shape, stride, padding,
                                    output_padding, groups, dilation, version, precision)


def conv_transpose1d_backward_filter(dy, x, w_shape, stride=1, padding=0, output_padding=0, groups=1,
                                     dilation=1, *, version=None, precision=None):
    return _transpose_backward_filter("conv_transpose1d_backward_filter", 1, dy, x, w_shape, stride,
                                      padding, output_padding, groups, dilation, version, precision)


def conv_transpose2d_backward_filter(dy, x, w_shape, stride=1, padding=0, output_padding=0, groups=1,
                                     dilation=1, *, version=None, precision=None):
    """dy (N, K, Ho, Wo), x (N, C_in, H, W) -> dw of shape w_shape (C_in, K/groups, R, S):
    the conv backward-filter with x in dy's role and dy in x's. db = conv_backward_bias(dy)."""
    return _transpose_backward_filter("conv_transpose2d_backward_filter", 2, dy, x, w_shape, stride,
                                      padding, output_padding, groups, dilation, version, precision)


def conv_transpose3d_backward_filter(dy, x, w_shape, stride=1, padding=0, output_padding=0, groups=1,
                                     dilation=1, *, version=None, precision=None):
    return _transpose_backward_filter("conv_transpose3d_backward_filter", 3, dy, x, w_shape, stride,
                                      padding, output_padding, groups, dilation, version, precision)
