"""CPU convolution straight from the zero-padded input (float32): no
im2col, no BLAS, simd_cpu's register-tiled micro-kernels.

Notation as conv_cpu: x (N, C, D, H, W), w (K, C, T, R, S), stride (sd, sh,
sw), padding (pd, ph, pw), dilation (dd, dh, dw), one group; 1-D and 2-D run
as 3-D. Each sample is copied once into a flat buffer: its zero-padded
volumes split into stride phase components (component (a, b, e) of channel
c holds the padded positions congruent to (a, b, e) modulo the strides, a
(Dc, Hc, Wc) volume; with stride 1 the one component is the padded volume).
An output position (od, oh, ow) is the wide-row index p = (od*Hc + oh)*Wc
+ ow (as conv_cpu's wide rows: Wc - Wo garbage columns a row, and in 3-D
Hc - Ho garbage rows a slice), and tap j = (c, t, r, s), which reads padded
position (od*sd + t*dd, oh*sh + r*dh, ow*sw + s*dw), finds it in the
component of phase (t*dd mod sd, r*dh mod sh, s*dw mod sw) at p shifted by
(t*dd div sd, r*dh div sh, s*dw div sw): at off[j] + p in the buffer. So
every direction is a sum over taps of shifted contiguous runs:

    forward          y[k, p]  = sum_j w[k, j] x[off[j] + p]           (simd_cpu.conv_tile)
    backward-filter  dw[k, j] = sum_n,p dy[n, k, p] x[n, off[j] + p]  (simd_cpu.grad_tile)
    backward-data    at stride 1 the forward of dy, padded by d(k-1) - p,
                     with the flipped, transposed filter (conv_cpu.backward_data
                     routes it here); strided ones stay on col2im

dy is laid out at the same wide positions with zeros in the garbage
columns. Positions are padded up to whole tiles (PB vectors) and output
channels to whole KB-row tiles, with zero filters; the extra outputs are
dropped. The products the micro-kernels do beyond the useful ones are
(Kp / K) * (Pcp / P); `applies` takes a route only while that overhead is
at most _MAX_WASTE.

Why: the micro-kernels run the FMA units at about 140-160 GFLOP/s issued on
one core of the 2-core Xeon (AVX-512), where NumPy's OpenBLAS runs the thin
products of im2col (16 output channels, LeNet's 6 -> 16 5x5 layer) at
70-90 GFLOP/s, and the im2col copy itself is gone (measurements in
docs/cpu-performance.md). Threads: the batch is split as in conv_cpu
(cpu_parallel.over_samples), each thread running the nogil kernels on its
samples; backward-filter sums each thread's dw in block order, the threads'
in thread order: deterministic for a fixed thread count.
"""
import functools
import math

import numba as nb
import numpy as np
from numba import uintp

from ..cpu_parallel import over_samples
from ._args import output_shape
from .flat_cpu import as5d, copy_run, lift3
from .simd_cpu import LANES, conv_tile, grad_tile, grad_tile_k

# Forward tiles (KB output channels, PB vectors of positions): 24 accumulators
# at most (of the 32 AVX-512 registers), picked per geometry by _cycles (a
# 6-filter tile for LeNet's 16 -> 6 backward-data).
_WIDTHS = {8: (1, 2, 3), 6: (2, 4), 4: (3, 6)}
GKB, GJB = 4, 6     # backward-filter tile with few filters: 4 rows of dw by 6 taps (24 accumulators)
_KTILES = {4: 6, 2: 12, 1: 24}   # backward-filter tiles of KV vectors of filters by JB taps (24 accumulators)
_MIN_TAPS = 16     # multiply-adds per output (C*T*R*S), at least
_MAX_WASTE = 1.6    # products done / useful products, at most (padded channels, wide rows, whole tiles)
_BLOCK_BYTES = 1 << 20   # backward-filter: x and dy of a block of samples (in the L2 cache)
_CHUNK_BYTES = 16 << 10  # backward-filter over filters: a tile's dy rows of a chunk of positions (in L1)
_T81, _T82, _T83, _T62, _T64, _T43, _T46 = (conv_tile(k, b) for k in _WIDTHS for b in _WIDTHS[k])
_GRAD = grad_tile(GKB, GJB)
_GK4, _GK2, _GK1 = (grad_tile_k(v, _KTILES[v]) for v in (4, 2, 1))


def _ceil(a, b):
    return -(-a // b) * b


class _Geometry:
    """One call's padded volumes, wide positions, tiles and tap offsets."""

    def _cycles(self, KB, PB):
        """A tile shape's time, relative: padded filters x padded positions x
        cycles per FMA of a tap's step: KB*PB FMAs and PB + KB loads, two of
        each a cycle, at least 4 cycles (the FMA latency) a step, plus about
        one for the loop and the offset. Measured on the 3-D quick case (8
        filters, 1538 positions): PB = 1, 2, 3 took 149, 132, 126 us (this
        model: 1552 * 0.69, 1568 * 0.56, 1584 * 0.54 = 1067, 882, 858)."""
        return _ceil(self.K, KB) * _ceil(self.Pc, LANES * PB) * (max(KB * PB, KB + PB, 8) / 2 + 1) / (KB * PB)

    def __init__(self, x_shape, w_shape, stride, padding, dilation):
        nd = len(x_shape) - 2
        dilation = tuple(dilation or (1,) * nd)
        self.out = output_shape(x_shape[2:], w_shape[2:], stride, padding, dilation)
        self.stride, self.padding, self.out3 = lift3(stride, 1), lift3(padding, 0), lift3(self.out, 1)
        D, H, W = lift3(x_shape[2:], 1)
        T, R, S = lift3(w_shape[2:], 1)
        dd, dh, dw = lift3(dilation, 1)
        sd, sh, sw = self.stride
        pd, ph, pw = self.padding
        # phase components of the padded input (stride 1: the padded input itself)
        self.Dc, self.Hc, self.Wc = -(-(D + 2 * pd) // sd), -(-(H + 2 * ph) // sh), -(-(W + 2 * pw) // sw)
        self.plane = self.Dc * self.Hc * self.Wc
        Do, Ho, Wo = self.out3
        self.K, self.C = w_shape[0], w_shape[1]
        self.P = Do * Ho * Wo
        self.Pc = ((Do - 1) * self.Hc + Ho - 1) * self.Wc + Wo   # wide positions, up to the last output
        self.KB, self.PB = min(((k, b) for k in _WIDTHS for b in _WIDTHS[k]),
                               key=lambda t: (self._cycles(*t), -t[0] * t[1]))
        self.Pcp = _ceil(self.Pc, LANES * self.PB)
        self.Kp = _ceil(self.K, self.KB)

        def tap(c, t, r, s):   # the component holding the tap's phase, then its shift there
            phase = ((c * sd + t * dd % sd) * sh + r * dh % sh) * sw + s * dw % sw
            return phase * self.plane + (t * dd // sd * self.Hc + r * dh // sh) * self.Wc + s * dw // sw
        taps = [tap(c, t, r, s) for c in range(self.C) for t in range(T) for r in range(R) for s in range(S)]
        self.J = len(taps)
        self.off = np.array(taps + [0] * (_ceil(self.J, 24) - self.J), np.int64)   # backward-filter's padding
        # a sample's buffer: every component, and every read inside
        self.Lx = max(self.C * sd * sh * sw * self.plane, max(taps) + self.Pcp)
        self.waste = self.Kp * self.Pcp / (self.K * self.P)
        self.flops = 2 * x_shape[0] * self.K * self.J * self.P


@functools.lru_cache(maxsize=256)
def _geometry(x_shape, w_shape, stride, padding, dilation):
    return _Geometry(x_shape, w_shape, stride, padding, dilation)


def _geometry_of(x_shape, w_shape, stride, padding, dilation):
    return _geometry(tuple(x_shape), tuple(w_shape), tuple(stride), tuple(padding),
                     None if dilation is None else tuple(dilation))


def applies(x_shape, w_shape, stride, padding, dilation, groups, dtype):
    """float32, one group, more than one tap of the filter and at least
    _MIN_TAPS multiply-adds per output (pointwise convs are a plain GEMM
    without im2col in conv_cpu, measured 1.2-1.7x faster there; with one
    input channel and 3x3 filters conv_cpu's stacked products are as fast),
    and at most _MAX_WASTE products done per useful one."""
    if not (np.dtype(dtype) == np.float32 and groups == 1
            and math.prod(w_shape[2:]) > 1 and math.prod(w_shape[1:]) >= _MIN_TAPS):
        return False
    return _geometry_of(x_shape, w_shape, stride, padding, dilation).waste <= _MAX_WASTE


def beats_winograd(x_shape, w_shape, direction):
    """Whether this route is faster than winograd_cpu's where both apply.
    Winograd does 2.25-4x fewer multiply-adds, but its products are (K, C) @
    (C, tiles) matrices, slow with few channels. Measured on one core (ms,
    Winograd -> here, forward / backward-filter): 16 channels at 16x16, 8
    samples, 0.17/0.21 -> 0.11/0.12; 32 channels at 16x16, 8 samples,
    0.51/0.44 -> 0.31/0.47; 32 at 28x28, 128 samples, 17.0/17.9 -> 17.8/22.0;
    64 at 16x16, 8 samples, 1.04/1.19 -> 1.17/1.67; 64 -> 128 at 7x7,
    128 samples, 6.8/7.5 -> 8.9/12.4. At 128 samples: 32 -> 32 at 14x14
    3.91/4.36 -> 3.57/4.40, at 28x28 12.2/13.6 -> 10.8/17.2; 32 -> 64 at
    14x14 5.53/7.67 -> 6.67/9.04; 64 -> 64 at 7x7 3.13/3.63 -> 3.89/6.20.
    Backward-filter with its tiles over filters (grad_tile_k), 128 samples:
    32 -> 32 at 28x28 14.1 -> 13.1, at 14x14 4.15 -> 3.78; 32 -> 64 at 14x14
    7.89 -> 6.86; 64 -> 64 at 14x14 12.5 -> 13.1, at 7x7 3.77 -> 3.51;
    128 -> 128 at 7x7 9.6 -> 14.2. In a training step the arrays come from
    memory, not the cache, where Winograd's point matrices cost more: with a
    1 GiB flush before each call (1 / 2 threads, Winograd -> here), 64 -> 128
    at 7x7 7.9 / 5.3 -> 7.1 / 4.2, 64 -> 64 at 14x14 13.9 / 7.9 -> 13.4 / 7.1,
    128 -> 128 at 7x7 11.0 / 6.9 -> 12.8 / 7.4 (cached: 5.6 / 3.5 -> 6.3 /
    3.6, 12.6 / 6.8 -> 11.8 / 6.1, 9.0 / 5.1 -> 12.0 / 6.6). In vgg_small's
    step, 64 -> 64 at 14x14 13.0 / 7.0 -> 11.8 / 6.1, but 64 -> 128 at 7x7
    5.8-6.0 / 4.0-4.4 -> 6.6 / 3.8: up to 64 channels on both sides here."""
    channels, widest = min(w_shape[0], w_shape[1]), max(w_shape[0], w_shape[1])
    if direction == "backward_filter":   # (measured with the tiles over filters, 128 samples)
        return channels < 64 or widest <= 64
    return channels < 32 or widest <= 32 or (channels < 64 and x_shape[0] < 64)


@nb.njit(inline="always")
def _fill_sample(buf, b0, xf, n, C, vol, padding, stride, comp):
    """Sample n of x (flat; C volumes of shape vol) into buf from b0, as its
    zero-padded volumes split into stride phase components: channel c's
    component of phase (a, b, e) (padded positions congruent to a, b, e mod
    the strides) at ((c*sd + a)*sh + b)*sw + e planes of comp = (Dc, Hc, Wc)
    from b0. The borders are already zero (every sample writes the same
    positions)."""
    D, H, W = vol
    pd, ph, pw = padding
    sd, sh, sw = stride
    Dc, Hc, Wc = comp
    # per column phase: its first input column, how many, its first component column
    # (no division inside the loops: a row's few divisions cost more than its copy)
    first, count, col = np.empty(sw, np.intp), np.empty(sw, np.intp), np.empty(sw, np.intp)
    for e in range(sw):
        first[e] = (e - pw) % sw
        count[e] = max(0, (W - first[e] + sw - 1) // sw)
        col[e] = (first[e] + pw) // sw
    for c in range(C):
        a, d1 = pd % sd, pd // sd
        for d in range(D):
            b, h1 = ph % sh, ph // sh
            for h in range(H):
                src = (((n * C + c) * D + d) * H + h) * W
                row = b0 + ((((c * sd + a) * sh + b) * sw) * Dc + d1) * Hc * Wc + h1 * Wc
                for e in range(sw):
                    dst = row + e * Dc * Hc * Wc + col[e]
                    if sw == 1:
                        copy_run(buf, dst, xf, src, W)
                    elif sw == 2:   # a constant stride: LLVM vectorizes the de-interleave
                        for i in range(count[e]):
                            buf[uintp(dst + i)] = xf[uintp(src + first[e] + 2 * i)]
                    else:
                        for i in range(count[e]):
                            buf[uintp(dst + i)] = xf[uintp(src + first[e] + i * sw)]
                b += 1
                if b == sh:
                    b, h1 = 0, h1 + 1
            a += 1
            if a == sd:
                a, d1 = 0, d1 + 1


@nb.njit(inline="always")
def _tile(KB, PB, yw, y0, Pcp, buf, p0, off, wp, w0, J):
    if KB == 8:
        if PB == 3:
            _T83(yw, y0, Pcp, buf, p0, off, wp, w0, J)
        elif PB == 2:
            _T82(yw, y0, Pcp, buf, p0, off, wp, w0, J)
        else:
            _T81(yw, y0, Pcp, buf, p0, off, wp, w0, J)
    elif KB == 6:
        if PB == 4:
            _T64(yw, y0, Pcp, buf, p0, off, wp, w0, J)
        else:
            _T62(yw, y0, Pcp, buf, p0, off, wp, w0, J)
    elif PB == 6:
        _T46(yw, y0, Pcp, buf, p0, off, wp, w0, J)
    else:
        _T43(yw, y0, Pcp, buf, p0, off, wp, w0, J)


@nb.njit(nogil=True, cache=True)
def _forward(x5, wp, off, J, y5, padding, stride, comp, Lx, Pcp, KB, PB, n0, n1):
    """y5[n0:n1] (N, K, Do, Ho, Wo) from x5 (N, C, D, H, W) and the packed
    filters wp (Kp/KB, J, KB)."""
    K, Do, Ho, Wo = y5.shape[1:]
    C = x5.shape[1]
    _, Hp, Wp = comp   # the wide positions' pitch: the components' rows and planes
    Kp = wp.size // J
    buf = np.zeros(Lx, np.float32)
    yw = np.empty(Kp * Pcp, np.float32)
    yf = y5.reshape(y5.size)
    xf = x5.reshape(x5.size)
    for n in range(n0, n1):
        _fill_sample(buf, 0, xf, n, C, x5.shape[2:], padding, stride, comp)
        for p0 in range(0, Pcp, LANES * PB):     # positions outer: a chunk of buf stays in cache
            for kb in range(Kp // KB):
                _tile(KB, PB, yw, kb * KB * Pcp + p0, Pcp, buf, p0, off, wp, kb * J * KB, J)
        for k in range(K):
            for od in range(Do):
                for oh in range(Ho):
                    copy_run(yf, (((n * K + k) * Do + od) * Ho + oh) * Wo, yw, k * Pcp + (od * Hp + oh) * Wp, Wo)


def forward(x, w, padding, dilation=None, stride=None):
    g = _geometry_of(x.shape, w.shape, stride or (1,) * (x.ndim - 2), padding, dilation)
    wk = np.zeros((g.Kp, g.J), np.float32)
    wk[:g.K] = w.reshape(g.K, g.J)
    wp = np.ascontiguousarray(wk.reshape(g.Kp // g.KB, g.KB, g.J).transpose(0, 2, 1)).reshape(-1)
    x5 = as5d(x)
    y = np.empty(x.shape[:1] + (g.K,) + g.out, np.float32)
    y5 = as5d(y)
    comp = (g.Dc, g.Hc, g.Wc)
    over_samples(lambda n0, n1: _forward(x5, wp, g.off, g.J, y5, g.padding, g.stride, comp, g.Lx, g.Pcp,
                                         g.KB, g.PB, n0, n1), x.shape[0], g.flops)
    return y


@nb.njit(nogil=True, cache=True)
def _backward_filter(dy5, x5, off, J, padding, stride, comp, Lx, Pcp, Kp, mb, n0, n1):
    """dw (Kp, len(off)) summed over the samples [n0, n1), in blocks of mb."""
    K, Do, Ho, Wo = dy5.shape[1:]
    C = x5.shape[1]
    _, Hp, Wp = comp
    xf = x5.reshape(x5.size)
    Jp = off.size
    dw = np.zeros(Kp * Jp, np.float32)
    xb = np.zeros(mb * Lx, np.float32)
    db = np.zeros(mb * Kp * Pcp, np.float32)   # garbage columns and padded rows stay zero
    dyf = dy5.reshape(dy5.size)
    for a in range(n0, n1, mb):
        m = min(mb, n1 - a)
        for i in range(m):
            _fill_sample(xb, i * Lx, xf, a + i, C, x5.shape[2:], padding, stride, comp)
            for k in range(K):
                for od in range(Do):
                    for oh in range(Ho):
                        copy_run(db, (i * Kp + k) * Pcp + (od * Hp + oh) * Wp,
                                  dyf, ((((a + i) * K + k) * Do + od) * Ho + oh) * Wo, Wo)
        for kb in range(Kp // GKB):
            for jb in range(-(-J // GJB)):
                _GRAD(dw, kb * GKB * Jp + jb * GJB, Jp, db, kb * GKB * Pcp, Pcp, Kp * Pcp,
                      xb, Lx, off, jb * GJB, m, Pcp // LANES)
    return dw


@nb.njit(inline="always")
def _grad_k(KV, dwt, d0, dT, t0, ts, x, x0, off, j0, P):
    if KV == 4:
        _GK4(dwt, d0, dT, t0, ts, x, x0, off, j0, P)
    elif KV == 2:
        _GK2(dwt, d0, dT, t0, ts, x, x0, off, j0, P)
    else:
        _GK1(dwt, d0, dT, t0, ts, x, x0, off, j0, P)


@nb.njit(nogil=True, cache=True)
def _backward_filter_k(dy5, x5, off, J, padding, stride, comp, Lx, Pc, Kp, KV, n0, n1):
    """dw transposed, (len(off), Kp), summed over the samples [n0, n1): per
    sample, its x buffer and dy with positions as rows (dT, (Pc, Kp)), then
    every tile of KV*LANES filters by JB taps over the sample's positions."""
    K, Do, Ho, Wo = dy5.shape[1:]
    C = x5.shape[1]
    _, Hp, Wp = comp
    JB = 24 // KV
    chunk = _CHUNK_BYTES // (4 * KV * LANES)
    xf, dyf = x5.reshape(x5.size), dy5.reshape(dy5.size)
    dwt = np.zeros(off.size * Kp, np.float32)
    xb = np.zeros(Lx, np.float32)
    dT = np.zeros(Pc * Kp, np.float32)   # garbage positions and padded filters stay zero
    for n in range(n0, n1):
        _fill_sample(xb, 0, xf, n, C, x5.shape[2:], padding, stride, comp)
        for od in range(Do):   # row by row: a row's (Wo, Kp) block of dT stays in L1 through the filters
            for oh in range(Ho):
                dst = (od * Hp + oh) * Wp * Kp
                for k in range(K):
                    src = (((n * K + k) * Do + od) * Ho + oh) * Wo
                    for ow in range(Wo):
                        dT[uintp(dst + ow * Kp + k)] = dyf[uintp(src + ow)]
        for p0 in range(0, Pc, chunk):   # a chunk of positions: its dT rows stay in L1 through the tiles
            for kt in range(Kp // (KV * LANES)):
                for jt in range(-(-J // JB)):
                    _grad_k(KV, dwt, jt * JB * Kp + kt * KV * LANES, dT, p0 * Kp + kt * KV * LANES, Kp, xb, p0,
                            off, jt * JB, min(chunk, Pc - p0))
    return dwt


def backward_filter(dy, x, w_shape, padding, dilation=None, stride=None):
    g = _geometry_of(x.shape, w_shape, stride or (1,) * (x.ndim - 2), padding, dilation)
    x5, dy5 = as5d(x), as5d(dy)
    comp = (g.Dc, g.Hc, g.Wc)
    if g.K >= LANES:   # vectorized over filters
        KV = 4 if g.K >= 4 * LANES else 2 if g.K >= 2 * LANES else 1
        Kp = _ceil(g.K, KV * LANES)
        parts = over_samples(lambda n0, n1: _backward_filter_k(dy5, x5, g.off, g.J, g.padding, g.stride, comp,
                                                               g.Lx, g.Pc, Kp, KV, n0, n1), x.shape[0], g.flops)
        dwt = parts[0]
        for p in parts[1:]:   # thread order: deterministic
            dwt += p
        return np.ascontiguousarray(dwt.reshape(-1, Kp)[:g.J, :g.K].T).reshape(w_shape)
    Kp = _ceil(g.K, GKB)
    mb = max(1, min(x.shape[0], _BLOCK_BYTES // (4 * (g.Lx + Kp * g.Pcp))))
    parts = over_samples(lambda n0, n1: _backward_filter(dy5, x5, g.off, g.J, g.padding, g.stride, comp, g.Lx,
                                                         g.Pcp, Kp, mb, n0, n1), x.shape[0], g.flops)
    dw = parts[0]
    for p in parts[1:]:   # thread order: deterministic
        dw += p
    return np.ascontiguousarray(dw.reshape(Kp, -1)[:g.K, :g.J]).reshape(w_shape)
