"""Flat-array helpers shared by the CPU kernels (conv_cpu, depthwise_cpu,
direct_cpu, pool_cpu): runs copied or added between flat arrays, zero-padded
volumes in flat buffers, and the lifting of 1-D and 2-D geometry to 3-D.

The kernels index flat arrays (C-contiguous, reshaped once per call) with
unsigned offsets: Numba then drops its negative-index fix-up and LLVM
vectorizes the contiguous inner loops, and no array view is made inside a
loop (each view costs two atomic reference-count updates: with views per
output row, im2col of a 3x3 stride-2 conv, 32->64 channels at 16x16, took
130 us a block instead of 45, a 1x1 stride-2 one 65 instead of 33).
"""
import numba as nb
import numpy as np
from numba import uintp


@nb.njit(inline="always")
def copy_run(dst, d0, src, s0, n):
    for i in range(n):
        dst[uintp(d0 + i)] = src[uintp(s0 + i)]


@nb.njit(inline="always")
def add_run(dst, d0, src, s0, n):
    for i in range(n):
        dst[uintp(d0 + i)] += src[uintp(s0 + i)]


@nb.njit(inline="always")
def flat_buffer(vol_shape, kernel, padding, dilation, like):
    """A zeroed flat buffer for one zero-padded (Dp, Hp, Wp) volume plus the
    slack that the wide-row runs of the last taps read past its end (also
    depthwise_cpu's wide rows)."""
    D, H, W = vol_shape
    _, R, S = kernel
    pd, ph, pw = padding
    _, dh, dw = dilation
    Wp = W + 2 * pw
    return np.zeros((D + 2 * pd) * (H + 2 * ph) * Wp + (R - 1) * dh * Wp + (S - 1) * dw, like.dtype)


@nb.njit(inline="always")
def fill_flat(flat, vol, padding, Hp, Wp):
    """The volume vol (D, H, W, C-contiguous) into a flat zero-bordered buffer
    of (Dp, Hp, Wp) planes (also depthwise_cpu's wide rows)."""
    D, H, W = vol.shape
    pd, ph, pw = padding
    v = vol.reshape(vol.size)
    for d in range(D):
        for h in range(H):
            copy_run(flat, ((pd + d) * Hp + ph + h) * Wp + pw, v, (d * H + h) * W, W)


@nb.njit(inline="always")
def crop_flat(flat, vol, padding, Hp, Wp):
    """fill_flat's inverse: the interior of the padded planes into vol (D, H, W,
    C-contiguous) (also depthwise_cpu's)."""
    D, H, W = vol.shape
    pd, ph, pw = padding
    v = vol.reshape(vol.size)
    for d in range(D):
        for h in range(H):
            copy_run(v, (d * H + h) * W, flat, ((pd + d) * Hp + ph + h) * Wp + pw, W)


def lift3(values, fill):
    """A length-nd geometry tuple -> length 3, unit dimensions in front
    (shared with pool_cpu: one kernel set serves 1-D, 2-D and 3-D)."""
    return (fill,) * (3 - len(values)) + tuple(values)


def as5d(a):
    """(N, C, *spatial) -> a C-contiguous (N, C, D, H, W) view (a copy if needed)."""
    return np.ascontiguousarray(a).reshape(a.shape[:2] + (1,) * (5 - a.ndim) + a.shape[2:])
