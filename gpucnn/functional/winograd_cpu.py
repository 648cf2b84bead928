"""CPU 3x3 convolution by Winograd's minimal filtering, F(2x2, 3x3) and
F(4x4, 3x3) (float32).

Notation as conv_cpu: x (N, C, H, W), w (K, C, 3, 3), padding (ph, pw),
stride 1, no dilation, one group; y (N, K, Ho, Wo), Ho = H + 2ph - 2. The
output is cut into t x t tiles (t = 2 or 4), th x tw of them per plane
(th = ceil(Ho/t)); tile (a, b) reads the (t+2) x (t+2) patch d of the
zero-padded input at rows t*a.., columns t*b... In 1-D, F(2, 3) (Lavin and
Gray, 2016) computes two outputs of a 3-tap correlation with 4
multiplications instead of 6:

    y = A^T [(G g) * (B^T d)]          (* elementwise over 4 points)
    B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
    G   = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
    A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]

and nested in 2-D, y_tile = A^T [(G g G^T) * (B^T d B)] A, 16 products per
tile and channel pair instead of 36. F(4, 3) does the same with 6 points
(matrices below, at the F(4x4, 3x3) kernels): 36 products for 16 outputs.
Summed over input channels, each point xi is one matrix product, which the
BLAS runs:

    forward          M_xi (K, T) = U_xi (K, C) @ V_xi (C, T),   U = G w G^T,  V = B^T d B
    backward-filter  Q_xi (K, C) = D_xi (K, T) @ V_xi^T (T, C), D = A e A^T,  dw = G^T Q G

over T tiles. Backward-filter is the same trilinear form read for the filter
(sum over i, r of y_i g_r d_{i+r}): dw[r, s] = sum over tiles of the t x t dy
patch e correlated with d, i.e. F(3x3, t x t) with the transforms exchanged,
so V (the input transform) is shared by both directions. Backward-data at
stride 1 is conv_cpu's forward of dy with the flipped filter, so it comes
here through `forward`.

F(2x2, 3x3) does 2.25x fewer multiply-adds than im2col's product, F(4x4,
3x3) 4x; the transforms are a few additions per value, scalar code (about
half of the time), and F(4x4)'s cost more per point but it has 1.78x fewer
points per output; `_form` picks per call. Samples are processed in blocks
whose V and M stay in the L2 cache (V written by the transform, read by the
products, M written by the products, read by the output transform). For
contiguous inner loops each padded input plane is split into its columns by
phase first (even and odd; for F(4x4) the four residues mod 4), so that
tile b's columns are E[b], O[b], E[b+1], O[b+1] (F(4x4): P0..P3[b],
P0[b+1], P1[b+1]).

Accuracy: F(2x2, 3x3)'s transforms multiply by 0, +-1 and +-1/2 only (exact
in binary): relative L2 1-2e-7 against float64; F(4x4, 3x3)'s factors 4, 5
and 8 lose a few bits to cancellation and G's 1/6 is rounded: 0.6-1.3e-6 on
the test sweep. Both stay within the conv tests' 1e-5 relative L2 of the
float64 reference. float64 keeps conv_cpu's im2col path (gradient checks use it).
Threads and determinism follow cpu_parallel's policy (contiguous sample
parts, fixed-order sums), as conv_cpu does.
"""
import functools

import numba as nb
import numpy as np

from ..cpu_parallel import blas_threads, over_samples

_BLOCK_BYTES = 1 << 20   # V and M of one block of samples (an L2 cache holds both)
_STAGGER = 4096 // 16 + 64   # bytes between the point matrices beyond whole pages
_MIN_CHANNELS = 16       # fewer input or output channels: im2col's product is as fast
# Smaller outputs run im2col's product. Measured on one core (ms, im2col -> here):
# 7x7, 64->128, batch 128: fwd 11.1 -> 7.1, bwd-data 13.2 -> 7.8, bwd-filter 11.9 -> 9.4;
# 6x6, 256->256, batch 16: 7.0 -> 5.9, 9.4 -> 6.7, 9.8 -> 6.3; 4x4, 256->256, batch 16:
# 3.5 -> 2.1, 3.9 -> 2.6, but bwd-filter 3.9 -> 11 (4 tiles a plane: the (16, K, C)
# sums outweigh the products), hence its own floor.
_MIN_OUTPUT = 4
_MIN_FILTER_OUTPUT = 6
_MIN_FILTER_COLUMNS = 256   # tiles a backward-filter block takes at least
_F4_MIN_OUTPUT, _F4_MIN_FILTER_OUTPUT = 7, 24   # F(4x4, 3x3) from these output sizes (_form)

_G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]])


def applies(x_shape, w_shape, stride, padding, dilation, groups, dtype, direction="forward"):
    """Whether a conv call runs here: float32, 2-D, 3x3, stride 1, no dilation,
    one group, enough channels for the products to dominate, and an output of
    at least _MIN_OUTPUT (backward-filter: _MIN_FILTER_OUTPUT) a side."""
    smallest = _MIN_FILTER_OUTPUT if direction == "backward_filter" else _MIN_OUTPUT
    return (np.dtype(dtype) == np.float32 and len(x_shape) == 4 and tuple(w_shape[2:]) == (3, 3)
            and tuple(stride) == (1, 1) and all(d == 1 for d in (dilation or (1, 1))) and groups == 1
            and min(w_shape[0], w_shape[1]) >= _MIN_CHANNELS
            and min(x_shape[2] + 2 * padding[0], x_shape[3] + 2 * padding[1]) - 2 >= smallest)


class _Tiles:
    """One call's tiling for a form with `tile` x `tile` output tiles: th x tw
    tiles a plane; blocks of m samples. A block's
    columns (tiles) are ordered (a, n, b): the tile rows of the block's m
    samples side by side, so that every inner loop runs over a whole row of
    the block (a few tiles per row on small images gave loops too short to pay
    for themselves). The planes lie side by side in the transforms' row
    buffers with tw + 1 columns of each phase (F(2x2, 3x3): even and odd
    columns; F(4x4, 3x3): the four residues mod 4) each; the position b = tw
    of each (a, n) there is a gap, skipped."""

    def __init__(self, N, C, K, H, W, padding, tile, points):
        self.ph, self.pw = padding
        self.Ho, self.Wo = H + 2 * self.ph - 2, W + 2 * self.pw - 2
        self.th, self.tw = -(-self.Ho // tile), -(-self.Wo // tile)
        self.tiles = self.th * self.tw   # columns per sample
        per_sample = points * (C + K) * self.tiles * 4
        self.m = int(max(1, min(N, _BLOCK_BYTES // per_sample)))
        # backward-filter: each block's products (K, cols) @ (cols, C) are added into
        # the (points, K, C) sums, so a block needs enough columns for the products to
        # outweigh that addition (few tiles and many channels: 1.7-3x slower otherwise)
        self.m_filter = int(min(N, max(self.m, -(-_MIN_FILTER_COLUMNS // self.tiles))))

    def blocks(self, n0, n1, m=None):
        m = m or self.m
        return [(a, min(n1, a + m)) for a in range(n0, n1, m)]


@functools.lru_cache(maxsize=256)
def _tiles(N, C, K, H, W, padding, tile, points):
    return _Tiles(N, C, K, H, W, padding, tile, points)


@nb.njit(inline="always")
def _split_plane(src, r0, c0, E, O):
    """E[r0 + h, (c0 + w) // 2] or O[...] = src[h, w] for the even or odd padded column c0 + w."""
    H, W = src.shape
    for h in range(H):
        for w in range(W):
            c = c0 + w
            if c % 2 == 0:
                E[r0 + h, c // 2] = src[h, w]
            else:
                O[r0 + h, c // 2] = src[h, w]


# The transforms run per tile, 16 scalar values in and out. Written instead
# as long vectorizable loops over a block's tiles (one per point), the
# reshuffles that feed those loops cost more than the vector loops saved
# (measured 1.5-3x slower transforms): each tile's work is a few adds.

@nb.njit(nogil=True, cache=True)
def _input_transform(x, ph, pw, th, tw, V):
    """V[(i*4 + j), c, (a*m + n)*tw + b] = (B^T d B)[i, j] for tile (a, b) of x[n, c]."""
    m, C, H, W = x.shape
    run = m * (tw + 1)
    # the padded planes of the m samples side by side, even and odd columns apart;
    # padding, gaps and the tail beyond the input stay 0
    E = np.zeros((2 * th + 2, run + 1), x.dtype)
    O = np.zeros((2 * th + 2, run + 1), x.dtype)
    for c in range(C):
        for n in range(m):
            _split_plane(x[n, c], ph, n * 2 * (tw + 1) + pw, E, O)
        for a in range(th):
            e0, e1, e2, e3 = E[2 * a], E[2 * a + 1], E[2 * a + 2], E[2 * a + 3]
            o0, o1, o2, o3 = O[2 * a], O[2 * a + 1], O[2 * a + 2], O[2 * a + 3]
            v = V[:, c, a * m * tw:(a + 1) * m * tw]   # indexed from 0: no negative-index checks
            q = j = 0   # j: the tile's column in its plane (no division in the loop)
            for b in range(run):
                if j == tw:   # the gap between two planes
                    j = 0
                    continue
                j += 1
                # B^T down the rows, for the tile's four columns E[b], O[b], E[b+1], O[b+1]
                t00 = e0[b] - e2[b]
                t01 = o0[b] - o2[b]
                t02 = e0[b + 1] - e2[b + 1]
                t03 = o0[b + 1] - o2[b + 1]
                t10 = e1[b] + e2[b]
                t11 = o1[b] + o2[b]
                t12 = e1[b + 1] + e2[b + 1]
                t13 = o1[b + 1] + o2[b + 1]
                t20 = e2[b] - e1[b]
                t21 = o2[b] - o1[b]
                t22 = e2[b + 1] - e1[b + 1]
                t23 = o2[b + 1] - o1[b + 1]
                t30 = e1[b] - e3[b]
                t31 = o1[b] - o3[b]
                t32 = e1[b + 1] - e3[b + 1]
                t33 = o1[b + 1] - o3[b + 1]
                # ... then B across the columns
                v[0, q] = t00 - t02
                v[1, q] = t01 + t02
                v[2, q] = t02 - t01
                v[3, q] = t01 - t03
                v[4, q] = t10 - t12
                v[5, q] = t11 + t12
                v[6, q] = t12 - t11
                v[7, q] = t11 - t13
                v[8, q] = t20 - t22
                v[9, q] = t21 + t22
                v[10, q] = t22 - t21
                v[11, q] = t21 - t23
                v[12, q] = t30 - t32
                v[13, q] = t31 + t32
                v[14, q] = t32 - t31
                v[15, q] = t31 - t33
                q += 1


@nb.njit(nogil=True, cache=True)
def _output_transform(M, th, tw, y):
    """y[n, k] tile (a, b) = A^T M[:, k, (a*m + n)*tw + b] A (4x4 -> 2x2), cut to (Ho, Wo)."""
    m, K, Ho, Wo = y.shape
    run = m * (tw + 1)
    top = np.empty(2 * run, y.dtype)
    bottom = np.empty(2 * run, y.dtype)
    for k in range(K):
        for a in range(th):
            v = M[:, k, a * m * tw:(a + 1) * m * tw]
            q = j = 0   # j: the tile's column in its plane (no division in the loop)
            for b in range(run):
                if j == tw:   # the gap between two planes
                    j = 0
                    continue
                j += 1
                # A^T across the columns of each of the four rows
                r00 = v[0, q] + v[1, q] + v[2, q]
                r01 = v[1, q] - v[2, q] - v[3, q]
                r10 = v[4, q] + v[5, q] + v[6, q]
                r11 = v[5, q] - v[6, q] - v[7, q]
                r20 = v[8, q] + v[9, q] + v[10, q]
                r21 = v[9, q] - v[10, q] - v[11, q]
                r30 = v[12, q] + v[13, q] + v[14, q]
                r31 = v[13, q] - v[14, q] - v[15, q]
                # ... then A down the rows
                top[2 * b] = r00 + r10 + r20
                top[2 * b + 1] = r01 + r11 + r21
                bottom[2 * b] = r10 - r20 - r30
                bottom[2 * b + 1] = r11 - r21 - r31
                q += 1
            for n in range(m):
                o = n * 2 * (tw + 1)
                out = y[n, k, 2 * a]
                for w in range(Wo):
                    out[w] = top[o + w]
                if 2 * a + 1 < Ho:
                    out = y[n, k, 2 * a + 1]
                    for w in range(Wo):
                        out[w] = bottom[o + w]


@nb.njit(nogil=True, cache=True)
def _gradient_transform(dy, th, tw, D):
    """D[(i*4 + j), k, (a*m + n)*tw + b] = (A e A^T)[i, j] for the 2x2 patch e
    of dy[n, k] at tile (a, b) (zeros beyond Ho, Wo);
    A = [[1,0],[1,1],[1,-1],[0,-1]]."""
    m, K, Ho, Wo = dy.shape
    run = m * (tw + 1)
    E = np.zeros((2 * th, run), dy.dtype)
    O = np.zeros((2 * th, run), dy.dtype)
    for k in range(K):
        for n in range(m):
            _split_plane(dy[n, k], 0, n * 2 * (tw + 1), E, O)
        for a in range(th):
            e0, e1, o0, o1 = E[2 * a], E[2 * a + 1], O[2 * a], O[2 * a + 1]
            v = D[:, k, a * m * tw:(a + 1) * m * tw]
            q = j = 0   # j: the tile's column in its plane (no division in the loop)
            for b in range(run):
                if j == tw:   # the gap between two planes
                    j = 0
                    continue
                j += 1
                # A down the rows (e0, e0 + e1, e0 - e1, -e1), per column
                s0, s1 = e0[b], o0[b]
                p0, p1 = e0[b] + e1[b], o0[b] + o1[b]
                d0, d1 = e0[b] - e1[b], o0[b] - o1[b]
                n0, n1 = -e1[b], -o1[b]
                # ... then A^T across the columns (u, u + v, u - v, -v)
                v[0, q] = s0
                v[1, q] = s0 + s1
                v[2, q] = s0 - s1
                v[3, q] = -s1
                v[4, q] = p0
                v[5, q] = p0 + p1
                v[6, q] = p0 - p1
                v[7, q] = -p1
                v[8, q] = d0
                v[9, q] = d0 + d1
                v[10, q] = d0 - d1
                v[11, q] = -d1
                v[12, q] = n0
                v[13, q] = n0 + n1
                v[14, q] = n0 - n1
                v[15, q] = -n1
                q += 1


# ---- F(4x4, 3x3): 6x6 input tiles, 36 points -------------------------------------------
# 1-D, points 0, 1, -1, 2, -2 and infinity (Lavin and Gray):
#     B^T = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
#            [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
#     G   = [[1/4, 0, 0], [-1/6, -1/6, -1/6], [-1/6, 1/6, -1/6],
#            [1/24, 1/12, 1/6], [1/24, -1/12, 1/6], [0, 0, 1]]
#     A^T = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]
# 36 products per tile and channel pair for 16 outputs (F(2x2, 3x3): 16 for 4),
# 1.78x fewer multiply-adds and transformed values per output. The factors
# 4, 5 and 8 make B^T d and A^T m lose a few bits to cancellation: relative L2
# 0.6-1.3e-6 against float64 on the test sweep (F(2x2, 3x3): 1-2e-7; the bound is 1e-5).

_2, _4, _5, _8 = (np.float32(v) for v in (2, 4, 5, 8))   # float32 factors: an int would widen to float64


@nb.njit(inline="always")
def _bt6(d0, d1, d2, d3, d4, d5):
    """B^T d for six values (the factored form: 12 adds, 6 multiplies)."""
    p, q = d4 - _4 * d2, d3 - _4 * d1
    r, s = d4 - d2, _2 * (d3 - d1)
    return _4 * d0 - _5 * d2 + d4, p + q, p - q, r + s, r - s, _4 * d1 - _5 * d3 + d5


@nb.njit(inline="always")
def _at6(m0, m1, m2, m3, m4, m5):
    """A^T m: six points -> four outputs."""
    a, b = m1 + m2, m1 - m2
    c, d = m3 + m4, m3 - m4
    return m0 + a + c, b + _2 * d, a + _4 * c, b + _8 * d + m5


@nb.njit(inline="always")
def _a4(e0, e1, e2, e3):
    """A e (A = (A^T)^T): four values -> six points (backward-filter's dy transform)."""
    a, b = e0 + e2, e1 + e3
    c, d = e0 + _4 * e2, _2 * e1 + _8 * e3
    return e0, a + b, a - b, c + d, c - d, e3


@nb.njit(inline="always")
def _store4(rows, col, t):
    rows[0, col] = t[0]
    rows[1, col] = t[1]
    rows[2, col] = t[2]
    rows[3, col] = t[3]


@nb.njit(inline="always")
def _store6(v, row, q, t):
    v[row, q] = t[0]
    v[row + 1, q] = t[1]
    v[row + 2, q] = t[2]
    v[row + 3, q] = t[3]
    v[row + 4, q] = t[4]
    v[row + 5, q] = t[5]


@nb.njit(inline="always")
def _split4(src, r0, c0, P):
    """P[(c0 + w) % 4, r0 + h, (c0 + w) // 4] = src[h, w]: the padded plane's columns by phase."""
    H, W = src.shape
    for p in range(4):
        w0 = (p - c0) % 4              # the first column of phase p
        col0 = (c0 + w0) // 4
        for h in range(H):
            dst = P[p, r0 + h]
            for i in range((W - w0 + 3) // 4):
                dst[col0 + i] = src[h, w0 + 4 * i]


@nb.njit(nogil=True, cache=True)
def _input_transform4(x, ph, pw, th, tw, V):
    """V[(i*6 + j), c, (a*m + n)*tw + b] = (B^T d B)[i, j] for the 6x6 patch d of the
    padded x[n, c] at rows 4a.., columns 4b.. (tile (a, b))."""
    m, C, H, W = x.shape
    run = m * (tw + 1)
    P = np.zeros((4, 4 * th + 2, run + 1), x.dtype)   # padding, gaps and the tail stay 0
    for c in range(C):
        for n in range(m):
            _split4(x[n, c], ph, n * 4 * (tw + 1) + pw, P)
        for a in range(th):
            r = 4 * a
            v = V[:, c, a * m * tw:(a + 1) * m * tw]
            q = j = 0
            t4 = t5 = _bt6(P[0, 0, 0], P[0, 0, 0], P[0, 0, 0], P[0, 0, 0], P[0, 0, 0], P[0, 0, 0])   # typed
            for b in range(run):
                if j == tw:   # the gap between two planes
                    j = 0
                    continue
                j += 1
                # B^T down each of the tile's six columns (phases 0-3 at b, 0-1 at b + 1); the
                # first two are the previous tile's last two, except on a plane's first tile
                if j == 1:
                    t0 = _bt6(P[0, r, b], P[0, r + 1, b], P[0, r + 2, b], P[0, r + 3, b], P[0, r + 4, b],
                              P[0, r + 5, b])
                    t1 = _bt6(P[1, r, b], P[1, r + 1, b], P[1, r + 2, b], P[1, r + 3, b], P[1, r + 4, b],
                              P[1, r + 5, b])
                else:
                    t0, t1 = t4, t5
                t2 = _bt6(P[2, r, b], P[2, r + 1, b], P[2, r + 2, b], P[2, r + 3, b], P[2, r + 4, b], P[2, r + 5, b])
                t3 = _bt6(P[3, r, b], P[3, r + 1, b], P[3, r + 2, b], P[3, r + 3, b], P[3, r + 4, b], P[3, r + 5, b])
                b1 = b + 1
                t4 = _bt6(P[0, r, b1], P[0, r + 1, b1], P[0, r + 2, b1], P[0, r + 3, b1], P[0, r + 4, b1],
                          P[0, r + 5, b1])
                t5 = _bt6(P[1, r, b1], P[1, r + 1, b1], P[1, r + 2, b1], P[1, r + 3, b1], P[1, r + 4, b1],
                          P[1, r + 5, b1])
                # ... then B across each row
                _store6(v, 0, q, _bt6(t0[0], t1[0], t2[0], t3[0], t4[0], t5[0]))
                _store6(v, 6, q, _bt6(t0[1], t1[1], t2[1], t3[1], t4[1], t5[1]))
                _store6(v, 12, q, _bt6(t0[2], t1[2], t2[2], t3[2], t4[2], t5[2]))
                _store6(v, 18, q, _bt6(t0[3], t1[3], t2[3], t3[3], t4[3], t5[3]))
                _store6(v, 24, q, _bt6(t0[4], t1[4], t2[4], t3[4], t4[4], t5[4]))
                _store6(v, 30, q, _bt6(t0[5], t1[5], t2[5], t3[5], t4[5], t5[5]))
                q += 1


@nb.njit(nogil=True, cache=True)
def _output_transform4(M, th, tw, y):
    """y[n, k] tile (a, b) = A^T M[:, k, (a*m + n)*tw + b] A (6x6 -> 4x4), cut to (Ho, Wo)."""
    m, K, Ho, Wo = y.shape
    run = m * (tw + 1)
    rows = np.empty((4, 4 * run), y.dtype)
    for k in range(K):
        for a in range(th):
            v = M[:, k, a * m * tw:(a + 1) * m * tw]
            q = j = 0
            for b in range(run):
                if j == tw:   # the gap between two planes
                    j = 0
                    continue
                j += 1
                # A^T across each of the six rows ...
                r0 = _at6(v[0, q], v[1, q], v[2, q], v[3, q], v[4, q], v[5, q])
                r1 = _at6(v[6, q], v[7, q], v[8, q], v[9, q], v[10, q], v[11, q])
                r2 = _at6(v[12, q], v[13, q], v[14, q], v[15, q], v[16, q], v[17, q])
                r3 = _at6(v[18, q], v[19, q], v[20, q], v[21, q], v[22, q], v[23, q])
                r4 = _at6(v[24, q], v[25, q], v[26, q], v[27, q], v[28, q], v[29, q])
                r5 = _at6(v[30, q], v[31, q], v[32, q], v[33, q], v[34, q], v[35, q])
                # ... then A down each of the four columns
                _store4(rows, 4 * b, _at6(r0[0], r1[0], r2[0], r3[0], r4[0], r5[0]))
                _store4(rows, 4 * b + 1, _at6(r0[1], r1[1], r2[1], r3[1], r4[1], r5[1]))
                _store4(rows, 4 * b + 2, _at6(r0[2], r1[2], r2[2], r3[2], r4[2], r5[2]))
                _store4(rows, 4 * b + 3, _at6(r0[3], r1[3], r2[3], r3[3], r4[3], r5[3]))
                q += 1
            for n in range(m):
                o = n * 4 * (tw + 1)
                for i in range(min(4, Ho - 4 * a)):
                    out, src = y[n, k, 4 * a + i], rows[i]
                    for w in range(Wo):
                        out[w] = src[o + w]


@nb.njit(nogil=True, cache=True)
def _gradient_transform4(dy, th, tw, D):
    """D[(i*6 + j), k, (a*m + n)*tw + b] = (A e A^T)[i, j] for the 4x4 patch e of
    dy[n, k] at tile (a, b) (zeros beyond Ho, Wo)."""
    m, K, Ho, Wo = dy.shape
    run = m * (tw + 1)
    P = np.zeros((4, 4 * th, run), dy.dtype)
    for k in range(K):
        for n in range(m):
            _split4(dy[n, k], 0, n * 4 * (tw + 1), P)
        for a in range(th):
            r = 4 * a
            v = D[:, k, a * m * tw:(a + 1) * m * tw]
            q = j = 0
            for b in range(run):
                if j == tw:   # the gap between two planes
                    j = 0
                    continue
                j += 1
                # A down each of the four columns ...
                c0 = _a4(P[0, r, b], P[0, r + 1, b], P[0, r + 2, b], P[0, r + 3, b])
                c1 = _a4(P[1, r, b], P[1, r + 1, b], P[1, r + 2, b], P[1, r + 3, b])
                c2 = _a4(P[2, r, b], P[2, r + 1, b], P[2, r + 2, b], P[2, r + 3, b])
                c3 = _a4(P[3, r, b], P[3, r + 1, b], P[3, r + 2, b], P[3, r + 3, b])
                # ... then A^T across each of the six rows
                _store6(v, 0, q, _a4(c0[0], c1[0], c2[0], c3[0]))
                _store6(v, 6, q, _a4(c0[1], c1[1], c2[1], c3[1]))
                _store6(v, 12, q, _a4(c0[2], c1[2], c2[2], c3[2]))
                _store6(v, 18, q, _a4(c0[3], c1[3], c2[3], c3[3]))
                _store6(v, 24, q, _a4(c0[4], c1[4], c2[4], c3[4]))
                _store6(v, 30, q, _a4(c0[5], c1[5], c2[5], c3[5]))
                q += 1


class _Form:
    """One Winograd form F(t x t, 3x3): its output tile t, its (t + 2)^2 points,
    GG = G (x) G (points x 9: G w G^T of every (k, c) as one product, point
    i*(t + 2) + j, tap r*3 + s) and its three transform kernels."""

    def __init__(self, tile, G, input_transform, output_transform, gradient_transform):
        self.tile, self.points = tile, (tile + 2) ** 2
        self.GG = np.kron(G, G).astype(np.float32)
        self.input_transform, self.output_transform = input_transform, output_transform
        self.gradient_transform = gradient_transform

    def tiling(self, N, C, K, H, W, padding):
        return _tiles(N, C, K, H, W, tuple(padding), self.tile, self.points)


F2 = _Form(2, _G, _input_transform, _output_transform, _gradient_transform)
F4 = _Form(4, np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                        [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]),
           _input_transform4, _output_transform4, _gradient_transform4)


def _form(x_shape, padding, direction):
    """The form a call runs. F(4x4, 3x3) where it covers the output with no
    more padding than F(2x2, 3x3) (a multiple of 4, or odd sizes as 7: both
    round up to 8) and the output is large enough (forward at least 7 a side,
    backward-filter 24). Measured on one core, batch 128 (ms, F(2x2) -> F(4x4),
    machine loaded): 32->32 at 28x28 forward 23.4 -> 20.5, backward-filter
    27.1 -> 22.9; 128->128 at 7x7 forward 16.5 -> 13.7 but backward-filter
    17.1 -> 18.5 (few tiles: the 36 (K, C) sums outweigh the products); 64->64
    at 14x14 (F(4x4) pads it to 16x16) forward 15.2 -> 16.1."""
    Ho, Wo = (n + 2 * p - 2 for n, p in zip(x_shape[2:], padding))
    smallest = _F4_MIN_FILTER_OUTPUT if direction == "backward_filter" else _F4_MIN_OUTPUT
    same_cover = all(-(-n // 4) * 4 == -(-n // 2) * 2 for n in (Ho, Wo))
    return F4 if same_cover and min(Ho, Wo) >= smallest else F2


def _points(count, rows, cols):
    """An uninitialized (count, rows, cols) float32 array whose matrices start
    _STAGGER bytes past a multiple of 4 KiB apart: the transforms read or write
    all points of a tile at once, and streams a multiple of 4 KiB apart
    share one set of the L1 cache (measured 3-7x slower transforms at such
    sizes). Each matrix stays a BLAS operand (rows of cols, stride cols)."""
    step = -(-rows * cols * 4 // 4096) * 4096 + _STAGGER
    flat = np.empty((count - 1) * step // 4 + rows * cols, np.float32)
    return np.lib.stride_tricks.as_strided(flat, (count, rows, cols), (step, cols * 4, 4))


def forward(x, w, padding, form=None):
    """conv2d(x, w, stride=1, padding) for the calls `applies` accepts."""
    N, C, H, W = x.shape
    K = w.shape[0]
    f = form or _form(x.shape, padding, "forward")
    t = f.tiling(N, C, K, H, W, padding)
    # U = G w G^T per (k, c), as one matrix (K, C) per point
    with blas_threads(1):   # a BLAS call at several threads leaves its pool spinning through the parts
        U = (f.GG @ np.ascontiguousarray(w).reshape(K * C, 9).T).reshape(f.points, K, C)
    x = np.ascontiguousarray(x)
    y = np.empty((N, K, t.Ho, t.Wo), np.float32)

    def part(n0, n1):
        full = min(t.m, n1 - n0) * t.tiles
        V_, M_ = _points(f.points, C, full), _points(f.points, K, full)   # once per part: fresh pages fault
        for a, b in t.blocks(n0, n1):
            V, M = V_[:, :, :(b - a) * t.tiles], M_[:, :, :(b - a) * t.tiles]
            f.input_transform(x[a:b], t.ph, t.pw, t.th, t.tw, V)
            np.matmul(U, V, out=M)
            f.output_transform(M, t.th, t.tw, y[a:b])
    over_samples(part, N, 2 * N * K * C * t.tiles * f.points)
    return y


def backward_filter(dy, x, padding, form=None):
    """conv2d_backward_filter(dy, x, (K, C, 3, 3), stride=1, padding) for the calls `applies` accepts."""
    N, C, H, W = x.shape
    K = dy.shape[1]
    f = form or _form(x.shape, padding, "backward_filter")
    t = f.tiling(N, C, K, H, W, padding)
    x, dy = np.ascontiguousarray(x), np.ascontiguousarray(dy)

    def part(n0, n1):
        Q = np.zeros((f.points, K, C), np.float32)
        product = np.empty_like(Q)
        full = min(t.m_filter, n1 - n0) * t.tiles
        V_, D_ = _points(f.points, C, full), _points(f.points, K, full)
        for a, b in t.blocks(n0, n1, t.m_filter):            # block order: deterministic
            V, D = V_[:, :, :(b - a) * t.tiles], D_[:, :, :(b - a) * t.tiles]
            f.input_transform(x[a:b], t.ph, t.pw, t.th, t.tw, V)
            f.gradient_transform(dy[a:b], t.th, t.tw, D)
            Q += np.matmul(D, V.transpose(0, 2, 1), out=product)
        return Q
    parts = over_samples(part, N, 2 * N * K * C * t.tiles * f.points)
    Q = parts[0]
    for p in parts[1:]:                                      # thread order: deterministic
        Q += p
    # dw = G^T Q G per (k, c)
    with blas_threads(1):
        return np.ascontiguousarray((Q.reshape(f.points, K * C).T @ f.GG).reshape(K, C, 3, 3))
