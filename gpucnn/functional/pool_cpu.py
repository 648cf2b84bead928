"""CPU max and average pooling (the fallback path): serial Numba kernels over
a range of (n, c) planes; large ops split the planes across threads
(cpu_parallel.over_parts), small ones run in the calling thread.

Notation: x (N, C, D, H, W), window (T, R, S), stride, padding P, y (N, C,
Do, Ho, Wo). 1-D and 2-D inputs run as 3-D with unit leading spatial
dimensions (window 1, stride 1, padding 0 there); the flat argmax index
d*H*W + h*W + w then reads h*W + w in 2-D and l in 1-D, as the contract says.

Loop order: per output row (od, oh), the window taps (t, r, s) in row-major
order, each tap a loop over the row's outputs ow that see a real input
element with it. The tap ranges are computed once per row and the ow ranges
once per call (_row_runs), so the inner loops run over contiguous outputs
without bounds branches. Every output still meets its window's taps in
row-major order, so the first-maximum tie rule holds; padding is never
visited (-inf for max never wins; zero for avg adds nothing, and the divisor
counts it). The max update is branch-free (bitwise tests and selects): with
random data its outcome is unpredictable, and the branchy form was measured
2.5x slower. Each plane is handled by one thread in a fixed order, so every
result is deterministic.
"""
import numba as nb
import numpy as np

from ._args import adaptive_windows, argmax_range_error, output_shape
from ..cpu_parallel import over_items
from .flat_cpu import as5d, lift3


@nb.njit(inline="always")
def _taps(o, stride, pad, size, window, dil=1):
    """The window taps k with 0 <= o*stride + k*dil - pad < size, as [k0, k1)
    (floor divisions: Numba's // floors like Python's)."""
    start = o * stride - pad
    k0 = max(0, (-start + dil - 1) // dil)
    return k0, max(k0, min(window, (size - 1 - start) // dil + 1))


@nb.njit(inline="always")
def _row_runs(S, sw, pw, W, Wo, dw=1):
    """For each tap s of a row: the outputs [o0, o1) that read a real input
    element with it and the input column w0 of o0, shape (S, 3)."""
    runs = np.empty((S, 3), np.int64)
    for s in range(S):
        o0 = max(0, (pw - s * dw + sw - 1) // sw)
        o1 = max(o0, min(Wo, (W - 1 + pw - s * dw) // sw + 1))
        runs[s, 0], runs[s, 1], runs[s, 2] = o0, o1, o0 * sw + s * dw - pw
    return runs


# The row loops index 1-D rows with unsigned indices (all are in range by
# construction), which drops Numba's negative-index handling from them.

@nb.njit(nogil=True, cache=True)
def _max_forward(x, kernel, stride, padding, dilation, y, arg, p0, p1):
    """Planes [p0, p1) of x (NC, D, H, W) -> y, arg (NC, Do, Ho, Wo)."""
    _, D, H, W = x.shape
    _, Do, Ho, Wo = y.shape
    T, R, S = kernel
    sd, sh, sw = stride
    pd, ph, pw = padding
    dd, dh, dw = dilation
    runs = _row_runs(S, sw, pw, W, Wo, dw)
    for p in range(p0, p1):
        for od in range(Do):
            t0, t1 = _taps(od, sd, pd, D, T, dd)
            for oh in range(Ho):
                r0, r1 = _taps(oh, sh, ph, H, R, dh)
                best, idx = y[p, od, oh], arg[p, od, oh]
                for i in range(Wo):
                    idx[i] = -1
                for t in range(t0, t1):
                    d = od * sd + t * dd - pd
                    for r in range(r0, r1):
                        h = oh * sh + r * dh - ph
                        row = x[p, d, h]
                        base = (d * H + h) * W
                        for s in range(S):
                            o0, o1, w0 = runs[s, 0], runs[s, 1], runs[s, 2]
                            for o in range(o0, o1):
                                w = w0 + (o - o0) * sw
                                v, b, k = row[np.uint64(w)], best[np.uint64(o)], idx[np.uint64(o)]
                                # first strict maximum; NaN beats any number, the first NaN stays;
                                # bitwise ops and selects, no branches (the outcome is random)
                                take = (k < 0) | (v > b) | ((v != v) & (b == b))
                                best[np.uint64(o)] = v if take else b
                                idx[np.uint64(o)] = base + w if take else k


@nb.njit(nogil=True, cache=True)
def _max_backward(dy, arg, dx, P, plane, p0, p1):
    """dy, arg (NC, P) and dx (NC, plane) flat: dx[p, arg[p, o]] += dy[p, o],
    o ascending; an index outside the plane is not written but counted (the
    count is returned)."""
    bad = 0
    for p in range(p0, p1):
        d0, s0 = p * plane, p * P
        for i in range(plane):
            dx[np.uint64(d0 + i)] = 0
        for o in range(P):
            a = arg[np.uint64(s0 + o)]
            if a < 0 or a >= plane:
                bad += 1
            else:
                dx[np.uint64(d0 + a)] += dy[np.uint64(s0 + o)]
    return bad


@nb.njit(nogil=True, cache=True)
def _avg_forward(x, kernel, stride, padding, y, p0, p1):
    _, D, H, W = x.shape
    _, Do, Ho, Wo = y.shape
    T, R, S = kernel
    sd, sh, sw = stride
    pd, ph, pw = padding
    count = T * R * S   # padding is counted in the divisor
    runs = _row_runs(S, sw, pw, W, Wo)
    for p in range(p0, p1):
        for od in range(Do):
            t0, t1 = _taps(od, sd, pd, D, T)
            for oh in range(Ho):
                r0, r1 = _taps(oh, sh, ph, H, R)
                acc = y[p, od, oh]
                for i in range(Wo):
                    acc[i] = 0
                for t in range(t0, t1):
                    for r in range(r0, r1):
                        row = x[p, od * sd + t - pd, oh * sh + r - ph]
                        for s in range(S):
                            o0, o1, w0 = runs[s, 0], runs[s, 1], runs[s, 2]
                            for o in range(o0, o1):
                                acc[np.uint64(o)] += row[np.uint64(w0 + (o - o0) * sw)]
                for i in range(Wo):
                    acc[i] /= count


@nb.njit(nogil=True, cache=True)
def _avg_backward(dy, kernel, stride, padding, dx, p0, p1):
    """dx[p] = the sum over output rows (in order), their window taps
    (row-major) and the row's outputs of dy/count, added at the input
    positions the forward read."""
    _, D, H, W = dx.shape
    _, Do, Ho, Wo = dy.shape
    T, R, S = kernel
    sd, sh, sw = stride
    pd, ph, pw = padding
    count = T * R * S
    runs = _row_runs(S, sw, pw, W, Wo)
    g = np.empty(Wo, dx.dtype)
    for p in range(p0, p1):
        plane = dx[p].ravel()
        for i in range(plane.size):
            plane[i] = 0
        for od in range(Do):
            t0, t1 = _taps(od, sd, pd, D, T)
            for oh in range(Ho):
                r0, r1 = _taps(oh, sh, ph, H, R)
                src = dy[p, od, oh]
                for i in range(Wo):
                    g[i] = src[i] / count
                for t in range(t0, t1):
                    for r in range(r0, r1):
                        row = dx[p, od * sd + t - pd, oh * sh + r - ph]
                        for s in range(S):
                            o0, o1, w0 = runs[s, 0], runs[s, 1], runs[s, 2]
                            for o in range(o0, o1):
                                row[np.uint64(w0 + (o - o0) * sw)] += g[np.uint64(o)]


def _as4d(a):
    """(N, C, *spatial) -> a C-contiguous (N*C, D, H, W) view (a copy if needed)."""
    a5 = as5d(a)
    return a5.reshape((a5.shape[0] * a5.shape[1],) + a5.shape[2:])


def _geometry(kernel, stride, padding):
    return lift3(kernel, 1), lift3(stride, 1), lift3(padding, 0)


def max_forward(x, kernel, stride, padding, dilation=None):
    shape = x.shape[:2] + output_shape(x.shape[2:], kernel, stride, padding, dilation)
    y = np.empty(shape, x.dtype)
    arg = np.empty(shape, np.int32)
    x4 = _as4d(x)
    over_items(_max_forward, x4.shape[0], x.size, x4, *_geometry(kernel, stride, padding),
               lift3(dilation or (1,) * len(kernel), 1), _as4d(y), _as4d(arg))
    return y, arg


def max_backward(dy, argmax, x_shape, geometry, op="max_pool_backward"):
    """Scatter in output order per plane. `geometry` (the forward's window) is
    not needed on the CPU: the scatter already runs each plane in one thread,
    in the same order a per-input gather would sum in. Each argmax is checked
    against the input plane before its write: an index outside it raises the
    front's ValueError (_args.argmax_range_error, naming `op`); a separate
    check took two serial passes over argmax (vgg_small's 28x28 pool: the
    backward took as long on two threads as on one)."""
    NC, plane, P = x_shape[0] * x_shape[1], int(np.prod(x_shape[2:])), int(np.prod(dy.shape[2:]))
    dx = np.empty(x_shape, dy.dtype)
    bad = over_items(_max_backward, NC, dx.size, np.ascontiguousarray(dy).reshape(-1),
                     np.ascontiguousarray(argmax).reshape(-1), dx.reshape(-1), P, plane)
    if sum(bad):
        raise argmax_range_error(op, argmax.shape, x_shape)
    return dx


def avg_forward(x, kernel, stride, padding):
    y = np.empty(x.shape[:2] + output_shape(x.shape[2:], kernel, stride, padding), x.dtype)
    x4 = _as4d(x)
    over_items(_avg_forward, x4.shape[0], x.size,
                 x4, *_geometry(kernel, stride, padding), _as4d(y))
    return y


def avg_backward(dy, x_shape, kernel, stride, padding):
    dx = np.empty(x_shape, dy.dtype)
    dx4 = _as4d(dx)
    over_items(_avg_backward, dx4.shape[0], dx.size,
                 _as4d(dy), *_geometry(kernel, stride, padding), dx4)
    return dx


# Adaptive pooling: output o of an axis of size H pools [floor(o*H/O),
# ceil((o+1)*H/O)) (PyTorch's windows; _args.adaptive_windows). The window
# bounds come in as (3, O) int arrays per axis (starts) and (ends), computed
# once per call; windows may overlap (H % O != 0) and have different sizes.

@nb.njit(nogil=True, cache=True)
def _adaptive_max_forward(x, starts_d, ends_d, starts_h, ends_h, starts_w, ends_w, y, arg, p0, p1):
    _, D, H, W = x.shape
    _, Do, Ho, Wo = y.shape
    for p in range(p0, p1):
        for od in range(Do):
            for oh in range(Ho):
                for ow in range(Wo):
                    best, k = x[p, starts_d[od], starts_h[oh], starts_w[ow]], -1
                    for d in range(starts_d[od], ends_d[od]):
                        for h in range(starts_h[oh], ends_h[oh]):
                            for w in range(starts_w[ow], ends_w[ow]):
                                v = x[p, d, h, w]
                                # first strict maximum; NaN beats any number, the first NaN stays
                                if k < 0 or v > best or (v != v and best == best):
                                    best, k = v, (d * H + h) * W + w
                    y[p, od, oh, ow], arg[p, od, oh, ow] = best, k


@nb.njit(nogil=True, cache=True)
def _adaptive_avg_forward(x, starts_d, ends_d, starts_h, ends_h, starts_w, ends_w, y, p0, p1):
    _, Do, Ho, Wo = y.shape
    for p in range(p0, p1):
        for od in range(Do):
            for oh in range(Ho):
                for ow in range(Wo):
                    acc = 0.0
                    for d in range(starts_d[od], ends_d[od]):
                        for h in range(starts_h[oh], ends_h[oh]):
                            for w in range(starts_w[ow], ends_w[ow]):
                                acc += x[p, d, h, w]
                    count = ((ends_d[od] - starts_d[od]) * (ends_h[oh] - starts_h[oh])
                             * (ends_w[ow] - starts_w[ow]))
                    y[p, od, oh, ow] = acc / count


@nb.njit(nogil=True, cache=True)
def _adaptive_avg_backward(dy, starts_d, ends_d, starts_h, ends_h, starts_w, ends_w, dx, p0, p1):
    """dx[p] = the sum over outputs (row-major) of dy/count over their windows."""
    _, Do, Ho, Wo = dy.shape
    for p in range(p0, p1):
        plane = dx[p].ravel()
        for i in range(plane.size):
            plane[i] = 0
        for od in range(Do):
            for oh in range(Ho):
                for ow in range(Wo):
                    count = ((ends_d[od] - starts_d[od]) * (ends_h[oh] - starts_h[oh])
                             * (ends_w[ow] - starts_w[ow]))
                    g = dy[p, od, oh, ow] / count
                    for d in range(starts_d[od], ends_d[od]):
                        for h in range(starts_h[oh], ends_h[oh]):
                            for w in range(starts_w[ow], ends_w[ow]):
                                dx[p, d, h, w] += g


def adaptive_bounds(spatial, out):
    """[starts_d, ends_d, starts_h, ends_h, starts_w, ends_w] as int64 arrays
    of the 3-D lifted geometry (unit leading axes: window [0, 1))."""
    bounds = []
    for h, o in zip(lift3(spatial, 1), lift3(out, 1)):
        bounds += [np.asarray(b, np.int64) for b in adaptive_windows(h, o)]
    return bounds


def adaptive_max_forward(x, out):
    y = np.empty(x.shape[:2] + tuple(out), x.dtype)
    arg = np.empty(y.shape, np.int32)
    x4 = _as4d(x)
    over_items(_adaptive_max_forward, x4.shape[0], x.size, x4, *adaptive_bounds(x.shape[2:], out),
               _as4d(y), _as4d(arg))
    return y, arg


def adaptive_avg_forward(x, out):
    y = np.empty(x.shape[:2] + tuple(out), x.dtype)
    x4 = _as4d(x)
    over_items(_adaptive_avg_forward, x4.shape[0], x.size, x4, *adaptive_bounds(x.shape[2:], out),
               _as4d(y))
    return y


def adaptive_avg_backward(dy, x_shape):
    dx = np.empty(x_shape, dy.dtype)
    dx4 = _as4d(dx)
    over_items(_adaptive_avg_backward, dx4.shape[0], dx.size, _as4d(dy),
               *adaptive_bounds(x_shape[2:], dy.shape[2:]), dx4)
    return dx
