"""The CPU conv's alternative routes (wide rows for stride 1, (gpucnn/functional/conv_cpu.py) against
the float64 loop reference: backward-data as a forward conv with the flipped
filter (stride 1, from 16 input channels per group), its fallbacks (padding
beyond d(k-1), stride 2, few channels), blocks of several samples in one
matmul (small images) and one sample per block (large images), in 1-D, 2-D
and 3-D, with dilation and groups; and results identical at 1 and 2 threads
run to run."""
import numba
import numpy as np
import pytest

from gpucnn.functional import conv_cpu
from gpucnn.testing import reference as ref

CASES = [  # (x shape, K, kernel, stride, padding, dilation, groups)
    ((3, 16, 9, 7), 8, (3, 3), (1, 1), (1, 1), (1, 1), 1),     # backward-data as a forward conv
    ((2, 32, 8, 9), 6, (3, 2), (1, 1), (2, 0), (2, 1), 2),     # ... with groups and dilation
    ((2, 16, 6, 6), 4, (3, 3), (1, 1), (3, 3), (1, 1), 1),     # padding > d(k-1): col2im route
    ((3, 16, 9, 9), 8, (3, 3), (2, 2), (1, 1), (1, 1), 1),     # stride 2: col2im route
    ((2, 6, 10, 10), 5, (5, 5), (1, 1), (0, 0), (1, 1), 1),    # few channels: col2im route
    ((3, 6, 14, 14), 16, (5, 5), (1, 1), (0, 0), (1, 1), 1),   # LeNet's 6->16: col2im at wide rows
    ((5, 20, 3, 2), 7, (1, 1), (1, 1), (0, 0), (1, 1), 1),     # tiny images: 5 samples a block
    ((2, 16, 11), 4, (3,), (1,), (2,), (2,), 4),                # 1-D, depthwise-like groups
    ((2, 16, 4, 5, 3), 4, (2, 3, 1), (1, 1, 1), (1, 1, 0), (1, 1, 1), 1),  # 3-D
    ((2, 8, 6, 12, 12), 16, (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), 1),   # 3-D wide rows
    ((2, 16, 5, 9, 8), 8, (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 2, 1), 1),     # 3-D wide rows, dilation
    ((3, 16, 10, 16), 8, (3, 3), (1, 1), (1, 1), (1, 1), 1),   # wide rows, all three directions
    ((2, 8, 40), 4, (5,), (1,), (2,), (1,), 2),                 # wide rows in 1-D, groups
    ((2, 6, 12, 20), 4, (3, 3), (1, 1), (2, 1), (2, 1), 1),    # wide rows, dilation, few channels
    ((3, 16, 9, 8), 20, (1, 1), (1, 1), (0, 0), (1, 1), 2),    # pointwise, one sample a block (views)
    ((3, 2, 17, 16), 5, (3, 3), (1, 1), (1, 1), (1, 1), 1),    # thin: blocks of per-sample products, y in place
    ((3, 4, 17, 16), 6, (3, 3), (1, 1), (1, 1), (1, 1), 2),    # thin with groups: one sample a block
    ((3, 1, 1, 1, 1), 1, (2, 1, 1), (1, 1, 1), (1, 0, 0), (1, 1, 1), 1),   # 3-D with Do = 1 but D = T = 2
    ((2, 3, 2, 5, 6), 4, (2, 3, 3), (1, 1, 1), (0, 1, 1), (1, 1, 1), 1),   # 3-D, D = T: not wide rows
    ((3, 1, 1, 1, 1), 1, (1, 1, 1), (1, 1, 1), (1, 1, 0), (1, 1, 1), 1),   # 3-D, D = T = 1 but Do = 3
]


def _inputs(case, dtype=np.float64):
    shape, K, kernel, stride, padding, dilation, groups = case
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal((K, shape[1] // groups) + kernel).astype(dtype)
    y_shape = ref.conv_forward_ref(x, w, None, stride, padding, dilation, groups).shape
    return x, w, rng.standard_normal(y_shape).astype(dtype)


@pytest.mark.parametrize("case", CASES, ids=[str(i) for i in range(len(CASES))])
def test_cpu_conv_routes_match_the_reference(case):
    shape, K, kernel, stride, padding, dilation, groups = case
    plan = conv_cpu._Plan(shape, (K, shape[1] // groups) + kernel, stride, padding, np.float64, dilation, groups)
    pointwise = set(kernel) == {1} and set(stride) == {1} and set(padding) == {0}
    thin = plan.rows_g < conv_cpu._THIN_ROWS and plan.P >= conv_cpu._MIN_COLUMNS
    # wide rows: outputs at the padded row width Wp (and, in 3-D, Hp rows a depth slice)
    Do, Ho, Wo = conv_cpu.lift3(plan.out, 1)
    Hp, Wp = (n + 2 * p for n, p in zip(conv_cpu.lift3(shape[2:], 1)[1:], conv_cpu.lift3(padding, 0)[1:]))
    wide = Do * (Ho if Do == 1 else Hp) * Wp <= conv_cpu._WIDE_LIMIT * plan.P and \
        set(stride) == {1} and not pointwise and not thin
    assert plan.stacked == (thin and groups == 1)   # thin, one group: blocks of per-sample products
    assert plan.m == 1 or not thin or plan.stacked
    assert plan.pointwise == pointwise and (plan.m == 1 or not pointwise or plan.P < 64)
    assert plan.wide == wide
    x, w, dy = _inputs(case)
    geo = (stride, padding, dilation, groups)
    np.testing.assert_allclose(conv_cpu.forward(x, w, *geo),
                               ref.conv_forward_ref(x, w, None, *geo), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(conv_cpu.backward_data(dy, w, x.shape, *geo),
                               ref.conv_backward_data_ref(dy, w, x.shape, *geo), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(conv_cpu.backward_filter(dy, x, w.shape, *geo),
                               ref.conv_backward_filter_ref(dy, x, w.shape, *geo), rtol=1e-10, atol=1e-10)


def test_cpu_conv_is_deterministic_for_a_thread_count():
    # Large enough to split the batch across threads and into blocks.
    case = ((16, 32, 6, 6), 64, (3, 3), (1, 1), (1, 1), (1, 1), 1)
    x, w, dy = _inputs(case, np.float32)
    geo = case[3:]
    before = numba.get_num_threads()
    try:
        for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(threads)
            runs = [(conv_cpu.forward(x, w, *geo), conv_cpu.backward_data(dy, w, x.shape, *geo),
                     conv_cpu.backward_filter(dy, x, w.shape, *geo)) for _ in range(2)]
            for a, b in zip(*runs):
                np.testing.assert_array_equal(a, b)
            expected = ref.conv_backward_filter_ref(dy.astype(np.float64), x.astype(np.float64), w.shape, *geo)
            np.testing.assert_allclose(runs[0][2], expected, rtol=1e-4, atol=1e-3)
    finally:
        numba.set_num_threads(before)


DEPTHWISE = [  # (x shape, multiplier, kernel, stride, padding, dilation): which kernels serve
    ((3, 4, 9, 7), 1, (3, 3), (1, 1), (1, 1), (1, 1)),      # wide rows, every direction
    ((2, 3, 8, 10), 2, (3, 2), (1, 1), (2, 0), (2, 1)),     # wide rows, multiplier 2, dilation
    ((2, 5, 17), 1, (5,), (1,), (2,), (1,)),                 # wide rows in 1-D
    ((2, 4, 9, 9), 1, (3, 3), (2, 2), (1, 1), (1, 1)),      # stride 2: per-row kernels, grouped products
    ((2, 3, 4, 5, 6), 1, (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1)),   # 3-D: per-row kernels
]


@pytest.mark.parametrize("case", DEPTHWISE, ids=[str(i) for i in range(len(DEPTHWISE))])
def test_depthwise_routes_match_the_reference(case):
    from gpucnn.functional import depthwise_cpu
    shape, mult, kernel, stride, padding, dilation = case
    C = shape[1]
    w_shape = (C * mult, 1) + kernel
    wide = all(s == 1 for s in stride) and len(shape) <= 4
    assert depthwise_cpu._wide(shape, w_shape, stride) == wide
    assert depthwise_cpu.applies_backward_filter(shape, w_shape, stride, C) == wide
    rng = np.random.default_rng(2)
    x, w = rng.standard_normal(shape), rng.standard_normal(w_shape)
    geo = (stride, padding, dilation, C)
    y = conv_cpu.forward(x, w, *geo)
    np.testing.assert_allclose(y, ref.conv_forward_ref(x, w, None, *geo), rtol=1e-10, atol=1e-10)
    dy = rng.standard_normal(y.shape)
    np.testing.assert_allclose(conv_cpu.backward_data(dy, w, x.shape, *geo),
                               ref.conv_backward_data_ref(dy, w, x.shape, *geo), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(conv_cpu.backward_filter(dy, x, w_shape, *geo),
                               ref.conv_backward_filter_ref(dy, x, w_shape, *geo), rtol=1e-10, atol=1e-10)
