"""CPU convolution (the fallback path): Numba im2col/col2im + BLAS matmuls,
and the router to the faster special routes: depthwise convs to
depthwise_cpu, float32 stride-1 convs to winograd_cpu (3x3, many channels)
or direct_cpu (register-tiled micro-kernels, no im2col), see _fast_route.
The flat-array helpers the kernels share are in flat_cpu.

Notation: x (N, C, D, H, W), w (K, C/G, T, R, S), stride (sd, sh, sw), padding
(pd, ph, pw), dilation (dd, dh, dw), G groups, padded input (Dp, Hp, Wp),
y (N, K, Do, Ho, Wo), P = Do*Ho*Wo output positions, CTRS = C*T*R*S. 1-D and 2-D inputs run as 3-D
with unit leading spatial dimensions (kernel 1, stride 1, padding 0 there), so
one set of kernels serves every nd and the argument arrays are only reshaped,
never copied (unless they are non-contiguous views).

col is laid out per block of m samples, (CTRS, m, P): col[(c,t,r,s), n,
(od,oh,ow)] = x_pad[n, c, od*sd + t*dd, oh*sh + r*dh, ow*sw + s*dw], so that
each direction is one matmul per block, with m*P columns:

    forward          Y (K, m*P)         = W (K, CTRS) @ col         then y[n] = Y[:, n]
    backward-filter  dW (K, CTRS)       = sum over blocks of dY (K, m*P) @ col^T
    backward-data    dcol (CTRS, m*P)   = W^T @ dY                  then col2im adds dcol into dx

where Y, dY are y, dy with the sample and channel axes swapped (one copy of
a block: cheap next to the matmul, which does CTRS multiply-adds per element
of Y). For one sample (m = 1) Y is y[n] itself and nothing is copied.
One matmul over the block instead of one per sample: small images with
many channels (4x4 with 256 channels, P = 16) give the BLAS m*P columns
instead of P (per-sample products of 16 columns ran at about 2/3 of its
speed), and backward-filter sums over samples inside the product (no
per-sample dW to add up).

With groups the channel axes split into G consecutive blocks and each matmul
becomes a batch of G: W (G, K/G, CTRS/G) against col viewed as
(G, CTRS/G, m*P), Y as (G, K/G, m*P) (G = 1 is the plain product).
A depthwise forward and backward-data (one input channel per filter) run
depthwise_cpu's direct loops instead, measured faster than G products of
one filter row each.

Threads (gpucnn.cpu_parallel, the one thread policy of the CPU path): the
batch is split into numba.get_num_threads() contiguous parts, one per thread
(the calling thread and a small pool of Python threads); each thread runs
the Numba kernels (compiled nogil, serial) and single-threaded BLAS matmuls
on its own samples, so an op has exactly one fork and one join and no
thread pool ever waits on another. A multi-threaded BLAS over the whole
batch would leave im2col/col2im serial (or need a second pool); with each
thread's part being a few large GEMMs the BLAS runs near its single-thread
speed in every thread (measurements in docs/cpu-performance.md). Only an op
whose work fits one sample but several threads lets the BLAS use its own
threads.

Wide rows: with stride 1, im2col writes the output rows at the padded width
Wp instead of Wo (Wp - Wo garbage columns per row, which the matmul computes
and the copy into y drops; dY gets zeros there), and in 3-D each depth slice
at Hp rows instead of Ho. Each (c, t, r, s) row of col is then one contiguous
copy of the flat padded volume, instead of Do*Ho copies of Wo: im2col
measured 2.2x faster for 14x14 images (one core), for Do*Hr*Wp / P more
matmul work, so it is used while that ratio is at most _WIDE_LIMIT (LeNet's
6->16 5x5 layer on 14x14 images, 1.4: forward 0.49 -> 0.36 ms for 32
samples, one core; the quick suite's 3-D conv, 1.36: backward-data 0.79 ->
0.38 ms, forward unchanged).

col2im runs at wide rows too (the same runs, added instead of copied; dY's
garbage columns are zeros, so they add nothing): LeNet's 6->16 5x5
backward-data, 32 samples of 14x14, one core, 0.98 -> 0.43 ms.

Pointwise (1x1, stride 1, no padding) convs skip im2col: col of a sample is
x[n] viewed as (C, P), so with one sample a block (P >= 64) every product
reads x and writes y in place, a plain GEMM per sample.

Each thread cuts its samples into blocks whose col fits in _COL_BYTES (about
half an L2 cache; at least _MIN_COLUMNS columns): im2col writes a block that
the matmuls then read from cache, measured 1.5-2x faster than one
batch-sized col streamed through memory. backward-filter sums dW per thread
in block order, then the threads' sums in thread order.

im2col and col2im copy each (n, c) plane into (or sum it in) a zero-padded
plane buffer that stays in L1, so the inner loops are branch-free copies of
output rows. Everything runs in a fixed order for a fixed thread count, so
results are deterministic (as is the BLAS for a fixed thread count).
"""
import functools

import numba as nb
import numpy as np
from numba import uintp

from ..cpu_parallel import over_samples
from . import direct_cpu, winograd_cpu
from ._args import output_shape
from .flat_cpu import add_run, as5d, copy_run, crop_flat, fill_flat, flat_buffer, lift3

_COL_BYTES = 512 << 10   # col buffer per block of samples ...
_MIN_COLUMNS = 256       # ... but at least this many matmul columns (m*P)
_WIDE_LIMIT = 1.5         # wide rows while (columns computed) / (outputs) is at most this
_THIN_ROWS = 64           # fewer col rows per group: one sample a block on large images
_MIN_FORWARD_CHANNELS = 16   # backward-data as a forward conv from this many input channels per group


@nb.njit(nogil=True, cache=True)
def _im2col(x, kernel, stride, padding, dilation, col):
    """col (CTRS, N, Do, Ho, Wo) from x (N, C, D, H, W)."""
    N, C, D, H, W = x.shape
    T, R, S = kernel
    sd, sh, sw = stride
    pd, ph, pw = padding
    dd, dh, dw = dilation
    _, _, Do, Ho, Wo = col.shape
    Hp, Wp = H + 2 * ph, W + 2 * pw
    P = Do * Ho * Wo
    buf = np.zeros((D + 2 * pd) * Hp * Wp, x.dtype)   # one padded plane; the border stays 0
    cf = col.reshape(col.size)
    for n in range(N):
        for c in range(C):
            fill_flat(buf, x[n, c], padding, Hp, Wp)
            for t in range(T):
                for r in range(R):
                    for s in range(S):
                        q = ((((c * T + t) * R + r) * S + s) * N + n) * P
                        for od in range(Do):
                            for oh in range(Ho):
                                o = ((od * sd + t * dd) * Hp + oh * sh + r * dh) * Wp + s * dw
                                if sw == 1:
                                    copy_run(cf, q, buf, o, Wo)
                                else:
                                    for i in range(Wo):
                                        cf[uintp(q + i)] = buf[uintp(o + i * sw)]
                                q += Wo


@nb.njit(nogil=True, cache=True)
def _im2col_wide(x, kernel, padding, dilation, Hr, col):
    """col (CTRS, N, Do*Hr*Wp) from x (N, C, D, H, W), stride 1: the outputs
    laid out at the padded row width Wp (and, in 3-D, Hr = Hp rows a depth
    slice; Hr = Ho in 2-D and 1-D), so that each (c, t, r, s) row of col is one
    contiguous run of the flat padded volume (see "Wide rows" above)."""
    N, C, D, H, W = x.shape
    T, R, S = kernel
    pd, ph, pw = padding
    dd, dh, dw = dilation
    Hp, Wp = H + 2 * ph, W + 2 * pw
    run = col.shape[2]
    flat = flat_buffer((D, H, W), kernel, padding, dilation, x)   # border and slack stay 0
    cf = col.reshape(col.size)
    for n in range(N):
        for c in range(C):
            fill_flat(flat, x[n, c], padding, Hp, Wp)
            for t in range(T):
                for r in range(R):
                    for s in range(S):
                        copy_run(cf, ((((c * T + t) * R + r) * S + s) * N + n) * run,
                                  flat, (t * dd * Hp + r * dh) * Wp + s * dw, run)


@nb.njit(nogil=True, cache=True)
def _col2im(dcol, kernel, stride, padding, dilation, dx):
    """dx[n, c] = the sum over (t,r,s) of dcol[(c,t,r,s), n] added at the input
    positions im2col reads them from (padding dropped); the (t,r,s) order is fixed."""
    N, C, D, H, W = dx.shape
    T, R, S = kernel
    sd, sh, sw = stride
    pd, ph, pw = padding
    dd, dh, dw = dilation
    _, _, Do, Ho, Wo = dcol.shape
    Hp, Wp = H + 2 * ph, W + 2 * pw
    P = Do * Ho * Wo
    flat = np.empty((D + 2 * pd) * Hp * Wp, dx.dtype)
    df = dcol.reshape(dcol.size)
    for n in range(N):
        for c in range(C):
            for i in range(flat.size):
                flat[i] = 0
            for t in range(T):
                for r in range(R):
                    for s in range(S):
                        q = ((((c * T + t) * R + r) * S + s) * N + n) * P
                        for od in range(Do):
                            for oh in range(Ho):
                                o = ((od * sd + t * dd) * Hp + oh * sh + r * dh) * Wp + s * dw
                                if sw == 1:
                                    add_run(flat, o, df, q, Wo)
                                else:
                                    for i in range(Wo):
                                        flat[uintp(o + i * sw)] += df[uintp(q + i)]
                                q += Wo
            crop_flat(flat, dx[n, c], padding, Hp, Wp)


@nb.njit(nogil=True, cache=True)
def _col2im_wide(dcol, kernel, padding, dilation, dx):
    """_col2im for dcol (CTRS, N, Do*Hr*Wp) at wide rows (stride 1): each
    (c, t, r, s) row is one contiguous add into the flat padded volume (its
    garbage columns are zero: dY has zeros there)."""
    N, C, D, H, W = dx.shape
    T, R, S = kernel
    pd, ph, pw = padding
    dd, dh, dw = dilation
    Hp, Wp = H + 2 * ph, W + 2 * pw
    run = dcol.shape[2]
    flat = flat_buffer((D, H, W), kernel, padding, dilation, dx)
    df = dcol.reshape(dcol.size)
    for n in range(N):
        for c in range(C):
            for i in range(flat.size):
                flat[i] = 0
            for t in range(T):
                for r in range(R):
                    for s in range(S):
                        add_run(flat, (t * dd * Hp + r * dh) * Wp + s * dw,
                                 df, ((((c * T + t) * R + r) * S + s) * N + n) * run, run)
            crop_flat(flat, dx[n, c], padding, Hp, Wp)


class _Plan:
    """One call's geometry as 3-tuples and the block size m (samples per col).
    rows = CTRS (col's rows), G groups of rows_g = CTRS/G."""

    def __init__(self, x_shape, w_shape, stride, padding, dtype, dilation=None, groups=1, wide=True):
        dilation = dilation or (1,) * len(stride)
        self.out = output_shape(x_shape[2:], w_shape[2:], stride, padding, dilation)
        self.kernel, self.stride = lift3(w_shape[2:], 1), lift3(stride, 1)
        self.padding, self.out3 = lift3(padding, 0), lift3(self.out, 1)
        self.dilation = lift3(dilation, 1)
        self.K, self.G, self.Kg = w_shape[0], groups, w_shape[0] // groups
        self.rows_g, self.P = int(np.prod(w_shape[1:])), int(np.prod(self.out))
        self.rows = self.rows_g * groups
        self.dtype = np.dtype(dtype)
        Do, Ho, Wo = self.out3
        Hp, Wp = (n + 2 * p for n, p in zip(lift3(x_shape[2:], 1)[1:], self.padding[1:]))
        # 1x1, stride 1, no padding: col of one sample is x[n] itself (no im2col)
        self.pointwise = self.kernel == (1, 1, 1) and self.stride == (1, 1, 1) and self.padding == (0, 0, 0)
        # Thin products (few rows of col, e.g. one input channel) on large images:
        # one sample a block, the products reading col and writing y in place
        # (the copy out of a block's Y cost more than its wider product saved).
        self.thin = self.rows_g < _THIN_ROWS and self.P >= _MIN_COLUMNS
        # wide rows: outputs at (Do, Hr, Wp), Hr = Ho in 2-D and 1-D (Do = 1), Hp in 3-D
        Hr = Ho if Do == 1 else Hp
        self.wide = wide and not (self.pointwise or self.thin) and self.stride == (1, 1, 1) \
            and Do * Hr * Wp <= _WIDE_LIMIT * self.P
        self.Hr, self.Wp = (Hr, Wp) if self.wide else (Ho, Wo)
        self.Pc = Do * self.Hr * self.Wp   # col columns per sample
        fits = _COL_BYTES // (self.rows * self.Pc * self.dtype.itemsize)
        self.m = max(1, min(x_shape[0], max(fits, -(-_MIN_COLUMNS // self.Pc))))
        if (self.pointwise and self.P >= _MIN_COLUMNS // 4) or self.thin:
            self.m = 1   # per-sample products straight from x (or col) into y: no copies
        # Thin with one group: a block of samples is still written in place, by one
        # stacked product W @ col[n] for each n of the block (NumPy loops over the
        # samples in C): one Python iteration per block, not per sample. Per sample,
        # Python's share held the GIL long enough that 2 threads ran slower than 1
        # (lenet_bn's first conv, 1 -> 32 channels at 28x28: forward 1.5 -> 2.2 ms).
        self.stacked = self.thin and groups == 1
        if self.stacked:
            self.m = max(1, min(x_shape[0], _COL_BYTES // (self.rows * self.P * self.dtype.itemsize)))
        self.flops = 2 * x_shape[0] * w_shape[0] * self.rows_g * self.P

    def weight(self, w):
        """w (K, C/G, ...) as the matmul operand (G, K/G, CTRS/G) (a view if contiguous)."""
        return np.ascontiguousarray(w).reshape(self.G, self.Kg, self.rows_g)

    def blocks(self, n0, n1):
        """Blocks [a, b) of the samples [n0, n1), and two flat buffers for the
        largest block: its col and its Y (or dY)."""
        m = min(self.m, n1 - n0)
        return ([(a, min(n1, a + self.m)) for a in range(n0, n1, self.m)],
                np.empty(self.rows * m * self.Pc, self.dtype), np.empty(self.K * m * self.Pc, self.dtype))

    def im2col(self, x5, buf):
        """col (G, CTRS/G, m*Pc) of a block x5 (m, C, D, H, W), written into buf."""
        m = x5.shape[0]
        if self.pointwise and m == 1:
            return x5.reshape(self.G, self.rows_g, self.P)
        if self.wide:
            col = buf[:self.rows * m * self.Pc].reshape(self.rows, m, self.Pc)
            _im2col_wide(x5, self.kernel, self.padding, self.dilation, self.Hr, col)
        else:
            col = buf[:self.rows * m * self.P].reshape((self.rows, m) + self.out3)
            _im2col(x5, self.kernel, self.stride, self.padding, self.dilation, col)
        return col.reshape(self.G, self.rows_g, m * self.Pc)

    def dcol(self, buf, m):
        """An uninitialized dcol (G, CTRS/G, m*Pc) in buf."""
        return buf[:self.rows * m * self.Pc].reshape(self.G, self.rows_g, m * self.Pc)

    def col2im(self, dcol, dx5):
        if self.wide:
            _col2im_wide(dcol.reshape(self.rows, dx5.shape[0], self.Pc), self.kernel, self.padding,
                         self.dilation, dx5)
        else:
            _col2im(dcol.reshape((self.rows, dx5.shape[0]) + self.out3), self.kernel, self.stride,
                    self.padding, self.dilation, dx5)

    def direct(self, m):
        """Whether a block of m samples reads and writes y/dy in place."""
        return m == 1 and not self.wide

    def per_sample(self, cols, m):
        """col (1, rows, m*P) of a stacked block as m matrices (m, rows, P) (a view)."""
        return cols.reshape(self.rows, m, self.P).transpose(1, 0, 2)

    def to_blocked(self, a3, buf):
        """A block a3 (m, K, P) of dy as (G, K/G, m*Pc): a view for one
        sample, else copied into buf with the axes swapped (and zeros in
        the garbage columns of wide rows)."""
        m = a3.shape[0]
        if self.direct(m):
            return a3.reshape(self.G, self.Kg, self.P)
        t = buf[:self.K * m * self.Pc].reshape(self.K, m, self.Pc)
        if self.wide:
            Do, Ho, Wo = self.out3
            t5 = t.reshape(self.K, m, Do, self.Hr, self.Wp)
            t5[..., Ho:, :] = 0
            t5[..., Wo:] = 0
            np.copyto(t5[..., :Ho, :Wo], a3.reshape(m, self.K, Do, Ho, Wo).transpose(1, 0, 2, 3, 4))
        else:
            np.copyto(t, a3.transpose(1, 0, 2))
        return t.reshape(self.G, self.Kg, m * self.Pc)

    def from_blocked(self, Y, out3):
        """Y (G, K/G, m*Pc) into out3 (m, K, P) (a no-op when Y is out3's view)."""
        m = out3.shape[0]
        if self.direct(m):
            return
        Do, Ho, Wo = self.out3
        Y = Y.reshape(self.K, m, Do, self.Hr, self.Wp)[..., :Ho, :Wo]   # the whole unless wide
        np.copyto(out3.reshape(m, self.K, Do, Ho, Wo), Y.transpose(1, 0, 2, 3, 4))


def _plan(x_shape, w_shape, stride, padding, dtype, dilation=None, groups=1, wide=True):
    """_Plan, cached per geometry (a plan is read-only; building one took
    about 12 us of a 50 us call on small layers)."""
    return _cached_plan(tuple(x_shape), tuple(w_shape), tuple(stride), tuple(padding), np.dtype(dtype),
                        None if dilation is None else tuple(dilation), int(groups), wide)


_cached_plan = functools.lru_cache(maxsize=256)(_Plan)


def _depthwise(w_shape, groups):
    """The direct depthwise module when it applies (imported here: it imports this one)."""
    from . import depthwise_cpu
    return depthwise_cpu if depthwise_cpu.applies(w_shape, groups) else None


def _fast_route(x_shape, w_shape, stride, padding, dilation, groups, dtype, direction="forward"):
    """winograd_cpu or direct_cpu where one of them takes a (not depthwise)
    call, else None (im2col): Winograd where it applies unless direct_cpu
    is measured faster for the channel counts (direct_cpu.beats_winograd)."""
    direct = direct_cpu.applies(x_shape, w_shape, stride, padding, dilation, groups, dtype)
    if winograd_cpu.applies(x_shape, w_shape, stride, padding, dilation, groups, dtype, direction) \
            and not (direct and direct_cpu.beats_winograd(x_shape, w_shape, direction)):
        return winograd_cpu
    return direct_cpu if direct else None


def forward(x, w, stride, padding, dilation=None, groups=1):
    if groups > 1 and (dw := _depthwise(w.shape, groups)):
        return dw.forward(x, w, stride, padding, dilation)
    route = _fast_route(x.shape, w.shape, stride, padding, dilation, groups, x.dtype)
    if route is winograd_cpu:
        return winograd_cpu.forward(x, w, padding, dilation)
    if route is direct_cpu:
        return direct_cpu.forward(x, w, padding, dilation, stride)
    plan = _plan(x.shape, w.shape, stride, padding, x.dtype, dilation, groups)
    N, K = x.shape[0], w.shape[0]
    x5, w3 = as5d(x), plan.weight(w)
    y = np.empty((N, K) + plan.out, x.dtype)
    y3 = y.reshape(N, K, plan.P)

    def part(n0, n1):
        blocks, col, ybuf = plan.blocks(n0, n1)
        for a, b in blocks:
            cols = plan.im2col(x5[a:b], col)
            if plan.stacked:
                np.matmul(w3[0], plan.per_sample(cols, b - a), out=y3[a:b])
                continue
            out = y3[a].reshape(plan.G, plan.Kg, plan.P) if plan.direct(b - a) else \
                ybuf[:K * (b - a) * plan.Pc].reshape(plan.G, plan.Kg, (b - a) * plan.Pc)
            plan.from_blocked(np.matmul(w3, cols, out=out), y3[a:b])
    over_samples(part, N, plan.flops)
    return y


def _flipped_transposed(w, groups):
    """w (K, C/G, *kernel) -> (C, K/G, *kernel) rotated 180 degrees: the
    filter that runs backward-data as a forward conv (per group)."""
    K, Cg = w.shape[:2]
    wt = w.reshape((groups, K // groups, Cg) + w.shape[2:]).swapaxes(1, 2)
    wt = wt[(Ellipsis,) + (slice(None, None, -1),) * (w.ndim - 2)]
    return np.ascontiguousarray(wt).reshape((Cg * groups, K // groups) + w.shape[2:])


def backward_data(dy, w, x_shape, stride, padding, dilation=None, groups=1):
    if groups > 1 and (dw := _depthwise(w.shape, groups)):
        return dw.backward_data(dy, w, x_shape, stride, padding, dilation)
    nd = len(x_shape) - 2
    dilation = tuple(dilation or (1,) * nd)
    full = [d * (k - 1) - p for d, k, p in zip(dilation, w.shape[2:], padding)]
    thin = w.shape[1] < _MIN_FORWARD_CHANNELS and w.shape[0] > groups   # few channels, and K/G > 1
    if thin and all(s == 1 for s in stride) and min(full) >= 0:   # direct_cpu takes thin ones too
        flipped = (w.shape[1] * groups, w.shape[0] // groups) + w.shape[2:]
        thin = not direct_cpu.applies(dy.shape, flipped, stride, full, dilation, groups, dy.dtype)
    if all(s == 1 for s in stride) and min(full) >= 0 and not thin:
        # Stride 1: dx is the forward conv of dy padded by d(k-1) - p with the
        # flipped, transposed filter. im2col (a copy) replaces col2im (a
        # read-add-write), and the matmul's inner dimension is K*R*S instead
        # of K: measured 1.1-1.5x faster on one core with 32-256 channels
        # (C/G rows of output: with few, e.g. LeNet's 1 or 6, the matmul is
        # too thin and col2im wins), and whenever K/G = 1, where col2im's
        # products would have an inner dimension of 1 (4x faster for a
        # depthwise case before depthwise_cpu took those over).
        return forward(dy, _flipped_transposed(w, groups), stride, tuple(full), dilation, groups)
    plan = _plan(x_shape, w.shape, stride, padding, dy.dtype, dilation, groups)   # col2im
    N, K = x_shape[0], w.shape[0]
    dy3 = np.ascontiguousarray(dy).reshape(N, K, plan.P)
    w3t = plan.weight(w).transpose(0, 2, 1)
    dx = np.empty(x_shape, dy.dtype)
    dx5 = as5d(dx)

    def part(n0, n1):
        blocks, dcol, dybuf = plan.blocks(n0, n1)
        for a, b in blocks:
            dY = plan.to_blocked(dy3[a:b], dybuf)
            plan.col2im(np.matmul(w3t, dY, out=plan.dcol(dcol, b - a)), dx5[a:b])
    over_samples(part, N, plan.flops)
    return dx


def backward_filter(dy, x, w_shape, stride, padding, dilation=None, groups=1):
    if groups > 1 and (dw := _depthwise(w_shape, groups)) and dw.applies_backward_filter(x.shape, w_shape,
                                                                                      stride, groups):
        return dw.backward_filter(dy, x, w_shape, stride, padding, dilation)
    route = _fast_route(x.shape, w_shape, stride, padding, dilation, groups, x.dtype, "backward_filter")
    if route is winograd_cpu:
        return winograd_cpu.backward_filter(dy, x, w_shape, padding, dilation)
    if route is direct_cpu:
        return direct_cpu.backward_filter(dy, x, w_shape, padding, dilation, stride)
    plan = _plan(x.shape, w_shape, stride, padding, x.dtype, dilation, groups)
    N, K = x.shape[0], w_shape[0]
    dy3 = np.ascontiguousarray(dy).reshape(N, K, plan.P)
    x5 = as5d(x)

    def part(n0, n1):
        dw = np.zeros((plan.G, plan.Kg, plan.rows_g), x.dtype)
        product = np.empty_like(dw)
        blocks, col, dybuf = plan.blocks(n0, n1)
        for a, b in blocks:                                  # block order: deterministic
            cols = plan.im2col(x5[a:b], col)
            if plan.stacked:   # the block's per-sample products, then their sum in sample order
                dw[0] += np.matmul(dy3[a:b], plan.per_sample(cols, b - a).transpose(0, 2, 1)).sum(axis=0)
                continue
            dw += np.matmul(plan.to_blocked(dy3[a:b], dybuf), cols.transpose(0, 2, 1), out=product)
        return dw
    parts = over_samples(part, N, plan.flops)
    dw = parts[0]
    for p in parts[1:]:                                      # thread order: deterministic
        dw += p
    return dw.reshape(w_shape)
