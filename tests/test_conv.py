"""Convolution (1-D, 2-D, 3-D; forward, backward-data, backward-filter) on
every backend against the float64 reference in gpucnn.testing.reference.

The sweep is a seeded random sample of shape/stride/padding/layout
combinations plus explicit edge cases. GPU cases (marked gpu) run every
kernel version with NaN-poisoned outputs, so an unwritten element fails.
The backend helpers here are shared with test_pool.py.
"""
import random

import numpy as np
import pytest

import gpucnn.functional as F
from gpucnn import backend as B
from gpucnn.testing import reference as ref

# ||out - ref|| / ||ref|| bound per dtype (float32 sums of <= 16*5*5 products)
REL_TOL = {np.float32: 1e-5, np.float64: 1e-12}

CONV_GPU_VERSIONS = (1, 2)   # swept here in every direction
# Tensor-core versions, swept per precision in tests/test_tensor_core_emulated.py (and on a GPU there).
TC_VERSIONS = {"forward": (3, 4), "backward_data": (3, 4), "backward_filter": (3, 4)}
BACKENDS = ["cpu"] + [pytest.param(("gpu", v), marks=pytest.mark.gpu, id=f"gpu-v{v}")
                      for v in CONV_GPU_VERSIONS]
# 3-D runs in conv3d_gpu / pool3d_gpu, and the pools take no version: default kernel only
BACKENDS_DEFAULT = ["cpu", pytest.param(("gpu", None), marks=pytest.mark.gpu, id="gpu")]


@pytest.fixture
def run(monkeypatch):
    """run(backend, fn, *args, **kw): fn on 'cpu' or ('gpu', version), result(s) as NumPy.
    Array arguments move to the GPU there; kernel outputs start as NaN."""
    def call(backend, fn, *args, **kw):
        if backend == "cpu":
            return fn(*args, **kw)
        from gpucnn import kernel_loader
        monkeypatch.setattr(kernel_loader, "POISON_OUTPUTS", True)
        _, version = backend
        if version is not None:
            kw["version"] = version
        args = [device_view(a) if isinstance(a, np.ndarray) else a for a in args]
        out = fn(*args, **kw)
        return tuple(B.to_cpu(o) for o in out) if isinstance(out, tuple) else B.to_cpu(out)
    return call


def device_view(a):
    """`a` on the GPU with the same memory layout: a non-contiguous NumPy view
    (transposed, sliced) becomes a strided view of its whole base copied to the
    device, not a contiguous copy (cupy.asarray would make one)."""
    if a.flags.c_contiguous:
        return B.to_gpu(a)
    base = a
    while isinstance(base.base, np.ndarray):
        base = base.base
    assert base.flags.c_contiguous and all(s > 0 for s in a.strides), "layout not supported here"
    offset = a.__array_interface__["data"][0] - base.__array_interface__["data"][0]
    flat = B.to_gpu(base.reshape(-1).view(np.uint8))[offset:]
    view = B.cupy.lib.stride_tricks.as_strided(flat.view(a.dtype), a.shape, a.strides)
    assert view.strides == a.strides and not view.flags.c_contiguous
    return view


def assert_close(out, expected, dtype):
    assert out.dtype == dtype and out.shape == expected.shape
    assert out.flags.c_contiguous
    assert np.all(np.isfinite(out)), "non-finite output (an element left unwritten?)"
    err = np.linalg.norm(out.astype(np.float64) - expected)
    assert err <= REL_TOL[np.dtype(dtype).type] * max(np.linalg.norm(expected), 1e-30), \
        f"relative error {err / max(np.linalg.norm(expected), 1e-30):.3g}"


def make(rng, shape, layout, dtype=np.float32):
    """Random array of `shape` as a contiguous array or a non-contiguous view."""
    if layout == "transposed":       # every axis reversed in memory (Fortran order)
        return rng.standard_normal(shape[::-1]).astype(dtype).T
    if layout == "sliced":           # every other element along the last axis, offset 1
        base = rng.standard_normal(shape[:-1] + (2 * shape[-1] + 1,)).astype(dtype)
        return base[..., 1::2]
    return rng.standard_normal(shape).astype(dtype)


def conv_cases(nd, count, seed):
    """(N, C, K, spatial, kernel, stride, padding, layout) sampled from the
    sweep's ranges; stride/padding are ints or tuples."""
    r = random.Random(seed)
    sizes = {1: (5, 7, 11, 16, 17), 2: (5, 7, 9, 10, 13), 3: (4, 5, 7)}[nd]
    cases = []
    while len(cases) < count:
        spatial = tuple(r.choice(sizes) for _ in range(nd))
        kernel = tuple(r.choice((1, 2, 3, 5)) for _ in range(nd))
        stride = r.randint(1, 3) if r.random() < 0.5 else tuple(r.randint(1, 3) for _ in range(nd))
        padding = r.randint(0, 3) if r.random() < 0.5 else tuple(r.randint(0, 3) for _ in range(nd))
        pads = (padding,) * nd if isinstance(padding, int) else padding
        if any(k > h + 2 * p for h, k, p in zip(spatial, kernel, pads)):
            continue
        cases.append((r.randint(1, 4), r.choice((1, 3, 16)), r.choice((1, 8)), spatial, kernel,
                      stride, padding, r.choice(("contiguous", "transposed", "sliced"))))
    return cases


EDGE_CASES_2D = [
    # N, C, K, (H, W), (R, S), stride, padding, layout
    (1, 1, 1, (1, 1), (1, 1), 1, 0, "contiguous"),          # smallest
    (2, 3, 8, (7, 9), (1, 1), 1, 0, "contiguous"),          # 1x1 kernel
    (2, 3, 8, (5, 5), (5, 5), 1, 0, "transposed"),          # kernel == input: 1x1 output
    (1, 3, 8, (3, 3), (5, 5), 1, 1, "contiguous"),          # kernel == padded input
    (2, 1, 8, (6, 6), (1, 1), 1, 3, "sliced"),              # output border all padding
    (2, 3, 1, (11, 11), (2, 2), 3, 0, "contiguous"),        # stride > kernel: skipped inputs
    (3, 16, 8, (9, 7), (5, 1), (1, 3), (2, 0), "sliced"),   # tall kernel, (h, w) stride
    (1, 3, 8, (7, 13), (1, 5), (3, 1), (0, 2), "transposed"),  # wide kernel
    (4, 16, 8, (28, 28), (5, 5), 1, 2, "contiguous"),       # LeNet-like
]
CASES = {1: conv_cases(1, 12, 1), 2: conv_cases(2, 36, 2) + EDGE_CASES_2D, 3: conv_cases(3, 8, 3)}
OPS = {nd: (getattr(F, f"conv{nd}d"), getattr(F, f"conv{nd}d_backward_data"),
            getattr(F, f"conv{nd}d_backward_filter")) for nd in (1, 2, 3)}


def _case_id(case):
    n, c, k, spatial, kernel, stride, padding, layout = case
    return f"N{n}C{c}K{k}-x{'x'.join(map(str, spatial))}-k{'x'.join(map(str, kernel))}-s{stride}-p{padding}-{layout}"


def check_conv(run, backend, case, dtype, seed=0):
    """All three directions of one case against the reference; inputs unchanged."""
    n, c, k, spatial, kernel, stride, padding, layout = case
    nd = len(spatial)
    fwd, bwd_data, bwd_filter = OPS[nd]
    rng = np.random.default_rng(seed)
    x = make(rng, (n, c) + spatial, layout, dtype)
    w = make(rng, (k, c) + kernel, layout, dtype)
    b = rng.standard_normal(k).astype(dtype)
    y_ref = ref.conv_forward_ref(x, w, b, stride, padding)
    dy = make(rng, y_ref.shape, layout, dtype)
    saved = [a.copy() for a in (x, w, b, dy)]

    assert_close(run(backend, fwd, x, w, b, stride, padding), y_ref, dtype)
    assert_close(run(backend, bwd_data, dy, w, x.shape, stride, padding),
                 ref.conv_backward_data_ref(dy, w, x.shape, stride, padding), dtype)
    assert_close(run(backend, bwd_filter, dy, x, w.shape, stride, padding),
                 ref.conv_backward_filter_ref(dy, x, w.shape, stride, padding), dtype)
    for a, before in zip((x, w, b, dy), saved):
        np.testing.assert_array_equal(a, before)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES[2], ids=_case_id)
def test_conv2d_sweep(run, backend, case):
    check_conv(run, backend, case, np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES[1], ids=_case_id)
def test_conv1d_sweep(run, backend, case):
    check_conv(run, backend, case, np.float32)


@pytest.mark.parametrize("backend", BACKENDS_DEFAULT)
@pytest.mark.parametrize("case", CASES[3], ids=_case_id)
def test_conv3d_sweep(run, backend, case):
    check_conv(run, backend, case, np.float32)


@pytest.mark.parametrize("case", [CASES[1][0], CASES[2][0], EDGE_CASES_2D[6], CASES[3][0]], ids=_case_id)
def test_conv_float64_cpu(run, case):
    check_conv(run, "cpu", case, np.float64)


def numerical_grad(f, a, eps=1e-3):
    """Central differences of the scalar f() with respect to every element of a (in
    place). Exact up to rounding here: every op is linear in each argument
    (max-pool piecewise, with gaps of 1 between its tie-free values)."""
    g = np.empty_like(a)
    for i in np.ndindex(a.shape):
        keep = a[i]
        a[i] = keep + eps
        up = f()
        a[i] = keep - eps
        g[i] = (up - f()) / (2 * eps)
        a[i] = keep
    return g


@pytest.mark.parametrize("nd, spatial, kernel, stride, padding", [
    (1, (9,), (3,), 2, 1),
    (2, (6, 5), (3, 2), (2, 1), (1, 0)),
    (3, (4, 5, 4), (2, 3, 2), (1, 2, 1), 1),
])
def test_conv_gradient_matches_numerical(nd, spatial, kernel, stride, padding):
    """backward_data / backward_filter / backward_bias are the gradients of sum(y * g)."""
    fwd, bwd_data, bwd_filter = OPS[nd]
    rng = np.random.default_rng(nd)
    x = rng.standard_normal((2, 3) + spatial)
    w = rng.standard_normal((4, 3) + kernel)
    b = rng.standard_normal(4)
    g = rng.standard_normal(fwd(x, w, b, stride, padding).shape)
    loss = lambda: float(np.sum(fwd(x, w, b, stride, padding) * g))  # noqa: E731
    np.testing.assert_allclose(bwd_data(g, w, x.shape, stride, padding), numerical_grad(loss, x),
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(bwd_filter(g, x, w.shape, stride, padding), numerical_grad(loss, w),
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(F.conv_backward_bias(g), numerical_grad(loss, b), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_conv_backward_filter_is_deterministic(run, backend):
    """Five runs of backward-filter (a reduction over N and positions) agree bitwise."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((8, 16, 15, 15)).astype(np.float32)
    dy = rng.standard_normal((8, 8, 15, 15)).astype(np.float32)
    runs = [run(backend, F.conv2d_backward_filter, dy, x, (8, 16, 3, 3), 1, 1) for _ in range(5)]
    for other in runs[1:]:
        assert np.array_equal(runs[0], other)


@pytest.mark.parametrize("direction", ["forward", "backward_data", "backward_filter"])
def test_conv_gpu_versions_are_all_tested(direction):  # a registry check: no GPU needed
    from gpucnn.functional import conv_gpu
    assert tuple(conv_gpu.VERSIONS[direction]) == CONV_GPU_VERSIONS + TC_VERSIONS.get(direction, ())


@pytest.mark.parametrize("layout", ["transposed", "sliced"])
def test_device_view_keeps_the_layout(layout, monkeypatch):
    """device_view's offset and stride arithmetic, run with NumPy standing in for
    CuPy (same stride_tricks API): a copy with the view's strides and values."""
    monkeypatch.setattr(B, "cupy", np)
    monkeypatch.setattr(B, "to_gpu", lambda a: np.array(a, copy=True))
    a = make(np.random.default_rng(0), (2, 3, 5, 7), layout)
    view = device_view(a)
    assert view.strides == a.strides and not view.flags.c_contiguous
    assert not np.shares_memory(view, a)
    np.testing.assert_array_equal(view, a)


def test_conv_cases_cover_the_sweep_ranges():
    """The seeded sample really spans the ranges the sweep promises."""
    cases = CASES[2]
    assert {c[0] for c in cases} == {1, 2, 3, 4} and {c[1] for c in cases} == {1, 3, 16}
    assert {c[2] for c in cases} == {1, 8}
    assert {v for c in cases for v in c[4]} == {1, 2, 3, 5}
    assert any(c[4][0] != c[4][1] for c in cases)
    strides = {s for c in cases for s in np.atleast_1d(c[5])}
    pads = {p for c in cases for p in np.atleast_1d(c[6])}
    assert strides == {1, 2, 3} and pads == {0, 1, 2, 3}
    assert {c[7] for c in cases} == {"contiguous", "transposed", "sliced"}
    assert any(h % 2 for c in cases for h in c[3])
