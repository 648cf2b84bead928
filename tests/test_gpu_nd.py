"""The 3-D GPU kernels (every version) and 1-D GPU edge cases against the
float64 reference, with NaN-poisoned outputs, plus bitwise determinism.

test_conv.py / test_pool.py sweep the default kernels through every backend;
here each 3-D kernel version is run on its own (conv3d_gpu / pool3d_gpu
VERSIONS), together with the max-pool tie, NaN and -inf rules in 3-D. The 1-D
ops run on the 2-D kernels with unit height (conv_gpu / pool_gpu).
Everything here but the kernel-name checks needs a GPU (marked gpu).
"""
import re

import numpy as np
import pytest

import gpucnn.functional as F
from gpucnn import kernel_loader
from gpucnn.functional import conv3d_gpu, conv_gpu, pool3d_gpu
from gpucnn.testing import reference as ref
from test_conv import assert_close, make, run  # noqa: F401 (fixture)
from test_pool import tie_free

# 3-D conv cases: (N, C, K, (D, H, W), (T, R, S), stride, padding, layout)
CONV3D_CASES = [
    (1, 1, 1, (1, 1, 1), (1, 1, 1), 1, 0, "contiguous"),             # smallest
    (1, 2, 3, (5, 6, 7), (3, 3, 3), 1, 1, "contiguous"),              # batch 1, odd sizes, same
    (2, 3, 4, (7, 5, 6), (3, 2, 3), 2, (1, 0, 1), "transposed"),      # stride 2, padding
    (2, 3, 5, (6, 7, 5), (2, 3, 1), (2, 1, 3), (0, 1, 0), "sliced"),  # mixed strides
    (1, 5, 70, (9, 8, 7), (3, 3, 3), (2, 3, 1), 1, "contiguous"),    # K > 64: two row tiles
    (3, 67, 3, (4, 5, 6), (2, 2, 2), (1, 2, 2), (1, 0, 1), "sliced"),  # C > 64 (backward data)
    (2, 2, 2, (4, 4, 4), (4, 4, 4), 3, 2, "transposed"),              # window = padded input
    (2, 16, 8, (5, 7, 4), (1, 1, 1), 1, 0, "contiguous"),             # 1x1x1 filter
]
# 3-D pool cases: (N, C, (D, H, W), window, stride or None, padding, layout)
POOL3D_CASES = [
    (1, 1, (1, 1, 1), (1, 1, 1), None, 0, "contiguous"),
    (2, 3, (4, 6, 8), (2, 2, 2), None, 0, "contiguous"),              # the classic 2x2x2/2
    (1, 2, (5, 7, 6), (3, 3, 3), 2, 1, "transposed"),                 # overlapping, padded
    (2, 2, (5, 6, 7), (3, 2, 3), (1, 2, 3), (1, 1, 0), "sliced"),      # rectangular everything
    (1, 3, (7, 5, 9), (2, 3, 2), (3, 1, 2), (1, 0, 1), "contiguous"),  # stride > window
    (2, 1, (4, 5, 4), (4, 4, 4), (1, 3, 2), 2, "sliced"),             # padding = window / 2
]
DTYPES = [np.float32, np.float64]


def _conv_id(c):
    return f"N{c[0]}C{c[1]}K{c[2]}-x{c[3]}-k{c[4]}-s{c[5]}-p{c[6]}-{c[7]}"


def _pool_id(c):
    return f"N{c[0]}C{c[1]}-x{c[2]}-k{c[3]}-s{c[4]}-p{c[5]}-{c[6]}"


def _versioned(module, direction):
    return [pytest.param(v, marks=pytest.mark.gpu, id=f"v{v}") for v in module.VERSIONS[direction]]


def _defined_kernels(filename):
    return set(re.findall(r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?'
                          r"(\w+)\s*\(", kernel_loader.read_source(filename)))


# ---------------------------------------------------------------------------
# Names (no GPU needed)

@pytest.mark.parametrize("module", [conv3d_gpu, pool3d_gpu], ids=["conv3d_gpu", "pool3d_gpu"])
def test_3d_launchers_name_existing_kernels_for_every_version(module):
    for name, filename in module.KERNELS.items():
        assert name in _defined_kernels(filename), f"{name} missing from {filename}"
    for filename in set(module.KERNELS.values()):
        assert _defined_kernels(filename) <= set(module.KERNELS), f"unused kernels in {filename}"
    for op, versions in module.VERSIONS.items():
        if module is conv3d_gpu:
            stem = f"conv3d_{op}"
        else:
            kind, direction = op.split("_")
            stem = f"{kind}_pool3d_{direction}"
        for v in versions:
            assert f"{stem}_v{v}" in module.KERNELS


# ---------------------------------------------------------------------------
# 3-D convolution, each version

def _conv_inputs(case, dtype, seed=0):
    n, c, k, spatial, kernel, stride, padding, layout = case
    rng = np.random.default_rng(seed)
    x = make(rng, (n, c) + spatial, layout, dtype)
    w = make(rng, (k, c) + kernel, layout, dtype)
    dy = make(rng, ref.conv_forward_ref(x, w, None, stride, padding).shape, layout, dtype)
    return x, w, dy, stride, padding


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", CONV3D_CASES, ids=_conv_id)
@pytest.mark.parametrize("version", _versioned(conv3d_gpu, "forward"))
def test_conv3d_forward_version(run, version, case, dtype):
    x, w, _, stride, padding = _conv_inputs(case, dtype)
    y = run(("gpu", version), F.conv3d, x, w, None, stride, padding)
    assert_close(y, ref.conv_forward_ref(x, w, None, stride, padding), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", CONV3D_CASES, ids=_conv_id)
@pytest.mark.parametrize("version", _versioned(conv3d_gpu, "backward_data"))
def test_conv3d_backward_data_version(run, version, case, dtype):
    x, w, dy, stride, padding = _conv_inputs(case, dtype)
    dx = run(("gpu", version), F.conv3d_backward_data, dy, w, x.shape, stride, padding)
    assert_close(dx, ref.conv_backward_data_ref(dy, w, x.shape, stride, padding), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", CONV3D_CASES, ids=_conv_id)
@pytest.mark.parametrize("version", _versioned(conv3d_gpu, "backward_filter"))
def test_conv3d_backward_filter_version(run, version, case, dtype):
    x, w, dy, stride, padding = _conv_inputs(case, dtype)
    dw = run(("gpu", version), F.conv3d_backward_filter, dy, x, w.shape, stride, padding)
    assert_close(dw, ref.conv_backward_filter_ref(dy, x, w.shape, stride, padding), dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("direction", ["forward", "backward_data", "backward_filter"])
def test_conv3d_versions_are_bitwise_deterministic(run, direction):
    x, w, dy, stride, padding = _conv_inputs(CONV3D_CASES[4], np.float32, seed=3)
    op, args = {"forward": (F.conv3d, (x, w, None)),
                "backward_data": (F.conv3d_backward_data, (dy, w, x.shape)),
                "backward_filter": (F.conv3d_backward_filter, (dy, x, w.shape))}[direction]
    for v in conv3d_gpu.VERSIONS[direction]:
        first = run(("gpu", v), op, *args, stride, padding)
        for _ in range(3):
            np.testing.assert_array_equal(run(("gpu", v), op, *args, stride, padding), first)


# ---------------------------------------------------------------------------
# 3-D pooling (one version each so far; the default runs it)

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", POOL3D_CASES, ids=_pool_id)
def test_max_pool3d_forward_and_both_backwards(run, case, dtype):
    n, c, spatial, kernel, stride, padding, layout = case
    rng = np.random.default_rng(0)
    x = tie_free(rng, (n, c) + spatial, layout, dtype)
    y_ref, arg_ref = ref.max_pool_ref(x, kernel, stride, padding)
    dy = make(rng, y_ref.shape, layout, dtype)
    y, arg = run(("gpu", None), F.max_pool3d, x, kernel, stride, padding)
    assert_close(y, y_ref, dtype)
    assert arg.dtype == np.int32 and arg.flags.c_contiguous
    np.testing.assert_array_equal(arg, arg_ref)
    dx_ref = ref.max_pool_backward_ref(dy, arg_ref, x.shape)
    route = run(("gpu", None), F.max_pool3d_backward, dy, arg_ref, x.shape)
    gather = run(("gpu", None), F.max_pool3d_backward, dy, arg_ref, x.shape,
                 kernel_size=kernel, stride=stride, padding=padding)
    assert_close(route, dx_ref, dtype)
    assert_close(gather, dx_ref, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", POOL3D_CASES, ids=_pool_id)
def test_avg_pool3d_forward_and_backward(run, case, dtype):
    n, c, spatial, kernel, stride, padding, layout = case
    rng = np.random.default_rng(1)
    x = make(rng, (n, c) + spatial, layout, dtype)
    y_ref = ref.avg_pool_ref(x, kernel, stride, padding)
    dy = make(rng, y_ref.shape, layout, dtype)
    assert_close(run(("gpu", None), F.avg_pool3d, x, kernel, stride, padding), y_ref, dtype)
    assert_close(run(("gpu", None), F.avg_pool3d_backward, dy, x.shape, kernel, stride, padding),
                 ref.avg_pool_backward_ref(dy, x.shape, kernel, stride, padding), dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("fill", ["ties", "nan", "minus_inf"])
def test_max_pool3d_ties_nan_and_minus_inf_match_reference(run, fill):
    """Few distinct values (ties), NaNs and -infs mixed in, or all -inf: y,
    argmax (first maximum, first NaN, never a padded position) and both
    backwards equal the reference."""
    rng = np.random.default_rng(4)
    shape, kernel, stride, padding = (2, 3, 5, 6, 5), (3, 2, 3), (2, 1, 2), (1, 1, 1)
    x = rng.integers(0, 3, shape).astype(np.float32)
    if fill == "nan":
        x[rng.random(shape) < 0.2] = np.nan
        x[rng.random(shape) < 0.2] = -np.inf
    elif fill == "minus_inf":
        x[...] = -np.inf
    y_ref, arg_ref = ref.max_pool_ref(x, kernel, stride, padding)
    y, arg = run(("gpu", None), F.max_pool3d, x, kernel, stride, padding)
    np.testing.assert_array_equal(y, y_ref.astype(np.float32))   # NaN == NaN here
    np.testing.assert_array_equal(arg, arg_ref)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx_ref = ref.max_pool_backward_ref(dy, arg_ref, shape)
    assert_close(run(("gpu", None), F.max_pool3d_backward, dy, arg, shape), dx_ref, np.float32)
    assert_close(run(("gpu", None), F.max_pool3d_backward, dy, arg, shape, kernel_size=kernel,
                     stride=stride, padding=padding), dx_ref, np.float32)


@pytest.mark.gpu
def test_pool3d_backwards_are_bitwise_deterministic(run):
    """Maximal window overlap (stride 1) so that many windows feed one dx."""
    rng = np.random.default_rng(5)
    x = rng.integers(0, 4, (2, 3, 6, 7, 5)).astype(np.float32)   # ties: shared argmaxes
    _, arg = ref.max_pool_ref(x, 3, 1, 1)
    dy = rng.standard_normal(arg.shape).astype(np.float32)
    calls = [(F.max_pool3d_backward, (dy, arg, x.shape), {}),
             (F.max_pool3d_backward, (dy, arg, x.shape), dict(kernel_size=3, stride=1, padding=1)),
             (F.avg_pool3d_backward, (dy, x.shape, 3, 1, 1), {})]
    for op, args, kw in calls:
        first = run(("gpu", None), op, *args, **kw)
        for _ in range(3):
            np.testing.assert_array_equal(run(("gpu", None), op, *args, **kw), first)


# ---------------------------------------------------------------------------
# 1-D on the 2-D kernels (unit height), every conv version

CONV1D_CASES = [   # (N, C, K, (L,), (S,), stride, padding, layout)
    (1, 1, 1, (1,), (1,), 1, 0, "contiguous"),
    (1, 3, 5, (17,), (5,), 2, 2, "sliced"),
    (3, 70, 66, (9,), (3,), 1, 1, "transposed"),   # C, K > 64: several GEMM tiles
    (2, 4, 3, (8,), (8,), 3, 3, "contiguous"),     # window = input, large padding
]


@pytest.mark.parametrize("case", CONV1D_CASES, ids=_conv_id)
@pytest.mark.parametrize("version", _versioned(conv_gpu, "forward"))
def test_conv1d_all_directions_on_2d_kernels(run, version, case):
    x, w, dy, stride, padding = _conv_inputs(case, np.float32)
    assert_close(run(("gpu", version), F.conv1d, x, w, None, stride, padding),
                 ref.conv_forward_ref(x, w, None, stride, padding), np.float32)
    if version in conv_gpu.VERSIONS["backward_data"]:
        assert_close(run(("gpu", version), F.conv1d_backward_data, dy, w, x.shape, stride, padding),
                     ref.conv_backward_data_ref(dy, w, x.shape, stride, padding), np.float32)
    if version in conv_gpu.VERSIONS["backward_filter"]:
        assert_close(run(("gpu", version), F.conv1d_backward_filter, dy, x, w.shape, stride, padding),
                     ref.conv_backward_filter_ref(dy, x, w.shape, stride, padding), np.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("kernel, stride, padding", [(1, None, 0), (3, 2, 1), (4, 1, 2), (2, 3, 0)])
def test_pool1d_on_2d_kernels(run, kernel, stride, padding):
    rng = np.random.default_rng(6)
    x = tie_free(rng, (2, 3, 11), "sliced")
    y_ref, arg_ref = ref.max_pool_ref(x, kernel, stride, padding)
    y, arg = run(("gpu", None), F.max_pool1d, x, kernel, stride, padding)
    assert_close(y, y_ref, np.float32)
    np.testing.assert_array_equal(arg, arg_ref)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx_ref = ref.max_pool_backward_ref(dy, arg_ref, x.shape)
    assert_close(run(("gpu", None), F.max_pool1d_backward, dy, arg, x.shape), dx_ref, np.float32)
    assert_close(run(("gpu", None), F.max_pool1d_backward, dy, arg, x.shape, kernel_size=kernel,
                     stride=stride, padding=padding), dx_ref, np.float32)
    assert_close(run(("gpu", None), F.avg_pool1d, x, kernel, stride, padding),
                 ref.avg_pool_ref(x, kernel, stride, padding), np.float32)
    assert_close(run(("gpu", None), F.avg_pool1d_backward, dy, x.shape, kernel, stride, padding),
                 ref.avg_pool_backward_ref(dy, x.shape, kernel, stride, padding), np.float32)
