"""Argument checking and the one output-size helper for every conv/pool op.

Notation: N batch, C input channels, K output channels, spatial input
(D, H, W), kernel (T, R, S), stride, padding P, dilation D (the spacing of
the kernel taps: a kernel R spans D*(R-1) + 1 input positions), groups G
(C/G input and K/G output channels per group). `nd` is the number of spatial
dimensions (1, 2 or 3). Every check runs before any kernel launch and raises
ValueError/TypeError naming the op and the shapes involved.
"""
import functools

import numpy as np

from .. import backend

# float16: computed in float32 with a float16 result (_dispatch.widen / narrow).
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16))
_LAYOUT = {1: "(N, C, L)", 2: "(N, C, H, W)", 3: "(N, C, D, H, W)"}
_KLAYOUT = {1: "(K, C, S)", 2: "(K, C, R, S)", 3: "(K, C, T, R, S)"}
_TLAYOUT = {1: "(C_in, K/groups, S)", 2: "(C_in, K/groups, R, S)", 3: "(C_in, K/groups, T, R, S)"}


def output_size(size, kernel, stride, padding, dilation=1):
    """Output length of one spatial dimension: (H + 2P - D*(R-1) - 1) // S + 1
    (PyTorch's formula; with D = 1 it is (H + 2P - R) // S + 1)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def output_shape(spatial, kernel, stride, padding, dilation=None):
    """Output spatial shape, all tuples of the same length (dilation None = all 1)."""
    dilation = dilation or (1,) * len(spatial)
    return tuple(output_size(h, r, s, p, d)
                 for h, r, s, p, d in zip(spatial, kernel, stride, padding, dilation))


def transposed_output_size(size, kernel, stride, padding, output_padding=0, dilation=1):
    """Output length of a transposed convolution (the input length of the
    convolution it is the adjoint of): (H - 1)*S - 2P + D*(R-1) + output_padding + 1."""
    return (size - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1


def effective_kernel(kernel, dilation):
    """Input positions a dilated window spans: D*(R-1) + 1 per dimension."""
    return tuple(d * (r - 1) + 1 for r, d in zip(kernel, dilation))


def ntuple(op, name, value, nd):
    """An int or a length-nd sequence of ints -> tuple of nd Python ints."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{op}: {name} must be an int or a tuple of {nd} ints, got {value!r}")
    if isinstance(value, (int, np.integer)):
        return (int(value),) * nd
    try:
        items = tuple(value)
    except TypeError:
        raise TypeError(f"{op}: {name} must be an int or a tuple of {nd} ints, got {value!r}") from None
    if len(items) != nd or not all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
                                   for v in items):
        raise TypeError(f"{op}: {name} must be an int or a tuple of {nd} ints, got {value!r}")
    return tuple(int(v) for v in items)


def shape_tuple(op, name, value, ndim):
    try:
        items = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise TypeError(f"{op}: {name} must be a shape tuple, got {value!r}") from None
    if len(items) != ndim or any(v < 1 for v in items):
        raise ValueError(f"{op}: {name} must be {ndim} positive ints, got {value!r}")
    return items


def check_arrays(op, **arrays):
    """All given arrays: same backend (NumPy xor CuPy), one float dtype.
    Returns the array module. None values are skipped."""
    given = {k: a for k, a in arrays.items() if a is not None}
    kinds = set()
    for name, a in given.items():
        if backend.is_gpu_array(a):
            kinds.add("cupy")
        elif isinstance(a, np.ndarray):
            kinds.add("numpy")
        else:
            raise TypeError(f"{op}: {name} must be a NumPy or CuPy array, got {type(a).__name__}")
    def shapes():  # only for the messages: formatting costs more than the checks
        return ", ".join(f"{k} {tuple(a.shape)}" for k, a in given.items())

    if len(kinds) > 1:
        desc = ", ".join(f"{k}={'cupy' if backend.is_gpu_array(a) else 'numpy'}" for k, a in given.items())
        raise TypeError(f"{op}: cannot mix NumPy and CuPy arrays ({desc}; shapes {shapes()})")
    dtypes = {k: np.dtype(a.dtype) for k, a in given.items()}
    for name, dt in dtypes.items():
        if dt not in FLOAT_DTYPES:
            raise TypeError(f"{op}: {name} must be float16, float32 or float64, got {dt} "
                            f"(shape {tuple(given[name].shape)})")
    if len(set(dtypes.values())) > 1:
        desc = ", ".join(f"{k}: {dt}" for k, dt in dtypes.items())
        raise TypeError(f"{op}: all arrays must have the same dtype, got {desc} (shapes {shapes()})")
    return backend.get_array_module(*given.values())


def check_ndim(op, name, a, nd, layout):
    if a.ndim != nd + 2:
        raise ValueError(f"{op}: {name} must be {nd + 2}-D {layout[nd]}, got shape {tuple(a.shape)}")


def check_geometry(op, spatial, kernel, stride, padding, what, dilation=None, extra=None):
    """stride >= 1, padding >= 0, dilation >= 1, the (dilated) kernel no larger
    than the padded input (`extra`: one more padding element at the end, the
    odd half of padding="same"). `what` names the shapes involved, e.g.
    "input (2, 3, 5, 5), weight (4, 3, 3, 3)"."""
    dilation = dilation or (1,) * len(kernel)
    extra = extra or (0,) * len(kernel)
    if any(s < 1 for s in stride):
        raise ValueError(f"{op}: stride must be >= 1, got {stride} ({what})")
    if any(p < 0 for p in padding):
        raise ValueError(f"{op}: padding must be >= 0, got {padding} ({what})")
    if any(d < 1 for d in dilation):
        raise ValueError(f"{op}: dilation must be >= 1, got {dilation} ({what})")
    if any(k < 1 for k in kernel):
        raise ValueError(f"{op}: kernel size must be >= 1, got {kernel} ({what})")
    span = effective_kernel(kernel, dilation)
    if any(k > h + 2 * p + e for h, k, p, e in zip(spatial, span, padding, extra)):
        dil = f" with dilation {dilation} (span {span})" if any(d > 1 for d in dilation) else ""
        raise ValueError(f"{op}: kernel {kernel}{dil} is larger than the padded input "
                         f"(spatial {spatial} with padding {padding}; {what})")


def conv_padding(op, padding, nd, kernel, stride, dilation, what):
    """padding: an int, an nd-tuple, "valid" (0) or "same" (stride 1 only: the
    output keeps the input size). -> (padding, extra): "same" pads the total
    D*(R-1) as PyTorch does, total // 2 on both sides and the odd remainder
    (`extra`, 0 or 1) once more at the end (right/bottom)."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0,) * nd, (0,) * nd
        if padding == "same":
            if any(s != 1 for s in stride):
                raise ValueError(f"{op}: padding='same' needs stride 1, got stride {stride} ({what})")
            total = tuple(d * (r - 1) for r, d in zip(kernel, dilation))
            return tuple(t // 2 for t in total), tuple(t % 2 for t in total)
        raise ValueError(f"{op}: padding must be an int, a tuple of {nd} ints, 'same' or 'valid', "
                         f"got {padding!r} ({what})")
    return ntuple(op, "padding", padding, nd), (0,) * nd


def check_groups(op, groups, C, K, w_channels, what):
    """groups >= 1 dividing C and K, and the weight's channel axis C/groups."""
    if isinstance(groups, (bool, np.bool_)) or not isinstance(groups, (int, np.integer)):
        raise TypeError(f"{op}: groups must be an int, got {groups!r} ({what})")
    groups = int(groups)
    if groups < 1:
        raise ValueError(f"{op}: groups must be >= 1, got {groups} ({what})")
    if C % groups or K % groups:
        raise ValueError(f"{op}: groups={groups} must divide both the input channels C={C} "
                         f"and the output channels K={K} ({what})")
    if w_channels != C // groups:
        raise ValueError(f"{op}: channel mismatch: input has C={C}, so with groups={groups} the "
                         f"weight needs C/groups={C // groups} input channels, got {w_channels} ({what})")
    return groups


class ConvArgs:
    """Checked geometry of one convolution: x_shape (N, C, *spatial), w_shape
    (K, C/groups, *kernel), stride, padding (symmetric part), extra (the odd
    end padding of "same"), dilation, groups, y_shape (N, K, *out).
    x_ext_shape is x_shape with `extra` added: the kernels see the input
    padded by `extra` at the end, then symmetric padding."""

    def __init__(self, op, nd, x_shape, w_shape, stride, padding, dilation=1, groups=1):
        self.op, self.nd = op, nd
        self.x_shape, self.w_shape = tuple(x_shape), tuple(w_shape)
        what = f"input {self.x_shape}, weight {self.w_shape}"
        self.stride = ntuple(op, "stride", stride, nd)
        self.dilation = ntuple(op, "dilation", dilation, nd)
        self.kernel = self.w_shape[2:]
        self.padding, self.extra = conv_padding(op, padding, nd, self.kernel, self.stride,
                                                self.dilation, what)
        self.groups = check_groups(op, groups, self.x_shape[1], self.w_shape[0], self.w_shape[1], what)
        check_geometry(op, self.x_shape[2:], self.kernel, self.stride, self.padding, what,
                       self.dilation, self.extra)
        self.x_ext_shape = self.x_shape[:2] + tuple(h + e for h, e in zip(self.x_shape[2:], self.extra))
        self.out = output_shape(self.x_ext_shape[2:], self.kernel, self.stride, self.padding, self.dilation)
        self.y_shape = (self.x_shape[0], self.w_shape[0]) + self.out


def _typed(value):
    """A cache key part that tells 1 from True and 1 from 1.0 (equal and equally
    hashed in Python), so that a cached valid call never answers for an invalid one."""
    if isinstance(value, tuple):
        return tuple((type(v), v) for v in value)
    return type(value), value


@functools.lru_cache(maxsize=512)
def _cached_check(key, cls, args):
    return cls(*args)


def checked(cls, *args):
    """cls(*args) (ConvArgs, PoolArgs: the checked geometry of a call), cached
    per call signature when every argument is hashable (checking took about 7
    us of a 30 us conv call on small layers). A cached object is shared:
    callers only read it. Invalid arguments raise every time (exceptions are
    not cached)."""
    try:
        key = tuple(_typed(a) for a in args)
        hash(key)
    except TypeError:   # a list or another unhashable value: checked uncached
        return cls(*args)
    return _cached_check(key, cls, args)


def conv_args(op, nd, x_shape, w_shape, stride, padding, dilation=1, groups=1):
    return checked(ConvArgs, op, nd, tuple(x_shape), tuple(w_shape), stride, padding, dilation, groups)


def conv_forward_args(op, nd, x, w, b, stride, padding, dilation=1, groups=1):
    xp = check_arrays(op, x=x, w=w, b=b)
    check_ndim(op, "input x", x, nd, _LAYOUT)
    check_ndim(op, "weight w", w, nd, _KLAYOUT)
    check_bias(op, b, w.shape[0], w.shape)
    return xp, conv_args(op, nd, x.shape, w.shape, stride, padding, dilation, groups)


def check_bias(op, b, channels, w_shape):
    if b is not None and tuple(b.shape) != (channels,):
        raise ValueError(f"{op}: bias must have shape ({channels},) for weight {tuple(w_shape)}, "
                         f"got {tuple(b.shape)}")


def check_dy(op, dy, expected):
    if tuple(dy.shape) != tuple(expected):
        raise ValueError(f"{op}: output gradient dy has shape {tuple(dy.shape)}, "
                         f"expected {tuple(expected)}")


def conv_backward_data_args(op, nd, dy, w, x_shape, stride, padding, dilation=1, groups=1):
    xp = check_arrays(op, dy=dy, w=w)
    check_ndim(op, "output gradient dy", dy, nd, _LAYOUT)
    check_ndim(op, "weight w", w, nd, _KLAYOUT)
    x_shape = shape_tuple(op, "x_shape", x_shape, nd + 2)
    args = conv_args(op, nd, x_shape, w.shape, stride, padding, dilation, groups)
    check_dy(op, dy, args.y_shape)
    return xp, args


def conv_backward_filter_args(op, nd, dy, x, w_shape, stride, padding, dilation=1, groups=1):
    xp = check_arrays(op, dy=dy, x=x)
    check_ndim(op, "output gradient dy", dy, nd, _LAYOUT)
    check_ndim(op, "input x", x, nd, _LAYOUT)
    w_shape = shape_tuple(op, "w_shape", w_shape, nd + 2)
    args = conv_args(op, nd, x.shape, w_shape, stride, padding, dilation, groups)
    check_dy(op, dy, args.y_shape)
    return xp, args


class ConvTransposeArgs:
    """Checked geometry of a transposed convolution x (N, C_in, *spatial),
    w (C_in, K/groups, *kernel) -> y (N, K, *out) with
    out = (H - 1)*S - 2P + D*(R-1) + output_padding + 1 (transposed_output_size).
    It is the backward-data of the convolution `conv` (y_shape -> its output
    conv.y_shape, weight w); output_padding >= S (allowed when < D, as in
    PyTorch) makes conv.y_shape longer than x: x is then zero-extended at the
    end to conv.y_shape (x_ext_shape)."""

    def __init__(self, op, nd, x_shape, w_shape, stride, padding, output_padding, groups, dilation,
                 y_shape=None):
        self.op, self.nd = op, nd
        self.x_shape, self.w_shape = tuple(x_shape), tuple(w_shape)
        what = f"input {self.x_shape}, weight {self.w_shape}"
        if isinstance(padding, str):
            raise ValueError(f"{op}: padding must be an int or a tuple of {nd} ints "
                             f"(no 'same'/'valid' for transposed convolution), got {padding!r} ({what})")
        self.stride = ntuple(op, "stride", stride, nd)
        self.padding = ntuple(op, "padding", padding, nd)
        self.output_padding = ntuple(op, "output_padding", output_padding, nd)
        self.dilation = ntuple(op, "dilation", dilation, nd)
        self.kernel = self.w_shape[2:]
        check_geometry(op, (1 << 30,) * nd, self.kernel, self.stride, self.padding, what, self.dilation)
        if self.w_shape[0] != self.x_shape[1]:
            raise ValueError(f"{op}: channel mismatch: input has C_in={self.x_shape[1]} but weight "
                             f"(C_in, K/groups, ...) has {self.w_shape[0]} ({what})")
        if any(op_ < 0 or (op_ >= s and op_ >= d)
               for op_, s, d in zip(self.output_padding, self.stride, self.dilation)):
            raise ValueError(f"{op}: output_padding {self.output_padding} must be >= 0 and smaller than "
                             f"either stride {self.stride} or dilation {self.dilation} ({what})")
        if isinstance(groups, (bool, np.bool_)) or not isinstance(groups, (int, np.integer)) or groups < 1:
            raise ValueError(f"{op}: groups must be a positive int, got {groups!r} ({what})")
        self.groups = int(groups)
        if self.x_shape[1] % self.groups:
            raise ValueError(f"{op}: groups={self.groups} must divide the input channels "
                             f"C_in={self.x_shape[1]} ({what})")
        K = self.w_shape[1] * self.groups
        self.out = tuple(transposed_output_size(h, r, s, p, o, d) for h, r, s, p, o, d in zip(
            self.x_shape[2:], self.kernel, self.stride, self.padding, self.output_padding, self.dilation))
        if any(o < 1 for o in self.out):
            raise ValueError(f"{op}: output size {self.out} is not positive ({what}, stride "
                             f"{self.stride}, padding {self.padding}, dilation {self.dilation})")
        self.y_shape = (self.x_shape[0], K) + self.out
        if y_shape is not None and tuple(y_shape) != self.y_shape:
            raise ValueError(f"{op}: output gradient dy has shape {tuple(y_shape)}, expected {self.y_shape}")
        # the convolution y -> x that this op is the adjoint of
        self.conv = ConvArgs(op, nd, self.y_shape, self.w_shape, self.stride, self.padding, self.dilation, self.groups)
        self.x_ext_shape = self.conv.y_shape


def conv_transpose_args(op, nd, x, w, b, stride, padding, output_padding, groups, dilation):
    xp = check_arrays(op, x=x, w=w, b=b)
    check_ndim(op, "input x", x, nd, _LAYOUT)
    check_ndim(op, "weight w", w, nd, _TLAYOUT)
    a = ConvTransposeArgs(op, nd, x.shape, w.shape, stride, padding, output_padding, groups, dilation)
    check_bias(op, b, a.y_shape[1], w.shape)
    return xp, a


def conv_transpose_backward_data_args(op, nd, dy, w, x_shape, stride, padding, output_padding,
                                      groups, dilation):
    xp = check_arrays(op, dy=dy, w=w)
    check_ndim(op, "output gradient dy", dy, nd, _LAYOUT)
    check_ndim(op, "weight w", w, nd, _TLAYOUT)
    x_shape = shape_tuple(op, "x_shape", x_shape, nd + 2)
    return xp, ConvTransposeArgs(op, nd, x_shape, w.shape, stride, padding, output_padding, groups,
                                 dilation, dy.shape)


def conv_transpose_backward_filter_args(op, nd, dy, x, w_shape, stride, padding, output_padding,
                                        groups, dilation):
    xp = check_arrays(op, dy=dy, x=x)
    check_ndim(op, "output gradient dy", dy, nd, _LAYOUT)
    check_ndim(op, "input x", x, nd, _LAYOUT)
    w_shape = shape_tuple(op, "w_shape", w_shape, nd + 2)
    return xp, ConvTransposeArgs(op, nd, x.shape, w_shape, stride, padding, output_padding, groups,
                                 dilation, dy.shape)


class PoolArgs:
    """Checked geometry of one pooling: x_shape (N, C, *spatial), kernel,
    stride (None -> kernel), padding (<= kernel // 2, as in PyTorch, so that
    every window holds at least one real element), dilation (max pooling
    only: the spacing of the window taps), y_shape (N, C, *out)."""

    def __init__(self, op, nd, x_shape, kernel_size, stride, padding, dilation=1):
        self.op, self.nd = op, nd
        self.kernel = ntuple(op, "kernel_size", kernel_size, nd)
        self.stride = self.kernel if stride is None else ntuple(op, "stride", stride, nd)
        self.padding = ntuple(op, "padding", padding, nd)
        self.dilation = ntuple(op, "dilation", dilation, nd)
        self.x_shape = tuple(x_shape)
        check_geometry(op, self.x_shape[2:], self.kernel, self.stride, self.padding,
                       f"input {self.x_shape}", self.dilation)
        if any(h < 1 for h in self.x_shape[2:]):  # every window would be padding only
            raise ValueError(f"{op}: input {self.x_shape} has an empty spatial dimension; pooling "
                             f"needs at least one element per window")
        if any(2 * p > k for k, p in zip(self.kernel, self.padding)):
            raise ValueError(f"{op}: padding {self.padding} must be at most half the kernel "
                             f"size {self.kernel} (input {self.x_shape})")
        self.out = output_shape(self.x_shape[2:], self.kernel, self.stride, self.padding, self.dilation)
        self.y_shape = self.x_shape[:2] + self.out


def pool_forward_args(op, nd, x, kernel_size, stride, padding, dilation=1):
    xp = check_arrays(op, x=x)
    check_ndim(op, "input x", x, nd, _LAYOUT)
    return xp, checked(PoolArgs, op, nd, x.shape, kernel_size, stride, padding, dilation)


def pool_backward_args(op, nd, dy, x_shape, kernel_size, stride, padding, argmax=None, dilation=1):
    xp = check_arrays(op, dy=dy)
    check_ndim(op, "output gradient dy", dy, nd, _LAYOUT)
    x_shape = shape_tuple(op, "x_shape", x_shape, nd + 2)
    args = checked(PoolArgs, op, nd, x_shape, kernel_size, stride, padding, dilation)
    check_dy(op, dy, args.y_shape)
    if argmax is not None:
        # The GPU gather only compares argmax with each input's own index and
        # cannot write out of bounds; the CPU scatter checks each index itself.
        check_argmax(op, dy, argmax)
    return xp, args


def adaptive_output_size(op, output_size, spatial):
    """output_size: an int, or an nd-tuple of ints or None (None keeps that
    input size, as in PyTorch's 2-D/3-D pools) -> nd positive ints."""
    nd = len(spatial)
    if isinstance(output_size, (int, np.integer)):
        items = (output_size,) * nd
    else:
        try:
            items = tuple(output_size)
        except TypeError:
            raise TypeError(f"{op}: output_size must be an int or a tuple of {nd} ints/None, "
                            f"got {output_size!r}") from None
    if len(items) != nd or not all(v is None or (isinstance(v, (int, np.integer))
                                                 and not isinstance(v, (bool, np.bool_))) for v in items):
        raise TypeError(f"{op}: output_size must be an int or a tuple of {nd} ints/None, got {output_size!r}")
    out = tuple(h if v is None else int(v) for v, h in zip(items, spatial))
    if any(o < 1 for o in out):
        raise ValueError(f"{op}: output_size must be positive, got {output_size!r} (input spatial {spatial})")
    return out


def adaptive_windows(size, out):
    """PyTorch's adaptive windows along one axis: output i pools the inputs
    [floor(i*H/O), ceil((i+1)*H/O)). -> (starts, ends) as int lists."""
    starts = [(i * size) // out for i in range(out)]
    ends = [-((-(i + 1) * size) // out) for i in range(out)]
    return starts, ends


def adaptive_pool_args(op, nd, x, output_size):
    xp = check_arrays(op, x=x)
    check_ndim(op, "input x", x, nd, _LAYOUT)
    if any(h < 1 for h in x.shape[2:]):
        raise ValueError(f"{op}: input spatial size must be positive, got shape {tuple(x.shape)}")
    return xp, adaptive_output_size(op, output_size, tuple(x.shape[2:]))


def adaptive_pool_backward_args(op, nd, dy, x_shape, argmax=None):
    xp = check_arrays(op, dy=dy)
    check_ndim(op, "output gradient dy", dy, nd, _LAYOUT)
    x_shape = shape_tuple(op, "x_shape", x_shape, nd + 2)
    if tuple(dy.shape[:2]) != x_shape[:2]:
        raise ValueError(f"{op}: dy shape {tuple(dy.shape)} does not match x_shape {x_shape} in (N, C)")
    if argmax is not None:
        check_argmax(op, dy, argmax)
        if backend.is_gpu_array(dy):   # (the CPU scatter checks each index itself)
            check_argmax_range(op, argmax, x_shape)
    return xp, x_shape


def check_argmax(op, dy, argmax):
    """argmax: an int32 array of dy's shape, on dy's backend."""
    if not (isinstance(argmax, np.ndarray) or backend.is_gpu_array(argmax)):
        raise TypeError(f"{op}: argmax must be an int32 array, got {type(argmax).__name__}")
    if backend.is_gpu_array(argmax) != backend.is_gpu_array(dy):
        raise TypeError(f"{op}: cannot mix NumPy and CuPy arrays (dy and argmax)")
    if np.dtype(argmax.dtype) != np.int32:
        raise TypeError(f"{op}: argmax must be int32 with dy's shape {tuple(dy.shape)}, "
                        f"got {argmax.dtype} {tuple(argmax.shape)}")
    if tuple(argmax.shape) != tuple(dy.shape):  # a shape error, like every other
        raise ValueError(f"{op}: argmax must have dy's shape {tuple(dy.shape)}, got {tuple(argmax.shape)}")


def argmax_range_error(op, argmax_shape, x_shape):
    plane = int(np.prod(x_shape[2:]))
    return ValueError(f"{op}: argmax holds indices outside the input plane of {plane} "
                      f"elements (x_shape {tuple(x_shape)}, argmax {tuple(argmax_shape)})")


def check_argmax_range(op, argmax, x_shape):
    """Every argmax must index the (n, c) input plane: routing dy through it
    (the GPU route kernel) would otherwise write out of bounds. Two
    reductions (device syncs). On the CPU the scatter itself checks each
    index before it writes (pool_cpu.max_backward, the same error): two
    serial passes over argmax cost more than the parallel scatter."""
    plane = int(np.prod(x_shape[2:]))
    if argmax.size and (int(argmax.min()) < 0 or int(argmax.max()) >= plane):
        raise argmax_range_error(op, argmax.shape, x_shape)


def max_pool_backward_args(op, nd, dy, argmax, x_shape):
    """Checks for a max-pool backward given without the window geometry."""
    xp = check_arrays(op, dy=dy)
    check_ndim(op, "output gradient dy", dy, nd, _LAYOUT)
    x_shape = shape_tuple(op, "x_shape", x_shape, nd + 2)
    if tuple(dy.shape[:2]) != x_shape[:2]:
        raise ValueError(f"{op}: dy shape {tuple(dy.shape)} does not match x_shape {x_shape} in (N, C)")
    check_argmax(op, dy, argmax)
    if backend.is_gpu_array(dy):   # (the CPU scatter checks each index itself)
        check_argmax_range(op, argmax, x_shape)
    return xp, x_shape
