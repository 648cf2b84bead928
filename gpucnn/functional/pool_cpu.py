"""CPU max and average pooling (the fallback path): Numba kernels parallel
over the (n, c) planes, each plane handled by one thread in row-major output
order, so every result is deterministic.

Notation: x (N, C, D, H, W), window (T, R, S), stride, padding P, y (N, C,
Do, Ho, Wo). 1-D and 2-D inputs run as 3-D with unit leading spatial
dimensions (window 1, stride 1, padding 0 there); the flat argmax index
d*H*W + h*W + w then reads h*W + w in 2-D and l in 1-D, as the contract says.
"""
import numba as nb
import numpy as np

from ._args import output_shape


@nb.njit(parallel=True, cache=True)
def _max_forward(x, kernel, stride, padding, y, arg):
    N, C, D, H, W = x.shape
    _, _, Do, Ho, Wo = y.shape
    T, R, S = kernel
    sd, sh, sw = stride
    pd, ph, pw = padding
    for nc in nb.prange(N * C):
        n, c = divmod(np.int64(nc), C)  # prange indices may be unsigned
        for od in range(Do):
            for oh in range(Ho):
                for ow in range(Wo):
                    # padding (-inf) is skipped: it is never strictly greater
                    best = x[n, c, 0, 0, 0]
                    idx = -1
                    for t in range(T):
                        d = od * sd + t - pd
                        if d < 0 or d >= D:
                            continue
                        for r in range(R):
                            h = oh * sh + r - ph
                            if h < 0 or h >= H:
                                continue
                            for s in range(S):
                                w = ow * sw + s - pw
                                if w < 0 or w >= W:
                                    continue
                                v = x[n, c, d, h, w]
                                # first strict maximum; NaN beats any number, the first NaN stays
                                if idx < 0 or v > best or (np.isnan(v) and not np.isnan(best)):
                                    best = v
                                    idx = (d * H + h) * W + w
                    y[n, c, od, oh, ow] = best
                    arg[n, c, od, oh, ow] = idx


@nb.njit(parallel=True, cache=True)
def _max_backward(dy, arg, dx):
    """dy, arg (N*C, P); dx (N*C, plane): dx[i, arg[i, o]] += dy[i, o], o ascending."""
    for i in nb.prange(dx.shape[0]):
        dx[i] = 0
        for o in range(dy.shape[1]):
            dx[i, arg[i, o]] += dy[i, o]


@nb.njit(parallel=True, cache=True)
def _avg_forward(x, kernel, stride, padding, y):
    N, C, D, H, W = x.shape
    _, _, Do, Ho, Wo = y.shape
    T, R, S = kernel
    sd, sh, sw = stride
    pd, ph, pw = padding
    count = T * R * S   # padding is counted in the divisor
    for nc in nb.prange(N * C):
        n, c = divmod(np.int64(nc), C)
        for od in range(Do):
            for oh in range(Ho):
                for ow in range(Wo):
                    acc = 0.0
                    for t in range(T):
                        d = od * sd + t - pd
                        if d < 0 or d >= D:
                            continue
                        for r in range(R):
                            h = oh * sh + r - ph
                            if h < 0 or h >= H:
                                continue
                            for s in range(S):
                                w = ow * sw + s - pw
                                if 0 <= w < W:
                                    acc += x[n, c, d, h, w]
                    y[n, c, od, oh, ow] = acc / count


@nb.njit(parallel=True, cache=True)
def _avg_backward(dy, kernel, stride, padding, dx):
    N, C, D, H, W = dx.shape
    _, _, Do, Ho, Wo = dy.shape
    T, R, S = kernel
    sd, sh, sw = stride
    pd, ph, pw = padding
    count = T * R * S
    for nc in nb.prange(N * C):
        n, c = divmod(np.int64(nc), C)
        dx[n, c] = 0
        for od in range(Do):
            for oh in range(Ho):
                for ow in range(Wo):
                    g = dy[n, c, od, oh, ow] / count
                    for t in range(T):
                        d = od * sd + t - pd
                        if d < 0 or d >= D:
                            continue
                        for r in range(R):
                            h = oh * sh + r - ph
                            if h < 0 or h >= H:
                                continue
                            for s in range(S):
                                w = ow * sw + s - pw
                                if 0 <= w < W:
                                    dx[n, c, d, h, w] += g


def _lift(values, fill):
    """A length-nd geometry tuple -> length 3, unit dimensions in front."""
    return (fill,) * (3 - len(values)) + tuple(values)


def _as5d(a):
    return np.ascontiguousarray(a).reshape(a.shape[:2] + (1,) * (5 - a.ndim) + a.shape[2:])


def _geometry(kernel, stride, padding):
    return _lift(kernel, 1), _lift(stride, 1), _lift(padding, 0)


def max_forward(x, kernel, stride, padding):
    shape = x.shape[:2] + output_shape(x.shape[2:], kernel, stride, padding)
    y = np.empty(shape, x.dtype)
    arg = np.empty(shape, np.int32)
    _max_forward(_as5d(x), *_geometry(kernel, stride, padding), _as5d(y), _as5d(arg))
    return y, arg


def max_backward(dy, argmax, x_shape, geometry):
    """Scatter in output order per plane. `geometry` (the forward's window) is
    not needed on the CPU: the scatter already runs each plane in one thread,
    in the same order a per-input gather would sum in."""
    N, C = x_shape[:2]
    plane = int(np.prod(x_shape[2:]))
    arg = argmax.reshape(N * C, -1)
    if arg.size and (arg.min() < 0 or arg.max() >= plane):
        raise ValueError(f"max_pool{len(x_shape) - 2}d_backward: argmax values must lie in "
                         f"[0, {plane}) for x_shape {tuple(x_shape)}, got "
                         f"[{arg.min()}, {arg.max()}]")
    dx = np.empty(x_shape, dy.dtype)
    _max_backward(np.ascontiguousarray(dy).reshape(N * C, -1), np.ascontiguousarray(arg),
                  dx.reshape(N * C, plane))
    return dx


def avg_forward(x, kernel, stride, padding):
    y = np.empty(x.shape[:2] + output_shape(x.shape[2:], kernel, stride, padding), x.dtype)
    _avg_forward(_as5d(x), *_geometry(kernel, stride, padding), _as5d(y))
    return y


def avg_backward(dy, x_shape, kernel, stride, padding):
    dx = np.empty(x_shape, dy.dtype)
    _avg_backward(_as5d(dy), *_geometry(kernel, stride, padding), _as5d(dx))
    return dx
