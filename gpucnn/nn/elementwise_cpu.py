"""CPU elementwise layer kernels: one Numba pass each, split across threads
in contiguous chunks (cpu_parallel.over_items) when the array is large.

The formulas are exactly the array code's (activation.ReLU), element by
element, so results are bit-identical to it at any thread count:
    relu_forward   mask = x > 0,  y = x * mask   (one read of x, both written)
    relu_backward  dx = dout * mask
(x * mask keeps the array code's NaN for x = NaN or -inf.)
"""
import numba as nb
import numpy as np

from ..cpu_parallel import over_items


# The loops run over views indexed from 0 (Numba then drops its negative-
# index handling and LLVM vectorizes them: a loop over range(i0, i1) of the
# whole array measured 4x slower), with selects instead of branches, the
# mask written and read as uint8 (a view of the bool array).
# v * 0 for v <= 0 is the array code's x * False: -0.0, and NaN for NaN or -inf.

@nb.njit(nogil=True, cache=True)
def _relu_forward(x, y, mask, i0, i1):
    x, y, mask = x[i0:i1], y[i0:i1], mask[i0:i1]
    zero = x.dtype.type(0)
    for i in range(x.size):
        v = x[i]
        y[i] = v if v > zero else v * zero
        mask[i] = 1 if v > zero else 0


@nb.njit(nogil=True, cache=True)
def _relu_backward(dout, mask, dx, i0, i1):
    dout, mask, dx = dout[i0:i1], mask[i0:i1], dx[i0:i1]
    zero = dout.dtype.type(0)
    for i in range(dout.size):
        g = dout[i]
        dx[i] = g if mask[i] else g * zero


def relu_forward(x):
    """(y, mask) of a NumPy array, both C-contiguous of x's shape."""
    flat = np.ascontiguousarray(x).reshape(-1)
    y, mask = np.empty_like(flat), np.empty(flat.shape, np.bool_)
    over_items(_relu_forward, flat.size, 2 * flat.size, flat, y, mask.view(np.uint8))
    return y.reshape(x.shape), mask.reshape(x.shape)


def relu_backward(dout, mask):
    """dout * mask for a NumPy dout of one float dtype."""
    flat = np.ascontiguousarray(dout).reshape(-1)
    dx = np.empty_like(flat)
    over_items(_relu_backward, flat.size, 2 * flat.size, flat, np.ascontiguousarray(mask).reshape(-1).view(np.uint8),
               dx)
    return dx.reshape(dout.shape)
