"""CPU batch norm in training mode over an (N, C, L) view of the input.

Forward: three passes over x per channel (the sum; the sum of squared
deviations from the mean, the two-pass form for accuracy; xhat and y written
together). Backward: two (sum(dout) and sum(dout * xhat) together; dx).
Eval: one pass (eval_forward), the array code's arithmetic element by element.
relu (a ReLU fused by gpucnn.nn.fuse): the third forward pass also applies
ReLU to y as stored (t if t > 0 else t * 0, nn.ReLU's value), and the
backward reads dout * [y > 0] (the same float as ReLU's backward gives) in
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
# order per build; NaN and inf keep their IEEE meaning.
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
def _forward(x, N, C, L, eps, weight, bias, relu, xhat, y, mean, var, inv_std, c0, c1):
    m = N * L
    zero = y.dtype.type(0)
    s = np.zeros(c1 - c0)
    for n in range(N):   # each pass sweeps the part's channels sample by sample (see above)
        for c in range(c0, c1):
            r, t = (n * C + c) * L, s[c - c0]
            for i in range(L):
                t += x[uintp(r + i)]
            s[c - c0] = t
    mu = s / m
    q = np.zeros(c1 - c0)
    for n in range(N):
        for c in range(c0, c1):
            r, t, u = (n * C + c) * L, q[c - c0], mu[c - c0]
            for i in range(L):
                d = x[uintp(r + i)] - u
                t += d * d
            q[c - c0] = t
    v = q / m
    inv = 1.0 / np.sqrt(v + eps)
    for n in range(N):
        for c in range(c0, c1):
            r, u, k, w, b = (n * C + c) * L, mu[c - c0], inv[c - c0], weight[c], bias[c]
            for i in range(L):
                j = uintp(r + i)
                xh = (x[j] - u) * k
                xhat[j] = xh
                t = y.dtype.type(xh * w + b)
                if relu:
                    t = t if t > zero else t * zero
                y[j] = t
    for c in range(c0, c1):
        mean[c], var[c], inv_std[c] = mu[c - c0], v[c - c0], inv[c - c0]


@nb.njit(nogil=True, cache=True, fastmath=_FAST)
def _backward(dout, N, C, L, xhat, weight, inv_std, y, relu, dx, dweight, dbias, c0, c1):
    m = N * L
    zero = dout.dtype.type(0)
    sd, sdx = np.zeros(c1 - c0), np.zeros(c1 - c0)
    for n in range(N):
        for c in range(c0, c1):
            r, a, b = (n * C + c) * L, sd[c - c0], sdx[c - c0]
            for i in range(L):
                j = uintp(r + i)
                g = dout[j]
                if relu:
                    g = g if y[j] > zero else g * zero
                a += g
                b += g * xhat[j]
            sd[c - c0], sdx[c - c0] = a, b
    for c in range(c0, c1):
        dweight[c], dbias[c] = sdx[c - c0], sd[c - c0]
    for n in range(N):
        for c in range(c0, c1):
            r = (n * C + c) * L
            a, b, k = sdx[c - c0] / m, sd[c - c0] / m, weight[c] * inv_std[c]
            for i in range(L):
                j = uintp(r + i)
                g = dout[j]
                if relu:
                    g = g if y[j] > zero else g * zero
                dx[j] = (g - b - xhat[j] * a) * k


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


def forward(x, eps, weight, bias, relu=False):
    """(y, xhat, mean, biased var, inv_std), the per-channel vectors in x's dtype;
    y after ReLU when relu."""
    xf, N, C, L = _ncl(x)
    xhat, y = np.empty_like(xf), np.empty_like(xf)
    mean, var, inv_std = (np.empty(C, x.dtype) for _ in range(3))
    over_items(_forward, C, xf.size, xf, N, C, L, float(eps), weight, bias, bool(relu), xhat, y, mean, var,
               inv_std)
    return y.reshape(x.shape), xhat.reshape(x.shape), mean, var, inv_std


def backward(dout, xhat, weight, inv_std, y=None):
    """(dx, dweight, dbias) of the training forward; with y (its output after a
    fused ReLU) from dout * [y > 0]."""
    (df, N, C, L), xf = _ncl(dout), _ncl(xhat)[0]
    yf = xf if y is None else _ncl(y)[0]
    dx = np.empty_like(df)
    dweight, dbias = np.empty(C, dout.dtype), np.empty(C, dout.dtype)
    over_items(_backward, C, df.size, df, N, C, L, xf, weight, inv_std, yf, y is not None, dx, dweight, dbias)
    return dx.reshape(dout.shape), dweight, dbias


def eval_forward(x, running_mean, inv_std, weight, bias, relu=False):
    """Eval-mode y (after ReLU when relu) in one pass; inv_std = 1 / sqrt(running_var + eps)
    computed by the caller as the array code does (x's dtype throughout)."""
    xf, N, C, L = _ncl(x)
    y = np.empty_like(xf)
    over_items(_eval, C, xf.size, xf, N, C, L, running_mean, inv_std, weight, bias, bool(relu), y)
    return y.reshape(x.shape)
