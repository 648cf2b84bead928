"""Conv features (issue 16) on every backend against the float64 reference:
dilation and groups in every conv direction, padding="same"/"valid",
transposed convolution and its two backward ops, adaptive average/max
pooling and dilated max pooling; float64 numerical gradient checks, the
argument errors, and parity with PyTorch's CPU ops where torch imports.

GPU cases (marked gpu) run the same sweeps on CuPy arrays with NaN-poisoned
outputs (an element left unwritten fails); the kernels they reach are
"compiled and emulated, not yet run on a GPU" until a GPU session runs them.
"""
import random
import zlib

import numpy as np
import pytest

import gpucnn.functional as F
from gpucnn.testing import reference as ref
from test_conv import BACKENDS_DEFAULT, assert_close, make, numerical_grad, run  # noqa: F401 (fixture)
from test_pool import tie_free

CONV = {nd: (getattr(F, f"conv{nd}d"), getattr(F, f"conv{nd}d_backward_data"),
             getattr(F, f"conv{nd}d_backward_filter")) for nd in (1, 2, 3)}
TRANSPOSE = {nd: (getattr(F, f"conv_transpose{nd}d"), getattr(F, f"conv_transpose{nd}d_backward_data"),
                  getattr(F, f"conv_transpose{nd}d_backward_filter")) for nd in (1, 2, 3)}
ADAPTIVE = {nd: (getattr(F, f"adaptive_avg_pool{nd}d"), getattr(F, f"adaptive_avg_pool{nd}d_backward"),
                 getattr(F, f"adaptive_max_pool{nd}d"), getattr(F, f"adaptive_max_pool{nd}d_backward"))
            for nd in (1, 2, 3)}


def _span(k, d):
    return d * (k - 1) + 1


def feature_cases(nd, count, seed):
    """(N, C, K, groups, spatial, kernel, stride, padding, dilation, layout):
    dilation 1-3, groups 1, 2 or C (depthwise, K a multiple of C), odd sizes,
    stride 1-2, int/tuple/"same"/"valid" padding, batch 1 included."""
    r = random.Random(seed)
    sizes = {1: (5, 7, 11, 16), 2: (5, 7, 9, 10), 3: (4, 5, 7)}[nd]
    cases = []
    while len(cases) < count:
        C = r.choice((1, 2, 4, 6))
        groups = r.choice(sorted({1, C} | ({2} if C % 2 == 0 else set())))
        K = groups * r.choice((1, 2, 3))
        spatial = tuple(r.choice(sizes) for _ in range(nd))
        kernel = tuple(r.choice((1, 2, 3)) for _ in range(nd))
        dilation = r.randint(1, 3) if r.random() < 0.6 else tuple(r.randint(1, 3) for _ in range(nd))
        dil = (dilation,) * nd if isinstance(dilation, int) else dilation
        kind = r.random()
        if kind < 0.3:
            padding, stride = "same", 1
        elif kind < 0.4:
            padding, stride = "valid", r.randint(1, 2)
        else:
            padding, stride = r.randint(0, 2), (r.randint(1, 2) if r.random() < 0.5
                                               else tuple(r.randint(1, 2) for _ in range(nd)))
        pads = (0,) * nd if isinstance(padding, str) else (padding,) * nd
        if padding != "same" and any(_span(k, d) > h + 2 * p for h, k, d, p in zip(spatial, kernel, dil, pads)):
            continue
        cases.append((r.choice((1, 2, 3)), C, K, groups, spatial, kernel, stride, padding, dilation,
                      r.choice(("contiguous", "transposed", "sliced"))))
    return cases


def _check_conv(run, backend, case, dtype=np.float32):
    N, C, K, groups, spatial, kernel, stride, padding, dilation, layout = case
    fwd, bwd_data, bwd_filter = CONV[len(spatial)]
    rng = np.random.default_rng(zlib.crc32(repr(case).encode()))
    x = make(rng, (N, C) + spatial, layout, dtype)
    w = make(rng, (K, C // groups) + kernel, layout, dtype)
    b = rng.standard_normal(K).astype(dtype)
    geo = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    y_ref = ref.conv_forward_ref(x, w, b, **geo)
    assert_close(run(backend, fwd, x, w, b, **geo), y_ref, dtype)
    if padding == "same":
        assert y_ref.shape[2:] == spatial
    dy = make(rng, y_ref.shape, layout, dtype)
    assert_close(run(backend, bwd_data, dy, w, x.shape, **geo),
                 ref.conv_backward_data_ref(dy, w, x.shape, **geo), dtype)
    assert_close(run(backend, bwd_filter, dy, x, w.shape, **geo),
                 ref.conv_backward_filter_ref(dy, x, w.shape, **geo), dtype)


@pytest.mark.parametrize("backend", BACKENDS_DEFAULT)
@pytest.mark.parametrize("case", feature_cases(2, 24, 16) + feature_cases(1, 8, 17) + feature_cases(3, 6, 18),
                         ids=str)
def test_conv_dilation_groups_same_sweep(run, backend, case):
    _check_conv(run, backend, case)


@pytest.mark.parametrize("case", feature_cases(2, 4, 19), ids=str)
def test_conv_features_float64(run, case):
    _check_conv(run, "cpu", case, np.float64)


def test_feature_cases_cover_the_sweep():
    cases = feature_cases(2, 24, 16) + feature_cases(1, 8, 17) + feature_cases(3, 6, 18)
    dil = {d for c in cases for d in ((c[8],) if isinstance(c[8], int) else c[8])}
    assert dil == {1, 2, 3}
    assert any(c[3] == c[1] > 2 for c in cases), "no depthwise case"
    assert any(c[3] == 2 for c in cases) and any(c[3] == 1 for c in cases)
    def dils(c):
        return (c[8],) * len(c[4]) if isinstance(c[8], int) else c[8]
    assert any(c[7] == "same" and any(d * (k - 1) % 2 for k, d in zip(c[5], dils(c))) for c in cases), \
        "no asymmetric 'same' (odd total padding)"
    assert any(c[7] == "valid" for c in cases) and any(c[0] == 1 for c in cases)
    assert any(c[6] != 1 for c in cases) and {c[9] for c in cases} == {"contiguous", "transposed", "sliced"}


def transpose_cases(nd, count, seed):
    """(N, C_in, K, groups, spatial, kernel, stride, padding, output_padding, dilation, layout);
    output_padding < max(stride, dilation), as PyTorch allows."""
    r = random.Random(seed)
    cases = []
    while len(cases) < count:
        groups = r.choice((1, 2, 3))
        C, K = groups * r.choice((1, 2)), groups * r.choice((1, 2))
        spatial = tuple(r.choice((1, 3, 4, 5)) for _ in range(nd))
        kernel = tuple(r.choice((1, 2, 3)) for _ in range(nd))
        stride = tuple(r.randint(1, 3) for _ in range(nd))
        dilation = tuple(r.randint(1, 2) for _ in range(nd))
        output_padding = tuple(r.randint(0, max(s, d) - 1) for s, d in zip(stride, dilation))
        padding = tuple(r.randint(0, 2) for _ in range(nd))
        out = [F.transposed_output_size(h, k, s, p, o, d) for h, k, s, p, o, d in
               zip(spatial, kernel, stride, padding, output_padding, dilation)]
        if min(out) < 1:
            continue
        cases.append((r.choice((1, 2)), C, K, groups, spatial, kernel, stride, padding, output_padding,
                      dilation, r.choice(("contiguous", "transposed", "sliced"))))
    return cases


@pytest.mark.parametrize("backend", BACKENDS_DEFAULT)
@pytest.mark.parametrize("case", transpose_cases(2, 14, 20) + transpose_cases(1, 6, 21) + transpose_cases(3, 4, 22),
                         ids=str)
def test_conv_transpose_sweep(run, backend, case):
    N, C, K, groups, spatial, kernel, stride, padding, output_padding, dilation, layout = case
    fwd, bwd_data, bwd_filter = TRANSPOSE[len(spatial)]
    rng = np.random.default_rng(zlib.crc32(repr(case).encode()))
    x = make(rng, (N, C) + spatial, layout)
    w = make(rng, (C, K // groups) + kernel, layout)
    b = rng.standard_normal(K).astype(np.float32)
    geo = (stride, padding, output_padding, groups, dilation)
    y_ref = ref.conv_transpose_ref(x, w, b, *geo)
    assert_close(run(backend, fwd, x, w, b, *geo), y_ref, np.float32)
    dy = make(rng, y_ref.shape, layout)
    assert_close(run(backend, bwd_data, dy, w, x.shape, *geo),
                 ref.conv_transpose_backward_data_ref(dy, w, x.shape, *geo), np.float32)
    assert_close(run(backend, bwd_filter, dy, x, w.shape, *geo),
                 ref.conv_transpose_backward_filter_ref(dy, x, w.shape, *geo), np.float32)


def test_conv_transpose_is_the_adjoint_of_conv():
    """<conv(u), v> == <u, conv_transpose(v)> for the same weight and geometry."""
    rng = np.random.default_rng(3)
    u = rng.standard_normal((2, 4, 9, 8))
    w = rng.standard_normal((6, 2, 3, 2))
    geo = dict(stride=2, padding=1, dilation=2, groups=2)
    y = F.conv2d(u, w, **geo)
    v = rng.standard_normal(y.shape)
    # output_padding makes the transposed output the size of u
    t = F.conv_transpose2d(v, w, output_padding=(0, 1), **geo)
    assert t.shape == u.shape
    assert np.isclose(np.sum(y * v), np.sum(u * t), rtol=1e-12)


ADAPTIVE_CASES = [
    ((2, 3, 7), 3), ((1, 2, 10), (4,)), ((2, 2, 5), 8), ((1, 1, 6), 6),
    ((2, 3, 7, 10), 1), ((1, 2, 9, 9), (4, 5)), ((2, 1, 5, 6), (None, 4)), ((1, 2, 3, 4), (5, 7)),
    ((1, 2, 4, 5, 6), 2), ((2, 1, 5, 3, 7), (3, None, 2)),
]


@pytest.mark.parametrize("backend", BACKENDS_DEFAULT)
@pytest.mark.parametrize("shape, output_size", ADAPTIVE_CASES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "sliced"])
def test_adaptive_pool_sweep(run, backend, shape, output_size, layout):
    nd = len(shape) - 2
    avg, avg_backward, mx, mx_backward = ADAPTIVE[nd]
    rng = np.random.default_rng(len(shape) * 7 + shape[-1])
    x = tie_free(rng, shape, layout)
    y_ref = ref.adaptive_avg_pool_ref(x, output_size)
    assert_close(run(backend, avg, x, output_size), y_ref, np.float32)
    dy = make(rng, y_ref.shape, layout)
    assert_close(run(backend, avg_backward, dy, shape), ref.adaptive_avg_pool_backward_ref(dy, shape), np.float32)
    (y, arg), (y_r, arg_r) = run(backend, mx, x, output_size), ref.adaptive_max_pool_ref(x, output_size)
    assert_close(y, y_r, np.float32)
    assert arg.dtype == np.int32 and np.array_equal(arg, arg_r)
    assert_close(run(backend, mx_backward, dy, arg_r, shape), ref.max_pool_backward_ref(dy, arg_r, shape),
                 np.float32)


def test_adaptive_max_pool_ties_and_nan_follow_max_pool():
    x = np.zeros((1, 1, 2, 4), np.float32)          # all ties: the first of each window
    _, arg = F.adaptive_max_pool2d(x, (1, 2))
    assert arg.tolist() == [[[[0, 2]]]]
    x[0, 0, 1, 3] = np.nan
    y, arg = F.adaptive_max_pool2d(x, 1)
    assert np.isnan(y).all() and arg.item() == 7


@pytest.mark.parametrize("backend", BACKENDS_DEFAULT)
@pytest.mark.parametrize("shape, kernel, stride, padding, dilation", [
    ((2, 3, 11), 3, 1, 1, 2), ((1, 2, 9, 10), 3, 2, 1, 2), ((2, 1, 9, 8), (2, 3), 1, (1, 0), (3, 2)),
    ((1, 2, 7, 7), 2, None, 0, 3), ((1, 2, 7, 6, 8), 2, 1, 1, 2),
], ids=str)
def test_dilated_max_pool(run, backend, shape, kernel, stride, padding, dilation):
    nd = len(shape) - 2
    fwd, bwd = getattr(F, f"max_pool{nd}d"), getattr(F, f"max_pool{nd}d_backward")
    rng = np.random.default_rng(11)
    x = tie_free(rng, shape, "sliced")
    y_r, arg_r = ref.max_pool_ref(x, kernel, stride, padding, dilation)
    y, arg = run(backend, fwd, x, kernel, stride, padding, dilation)
    assert_close(y, y_r, np.float32)
    assert np.array_equal(arg, arg_r)
    dy = make(rng, y_r.shape, "contiguous")
    geo = dict(kernel_size=kernel, stride=stride, padding=padding, dilation=dilation)
    assert_close(run(backend, bwd, dy, arg_r, shape, **geo), ref.max_pool_backward_ref(dy, arg_r, shape),
                 np.float32)


# ---------------------------------------------------------------------------
# float64 numerical gradients

@pytest.mark.parametrize("nd, spatial, kernel, geo", [
    (1, (9,), (3,), dict(stride=2, padding=2, dilation=2, groups=3)),
    (2, (6, 7), (3, 2), dict(padding="same", dilation=(1, 3), groups=3)),
    (2, (7, 6), (2, 3), dict(stride=(1, 2), padding=1, dilation=2, groups=1)),
    (3, (4, 5, 5), (2, 2, 3), dict(padding="same", dilation=2, groups=3)),
])
def test_conv_feature_gradients_match_numerical(nd, spatial, kernel, geo):
    fwd, bwd_data, bwd_filter = CONV[nd]
    rng = np.random.default_rng(nd)
    x = rng.standard_normal((2, 3) + spatial)
    w = rng.standard_normal((6, 3 // geo["groups"]) + kernel)
    g = rng.standard_normal(fwd(x, w, None, **geo).shape)
    loss = lambda: float(np.sum(fwd(x, w, None, **geo) * g))  # noqa: E731
    np.testing.assert_allclose(bwd_data(g, w, x.shape, **geo), numerical_grad(loss, x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(bwd_filter(g, x, w.shape, **geo), numerical_grad(loss, w), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("nd, spatial, kernel, geo", [
    (1, (5,), (3,), dict(stride=2, padding=1, output_padding=1, groups=2, dilation=1)),
    (2, (4, 3), (3, 2), dict(stride=(2, 1), padding=(1, 0), output_padding=(1, 1), groups=2, dilation=(1, 2))),
    (3, (3, 2, 3), (2, 2, 2), dict(stride=2, padding=0, output_padding=0, groups=1, dilation=1)),
])
def test_conv_transpose_gradients_match_numerical(nd, spatial, kernel, geo):
    fwd, bwd_data, bwd_filter = TRANSPOSE[nd]
    rng = np.random.default_rng(nd + 10)
    x = rng.standard_normal((2, 4) + spatial)
    w = rng.standard_normal((4, 3) + kernel)
    b = rng.standard_normal(3 * geo["groups"])
    g = rng.standard_normal(fwd(x, w, b, **geo).shape)
    loss = lambda: float(np.sum(fwd(x, w, b, **geo) * g))  # noqa: E731
    np.testing.assert_allclose(bwd_data(g, w, x.shape, **geo), numerical_grad(loss, x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(bwd_filter(g, x, w.shape, **geo), numerical_grad(loss, w), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(F.conv_backward_bias(g), numerical_grad(loss, b), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("shape, output_size", [((2, 2, 7), 3), ((1, 2, 5, 7), (3, 4)), ((1, 1, 3, 4, 5), (2, 3, 2))])
def test_adaptive_pool_gradients_match_numerical(shape, output_size):
    nd = len(shape) - 2
    avg, avg_backward, mx, mx_backward = ADAPTIVE[nd]
    rng = np.random.default_rng(nd)
    x = rng.permutation(int(np.prod(shape))).reshape(shape) / 7.0   # distinct: no ties at the kinks
    g = rng.standard_normal(avg(x, output_size).shape)
    np.testing.assert_allclose(avg_backward(g, x.shape),
                               numerical_grad(lambda: float(np.sum(avg(x, output_size) * g)), x),
                               rtol=1e-6, atol=1e-7)
    _, arg = mx(x, output_size)
    np.testing.assert_allclose(mx_backward(g, arg, x.shape),
                               numerical_grad(lambda: float(np.sum(mx(x, output_size)[0] * g)), x),
                               rtol=1e-6, atol=1e-7)


def test_dilated_max_pool_gradient_matches_numerical():
    rng = np.random.default_rng(4)
    x = rng.permutation(2 * 9 * 8).reshape(1, 2, 9, 8) / 5.0
    geo = dict(kernel_size=3, stride=1, padding=1, dilation=2)
    y, arg = F.max_pool2d(x, **geo)
    g = rng.standard_normal(y.shape)
    np.testing.assert_allclose(F.max_pool2d_backward(g, arg, x.shape, **geo),
                               numerical_grad(lambda: float(np.sum(F.max_pool2d(x, **geo)[0] * g)), x),
                               rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------
# argument errors: ValueError/TypeError naming the op and the shapes

def _x(*shape):
    return np.zeros(shape, np.float32)


@pytest.mark.parametrize("call, match", [
    (lambda: F.conv2d(_x(1, 6, 5, 5), _x(4, 3, 3, 3), groups=4), r"conv2d: groups=4 must divide.*C=6.*K=4"),
    (lambda: F.conv2d(_x(1, 6, 5, 5), _x(9, 3, 3, 3), groups=2), r"conv2d: groups=2 must divide.*K=9"),
    (lambda: F.conv2d(_x(1, 6, 5, 5), _x(4, 2, 3, 3), groups=2), r"conv2d: channel mismatch.*groups=2.*\(4, 2, 3, 3\)"),
    (lambda: F.conv2d(_x(1, 3, 5, 5), _x(4, 3, 3, 3), groups=0), r"conv2d: groups must be >= 1"),
    (lambda: F.conv2d(_x(1, 3, 5, 5), _x(4, 3, 3, 3), stride=2, padding="same"),
     r"conv2d: padding='same' needs stride 1.*\(1, 3, 5, 5\)"),
    (lambda: F.conv1d(_x(1, 3, 5), _x(4, 3, 3), padding="full"), r"conv1d: padding must be .*'same'"),
    (lambda: F.conv2d(_x(1, 3, 5, 5), _x(4, 3, 3, 3), dilation=0), r"conv2d: dilation must be >= 1"),
    (lambda: F.conv2d(_x(1, 3, 5, 5), _x(4, 3, 3, 3), dilation=3), r"conv2d: kernel .* dilation .*larger"),
    (lambda: F.conv2d_backward_data(_x(1, 4, 5, 5), _x(4, 3, 3, 3), (1, 3, 5, 5), 2, "same"),
     r"conv2d_backward_data: padding='same' needs stride 1"),
    (lambda: F.conv_transpose2d(_x(1, 4, 5, 5), _x(4, 2, 3, 3), stride=2, output_padding=2),
     r"conv_transpose2d: output_padding \(2, 2\) must be .*smaller than either stride \(2, 2\) or dilation"),
    (lambda: F.conv_transpose1d(_x(1, 4, 5), _x(4, 2, 3), output_padding=1),
     r"conv_transpose1d: output_padding"),
    (lambda: F.conv_transpose2d(_x(1, 4, 5, 5), _x(4, 2, 3, 3), groups=3), r"conv_transpose2d: groups=3 must divide"),
    (lambda: F.conv_transpose2d(_x(1, 3, 5, 5), _x(4, 2, 3, 3)), r"conv_transpose2d: channel mismatch.*C_in=3"),
    (lambda: F.conv_transpose2d(_x(1, 4, 5, 5), _x(4, 2, 3, 3), padding="same"), r"conv_transpose2d: padding"),
    (lambda: F.conv_transpose2d(_x(1, 4, 1, 1), _x(4, 2, 1, 1), padding=1), r"conv_transpose2d: output size"),
    (lambda: F.conv_transpose2d(_x(1, 4, 5, 5), _x(4, 2, 3, 3), _x(3)), r"conv_transpose2d: bias must have shape \(2,\)"),
    (lambda: F.conv_transpose2d_backward_data(_x(1, 2, 6, 6), _x(4, 2, 3, 3), (1, 4, 5, 5)),
     r"conv_transpose2d_backward_data: output gradient dy has shape \(1, 2, 6, 6\), expected \(1, 2, 7, 7\)"),
    (lambda: F.adaptive_avg_pool2d(_x(1, 3, 5, 5), 0), r"adaptive_avg_pool2d: output_size must be positive"),
    (lambda: F.adaptive_max_pool2d(_x(1, 3, 5, 5), (2, 2, 2)), r"adaptive_max_pool2d: output_size must be"),
    (lambda: F.adaptive_avg_pool1d(_x(1, 3, 5, 5), 2), r"adaptive_avg_pool1d: input x must be 3-D"),
    (lambda: F.adaptive_avg_pool1d(_x(1, 3, 5), None), r"adaptive_avg_pool1d: output_size must be"),
    (lambda: F.adaptive_avg_pool2d_backward(_x(1, 3, 2, 2), (1, 4, 5, 5)), r"adaptive_avg_pool2d_backward: dy shape"),
    (lambda: F.max_pool2d(_x(1, 3, 5, 5), 3, dilation=3), r"max_pool2d: kernel .*dilation.*larger"),
    (lambda: F.max_pool2d(_x(1, 3, 5, 5), 3, dilation=0), r"max_pool2d: dilation must be >= 1"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_feature_argument_errors(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_groups_must_be_an_int():
    with pytest.raises(TypeError, match="conv2d: groups must be an int"):
        F.conv2d(_x(1, 2, 5, 5), _x(2, 1, 3, 3), groups=2.0)


# ---------------------------------------------------------------------------
# parity with PyTorch's CPU ops (skipped where torch does not import)

def _torch():
    return pytest.importorskip("torch")


@pytest.mark.parametrize("nd, geo", [
    (1, dict(stride=2, padding=3, dilation=3, groups=2)),
    (2, dict(padding="same", dilation=(2, 1), groups=4)),
    (2, dict(padding="same", groups=1)),
    (2, dict(padding="valid", stride=2, dilation=2, groups=2)),
    (3, dict(padding="same", dilation=2, groups=4)),
])
def test_conv_matches_torch(nd, geo):
    torch = _torch()
    rng = np.random.default_rng(nd)
    x = rng.standard_normal((2, 4) + (9, 8, 7)[:nd])
    w = rng.standard_normal((8, 4 // geo["groups"]) + (3, 2, 3)[:nd])
    b = rng.standard_normal(8)
    fwd, bwd_data, bwd_filter = CONV[nd]
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    yt = getattr(torch.nn.functional, f"conv{nd}d")(xt, wt, bt, **geo)
    g = rng.standard_normal(tuple(yt.shape))
    yt.backward(torch.tensor(g))
    np.testing.assert_allclose(fwd(x, w, b, **geo), yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(bwd_data(g, w, x.shape, **geo), xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(bwd_filter(g, x, w.shape, **geo), wt.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("nd, geo", [
    (1, dict(stride=3, padding=1, output_padding=2, groups=2, dilation=1)),
    (2, dict(stride=(2, 1), padding=(1, 2), output_padding=(1, 1), groups=4, dilation=(1, 2))),
    (3, dict(stride=2, padding=1, output_padding=1, groups=1, dilation=2)),
])
def test_conv_transpose_matches_torch(nd, geo):
    torch = _torch()
    rng = np.random.default_rng(nd)
    x = rng.standard_normal((2, 4) + (5, 4, 3)[:nd])
    w = rng.standard_normal((4, 2) + (3, 2, 2)[:nd])
    K = w.shape[1] * geo["groups"]
    b = rng.standard_normal(K)
    fwd, bwd_data, bwd_filter = TRANSPOSE[nd]
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    yt = getattr(torch.nn.functional, f"conv_transpose{nd}d")(xt, wt, bt, **geo)
    g = rng.standard_normal(tuple(yt.shape))
    yt.backward(torch.tensor(g))
    np.testing.assert_allclose(fwd(x, w, b, **geo), yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(bwd_data(g, w, x.shape, **geo), xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(bwd_filter(g, x, w.shape, **geo), wt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(F.conv_backward_bias(g), bt.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape, output_size", ADAPTIVE_CASES, ids=str)
def test_adaptive_pools_match_torch(shape, output_size):
    torch = _torch()
    nd = len(shape) - 2
    avg, _, mx, _ = ADAPTIVE[nd]
    x = np.random.default_rng(1).standard_normal(shape)
    tf = torch.nn.functional
    np.testing.assert_allclose(avg(x, output_size),
                               getattr(tf, f"adaptive_avg_pool{nd}d")(torch.tensor(x), output_size).numpy(),
                               rtol=1e-12, atol=1e-14)
    y, arg = mx(x, output_size)
    yt, at = getattr(tf, f"adaptive_max_pool{nd}d")(torch.tensor(x), output_size, return_indices=True)
    np.testing.assert_array_equal(y, yt.numpy())
    np.testing.assert_array_equal(arg, at.numpy())


def test_dilated_max_pool_matches_torch():
    torch = _torch()
    x = np.random.default_rng(2).standard_normal((2, 3, 11, 9))
    y, arg = F.max_pool2d(x, (3, 2), (2, 1), (1, 1), (2, 3))
    yt, at = torch.nn.functional.max_pool2d(torch.tensor(x), (3, 2), (2, 1), (1, 1), (2, 3), return_indices=True)
    np.testing.assert_array_equal(y, yt.numpy())
    np.testing.assert_array_equal(arg, at.numpy())
