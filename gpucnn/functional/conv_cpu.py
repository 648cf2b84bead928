"""CPU convolution (the fallback path): Numba im2col/col2im + one BLAS matmul.

Notation: x (N, C, D, H, W), w (K, C, T, R, S), stride (sd, sh, sw), padding
(pd, ph, pw), y (N, K, Do, Ho, Wo), P = Do*Ho*Wo output positions,
CTRS = C*T*R*S. 1-D and 2-D inputs run as 3-D with unit leading spatial
dimensions (kernel 1, stride 1, padding 0 there), so one set of kernels
serves every nd and the argument arrays are only reshaped, never copied
(unless they are non-contiguous views).

col is laid out (CTRS, N, P): col[(c,t,r,s), n, o] = x_pad[n, c, o*stride + (t,r,s)],
which makes each direction a single matmul over a block of samples:

    forward          Y (K, N*P)    = W (K, CTRS) @ col          then y = Y.transpose -> (N, K, P)
    backward-filter  dW (K, CTRS)  = dY (K, N*P) @ col^T        dY = dy transposed to (K, N, P)
    backward-data    dcol (CTRS, N*P) = W^T @ dY                then col2im scatters dcol into dx

The batch is cut into blocks of samples so that col stays under _COL_BYTES
(bounded memory for large batches); backward-filter sums the blocks' dW in
block order. Blocks are large on purpose: on a busy 2-core machine every
switch between Numba's and the BLAS's thread pools costs far more than the
cache a smaller block would save (measured: 1 MiB blocks were several times
slower than one block under load).

im2col is parallel over the rows of col, col2im over the (n, c) planes of dx;
each thread writes disjoint outputs in a fixed order, so results are
deterministic (the BLAS matmul is deterministic for a fixed thread count).
"""
import numba as nb
import numpy as np

from ._args import output_shape

_COL_BYTES = 32 << 20   # col buffer per block of samples (about the L3 size)


@nb.njit(inline="always")
def _valid_columns(s, W, Wo, sw, pw):
    """[lo, hi): the output columns ow whose input column ow*sw + s - pw lies in [0, W)."""
    lo = min(Wo, max(0, -((s - pw) // sw)))
    return lo, max(lo, min(Wo, (W - 1 - s + pw) // sw + 1))


@nb.njit(parallel=True, cache=True)
def _im2col(x, kernel, stride, padding, out, col):
    """col[(c,t,r,s), n, o] = x_pad[n, c, o*stride + (t,r,s)]; parallel over col rows.
    Flat indexing; the stride-1 copy is a plain contiguous loop (vectorized)."""
    N, C, D, H, W = x.shape
    T, R, S = kernel
    sd, sh, sw = stride
    pd, ph, pw = padding
    Do, Ho, Wo = out
    xf, cf = x.ravel(), col.ravel()
    for row in nb.prange(C * T * R * S):
        c, rem = divmod(np.int64(row), T * R * S)  # prange indices may be unsigned
        t, rem = divmod(rem, R * S)
        r, s = divmod(rem, S)
        lo, hi = _valid_columns(s, W, Wo, sw, pw)
        dst = row * N * Do * Ho * Wo
        for n in range(N):
            plane = (n * C + c) * D * H * W
            for od in range(Do):
                d = od * sd + t - pd
                for oh in range(Ho):
                    h = oh * sh + r - ph
                    # explicit loops: slice assignments cost more than these short rows
                    if d < 0 or d >= D or h < 0 or h >= H:
                        for ow in range(Wo):
                            cf[dst + ow] = 0
                    else:
                        src = plane + (d * H + h) * W + s - pw
                        for ow in range(lo):
                            cf[dst + ow] = 0
                        if sw == 1:
                            for ow in range(lo, hi):
                                cf[dst + ow] = xf[src + ow]
                        else:
                            for ow in range(lo, hi):
                                cf[dst + ow] = xf[src + ow * sw]
                        for ow in range(hi, Wo):
                            cf[dst + ow] = 0
                    dst += Wo


@nb.njit(parallel=True, cache=True)
def _col2im(dcol, kernel, stride, padding, out, dx):
    """dx[n, c] = sum over (t,r,s) and o of dcol[(c,t,r,s), n, o] scattered to
    x position o*stride + (t,r,s) - padding; parallel over the (n, c) planes."""
    N, C, D, H, W = dx.shape
    T, R, S = kernel
    sd, sh, sw = stride
    pd, ph, pw = padding
    Do, Ho, Wo = out
    P = Do * Ho * Wo
    df, gf = dx.ravel(), dcol.ravel()
    for nc in nb.prange(N * C):
        n, c = divmod(np.int64(nc), C)
        plane = nc * D * H * W
        df[plane:plane + D * H * W] = 0
        for t in range(T):
            for r in range(R):
                for s in range(S):
                    row = ((c * T + t) * R + r) * S + s
                    lo, hi = _valid_columns(s, W, Wo, sw, pw)
                    src = (row * N + n) * P
                    for od in range(Do):
                        d = od * sd + t - pd
                        for oh in range(Ho):
                            h = oh * sh + r - ph
                            if 0 <= d < D and 0 <= h < H:
                                dst = plane + (d * H + h) * W + s - pw
                                if sw == 1:
                                    for ow in range(lo, hi):
                                        df[dst + ow] += gf[src + ow]
                                else:
                                    for ow in range(lo, hi):
                                        df[dst + ow * sw] += gf[src + ow]
                            src += Wo


def _lift(nd, values, fill):
    """A length-nd geometry tuple -> length 3, unit dimensions in front."""
    return (fill,) * (3 - nd) + tuple(values)


def _geometry(nd, x_shape, w_shape, stride, padding):
    """(kernel, stride, padding, out) as 3-tuples, and P."""
    out = output_shape(x_shape[2:], w_shape[2:], stride, padding)
    return (_lift(nd, w_shape[2:], 1), _lift(nd, stride, 1), _lift(nd, padding, 0),
            _lift(nd, out, 1)), int(np.prod(out))


def _as5d(a):
    return np.ascontiguousarray(a).reshape(a.shape[:2] + (1,) * (5 - a.ndim) + a.shape[2:])


def _batches(N, rows, P, itemsize):
    """Sample ranges [n0, n1) whose col block (rows, m, P) fits in _COL_BYTES (m >= 1)."""
    m = max(1, min(N, _COL_BYTES // (rows * P * itemsize)))
    return [(n0, min(N, n0 + m)) for n0 in range(0, N, m)]


def forward(x, w, stride, padding):
    nd = x.ndim - 2
    geom, P = _geometry(nd, x.shape, w.shape, stride, padding)
    N, K = x.shape[0], w.shape[0]
    x5, w2 = _as5d(x), w.reshape(K, -1)
    rows = w2.shape[1]
    y = np.empty((N, K, P), x.dtype)
    for n0, n1 in _batches(N, rows, P, x.itemsize):
        col = np.empty((rows, n1 - n0, P), x.dtype)
        _im2col(x5[n0:n1], *geom, col)
        y[n0:n1] = (w2 @ col.reshape(rows, -1)).reshape(K, n1 - n0, P).transpose(1, 0, 2)
    return y.reshape((N, K) + geom[3][3 - nd:])


def backward_data(dy, w, x_shape, stride, padding):
    nd = dy.ndim - 2
    geom, P = _geometry(nd, x_shape, w.shape, stride, padding)
    N, K = dy.shape[:2]
    dy3, w2t = np.ascontiguousarray(dy).reshape(N, K, P), w.reshape(K, -1).T
    dx = np.empty(x_shape, dy.dtype)
    dx5 = _as5d(dx)
    for n0, n1 in _batches(N, w2t.shape[0], P, dy.itemsize):
        dcol = w2t @ _k_major(dy3[n0:n1])                              # (CTRS, m*P)
        _col2im(dcol.reshape(-1, n1 - n0, P), *geom, dx5[n0:n1])
    return dx


def backward_filter(dy, x, w_shape, stride, padding):
    nd = x.ndim - 2
    geom, P = _geometry(nd, x.shape, w_shape, stride, padding)
    N, K = dy.shape[:2]
    dy3, x5 = np.ascontiguousarray(dy).reshape(N, K, P), _as5d(x)
    rows = int(np.prod(w_shape[1:]))
    dw = np.zeros((K, rows), x.dtype)
    for n0, n1 in _batches(N, rows, P, x.itemsize):               # fixed order: deterministic
        col = np.empty((rows, n1 - n0, P), x.dtype)
        _im2col(x5[n0:n1], *geom, col)
        dw += _k_major(dy3[n0:n1]) @ col.reshape(rows, -1).T
    return dw.reshape(w_shape)


def _k_major(dy3):
    """dy block (m, K, P) -> contiguous (K, m*P), the column order of col."""
    return np.ascontiguousarray(dy3.transpose(1, 0, 2)).reshape(dy3.shape[1], -1)
