"""CPU depthwise convolution (groups = C, one input channel per filter):
direct Numba loops instead of conv_cpu's grouped matmuls, whose G products of
one filter row each (a 1 x R*S times R*S x P product per channel and sample)
cost more in per-product overhead and im2col/col2im traffic than the
multiply-adds themselves.

Notation: x (N, C, D, H, W), w (K, 1, T, R, S) with K = C * multiplier,
filter k reading channel c = k // multiplier; stride, padding, dilation as in
conv_cpu (1-D and 2-D lifted to 3-D with unit leading axes). Each (n, c)
plane is copied once into a zero-padded buffer (as conv_cpu's im2col does),
then every tap adds w * (a strided row of the buffer) to an output row:

    forward          y[n,k,od,oh,:]    += w[k,t,r,s] * xpad[n,c, od*sd + t*dd, oh*sh + r*dh, s*dw :: sw]
    backward-data    dxpad[n,c, ...]   += w[k,t,r,s] * dy[n,k,od,oh,:]   (the same positions), cropped
    backward-filter  dw[k,t,r,s]       = sum over n, od, oh of dot(dy[n,k,od,oh,:], xpad row)

Threads split output planes (forward), input planes (backward-data) or
filters (backward-filter) through conv_cpu.over_items; every element is
summed by one thread in a fixed order (samples, then rows), so results are
deterministic and independent of the thread count.
"""
import numba as nb
import numpy as np

from ._args import output_shape
from .conv_cpu import as5d, lift3, over_items


def applies(w_shape, groups):
    """Depthwise: more than one group and one input channel per filter."""
    return groups > 1 and w_shape[1] == 1


# Inner loops over 1-D views indexed from 0 by a range (as in conv_cpu):
# Numba drops its negative-index handling and LLVM vectorizes the
# contiguous (stride 1) case, hence the sw == 1 branches at the call sites
# (one view type per branch).

@nb.njit(inline="always")
def _axpy(dst, a, src):
    for i in range(dst.size):
        dst[i] += a * src[i]


@nb.njit(inline="always")
def _dot(a, b, acc):
    for i in range(a.size):
        acc += a[i] * b[i]
    return acc


@nb.njit(inline="always")
def _fill_padded(buf, plane, pd, ph, pw):
    D, H, W = plane.shape
    for d in range(D):
        for h in range(H):
            row, src = buf[pd + d, ph + h], plane[d, h]
            for i in range(W):
                row[pw + i] = src[i]


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
    buf = np.zeros((D + 2 * pd, H + 2 * ph, W + 2 * pw), x.dtype)   # the border stays 0
    loaded = -1
    for item in range(i0, i1):
        n, k = item // K, item % K
        c = k // mult
        if n * C + c != loaded:          # consecutive filters of one channel share the buffer
            _fill_padded(buf, x[n, c], pd, ph, pw)
            loaded = n * C + c
        out = y[n, k]
        for od in range(Do):
            for oh in range(Ho):
                row = out[od, oh]
                for i in range(Wo):
                    row[i] = 0
        for t in range(T):
            for r in range(R):
                for s in range(S):
                    wv = w[k, 0, t, r, s]
                    for od in range(Do):
                        for oh in range(Ho):
                            src, w0 = buf[od * sd + t * dd, oh * sh + r * dh], s * dw
                            if sw == 1:
                                _axpy(out[od, oh], wv, src[w0:w0 + Wo])
                            else:
                                _axpy(out[od, oh], wv, src[w0:w0 + (Wo - 1) * sw + 1:sw])


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
    buf = np.empty((D + 2 * pd, H + 2 * ph, W + 2 * pw), dx.dtype)
    flat = buf.ravel()
    for item in range(i0, i1):
        n, c = item // C, item % C
        for i in range(flat.size):
            flat[i] = 0
        for k in range(c * mult, (c + 1) * mult):
            g = dy[n, k]
            for t in range(T):
                for r in range(R):
                    for s in range(S):
                        wv = w[k, 0, t, r, s]
                        for od in range(Do):
                            for oh in range(Ho):
                                dst, w0 = buf[od * sd + t * dd, oh * sh + r * dh], s * dw
                                if sw == 1:
                                    _axpy(dst[w0:w0 + Wo], wv, g[od, oh])
                                else:
                                    _axpy(dst[w0:w0 + (Wo - 1) * sw + 1:sw], wv, g[od, oh])
        for d in range(D):
            for h in range(H):
                out, src = dx[n, c, d, h], buf[pd + d, ph + h]
                for i in range(W):
                    out[i] = src[pw + i]


@nb.njit(nogil=True, cache=True)
def _backward_filter(dy, x, stride, padding, dilation, dw_out, i0, i1):
    """Filters [i0, i1) of dw (K, 1, T, R, S): samples in order, then rows."""
    N, C, D, H, W = x.shape
    _, K, Do, Ho, Wo = dy.shape
    _, _, T, R, S = dw_out.shape
    sd, sh, sw = stride
    pd, ph, pw = padding
    dd, dh, dw = dilation
    mult = K // C
    buf = np.zeros((D + 2 * pd, H + 2 * ph, W + 2 * pw), x.dtype)
    for k in range(i0, i1):
        c = k // mult
        taps = dw_out[k, 0]
        for t in range(T):
            for r in range(R):
                for s in range(S):
                    taps[t, r, s] = 0
        for n in range(N):
            _fill_padded(buf, x[n, c], pd, ph, pw)
            g = dy[n, k]
            for t in range(T):
                for r in range(R):
                    for s in range(S):
                        acc = taps[t, r, s]
                        for od in range(Do):
                            for oh in range(Ho):
                                src, w0 = buf[od * sd + t * dd, oh * sh + r * dh], s * dw
                                if sw == 1:
                                    acc = _dot(g[od, oh], src[w0:w0 + Wo], acc)
                                else:
                                    acc = _dot(g[od, oh], src[w0:w0 + (Wo - 1) * sw + 1:sw], acc)
                        taps[t, r, s] = acc


def _geometry(stride, padding, dilation):
    return lift3(stride, 1), lift3(padding, 0), lift3(dilation or (1,) * len(stride), 1)


def forward(x, w, stride, padding, dilation=None):
    N, K = x.shape[0], w.shape[0]
    y = np.empty((N, K) + output_shape(x.shape[2:], w.shape[2:], stride, padding, dilation), x.dtype)
    over_items(_forward, N * K, y.size * int(np.prod(w.shape[2:])),
               as5d(x), as5d(w), *_geometry(stride, padding, dilation), as5d(y))
    return y


def backward_data(dy, w, x_shape, stride, padding, dilation=None):
    dx = np.empty(x_shape, dy.dtype)
    over_items(_backward_data, x_shape[0] * x_shape[1], dy.size * int(np.prod(w.shape[2:])),
               as5d(dy), as5d(w), *_geometry(stride, padding, dilation), as5d(dx))
    return dx


def backward_filter(dy, x, w_shape, stride, padding, dilation=None):
    dw = np.empty(w_shape, x.dtype)
    over_items(_backward_filter, w_shape[0], dy.size * int(np.prod(w_shape[2:])),
               as5d(dy), as5d(x), *_geometry(stride, padding, dilation), as5d(dw))
    return dw
