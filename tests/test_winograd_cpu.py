"""The CPU's Winograd route (gpucnn/functional/winograd_cpu.py), both forms,
F(2x2, 3x3) and F(4x4, 3x3), against the float64 loop reference: forward,
backward-data (a forward conv of dy with the flipped filter) and
backward-filter, through the public ops and each form directly,
over odd and even sizes, batch 1, padding 0/1/2 and asymmetric, rectangular
images, non-contiguous inputs and blocks of several samples; which calls take
the route; and results identical run to run at 1 and 2 threads."""
import numba
import numpy as np
import pytest

import gpucnn.functional as F
from gpucnn.functional import winograd_cpu
from gpucnn.testing import reference as ref

REL_TOL = 1e-5   # the conv tests' float32 bound (relative L2 against float64)

CASES = [  # (N, C, H, W, K, padding)
    (1, 16, 6, 6, 16, (1, 1)),      # batch 1, the smallest output every direction takes (6x6)
    (3, 16, 9, 11, 20, (1, 1)),     # odd sizes: half tiles at the bottom and right
    (2, 17, 10, 11, 16, (0, 0)),    # no padding, odd channels
    (2, 16, 7, 8, 18, (2, 2)),      # padding 2 (backward-data's padding for padding 0)
    (2, 24, 12, 11, 16, (1, 0)),    # asymmetric padding, rectangular image
    (9, 16, 8, 9, 16, (1, 1)),      # several samples a block, a shorter last block
    (2, 32, 28, 28, 32, (1, 1)),    # vgg_small's first 3x3 layer size, one sample a block
]


def _rel(out, expected):
    return np.linalg.norm(out.astype(np.float64) - expected) / np.linalg.norm(expected)


def _inputs(case, rng, contiguous=True):
    N, C, H, W, K, padding = case
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    if not contiguous:   # a strided view of a wider array
        x = np.repeat(x, 2, axis=3)[..., ::2]
    w = (rng.standard_normal((K, C, 3, 3)) / np.sqrt(9 * C)).astype(np.float32)
    Ho, Wo = H + 2 * padding[0] - 2, W + 2 * padding[1] - 2
    dy = rng.standard_normal((N, K, Ho, Wo)).astype(np.float32)
    return x, w, dy


@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "view"])
def test_winograd_matches_the_float64_reference(case, contiguous):
    x, w, dy = _inputs(case, np.random.default_rng(3), contiguous)
    padding = case[-1]
    assert winograd_cpu.applies(x.shape, w.shape, (1, 1), padding, (1, 1), 1, x.dtype)
    x64, w64, dy64 = (a.astype(np.float64) for a in (x, w, dy))
    y = F.conv2d(x, w, padding=padding)
    assert y.dtype == np.float32 and y.flags.c_contiguous
    assert _rel(y, ref.conv_forward_ref(x64, w64, None, 1, padding)) <= REL_TOL
    dx = F.conv2d_backward_data(dy, w, x.shape, padding=padding)
    assert _rel(dx, ref.conv_backward_data_ref(dy64, w64, x.shape, 1, padding)) <= REL_TOL
    dw = F.conv2d_backward_filter(dy, x, w.shape, padding=padding)
    assert dw.shape == w.shape and dw.dtype == np.float32
    assert _rel(dw, ref.conv_backward_filter_ref(dy64, x64, w.shape, 1, padding)) <= REL_TOL


FORMS = [winograd_cpu.F2, winograd_cpu.F4]


@pytest.mark.parametrize("form", FORMS, ids=["F2x2", "F4x4"])
def test_each_form_matches_the_float64_reference(form):
    """Each form on every case, whichever the route would pick, and down to a
    1x1 output (the route takes 4x4 and up): partial tiles of every size."""
    rng = np.random.default_rng(4)
    tiny = [(1, 16, 1, 1, 16, (1, 1)), (2, 16, 3, 3, 17, (0, 0)), (2, 16, 2, 3, 16, (1, 0)),
            (2, 16, 5, 9, 16, (1, 1)), (1, 16, 6, 13, 16, (0, 2)), (2, 16, 5, 7, 16, (3, 1)), (1, 16, 4, 4, 16, (5, 4))]
    for case in CASES + tiny:
        x, w, dy = _inputs(case, rng)
        padding = case[-1]
        x64, w64, dy64 = (a.astype(np.float64) for a in (x, w, dy))
        y = winograd_cpu.forward(x, w, padding, form=form)
        assert y.dtype == np.float32 and _rel(y, ref.conv_forward_ref(x64, w64, None, 1, padding)) <= REL_TOL
        assert _rel(winograd_cpu.backward_filter(dy, x, w.shape, padding, form=form),
                    ref.conv_backward_filter_ref(dy64, x64, w.shape, 1, padding)) <= REL_TOL


@pytest.mark.parametrize("side, forward, backward_filter", [
    (28, 4, 4), (14, 4, 4), (7, 4, 4),   # F(4x4) from 7 a side (14 -> 16x16 of tiles: still faster)
    (6, 2, 2), (4, 2, 2),                 # one or two tiles a plane: F(2x2)
])
def test_which_form_a_call_takes(side, forward, backward_filter):
    shape = (8, 32, side, side)
    assert winograd_cpu._form(shape, (1, 1), "forward").tile == forward
    assert winograd_cpu._form(shape, (1, 1), "backward_filter").tile == backward_filter


@pytest.mark.parametrize("args, taken", [
    (((8, 32, 14, 14), (64, 32, 3, 3), (1, 1), (1, 1), (1, 1), 1, np.float32), True),
    (((8, 32, 14, 14), (64, 32, 3, 3), (1, 1), (1, 1), (1, 1), 1, np.float64), False),   # float64: im2col
    (((8, 32, 14, 14), (64, 32, 3, 3), (2, 2), (1, 1), (1, 1), 1, np.float32), False),   # stride 2
    (((8, 32, 14, 14), (64, 32, 3, 3), (1, 1), (1, 1), (2, 2), 1, np.float32), False),   # dilation
    (((8, 32, 14, 14), (64, 16, 3, 3), (1, 1), (1, 1), (1, 1), 2, np.float32), False),   # groups
    (((8, 32, 14, 14), (64, 32, 5, 5), (1, 1), (2, 2), (1, 1), 1, np.float32), False),   # 5x5
    (((8, 8, 14, 14), (64, 8, 3, 3), (1, 1), (1, 1), (1, 1), 1, np.float32), False),     # few channels
    (((8, 256, 2, 2), (256, 256, 3, 3), (1, 1), (1, 1), (1, 1), 1, np.float32), False),  # 2x2 output
    (((8, 64, 7, 7), (128, 64, 3, 3), (1, 1), (1, 1), (1, 1), 1, np.float32), True),     # 7x7 output
    (((8, 32, 14), (64, 32, 3), (1,), (1,), (1,), 1, np.float32), False),                 # 1-D
])
def test_which_calls_take_the_winograd_route(args, taken):
    assert winograd_cpu.applies(*args) is taken


def test_backward_filter_needs_a_larger_output():
    args = ((8, 256, 4, 4), (256, 256, 3, 3), (1, 1), (1, 1), (1, 1), 1, np.float32)
    assert winograd_cpu.applies(*args) and not winograd_cpu.applies(*args, "backward_filter")
    assert winograd_cpu.applies((8, 64, 6, 6), *args[1:], "backward_filter")


@pytest.mark.parametrize("form", FORMS, ids=["F2x2", "F4x4"])
def test_winograd_is_deterministic_per_thread_count(form):
    x, w, dy = _inputs((6, 16, 10, 10, 16, (1, 1)), np.random.default_rng(5))
    before = numba.get_num_threads()
    try:
        for threads in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
            numba.set_num_threads(threads)
            runs = [(winograd_cpu.forward(x, w, (1, 1), form=form), winograd_cpu.backward_filter(dy, x, w.shape, (1, 1), form=form))
                    for _ in range(2)]
            for a, b in zip(*runs):
                assert np.array_equal(a, b)
    finally:
        numba.set_num_threads(before)


# ---- dilation, by polyphase components -------------------------------------------------
DILATED = [  # (N, C, H, W, K, padding, dilation)
    (2, 16, 24, 24, 16, (2, 2), (2, 2)),    # 12x12 components: every direction here
    (1, 16, 24, 36, 17, (2, 3), (2, 3)),    # rectangular dilation, batch 1
    (2, 16, 48, 48, 16, (4, 4), (4, 4)),    # 16 components
    (3, 16, 16, 18, 16, (2, 2), (2, 2)),    # 8x9 components: backward-filter here, the forward on im2col
]


@pytest.mark.parametrize("case", DILATED, ids=[str(c) for c in DILATED])
def test_dilated_convs_match_the_float64_reference(case):
    N, C, H, W, K, padding, dilation = case
    rng = np.random.default_rng(6)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = (rng.standard_normal((K, C, 3, 3)) / np.sqrt(9 * C)).astype(np.float32)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    y64 = ref.conv_forward_ref(x64, w64, None, 1, padding, dilation)
    dy = rng.standard_normal(y64.shape).astype(np.float32)
    assert winograd_cpu.applies(x.shape, w.shape, (1, 1), padding, dilation, 1, x.dtype, "backward_filter")
    assert _rel(F.conv2d(x, w, padding=padding, dilation=dilation), y64) <= REL_TOL
    assert _rel(F.conv2d_backward_data(dy, w, x.shape, padding=padding, dilation=dilation),
                ref.conv_backward_data_ref(dy.astype(np.float64), w64, x.shape, 1, padding, dilation)) <= REL_TOL
    dw64 = ref.conv_backward_filter_ref(dy.astype(np.float64), x64, w.shape, 1, padding, dilation)
    assert _rel(F.conv2d_backward_filter(dy, x, w.shape, padding=padding, dilation=dilation), dw64) <= REL_TOL
    for form in FORMS:   # the components through each form, whatever the route picks
        assert _rel(winograd_cpu.forward(x, w, padding, dilation, form), y64) <= REL_TOL
        assert _rel(winograd_cpu.backward_filter(dy, x, w.shape, padding, dilation, form), dw64) <= REL_TOL


@pytest.mark.parametrize("x_shape, padding, dilation, forward, backward_filter", [
    ((8, 32, 24, 24), (2, 2), (2, 2), True, True),
    ((8, 32, 16, 16), (2, 2), (2, 2), False, True),    # 8x8 components: the forward's im2col is faster
    ((8, 32, 24, 24), (1, 1), (2, 2), False, False),   # padding not a multiple of the dilation
    ((8, 32, 25, 24), (2, 2), (2, 2), False, False),   # size not a multiple: unequal components
    ((8, 32, 24, 24), (2, 0), (2, 1), True, True),     # dilation on one axis only
])
def test_which_dilated_calls_take_the_winograd_route(x_shape, padding, dilation, forward, backward_filter):
    args = (x_shape, (32, 32, 3, 3), (1, 1), padding, dilation, 1, np.float32)
    assert winograd_cpu.applies(*args) is forward
    assert winograd_cpu.applies(*args, "backward_filter") is backward_filter
