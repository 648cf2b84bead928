"""The v2 pooling kernels (kernels/pool2d.cu: POOL_RUN elements of a row per
thread, vector loads and stores) in the CPU emulator of the CUDA kernels,
against the float64 reference and bit for bit against v1, over a sweep that
exercises every path of for_each_in_row / store_run: widths that are and are
not multiples of 4 (16-byte, 8-byte and scalar accesses), runs cut short at
the row's end, padding, stride 2 with windows 2 and 3, overlapping and gapped
windows, rectangular windows, batch 1, 1-D, and array starts 4 or 8 bytes
past a 16-byte boundary (EMU_MISALIGN, with the bytes before them poisoned).

CPU emulation of the CUDA kernels (index math, bounds, barriers); not a
substitute for a GPU run, compute-sanitizer or NVRTC.
"""
import numpy as np
import pytest

import gpucnn.functional as F
from gpucnn.functional import pool_gpu
from gpucnn.testing import reference as ref
from test_kernels_emulated import assert_close, cxx, dev, emulator_build, run  # noqa: F401 (fixtures)

# (N, C, spatial, kernel, stride, padding); padding <= kernel // 2
CASES = [
    (1, 1, (4, 8), (2, 2), 2, 0),              # 2x2/2, W % 4 == 0: 16-byte loads and stores
    (2, 3, (7, 9), (3, 3), 2, 1),              # the ResNet stem's 3x3/2 pad 1, odd sizes
    (1, 2, (6, 10), (2, 2), 2, 0),             # W = 10: rows 8-byte aligned, run cut short
    (1, 2, (5, 12), (3, 3), 2, 0),             # 3x3/2 without padding
    (2, 1, (9, 13), (2, 3), (1, 2), (1, 1)),   # rectangular window and stride
    (1, 2, (6, 16), (3, 3), 1, 1),             # maximal overlap, aligned
    (1, 1, (3, 37), (1, 5), 1, (0, 2)),        # long rows, 1 x 5 window
    (1, 2, (5, 14), (2, 2), 3, 1),             # stride > window: inputs in no window
    (2, 2, (33,), (3,), 2, 1),                 # 1-D
    (1, 3, (32,), (2,), 2, 0),                 # 1-D 2/2, aligned
    (1, 1, (23,), (4,), 3, 2),                 # 1-D, gapped, padded
]
OPS = {1: (F.max_pool1d, F.max_pool1d_backward, F.avg_pool1d, F.avg_pool1d_backward),
       2: (F.max_pool2d, F.max_pool2d_backward, F.avg_pool2d, F.avg_pool2d_backward)}


def _id(c):
    return "N{}C{}-x{}-k{}-s{}-p{}".format(*c).replace(" ", "")


def _both_versions(fn, *args, **kw):
    """fn's results with version 1 and version 2."""
    return [run(fn, *args, version=v, **kw) for v in (1, 2)]


def _check_all_ops(dev, case, dtype, x):
    n, c, spatial, kernel, stride, padding = case
    max_fwd, max_bwd, avg_fwd, avg_bwd = OPS[len(spatial)]
    shape, geom = x.shape, (kernel, stride, padding)
    rng = np.random.default_rng(7)

    (y1, a1), (y2, a2) = _both_versions(max_fwd, x, *geom)
    y_ref, a_ref = ref.max_pool_ref(x, *geom)
    np.testing.assert_array_equal(y2, y_ref.astype(dtype))   # NaN == NaN here
    np.testing.assert_array_equal(a2, a_ref)
    assert y2.tobytes() == y1.tobytes() and a2.tobytes() == a1.tobytes()

    dy = rng.standard_normal(y_ref.shape).astype(dtype)
    dx1, dx2 = _both_versions(max_bwd, dy, a_ref, shape, kernel_size=kernel, stride=stride, padding=padding)
    assert_close(dx2, ref.max_pool_backward_ref(dy, a_ref, shape), dtype)
    assert dx2.tobytes() == dx1.tobytes()

    finite = np.where(np.isfinite(x), x, 0).astype(dtype)
    v1, v2 = _both_versions(avg_fwd, finite, *geom)
    assert_close(v2, ref.avg_pool_ref(finite, *geom), dtype)
    assert v2.tobytes() == v1.tobytes()
    g1, g2 = _both_versions(avg_bwd, dy, shape, *geom)
    assert_close(g2, ref.avg_pool_backward_ref(dy, shape, *geom), dtype)
    assert g2.tobytes() == g1.tobytes()
    assert {"max_pool2d_forward_v2", "max_pool2d_backward_v2", "avg_pool2d_forward_v2",
            "avg_pool2d_backward_v2"} <= dev.launched()


@pytest.mark.parametrize("misalign", [0, 1], ids=["aligned", "misaligned"])
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_pool_v2_matches_reference_and_v1_bitwise(dev, case, misalign):
    dtype = np.float32
    dev.misalign = misalign * np.dtype(dtype).itemsize
    n, c, spatial = case[:3]
    rng = np.random.default_rng(len(spatial) * 100 + spatial[-1])
    x = rng.standard_normal((n, c) + spatial).astype(dtype)
    _check_all_ops(dev, case, dtype, x)


@pytest.mark.parametrize("case", [CASES[1], CASES[2], CASES[8]], ids=_id)
def test_pool_v2_float64_misaligned(dev, case):
    dev.misalign = 8   # 8 past a 16-byte boundary: no 16-byte access at the row's start
    rng = np.random.default_rng(3)
    _check_all_ops(dev, case, np.float64, rng.standard_normal(case[:2] + case[2]))


@pytest.mark.parametrize("fill", ["ties", "nan"])
@pytest.mark.parametrize("case", [CASES[1], CASES[5], CASES[8]], ids=_id)
def test_pool_v2_ties_and_nan_rule(dev, case, fill):
    """Few distinct values (ties), or NaN and -inf mixed in: v2's y, argmax
    and dx are v1's bits and the reference's (first maximum / first NaN)."""
    rng = np.random.default_rng(11)
    shape = case[:2] + case[2]
    x = rng.integers(0, 3, shape).astype(np.float32)
    if fill == "nan":
        x[rng.random(shape) < 0.2] = np.nan
        x[rng.random(shape) < 0.2] = -np.inf
    _check_all_ops(dev, case, np.float32, x)


def test_pool_v2_backward_is_bitwise_deterministic(dev):
    """Stride 1 and ties (many windows per input): the same bits with the
    blocks and threads run in opposite orders."""
    rng = np.random.default_rng(5)
    x = rng.integers(0, 4, (2, 3, 7, 10)).astype(np.float32)
    _, arg = run(F.max_pool2d, x, 3, 1, 1, version=2)
    dy = rng.standard_normal(arg.shape).astype(np.float32)
    for fn, args in ((F.max_pool2d_backward, (dy, arg, x.shape)), (F.avg_pool2d_backward, (dy, x.shape))):
        kw = dict(kernel_size=3, stride=1, padding=1, version=2)
        first = run(fn, *args, **kw)
        dev.reverse = True
        second = run(fn, *args, **kw)
        dev.reverse = False
        assert first.tobytes() == second.tobytes()


def test_version_choice(dev):
    """None picks v2, except dilated max pooling (v1); an explicit v2 with
    dilation and an unknown version are refused before any launch."""
    x = np.random.default_rng(0).standard_normal((1, 2, 9, 8)).astype(np.float32)
    run(F.max_pool2d, x, 2)
    assert dev.launched() == {"max_pool2d_forward_v2"}
    y, arg = run(F.max_pool2d, x, 2, 1, 0, 2)   # dilation 2
    assert "max_pool2d_forward_v1" in dev.launched()
    np.testing.assert_array_equal(arg, ref.max_pool_ref(x, 2, 1, 0, 2)[1])
    with pytest.raises(ValueError, match="version 2 has no dilation"):
        run(F.max_pool2d, x, 2, 1, 0, 2, version=2)
    with pytest.raises(ValueError, match="version 2 has no dilation"):
        F.max_pool2d(x, 2, 1, 0, 2, version=2)   # on the CPU: refused there too
    with pytest.raises(ValueError, match="version 3 does not exist"):
        run(F.avg_pool2d, x, 2, version=3)
    assert pool_gpu.VERSIONS["avg_backward"] == (1, 2)


def test_sanitizer_driver_runs_every_pool_version(dev, monkeypatch):
    """The compute-sanitizer driver's pool cases (conv cases left out here)
    run v1 and v2 of every 2-D/1-D pool op, in float16 too, and match the
    reference."""
    from gpucnn import backend
    from gpucnn.devtools import sanitizer_driver
    monkeypatch.setattr(sanitizer_driver, "CONV_CASES", ())
    monkeypatch.setattr(backend, "synchronize", lambda *a: None)
    assert sanitizer_driver.run_all(log=lambda line: None) == []
    assert {f"{op}_v{v}" for op in ("max_pool2d_forward", "max_pool2d_backward", "avg_pool2d_forward",
                                    "avg_pool2d_backward") for v in (1, 2)} <= dev.launched()
    assert ("max_pool2d_forward_v2", "float16") in dev.launches   # float16 through the v2 kernels


# ---------------------------------------------------------------------------
# float16 I/O: the v2 kernels' float16 build (-DSTORAGE_HALF: float16 arrays,
# float arithmetic; the emulator builds it on first use) against v1 on arrays
# widened to float32 and narrowed back.

@pytest.mark.parametrize("fill", ["normal", "nan"])
@pytest.mark.parametrize("misalign", [0, 4])   # 2 would misalign the int32 argmax (UBSan)
@pytest.mark.parametrize("case", [CASES[0], CASES[1], CASES[2], CASES[6], CASES[8]], ids=_id)
def test_pool_v2_float16_io_matches_widened_v1(dev, case, misalign, fill):
    """v2 reads and writes float16 (no widening pass); its y, argmax and dx
    are the bits of v1 on float32 copies rounded back to float16 (both sum in
    float in the same order and round once, to nearest even), and within
    FLOAT16_TOLERANCE of the float64 reference."""
    from gpucnn.precision import FLOAT16_TOLERANCE
    dev.misalign = misalign
    n, c, spatial, kernel, stride, padding = case
    max_fwd, max_bwd, avg_fwd, avg_bwd = OPS[len(spatial)]
    geom = (kernel, stride, padding)
    rng = np.random.default_rng(21)
    x = rng.standard_normal((n, c) + spatial).astype(np.float16)
    if fill == "nan":
        x[rng.random(x.shape) < 0.2] = np.nan
        x[rng.random(x.shape) < 0.2] = -np.inf
    (y1, a1), (y2, a2) = _both_versions(max_fwd, x, *geom)
    y_ref, a_ref = ref.max_pool_ref(x, *geom)
    assert y2.dtype == np.float16 and a2.dtype == np.int32
    np.testing.assert_array_equal(a2, a_ref)
    np.testing.assert_array_equal(y2, y_ref.astype(np.float16))   # max is exact; NaN == NaN here
    np.testing.assert_array_equal(y2, y1)
    np.testing.assert_array_equal(a2, a1)
    dy = rng.standard_normal(y_ref.shape).astype(np.float16)
    dx1, dx2 = _both_versions(max_bwd, dy, a_ref, x.shape, kernel_size=kernel, stride=stride, padding=padding)
    assert dx2.dtype == np.float16 and dx2.tobytes() == dx1.tobytes()
    np.testing.assert_array_equal(dx2, ref.max_pool_backward_ref(dy, a_ref, x.shape).astype(np.float16))
    finite = np.where(np.isfinite(x), x, 0).astype(np.float16)
    v1, v2 = _both_versions(avg_fwd, finite, *geom)
    assert v2.dtype == np.float16 and v2.tobytes() == v1.tobytes()
    g1, g2 = _both_versions(avg_bwd, dy, x.shape, *geom)
    assert g2.dtype == np.float16 and g2.tobytes() == g1.tobytes()
    for got, want in ((v2, ref.avg_pool_ref(finite, *geom)), (g2, ref.avg_pool_backward_ref(dy, x.shape, *geom))):
        err = np.linalg.norm(got.astype(np.float64) - want) / np.linalg.norm(want)
        assert err <= FLOAT16_TOLERANCE, err
    assert {(k, "float16") for k in ("max_pool2d_forward_v2", "max_pool2d_backward_v2", "avg_pool2d_forward_v2",
                                     "avg_pool2d_backward_v2")} <= set(dev.launches)
    assert ("avg_pool2d_forward_v1", "float16") not in dev.launches   # v1 ran widened
