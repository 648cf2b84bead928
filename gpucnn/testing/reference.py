"""Float64 plain-loop references for convolution and pooling (the truth that
tests, examples and benchmarks compare against).

Written straight from the math and sharing no code with the fast paths:
pad explicitly, loop over output positions (and window offsets for pools),
contract only over channels and the window with tensordot. Generic over 1, 2
and 3 spatial dimensions (itertools.product over the spatial indices).
Signatures mirror gpucnn.functional; stride/padding/dilation are ints or
tuples; padding may be "same" or "valid" for convolution.

Notation: x (N, C, *spatial), w (K, C/groups, *kernel), y (N, K, *out),
out = (H + 2P - D*(R-1) - 1) // stride + 1 per spatial dimension (D the
dilation: window taps D apart). Groups split C and K into `groups` equal
consecutive blocks; output block g sees input block g only.
"""
import itertools
import math

import numpy as np


def _tuple(value, nd):
    return (int(value),) * nd if np.isscalar(value) else tuple(int(v) for v in value)


def _pads(padding, nd, kernel, dilation):
    """(before, after) per dimension; "same" puts the odd remainder after."""
    if padding == "valid":
        return [(0, 0)] * nd
    if padding == "same":
        total = [d * (r - 1) for r, d in zip(kernel, dilation)]
        return [(t // 2, t - t // 2) for t in total]
    return [(p, p) for p in _tuple(padding, nd)]


def _pad(a, pads, value=0.0):
    return np.pad(a, [(0, 0), (0, 0)] + list(pads), constant_values=value)


def _window(o, kernel, stride, dilation=None):
    """Slices of the padded input covered by the window of output position o."""
    dilation = dilation or (1,) * len(kernel)
    return tuple(slice(i * s, i * s + d * (r - 1) + 1, d) for i, r, s, d in zip(o, kernel, stride, dilation))


def _conv_geometry(nd, kernel, stride, padding, dilation):
    stride, dilation = _tuple(stride, nd), _tuple(dilation, nd)
    return stride, _pads(padding, nd, kernel, dilation), dilation


def _out_size(padded, kernel, stride, dilation):
    return tuple((h - d * (r - 1) - 1) // s + 1 for h, r, s, d in zip(padded, kernel, stride, dilation))


def _group_slices(channels, groups):
    size = channels // groups
    return [slice(g * size, (g + 1) * size) for g in range(groups)]


def conv_forward_ref(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """y[n,k,o] = b[k] + sum_{c in k's group, window} x_pad[n, c, o*stride + offset*dilation] * w[k, c, offset]."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    nd = x.ndim - 2
    kernel = w.shape[2:]
    stride, pads, dilation = _conv_geometry(nd, kernel, stride, padding, dilation)
    xp = _pad(x, pads)
    out = _out_size(xp.shape[2:], kernel, stride, dilation)
    axes = list(range(1, nd + 2))
    y = np.zeros((x.shape[0], w.shape[0]) + out)
    for cg, kg in zip(_group_slices(x.shape[1], groups), _group_slices(w.shape[0], groups)):
        for o in itertools.product(*map(range, out)):
            win = xp[(slice(None), cg) + _window(o, kernel, stride, dilation)]
            y[(slice(None), kg) + o] = np.tensordot(win, w[kg], axes=(axes, axes))
    if b is not None:
        y += np.asarray(b, np.float64).reshape((1, -1) + (1,) * nd)
    return y


def conv_backward_data_ref(dy, w, x_shape, stride=1, padding=0, dilation=1, groups=1):
    """The adjoint of the forward: every dy[n,k,o] scatters dy * w[k] back onto
    the window it was computed from; the padding is cropped at the end."""
    dy, w = np.asarray(dy, np.float64), np.asarray(w, np.float64)
    nd = dy.ndim - 2
    kernel = w.shape[2:]
    stride, pads, dilation = _conv_geometry(nd, kernel, stride, padding, dilation)
    dxp = np.zeros(tuple(x_shape[:2]) + tuple(h + a + b for h, (a, b) in zip(x_shape[2:], pads)))
    for cg, kg in zip(_group_slices(x_shape[1], groups), _group_slices(w.shape[0], groups)):
        for o in itertools.product(*map(range, dy.shape[2:])):
            g = dy[(slice(None), kg) + o]                               # (N, K/groups)
            dxp[(slice(None), cg) + _window(o, kernel, stride, dilation)] += np.tensordot(g, w[kg], axes=(1, 0))
    crop = tuple(slice(a, a + h) for h, (a, _) in zip(x_shape[2:], pads))
    return dxp[(slice(None), slice(None)) + crop].copy()


def conv_backward_filter_ref(dy, x, w_shape, stride=1, padding=0, dilation=1, groups=1):
    """dw[k,c,offset] = sum over n and output positions o of dy[n,k,o] * x_pad[n, c, o*stride + offset*dilation]."""
    dy, x = np.asarray(dy, np.float64), np.asarray(x, np.float64)
    nd = x.ndim - 2
    kernel = tuple(w_shape[2:])
    stride, pads, dilation = _conv_geometry(nd, kernel, stride, padding, dilation)
    xp = _pad(x, pads)
    dw = np.zeros(tuple(w_shape))
    for cg, kg in zip(_group_slices(x.shape[1], groups), _group_slices(w_shape[0], groups)):
        for o in itertools.product(*map(range, dy.shape[2:])):
            g = dy[(slice(None), kg) + o]                               # (N, K/groups)
            win = xp[(slice(None), cg) + _window(o, kernel, stride, dilation)]
            dw[kg] += np.tensordot(g, win, axes=(0, 0))
    return dw


def conv_transpose_ref(x, w, b=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """Transposed convolution, x (N, C_in, *spatial), w (C_in, K/groups, *kernel):
    every input x[n,c,i] scatters x * w[c] onto the output window at
    i*stride - padding + offset*dilation (output block g from input block g);
    out = (H-1)*stride - 2P + D*(R-1) + output_padding + 1."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    nd = x.ndim - 2
    kernel = w.shape[2:]
    stride, padding = _tuple(stride, nd), _tuple(padding, nd)
    output_padding, dilation = _tuple(output_padding, nd), _tuple(dilation, nd)
    out = tuple((h - 1) * s - 2 * p + d * (r - 1) + op + 1 for h, r, s, p, op, d in
                zip(x.shape[2:], kernel, stride, padding, output_padding, dilation))
    K = w.shape[1] * groups
    yp = np.zeros((x.shape[0], K) + tuple(o + 2 * p for o, p in zip(out, padding)))
    for cg, kg in zip(_group_slices(x.shape[1], groups), _group_slices(K, groups)):
        for i in itertools.product(*map(range, x.shape[2:])):
            g = x[(slice(None), cg) + i]                                # (N, C_in/groups)
            yp[(slice(None), kg) + _window(i, kernel, stride, dilation)] += np.tensordot(g, w[cg], axes=(1, 0))
    y = yp[(slice(None), slice(None)) + tuple(slice(p, p + o) for o, p in zip(out, padding))].copy()
    if b is not None:
        y += np.asarray(b, np.float64).reshape((1, -1) + (1,) * nd)
    return y


def conv_transpose_backward_data_ref(dy, w, x_shape, stride=1, padding=0, output_padding=0, groups=1,
                                     dilation=1):
    """dx[n,c,i] = sum over c's group k and offsets of dy_pad[n, k, i*stride + offset*dilation] * w[c, k, offset]."""
    dy, w = np.asarray(dy, np.float64), np.asarray(w, np.float64)
    nd = dy.ndim - 2
    kernel = w.shape[2:]
    stride, padding, dilation = _tuple(stride, nd), _tuple(padding, nd), _tuple(dilation, nd)
    dyp = _pad(dy, [(p, p) for p in padding])
    axes = list(range(1, nd + 2))
    dx = np.zeros(tuple(x_shape))
    for cg, kg in zip(_group_slices(x_shape[1], groups), _group_slices(dy.shape[1], groups)):
        for i in itertools.product(*map(range, x_shape[2:])):
            win = dyp[(slice(None), kg) + _window(i, kernel, stride, dilation)]
            dx[(slice(None), cg) + i] = np.tensordot(win, w[cg], axes=(axes, axes))
    return dx


def conv_transpose_backward_filter_ref(dy, x, w_shape, stride=1, padding=0, output_padding=0, groups=1,
                                       dilation=1):
    """dw[c,k,offset] = sum over n, i of x[n,c,i] * dy_pad[n, k, i*stride + offset*dilation]."""
    dy, x = np.asarray(dy, np.float64), np.asarray(x, np.float64)
    nd = dy.ndim - 2
    kernel = tuple(w_shape[2:])
    stride, padding, dilation = _tuple(stride, nd), _tuple(padding, nd), _tuple(dilation, nd)
    dyp = _pad(dy, [(p, p) for p in padding])
    dw = np.zeros(tuple(w_shape))
    for cg, kg in zip(_group_slices(x.shape[1], groups), _group_slices(dy.shape[1], groups)):
        for i in itertools.product(*map(range, x.shape[2:])):
            win = dyp[(slice(None), kg) + _window(i, kernel, stride, dilation)]
            dw[cg] += np.tensordot(x[(slice(None), cg) + i], win, axes=(0, 0))
    return dw


def _pool_geometry(nd, kernel_size, stride, padding):
    kernel = _tuple(kernel_size, nd)
    return kernel, (kernel if stride is None else _tuple(stride, nd)), _tuple(padding, nd)


def _greater(v, best):
    """The max-pool order: NaN is above every number; among equals the first stays."""
    return (v > best) | (np.isnan(v) & ~np.isnan(best))


def _max_with_argmax(x, out, window):
    """(y, argmax) over output positions `out`: each output o takes the max of x
    over the input positions window(o) yields, in that order; an element
    replaces the best only when strictly greater (_greater), so ties and NaNs
    go to the first; argmax is the flat index into the (n, c) plane/volume."""
    spatial = x.shape[2:]
    y = np.empty(x.shape[:2] + out)
    arg = np.empty(x.shape[:2] + out, np.int32)
    for o in itertools.product(*map(range, out)):
        best = idx = None
        for pos in window(o):
            v = x[(slice(None), slice(None)) + pos]
            flat = int(np.ravel_multi_index(pos, spatial))
            if best is None:
                best, idx = v.copy(), np.full(v.shape, flat)
            else:
                take = _greater(v, best)
                best[take], idx[take] = v[take], flat
        y[(slice(None), slice(None)) + o] = best
        arg[(slice(None), slice(None)) + o] = idx
    return y, arg


def max_pool_ref(x, kernel_size, stride=None, padding=0, dilation=1):
    """-> (y, argmax int32). Window offsets are visited in row-major order and an
    element replaces the current best only when strictly greater (NaN greater
    than any number), so ties and NaNs go to the first. Padding (-inf) is
    skipped: it can never be strictly greater, and argmax indexes the
    unpadded (n, c) plane/volume. Dilation spaces the window taps."""
    x = np.asarray(x, np.float64)
    nd = x.ndim - 2
    kernel, stride, padding = _pool_geometry(nd, kernel_size, stride, padding)
    dilation = _tuple(dilation, nd)
    spatial = x.shape[2:]
    out = _out_size(tuple(h + 2 * p for h, p in zip(spatial, padding)), kernel, stride, dilation)

    def window(o):  # the in-bounds taps of output o's window
        for off in itertools.product(*map(range, kernel)):
            pos = tuple(i * s + r * d - p for i, s, r, d, p in zip(o, stride, off, dilation, padding))
            if all(0 <= q < h for q, h in zip(pos, spatial)):
                yield pos
    return _max_with_argmax(x, out, window)


def max_pool_backward_ref(dy, argmax, x_shape):
    """dx[n, c, argmax[n,c,o]] += dy[n,c,o], output positions in row-major order."""
    dy = np.asarray(dy, np.float64)
    n, c = x_shape[:2]
    dx = np.zeros((n * c, int(np.prod(x_shape[2:]))))
    rows = np.arange(n * c)
    for o in itertools.product(*map(range, dy.shape[2:])):
        sel = (slice(None), slice(None)) + o
        dx[rows, argmax[sel].ravel()] += dy[sel].ravel()   # one element per row: no collisions
    return dx.reshape(x_shape)


def avg_pool_ref(x, kernel_size, stride=None, padding=0):
    """y = sum of the zero-padded window / prod(kernel) (padding counted)."""
    x = np.asarray(x, np.float64)
    nd = x.ndim - 2
    kernel, stride, padding = _pool_geometry(nd, kernel_size, stride, padding)
    out = _out_size(tuple(h + 2 * p for h, p in zip(x.shape[2:], padding)), kernel, stride, (1,) * nd)
    xp = _pad(x, [(p, p) for p in padding])
    y = np.empty(x.shape[:2] + out)
    for o in itertools.product(*map(range, out)):
        win = xp[(slice(None), slice(None)) + _window(o, kernel, stride)]
        y[(slice(None), slice(None)) + o] = win.sum(axis=tuple(range(2, nd + 2))) / np.prod(kernel)
    return y


def avg_pool_backward_ref(dy, x_shape, kernel_size, stride=None, padding=0):
    """Every dy[n,c,o] / prod(kernel) is added to each element of its window."""
    dy = np.asarray(dy, np.float64)
    nd = dy.ndim - 2
    kernel, stride, padding = _pool_geometry(nd, kernel_size, stride, padding)
    dxp = np.zeros(tuple(x_shape[:2]) + tuple(h + 2 * p for h, p in zip(x_shape[2:], padding)))
    for o in itertools.product(*map(range, dy.shape[2:])):
        g = dy[(slice(None), slice(None)) + o] / np.prod(kernel)
        dxp[(slice(None), slice(None)) + _window(o, kernel, stride)] += g.reshape(g.shape + (1,) * nd)
    crop = tuple(slice(p, p + h) for h, p in zip(x_shape[2:], padding))
    return dxp[(slice(None), slice(None)) + crop].copy()


def _adaptive_window(o, spatial, out):
    """PyTorch's adaptive window of output o: [floor(i*H/O), ceil((i+1)*H/O)) per axis."""
    return tuple(slice(math.floor(i * h / n), math.ceil((i + 1) * h / n)) for i, h, n in zip(o, spatial, out))


def _adaptive_out(output_size, spatial):
    nd = len(spatial)
    items = (output_size,) * nd if output_size is None or np.isscalar(output_size) else tuple(output_size)
    return tuple(h if v is None else int(v) for v, h in zip(items, spatial))


def adaptive_avg_pool_ref(x, output_size):
    """y[n,c,o] = mean of x over o's adaptive window."""
    x = np.asarray(x, np.float64)
    spatial = x.shape[2:]
    out = _adaptive_out(output_size, spatial)
    y = np.empty(x.shape[:2] + out)
    for o in itertools.product(*map(range, out)):
        win = x[(slice(None), slice(None)) + _adaptive_window(o, spatial, out)]
        y[(slice(None), slice(None)) + o] = win.mean(axis=tuple(range(2, x.ndim)))
    return y


def adaptive_avg_pool_backward_ref(dy, x_shape):
    """Every dy[n,c,o] / window size is added to each element of o's window."""
    dy = np.asarray(dy, np.float64)
    spatial, out = tuple(x_shape[2:]), dy.shape[2:]
    dx = np.zeros(tuple(x_shape))
    for o in itertools.product(*map(range, out)):
        win = _adaptive_window(o, spatial, out)
        count = np.prod([w.stop - w.start for w in win])
        g = dy[(slice(None), slice(None)) + o] / count
        dx[(slice(None), slice(None)) + win] += g.reshape(g.shape + (1,) * len(out))
    return dx


def adaptive_max_pool_ref(x, output_size):
    """-> (y, argmax int32): the max of o's adaptive window, first maximum in
    row-major order, NaN above every number (as max_pool_ref); argmax is the
    flat index into the (n, c) plane/volume."""
    x = np.asarray(x, np.float64)
    spatial = x.shape[2:]
    out = _adaptive_out(output_size, spatial)

    def window(o):
        return itertools.product(*[range(w.start, w.stop) for w in _adaptive_window(o, spatial, out)])
    return _max_with_argmax(x, out, window)
