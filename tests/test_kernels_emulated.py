"""Every GPU kernel version, run through the real launchers (conv_gpu,
pool_gpu, conv3d_gpu, pool3d_gpu) and the real kernels/*.cu sources in a CPU
emulation of the CUDA kernels (index math, bounds, barriers); not a
substitute for a GPU run, compute-sanitizer or NVRTC.

The kernels are compiled by g++ with AddressSanitizer and UBSan
(tests/cuda_emulator): an access outside any array, or signed overflow in
the index math, fails the launch. Outputs start as NaN (POISON_OUTPUTS), so
an element a kernel never writes fails the comparison with the float64
reference. Each sweep case goes through the functional front, with device
inputs that are contiguous, transposed or strided views.
"""
import subprocess
from collections import Counter

import numpy as np
import pytest

import cuda_emulator as emu
import gpucnn.functional as F
from gpucnn import backend, kernel_loader
from gpucnn.functional import adaptive_pool_gpu, conv3d_gpu, conv_gpu, pool3d_gpu, pool_gpu
from gpucnn.testing import reference as ref

REL_TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
DTYPES = [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")]
LAUNCHERS = (conv_gpu, pool_gpu, conv3d_gpu, pool3d_gpu, adaptive_pool_gpu)
LAUNCHED = Counter()   # launches per (kernel, dtype) in this session


@pytest.fixture(scope="session")
def cxx():
    path = emu.find_cxx()
    if path is None:
        pytest.skip("g++ not found: the CUDA emulator needs a C++17 compiler")
    return path


@pytest.fixture(scope="session")
def emulator_build(cxx):
    if not emu.sanitizers_work(cxx):
        pytest.skip(f"{cxx} cannot link with -fsanitize=address,undefined (libasan/libubsan missing)")
    return emu.build.build()


@pytest.fixture
def dev(emulator_build, tmp_path, monkeypatch):
    device = emu.EmulatedDevice(emulator_build, tmp_path)
    device.install(monkeypatch)
    yield device
    LAUNCHED.update(device.launches)


def on_device(a, layout):
    """Host array a as a device array with the same values in `layout`."""
    if layout == "transposed":   # every axis reversed in memory
        return backend.to_gpu(np.ascontiguousarray(a.T)).T
    if layout == "sliced":       # every other element of a wider buffer, offset 1
        view = backend.cupy.empty(a.shape[:-1] + (2 * a.shape[-1] + 1,), a.dtype)[..., 1::2]
        view[...] = a
        return view
    return backend.to_gpu(a)


def run(fn, *args, layout="contiguous", **kw):
    """fn on device copies of the host arrays in args; its results back on the host."""
    out = fn(*[on_device(a, layout) if isinstance(a, np.ndarray) else a for a in args], **kw)
    outs = out if isinstance(out, tuple) else (out,)
    assert all(backend.is_gpu_array(o) for o in outs), "the op did not take the GPU path"
    outs = tuple(backend.to_cpu(o) for o in outs)
    return outs if isinstance(out, tuple) else outs[0]


def assert_close(out, expected, dtype):
    assert out.dtype == dtype and out.shape == expected.shape
    assert np.all(np.isfinite(out)), f"{np.sum(~np.isfinite(out))} non-finite elements (left unwritten?)"
    err = np.linalg.norm(out.astype(np.float64) - expected) / max(np.linalg.norm(expected), 1e-300)
    assert err < REL_TOL[np.dtype(dtype)], f"relative L2 error {err:.3g}"


def pin_version(monkeypatch, module, func, version):
    """Make the launcher the pooling front calls run `version`, whatever
    version (None by default) the front passes on."""
    original = getattr(module, func)
    monkeypatch.setattr(module, func, lambda *a, **kw: original(*a, **{**kw, "version": version}))


# ---------------------------------------------------------------------------
# Convolution: every (direction, version) of conv_gpu (1-D, 2-D) and conv3d_gpu

# (N, C, K, spatial, kernel, stride, padding, layout)
CONV_CASES = [
    (1, 1, 1, (1, 1), (1, 1), 1, 0, "contiguous"),                # smallest
    (1, 3, 5, (7, 9), (3, 2), (2, 1), (1, 0), "transposed"),      # batch 1, odd, rectangular
    (2, 5, 70, (6, 5), (3, 3), 2, 1, "sliced"),                   # K > 64: two row tiles
    (3, 67, 4, (5, 4), (2, 3), 1, (1, 1), "contiguous"),          # C > 64, ragged Kgemm
    (2, 2, 3, (13, 11), (3, 3), 1, 1, "sliced"),                  # backward-filter split > 1
    (1, 2, 3, (11,), (2,), 3, 1, "transposed"),                   # 1-D, stride > kernel
    (2, 66, 70, (9,), (4,), 1, 2, "sliced"),                      # 1-D, C and K > 64
    (3, 1, 2, (100,), (5,), 1, 2, "contiguous"),                  # 1-D, split > 1
    (1, 2, 3, (5, 6, 7), (3, 3, 3), 1, 1, "contiguous"),          # 3-D, batch 1, odd
    (2, 3, 4, (7, 5, 6), (3, 2, 3), (2, 1, 3), (1, 0, 1), "transposed"),
    (1, 5, 70, (5, 4, 3), (2, 2, 2), 2, 1, "sliced"),             # 3-D, K > 64
    (2, 66, 3, (3, 4, 5), (2, 1, 2), 1, (1, 0, 1), "contiguous"),  # 3-D, C > 64
]
SPLIT_CASES = [CONV_CASES[4], CONV_CASES[7]]
CONV_OPS = {1: (F.conv1d, F.conv1d_backward_data, F.conv1d_backward_filter, conv_gpu, "conv2d"),
            2: (F.conv2d, F.conv2d_backward_data, F.conv2d_backward_filter, conv_gpu, "conv2d"),
            3: (F.conv3d, F.conv3d_backward_data, F.conv3d_backward_filter, conv3d_gpu, "conv3d")}


def _conv_id(c):
    return "N{}C{}K{}-x{}-k{}-s{}-p{}-{}".format(*c).replace(" ", "")


def _conv_params():
    return [pytest.param(case, direction, v, id=f"{direction}-v{v}-{_conv_id(case)}")
            for case in CONV_CASES
            for direction, versions in CONV_OPS[len(case[3])][3].VERSIONS.items()
            for v in versions if v not in getattr(CONV_OPS[len(case[3])][3], "TENSOR_CORE", ())]
# (the tensor-core versions have their own sweep: tests/test_tensor_core_emulated.py)


def _conv_problem(case, dtype, seed=0):
    n, c, k, spatial, kernel, stride, padding, layout = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c) + spatial).astype(dtype)
    w = rng.standard_normal((k, c) + kernel).astype(dtype)
    dy = rng.standard_normal(ref.conv_forward_ref(x, w, None, stride, padding).shape).astype(dtype)
    return x, w, dy


def _conv_run(case, direction, version, x, w, dy, layout=None):
    """(result, float64 reference) of one convolution direction."""
    stride, padding = case[5], case[6]
    fwd, bwd_data, bwd_filter, _, _ = CONV_OPS[len(case[3])]
    kw = dict(layout=layout or case[7], version=version)
    if direction == "forward":
        return (run(fwd, x, w, None, stride, padding, **kw),
                ref.conv_forward_ref(x, w, None, stride, padding))
    if direction == "backward_data":
        return (run(bwd_data, dy, w, x.shape, stride, padding, **kw),
                ref.conv_backward_data_ref(dy, w, x.shape, stride, padding))
    return (run(bwd_filter, dy, x, w.shape, stride, padding, **kw),
            ref.conv_backward_filter_ref(dy, x, w.shape, stride, padding))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case, direction, version", _conv_params())
def test_conv_kernel_version_matches_reference(dev, case, direction, version, dtype):
    out, expected = _conv_run(case, direction, version, *_conv_problem(case, dtype))
    assert_close(out, expected, dtype)
    assert f"{CONV_OPS[len(case[3])][4]}_{direction}_v{version}" in dev.launched()


@pytest.mark.parametrize("case", SPLIT_CASES, ids=_conv_id)
def test_backward_filter_v2_splits_kgemm_and_reduces(dev, case):
    x, w, dy = _conv_problem(case, np.float32)
    k = w.shape[0]
    splits, _ = conv_gpu.filter_split(k, w.size // k, dy.size // k)
    assert splits > 1, "case no longer exercises the split"
    out, expected = _conv_run(case, "backward_filter", 2, x, w, dy)
    assert_close(out, expected, np.float32)
    assert {"conv2d_backward_filter_v2", "conv2d_backward_filter_reduce_v2"} <= dev.launched()


@pytest.mark.parametrize("case", SPLIT_CASES + [CONV_CASES[10]], ids=_conv_id)
def test_backward_filter_is_bitwise_deterministic(dev, case):
    """Run twice, blocks in opposite orders (and threads, where barrier-free):
    the same bits, so no sum depends on the schedule."""
    x, w, dy = _conv_problem(case, np.float32, seed=3)
    for v in CONV_OPS[len(case[3])][3].VERSIONS["backward_filter"]:
        first, _ = _conv_run(case, "backward_filter", v, x, w, dy)
        dev.reverse = True
        second, _ = _conv_run(case, "backward_filter", v, x, w, dy)
        dev.reverse = False
        np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("nd", [2, 3])
def test_empty_batch_and_empty_sums(dev, nd):
    """N = 0 gives empty outputs and a zero dw; K = 0 gives a zero dx. No
    launch may see an empty grid or leave a poisoned output unwritten."""
    x = backend.to_gpu(np.ones((0, 2) + (5,) * nd, np.float32))
    w = backend.to_gpu(np.ones((3, 2) + (3,) * nd, np.float32))
    conv, bdata, bfilt = {2: (F.conv2d, F.conv2d_backward_data, F.conv2d_backward_filter),
                          3: (F.conv3d, F.conv3d_backward_data, F.conv3d_backward_filter)}[nd]
    versions = CONV_OPS[nd][3].VERSIONS
    for v in versions["forward"]:
        assert conv(x, w, version=v).shape == (0, 3) + (3,) * nd
    for v in versions["backward_filter"]:
        dw = bfilt(backend.to_gpu(np.ones((0, 3) + (3,) * nd, np.float32)), x, w.shape, version=v)
        np.testing.assert_array_equal(backend.to_cpu(dw), 0)
    no_filters = backend.to_gpu(np.ones((0, 2) + (3,) * nd, np.float32))
    for v in versions["backward_data"]:
        dx = bdata(backend.to_gpu(np.ones((1, 0) + (3,) * nd, np.float32)), no_filters,
                   (1, 2) + (5,) * nd, version=v)
        np.testing.assert_array_equal(backend.to_cpu(dx), 0)


# ---------------------------------------------------------------------------
# Pooling: every version of each op of pool_gpu (1-D, 2-D) and pool3d_gpu

# (N, C, spatial, window, stride or None, padding, layout); padding <= window // 2
POOL_CASES = [
    (1, 1, (1, 1), (1, 1), None, 0, "contiguous"),
    (2, 3, (7, 9), (3, 2), (2, 1), (1, 1), "transposed"),   # rectangular, stride pair
    (1, 2, (8, 7), (2, 2), None, 0, "sliced"),              # 2x2/2 with an odd width
    (2, 2, (9, 6), (3, 3), 1, 1, "contiguous"),             # maximal overlap
    (2, 3, (11,), (3,), 2, 1, "sliced"),                    # 1-D
    (1, 2, (8,), (2,), 3, 1, "transposed"),                 # stride > window
    (1, 2, (5, 7, 6), (3, 3, 3), 2, 1, "transposed"),       # 3-D
    (2, 2, (5, 6, 7), (3, 2, 3), (1, 2, 3), (1, 1, 0), "sliced"),
    (1, 1, (4, 4, 4), (2, 2, 2), None, 0, "contiguous"),
]
POOL_OPS = {1: (F.max_pool1d, F.max_pool1d_backward, F.avg_pool1d, F.avg_pool1d_backward, pool_gpu, "pool2d"),
            2: (F.max_pool2d, F.max_pool2d_backward, F.avg_pool2d, F.avg_pool2d_backward, pool_gpu, "pool2d"),
            3: (F.max_pool3d, F.max_pool3d_backward, F.avg_pool3d, F.avg_pool3d_backward, pool3d_gpu,
                "pool3d")}


def _pool_id(c):
    return "N{}C{}-x{}-k{}-s{}-p{}-{}".format(*c).replace(" ", "")


def _pool_params():
    return [pytest.param(case, op, v, id=f"{op}-v{v}-{_pool_id(case)}")
            for case in POOL_CASES
            for op, versions in POOL_OPS[len(case[2])][4].VERSIONS.items()
            for v in versions]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case, op, version", _pool_params())
def test_pool_kernel_version_matches_reference(dev, monkeypatch, case, op, version, dtype):
    n, c, spatial, kernel, stride, padding, layout = case
    max_fwd, max_bwd, avg_fwd, avg_bwd, module, stem = POOL_OPS[len(spatial)]
    pin_version(monkeypatch, module, op, version)
    rng = np.random.default_rng(1)
    shape = (n, c) + spatial
    x = rng.permutation(int(np.prod(shape))).reshape(shape).astype(dtype)   # no ties
    geom = (kernel, stride, padding)
    if op == "max_forward":
        y_ref, arg_ref = ref.max_pool_ref(x, *geom)
        y, arg = run(max_fwd, x, *geom, layout=layout)
        np.testing.assert_array_equal(y, y_ref.astype(dtype))
        assert arg.dtype == np.int32
        np.testing.assert_array_equal(arg, arg_ref)
    elif op == "max_backward":
        _, arg_ref = ref.max_pool_ref(x, *geom)
        dy = rng.standard_normal(arg_ref.shape).astype(dtype)
        expected = ref.max_pool_backward_ref(dy, arg_ref, shape)
        assert_close(run(max_bwd, dy, arg_ref, shape, layout=layout), expected, dtype)   # route
        assert_close(run(max_bwd, dy, arg_ref, shape, kernel_size=kernel, stride=stride,
                         padding=padding, layout=layout), expected, dtype)             # gather
    elif op == "avg_forward":
        assert_close(run(avg_fwd, x, *geom, layout=layout), ref.avg_pool_ref(x, *geom), dtype)
    else:
        dy = rng.standard_normal(ref.avg_pool_ref(x, *geom).shape).astype(dtype)
        assert_close(run(avg_bwd, dy, shape, *geom, layout=layout),
                     ref.avg_pool_backward_ref(dy, shape, *geom), dtype)
    kind, direction = op.split("_")
    names = [f"{kind}_{stem}_{direction}_v{version}"]
    if op == "max_backward":   # the route (no geometry) exists as v1 only
        names.append(getattr(module, "ROUTE_KERNEL", f"max_{stem}_backward_route_v{version}"))
    assert set(names) <= dev.launched()


@pytest.mark.parametrize("fill", ["ties", "nan", "minus_inf"])
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_max_pool_ties_nan_and_minus_inf_rule(dev, nd, fill):
    """Few distinct values (ties), NaNs and -infs mixed in, or all -inf: the
    first maximum / first NaN wins, never a padded position; y, argmax and
    both backwards equal the reference."""
    rng = np.random.default_rng(4)
    shape, kernel, stride, padding = {1: ((2, 3, 13), (3,), (2,), (1,)),
                                      2: ((2, 3, 7, 8), (3, 2), (2, 1), (1, 1)),
                                      3: ((2, 2, 5, 6, 5), (3, 2, 3), (2, 1, 2), (1, 1, 1))}[nd]
    x = rng.integers(0, 3, shape).astype(np.float32)
    if fill == "nan":
        x[rng.random(shape) < 0.2] = np.nan
        x[rng.random(shape) < 0.2] = -np.inf
    elif fill == "minus_inf":
        x[...] = -np.inf
    max_fwd, max_bwd = POOL_OPS[nd][:2]
    y_ref, arg_ref = ref.max_pool_ref(x, kernel, stride, padding)
    y, arg = run(max_fwd, x, kernel, stride, padding, layout="sliced")
    np.testing.assert_array_equal(y, y_ref.astype(np.float32))   # NaN == NaN here
    np.testing.assert_array_equal(arg, arg_ref)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    expected = ref.max_pool_backward_ref(dy, arg_ref, shape)
    assert_close(run(max_bwd, dy, arg, shape), expected, np.float32)
    assert_close(run(max_bwd, dy, arg, shape, kernel_size=kernel, stride=stride, padding=padding),
                 expected, np.float32)


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_max_pool_backward_is_bitwise_deterministic(dev, nd):
    """Stride 1 and ties: many windows route to one dx element. Both backward
    kernels (gather with geometry, route without) give the same bits with the
    blocks and threads run in opposite orders."""
    rng = np.random.default_rng(5)
    shape = {1: (2, 3, 17), 2: (2, 3, 7, 6), 3: (2, 2, 5, 4, 5)}[nd]
    kernel = (3,) * nd
    x = rng.integers(0, 4, shape).astype(np.float32)
    max_fwd, max_bwd = POOL_OPS[nd][:2]
    _, arg = run(max_fwd, x, kernel, 1, 1)
    dy = rng.standard_normal(arg.shape).astype(np.float32)
    for geometry in ({}, dict(kernel_size=kernel, stride=1, padding=1)):
        first = run(max_bwd, dy, arg, shape, **geometry)
        dev.reverse = True
        second = run(max_bwd, dy, arg, shape, **geometry)
        dev.reverse = False
        np.testing.assert_array_equal(first, second)


# ---------------------------------------------------------------------------
# The emulator itself

# ---------------------------------------------------------------------------
# Conv features (issue 16): dilation and groups in every conv kernel version,
# the depthwise backward-filter kernel, transposed convolution through the
# backward-data kernels, adaptive pools, dilated max pooling.

# (N, C, K, groups, spatial, kernel, stride, padding, dilation, layout)
FEATURE_CASES = [
    (2, 3, 4, 1, (9, 8), (3, 2), 1, (2, 1), (2, 3), "contiguous"),     # dilation only
    (2, 4, 132, 2, (5, 6), (3, 3), 1, 1, 1, "sliced"),                 # groups, K/G = 66 > 64 rows
    (1, 6, 6, 6, (7, 9), (3, 3), 1, 2, (2, 1), "transposed"),          # depthwise, dilated
    (2, 3, 6, 3, (6, 5), (3, 2), 2, 1, 1, "contiguous"),               # depthwise, multiplier 2, stride
    (2, 4, 6, 2, (13,), (3,), 2, 3, 3, "sliced"),                      # 1-D dilation + groups
    (1, 4, 4, 4, (17,), (5,), 1, 4, 2, "contiguous"),                  # 1-D depthwise
    (1, 4, 6, 2, (5, 6, 5), (2, 3, 2), 1, 1, (2, 1, 2), "contiguous"),  # 3-D dilation + groups
    (2, 3, 3, 3, (4, 5, 4), (3, 3, 3), (1, 2, 1), 2, 2, "sliced"),      # 3-D depthwise
    (1, 2, 4, 2, (6, 7), (2, 3), 1, "same", (1, 2), "contiguous"),     # 'same', odd total padding
    (2, 3, 3, 3, (20, 35), (3, 3), 1, 1, 1, "contiguous"),             # depthwise, several 16x16 tiles
    (1, 2, 2, 2, (40, 9), (3, 1), 1, 0, (17, 1), "contiguous"),        # depthwise, tile too big: v1
]


def _feature_id(c):
    return "N{}C{}K{}G{}-x{}-k{}-s{}-p{}-d{}-{}".format(*c).replace(" ", "")


def _feature_params():
    """Every SIMT version (the tensor-core ones, which take dilation and groups
    too, have their own sweep: tests/test_tensor_core_emulated.py) and the
    default choice."""
    def simt(module, versions):
        return tuple(v for v in versions if v not in getattr(module, "TENSOR_CORE", ()))
    return [pytest.param(case, direction, v, id=f"{direction}-v{v}-{_feature_id(case)}")
            for case in FEATURE_CASES
            for direction, versions in CONV_OPS[len(case[4])][3].VERSIONS.items()
            for v in simt(CONV_OPS[len(case[4])][3], versions) + (None,)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case, direction, version", _feature_params())
def test_conv_dilation_groups_kernels_match_reference(dev, case, direction, version, dtype):
    n, c, k, groups, spatial, kernel, stride, padding, dilation, layout = case
    fwd, bwd_data, bwd_filter, _, stem = CONV_OPS[len(spatial)]
    rng = np.random.default_rng(7)
    x = rng.standard_normal((n, c) + spatial).astype(dtype)
    w = rng.standard_normal((k, c // groups) + kernel).astype(dtype)
    geo = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    y_ref = ref.conv_forward_ref(x, w, None, **geo)
    kw = dict(layout=layout, version=version, **geo)
    if direction == "forward":
        out, expected = run(fwd, x, w, None, **kw), y_ref
    else:
        dy = rng.standard_normal(y_ref.shape).astype(dtype)
        if direction == "backward_data":
            out, expected = run(bwd_data, dy, w, x.shape, **kw), ref.conv_backward_data_ref(dy, w, x.shape, **geo)
        else:
            out, expected = run(bwd_filter, dy, x, w.shape, **kw), ref.conv_backward_filter_ref(dy, x, w.shape, **geo)
    assert_close(out, expected, dtype)
    depthwise = c // groups == 1 and groups > 1 and stem == "conv2d"
    if version is not None:
        assert f"{stem}_{direction}_v{version}" in dev.launched()
    elif depthwise and direction == "backward_filter":
        assert "conv2d_depthwise_backward_filter_v1" in dev.launched()
    elif depthwise and direction == "forward":
        k2, s2, d2 = ((1,) + kernel, (1, stride), (1, dilation)) if len(spatial) == 1 else (kernel, stride, dilation)
        s2, d2 = [(v, v) if isinstance(v, int) else tuple(v) for v in (s2, d2)]
        fits = conv_gpu.depthwise_forward_fits(*k2, s2, d2)
        assert ("conv2d_depthwise_forward_v1" if fits else "conv2d_forward_v1") in dev.launched()


def test_depthwise_backward_filter_is_bitwise_deterministic(dev):
    """Blocks and threads in opposite orders: the same bits (fixed-order tree reduction)."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 4, 9, 7)).astype(np.float32)
    dy = rng.standard_normal((3, 4, 9, 7)).astype(np.float32)
    first = run(F.conv2d_backward_filter, dy, x, (4, 1, 3, 3), 1, 1, 1, 4)
    dev.reverse = True
    second = run(F.conv2d_backward_filter, dy, x, (4, 1, 3, 3), 1, 1, 1, 4)
    dev.reverse = False
    np.testing.assert_array_equal(first, second)
    assert "conv2d_depthwise_backward_filter_v1" in dev.launched()


# (N, C_in, K, groups, spatial, kernel, stride, padding, output_padding, dilation)
TRANSPOSE_CASES = [
    (2, 4, 6, 2, (4, 3), (3, 2), (2, 1), (1, 0), (1, 0), (1, 2)),
    (1, 3, 70, 1, (3, 4), (2, 2), 2, 0, 1, 1),                         # K > 64: two row tiles (v2)
    (2, 4, 4, 4, (5,), (3,), 1, 1, 1, 2),                             # 1-D depthwise, output_padding < dilation
    (1, 2, 4, 2, (2, 3, 2), (2, 2, 3), 2, (0, 1, 1), 1, 1),            # 3-D
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("case", TRANSPOSE_CASES, ids=str)
def test_conv_transpose_runs_the_backward_data_and_forward_kernels(dev, case, version, dtype):
    n, c, k, groups, spatial, kernel, stride, padding, output_padding, dilation = case
    nd = len(spatial)
    fwd = getattr(F, f"conv_transpose{nd}d")
    bwd_data, bwd_filter = getattr(F, f"conv_transpose{nd}d_backward_data"), getattr(F, f"conv_transpose{nd}d_backward_filter")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((n, c) + spatial).astype(dtype)
    w = rng.standard_normal((c, k // groups) + kernel).astype(dtype)
    geo = (stride, padding, output_padding, groups, dilation)
    y_ref = ref.conv_transpose_ref(x, w, None, *geo)
    assert_close(run(fwd, x, w, None, *geo, version=version), y_ref, dtype)
    stem = "conv3d" if nd == 3 else "conv2d"
    assert f"{stem}_backward_data_v{version}" in dev.launched()
    dy = rng.standard_normal(y_ref.shape).astype(dtype)
    assert_close(run(bwd_data, dy, w, x.shape, *geo, version=version),
                 ref.conv_transpose_backward_data_ref(dy, w, x.shape, *geo), dtype)
    if nd < 3 or version == 1:   # conv3d backward-filter has v1 only
        assert_close(run(bwd_filter, dy, x, w.shape, *geo, version=version),
                     ref.conv_transpose_backward_filter_ref(dy, x, w.shape, *geo), dtype)


ADAPTIVE_EMU_CASES = [((2, 3, 7), 3), ((1, 2, 5), 8), ((2, 2, 7, 10), (3, 4)), ((1, 3, 5, 6), 1),
                      ((1, 2, 3, 4), (5, 7)), ((1, 2, 4, 5, 6), (2, 3, 4))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, output_size", ADAPTIVE_EMU_CASES, ids=str)
def test_adaptive_pool_kernels_match_reference(dev, shape, output_size, dtype):
    nd = len(shape) - 2
    rng = np.random.default_rng(3)
    x = rng.permutation(int(np.prod(shape))).reshape(shape).astype(dtype)   # no ties
    y_ref = ref.adaptive_avg_pool_ref(x, output_size)
    assert_close(run(getattr(F, f"adaptive_avg_pool{nd}d"), x, output_size, layout="sliced"), y_ref, dtype)
    dy = rng.standard_normal(y_ref.shape).astype(dtype)
    assert_close(run(getattr(F, f"adaptive_avg_pool{nd}d_backward"), dy, shape),
                 ref.adaptive_avg_pool_backward_ref(dy, shape), dtype)
    (y, arg), (y_r, arg_r) = run(getattr(F, f"adaptive_max_pool{nd}d"), x, output_size), ref.adaptive_max_pool_ref(x, output_size)
    np.testing.assert_array_equal(y, y_r.astype(dtype))
    np.testing.assert_array_equal(arg, arg_r)
    assert_close(run(getattr(F, f"adaptive_max_pool{nd}d_backward"), dy, arg_r, shape),
                 ref.max_pool_backward_ref(dy, arg_r, shape), dtype)
    assert {"adaptive_avg_pool_forward_v1", "adaptive_avg_pool_backward_v1",
            "adaptive_max_pool_forward_v1"} <= dev.launched()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, kernel, stride, padding, dilation", [
    ((2, 3, 11), 3, 1, 1, 2), ((1, 2, 9, 10), 3, 2, 1, (2, 3)), ((1, 2, 7, 6, 8), 2, 1, 1, 2)], ids=str)
def test_dilated_max_pool_kernels_match_reference(dev, shape, kernel, stride, padding, dilation, dtype):
    nd = len(shape) - 2
    rng = np.random.default_rng(4)
    x = rng.permutation(int(np.prod(shape))).reshape(shape).astype(dtype)
    y_r, arg_r = ref.max_pool_ref(x, kernel, stride, padding, dilation)
    y, arg = run(getattr(F, f"max_pool{nd}d"), x, kernel, stride, padding, dilation, layout="transposed")
    np.testing.assert_array_equal(y, y_r.astype(dtype))
    np.testing.assert_array_equal(arg, arg_r)
    dy = rng.standard_normal(y_r.shape).astype(dtype)
    assert_close(run(getattr(F, f"max_pool{nd}d_backward"), dy, arg_r, shape, kernel_size=kernel, stride=stride,
                     padding=padding, dilation=dilation), ref.max_pool_backward_ref(dy, arg_r, shape), dtype)


@pytest.mark.parametrize("version", [1, 2])
def test_emulator_reports_an_out_of_bounds_access(dev, version):
    """An output one element short (a launcher bug) must fail under ASan."""
    x = on_device(np.ones((1, 2, 5, 5), np.float32), "contiguous")
    w = on_device(np.ones((3, 2, 3, 3), np.float32), "contiguous")
    y = backend.cupy.empty(3 * 3 * 3 - 1, np.float32)
    kernel = kernel_loader.get_typed_kernel(conv_gpu.FORWARD_FILE, f"conv2d_forward_v{version}", np.float32)
    grid = (1,) if version == 1 else (1, 1)
    taps = () if version == 1 else (conv_gpu._tap_table(2, 5, 5, 3, 3, 1, 1, backend.cupy),)   # v2: its tap table
    with pytest.raises(emu.EmulatorError, match="heap-buffer-overflow"):
        kernel_loader.launch(kernel, grid, (256,), "p" * (3 + len(taps)) + "i" * 16,
                             (x, w, y) + taps + (1, 2, 5, 5, 3, 3, 3, 3, 3, 1, 1, 0, 0, 1, 1, 1))


def test_emulator_checks_arguments_against_the_kernel_signature(dev):
    kernel = kernel_loader.get_typed_kernel(pool_gpu.POOL_FILE, "avg_pool2d_forward_v1", np.float64)
    x = on_device(np.ones((1, 1, 2, 2)), "contiguous")
    y = backend.cupy.empty((1, 1, 1, 1), np.float64)
    geom = (1, 1, 2, 2, 1, 1, 2, 2, 2, 2, 0, 0)
    with pytest.raises(emu.EmulatorError, match="int64.*takes int"):
        kernel_loader.launch(kernel, (1,), (256,), "pp" + "l" + "i" * 11, (x, y) + geom)
    with pytest.raises(emu.EmulatorError, match="float32 array"):
        kernel_loader.launch(kernel, (1,), (256,), "pp" + "i" * 12, (x.astype(np.float32), y) + geom)
    with pytest.raises(emu.EmulatorError, match="overlaps"):
        kernel_loader.launch(kernel, (1,), (256,), "pp" + "i" * 12, (x, x) + geom)
    with pytest.raises(emu.EmulatorError, match="no kernel"):
        kernel_loader.get_typed_kernel(conv_gpu.FORWARD_FILE, "avg_pool2d_forward_v1", np.float64)
    kernel_loader.launch(kernel, (1,), (256,), "pp" + "i" * 12, (x, y) + geom)
    assert backend.to_cpu(y).item() == 1.0


def test_signature_discovery(cxx):
    source = """
        __device__ void helper(float* s) { __syncthreads(); }
        template <bool B> __device__ void twice() { helper(nullptr); }
        extern "C" __global__ void __launch_bounds__(128) k_sync(float* __restrict__ y, long long n)
        { twice<true>(); }
        extern "C" __global__ void k_plain(const double* __restrict__ x, int* out, scalar_t v) {}
    """
    found = {k["name"]: k for k in emu.build.discover("t.cu", "typedef float scalar_t;" + source, cxx)}
    assert found["k_sync"]["barrier"] and found["k_sync"]["max_threads"] == 128
    assert not found["k_plain"]["barrier"]
    assert [(p["type"], p["pointer"], p["const"]) for p in found["k_plain"]["params"]] == \
        [("double", True, True), ("int", True, False), ("scalar_t", False, False)]
    with pytest.raises(ValueError, match="does not understand"):
        emu.build.parse_param("k", "unsigned short n")
    with pytest.raises(ValueError, match="not understood"):
        emu.build.parse_param("k", "float** p")


def test_barrier_is_real_and_divergence_is_caught(cxx, tmp_path):
    """A block exchanging values through shared memory needs the barrier to
    hold; a __syncthreads only part of the block reaches must abort."""
    (tmp_path / "t.cpp").write_text("""
        #include "cuda_emu.h"
        #include <string>
        void exchange(int* out) {
            __shared__ int s[64];
            const int t = threadIdx.x;
            s[t] = t + 64 * blockIdx.x;
            __syncthreads();
            out[blockIdx.x * 64 + t] = s[(t + 1) % 64];
        }
        void divergent() { if (threadIdx.x < 32) __syncthreads(); }
        int main(int argc, char** argv) {
            dim3 grid, block;
            grid.x = 3; block.x = 64;
            if (std::string(argv[1]) == "divergent") emu_run(grid, block, true, false, [] { divergent(); });
            int out[192];
            emu_run(grid, block, true, true, [&] { exchange(out); });
            for (int i = 0; i < 192; ++i)
                if (out[i] != i / 64 * 64 + (i % 64 + 1) % 64) return 1;
            return 0;
        }""")
    subprocess.run([cxx, "-std=c++17", "-O1", "-pthread", "-I", str(emu.build.HERE), str(tmp_path / "t.cpp"),
                    "-o", str(tmp_path / "t")], check=True)
    assert subprocess.run([tmp_path / "t", "exchange"]).returncode == 0
    r = subprocess.run([tmp_path / "t", "divergent"], capture_output=True, text=True)
    assert r.returncode == 3 and "not reached by every thread" in r.stderr


def test_the_sweep_launched_every_kernel_in_both_dtypes(request):
    """Last in the file: every kernel the launchers name ran at least once per
    dtype (only meaningful when the whole file ran)."""
    module = request.node.getparent(pytest.Module)
    selected = {item.nodeid for item in request.session.items}
    if any(item.nodeid not in selected for item in module.collect()):
        pytest.skip("part of this file was deselected")
    wanted = {(name, dt) for m in LAUNCHERS for name in m.KERNELS   # tensor-core kernels: their own file
              if name not in getattr(m, "FLOAT32_ONLY", ())
              and name not in getattr(m, "FUSED_KERNELS", ())       # fused epilogues: their own file
              for dt in ("float32", "float64")}
    assert wanted - set(LAUNCHED) == set()
