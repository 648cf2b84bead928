"""Float64 plain-loop references for convolution and pooling (the truth that
tests, examples and benchmarks compare against).

Written straight from the math and sharing no code with the fast paths:
pad explicitly, loop over output positions (and window offsets for pools),
contract only over channels and the window with tensordot. Generic over 1, 2
and 3 spatial dimensions (itertools.product over the spatial indices).
Signatures mirror gpucnn.functional; stride/padding are ints or tuples.

Notation: x (N, C, *spatial), w (K, C, *kernel), y (N, K, *out),
out = (H + 2P - R) // stride + 1 per spatial dimension.
"""
import itertools

import numpy as np


def _tuple(value, nd):
    return (int(value),) * nd if np.isscalar(value) else tuple(int(v) for v in value)


def _out(spatial, kernel, stride, padding):
    return tuple((h + 2 * p - r) // s + 1 for h, r, s, p in zip(spatial, kernel, stride, padding))


def _pad(a, padding, value=0.0):
    return np.pad(a, [(0, 0), (0, 0)] + [(p, p) for p in padding], constant_values=value)


def _window(o, kernel, stride):
    """Slices of the padded input covered by the window of output position o."""
    return tuple(slice(i * s, i * s + r) for i, r, s in zip(o, kernel, stride))


def _geometry(nd, stride, padding):
    return _tuple(stride, nd), _tuple(padding, nd)


def conv_forward_ref(x, w, b=None, stride=1, padding=0):
    """y[n,k,o] = b[k] + sum_{c, window} x_pad[n, c, o*stride + offset] * w[k, c, offset]."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    nd = x.ndim - 2
    stride, padding = _geometry(nd, stride, padding)
    kernel = w.shape[2:]
    out = _out(x.shape[2:], kernel, stride, padding)
    xp = _pad(x, padding)
    axes = list(range(1, nd + 2))
    y = np.zeros((x.shape[0], w.shape[0]) + out)
    for o in itertools.product(*map(range, out)):
        win = xp[(slice(None), slice(None)) + _window(o, kernel, stride)]
        y[(slice(None), slice(None)) + o] = np.tensordot(win, w, axes=(axes, axes))
    if b is not None:
        y += np.asarray(b, np.float64).reshape((1, -1) + (1,) * nd)
    return y


def conv_backward_data_ref(dy, w, x_shape, stride=1, padding=0):
    """The adjoint of the forward: every dy[n,k,o] scatters dy * w[k] back onto
    the window it was computed from; the padding is cropped at the end."""
    dy, w = np.asarray(dy, np.float64), np.asarray(w, np.float64)
    nd = dy.ndim - 2
    stride, padding = _geometry(nd, stride, padding)
    kernel = w.shape[2:]
    dxp = np.zeros(tuple(x_shape[:2]) + tuple(h + 2 * p for h, p in zip(x_shape[2:], padding)))
    for o in itertools.product(*map(range, dy.shape[2:])):
        g = dy[(slice(None), slice(None)) + o]                      # (N, K)
        dxp[(slice(None), slice(None)) + _window(o, kernel, stride)] += np.tensordot(g, w, axes=(1, 0))
    crop = tuple(slice(p, p + h) for h, p in zip(x_shape[2:], padding))
    return dxp[(slice(None), slice(None)) + crop].copy()


def conv_backward_filter_ref(dy, x, w_shape, stride=1, padding=0):
    """dw[k,c,offset] = sum over n and output positions o of dy[n,k,o] * x_pad[n, c, o*stride + offset]."""
    dy, x = np.asarray(dy, np.float64), np.asarray(x, np.float64)
    nd = x.ndim - 2
    stride, padding = _geometry(nd, stride, padding)
    kernel = tuple(w_shape[2:])
    xp = _pad(x, padding)
    dw = np.zeros(tuple(w_shape))
    for o in itertools.product(*map(range, dy.shape[2:])):
        g = dy[(slice(None), slice(None)) + o]                      # (N, K)
        win = xp[(slice(None), slice(None)) + _window(o, kernel, stride)]
        dw += np.tensordot(g, win, axes=(0, 0))
    return dw


def _pool_geometry(nd, kernel_size, stride, padding):
    kernel = _tuple(kernel_size, nd)
    return kernel, (kernel if stride is None else _tuple(stride, nd)), _tuple(padding, nd)


def _greater(v, best):
    """The max-pool order: NaN is above every number; among equals the first stays."""
    return (v > best) | (np.isnan(v) & ~np.isnan(best))


def max_pool_ref(x, kernel_size, stride=None, padding=0):
    """-> (y, argmax int32). Window offsets are visited in row-major order and an
    element replaces the current best only when strictly greater (NaN greater
    than any number), so ties and NaNs go to the first. Padding (-inf) is
    skipped: it can never be strictly greater, and argmax indexes the
    unpadded (n, c) plane/volume."""
    x = np.asarray(x, np.float64)
    nd = x.ndim - 2
    kernel, stride, padding = _pool_geometry(nd, kernel_size, stride, padding)
    spatial = x.shape[2:]
    out = _out(spatial, kernel, stride, padding)
    y = np.empty(x.shape[:2] + out)
    arg = np.empty(x.shape[:2] + out, np.int32)
    for o in itertools.product(*map(range, out)):
        best = idx = None
        for off in itertools.product(*map(range, kernel)):
            pos = tuple(i * s + r - p for i, s, r, p in zip(o, stride, off, padding))
            if not all(0 <= q < h for q, h in zip(pos, spatial)):
                continue
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
    out = _out(x.shape[2:], kernel, stride, padding)
    xp = _pad(x, padding)
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
