"""Max and average pooling (1-D, 2-D, 3-D; forward and backward) on every
backend against the float64 reference, plus the tie and NaN rules of the
argmax, overlapping-window accumulation and determinism."""
import random

import numpy as np
import pytest

import gpucnn.functional as F
from gpucnn.testing import reference as ref
from test_conv import BACKENDS_DEFAULT, assert_close, make, numerical_grad, run  # noqa: F401 (fixture)

POOL_GPU_VERSIONS = (1, 2)   # must equal gpucnn.functional.pool_gpu.VERSIONS[...]

OPS = {nd: {name: getattr(F, f"{name.replace('_pool', f'_pool{nd}d')}")
            for name in ("max_pool", "max_pool_backward", "avg_pool", "avg_pool_backward")}
       for nd in (1, 2, 3)}


def tie_free(rng, shape, layout, dtype=np.float32):
    """A permutation of 0..size-1 (distinct values, exact in float32), maybe as a view."""
    values = rng.permutation(int(np.prod(shape))).astype(dtype)
    base = make(rng, shape, layout, dtype)
    base[...] = values.reshape(shape)
    return base


def pool_cases(nd, count, seed):
    """(N, C, spatial, kernel, stride or None, padding, layout); padding <= kernel // 2."""
    r = random.Random(seed)
    sizes = {1: (5, 8, 11, 16), 2: (5, 7, 8, 9, 12), 3: (4, 5, 7)}[nd]
    cases = []
    while len(cases) < count:
        spatial = tuple(r.choice(sizes) for _ in range(nd))
        kernel = tuple(r.choice((1, 2, 3, 5)) for _ in range(nd))
        stride = r.choice((None, r.randint(1, 3), tuple(r.randint(1, 3) for _ in range(nd))))
        padding = tuple(r.randint(0, k // 2) for k in kernel)
        if any(k > h + 2 * p for h, k, p in zip(spatial, kernel, padding)):
            continue
        cases.append((r.randint(1, 4), r.choice((1, 3, 16)), spatial, kernel, stride, padding,
                      r.choice(("contiguous", "transposed", "sliced"))))
    return cases


EDGE_CASES_2D = [
    (1, 1, (1, 1), (1, 1), None, (0, 0), "contiguous"),
    (2, 3, (8, 8), (2, 2), None, (0, 0), "contiguous"),        # the classic 2x2/2
    (2, 3, (9, 9), (3, 3), 2, (1, 1), "transposed"),           # overlapping, padded
    (2, 3, (7, 11), (3, 3), 1, (1, 1), "sliced"),              # maximal overlap
    (1, 16, (5, 5), (5, 5), None, (2, 2), "contiguous"),       # padding == kernel // 2
    (2, 3, (10, 7), (2, 5), (1, 3), (1, 2), "contiguous"),     # rectangular everything
]
CASES = {1: pool_cases(1, 10, 11), 2: pool_cases(2, 24, 12) + EDGE_CASES_2D, 3: pool_cases(3, 8, 13)}
ALL_CASES = [pytest.param(c, id=f"{len(c[2])}d-N{c[0]}C{c[1]}-x{c[2]}-k{c[3]}-s{c[4]}-p{c[5]}-{c[6]}")
             for nd in (1, 2, 3) for c in CASES[nd]]


@pytest.mark.parametrize("backend", BACKENDS_DEFAULT)
@pytest.mark.parametrize("case", ALL_CASES)
def test_max_pool_sweep(run, backend, case):
    n, c, spatial, kernel, stride, padding, layout = case
    ops = OPS[len(spatial)]
    rng = np.random.default_rng(0)
    x = tie_free(rng, (n, c) + spatial, layout)
    y_ref, arg_ref = ref.max_pool_ref(x, kernel, stride, padding)
    dy = make(rng, y_ref.shape, layout)
    saved = x.copy(), dy.copy()

    y, arg = run(backend, ops["max_pool"], x, kernel, stride, padding)
    assert_close(y, y_ref, np.float32)
    assert arg.dtype == np.int32 and arg.flags.c_contiguous
    np.testing.assert_array_equal(arg, arg_ref)
    dx_ref = ref.max_pool_backward_ref(dy, arg_ref, x.shape)
    # without the window geometry, and with it (the layers pass it)
    assert_close(run(backend, ops["max_pool_backward"], dy, arg_ref, x.shape), dx_ref, np.float32)
    assert_close(run(backend, ops["max_pool_backward"], dy, arg_ref, x.shape,
                     kernel_size=kernel, stride=stride, padding=padding), dx_ref, np.float32)
    np.testing.assert_array_equal(x, saved[0])
    np.testing.assert_array_equal(dy, saved[1])


@pytest.mark.parametrize("backend", BACKENDS_DEFAULT)
@pytest.mark.parametrize("case", ALL_CASES)
def test_avg_pool_sweep(run, backend, case):
    n, c, spatial, kernel, stride, padding, layout = case
    ops = OPS[len(spatial)]
    rng = np.random.default_rng(1)
    x = make(rng, (n, c) + spatial, layout)
    y_ref = ref.avg_pool_ref(x, kernel, stride, padding)
    dy = make(rng, y_ref.shape, layout)
    saved = x.copy(), dy.copy()
    assert_close(run(backend, ops["avg_pool"], x, kernel, stride, padding), y_ref, np.float32)
    assert_close(run(backend, ops["avg_pool_backward"], dy, x.shape, kernel, stride, padding),
                 ref.avg_pool_backward_ref(dy, x.shape, kernel, stride, padding), np.float32)
    np.testing.assert_array_equal(x, saved[0])
    np.testing.assert_array_equal(dy, saved[1])


@pytest.mark.parametrize("backend", BACKENDS_DEFAULT)
def test_pool_float64_keeps_dtype(run, backend):
    x = np.random.default_rng(2).standard_normal((2, 3, 7, 7))
    y, arg = run(backend, F.max_pool2d, x, 3, 2, 1)
    assert y.dtype == np.float64 and arg.dtype == np.int32
    assert run(backend, F.avg_pool2d, x, 3, 2, 1).dtype == np.float64
    np.testing.assert_array_equal(y, ref.max_pool_ref(x, 3, 2, 1)[0])


@pytest.mark.parametrize("backend", BACKENDS_DEFAULT)
def test_max_pool_ties_go_to_first_in_window(run, backend):
    """Constant input: every window's argmax is its first real (unpadded) element."""
    x = np.ones((1, 2, 7, 8), np.float32)
    y, arg = run(backend, F.max_pool2d, x, (3, 2), (2, 3), (1, 1))
    rows = [max(0, i * 2 - 1) for i in range(y.shape[2])]
    cols = [max(0, j * 3 - 1) for j in range(y.shape[3])]
    expected = np.array([[h * 8 + w for w in cols] for h in rows], np.int32)
    np.testing.assert_array_equal(arg, np.broadcast_to(expected, arg.shape))
    np.testing.assert_array_equal(y, 1)
    np.testing.assert_array_equal(arg, ref.max_pool_ref(x, (3, 2), (2, 3), (1, 1))[1])


@pytest.mark.parametrize("backend", BACKENDS_DEFAULT)
def test_max_pool_nan_wins_and_first_nan_stays(run, backend):
    nan = np.nan
    x = np.array([[[1, nan, 5, nan, 7, 2, 3, -np.inf]]], np.float32)
    y, arg = run(backend, F.max_pool1d, x, 4)
    assert np.isnan(y[0, 0, 0]) and arg[0, 0, 0] == 1      # NaN beats 5; the second NaN loses
    assert y[0, 0, 1] == 7 and arg[0, 0, 1] == 4
    x2 = np.array([[[[2, 9], [nan, 9]]]], np.float32)
    y2, arg2 = run(backend, F.max_pool2d, x2, 2)
    assert np.isnan(y2[0, 0, 0, 0]) and arg2[0, 0, 0, 0] == 2


@pytest.mark.parametrize("backend", BACKENDS_DEFAULT)
def test_max_pool_all_minus_inf_picks_a_real_element(run, backend):
    """Padding is -inf too, yet argmax must index the unpadded plane."""
    x = np.full((1, 1, 3, 3), -np.inf, np.float32)
    y, arg = run(backend, F.max_pool2d, x, 3, 1, 1)
    assert np.all(y == -np.inf)
    assert arg.min() >= 0 and arg.max() < 9
    np.testing.assert_array_equal(arg[0, 0, 1:, 1:], [[0, 1], [3, 4]])


@pytest.mark.parametrize("backend", BACKENDS_DEFAULT)
def test_max_pool_backward_accumulates_overlapping_windows(run, backend):
    """One peak seen by all 9 windows of a 3x3/1 pool: it receives the sum of dy."""
    x = np.zeros((1, 1, 5, 5), np.float32)
    x[0, 0, 2, 2] = 1
    y, arg = run(backend, F.max_pool2d, x, 3, 1)
    assert np.all(arg == 12)
    dy = np.arange(1, 10, dtype=np.float32).reshape(1, 1, 3, 3)
    dx = run(backend, F.max_pool2d_backward, dy, arg, x.shape)
    assert dx[0, 0, 2, 2] == 45 and np.count_nonzero(dx) == 1


@pytest.mark.parametrize("backend", BACKENDS_DEFAULT)
def test_max_pool_backward_is_deterministic(run, backend):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((8, 16, 17, 17)).astype(np.float32)
    _, arg = run(backend, F.max_pool2d, x, 3, 1, 1)
    dy = rng.standard_normal(arg.shape).astype(np.float32)
    runs = [run(backend, F.max_pool2d_backward, dy, arg, x.shape) for _ in range(5)]
    for other in runs[1:]:
        assert np.array_equal(runs[0], other)


@pytest.mark.parametrize("nd, spatial, kernel, stride, padding", [
    (1, (9,), (3,), 2, 1),
    (2, (6, 5), (3, 2), (2, 1), (1, 1)),
    (3, (4, 5, 4), (2, 3, 2), (1, 2, 1), (1, 1, 0)),
])
def test_pool_gradients_match_numerical(nd, spatial, kernel, stride, padding):
    """The backwards are the gradients of sum(y * g) (float64, tie-free x)."""
    ops = OPS[nd]
    rng = np.random.default_rng(nd)
    x = tie_free(rng, (1, 2) + spatial, "contiguous", np.float64)
    y, arg = ops["max_pool"](x, kernel, stride, padding)
    g = rng.standard_normal(y.shape)
    max_loss = lambda: float(np.sum(ops["max_pool"](x, kernel, stride, padding)[0] * g))  # noqa: E731
    avg_loss = lambda: float(np.sum(ops["avg_pool"](x, kernel, stride, padding) * g))  # noqa: E731
    np.testing.assert_allclose(ops["max_pool_backward"](g, arg, x.shape), numerical_grad(max_loss, x),
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ops["avg_pool_backward"](g, x.shape, kernel, stride, padding),
                               numerical_grad(avg_loss, x), rtol=1e-6, atol=1e-7)


def test_max_pool_backward_rejects_out_of_range_argmax():
    dy = np.ones((1, 1, 2, 2), np.float32)
    arg = np.array([[[[0, 1], [2, 16]]]], np.int32)
    with pytest.raises(ValueError, match=r"max_pool2d_backward.*argmax.*\(1, 1, 4, 4\)"):
        F.max_pool2d_backward(dy, arg, (1, 1, 4, 4))


# v2 (the default) against v1 on the GPU: a few rows per shape class, plus a
# misaligned array start (a contiguous view one element into its buffer).
V2_GPU_CASES = [
    (2, 3, (8, 8), (2, 2), None, (0, 0)), (2, 4, (9, 9), (3, 3), 2, (1, 1)),
    (1, 2, (6, 10), (2, 2), 2, (0, 0)), (2, 3, (7, 11), (3, 3), 1, (1, 1)),
    (1, 3, (9, 13), (2, 3), (1, 2), (1, 1)), (2, 2, (33,), (3,), 2, (1,)),
    (2, 16, (56, 56), (3, 3), 2, (1, 1)),     # stem-like pool, several blocks
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])   # float16: v2 half I/O, v1 widened
@pytest.mark.parametrize("offset", [0, 1])
@pytest.mark.parametrize("case", V2_GPU_CASES, ids=lambda c: "N{}C{}-x{}-k{}-s{}-p{}".format(*c))
def test_pool_v2_matches_v1_bitwise_on_gpu(case, offset, dtype):
    from gpucnn import backend as B
    n, c, spatial, kernel, stride, padding = case
    nd = len(spatial)
    ops = OPS[nd]
    rng = np.random.default_rng(2)
    x = rng.standard_normal((n, c) + spatial).astype(dtype)
    buf = B.cupy.empty(x.size + offset, dtype)
    gx = buf[offset:].reshape(x.shape)
    gx[...] = B.to_gpu(x)
    y_ref, a_ref = ref.max_pool_ref(x, kernel, stride, padding)
    dy = B.to_gpu(rng.standard_normal(y_ref.shape).astype(dtype))
    geom = dict(kernel_size=kernel, stride=stride, padding=padding)
    out = {}
    for v in (1, 2):
        y, a = ops["max_pool"](gx, kernel, stride, padding, version=v)
        out[v] = [B.to_cpu(t) for t in (
            y, a, ops["max_pool_backward"](dy, a, x.shape, version=v, **geom),
            ops["avg_pool"](gx, kernel, stride, padding, version=v),
            ops["avg_pool_backward"](dy, x.shape, kernel, stride, padding, version=v))]
    np.testing.assert_array_equal(out[2][1], a_ref)
    np.testing.assert_array_equal(out[2][0], y_ref.astype(dtype))
    for t1, t2 in zip(out[1], out[2]):
        assert t1.tobytes() == t2.tobytes()
    want = ref.avg_pool_ref(x, kernel, stride, padding)
    if dtype == np.float16:
        from gpucnn.precision import FLOAT16_TOLERANCE
        assert np.linalg.norm(out[2][3].astype(np.float64) - want) <= FLOAT16_TOLERANCE * np.linalg.norm(want)
    else:
        assert_close(out[2][3], want, dtype)


def test_pool_gpu_versions_are_all_tested():  # a registry check: no GPU needed
    from gpucnn.functional import pool_gpu
    assert all(tuple(v) == POOL_GPU_VERSIONS for v in pool_gpu.VERSIONS.values())


def test_pool_cases_cover_the_sweep_ranges():
    cases = CASES[2]
    assert {c[1] for c in cases} == {1, 3, 16} and {v for c in cases for v in c[3]} == {1, 2, 3, 5}
    assert any(c[4] is None for c in cases) and any(isinstance(c[4], tuple) for c in cases)
    assert any(p > 0 for c in cases for p in c[5])
    assert {c[6] for c in cases} == {"contiguous", "transposed", "sliced"}
