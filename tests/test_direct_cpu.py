"""The CPU's direct stride-1 route (gpucnn/functional/direct_cpu.py, on
simd_cpu's micro-kernels) against the float64 loop reference: forward,
backward-data (the forward of dy with the flipped filter) and
backward-filter, directly and through the public ops, over 1-D, 2-D and 3-D,
batch 1, odd sizes, padding (none, asymmetric, beyond the kernel's reach
for backward-data), rectangular kernels, dilation, channel counts that are
not whole tiles, every tile width, several backward-filter blocks and
non-contiguous inputs; which calls take the route; and results identical
run to run at 1 and 2 threads."""
import numba
import numpy as np
import pytest

import gpucnn.functional as F
from gpucnn.functional import conv_cpu, direct_cpu, winograd_cpu
from gpucnn.functional.simd_cpu import LANES
from gpucnn.testing import reference as ref

REL_TOL = 1e-5   # the conv tests' float32 bound (relative L2 against float64)

CASES = [  # (N, C, spatial, K, kernel, stride, padding, dilation)
    (32, 6, (14, 14), 16, (5, 5), 1, (0, 0), None),          # LeNet's 6 -> 16 layer
    (1, 5, (9, 11), 7, (2, 3), 1, (1, 2), None),             # batch 1, odd sizes, 7 filters (one padded tile)
    (3, 4, (12, 13), 9, (3, 3), 1, (0, 1), (2, 1)),          # dilation on one axis, 9 filters (two tiles)
    (2, 16, (16, 16), 16, (3, 3), 1, (2, 2), (2, 2)),        # the quick suite's dilated layer, two images
    (3, 16, (37,), 20, (5,), 1, (2,), None),                 # 1-D
    (2, 8, (40,), 8, (3,), 1, (3,), (3,)),                   # 1-D dilated, padding beyond the reach
    (2, 3, (6, 7, 8), 10, (3, 2, 3), 1, (1, 0, 1), None),    # 3-D, rectangular
    (2, 8, (5, 6, 6), 16, (3, 3, 3), 1, (1, 1, 1), (2, 1, 1)),  # 3-D dilated in depth
    (1, 1, (28, 28), 6, (5, 5), 1, (2, 2), None),            # one input channel: 25 taps
    (3, 8, (16, 16), 16, (3, 3), 2, (1, 1), None),           # stride 2: four phase components
    (2, 6, (15, 13), 12, (3, 3), 2, (1, 0), None),           # stride 2, odd sizes, asymmetric padding
    (2, 3, (19, 20), 8, (7, 7), (2, 3), (3, 2), None),       # a 7x7 stem, strides 2 and 3
    (2, 4, (13, 14), 8, (3, 3), 2, (2, 2), (2, 2)),          # stride and dilation 2: one phase a tap
    (2, 5, (21,), 8, (5,), 3, (1,), None),                   # 1-D, stride 3
    (2, 4, (7, 8, 9), 8, (3, 3, 3), 2, (1, 1, 1), None),     # 3-D, stride 2: eight components
]


def _rel(out, expected):
    return np.linalg.norm(out.astype(np.float64) - expected) / np.linalg.norm(expected)


def _case(case, rng, contiguous=True):
    N, C, spatial, K, kernel, stride, padding, dilation = case
    x = rng.standard_normal((N, C) + spatial).astype(np.float32)
    if not contiguous:   # a strided view of a wider array
        x = np.repeat(x, 2, axis=-1)[..., ::2]
    w = (rng.standard_normal((K, C) + kernel) / np.sqrt(np.prod(kernel) * C)).astype(np.float32)
    dil = dilation or 1
    y64 = ref.conv_forward_ref(x.astype(np.float64), w.astype(np.float64), None, stride, padding, dil)
    dy = rng.standard_normal(y64.shape).astype(np.float32)
    if not contiguous:
        dy = np.repeat(dy, 2, axis=-1)[..., ::2]
    return x, w, dy, y64


def _public(nd):
    return (getattr(F, f"conv{nd}d"), getattr(F, f"conv{nd}d_backward_data"),
            getattr(F, f"conv{nd}d_backward_filter"))


@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "view"])
def test_direct_matches_the_float64_reference(case, contiguous):
    x, w, dy, y64 = _case(case, np.random.default_rng(11), contiguous)
    stride, padding, dilation = case[5:]
    stride = (stride,) * len(padding) if isinstance(stride, int) else stride
    dil = dilation or 1
    x64, w64, dy64 = (a.astype(np.float64) for a in (x, w, dy))
    dx64 = ref.conv_backward_data_ref(dy64, w64, x.shape, stride, padding, dil)
    dw64 = ref.conv_backward_filter_ref(dy64, x64, w.shape, stride, padding, dil)
    y = direct_cpu.forward(x, w, padding, dilation, stride)
    assert y.shape == y64.shape and y.dtype == np.float32 and y.flags.c_contiguous
    assert _rel(y, y64) <= REL_TOL
    dw = direct_cpu.backward_filter(dy, x, w.shape, padding, dilation, stride)
    assert dw.shape == w.shape and dw.dtype == np.float32
    assert _rel(dw, dw64) <= REL_TOL
    conv, conv_bd, conv_bf = _public(x.ndim - 2)   # the public ops, whichever route they take
    assert _rel(conv(x, w, stride=stride, padding=padding, dilation=dil), y64) <= REL_TOL
    assert _rel(conv_bd(dy, w, x.shape, stride=stride, padding=padding, dilation=dil), dx64) <= REL_TOL
    assert _rel(conv_bf(dy, x, w.shape, stride=stride, padding=padding, dilation=dil), dw64) <= REL_TOL


@pytest.mark.parametrize("width", [1, 2, 3])
def test_every_tile_width(width):
    """Rows of width vectors of outputs take tiles of 8 filters by `width` vectors."""
    P = LANES * width
    x, w, dy, y64 = _case((2, 3, (P + 2,), 16, (3,), 1, (0,), None), np.random.default_rng(12))
    g = direct_cpu._geometry_of(x.shape, w.shape, (1,), (0,), None)
    assert (g.KB, g.PB, g.Pcp) == (8, width, P)
    assert _rel(direct_cpu.forward(x, w, (0,)), y64) <= REL_TOL


@pytest.mark.parametrize("K", [16, 20, 32, 40, 64, 70])
def test_backward_filter_over_filters(K):
    """The tiles over filters (K >= LANES): one, two and four vectors of
    filters, filter counts that are not whole tiles, taps that are not whole
    tiles (5*7 = 35), and a row of positions longer than a chunk."""
    x, w, dy, _ = _case((2, 7, (3, 40 * LANES), K, (1, 5), 1, (0, 2), None), np.random.default_rng(16))
    dw64 = ref.conv_backward_filter_ref(dy.astype(np.float64), x.astype(np.float64), w.shape, 1, (0, 2))
    assert _rel(direct_cpu.backward_filter(dy, x, w.shape, (0, 2)), dw64) <= REL_TOL


def test_backward_filter_in_several_blocks(monkeypatch):
    """Blocks of one sample (each block's sums added in order) and a shorter last block."""
    x, w, dy, _ = _case((5, 4, (7, 9), 6, (3, 2), 1, (1, 0), None), np.random.default_rng(13))
    dw64 = ref.conv_backward_filter_ref(dy.astype(np.float64), x.astype(np.float64), w.shape, 1, (1, 0))
    for block_bytes in (1, 3 * 4 * 1000, 1 << 20):
        monkeypatch.setattr(direct_cpu, "_BLOCK_BYTES", block_bytes)
        assert _rel(direct_cpu.backward_filter(dy, x, w.shape, (1, 0)), dw64) <= REL_TOL


@pytest.mark.parametrize("args, taken", [
    (((32, 6, 14, 14), (16, 6, 5, 5), (1, 1), (0, 0), None, 1, np.float32), True),   # LeNet 6 -> 16
    (((8, 16, 256), (32, 16, 5), (1,), (2,), None, 1, np.float32), True),            # 1-D
    (((2, 8, 8, 12, 12), (16, 8, 3, 3, 3), (1,) * 3, (1,) * 3, None, 1, np.float32), True),   # 3-D
    (((32, 6, 14, 14), (16, 6, 5, 5), (1, 1), (0, 0), None, 1, np.float64), False),  # float64: im2col
    (((8, 32, 16, 16), (64, 32, 3, 3), (2, 2), (1, 1), None, 1, np.float32), True),   # stride 2: components
    (((8, 64, 16, 16), (128, 64, 1, 1), (2, 2), (0, 0), None, 1, np.float32), False),  # strided 1x1: a GEMM
    (((8, 32, 16, 16), (64, 16, 3, 3), (1, 1), (1, 1), None, 2, np.float32), False),  # groups
    (((8, 64, 16, 16), (128, 64, 1, 1), (1, 1), (0, 0), None, 1, np.float32), False),  # pointwise: a GEMM
    (((8, 1, 28, 28), (32, 1, 3, 3), (1, 1), (1, 1), None, 1, np.float32), False),   # 9 taps
    (((8, 16, 3, 3), (1, 16, 3, 3), (1, 1), (0, 0), None, 1, np.float32), False),   # 1 filter, 1x1 output: waste
])
def test_which_calls_take_the_direct_route(args, taken):
    assert direct_cpu.applies(*args) is taken


@pytest.mark.parametrize("x_shape, channels, direction, route", [
    ((8, 16, 16, 16), 16, "forward", direct_cpu),            # few channels: Winograd's products are slow
    ((8, 16, 16, 16), 16, "backward_filter", direct_cpu),
    ((8, 32, 16, 16), 32, "forward", direct_cpu),            # 32 channels, a small batch
    ((128, 32, 16, 16), 32, "forward", direct_cpu),          # ... a training batch, 32 -> 32
    ((128, 32, 16, 16), 64, "forward", winograd_cpu),        # ... 32 -> 64
    ((8, 32, 16, 16), 32, "backward_filter", direct_cpu),
    ((128, 64, 16, 16), 64, "backward_filter", direct_cpu),   # 64 -> 64
    ((128, 64, 16, 16), 128, "backward_filter", winograd_cpu),  # 64 -> 128
    ((8, 64, 16, 16), 64, "forward", winograd_cpu),
])
def test_direct_or_winograd(x_shape, channels, direction, route):
    args = (x_shape, (channels, x_shape[1], 3, 3), (1, 1), (1, 1), None, 1, np.float32)
    assert conv_cpu._fast_route(*args, direction) is route


def test_thin_backward_data_runs_as_a_direct_forward(monkeypatch):
    """LeNet's 6 -> 16 backward-data (6 output channels of the flipped conv)
    takes the direct forward instead of col2im."""
    x, w, dy, _ = _case(CASES[0], np.random.default_rng(14))
    calls = []
    real = direct_cpu.forward
    monkeypatch.setattr(direct_cpu, "forward", lambda *a: calls.append(a[1].shape) or real(*a))
    dx = F.conv2d_backward_data(dy, w, x.shape)
    assert calls == [(6, 16, 5, 5)]
    dx64 = ref.conv_backward_data_ref(dy.astype(np.float64), w.astype(np.float64), x.shape, 1, 0)
    assert _rel(dx, dx64) <= REL_TOL


def test_direct_is_deterministic_per_thread_count():
    x, w, dy, _ = _case((40, 6, (14, 14), 16, (5, 5), 1, (1, 1), None), np.random.default_rng(15))   # 2 parts at 2 threads
    before = numba.get_num_threads()
    try:
        for threads in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
            numba.set_num_threads(threads)
            runs = [(direct_cpu.forward(x, w, (1, 1)), direct_cpu.backward_filter(dy, x, w.shape, (1, 1)))
                    for _ in range(2)]
            for a, b in zip(*runs):
                assert np.array_equal(a, b)
    finally:
        numba.set_num_threads(before)
