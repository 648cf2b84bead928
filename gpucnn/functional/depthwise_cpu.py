"""CPU depthwise convolution (groups = C, one input channel per filter),
forward and backward-data: direct Numba loops instead of conv_cpu's grouped
matmuls, whose G products of one filter row each (a 1 x R*S times R*S x P
product per channel and sample) cost more in per-product overhead and
im2col/col2im traffic than the multiply-adds themselves. Measured side by
side (docs/conv-features.md): backward-data 1.2-6x faster, forward mostly
faster; the backward-filter was not (0.5-1.4x), so it stays on the grouped
matmuls.

Notation: x (N, C, D, H, W), w (K, 1, T, R, S) with K = C * multiplier,
filter k reading channel c = k // multiplier; stride, padding, dilation as in
conv_cpu (1-D and 2-D lifted to 3-D with unit leading axes). Each (n, c)
plane is copied once into a zero-padded buffer (as conv_cpu's im2col does),
then every tap adds w * (a strided row of the buffer) to an output row:

    forward          y[n,k,od,oh,:]    += w[k,t,r,s] * xpad[n,c, od*sd + t*dd, oh*sh + r*dh, s*dw :: sw]
    backward-data    dxpad[n,c, ...]   += w[k,t,r,s] * dy[n,k,od,oh,:]   (the same positions), cropped

Threads split output planes (forward) or input planes (backward-data)
through cpu_parallel.over_items; every element is summed by one thread in a
fixed order, so results are deterministic and independent of the thread
count.
"""
import numba as nb
import numpy as np
from numba import uintp

from ._args import output_shape
from ..cpu_parallel import over_items
from .flat_cpu import as5d, crop_flat, fill_flat, flat_buffer, lift3


def applies(w_shape, groups):
    """Depthwise: more than one group and one input channel per filter."""
    return groups > 1 and w_shape[1] == 1


# The kernels index flat C-contiguous arrays with unsigned offsets and make
# no array view inside a loop, as conv_cpu's im2col (a view costs two atomic
# reference-count updates: more than a row of 16 multiply-adds).

@nb.njit(inline="always")
def _axpy_run(dst, d0, a, src, s0, n):
    """dst[d0 + i] += a * src[s0 + i] for i < n."""
    for i in range(n):
        dst[uintp(d0 + i)] += a * src[uintp(s0 + i)]


@nb.njit(inline="always")
def _dot_run(a, a0, b, b0, n):
    total = a.dtype.type(0)
    for i in range(n):
        total += a[uintp(a0 + i)] * b[uintp(b0 + i)]
    return total


@nb.njit(nogil=True, cache=True)
def _forward(x, w, stride, padding, dilation, y, i0, i1):
    """Output planes [i0, i1) of y (N*K planes, n-major)."""
    N, C, D, H, W = x.shape
    _, K, Do, Ho, Wo = y.shape
    _, _, T, R, S = w.shape
    sd, sh, sw = stride
    pd, ph, pw = padding
    dd, dh, dw = dilation
    mult = K // C
    Hp, Wp = H + 2 * ph, W + 2 * pw
    P = Do * Ho * Wo
    buf = np.zeros((D + 2 * pd) * Hp * Wp, x.dtype)   # the border stays 0
    yf = y.reshape(y.size)
    loaded = -1
    for item in range(i0, i1):
        n, k = item // K, item % K
        c = k // mult
        if n * C + c != loaded:          # consecutive filters of one channel share the buffer
            fill_flat(buf, x[n, c], padding, Hp, Wp)
            loaded = n * C + c
        out = item * P
        for i in range(P):
            yf[uintp(out + i)] = 0
        for t in range(T):
            for r in range(R):
                for s in range(S):
                    wv = w[k, 0, t, r, s]
                    q = out
                    for od in range(Do):
                        for oh in range(Ho):
                            o = ((od * sd + t * dd) * Hp + oh * sh + r * dh) * Wp + s * dw
                            if sw == 1:
                                _axpy_run(yf, q, wv, buf, o, Wo)
                            else:
                                for i in range(Wo):
                                    yf[uintp(q + i)] += wv * buf[uintp(o + i * sw)]
                            q += Wo


@nb.njit(nogil=True, cache=True)
def _backward_data(dy, w, stride, padding, dilation, dx, i0, i1):
    """Input planes [i0, i1) of dx (N*C planes, n-major)."""
    N, C, D, H, W = dx.shape
    _, K, Do, Ho, Wo = dy.shape
    _, _, T, R, S = w.shape
    sd, sh, sw = stride
    pd, ph, pw = padding
    dd, dh, dw = dilation
    mult = K // C
    Hp, Wp = H + 2 * ph, W + 2 * pw
    P = Do * Ho * Wo
    flat = np.empty((D + 2 * pd) * Hp * Wp, dx.dtype)
    gf = dy.reshape(dy.size)
    for item in range(i0, i1):
        n, c = item // C, item % C
        for i in range(flat.size):
            flat[i] = 0
        for k in range(c * mult, (c + 1) * mult):
            for t in range(T):
                for r in range(R):
                    for s in range(S):
                        wv = w[k, 0, t, r, s]
                        q = (n * K + k) * P
                        for od in range(Do):
                            for oh in range(Ho):
                                o = ((od * sd + t * dd) * Hp + oh * sh + r * dh) * Wp + s * dw
                                if sw == 1:
                                    _axpy_run(flat, o, wv, gf, q, Wo)
                                else:
                                    for i in range(Wo):
                                        flat[uintp(o + i * sw)] += wv * gf[uintp(q + i)]
                                q += Wo
        crop_flat(flat, dx[n, c], padding, Hp, Wp)


# Wide rows (stride 1, 2-D and 1-D): as conv_cpu's im2col, an output plane is
# computed at the padded width Wp (Ho*Wp values, Wp - Wo of them per row
# dropped), so each tap is ONE axpy over the whole plane from the flat padded
# input at offset r*dh*Wp + s*dw, instead of Ho axpys of Wo: the per-row loops
# of 16 elements cost more than their arithmetic. 8 x 32 planes of 16x16, 3x3,
# one core: forward 185 -> 86 us, backward-data 184 -> 88 us, backward-filter
# (grouped products) 250 -> 77 us; PyTorch 96, 123, 109 us.

@nb.njit(nogil=True, cache=True)
def _forward_wide(x, w, padding, dilation, y, i0, i1):
    """_forward for stride 1 and D = T = 1 (x (N, C, 1, H, W))."""
    N, C, _, H, W = x.shape
    _, K, _, Ho, Wo = y.shape
    _, _, _, R, S = w.shape
    _, ph, pw = padding
    _, dh, dw = dilation
    mult = K // C
    Wp = W + 2 * pw
    run = Ho * Wp
    flat = flat_buffer((1, H, W), (1, R, S), padding, dilation, x)   # border and slack stay 0
    acc = np.empty(run, x.dtype)
    yf = y.reshape(y.size)
    loaded = -1
    for item in range(i0, i1):
        n, k = item // K, item % K
        c = k // mult
        if n * C + c != loaded:
            fill_flat(flat, x[n, c], padding, H + 2 * ph, Wp)
            loaded = n * C + c
        for i in range(run):
            acc[i] = 0
        for r in range(R):
            for s in range(S):
                _axpy_run(acc, 0, w[k, 0, 0, r, s], flat, r * dh * Wp + s * dw, run)
        for oh in range(Ho):
            for i in range(Wo):
                yf[uintp((item * Ho + oh) * Wo + i)] = acc[uintp(oh * Wp + i)]


@nb.njit(nogil=True, cache=True)
def _backward_data_wide(dy, w, padding, dilation, dx, i0, i1):
    """_backward_data for stride 1 and D = T = 1: each tap adds w * (dy at
    row width Wp, zeros in the dropped columns) into the flat padded dx."""
    N, C, _, H, W = dx.shape
    _, K, _, Ho, Wo = dy.shape
    _, _, _, R, S = w.shape
    _, ph, pw = padding
    _, dh, dw = dilation
    mult = K // C
    Wp = W + 2 * pw
    run = Ho * Wp
    flat = flat_buffer((1, H, W), (1, R, S), padding, dilation, dx)
    g = np.zeros(run, dx.dtype)   # the dropped columns stay 0
    for item in range(i0, i1):
        n, c = item // C, item % C
        for i in range(flat.size):
            flat[i] = 0
        for k in range(c * mult, (c + 1) * mult):
            fill_flat(g, dy[n, k], (0, 0, 0), Ho, Wp)
            for r in range(R):
                for s in range(S):
                    _axpy_run(flat, r * dh * Wp + s * dw, w[k, 0, 0, r, s], g, 0, run)
        crop_flat(flat, dx[n, c], padding, H + 2 * ph, Wp)


# fastmath reassoc: LLVM may split each dot product into vector partial sums
# (the same split on every run and thread count, so still deterministic).
@nb.njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})
def _backward_filter_wide(dy, x, padding, dilation, dw, k0, k1):
    """dw[k, 0, 0, r, s] = sum over n of dy[n, k] (at row width Wp, zeros in the
    dropped columns) dotted with the flat padded x[n, c] at offset r*dh*Wp + s*dw,
    for the filters [k0, k1); samples summed in order."""
    N, C, _, H, W = x.shape
    _, K, _, Ho, Wo = dy.shape
    _, _, _, R, S = dw.shape
    _, ph, pw = padding
    _, dh, ddw = dilation
    mult = K // C
    Wp = W + 2 * pw
    run = Ho * Wp
    flat = flat_buffer((1, H, W), (1, R, S), padding, dilation, x)
    g = np.zeros(run, x.dtype)
    for k in range(k0, k1):
        c = k // mult
        for r in range(R):
            for s in range(S):
                dw[k, 0, 0, r, s] = 0
        for n in range(N):
            fill_flat(flat, x[n, c], padding, H + 2 * ph, Wp)
            fill_flat(g, dy[n, k], (0, 0, 0), Ho, Wp)
            for r in range(R):
                for s in range(S):
                    dw[k, 0, 0, r, s] += _dot_run(g, 0, flat, r * dh * Wp + s * ddw, run)


def _wide(x_shape, w_shape, stride):
    """Whether the wide-row kernels serve: stride 1, no depth (2-D and 1-D)."""
    return all(s == 1 for s in stride) and len(x_shape) <= 4


def backward_filter(dy, x, w_shape, stride, padding, dilation=None):
    """Depthwise backward-filter, wide rows only (`applies_backward_filter`)."""
    dw = np.empty(w_shape, x.dtype)
    _, padding, dilation = _geometry(stride, padding, dilation)
    over_items(_backward_filter_wide, w_shape[0], dy.size * int(np.prod(w_shape[2:])),
               as5d(dy), as5d(x), padding, dilation, as5d(dw))
    return dw


def applies_backward_filter(x_shape, w_shape, stride, groups):
    """Backward-filter runs here for stride 1 in 2-D and 1-D (the strided and
    3-D ones stay on conv_cpu's grouped products)."""
    return applies(w_shape, groups) and _wide(x_shape, w_shape, lift3(stride, 1))


def _geometry(stride, padding, dilation):
    return lift3(stride, 1), lift3(padding, 0), lift3(dilation or (1,) * len(stride), 1)


def forward(x, w, stride, padding, dilation=None):
    N, K = x.shape[0], w.shape[0]
    y = np.empty((N, K) + output_shape(x.shape[2:], w.shape[2:], stride, padding, dilation), x.dtype)
    work = y.size * int(np.prod(w.shape[2:]))
    stride, padding, dilation = _geometry(stride, padding, dilation)
    if _wide(x.shape, w.shape, stride):
        over_items(_forward_wide, N * K, work, as5d(x), as5d(w), padding, dilation, as5d(y))
    else:
        over_items(_forward, N * K, work, as5d(x), as5d(w), stride, padding, dilation, as5d(y))
    return y


def backward_data(dy, w, x_shape, stride, padding, dilation=None):
    dx = np.empty(x_shape, dy.dtype)
    work = dy.size * int(np.prod(w.shape[2:]))
    stride, padding, dilation = _geometry(stride, padding, dilation)
    if _wide(x_shape, w.shape, stride):
        over_items(_backward_data_wide, x_shape[0] * x_shape[1], work, as5d(dy), as5d(w), padding, dilation, as5d(dx))
    else:
        over_items(_backward_data, x_shape[0] * x_shape[1], work, as5d(dy), as5d(w), stride, padding, dilation,
                   as5d(dx))
    return dx
