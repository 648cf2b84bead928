"""Bad arguments to the functional conv/pool ops raise ValueError/TypeError
naming the op and the offending shapes (or values), before any computation."""
import numpy as np
import pytest

import gpucnn.functional as F
from gpucnn import backend as B

f32 = np.float32
X = np.zeros((2, 3, 8, 8), f32)
W = np.zeros((4, 3, 3, 3), f32)
DY = np.zeros((2, 4, 6, 6), f32)            # conv2d(X, W) output shape
PDY = np.zeros((2, 3, 4, 4), f32)           # max_pool2d(X, 2) output shape
ARG = np.zeros((2, 3, 4, 4), np.int32)

CASES = [
    # id, call, exception, message pattern (op name ... shapes/values)
    ("conv-x-ndim", lambda: F.conv2d(X[0], W), ValueError, r"conv2d: input x .*\(3, 8, 8\)"),
    ("conv-w-ndim", lambda: F.conv2d(X, W[0]), ValueError, r"conv2d: weight w .*\(3, 3, 3\)"),
    ("conv1d-given-2d", lambda: F.conv1d(X, W), ValueError, r"conv1d: input x .*\(2, 3, 8, 8\)"),
    ("conv3d-given-2d", lambda: F.conv3d(X, W), ValueError, r"conv3d: input x .*\(2, 3, 8, 8\)"),
    ("conv-channels", lambda: F.conv2d(X, np.zeros((4, 5, 3, 3), f32)), ValueError,
     r"conv2d: channel mismatch.*\(2, 3, 8, 8\).*\(4, 5, 3, 3\)"),
    ("conv-kernel-too-big", lambda: F.conv2d(X, np.zeros((4, 3, 11, 3), f32), padding=1), ValueError,
     r"conv2d: kernel \(11, 3\) is larger than the padded input.*\(2, 3, 8, 8\)"),
    ("conv-stride-0", lambda: F.conv2d(X, W, stride=(1, 0)), ValueError, r"conv2d: stride .*\(1, 0\)"),
    ("conv-padding-neg", lambda: F.conv2d(X, W, padding=-1), ValueError, r"conv2d: padding .*\(-1, -1\)"),
    ("conv-stride-len", lambda: F.conv2d(X, W, stride=(1, 1, 1)), TypeError, r"conv2d: stride .*\(1, 1, 1\)"),
    ("conv-stride-float", lambda: F.conv2d(X, W, stride=1.5), TypeError, r"conv2d: stride .*1\.5"),
    ("conv-int-dtype", lambda: F.conv2d(X.astype(np.int32), W), TypeError, r"conv2d: x .*int32.*\(2, 3, 8, 8\)"),
    ("conv-mixed-dtype", lambda: F.conv2d(X, W.astype(np.float64)), TypeError,
     r"conv2d: .*same dtype.*float32.*float64"),
    ("conv-bias-shape", lambda: F.conv2d(X, W, np.zeros(3, f32)), ValueError,
     r"conv2d: bias .*\(4,\).*\(4, 3, 3, 3\).*\(3,\)"),
    ("conv-not-array", lambda: F.conv2d(X.tolist(), W), TypeError, r"conv2d: x .*list"),
    ("bwd-data-dy-shape", lambda: F.conv2d_backward_data(DY[:, :, 1:], W, X.shape), ValueError,
     r"conv2d_backward_data: .*dy .*\(2, 4, 5, 6\).*\(2, 4, 6, 6\)"),
    ("bwd-data-channels", lambda: F.conv2d_backward_data(DY, W, (2, 5, 8, 8)), ValueError,
     r"conv2d_backward_data: channel mismatch.*\(2, 5, 8, 8\).*\(4, 3, 3, 3\)"),
    ("bwd-data-x-shape-len", lambda: F.conv2d_backward_data(DY, W, (2, 3, 8)), ValueError,
     r"conv2d_backward_data: x_shape .*\(2, 3, 8\)"),
    ("bwd-data-dy-ndim", lambda: F.conv2d_backward_data(DY[0], W, X.shape), ValueError,
     r"conv2d_backward_data: output gradient dy .*\(4, 6, 6\)"),
    ("bwd-filter-dy-shape", lambda: F.conv2d_backward_filter(DY[:1], X, W.shape), ValueError,
     r"conv2d_backward_filter: .*dy .*\(1, 4, 6, 6\).*\(2, 4, 6, 6\)"),
    ("bwd-filter-dtype", lambda: F.conv2d_backward_filter(DY.astype(np.float64), X, W.shape), TypeError,
     r"conv2d_backward_filter: .*same dtype"),
    ("bwd-filter-int", lambda: F.conv2d_backward_filter(DY, X.astype(np.int64), W.shape), TypeError,
     r"conv2d_backward_filter: x .*int64"),
    ("pool-x-ndim", lambda: F.max_pool2d(X[0], 2), ValueError, r"max_pool2d: input x .*\(3, 8, 8\)"),
    ("pool-kernel-too-big", lambda: F.avg_pool2d(X, (9, 2)), ValueError,
     r"avg_pool2d: kernel \(9, 2\) is larger than the padded input.*\(2, 3, 8, 8\)"),
    ("pool-stride-0", lambda: F.max_pool2d(X, 2, stride=0), ValueError, r"max_pool2d: stride .*\(0, 0\)"),
    ("pool-padding-neg", lambda: F.avg_pool2d(X, 3, padding=(0, -1)), ValueError,
     r"avg_pool2d: padding .*\(0, -1\)"),
    ("pool-empty-spatial", lambda: F.max_pool1d(np.ones((1, 1, 0), np.float32), 4, 1, 2), ValueError,
     r"max_pool1d: input \(1, 1, 0\) has an empty spatial dimension"),
    ("pool-padding-over-half", lambda: F.max_pool2d(X, 3, padding=2), ValueError,
     r"max_pool2d: padding \(2, 2\) .*half.*\(3, 3\)"),
    ("pool-int-dtype", lambda: F.max_pool2d(X.astype(np.int8), 2), TypeError, r"max_pool2d: x .*int8"),
    ("max-bwd-dy-shape", lambda: F.max_pool2d_backward(PDY, ARG, (2, 4, 8, 8)), ValueError,
     r"max_pool2d_backward: .*\(2, 3, 4, 4\).*\(2, 4, 8, 8\)"),
    ("max-bwd-argmax-dtype", lambda: F.max_pool2d_backward(PDY, ARG.astype(np.int64), X.shape), TypeError,
     r"max_pool2d_backward: argmax .*int32.*int64"),
    ("max-bwd-argmax-shape", lambda: F.max_pool2d_backward(PDY, ARG[:, :, :2], X.shape), ValueError,
     r"max_pool2d_backward: argmax .*\(2, 3, 4, 4\).*\(2, 3, 2, 4\)"),
    ("max-bwd-argmax-list", lambda: F.max_pool2d_backward(PDY, ARG.tolist(), X.shape), TypeError,
     r"max_pool2d_backward: argmax .*list"),
    ("max-bwd-geometry-dy", lambda: F.max_pool2d_backward(PDY, ARG, X.shape, kernel_size=3), ValueError,
     r"max_pool2d_backward: .*dy .*\(2, 3, 4, 4\).*\(2, 3, 2, 2\)"),
    ("avg-bwd-dy-shape", lambda: F.avg_pool2d_backward(PDY, X.shape, 3), ValueError,
     r"avg_pool2d_backward: .*dy .*\(2, 3, 4, 4\).*\(2, 3, 2, 2\)"),
    ("avg-bwd-dtype", lambda: F.avg_pool2d_backward(PDY.astype(np.int32), X.shape, 2), TypeError,
     r"avg_pool2d_backward: dy .*int32"),
    ("conv3d-kernel-too-big", lambda: F.conv3d(np.zeros((1, 2, 3, 4, 5), f32), np.zeros((1, 2, 4, 1, 1), f32)),
     ValueError, r"conv3d: kernel \(4, 1, 1\) is larger.*\(1, 2, 3, 4, 5\)"),
    ("pool1d-padding-over-half", lambda: F.avg_pool1d(np.zeros((1, 1, 9), f32), 2, padding=2), ValueError,
     r"avg_pool1d: padding \(2,\)"),
]


@pytest.mark.parametrize("call, exc, pattern", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_arguments_raise_naming_op_and_shapes(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


def test_bad_arguments_leave_inputs_untouched():
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(f32)
    before = x.copy()
    with pytest.raises(ValueError):
        F.conv2d(x, np.zeros((4, 5, 3, 3), f32))
    np.testing.assert_array_equal(x, before)


@pytest.mark.gpu
@pytest.mark.parametrize("which", ["x", "w"])
def test_numpy_mixed_with_cupy_raises(which):
    x, w = (B.to_gpu(X), W) if which == "x" else (X, B.to_gpu(W))
    with pytest.raises(TypeError, match=r"conv2d: cannot mix NumPy and CuPy"):
        F.conv2d(x, w)


@pytest.mark.gpu
def test_argmax_on_other_backend_raises():
    with pytest.raises(TypeError, match=r"max_pool2d_backward: cannot mix NumPy and CuPy"):
        F.max_pool2d_backward(B.to_gpu(PDY), ARG, X.shape)


@pytest.mark.parametrize("geometry", [{}, {"kernel_size": 2}], ids=["route", "gather"])
@pytest.mark.parametrize("bad", [-1, 64])
def test_argmax_outside_the_plane_is_refused(geometry, bad):
    arg = ARG.copy()
    arg[1, 2, 3, 0] = bad
    with pytest.raises(ValueError, match=r"max_pool2d_backward: argmax holds indices outside "
                                         r"the input plane of 64 elements \(x_shape \(2, 3, 8, 8\)"):
        F.max_pool2d_backward(PDY, arg, X.shape, **geometry)


@pytest.mark.parametrize("call, shapes", [
    (lambda: F.conv2d(X, W, stride=0), "input (2, 3, 8, 8), weight (4, 3, 3, 3)"),
    (lambda: F.conv2d(X, W, padding=-1), "input (2, 3, 8, 8), weight (4, 3, 3, 3)"),
    (lambda: F.conv2d(X, W.astype(np.float64)), "x (2, 3, 8, 8), w (4, 3, 3, 3)"),
    (lambda: F.avg_pool2d(X, 2, stride=0), "input (2, 3, 8, 8)"),
    (lambda: F.max_pool2d(X, 2, padding=2), "input (2, 3, 8, 8)"),
])
def test_messages_carry_the_shapes(call, shapes):
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    assert shapes in str(info.value)


@pytest.mark.parametrize("call, message", [
    (lambda: F.conv2d(X, W, version=5), r"forward: kernel version 5 does not exist; choose from \(1, 2, 3, 4\)"),
    (lambda: F.conv2d_backward_data(np.ones((2, 4, 6, 6), np.float32), W, X.shape, version=0),
     r"backward_data: kernel version 0 does not exist"),
    (lambda: F.conv3d_backward_filter(np.ones((1, 1, 1, 1, 1), np.float32), np.ones((1, 1, 2, 2, 2), np.float32),
                                      (1, 1, 2, 2, 2), version=2), r"backward_filter: kernel version 2 does not exist"),
    (lambda: F.max_pool2d(X, 2, version="1"), r"max_forward: kernel version '1' does not exist"),
    (lambda: F.avg_pool1d(X[:, :, 0], 2, version=3), r"avg_forward: kernel version 3 does not exist"),
    (lambda: F.max_pool2d(X, 2, 1, 0, 2, version=2), r"max_forward: kernel version 2 has no dilation"),
])
def test_an_invalid_version_is_refused_on_the_cpu_as_on_the_gpu(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_valid_versions_run_on_the_cpu():
    np.testing.assert_array_equal(F.conv2d(X, W, version=1), F.conv2d(X, W, version=2))


def test_cached_geometry_never_answers_for_invalid_arguments():
    """The checked geometry is cached per call signature; a valid call must not
    let an equal-but-invalid one through (True == 1 and hash alike in Python)."""
    x = np.zeros((1, 2, 5, 5), np.float32)
    w = np.zeros((3, 2, 3, 3), np.float32)
    for _ in range(2):   # the second round hits the cache
        assert F.conv2d(x, w, stride=1, padding=(1, 1)).shape == (1, 3, 5, 5)
        assert F.conv2d(x, w, stride=[1, 1], padding=[1, 1]).shape == (1, 3, 5, 5)   # lists: uncached
        with pytest.raises(TypeError, match="conv2d: stride"):
            F.conv2d(x, w, stride=True, padding=(1, 1))
        with pytest.raises(TypeError, match="conv2d: padding"):
            F.conv2d(x, w, stride=1, padding=(True, 1))
        with pytest.raises(TypeError, match="conv2d_backward_data: groups"):
            F.conv2d_backward_data(np.zeros((1, 3, 5, 5), np.float32), w, x.shape, padding=1, groups=1.0)


def test_cached_pool_geometry_never_answers_for_invalid_arguments():
    x = np.zeros((1, 2, 6, 6), np.float32)
    for _ in range(2):
        y, argmax = F.max_pool2d(x, 2, stride=2)
        assert y.shape == (1, 2, 3, 3)
        with pytest.raises(TypeError, match="max_pool2d: kernel_size"):
            F.max_pool2d(x, True, stride=2)
        with pytest.raises(TypeError, match="avg_pool2d_backward: stride"):
            F.avg_pool2d_backward(np.zeros((1, 2, 3, 3), np.float32), x.shape, 2, stride=(2, True))
