"""The SIMT v2 convolution kernels without integer division in their main
loops (issue 10): conv2d_forward_v2 reads kk -> (c, r, s) from
conv_gpu._tap_table, conv2d_backward_data_v2 its taps split by the stride
from conv_gpu._gather_table, conv2d_backward_filter_v2 steps kk = (n, i, j)
incrementally (KkWalk in kernels/conv2d_backward.cu). Run in the CPU emulator
(tests/cuda_emulator) against the float64 reference over a sweep of
geometries, plain and fused, float32 and float64; and planted table bugs
must be caught. Compiled and emulated, not yet run on a GPU.

The forward's 16-byte w runs (A_RUNS, common.cuh) run for the cases with
C/G*R*S % 4 == 0 (three below), its scalar loop for the rest.
By hand, 2026-12-02 (bench/results/sass-simt-v2-tables-2026-12-02.txt): the
sweep's 154 output arrays were bitwise equal before and after the change; a
planted carry bug in KkWalk (j > Wo for j >= Wo) failed 6 of the 20 sweep
cases, and a planted A_RUNS store bug exactly the 3 float32 cases with w runs.
"""
import numpy as np
import pytest

from gpucnn import backend
from gpucnn.functional import conv_gpu
from gpucnn.testing import reference as ref

from test_kernels_emulated import REL_TOL, cxx, dev, emulator_build  # noqa: F401

# (N, C, K, groups, spatial, kernel, stride, padding, dilation)
CASES = [
    (1, 3, 5, 1, (7, 9), (3, 2), (2, 1), (1, 0), (1, 1)),        # batch 1, odd, rectangular
    (2, 5, 70, 1, (6, 5), (3, 3), (2, 2), (1, 1), (1, 1)),       # K > 64: two row tiles
    (3, 67, 4, 1, (5, 4), (2, 3), (1, 1), (1, 1), (1, 1)),       # C > 64, ragged Kgemm
    (1, 4, 6, 2, (11, 10), (3, 3), (3, 3), (2, 2), (2, 2)),      # stride 3, dilation, groups
    (2, 6, 6, 3, (9, 13), (2, 4), (2, 3), (1, 2), (3, 1)),       # mixed strides and dilations
    (1, 2, 3, 1, (11,), (2,), (3,), (1,), (1,)),                 # 1-D, stride > kernel
    (2, 4, 6, 2, (13,), (3,), (2,), (3,), (3,)),                 # 1-D, dilation + groups
    (2, 2, 3, 1, (13, 11), (3, 3), (1, 1), (1, 1), (1, 1)),      # backward-filter split > 1
    (5, 3, 4, 1, (3, 3), (2, 2), (1, 1), (0, 0), (1, 1)),        # Ho*Wo = 4 < TILE_K: a step spans images
    (2, 4, 4, 4, (7, 7), (3, 3), (1, 1), (1, 1), (1, 1)),        # depthwise through v2
]


def _case_id(c):
    return "N{}C{}K{}G{}-x{}-k{}-s{}-p{}-d{}".format(*c).replace(" ", "")


def _problem(case, dtype):
    n, c, k, g, spatial, kernel = case[:6]
    rng = np.random.default_rng(len(spatial) * 100 + c * 10 + k)
    x = rng.standard_normal((n, c) + spatial).astype(dtype)
    w = rng.standard_normal((k, c // g) + kernel).astype(dtype)
    b = rng.standard_normal(k).astype(dtype)
    return x, w, b, rng


def _rel_l2(out, expected):
    assert np.all(np.isfinite(out)), f"{np.sum(~np.isfinite(out))} non-finite elements (left unwritten?)"
    return np.linalg.norm(out.astype(np.float64) - expected) / max(np.linalg.norm(expected), 1e-300)


@pytest.mark.parametrize("dtype", [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_v2_matches_the_reference_plain_and_fused(dev, case, dtype):
    """All seven v2 conv kernels (forward, backward-data, backward-filter and
    their fused bias/ReLU variants) against the float64 reference."""
    _, _, _, groups, _, _, stride, padding, dilation = case
    x, w, b, rng = _problem(case, dtype)
    X, Wt, B = (backend.to_gpu(a) for a in (x, w, b))
    geo = dict(dilation=dilation, groups=groups, version=2)
    rgeo = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    y = conv_gpu.forward(X, Wt, stride, padding, **geo)
    y_ref = ref.conv_forward_ref(x, w, None, **rgeo)
    yf = backend.to_cpu(conv_gpu.forward(X, Wt, stride, padding, bias=B, relu=True, **geo))
    dy = rng.standard_normal(y_ref.shape).astype(dtype)
    DY = backend.to_gpu(dy)
    dym = dy * (yf > 0)   # the fused kernels' mask, from the y they were given
    dwr, db = conv_gpu.backward_filter(DY, X, w.shape, stride, padding, relu_y=backend.to_gpu(yf),
                                       bias_grad=True, **geo)
    results = {
        "forward": (y, y_ref),
        "forward_bias_relu": (yf, np.maximum(y_ref + b.reshape((1, -1) + (1,) * (x.ndim - 2)), 0)),
        "backward_data": (conv_gpu.backward_data(DY, Wt, x.shape, stride, padding, **geo),
                          ref.conv_backward_data_ref(dy, w, x.shape, **rgeo)),
        "backward_data_relu": (conv_gpu.backward_data(DY, Wt, x.shape, stride, padding,
                                                      relu_y=backend.to_gpu(yf), **geo),
                               ref.conv_backward_data_ref(dym, w, x.shape, **rgeo)),
        "backward_filter": (conv_gpu.backward_filter(DY, X, w.shape, stride, padding, **geo),
                            ref.conv_backward_filter_ref(dy, x, w.shape, **rgeo)),
        "backward_filter_bias_relu": (dwr, ref.conv_backward_filter_ref(dym, x, w.shape, **rgeo)),
        "bias_grad": (db, dym.astype(np.float64).sum(axis=(0,) + tuple(range(2, dy.ndim)))),
    }
    errors = {name: _rel_l2(backend.to_cpu(out), expected) for name, (out, expected) in results.items()}
    assert max(errors.values()) < REL_TOL[np.dtype(dtype)], errors
    assert {"conv2d_forward_v2", "conv2d_forward_bias_relu_v2", "conv2d_backward_data_v2",
            "conv2d_backward_data_relu_v2", "conv2d_backward_filter_v2",
            "conv2d_backward_filter_bias_relu_v2"} <= dev.launched()


def _unpack(t):
    t = np.asarray(t, np.int64)
    return t >> 32, (t >> 16) & 0xFFFF, t & 0xFFFF


@pytest.mark.parametrize("R, dil, sh", [(4, 2, 3), (3, 1, 1), (5, 3, 2), (2, 4, 4)])
def test_gather_table_rule_equals_the_exact_division(dev, R, dil, sh):
    """The kernel's test on taps[2 kk], taps[2 kk + 1] (hr == rr and hq - rq
    in [0, Ho); offset hq*Wo + wq + off) gives, for every tap and every
    shifted row hb = h + ph, exactly the dy element of the definition
    (hb - r*dil = i*sh with 0 <= i < Ho), and word 1 holds w's offset."""
    Kpg, Cg, S, Ho, Wo, sw, dil_w = 3, 2, 2, 4, 5, 2, 3
    table = backend.to_cpu(conv_gpu._gather_table(Kpg, Cg, R, S, Ho, Wo, sh, sw, dil, dil_w, backend.cupy))
    boff, rq, sq = _unpack(table[0::2])
    aoff, rr, sr = _unpack(table[1::2])
    kk = np.arange(Kpg * R * S)
    k, r, s = kk // (R * S), kk // S % R, kk % S
    np.testing.assert_array_equal(aoff, k * Cg * R * S + r * S + s)
    for hb in range(sh * Ho + dil * R + 2):
        for wb in range(sw * Wo + dil_w * S + 2):
            hq, hr, wq, wr = hb // sh, hb % sh, wb // sw, wb % sw
            hit = (hr == rr) & (wr == sr) & (0 <= hq - rq) & (hq - rq < Ho) & (0 <= wq - sq) & (wq - sq < Wo)
            qh, qw = hb - r * dil, wb - s * dil_w
            i, j = qh // sh, qw // sw
            exact = (qh >= 0) & (qh % sh == 0) & (i < Ho) & (qw >= 0) & (qw % sw == 0) & (j < Wo)
            np.testing.assert_array_equal(hit, exact)
            np.testing.assert_array_equal((boff + hq * Wo + wq)[hit], (k * Ho * Wo + i * Wo + j)[hit])


# A planted bug in one table entry (kk in the middle of the table) must fail the comparison.
PLANTS = {
    "forward: a tap one column off": ("_tap_table", lambda t: t.__setitem__(len(t) // 2, t[len(t) // 2] + (1 << 32) + 1)),
    "backward_data: a remainder off by one": ("_gather_table", lambda t: t.__setitem__(len(t) // 2 + 1, t[len(t) // 2 + 1] + 1)),
    "backward_data: a w offset off by one": ("_gather_table", lambda t: t.__setitem__(len(t) // 2 + 1, t[len(t) // 2 + 1] + (1 << 32))),
}


@pytest.mark.parametrize("plant", list(PLANTS))
def test_a_planted_table_bug_is_caught(dev, monkeypatch, plant):
    builder, corrupt = PLANTS[plant]
    case = CASES[3]   # stride 3, dilation 2, groups 2
    _, _, _, groups, _, _, stride, padding, dilation = case
    x, w, _, rng = _problem(case, np.float64)
    geo = dict(dilation=dilation, groups=groups, version=2)
    rgeo = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    dy = rng.standard_normal(ref.conv_forward_ref(x, w, None, **rgeo).shape)

    def run():
        if builder == "_tap_table":
            return _rel_l2(backend.to_cpu(conv_gpu.forward(backend.to_gpu(x), backend.to_gpu(w), stride, padding,
                                                           **geo)), ref.conv_forward_ref(x, w, None, **rgeo))
        return _rel_l2(backend.to_cpu(conv_gpu.backward_data(backend.to_gpu(dy), backend.to_gpu(w), x.shape,
                                                              stride, padding, **geo)),
                       ref.conv_backward_data_ref(dy, w, x.shape, **rgeo))

    assert run() < REL_TOL[np.dtype(np.float64)]   # the real table passes
    original = getattr(conv_gpu, builder)

    def planted(*args):
        table = original(*args).copy()   # not the cached one
        corrupt(table)
        return table

    monkeypatch.setattr(conv_gpu, builder, planted)
    assert run() > 1e-3, f"{plant}: not caught"


def test_table_field_limits_raise_before_any_launch(dev):
    """The 16-bit tap fields: a dilated kernel extent or a stride >= 2^16 is a
    ValueError naming the op, raised before a launch."""
    x = backend.to_gpu(np.ones((1, 1, 70002), np.float32))
    w = backend.to_gpu(np.ones((1, 1, 2), np.float32))
    with pytest.raises(ValueError, match=r"conv1d_forward: dilated kernel extent \(0, 70000\)"):
        conv_gpu.forward(x, w, (1,), (0,), dilation=(70000,), version=2)
    dy = backend.to_gpu(np.ones((1, 1, 2), np.float32))
    with pytest.raises(ValueError, match=r"conv1d_backward_data: stride \(1, 70000\)"):
        conv_gpu.backward_data(dy, w[:, :, :1], (1, 1, 70001), (70000,), (0,), version=2)
    assert not dev.launches
