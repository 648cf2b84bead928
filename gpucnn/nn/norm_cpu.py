"""CPU batch norm in training mode over an (N, C, L) view of the input.

Forward: two passes over x per channel for the statistics (the sum; the sum
of squared deviations from the mean, the two-pass form for accuracy), one
that writes y. Nothing else is written: the backward recomputes xhat (and,
with a fused ReLU, its mask) from x and the statistics, the same operations
in the same order, so the same bits as a stored xhat. The sums run in
float64; xhat = (x - mean) * inv_std and y in x's dtype, the statistics
rounded to it (float32 vectors: the recomputation costs half as much as in
float64). Backward:
two passes over dout and x (sum(dout) and sum(dout * xhat) together; dx).
A batch norm is memory-bound: writing xhat and reading it and y back cost
as much as the arithmetic, and two threads share the memory bandwidth
(measured on a 2-core VM, lenet_bn's 64-channel 14x14 batch norm: forward
1.71 ms on one thread, 1.63 on two, when it also wrote xhat).
Eval: one pass (eval_forward), the array code's arithmetic element by element.
relu (a ReLU fused by gpucnn.nn.fuse): the pass that writes y also applies
ReLU to y as stored (t if t > 0 else t * 0, nn.ReLU's value), and the
backward reads dout * [t > 0] (the same float as ReLU's backward gives) in
both passes: no pass of its own for the ReLU either way.
As NumPy array code the same math took about 7 and 5 passes with
temporaries (measured on a 2-core VM: a lenet_bn training step spent a quarter
of its time in batch norm). Each kernel is a serial Numba loop over a range of
channels; channels are split across threads (cpu_parallel.over_items). Sums
accumulate in float64 in a fixed order, so results do not depend on the
thread count.
"""
import numba as nb
import numpy as np
from numba import uintp

from ..cpu_parallel import over_items


# reassoc (only): LLVM may split each sum into SIMD lanes, still in one fixed
# order per build; NaN and inf keep their IEEE meaning. The element-wise
# xhat and y (forward and their recomputation in backward) are compiled
# without it, so that both sides round the same expression the same way
# (the flag is per instruction and survives inlining).
_FAST = {"reassoc"}


# The kernels index flat arrays with unsigned offsets and make no array view
# inside a loop (flat_cpu's lesson: a view costs two atomic reference-count
# updates). Each pass sweeps memory in order, sample by sample over the
# part's channels, with the per-channel sums in small arrays: channel by
# channel, a pass read N rows of L values far apart, which the hardware
# prefetcher followed poorly when they came from memory (in a training step,
# not from cache): a 64-channel 14x14 backward took 3.9 ms with cold caches
# against PyTorch's 2.5. Each channel's sums still run over n, then i, in
# the same order as before, so the results are the same bits.

@nb.njit(nogil=True, cache=True, fastmath=_FAST)
def _statistics(x, N, C, L, eps, mu, var, inv, c0, c1):
    """mu, var (biased) and inv = 1 / sqrt(var + eps) of the channels [c0, c1), float64."""
    m = N * L
    s = np.zeros(c1 - c0)
    for n in range(N):   # each pass sweeps the part's channels sample by sample (see above)
        for c in range(c0, c1):
            r, t = (n * C + c) * L, s[c - c0]
            for i in range(L):
                t += x[uintp(r + i)]
            s[c - c0] = t
    for c in range(c0, c1):
        mu[c] = s[c - c0] / m
    q = np.zeros(c1 - c0)
    for n in range(N):
        for c in range(c0, c1):
            r, t, u = (n * C + c) * L, q[c - c0], mu[c]
            for i in range(L):
                d = x[uintp(r + i)] - u
                t += d * d
            q[c - c0] = t
    for c in range(c0, c1):
        var[c] = q[c - c0] / m
        inv[c] = 1.0 / np.sqrt(var[c] + eps)


@nb.njit(inline="always")
def _affine(xh, w, b):
    """weight * xhat + bias, before any ReLU (x's dtype throughout)."""
    return xh * w + b


@nb.njit(nogil=True, cache=True)
def _normalize(x, N, C, L, mu, inv, weight, bias, relu, y, c0, c1):
    """y = weight * xhat + bias (ReLU'd when relu) for the channels [c0, c1),
    xhat = (x - mean) * inv_std with the statistics rounded to x's dtype."""
    zero = y.dtype.type(0)
    dtype = y.dtype.type
    for n in range(N):
        for c in range(c0, c1):
            r, u, k, w, b = (n * C + c) * L, dtype(mu[c]), dtype(inv[c]), weight[c], bias[c]
            for i in range(L):
                j = uintp(r + i)
                t = _affine((x[j] - u) * k, w, b)
                if relu:
                    t = t if t > zero else t * zero
                y[j] = t


@nb.njit(nogil=True, cache=True)
def _recompute_row(dout, x, r, L, u, k, w, b, relu, g, xh):
    """One row of the backward's inputs: xh (an L1-sized buffer) = xhat as the
    forward rounded it, g[r:r+L] = dout (times the ReLU's mask [t > 0] when
    relu, t the forward's value before the ReLU). Compiled without reassoc
    (see _FAST)."""
    zero = g.dtype.type(0)
    for i in range(L):
        j = uintp(r + i)
        v = (x[j] - u) * k
        xh[i] = v
        gi = dout[j]
        if relu:
            gi = gi if _affine(v, w, b) > zero else gi * zero
        g[j] = gi


@nb.njit(nogil=True, cache=True, fastmath=_FAST)
def _backward(dout, x, N, C, L, mean, inv_std, weight, bias, relu, dx, dweight, dbias, c0, c1):
    """The first pass leaves the (masked) dout in dx, the second overwrites it
    with the gradient, xhat recomputed there (no mask needed any more)."""
    m = N * L
    xh = np.empty(L, x.dtype)
    sd, sdx = np.zeros(c1 - c0), np.zeros(c1 - c0)
    for n in range(N):
        for c in range(c0, c1):
            r = (n * C + c) * L
            _recompute_row(dout, x, r, L, mean[c], inv_std[c], weight[c], bias[c], relu, dx, xh)
            a, b = sd[c - c0], sdx[c - c0]
            for i in range(L):
                gi = dx[uintp(r + i)]
                a += gi
                b += gi * xh[i]
            sd[c - c0], sdx[c - c0] = a, b
    for c in range(c0, c1):
        dweight[c], dbias[c] = sdx[c - c0], sd[c - c0]
    for n in range(N):
        for c in range(c0, c1):
            r = (n * C + c) * L
            u, s = mean[c], inv_std[c]
            a, b, k = sdx[c - c0] / m, sd[c - c0] / m, weight[c] * inv_std[c]
            for i in range(L):
                j = uintp(r + i)
                dx[j] = (dx[j] - b - (x[j] - u) * s * a) * k


@nb.njit(nogil=True, cache=True)
def _eval(x, N, C, L, running_mean, inv_std, weight, bias, relu, y, c0, c1):
    """y = (x - running_mean) * inv_std * weight + bias per channel, in the
    array code's order and dtype (bitwise its result), ReLU'd when relu."""
    zero = y.dtype.type(0)
    for c in range(c0, c1):
        mu, inv, w, b = running_mean[c], inv_std[c], weight[c], bias[c]
        for n in range(N):
            r = (n * C + c) * L
            for i in range(L):
                j = uintp(r + i)
                v = (x[j] - mu) * inv * w + b
                if relu:
                    v = v if v > zero else v * zero
                y[j] = v


def _ncl(a):
    """A C-contiguous flat view of (N, C, ...) (a copy if needed) and (N, C, L)."""
    a = np.ascontiguousarray(a)
    N, C = a.shape[:2]
    return a.reshape(-1), N, C, a.size // max(1, N * C)


class Saved:
    """What the backward needs of a training forward: x (flat, contiguous),
    mean and inv_std (x's dtype), and whether a ReLU was fused."""

    def __init__(self, x, mean, inv_std, relu):
        self.x, self.mean, self.inv_std, self.relu = x, mean, inv_std, relu

    def xhat_and_y(self, shape, weight, bias):
        """xhat and (when relu) the forward's y, as arrays of `shape` (the
        array code's backward, for a dout of another dtype)."""
        N, C = shape[:2]
        xhat = (self.x.reshape(N, C, -1) - self.mean[:, None]) * self.inv_std[:, None]
        y = None
        if self.relu:
            t = xhat * weight[:, None] + bias[:, None]
            y = t * (t > 0)
        return xhat.reshape(shape), None if y is None else y.reshape(shape)


def forward(x, eps, weight, bias, relu=False):
    """(y, saved, mean, biased var, inv_std): the per-channel vectors in x's
    dtype, y after ReLU when relu, `saved` (a Saved) for backward."""
    xf, N, C, L = _ncl(x)
    y = np.empty_like(xf)
    mu, var, inv = np.empty(C), np.empty(C), np.empty(C)

    def part(c0, c1):   # both kernels on a part's channels: one fork and join
        _statistics(xf, N, C, L, float(eps), mu, var, inv, c0, c1)
        _normalize(xf, N, C, L, mu, inv, weight, bias, bool(relu), y, c0, c1)
    over_items(part, C, xf.size)
    mean, inv_std = mu.astype(x.dtype), inv.astype(x.dtype)   # as _normalize rounds them
    return y.reshape(x.shape), Saved(xf, mean, inv_std, bool(relu)), mean, var.astype(x.dtype), inv_std


def backward(dout, saved, weight, bias):
    """(dx, dweight, dbias) of the training forward that returned `saved`;
    with a fused ReLU, from dout * [y > 0]."""
    df, N, C, L = _ncl(dout)
    dx = np.empty_like(df)
    dweight, dbias = np.empty(C, dout.dtype), np.empty(C, dout.dtype)
    over_items(_backward, C, df.size, df, saved.x, N, C, L, saved.mean, saved.inv_std, weight, bias, saved.relu,
               dx, dweight, dbias)
    return dx.reshape(dout.shape), dweight, dbias


def eval_forward(x, running_mean, inv_std, weight, bias, relu=False):
    """Eval-mode y (after ReLU when relu) in one pass; inv_std = 1 / sqrt(running_var + eps)
    computed by the caller as the array code does (x's dtype throughout)."""
    xf, N, C, L = _ncl(x)
    y = np.empty_like(xf)
    over_items(_eval, C, xf.size, xf, N, C, L, running_mean, inv_std, weight, bias, bool(relu), y)
    return y.reshape(x.shape)
