"""Argument checking and the one output-size helper for every conv/pool op.

Notation: N batch, C input channels, K output channels, spatial input
(D, H, W), kernel (T, R, S), stride, padding P. `nd` is the number of spatial
dimensions (1, 2 or 3). Every check runs before any kernel launch and raises
ValueError/TypeError naming the op and the shapes involved.
"""
import numpy as np

from .. import backend

# float16: computed in float32 with a float16 result (_dispatch.widen / narrow).
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16))
_LAYOUT = {1: "(N, C, L)", 2: "(N, C, H, W)", 3: "(N, C, D, H, W)"}
_KLAYOUT = {1: "(K, C, S)", 2: "(K, C, R, S)", 3: "(K, C, T, R, S)"}


def output_size(size, kernel, stride, padding):
    """Output length of one spatial dimension: (H + 2P - R) // S + 1."""
    return (size + 2 * padding - kernel) // stride + 1


def output_shape(spatial, kernel, stride, padding):
    """Output spatial shape, all tuples of the same length."""
    return tuple(output_size(h, r, s, p) for h, r, s, p in zip(spatial, kernel, stride, padding))


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


def check_geometry(op, spatial, kernel, stride, padding, what):
    """stride >= 1, padding >= 0, kernel no larger than the padded input.
    `what` names the shapes involved, e.g. "input (2, 3, 5, 5), weight (4, 3, 3, 3)"."""
    if any(s < 1 for s in stride):
        raise ValueError(f"{op}: stride must be >= 1, got {stride} ({what})")
    if any(p < 0 for p in padding):
        raise ValueError(f"{op}: padding must be >= 0, got {padding} ({what})")
    if any(k < 1 for k in kernel):
        raise ValueError(f"{op}: kernel size must be >= 1, got {kernel} ({what})")
    if any(k > h + 2 * p for h, k, p in zip(spatial, kernel, padding)):
        raise ValueError(f"{op}: kernel {kernel} is larger than the padded input "
                         f"(spatial {spatial} with padding {padding}; {what})")


class ConvArgs:
    """Checked geometry of one convolution: x_shape (N, C, *spatial), w_shape
    (K, C, *kernel), stride, padding, y_shape (N, K, *out)."""

    def __init__(self, op, nd, x_shape, w_shape, stride, padding):
        self.op, self.nd = op, nd
        self.stride = ntuple(op, "stride", stride, nd)
        self.padding = ntuple(op, "padding", padding, nd)
        self.x_shape, self.w_shape = tuple(x_shape), tuple(w_shape)
        if self.w_shape[1] != self.x_shape[1]:
            raise ValueError(f"{op}: channel mismatch: input has C={self.x_shape[1]} "
                             f"(shape {self.x_shape}) but weight expects C={self.w_shape[1]} "
                             f"(shape {self.w_shape})")
        self.kernel = self.w_shape[2:]
        check_geometry(op, self.x_shape[2:], self.kernel, self.stride, self.padding,
                       f"input {self.x_shape}, weight {self.w_shape}")
        self.out = output_shape(self.x_shape[2:], self.kernel, self.stride, self.padding)
        self.y_shape = (self.x_shape[0], self.w_shape[0]) + self.out


def conv_forward_args(op, nd, x, w, b, stride, padding):
    xp = check_arrays(op, x=x, w=w, b=b)
    check_ndim(op, "input x", x, nd, _LAYOUT)
    check_ndim(op, "weight w", w, nd, _KLAYOUT)
    if b is not None and tuple(b.shape) != (w.shape[0],):
        raise ValueError(f"{op}: bias must have shape ({w.shape[0]},) for weight {tuple(w.shape)}, "
                         f"got {tuple(b.shape)}")
    return xp, ConvArgs(op, nd, x.shape, w.shape, stride, padding)


def check_dy(op, dy, expected):
    if tuple(dy.shape) != tuple(expected):
        raise ValueError(f"{op}: output gradient dy has shape {tuple(dy.shape)}, "
                         f"expected {tuple(expected)}")


def conv_backward_data_args(op, nd, dy, w, x_shape, stride, padding):
    xp = check_arrays(op, dy=dy, w=w)
    check_ndim(op, "output gradient dy", dy, nd, _LAYOUT)
    check_ndim(op, "weight w", w, nd, _KLAYOUT)
    x_shape = shape_tuple(op, "x_shape", x_shape, nd + 2)
    args = ConvArgs(op, nd, x_shape, w.shape, stride, padding)
    check_dy(op, dy, args.y_shape)
    return xp, args


def conv_backward_filter_args(op, nd, dy, x, w_shape, stride, padding):
    xp = check_arrays(op, dy=dy, x=x)
    check_ndim(op, "output gradient dy", dy, nd, _LAYOUT)
    check_ndim(op, "input x", x, nd, _LAYOUT)
    w_shape = shape_tuple(op, "w_shape", w_shape, nd + 2)
    args = ConvArgs(op, nd, x.shape, w_shape, stride, padding)
    check_dy(op, dy, args.y_shape)
    return xp, args


class PoolArgs:
    """Checked geometry of one pooling: x_shape (N, C, *spatial), kernel,
    stride (None -> kernel), padding (<= kernel // 2, as in PyTorch, so that
    every window holds at least one real element), y_shape (N, C, *out)."""

    def __init__(self, op, nd, x_shape, kernel_size, stride, padding):
        self.op, self.nd = op, nd
        self.kernel = ntuple(op, "kernel_size", kernel_size, nd)
        self.stride = self.kernel if stride is None else ntuple(op, "stride", stride, nd)
        self.padding = ntuple(op, "padding", padding, nd)
        self.x_shape = tuple(x_shape)
        check_geometry(op, self.x_shape[2:], self.kernel, self.stride, self.padding,
                       f"input {self.x_shape}")
        if any(2 * p > k for k, p in zip(self.kernel, self.padding)):
            raise ValueError(f"{op}: padding {self.padding} must be at most half the kernel "
                             f"size {self.kernel} (input {self.x_shape})")
        self.out = output_shape(self.x_shape[2:], self.kernel, self.stride, self.padding)
        self.y_shape = self.x_shape[:2] + self.out


def pool_forward_args(op, nd, x, kernel_size, stride, padding):
    xp = check_arrays(op, x=x)
    check_ndim(op, "input x", x, nd, _LAYOUT)
    return xp, PoolArgs(op, nd, x.shape, kernel_size, stride, padding)


def pool_backward_args(op, nd, dy, x_shape, kernel_size, stride, padding, argmax=None):
    xp = check_arrays(op, dy=dy)
    check_ndim(op, "output gradient dy", dy, nd, _LAYOUT)
    x_shape = shape_tuple(op, "x_shape", x_shape, nd + 2)
    args = PoolArgs(op, nd, x_shape, kernel_size, stride, padding)
    check_dy(op, dy, args.y_shape)
    if argmax is not None:
        check_argmax(op, dy, argmax)
        # The GPU gather only compares argmax with each input's own index and
        # cannot write out of bounds; the CPU scatter writes through it.
        if not backend.is_gpu_array(dy):
            check_argmax_range(op, argmax, x_shape)
    return xp, args


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


def check_argmax_range(op, argmax, x_shape):
    """Every argmax must index the (n, c) input plane: routing dy through it
    (the CPU scatter, the GPU route kernel) would otherwise write out of
    bounds. Two reductions (device syncs on the GPU)."""
    plane = int(np.prod(x_shape[2:]))
    if argmax.size and (int(argmax.min()) < 0 or int(argmax.max()) >= plane):
        raise ValueError(f"{op}: argmax holds indices outside the input plane of {plane} "
                         f"elements (x_shape {tuple(x_shape)}, argmax {tuple(argmax.shape)})")


def max_pool_backward_args(op, nd, dy, argmax, x_shape):
    """Checks for a max-pool backward given without the window geometry."""
    xp = check_arrays(op, dy=dy)
    check_ndim(op, "output gradient dy", dy, nd, _LAYOUT)
    x_shape = shape_tuple(op, "x_shape", x_shape, nd + 2)
    if tuple(dy.shape[:2]) != x_shape[:2]:
        raise ValueError(f"{op}: dy shape {tuple(dy.shape)} does not match x_shape {x_shape} in (N, C)")
    check_argmax(op, dy, argmax)
    check_argmax_range(op, argmax, x_shape)
    return xp, x_shape
