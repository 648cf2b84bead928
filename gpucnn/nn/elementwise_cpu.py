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


@nb.njit(nogil=True, cache=True)
def _relu_forward(x, y, mask, i0, i1):
    zero = x.dtype.type(0)
    for i in range(i0, i1):
        m = x[i] > zero
        mask[i] = m
        y[i] = x[i] * m


@nb.njit(nogil=True, cache=True)
def _relu_backward(dout, mask, dx, i0, i1):
    for i in range(i0, i1):
        dx[i] = dout[i] * mask[i]


def relu_forward(x):
    """(y, mask) of a NumPy array, both C-contiguous of x's shape."""
    flat = np.ascontiguousarray(x).reshape(-1)
    y, mask = np.empty_like(flat), np.empty(flat.shape, np.bool_)
    over_items(_relu_forward, flat.size, 2 * flat.size, flat, y, mask)
    return y.reshape(x.shape), mask.reshape(x.shape)


def relu_backward(dout, mask):
    """dout * mask for a NumPy dout of one float dtype."""
    flat = np.ascontiguousarray(dout).reshape(-1)
    dx = np.empty_like(flat)
    over_items(_relu_backward, flat.size, 2 * flat.size, flat, np.ascontiguousarray(mask).reshape(-1), dx)
    return dx.reshape(dout.shape)
