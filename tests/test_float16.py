"""float16 arrays in every functional op, on the CPU and on the emulated GPU
path: float32 accumulation, float16 result.

Tolerance. The inputs are float16 values, and the float64 reference is run
on exactly those values (float16 -> float64 is exact), so the only errors are
the float32 sums (relative ~1e-7 times a small growth factor) and the final
rounding to float16, at most the unit roundoff u = 2**-11 = 4.9e-4 relative
per element. The relative L2 error is therefore at most about u; we assert
<= 1e-3 (2u, leaving room for the float32 sums, which the float32 tests bound
at 1e-5). Max pooling and its backward route single values: exact.
"""
import numpy as np
import pytest

import gpucnn.functional as F
from gpucnn import precision
from gpucnn.testing import reference as ref

from test_kernels_emulated import cxx, dev, emulator_build, run  # noqa: F401  (fixtures, helper)

HALF_TOL = precision.FLOAT16_TOLERANCE
H = np.float16


def rel_l2(out, expected):
    return np.linalg.norm(out.astype(np.float64) - expected) / np.linalg.norm(expected)


def check(out, expected):
    assert out.dtype == H and out.shape == expected.shape
    assert np.all(np.isfinite(out))
    err = rel_l2(out, expected)
    assert err <= HALF_TOL, f"relative L2 error {err:.3g}"
    return err


# (N, C, K, spatial, kernel, stride, padding)
CONV_CASES = [
    (1, 3, 5, (9,), (3,), 2, 1),
    (2, 3, 4, (7, 9), (3, 2), (2, 1), (1, 0)),
    (1, 5, 70, (6, 5), (3, 3), 1, 1),          # K > 64: two row tiles of the GPU v2 kernel
    (1, 2, 3, (5, 6, 5), (3, 2, 3), 1, 1),
]
NAMES = {1: "conv1d", 2: "conv2d", 3: "conv3d"}


def conv_problem(case):
    n, c, k, spatial, kernel, stride, padding = case
    rng = np.random.default_rng(len(spatial))
    x = rng.standard_normal((n, c) + spatial).astype(H)
    w = rng.standard_normal((k, c) + kernel).astype(H)
    b = rng.standard_normal(k).astype(H)
    dy = rng.standard_normal(ref.conv_forward_ref(x, w, None, stride, padding).shape).astype(H)
    return x, w, b, dy, stride, padding


def conv_results(case, call):
    """(result, float64 reference) for each direction; call(fn, *args) runs the op."""
    x, w, b, dy, stride, padding = conv_problem(case)
    name = NAMES[len(case[3])]
    return [
        (call(getattr(F, name), x, w, b, stride, padding), ref.conv_forward_ref(x, w, b, stride, padding)),
        (call(getattr(F, f"{name}_backward_data"), dy, w, x.shape, stride, padding),
         ref.conv_backward_data_ref(dy, w, x.shape, stride, padding)),
        (call(getattr(F, f"{name}_backward_filter"), dy, x, w.shape, stride, padding),
         ref.conv_backward_filter_ref(dy, x, w.shape, stride, padding)),
    ]


# (N, C, spatial, kernel, stride, padding)
POOL_CASES = [(2, 3, (11,), (3,), 2, 1), (2, 2, (7, 8), (3, 2), (2, 1), (1, 1)),
              (1, 2, (5, 6, 5), (3, 2, 3), (2, 1, 2), (1, 1, 1))]
PNAMES = {1: "pool1d", 2: "pool2d", 3: "pool3d"}


def pool_checks(case, call):
    n, c, spatial, kernel, stride, padding = case
    rng = np.random.default_rng(7)
    shape = (n, c) + spatial
    x = (rng.permutation(int(np.prod(shape))).reshape(shape) / 64).astype(H)   # exact, tie-free
    pn = PNAMES[len(spatial)]
    geom = (kernel, stride, padding)
    y_ref, arg_ref = ref.max_pool_ref(x, *geom)
    y, arg = call(getattr(F, f"max_{pn}"), x, *geom)
    assert y.dtype == H and arg.dtype == np.int32
    np.testing.assert_array_equal(y, y_ref.astype(H))
    np.testing.assert_array_equal(arg, arg_ref)
    dy = rng.standard_normal(y.shape).astype(H)
    mb = ref.max_pool_backward_ref(dy, arg_ref, shape)
    check(call(getattr(F, f"max_{pn}_backward"), dy, arg_ref, shape), mb)
    check(call(getattr(F, f"max_{pn}_backward"), dy, arg_ref, shape, kernel_size=kernel, stride=stride,
               padding=padding), mb)
    check(call(getattr(F, f"avg_{pn}"), x, *geom), ref.avg_pool_ref(x, *geom))
    check(call(getattr(F, f"avg_{pn}_backward"), dy, shape, *geom), ref.avg_pool_backward_ref(dy, shape, *geom))


def host(fn, *args, **kw):
    return fn(*args, **kw)


@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_conv_float16_on_the_cpu(case):
    errs = [check(out, expected) for out, expected in conv_results(case, host)]
    assert max(errs) > 0   # the result really is rounded to float16 (not float32 in disguise)


@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_conv_float16_on_the_emulated_gpu(dev, case):
    for out, expected in conv_results(case, run):
        check(out, expected)
    assert any(name.endswith("_v2") or name.endswith("_v1") for name in dev.launched())
    assert {dt for _, dt in dev.launches} == {"float32"}   # float16 runs the float32 kernels


@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_pool_float16_on_the_cpu(case):
    pool_checks(case, host)


@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_pool_float16_on_the_emulated_gpu(dev, case):
    pool_checks(case, run)


def test_float16_is_the_float32_result_rounded():
    """The CPU computes in float32: the float16 result is the float32 result rounded once."""
    x, w, b, dy, stride, padding = conv_problem(CONV_CASES[1])
    np.testing.assert_array_equal(F.conv2d(x, w, b, stride, padding),
                                  F.conv2d(x.astype(np.float32), w.astype(np.float32), b.astype(np.float32),
                                           stride, padding).astype(H))


def test_mixed_float16_and_float32_is_a_type_error():
    x = np.zeros((1, 2, 5, 5), H)
    w = np.zeros((3, 2, 3, 3), np.float32)
    with pytest.raises(TypeError, match=r"conv2d: all arrays must have the same dtype.*float16.*float32"):
        F.conv2d(x, w)
    with pytest.raises(TypeError, match=r"conv2d_backward_filter: all arrays must have the same dtype"):
        F.conv2d_backward_filter(np.zeros((1, 3, 3, 3), np.float32), x, w.shape)
    with pytest.raises(TypeError, match=r"float16, float32 or float64.*int32"):
        F.conv2d(x.astype(np.int32), w.astype(np.int32))
