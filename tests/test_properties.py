"""Property-based tests (hypothesis) of every functional op against the float64
reference (issue 15, item 5), on the CPU path: conv forward / backward-data /
backward-filter and max / avg pooling forward / backward in 1-D, 2-D and 3-D,
float32 and float64, contiguous and strided (transposed, sliced) inputs, over
generated shapes, strides and paddings; and argument combinations, valid or
not, which must either give the documented output shape or raise
ValueError/TypeError (never another exception or a wrong shape).

The profile (examples, derandomized in CI) is registered in tests/conftest.py.
To cover a new op or option, add an entry to CONV_OPS / POOL_OPS (or a
strategy for the new argument) rather than a new test.
"""
import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, strategies as st  # noqa: E402

import gpucnn.functional as F  # noqa: E402
from gpucnn.testing import reference as ref  # noqa: E402

REL_TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
DTYPES = (np.float32, np.float64)
LAYOUTS = ("contiguous", "transposed", "sliced")
FN = {  # (family, direction, nd) -> function
    **{("conv", d, nd): getattr(F, f"conv{nd}d" + ("" if d == "forward" else f"_{d}"))
       for d in ("forward", "backward_data", "backward_filter") for nd in (1, 2, 3)},
    **{(f"{k}_pool", d, nd): getattr(F, f"{k}_pool{nd}d" + ("" if d == "forward" else "_backward"))
       for k in ("max", "avg") for d in ("forward", "backward") for nd in (1, 2, 3)},
}


def layout_view(a, layout):
    """`a`'s values as a contiguous array or a non-contiguous view."""
    if layout == "transposed":
        return np.ascontiguousarray(a.T).T
    if layout == "sliced":
        base = np.zeros(a.shape[:-1] + (2 * a.shape[-1] + 1,), a.dtype)
        base[..., 1::2] = a
        return base[..., 1::2]
    return a


def assert_matches(out, expected, dtype):
    assert out.dtype == dtype and out.shape == expected.shape and out.flags.c_contiguous
    err = np.linalg.norm(out.astype(np.float64) - expected)
    scale = max(np.linalg.norm(expected), 1e-30)
    assert err <= REL_TOL[np.dtype(dtype)] * scale, f"relative error {err / scale:.3g}"


def out_size(h, k, s, p):
    return (h + 2 * p - k) // s + 1


# ---- strategies ----------------------------------------------------------------------------------
@st.composite
def geometry(draw, pool=False):
    """(nd, N, C, K, spatial, kernel, stride, padding) with kernel <= padded input
    (pools: padding <= kernel // 2). stride/padding are ints or per-dim tuples."""
    nd = draw(st.integers(1, 3))
    top = {1: 9, 2: 7, 3: 4}[nd]
    spatial = tuple(draw(st.integers(1, top)) for _ in range(nd))
    padding = tuple(draw(st.integers(0, 2)) for _ in range(nd))
    # 1 <= kernel <= min(4, h + 2p); pools also need 2p <= kernel (4 >= 2p since p <= 2)
    kernel = tuple(draw(st.integers(max(1, 2 * p) if pool else 1, min(4, h + 2 * p)))
                   for h, p in zip(spatial, padding))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    as_int = draw(st.booleans())
    if as_int and len(set(stride)) == 1:
        stride = stride[0]
    if as_int and len(set(padding)) == 1:
        padding = padding[0]
    n, c, k = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    return nd, n, c, k, spatial, kernel, stride, padding


def arrays(seed, shape, dtype, layout, distinct=False):
    rng = np.random.default_rng(seed)
    size = int(np.prod(shape))
    if distinct:  # tie-free values for max pooling (the argmax is then unique)
        a = (rng.permutation(size) - size / 2).reshape(shape) / max(size, 1)
    else:
        a = rng.standard_normal(shape)
    return layout_view(a.astype(dtype), layout)


common = dict(dtype=st.sampled_from(DTYPES), layout=st.sampled_from(LAYOUTS), seed=st.integers(0, 2 ** 16))


# ---- correctness against the reference -------------------------------------------------------------
@given(g=geometry(), **common)
def test_conv_all_directions_match_the_reference(g, dtype, layout, seed):
    nd, n, c, k, spatial, kernel, stride, padding = g
    x = arrays(seed, (n, c) + spatial, dtype, layout)
    w = arrays(seed + 1, (k, c) + kernel, dtype, layout)
    b = arrays(seed + 2, (k,), dtype, "contiguous")
    y_ref = ref.conv_forward_ref(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), stride, padding)
    assert_matches(FN["conv", "forward", nd](x, w, b, stride, padding), y_ref, dtype)
    dy = arrays(seed + 3, y_ref.shape, dtype, layout)
    assert_matches(FN["conv", "backward_data", nd](dy, w, x.shape, stride, padding),
                   ref.conv_backward_data_ref(dy.astype(np.float64), w.astype(np.float64), x.shape, stride,
                                              padding), dtype)
    assert_matches(FN["conv", "backward_filter", nd](dy, x, w.shape, stride, padding),
                   ref.conv_backward_filter_ref(dy.astype(np.float64), x.astype(np.float64), w.shape, stride,
                                                padding), dtype)


@given(g=geometry(pool=True), default_stride=st.booleans(), **common)
def test_max_pool_forward_and_backwards_match_the_reference(g, default_stride, dtype, layout, seed):
    nd, n, c, _, spatial, kernel, stride, padding = g
    stride = None if default_stride else stride
    x = arrays(seed, (n, c) + spatial, dtype, layout, distinct=True)
    y_ref, arg_ref = ref.max_pool_ref(x.astype(np.float64), kernel, stride, padding)
    y, arg = FN["max_pool", "forward", nd](x, kernel, stride, padding)
    assert_matches(y, y_ref, dtype)
    assert arg.dtype == np.int32 and arg.shape == y.shape
    np.testing.assert_array_equal(arg, arg_ref)
    dy = arrays(seed + 1, y.shape, dtype, layout)
    dx_ref = ref.max_pool_backward_ref(dy.astype(np.float64), arg_ref, x.shape)
    backward = FN["max_pool", "backward", nd]
    assert_matches(backward(dy, arg, x.shape), dx_ref, dtype)  # route (no geometry)
    assert_matches(backward(dy, arg, x.shape, kernel_size=kernel, stride=stride, padding=padding), dx_ref, dtype)


@given(g=geometry(pool=True), default_stride=st.booleans(), **common)
def test_avg_pool_forward_and_backward_match_the_reference(g, default_stride, dtype, layout, seed):
    nd, n, c, _, spatial, kernel, stride, padding = g
    stride = None if default_stride else stride
    x = arrays(seed, (n, c) + spatial, dtype, layout)
    y_ref = ref.avg_pool_ref(x.astype(np.float64), kernel, stride, padding)
    assert_matches(FN["avg_pool", "forward", nd](x, kernel, stride, padding), y_ref, dtype)
    dy = arrays(seed + 1, y_ref.shape, dtype, layout)
    assert_matches(FN["avg_pool", "backward", nd](dy, x.shape, kernel, stride, padding),
                   ref.avg_pool_backward_ref(dy.astype(np.float64), x.shape, kernel, stride, padding), dtype)


# ---- any argument combination: the documented shape or a ValueError/TypeError ----------------------
@st.composite
def loose_call(draw):
    """An op with arguments drawn loosely (negative/zero strides, negative or
    oversized padding and kernels, channel mismatches, wrong ndim, integer or
    mixed dtypes) and the output shape the contract gives, or None when the
    contract says the call is invalid."""
    family = draw(st.sampled_from(("conv", "max_pool", "avg_pool")))
    nd = draw(st.integers(1, 3))
    spatial = tuple(draw(st.integers(0, 5)) for _ in range(nd))
    kernel = tuple(draw(st.integers(0, 6)) for _ in range(nd))
    stride = draw(st.integers(-1, 3))
    padding = draw(st.integers(-1, 3))
    n, c = draw(st.integers(0, 2)), draw(st.integers(1, 2))
    c_w = draw(st.sampled_from((c, c + 1)))
    x_ndim = draw(st.sampled_from((nd + 2, nd + 2, nd + 1, nd + 3)))
    dtypes = draw(st.sampled_from(((np.float32, np.float32), (np.float64, np.float64), (np.float32, np.float64),
                                   (np.int32, np.int32))))
    x = np.ones(((n, c) + spatial + (2,) * (x_ndim - nd - 2))[:x_ndim], dtypes[0])
    valid = (x_ndim == nd + 2 and stride >= 1 and padding >= 0 and all(k >= 1 for k in kernel)
             and all(k <= h + 2 * padding for k, h in zip(kernel, spatial)) and np.dtype(dtypes[0]).kind == "f")
    if family == "conv":
        w = np.ones((2, c_w) + kernel, dtypes[1])
        valid = valid and c_w == c and dtypes[0] == dtypes[1]
        call = (lambda: FN["conv", "forward", nd](x, w, None, stride, padding))
        shape = (n, 2)
    else:
        # pools: every window must hold a real element (found by this test: an empty
        # spatial dimension gave max_pool y = 1 and argmax -1)
        valid = valid and all(2 * padding <= k for k in kernel) and all(h >= 1 for h in spatial)
        fn = FN[family, "forward", nd]
        call = (lambda: fn(x, kernel, stride, padding)[0] if family == "max_pool" else fn(x, kernel, stride, padding))
        shape = (n, c)
    expected = shape + tuple(out_size(h, k, stride, padding) for h, k in zip(spatial, kernel)) if valid else None
    return f"{family}{nd}d x{x.shape} {x.dtype} kernel={kernel} stride={stride} padding={padding}", call, expected


@given(case=loose_call())
def test_any_arguments_give_the_documented_shape_or_a_clear_error(case):
    what, call, expected = case
    if expected is None:
        with pytest.raises((ValueError, TypeError)):
            call()
    else:
        out = call()
        assert out.shape == expected, what
