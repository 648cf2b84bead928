"""CPU 3x3 convolution by Winograd's minimal filtering, F(2x2, 3x3) (float32).

Notation as conv_cpu: x (N, C, H, W), w (K, C, 3, 3), padding (ph, pw),
stride 1, no dilation, one group; y (N, K, Ho, Wo), Ho = H + 2ph - 2. The
output is cut into 2x2 tiles, th x tw of them per plane (th = ceil(Ho/2));
tile (a, b) reads the 4x4 patch d of the zero-padded input at rows 2a..2a+3,
columns 2b..2b+3. In 1-D, F(2, 3) (Lavin and Gray, 2016) computes two
outputs of a 3-tap correlation with 4 multiplications instead of 6:

    y = A^T [(G g) * (B^T d)]          (* elementwise over 4 points)
    B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
    G   = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
    A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]

and nested in 2-D, y_tile = A^T [(G g G^T) * (B^T d B)] A, 16 products per
tile and channel pair instead of 36. Summed over input channels, each of the
16 points xi is one matrix product, which the BLAS runs:

    forward          M_xi (K, T) = U_xi (K, C) @ V_xi (C, T),   U = G w G^T,  V = B^T d B
    backward-filter  Q_xi (K, C) = D_xi (K, T) @ V_xi^T (T, C), D = A e A^T,  dw = G^T Q G

over T tiles. Backward-filter is the same trilinear form read for the filter
(sum over i, r of y_i g_r d_{i+r}): dw[r, s] = sum over tiles of the 2x2 dy
patch e correlated with d, i.e. F(3x3, 2x2) with the transforms exchanged,
so V (the input transform) is shared by both directions. Backward-data at
stride 1 is conv_cpu's forward of dy with the flipped filter, so it comes
here through `forward`.

2.25x fewer multiply-adds than im2col's product; the transforms are additions
only (one memory pass each). Samples are processed in blocks whose V and M
stay in the L2 cache (V written by the transform, read by the products, M
written by the products, read by the output transform). For contiguous inner
loops each padded input plane is split into its even and odd columns first,
so that tile b's four columns are E[b], O[b], E[b+1], O[b+1].

Accuracy: the transforms multiply by 0, +-1 and +-1/2 only (exact in binary);
the float32 result stays within the conv tests' 1e-5 relative L2 of the float64
reference. float64 keeps conv_cpu's im2col path (gradient checks use it).
Threads and determinism follow cpu_parallel's policy (contiguous sample
parts, fixed-order sums), as conv_cpu does.
"""
import functools

import numba as nb
import numpy as np

from ..cpu_parallel import blas_threads, over_samples

_BLOCK_BYTES = 1 << 20   # V and M of one block of samples (an L2 cache holds both)
_STAGGER = 4096 // 16 + 64   # bytes between the 16 point matrices beyond whole pages
_MIN_CHANNELS = 16       # fewer input or output channels: im2col's product is as fast
# Smaller outputs run im2col's product. Measured on one core (ms, im2col -> here):
# 7x7, 64->128, batch 128: fwd 11.1 -> 7.1, bwd-data 13.2 -> 7.8, bwd-filter 11.9 -> 9.4;
# 6x6, 256->256, batch 16: 7.0 -> 5.9, 9.4 -> 6.7, 9.8 -> 6.3; 4x4, 256->256, batch 16:
# 3.5 -> 2.1, 3.9 -> 2.6, but bwd-filter 3.9 -> 11 (4 tiles a plane: the (16, K, C)
# sums outweigh the products), hence its own floor.
_MIN_OUTPUT = 4
_MIN_FILTER_OUTPUT = 6
_MIN_FILTER_COLUMNS = 256   # tiles a backward-filter block takes at least

_G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], np.float32)
_GG = np.kron(_G, _G)   # (16, 9): G w G^T of every (k, c) as one product, point i*4 + j, tap r*3 + s


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
    """One call's tiling: th x tw tiles a plane; blocks of m samples. A block's
    columns (tiles) are ordered (a, n, b): the tile rows of the block's m
    samples side by side, so that every inner loop runs over a whole row of
    the block (a few tiles per row on small images gave loops too short to pay
    for themselves). The planes lie side by side in the transforms' row
    buffers with tw + 1 even (and odd) columns each; the position b = tw of
    each (a, n) there is a gap, skipped."""

    def __init__(self, N, C, K, H, W, padding):
        self.ph, self.pw = padding
        self.Ho, self.Wo = H + 2 * self.ph - 2, W + 2 * self.pw - 2
        self.th, self.tw = -(-self.Ho // 2), -(-self.Wo // 2)
        self.tiles = self.th * self.tw   # columns per sample
        per_sample = 16 * (C + K) * self.tiles * 4
        self.m = int(max(1, min(N, _BLOCK_BYTES // per_sample)))
        # backward-filter: each block's 16 products (K, cols) @ (cols, C) are added into
        # the (16, K, C) sums, so a block needs enough columns for the products to
        # outweigh that addition (few tiles and many channels: 1.7-3x slower otherwise)
        self.m_filter = int(min(N, max(self.m, -(-_MIN_FILTER_COLUMNS // self.tiles))))

    def blocks(self, n0, n1, m=None):
        m = m or self.m
        return [(a, min(n1, a + m)) for a in range(n0, n1, m)]


@functools.lru_cache(maxsize=256)
def _tiles(N, C, K, H, W, padding):
    return _Tiles(N, C, K, H, W, padding)


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


def _points(rows, cols):
    """An uninitialized (16, rows, cols) float32 array whose 16 matrices start
    _STAGGER bytes past a multiple of 4 KiB apart: the transforms read or write
    the 16 points of a tile at once, and 16 streams a multiple of 4 KiB apart
    share one set of the L1 cache (measured 3-7x slower transforms at such
    sizes). Each matrix stays a BLAS operand (rows of cols, stride cols)."""
    step = -(-rows * cols * 4 // 4096) * 4096 + _STAGGER
    flat = np.empty(15 * step // 4 + rows * cols, np.float32)
    return np.lib.stride_tricks.as_strided(flat, (16, rows, cols), (step, cols * 4, 4))


def forward(x, w, padding):
    """conv2d(x, w, stride=1, padding) for the calls `applies` accepts."""
    N, C, H, W = x.shape
    K = w.shape[0]
    t = _tiles(N, C, K, H, W, tuple(padding))
    # U = G w G^T per (k, c), as 16 matrices (K, C)
    with blas_threads(1):   # a BLAS call at several threads leaves its pool spinning through the parts
        U = (_GG @ np.ascontiguousarray(w).reshape(K * C, 9).T).reshape(16, K, C)
    x = np.ascontiguousarray(x)
    y = np.empty((N, K, t.Ho, t.Wo), np.float32)

    def part(n0, n1):
        full = min(t.m, n1 - n0) * t.tiles
        V_, M_ = _points(C, full), _points(K, full)   # once per part: fresh pages cost page faults
        for a, b in t.blocks(n0, n1):
            V, M = V_[:, :, :(b - a) * t.tiles], M_[:, :, :(b - a) * t.tiles]
            _input_transform(x[a:b], t.ph, t.pw, t.th, t.tw, V)
            np.matmul(U, V, out=M)
            _output_transform(M, t.th, t.tw, y[a:b])
    over_samples(part, N, 2 * N * K * C * t.tiles * 16)
    return y


def backward_filter(dy, x, padding):
    """conv2d_backward_filter(dy, x, (K, C, 3, 3), stride=1, padding) for the calls `applies` accepts."""
    N, C, H, W = x.shape
    K = dy.shape[1]
    t = _tiles(N, C, K, H, W, tuple(padding))
    x, dy = np.ascontiguousarray(x), np.ascontiguousarray(dy)

    def part(n0, n1):
        Q = np.zeros((16, K, C), np.float32)
        product = np.empty_like(Q)
        full = min(t.m_filter, n1 - n0) * t.tiles
        V_, D_ = _points(C, full), _points(K, full)
        for a, b in t.blocks(n0, n1, t.m_filter):            # block order: deterministic
            V, D = V_[:, :, :(b - a) * t.tiles], D_[:, :, :(b - a) * t.tiles]
            _input_transform(x[a:b], t.ph, t.pw, t.th, t.tw, V)
            _gradient_transform(dy[a:b], t.th, t.tw, D)
            Q += np.matmul(D, V.transpose(0, 2, 1), out=product)
        return Q
    parts = over_samples(part, N, 2 * N * K * C * t.tiles * 16)
    Q = parts[0]
    for p in parts[1:]:                                      # thread order: deterministic
        Q += p
    # dw = G^T Q G per (k, c)
    with blas_threads(1):
        return np.ascontiguousarray((Q.reshape(16, K * C).T @ _GG).reshape(K, C, 3, 3))
