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
3x3) 4x; the transforms are a few additions per value. F(2x2)'s run per
tile (scalar code, about half of its time); F(4x4)'s, with more arithmetic
per point, run as loops over all the tiles of a block, which LLVM
vectorizes (see the F(4x4) kernels). `_form` picks F(4x4) from an output of
7 a side: 1.2-1.5x faster than F(2x2) there. Samples are processed in blocks
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
from numba import uintp

from ..cpu_caches import L2_BYTES
from ..cpu_parallel import over_items, over_samples
from .simd_cpu import prefetch_run, prefetch_run_write

# V and M of one block of samples, 3/4 of the L2 cache (the products also read U).
# The larger the block, the fewer times U (2.4 MB at 128 -> 128 channels) is read
# per call. Measured with a 2 MiB L2, batch 128, forward at 1 / 2 threads (ms): 1 MiB
# blocks 10.35 / 6.04 at 128->128, 7x7, 4.84 / 3.04 at 64->128, 7x7, 9.64 / 5.41 at
# 64->64, 14x14; 1.5 MiB 7.88 / 5.09, 5.00 / 2.98, 9.09 / 4.91; 3 MiB 8.80 / 5.38,
# 4.71 / 2.84, 8.86 / 4.90, each slower again with the caches flushed first.
_BLOCK_BYTES = L2_BYTES * 3 // 4
_STAGGER = 4096 // 16 + 64   # bytes between the point matrices beyond whole pages
_MIN_CHANNELS = 16       # fewer input or output channels: im2col's product is as fast
# Smaller outputs run im2col's product. Measured on one core (ms, im2col -> F(2x2, 3x3)):
# 7x7, 64->128, batch 128: fwd 11.1 -> 7.1, bwd-data 13.2 -> 7.8, bwd-filter 11.9 -> 9.4;
# 6x6, 256->256, batch 16: 7.0 -> 5.9, 9.4 -> 6.7, 9.8 -> 6.3; 4x4, 256->256, batch 16:
# 3.5 -> 2.1, 3.9 -> 2.6, but bwd-filter 3.9 -> 11 (4 tiles a plane: the (16, K, C)
# sums outweigh the products), hence its own floor.
_MIN_OUTPUT = 4
_MIN_FILTER_OUTPUT = 6
# Tiles a backward-filter block takes at least (fewer blocks, fewer (points, K, C)
# sums, but the block's point matrices leave the L2 cache). In vgg_small's step
# (arrays from memory), 128 -> 128 at 7x7, 1 / 2 threads: 256 tiles 11.8-12.1 /
# 7.1 ms, 128 tiles 10.3-10.9 / 6.6-6.7; 64 -> 128: 5.9 / 4.0 -> 6.1-6.2 / 3.7.
_MIN_FILTER_COLUMNS = 128
_F4_MIN_OUTPUT = 7          # F(4x4, 3x3) from this output size a side (_form)

_G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]])
_G4 = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])


def applies(x_shape, w_shape, stride, padding, dilation, groups, dtype, direction="forward"):
    """Whether a conv call runs here: float32, 2-D, 3x3, stride 1, one group,
    enough channels for the products to dominate, and an output of at least
    _MIN_OUTPUT (backward-filter: _MIN_FILTER_OUTPUT) a side. With dilation
    d > 1: when padding and input size are multiples of d, as the stride-1
    convs of the polyphase components (`_components`), if those have an
    output of at least _DILATED_MIN_OUTPUT a side (forward)."""
    if not (np.dtype(dtype) == np.float32 and len(x_shape) == 4 and tuple(w_shape[2:]) == (3, 3)
            and tuple(stride) == (1, 1) and groups == 1 and min(w_shape[0], w_shape[1]) >= _MIN_CHANNELS):
        return False
    smallest = _MIN_FILTER_OUTPUT if direction == "backward_filter" else _MIN_OUTPUT
    dilation = tuple(dilation or (1, 1))
    if dilation != (1, 1):
        if any(p % d or n % d for n, p, d in zip(x_shape[2:], padding, dilation)):
            return False
        x_shape = x_shape[:2] + tuple(n // d for n, d in zip(x_shape[2:], dilation))
        padding = tuple(p // d for p, d in zip(padding, dilation))
        if direction != "backward_filter":
            smallest = _DILATED_MIN_OUTPUT
    return min(x_shape[2] + 2 * padding[0], x_shape[3] + 2 * padding[1]) - 2 >= smallest


# Dilation d by polyphase components. With padding p = q*d and the output row
# i = i1*d + a, the tap r reads input row (i1 + r - q)*d + a: row i1 + r - q of
# the component of phase a (rows a, a + d, ...). So each of the d_h*d_w
# output components is the stride-1 3x3 conv, padding q, of the input
# component of the same phase, and backward-filter sums over the components
# as over samples. The components are stacked on the batch axis (one copy in,
# one out), then the undilated route runs. Measured on one core, quiet
# machine, dilation 2 (ms, im2col -> here, forward / backward-data /
# backward-filter): 8x64x32x32, 64 filters, 7.2/7.2/7.6 -> 4.1/3.9/4.1;
# 32x64x28x28 21.9/22.2/24.1 -> 15.5/15.8/16.9; 8x16x16x16 (8x8 components)
# backward-filter 0.33 -> 0.20, but its forward was 232 -> 271 us (under
# load), hence the forward's floor of 12 a side.
_DILATED_MIN_OUTPUT = 12


def _components(a, dilation):
    """(N, C, H, W) -> (d_h*d_w*N, C, H/d_h, W/d_w): the polyphase components,
    phase (a, b) (rows a, a + d_h, ..., columns b, b + d_w, ...) the (a*d_w + b)-th block of N."""
    (N, C, H, W), (dh, dw) = a.shape, dilation
    parts = a.reshape(N, C, H // dh, dh, W // dw, dw).transpose(3, 5, 0, 1, 2, 4)
    return np.ascontiguousarray(parts).reshape(dh * dw * N, C, H // dh, W // dw)


def _merged(parts, N, dilation):
    """_components' inverse: (d_h*d_w*N, K, h, w) -> (N, K, h*d_h, w*d_w)."""
    (_, K, h, w), (dh, dw) = parts.shape, dilation
    out = parts.reshape(dh, dw, N, K, h, w).transpose(2, 3, 4, 0, 5, 1)
    return np.ascontiguousarray(out).reshape(N, K, h * dh, w * dw)


def _undilated(dilation, padding):
    """(dilation as a tuple, or None without one; the components' padding)."""
    dilation = tuple(dilation or (1, 1))
    if dilation == (1, 1):
        return None, padding
    return dilation, tuple(p // d for p, d in zip(padding, dilation))


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


@nb.njit(inline="always")
def _prefetch_next(flat, n, c, C, plane):
    """Prefetch plane (n, c + 1) of a contiguous (m, C, ...) array seen flat.
    The transforms read plane c of all m samples of a block, then plane c + 1:
    m interleaved streams, more than the hardware prefetchers follow for large
    blocks, so each small plane was a cold miss when the array was not in the
    cache (backward-filter of 128 channels at 7x7 in a training step, blocks of
    64 samples: 12.5 ms against 9.2 with the arrays cached)."""
    if c + 1 < C:
        prefetch_run(flat, (n * C + c + 1) * plane, plane)


_MANY_SAMPLES = 32   # blocks from this many samples prefetch the point matrices they write


@nb.njit(inline="always")
def _prefetch_points(P, step, row, C, cols, L):
    """Prefetch for writing row `row` + 1 (< C) of the 36 point matrices in P
    (the next channel's runs): 36 interleaved write streams. Used for blocks
    of _MANY_SAMPLES or more (backward-filter on small images: 64 samples at
    7x7), where it saved 0.3-0.8 ms of 7.5-12 at 64->128 and 128->128 with the
    caches flushed; with fewer, larger planes (14x14, 28x28) the prefetched
    lines crowded the L1 cache: 5% slower."""
    if row + 1 < C:
        for xi in range(36):
            prefetch_run_write(P, xi * step + (row + 1) * cols, L)


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
    xf = x.reshape(x.size)
    for c in range(C):
        for n in range(m):
            _prefetch_next(xf, n, c, C, H * W)
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
    dyf = dy.reshape(dy.size)
    for k in range(K):
        for n in range(m):
            _prefetch_next(dyf, n, k, K, Ho * Wo)
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
#
# Vectorized over the tiles of a block: each plane is first split into one
# flat row per (row offset, column offset) of a tile, indexed by the tile
# (a, n, b), so that every transform row is one loop over all the block's
# tiles with unit stride (LLVM vectorizes it). The kernels work on flat
# arrays with unsigned indices: Numba then drops its negative-index fix-up,
# and no array view is made inside a loop (each view costs two atomic
# reference-count updates: views there made these loops 6x slower than the
# scalar per-tile code). A block's tiles are L = th*m*tw, one tile row of the
# block S = m*tw; the point matrices are the flat buffer of `_Points` (point
# xi, channel c, tile q at xi*step + c*cols + q).

_2, _4, _5, _8 = (np.float32(v) for v in (2, 4, 5, 8))   # float32 factors: an int would widen to float64


@nb.njit(inline="always")
def _bt_row(i, s, o0, o1, o2, o3, o4, o5, d, dst, L):
    """d[dst + q] = (B^T v)_i for q < L, v_k = s[o_k + q] (only the v_k row i uses are read)."""
    if i == 0:
        for q in range(L):
            d[uintp(dst + q)] = _4 * s[uintp(o0 + q)] - _5 * s[uintp(o2 + q)] + s[uintp(o4 + q)]
    elif i == 1:
        for q in range(L):
            d[uintp(dst + q)] = s[uintp(o4 + q)] + s[uintp(o3 + q)] - _4 * (s[uintp(o1 + q)] + s[uintp(o2 + q)])
    elif i == 2:
        for q in range(L):
            d[uintp(dst + q)] = s[uintp(o4 + q)] - s[uintp(o3 + q)] + _4 * (s[uintp(o1 + q)] - s[uintp(o2 + q)])
    elif i == 3:
        for q in range(L):
            d[uintp(dst + q)] = s[uintp(o4 + q)] - s[uintp(o2 + q)] + _2 * (s[uintp(o3 + q)] - s[uintp(o1 + q)])
    elif i == 4:
        for q in range(L):
            d[uintp(dst + q)] = s[uintp(o4 + q)] - s[uintp(o2 + q)] - _2 * (s[uintp(o3 + q)] - s[uintp(o1 + q)])
    else:
        for q in range(L):
            d[uintp(dst + q)] = _4 * s[uintp(o1 + q)] - _5 * s[uintp(o3 + q)] + s[uintp(o5 + q)]


@nb.njit(inline="always")
def _at_row(i, s, o0, o1, o2, o3, o4, o5, d, dst, L):
    """d[dst + q] = (A^T v)_i for q < L: six points -> output i of four."""
    if i == 0:
        for q in range(L):
            d[uintp(dst + q)] = (s[uintp(o0 + q)] + s[uintp(o1 + q)] + s[uintp(o2 + q)] + s[uintp(o3 + q)]
                                 + s[uintp(o4 + q)])
    elif i == 1:
        for q in range(L):
            d[uintp(dst + q)] = s[uintp(o1 + q)] - s[uintp(o2 + q)] + _2 * (s[uintp(o3 + q)] - s[uintp(o4 + q)])
    elif i == 2:
        for q in range(L):
            d[uintp(dst + q)] = s[uintp(o1 + q)] + s[uintp(o2 + q)] + _4 * (s[uintp(o3 + q)] + s[uintp(o4 + q)])
    else:
        for q in range(L):
            d[uintp(dst + q)] = (s[uintp(o1 + q)] - s[uintp(o2 + q)] + _8 * (s[uintp(o3 + q)] - s[uintp(o4 + q)])
                                 + s[uintp(o5 + q)])


@nb.njit(inline="always")
def _a_row(i, s, o0, o1, o2, o3, d, dst, L):
    """d[dst + q] = (A v)_i for q < L: four values -> point i of six (dy's transform)."""
    if i == 0:
        for q in range(L):
            d[uintp(dst + q)] = s[uintp(o0 + q)]
    elif i == 1:
        for q in range(L):
            d[uintp(dst + q)] = s[uintp(o0 + q)] + s[uintp(o1 + q)] + s[uintp(o2 + q)] + s[uintp(o3 + q)]
    elif i == 2:
        for q in range(L):
            d[uintp(dst + q)] = s[uintp(o0 + q)] - s[uintp(o1 + q)] + s[uintp(o2 + q)] - s[uintp(o3 + q)]
    elif i == 3:
        for q in range(L):
            d[uintp(dst + q)] = (s[uintp(o0 + q)] + _4 * s[uintp(o2 + q)]) + (_2 * s[uintp(o1 + q)]
                                                                              + _8 * s[uintp(o3 + q)])
    elif i == 4:
        for q in range(L):
            d[uintp(dst + q)] = (s[uintp(o0 + q)] + _4 * s[uintp(o2 + q)]) - (_2 * s[uintp(o1 + q)]
                                                                              + _8 * s[uintp(o3 + q)])
    else:
        for q in range(L):
            d[uintp(dst + q)] = s[uintp(o3 + q)]


@nb.njit(inline="always")
def _tile_plane(h, jj, L, S, n, tw):
    """Where output (or dy) row h, columns jj, jj + 4, ... of sample n start in the
    16 planes of 4x4 tile positions (ii, jj) over the block's tiles (a, n, b)."""
    return (h % 4 * 4 + jj) * L + h // 4 * S + n * tw


@nb.njit(nogil=True, cache=True)
def _input_transform4(x, ph, pw, th, tw, V, step, cols):
    """V[(i*6 + j)*step + c*cols + (a*m + n)*tw + b] = (B^T d B)[i, j] for the 6x6
    patch d of the padded x[n, c] at rows 4a.., columns 4b.. (tile (a, b))."""
    m, C, H, W = x.shape
    S = m * tw
    L, R6 = th * S, (th + 1) * S
    # X[k4, p6, a', n, b] (flat, rows of R6): the padded input at row 4a' + k4, column
    # 4b + p6 (p6 < 6: a tile's six columns); padding and the tail stay 0
    X = np.zeros(24 * R6, x.dtype)
    T = np.empty(36 * L, x.dtype)
    xf = x.reshape(x.size)
    for c in range(C):
        if m >= _MANY_SAMPLES:
            _prefetch_points(V, step, c, C, cols, L)
        for n in range(m):
            _prefetch_next(xf, n, c, C, H * W)
            src = x[n, c]
            for h in range(H):
                R = ph + h
                base = R // 4 * S + n * tw
                row = src[h]
                for p6 in range(6):
                    lo = max(0, -((p6 - pw) // 4))   # the tiles whose column p6 lies in x
                    hi = min(tw - 1, (W - 1 + pw - p6) // 4)
                    off = (R % 4 * 6 + p6) * R6 + base
                    for b in range(lo, hi + 1):
                        X[uintp(off + b)] = row[uintp(4 * b + p6 - pw)]
        for p in range(6):   # B^T down each column p: tile row a's row k is X[k % 4, p] at (k // 4)*S + q
            for i in range(6):
                _bt_row(i, X, p * R6, (6 + p) * R6, (12 + p) * R6, (18 + p) * R6, p * R6 + S, (6 + p) * R6 + S,
                        T, (i * 6 + p) * L, L)
        for i in range(6):   # ... then B across each row i
            for j in range(6):
                _bt_row(j, T, i * 6 * L, (i * 6 + 1) * L, (i * 6 + 2) * L, (i * 6 + 3) * L, (i * 6 + 4) * L,
                        (i * 6 + 5) * L, V, (i * 6 + j) * step + c * cols, L)


@nb.njit(nogil=True, cache=True)
def _output_transform4(M, step, cols, th, tw, y):
    """y[n, k] tile (a, b) = A^T M A (6x6 -> 4x4), M[xi] at M[xi*step + k*cols + (a*m + n)*tw + b],
    cut to (Ho, Wo)."""
    m, K, Ho, Wo = y.shape
    S = m * tw
    L = th * S
    Rw = np.empty(24 * L, y.dtype)   # A^T across each row i: Rw[i, jj]
    Y = np.empty(16 * L, y.dtype)    # ... then down each column jj: Y[ii, jj]
    for k in range(K):
        for i in range(6):
            o = i * 6 * step + k * cols
            for jj in range(4):
                _at_row(jj, M, o, o + step, o + 2 * step, o + 3 * step, o + 4 * step, o + 5 * step,
                        Rw, (i * 4 + jj) * L, L)
        for jj in range(4):
            for ii in range(4):
                _at_row(ii, Rw, jj * L, (4 + jj) * L, (8 + jj) * L, (12 + jj) * L, (16 + jj) * L, (20 + jj) * L,
                        Y, (ii * 4 + jj) * L, L)
        for n in range(m):
            for h in range(Ho):
                out = y[n, k, h]
                for jj in range(min(4, Wo)):
                    src = _tile_plane(h, jj, L, S, n, tw)
                    for b in range((Wo - 1 - jj) // 4 + 1):
                        out[uintp(4 * b + jj)] = Y[uintp(src + b)]


@nb.njit(nogil=True, cache=True)
def _gradient_transform4(dy, th, tw, D, step, cols):
    """D[(i*6 + j)*step + k*cols + (a*m + n)*tw + b] = (A e A^T)[i, j] for the 4x4
    patch e of dy[n, k] at tile (a, b) (zeros beyond Ho, Wo)."""
    m, K, Ho, Wo = dy.shape
    S = m * tw
    L = th * S
    E = np.zeros(16 * L, dy.dtype)   # E[ii, jj, a, n, b] = dy[n, k, 4a + ii, 4b + jj]
    Cw = np.empty(24 * L, dy.dtype)  # A down each column jj: Cw[i, jj]
    dyf = dy.reshape(dy.size)
    for k in range(K):
        if m >= _MANY_SAMPLES:
            _prefetch_points(D, step, k, K, cols, L)
        for n in range(m):
            _prefetch_next(dyf, n, k, K, Ho * Wo)
            for h in range(Ho):
                row = dy[n, k, h]
                for jj in range(min(4, Wo)):
                    dst = _tile_plane(h, jj, L, S, n, tw)
                    for b in range((Wo - 1 - jj) // 4 + 1):
                        E[uintp(dst + b)] = row[uintp(4 * b + jj)]
        for jj in range(4):
            for i in range(6):
                _a_row(i, E, jj * L, (4 + jj) * L, (8 + jj) * L, (12 + jj) * L, Cw, (i * 4 + jj) * L, L)
        for i in range(6):   # ... then A^T across each row i
            for j in range(6):
                _a_row(j, Cw, i * 4 * L, (i * 4 + 1) * L, (i * 4 + 2) * L, (i * 4 + 3) * L,
                       D, (i * 6 + j) * step + k * cols, L)


# The filter-side transforms, U = G w G^T before the products and dw = G^T Q G
# after them, as kernels over a range of filters k (cpu_parallel.over_items):
# they read and write every point matrix (2.4 MB at 128 -> 128 channels), and
# as one serial BLAS call each they were 0.3-0.5 ms of a two-thread step's
# serial time per conv.

@nb.njit(nogil=True, cache=True)
def _filter_transform(w, GG, U, k0, k1):
    """U[xi, k, c] = sum over taps r of GG[xi, r] w[k, c, r] for k in [k0, k1):
    w (K, C, 9), GG (points, 9), U flat (points, K, C)."""
    K, C, _ = w.shape
    wt = np.empty((9, C), np.float32)   # filter k tap by tap: the c loops run contiguous
    for k in range(k0, k1):
        for c in range(C):
            for r in range(9):
                wt[r, c] = w[k, c, r]
        for xi in range(GG.shape[0]):
            o = (xi * K + k) * C
            for c in range(C):
                U[uintp(o + c)] = 0
            for r in range(9):
                g = GG[xi, r]
                for c in range(C):
                    U[uintp(o + c)] += g * wt[r, c]


@nb.njit(nogil=True, cache=True)
def _gradient_filter(Qs, GG, dw, k0, k1):
    """dw[k, c, r] = sum over points xi of GG[xi, r] Q[xi, k, c] for k in [k0, k1),
    Q the sum of the parts' Qs (each flat (points, K, C)) in part order; dw (K, C, 9)."""
    K, C, _ = dw.shape
    q = np.empty(C, np.float32)
    acc = np.empty((9, C), np.float32)
    for k in range(k0, k1):
        acc[:] = 0
        for xi in range(GG.shape[0]):
            o = (xi * K + k) * C
            first = Qs[0]
            for c in range(C):
                q[c] = first[uintp(o + c)]
            for i in range(1, len(Qs)):   # part order: deterministic
                part = Qs[i]
                for c in range(C):
                    q[c] += part[uintp(o + c)]
            for r in range(9):
                g = GG[xi, r]
                for c in range(C):
                    acc[r, c] += g * q[c]
        for c in range(C):
            for r in range(9):
                dw[k, c, r] = acc[r, c]


class _Points:
    """The point matrices of a part: an uninitialized (count, rows, cols)
    float32 array whose matrices start _STAGGER bytes past a multiple of 4 KiB
    apart (the transforms read or write all points of a tile at once, and
    streams a multiple of 4 KiB apart share one set of the L1 cache: measured
    3-7x slower transforms at such sizes). `view(used)` is the first `used`
    columns of each, a BLAS operand (rows of cols, stride cols); the F(4x4)
    kernels index the same memory flat: matrix xi, row r, column q at
    xi*step + r*cols + q."""

    def __init__(self, count, rows, cols):
        self.step = -(-rows * cols * 4 // 4096) * 1024 + _STAGGER // 4   # in elements
        self.cols = cols
        self.flat = np.empty((count - 1) * self.step + rows * cols, np.float32)
        self.full = np.lib.stride_tricks.as_strided(self.flat, (count, rows, cols), (self.step * 4, cols * 4, 4))

    def view(self, used):
        return self.full[:, :, :used]


class _Form2:
    """F(2x2, 3x3): 2x2 output tiles, 16 points, scalar per-tile kernels."""
    tile, points = 2, 16
    GG = np.kron(_G, _G).astype(np.float32)   # (16, 9): G w G^T of every (k, c), point i*4 + j, tap r*3 + s

    def tiling(self, N, C, K, H, W, padding):
        return _tiles(N, C, K, H, W, tuple(padding), self.tile, self.points)

    def input_transform(self, x, t, V, used):
        _input_transform(x, t.ph, t.pw, t.th, t.tw, V.view(used))

    def output_transform(self, M, used, t, y):
        _output_transform(M.view(used), t.th, t.tw, y)

    def gradient_transform(self, dy, t, D, used):
        _gradient_transform(dy, t.th, t.tw, D.view(used))


class _Form4(_Form2):
    """F(4x4, 3x3): 4x4 output tiles, 36 points, kernels vectorized over a block's tiles."""
    tile, points = 4, 36
    GG = np.kron(_G4, _G4).astype(np.float32)   # (36, 9), point i*6 + j

    def input_transform(self, x, t, V, used):
        _input_transform4(x, t.ph, t.pw, t.th, t.tw, V.flat, V.step, V.cols)

    def output_transform(self, M, used, t, y):
        _output_transform4(M.flat, M.step, M.cols, t.th, t.tw, y)

    def gradient_transform(self, dy, t, D, used):
        _gradient_transform4(dy, t.th, t.tw, D.flat, D.step, D.cols)


F2, F4 = _Form2(), _Form4()


def _form(x_shape, padding, direction):
    """The form a call runs: F(4x4, 3x3) from an output of 7 a side, else
    F(2x2, 3x3). Measured on one core (CPU time, ms, F(2x2) -> F(4x4), forward
    / backward-filter): batch 128, 32->32 at 28x28 23.2 -> 15.2 / 27.0 -> 16.5;
    32->64 at 14x14 9.9 -> 7.4 / 12.0 -> 9.6 (F(4x4) computes 16x16 there);
    128->128 at 7x7 17.5 -> 13.7 / 17.0 -> 15.7; 32->32 at 9x9 3.1 -> 2.6 /
    3.3 -> 3.4; batch 16, 256->256 at 6x6 6.8 -> 7.0 / 4.6 -> 9.9 and at 4x4
    2.9 -> 3.5 / 2.9 -> 6.6 (one or two tiles a plane: the (36, K, C) sums of
    backward-filter outweigh the products)."""
    return F4 if min(n + 2 * p - 2 for n, p in zip(x_shape[2:], padding)) >= _F4_MIN_OUTPUT else F2


def forward(x, w, padding, dilation=None, form=None):
    """conv2d(x, w, stride=1, padding, dilation) for the calls `applies` accepts."""
    dilation, inner = _undilated(dilation, padding)
    if dilation:
        return _merged(forward(_components(x, dilation), w, inner, form=form), x.shape[0], dilation)
    N, C, H, W = x.shape
    K = w.shape[0]
    f = form or _form(x.shape, padding, "forward")
    t = f.tiling(N, C, K, H, W, padding)
    # U = G w G^T per (k, c), as one matrix (K, C) per point
    U = np.empty((f.points, K, C), np.float32)
    over_items(_filter_transform, K, U.size, np.ascontiguousarray(w).reshape(K, C, 9), f.GG, U.reshape(-1))
    x = np.ascontiguousarray(x)
    y = np.empty((N, K, t.Ho, t.Wo), np.float32)

    def part(n0, n1):
        full = min(t.m, n1 - n0) * t.tiles
        V, M = _Points(f.points, C, full), _Points(f.points, K, full)   # once per part: fresh pages fault
        for a, b in t.blocks(n0, n1):
            used = (b - a) * t.tiles
            f.input_transform(x[a:b], t, V, used)
            np.matmul(U, V.view(used), out=M.view(used))
            f.output_transform(M, used, t, y[a:b])
    over_samples(part, N, 2 * N * K * C * t.tiles * f.points)
    return y


def backward_filter(dy, x, w_shape, padding, dilation=None, form=None):
    """conv2d_backward_filter(dy, x, w_shape = (K, C, 3, 3), stride=1, padding,
    dilation) for the calls `applies` accepts."""
    dilation, inner = _undilated(dilation, padding)
    if dilation:
        return backward_filter(_components(dy, dilation), _components(x, dilation), w_shape, inner, form=form)
    N, C, H, W = x.shape
    K = dy.shape[1]
    f = form or _form(x.shape, padding, "backward_filter")
    t = f.tiling(N, C, K, H, W, padding)
    x, dy = np.ascontiguousarray(x), np.ascontiguousarray(dy)

    def part(n0, n1):
        Q = np.zeros((f.points, K, C), np.float32)
        product = np.empty_like(Q)
        full = min(t.m_filter, n1 - n0) * t.tiles
        V, D = _Points(f.points, C, full), _Points(f.points, K, full)
        for a, b in t.blocks(n0, n1, t.m_filter):            # block order: deterministic
            used = (b - a) * t.tiles
            f.input_transform(x[a:b], t, V, used)
            f.gradient_transform(dy[a:b], t, D, used)
            Q += np.matmul(D.view(used), V.view(used).transpose(0, 2, 1), out=product)
        return Q
    parts = over_samples(part, N, 2 * N * K * C * t.tiles * f.points)
    dw = np.empty((K, C, 3, 3), np.float32)
    over_items(_gradient_filter, K, parts[0].size, tuple(q.reshape(-1) for q in parts), f.GG, dw.reshape(K, C, 9))
    return dw
