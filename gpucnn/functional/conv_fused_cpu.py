"""CPU side of the fused convolution epilogues (gpucnn.functional.conv_fused):
the convolutions are conv_cpu's; the epilogue is one Numba pass each way.

    forward          y = conv_cpu.forward(x, w), then in one pass over y:
                     v = y + b[k];  y = v if v > 0 else v * 0   (relu=False: y = v)
    backward         in one pass over dy: dz = dy * [y > 0] (the array code's
                     dy * mask) and db[k] = sum of dz over (n, i, j), in float64,
                     plane by plane in order; then conv_cpu.backward_filter(dz, x)
                     and conv_cpu.backward_data(dz, w)
The forward's epilogue is the unfused path's arithmetic (y += b, then ReLU's
v if v > 0 else v * 0), so y is bitwise the same; db is summed in float64, so
it can differ from dy.sum() in the last bits. The passes split the (n, k)
planes across threads (cpu_parallel.over_items); results do not depend on
the thread count.
"""
import numba as nb
import numpy as np

from ..cpu_parallel import over_items
from . import conv_cpu


@nb.njit(nogil=True, cache=True)
def _bias_relu(y, b, bias, relu, p0, p1):
    """y (planes, L) in place over planes [p0, p1); plane p has channel p % K."""
    K = b.size
    zero = y.dtype.type(0)
    for p in range(p0, p1):
        row = y[p]
        bk = b[p % K] if bias else zero
        for i in range(row.size):
            v = row[i] + bk if bias else row[i]
            if relu:
                v = v if v > zero else v * zero
            row[i] = v


# reassoc (only) for the sums: LLVM may split them into SIMD lanes, in one
# fixed order per build (as nn/norm_cpu.py's kernels do).
@nb.njit(nogil=True, cache=True, fastmath={"reassoc"})
def _relu_grad_sums(dy, y, dz, sums, relu, p0, p1):
    """dz = dy * [y > 0] (when relu; dz is dy otherwise) and sums[p] = the
    float64 sum of plane p of dz, over planes [p0, p1)."""
    zero = dy.dtype.type(0)
    for p in range(p0, p1):
        g_row = dy[p]
        s = 0.0
        if relu:
            y_row, dz_row = y[p], dz[p]
            for i in range(g_row.size):
                g = g_row[i] if y_row[i] > zero else g_row[i] * zero
                dz_row[i] = g
                s += g
        else:
            for i in range(g_row.size):
                s += g_row[i]
        sums[p] = s


def _planes(a):
    """A C-contiguous (N*K, L) view of (N, K, ...) (a copy if needed)."""
    a = np.ascontiguousarray(a)
    return a.reshape(a.shape[0] * a.shape[1], -1)


def forward(x, w, stride, padding, bias=None, relu=False, **kw):
    """conv_cpu.forward with + bias[k] and ReLU applied in one pass over y."""
    y = conv_cpu.forward(x, w, stride, padding, **kw)
    if (bias is not None or relu) and y.size:
        y = np.ascontiguousarray(y)
        planes = y.reshape(y.shape[0] * y.shape[1], -1)
        b = np.zeros(1, y.dtype) if bias is None else np.ascontiguousarray(bias, dtype=y.dtype)
        over_items(_bias_relu, planes.shape[0], y.size, planes, b, bias is not None, bool(relu))
    return y


def relu_grad_and_bias(dy, relu_y=None, bias_grad=False):
    """(dz, db): dz = dy * (relu_y > 0) (dy itself without relu_y); db the
    per-channel sum of dz when bias_grad, else None. One pass over dy."""
    if relu_y is None and not bias_grad:
        return dy, None
    planes = _planes(dy)
    relu = relu_y is not None
    dz = np.empty_like(planes) if relu else planes
    sums = np.empty(planes.shape[0], np.float64)
    over_items(_relu_grad_sums, planes.shape[0], 2 * planes.size, planes,
               _planes(relu_y) if relu else planes, dz, sums, relu)
    db = sums.reshape(dy.shape[:2]).sum(axis=0).astype(dy.dtype) if bias_grad else None
    return (dz.reshape(dy.shape) if relu else dy), db


def backward(dy, x, w, stride, padding, relu_y=None, bias_grad=False, **kw):
    """(dx, dw, db) from dz = dy * (relu_y > 0) (dy without relu_y), masked
    once for both convolutions; db (with bias_grad, else None) in the same pass."""
    dz, db = relu_grad_and_bias(dy, relu_y, bias_grad)
    dw = conv_cpu.backward_filter(dz, x, w.shape, stride, padding, **kw)
    return conv_cpu.backward_data(dz, w, x.shape, stride, padding, **kw), dw, db
