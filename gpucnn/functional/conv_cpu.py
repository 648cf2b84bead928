"""CPU convolution (the fallback path): Numba im2col/col2im + BLAS matmuls.

Notation: x (N, C, D, H, W), w (K, C/G, T, R, S), stride (sd, sh, sw), padding
(pd, ph, pw), dilation (dd, dh, dw), G groups, padded input (Dp, Hp, Wp),
y (N, K, Do, Ho, Wo), P = Do*Ho*Wo output positions, CTRS = C*T*R*S. 1-D and 2-D inputs run as 3-D
with unit leading spatial dimensions (kernel 1, stride 1, padding 0 there), so
one set of kernels serves every nd and the argument arrays are only reshaped,
never copied (unless they are non-contiguous views).

col is laid out per sample, (N, CTRS, P): col[n, (c,t,r,s), (od,oh,ow)] =
x_pad[n, c, od*sd + t*dd, oh*sh + r*dh, ow*sw + s*dw], so that each direction
is one matmul per sample that reads and writes the NCDHW arrays in place (no
transposes):

    forward          y[n] (K, P)        = W (K, CTRS) @ col[n]
    backward-filter  dW (K, CTRS)       = sum over n of dy[n] (K, P) @ col[n]^T
    backward-data    dcol[n] (CTRS, P)  = W^T @ dy[n]        then col2im adds dcol into dx

With groups the channel axes split into G consecutive blocks and each matmul
becomes a batch of G: W (G, K/G, CTRS/G) against col[n] viewed as
(G, CTRS/G, P), y[n] as (G, K/G, P); still no copies (G = 1 is the plain
product). Depthwise (G = C) is G products of one filter row each.

Threads: the batch is split into numba.get_num_threads() contiguous parts,
one per thread (the calling thread and a small pool of Python threads); each
thread runs the Numba kernels (compiled nogil, serial) and single-threaded
BLAS matmuls on its own samples, so an op has exactly one fork and one join
and no thread pool ever waits on another. Measured on a loaded 2-core
machine, interleaving Numba's parallel regions with multi-threaded BLAS calls
was 10-100x slower (each pool's idle threads spin while the other works).
The BLAS is pinned to one thread (through threadpoolctl's library
controllers; process-wide while an op runs), also when an op runs in the
calling thread alone. pool_cpu splits its planes with the same over_parts.

Each thread cuts its samples into blocks whose col fits in _COL_BYTES (about
half an L2 cache): im2col writes a block that the matmuls then read from
cache, measured 1.5-2x faster than one batch-sized col streamed through
memory. backward-filter sums dW per thread in sample order, then the
threads' sums in thread order.

im2col and col2im copy each (n, c) plane into (or sum it in) a zero-padded
plane buffer that stays in L1, so the inner loops are branch-free copies of
output rows. Everything runs in a fixed order for a fixed thread count, so
results are deterministic (as is the BLAS for a fixed thread count).
"""
import numba as nb
import numpy as np

from ..cpu_parallel import over_samples
from ._args import output_shape

_COL_BYTES = 512 << 10   # col buffer per block of samples


# Inner loops copy between 1-D views indexed from 0 by a range: Numba then
# drops its negative-index handling and LLVM vectorizes them (measured several
# times faster than indexing a whole flat array at an offset). Contiguous views
# (stride 1) vectorize; strided ones do not, hence the sw == 1 branches.

@nb.njit(inline="always")
def _copy(dst, src):
    for i in range(dst.size):
        dst[i] = src[i]


@nb.njit(inline="always")
def _add(dst, src):
    for i in range(dst.size):
        dst[i] += src[i]


@nb.njit(nogil=True, cache=True)
def _im2col(x, kernel, stride, padding, dilation, col):
    """col (N, CTRS, Do, Ho, Wo) from x (N, C, D, H, W)."""
    N, C, D, H, W = x.shape
    T, R, S = kernel
    sd, sh, sw = stride
    pd, ph, pw = padding
    dd, dh, dw = dilation
    _, _, Do, Ho, Wo = col.shape
    buf = np.zeros((D + 2 * pd, H + 2 * ph, W + 2 * pw), x.dtype)   # the border stays 0
    for n in range(N):
        for c in range(C):
            for d in range(D):
                for h in range(H):
                    _copy(buf[pd + d, ph + h, pw:pw + W], x[n, c, d, h])
            for t in range(T):
                for r in range(R):
                    for s in range(S):
                        rows = col[n, ((c * T + t) * R + r) * S + s]
                        for od in range(Do):
                            for oh in range(Ho):
                                src = buf[od * sd + t * dd, oh * sh + r * dh]
                                w0 = s * dw
                                if sw == 1:
                                    _copy(rows[od, oh], src[w0:w0 + Wo])
                                else:
                                    _copy(rows[od, oh], src[w0:w0 + (Wo - 1) * sw + 1:sw])


@nb.njit(nogil=True, cache=True)
def _col2im(dcol, kernel, stride, padding, dilation, dx):
    """dx[n, c] = the sum over (t,r,s) of dcol[n, (c,t,r,s)] added at the input
    positions im2col reads them from (padding dropped); the (t,r,s) order is fixed."""
    N, C, D, H, W = dx.shape
    T, R, S = kernel
    sd, sh, sw = stride
    pd, ph, pw = padding
    dd, dh, dw = dilation
    _, _, Do, Ho, Wo = dcol.shape
    buf = np.empty((D + 2 * pd, H + 2 * ph, W + 2 * pw), dx.dtype)
    flat = buf.ravel()
    for n in range(N):
        for c in range(C):
            for i in range(flat.size):
                flat[i] = 0
            for t in range(T):
                for r in range(R):
                    for s in range(S):
                        rows = dcol[n, ((c * T + t) * R + r) * S + s]
                        for od in range(Do):
                            for oh in range(Ho):
                                dst = buf[od * sd + t * dd, oh * sh + r * dh]
                                w0 = s * dw
                                if sw == 1:
                                    _add(dst[w0:w0 + Wo], rows[od, oh])
                                else:
                                    _add(dst[w0:w0 + (Wo - 1) * sw + 1:sw], rows[od, oh])
            for d in range(D):
                for h in range(H):
                    _copy(dx[n, c, d, h], buf[pd + d, ph + h, pw:pw + W])


def lift3(values, fill):
    """A length-nd geometry tuple -> length 3, unit dimensions in front
    (shared with pool_cpu: one kernel set serves 1-D, 2-D and 3-D)."""
    return (fill,) * (3 - len(values)) + tuple(values)


class _Plan:
    """One call's geometry as 3-tuples and the block size m (samples per col).
    rows = CTRS (col's rows), G groups of rows_g = CTRS/G."""

    def __init__(self, x_shape, w_shape, stride, padding, dtype, dilation=None, groups=1):
        dilation = dilation or (1,) * len(stride)
        self.out = output_shape(x_shape[2:], w_shape[2:], stride, padding, dilation)
        self.kernel, self.stride = lift3(w_shape[2:], 1), lift3(stride, 1)
        self.padding, self.out3 = lift3(padding, 0), lift3(self.out, 1)
        self.dilation = lift3(dilation, 1)
        self.G, self.Kg = groups, w_shape[0] // groups
        self.rows_g, self.P = int(np.prod(w_shape[1:])), int(np.prod(self.out))
        self.rows = self.rows_g * groups
        self.dtype = np.dtype(dtype)
        self.m = max(1, min(x_shape[0], _COL_BYTES // (self.rows * self.P * self.dtype.itemsize)))
        self.flops = 2 * x_shape[0] * w_shape[0] * self.rows_g * self.P

    def weight(self, w):
        """w (K, C/G, ...) as the matmul operand (G, K/G, CTRS/G) (a view if contiguous)."""
        return np.ascontiguousarray(w).reshape(self.G, self.Kg, self.rows_g)

    def grouped(self, a, rows):
        """(m, G*rows, P) -> (m, G, rows, P), a view."""
        return a.reshape(a.shape[0], self.G, rows, self.P)

    def blocks(self, n0, n1):
        """Blocks [a, b) of the samples [n0, n1) and a col buffer for the largest."""
        col = np.empty((min(self.m, n1 - n0), self.rows) + self.out3, self.dtype)
        return [(a, min(n1, a + self.m)) for a in range(n0, n1, self.m)], col

    def im2col(self, x5, col):
        """col[:m] (m, CTRS, P) of a block x5 (m, C, D, H, W)."""
        col = col[:x5.shape[0]]
        _im2col(x5, self.kernel, self.stride, self.padding, self.dilation, col)
        return col.reshape(x5.shape[0], self.rows, self.P)

    def col2im(self, dcol, dx5):
        _col2im(dcol.reshape((dcol.shape[0], self.rows) + self.out3), self.kernel, self.stride,
                self.padding, self.dilation, dx5)


def as5d(a):
    """(N, C, *spatial) -> a C-contiguous (N, C, D, H, W) view (a copy if needed)."""
    return np.ascontiguousarray(a).reshape(a.shape[:2] + (1,) * (5 - a.ndim) + a.shape[2:])


def forward(x, w, stride, padding, dilation=None, groups=1):
    plan = _Plan(x.shape, w.shape, stride, padding, x.dtype, dilation, groups)
    N, K = x.shape[0], w.shape[0]
    x5, w3 = as5d(x), plan.weight(w)
    y = np.empty((N, K) + plan.out, x.dtype)
    y4 = plan.grouped(y.reshape(N, K, plan.P), plan.Kg)

    def part(n0, n1):
        blocks, col = plan.blocks(n0, n1)
        for a, b in blocks:
            np.matmul(w3, plan.grouped(plan.im2col(x5[a:b], col), plan.rows_g), out=y4[a:b])
    over_samples(part, N, plan.flops)
    return y


def backward_data(dy, w, x_shape, stride, padding, dilation=None, groups=1):
    plan = _Plan(x_shape, w.shape, stride, padding, dy.dtype, dilation, groups)
    N, K = x_shape[0], w.shape[0]
    dy4 = plan.grouped(np.ascontiguousarray(dy).reshape(N, K, plan.P), plan.Kg)
    w3t = plan.weight(w).transpose(0, 2, 1)
    dx = np.empty(x_shape, dy.dtype)
    dx5 = as5d(dx)

    def part(n0, n1):
        blocks, dcol = plan.blocks(n0, n1)
        dcol = plan.grouped(dcol.reshape(dcol.shape[0], plan.rows, plan.P), plan.rows_g)
        for a, b in blocks:
            plan.col2im(np.matmul(w3t, dy4[a:b], out=dcol[:b - a]), dx5[a:b])
    over_samples(part, N, plan.flops)
    return dx


def backward_filter(dy, x, w_shape, stride, padding, dilation=None, groups=1):
    plan = _Plan(x.shape, w_shape, stride, padding, x.dtype, dilation, groups)
    N, K = x.shape[0], w_shape[0]
    dy4 = plan.grouped(np.ascontiguousarray(dy).reshape(N, K, plan.P), plan.Kg)
    x5 = as5d(x)

    def part(n0, n1):
        dw = np.zeros((plan.G, plan.Kg, plan.rows_g), x.dtype)
        blocks, col = plan.blocks(n0, n1)
        per_sample = np.empty((col.shape[0], plan.G, plan.Kg, plan.rows_g), x.dtype)
        for a, b in blocks:                                  # sample order: deterministic
            cols = plan.grouped(plan.im2col(x5[a:b], col), plan.rows_g)
            dw += np.matmul(dy4[a:b], cols.transpose(0, 1, 3, 2), out=per_sample[:b - a]).sum(0)
        return dw
    parts = over_samples(part, N, plan.flops)
    dw = parts[0]
    for p in parts[1:]:                                      # thread order: deterministic
        dw += p
    return dw.reshape(w_shape)
