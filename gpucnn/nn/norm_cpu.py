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

from ..cpu_parallel import over_items


# reassoc (only): LLVM may split each sum into SIMD lanes, still in one fixed
# order per build; NaN and inf keep their IEEE meaning.
_FAST = {"reassoc"}


@nb.njit(nogil=True, cache=True, fastmath=_FAST)
def _forward(x, eps, weight, bias, relu, xhat, y, mean, var, inv_std, c0, c1):
    N, _, L = x.shape
    m = N * L
    for c in range(c0, c1):
        s = 0.0
        for n in range(N):
            row = x[n, c]
            for i in range(L):
                s += row[i]
        mu = s / m
        q = 0.0
        for n in range(N):
            row = x[n, c]
            for i in range(L):
                d = row[i] - mu
                q += d * d
        v = q / m
        inv = 1.0 / np.sqrt(v + eps)
        w, b = weight[c], bias[c]
        zero = y.dtype.type(0)
        for n in range(N):
            row, xh_row, y_row = x[n, c], xhat[n, c], y[n, c]
            for i in range(L):
                xh = (row[i] - mu) * inv
                xh_row[i] = xh
                y_row[i] = xh * w + b
                if relu:
                    t = y_row[i]
                    y_row[i] = t if t > zero else t * zero
        mean[c], var[c], inv_std[c] = mu, v, inv


@nb.njit(nogil=True, cache=True, fastmath=_FAST)
def _backward(dout, xhat, weight, inv_std, y, relu, dx, dweight, dbias, c0, c1):
    N, _, L = dout.shape
    m = N * L
    zero = dout.dtype.type(0)
    for c in range(c0, c1):
        sd = 0.0
        sdx = 0.0
        for n in range(N):
            g_row, xh_row, y_row = dout[n, c], xhat[n, c], y[n, c]
            for i in range(L):
                g = g_row[i]
                if relu:
                    g = g if y_row[i] > zero else g * zero
                sd += g
                sdx += g * xh_row[i]
        dweight[c], dbias[c] = sdx, sd
        a, b, k = sdx / m, sd / m, weight[c] * inv_std[c]
        for n in range(N):
            g_row, xh_row, y_row, dx_row = dout[n, c], xhat[n, c], y[n, c], dx[n, c]
            for i in range(L):
                g = g_row[i]
                if relu:
                    g = g if y_row[i] > zero else g * zero
                dx_row[i] = (g - b - xh_row[i] * a) * k


@nb.njit(nogil=True, cache=True)
def _eval(x, running_mean, inv_std, weight, bias, relu, y, c0, c1):
    """y = (x - running_mean) * inv_std * weight + bias per channel, in the
    array code's order and dtype (bitwise its result), ReLU'd when relu."""
    N, _, L = x.shape
    zero = y.dtype.type(0)
    for c in range(c0, c1):
        mu, inv, w, b = running_mean[c], inv_std[c], weight[c], bias[c]
        for n in range(N):
            row, y_row = x[n, c], y[n, c]
            for i in range(L):
                v = (row[i] - mu) * inv * w + b
                if relu:
                    v = v if v > zero else v * zero
                y_row[i] = v


def _ncl(a):
    """A C-contiguous (N, C, L) view of (N, C, ...) (a copy if needed)."""
    a = np.ascontiguousarray(a)
    return a.reshape(a.shape[0], a.shape[1], -1)


def forward(x, eps, weight, bias, relu=False):
    """(y, xhat, mean, biased var, inv_std), the per-channel vectors in x's dtype;
    y after ReLU when relu."""
    x3 = _ncl(x)
    C = x3.shape[1]
    xhat, y = np.empty_like(x3), np.empty_like(x3)
    mean, var, inv_std = (np.empty(C, x.dtype) for _ in range(3))
    over_items(_forward, C, x3.size, x3, float(eps), weight, bias, bool(relu), xhat, y, mean, var, inv_std)
    return y.reshape(x.shape), xhat.reshape(x.shape), mean, var, inv_std


def backward(dout, xhat, weight, inv_std, y=None):
    """(dx, dweight, dbias) of the training forward; with y (its output after a
    fused ReLU) from dout * [y > 0]."""
    dout3, xhat3 = _ncl(dout), _ncl(xhat)
    y3 = xhat3 if y is None else _ncl(y)
    C = dout3.shape[1]
    dx = np.empty_like(dout3)
    dweight, dbias = np.empty(C, dout.dtype), np.empty(C, dout.dtype)
    over_items(_backward, C, dout3.size, dout3, xhat3, weight, inv_std, y3, y is not None, dx, dweight, dbias)
    return dx.reshape(dout.shape), dweight, dbias


def eval_forward(x, running_mean, inv_std, weight, bias, relu=False):
    """Eval-mode y (after ReLU when relu) in one pass; inv_std = 1 / sqrt(running_var + eps)
    computed by the caller as the array code does (x's dtype throughout)."""
    x3 = _ncl(x)
    y = np.empty_like(x3)
    over_items(_eval, x3.shape[1], x3.size, x3, running_mean, inv_std, weight, bias, bool(relu), y)
    return y.reshape(x.shape)
