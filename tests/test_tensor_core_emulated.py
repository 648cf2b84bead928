"""The tensor-core convolution kernels (kernels/conv2d_tc.cu, conv_gpu
version 3) and the emulator's warp-level instructions they rely on
(tests/cuda_emulator/cuda_emu.h: mma.sync m16n8k8 TF32 / m16n8k16 BF16
fragments, ldmatrix, cp.async groups, shuffles, TF32/BF16 rounding).

CPU emulation, not a GPU run: the kernels are "compiled and emulated, not yet
run on a GPU". What this shows: the index math, the fragment layouts as the
PTX ISA specifies them, the cp.async pipeline and the swizzle agree with the
float64 reference within each precision's tolerance, and that the emulator
fails a kernel with a planted bug of each kind.

Tolerances: gpucnn.precision.TOLERANCE (relative L2 against float64;
highest 1e-5, high (TF32) 1e-3, medium (BF16) 8e-3, each 2u of its operand
rounding; the derivation is there).
"""
import subprocess

import numpy as np
import pytest

import cuda_emulator as emu
import gpucnn.functional as F
from gpucnn import backend, kernel_loader, precision
from gpucnn import precision as precision_mod
from gpucnn.functional import conv_gpu
from gpucnn.testing import reference as ref

from test_kernels_emulated import cxx, dev, emulator_build, on_device, run  # noqa: F401

TOL = precision.TOLERANCE
KERNELS = emu.build.HERE.parent.parent / "kernels"

# (N, C, K, spatial, kernel, stride, padding, layout)
CASES = [
    (1, 3, 5, (7, 9), (3, 2), (2, 1), (1, 0), "transposed"),   # batch 1, odd, rectangular, stride pair
    (2, 5, 70, (6, 5), (3, 3), 2, 1, "sliced"),                # K > 64: two row tiles; ragged columns
    (1, 67, 4, (5, 4), (2, 3), 1, (1, 1), "contiguous"),       # C > 64: 26 k-tiles through 3 stages
    (2, 3, 9, (21,), (5,), 1, 2, "contiguous"),                # 1-D
]


def rel_l2(out, expected):
    return np.linalg.norm(out.astype(np.float64) - expected) / np.linalg.norm(expected)


def problem(case, seed=0):
    n, c, k, spatial, kernel = case[:5]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c) + spatial).astype(np.float32)
    w = rng.standard_normal((k, c) + kernel).astype(np.float32)
    return x, w


def conv_tc(case, precision, x, w, version=3):
    fn = F.conv1d if len(case[3]) == 1 else F.conv2d
    out = run(fn, x, w, None, case[5], case[6], layout=case[7], version=version, precision=precision)
    return out, ref.conv_forward_ref(x, w, None, case[5], case[6])


ERRORS = {}


CASE_ID = lambda c: "N{}C{}K{}-x{}-k{}-s{}-p{}-{}".format(*c).replace(" ", "")  # noqa: E731


# v4 (256 threads, 128x128 tiles) is slow to emulate: two cases (ragged tiles, 1-D).
EMULATED = [(c, 3) for c in CASES] + [(CASES[1], 4), (CASES[3], 4)]


@pytest.mark.parametrize("precision", list(TOL))
@pytest.mark.parametrize("case, version", [pytest.param(c, v, id=f"v{v}-{CASE_ID(c)}") for c, v in EMULATED])
def test_tensor_core_forward_within_the_precision_tolerance(dev, case, version, precision):
    x, w = problem(case)
    out, expected = conv_tc(case, precision, x, w, version)
    assert out.dtype == np.float32 and np.all(np.isfinite(out))
    err = rel_l2(out, expected)
    ERRORS.setdefault(precision, []).append(err)
    assert err <= TOL[precision], f"{precision}: relative L2 error {err:.3g}"
    assert conv_gpu.TC_FORWARD[version][precision] in dev.launched()
    if precision != "highest":   # the operands really were rounded (not float32 in disguise)
        assert err > 1e-5


def test_precisions_order_as_documented(dev):
    """BF16 is coarser than TF32, which is coarser than 3xTF32, on one problem."""
    case = CASES[1]
    x, w = problem(case, seed=4)
    errs = {p: rel_l2(*conv_tc(case, p, x, w)) for p in TOL}
    assert errs["highest"] < errs["high"] / 20 < errs["medium"] / 20, errs


def test_default_choice_uses_tensor_cores_only_when_permitted(dev):
    x, w = problem(CASES[1])
    run(F.conv2d, x, w, None, 2, 1, precision="high")
    assert "conv2d_forward_tf32_v3" in dev.launched()
    dev.launches.clear()
    run(F.conv2d, x, w, None, 2, 1)                        # policy "highest": the SIMT kernel
    assert dev.launched() == {"conv2d_forward_v2"}
    dev.launches.clear()
    out = run(F.conv2d, x.astype(np.float16), w.astype(np.float16), None, 2, 1, precision="medium")
    assert out.dtype == np.float16 and "conv2d_forward_bf16_v3" in dev.launched()
    with pytest.raises(ValueError, match="version 3 .*float64"):
        run(F.conv2d, x.astype(np.float64), w.astype(np.float64), None, 2, 1, version=3)


# ---------------------------------------------------------------------------
# Planted bugs: an emulator build of conv2d_tc.cu with kernels appended that
# differ from the real ones by one bug each (the PLANT template parameter).

PLANTED = "".join(
    f"""
extern "C" __global__ void __launch_bounds__(TC_V3_THREADS) {name}(TC_PARAMS) {{
    conv2d_forward_tc<{mode}, {plant}, TileV3>(TC_ARGS);
}}
""" for name, mode, plant in [("plant_lane_tf32_v3", "TC_MODE_TF32", "TC_PLANT_LANE"),
                               ("plant_lane_bf16_v3", "TC_MODE_BF16", "TC_PLANT_LANE"),
                               ("plant_no_wait_tf32_v3", "TC_MODE_TF32", "TC_PLANT_NO_WAIT"),
                               ("plant_swizzle_tf32_v3", "TC_MODE_TF32", "TC_PLANT_SWIZZLE"),
                               ("plant_group_tf32_v3", "TC_MODE_TF32", "TC_PLANT_GROUP")]) + "".join(
    f"""
extern "C" __global__ void __launch_bounds__(TC_V3_THREADS) {name}({params}) {{
    {fn}<TC_MODE_TF32, {plant}, TileV3>({args});
}}
""" for name, fn, params, args, plant in [
        ("plant_phase_tf32_v3", "conv2d_backward_data_tc", "TC_BD_PARAMS", "TC_BD_ARGS", "TC_PLANT_PHASE"),
        ("plant_split_tf32_v3", "conv2d_backward_filter_tc", "TC_BF_PARAMS", "TC_BF_ARGS", "TC_PLANT_SPLIT")])

# The split-K reduction summed in reverse split order (appended to conv2d_backward.cu).
PLANTED_REDUCE = """
extern "C" __global__ void plant_reduce_reversed_v2(const scalar_t* __restrict__ partial,
        scalar_t* __restrict__ dw, long long count, int splits) {
    for (idx_t e = global_thread_id(); e < count; e += grid_stride()) {
        scalar_t acc = 0;
        for (int z = splits - 1; z >= 0; --z) acc += partial[(idx_t)z * count + e];
        dw[e] = acc;
    }
}
"""


@pytest.fixture(scope="module")
def planted_build(cxx):
    if not emu.sanitizers_work(cxx):
        pytest.skip("no sanitizer runtime")
    source = kernel_loader.read_source(conv_gpu.TC_FILE) + PLANTED
    backward = kernel_loader.read_source(conv_gpu.BACKWARD_FILE) + PLANTED_REDUCE
    return emu.build.build(sources={conv_gpu.TC_FILE: source, conv_gpu.BACKWARD_FILE: backward},
                           dtypes=("float32",))


@pytest.fixture
def planted(planted_build, tmp_path, monkeypatch):
    device = emu.EmulatedDevice(planted_build, tmp_path)
    device.install(monkeypatch)
    return device


@pytest.mark.parametrize("kernel, precision", [
    ("conv2d_forward_tf32_v3", "high"),         # control: the same build without a bug passes
    ("plant_lane_tf32_v3", "high"),             # a1/a2 swapped: wrong fragment lane mapping
    ("plant_lane_bf16_v3", "medium"),
    ("plant_no_wait_tf32_v3", "high"),          # no cp.async.wait_group before the barrier
    ("plant_swizzle_tf32_v3", "high"),          # stores and loads disagree on the swizzle
])
def test_emulator_catches_each_planted_bug(planted, monkeypatch, kernel, precision):
    monkeypatch.setitem(conv_gpu.TC_FORWARD[3], precision, kernel)
    case = CASES[1]
    x, w = problem(case)
    out, expected = conv_tc(case, precision, x, w)
    err = rel_l2(out, expected)
    if kernel.startswith("conv2d"):
        assert err <= TOL[precision]
    else:
        assert err > 10 * TOL[precision], f"{kernel}: the planted bug went unnoticed (error {err:.3g})"
    assert planted.launched() == {kernel}


# ---------------------------------------------------------------------------
# Backward-data (phase decomposition) and backward-filter (split-K) on tensor
# cores: the same main loop as the forward, other operand setups.

# (N, C, K, spatial, kernel, stride, padding, layout[, dilation, groups])
BACKWARD_CASES = [
    (1, 3, 5, (7, 9), (3, 2), (2, 1), (1, 0), "transposed"),   # batch 1, odd, rectangular, pad % stride != 0
    (2, 5, 6, (8, 7), (3, 3), 3, 1, "sliced"),                 # stride 3: nine phases of one tap each
    (2, 70, 4, (6, 5), (3, 3), 2, 1, "contiguous"),            # C > 64: two dx row tiles, ten dw column tiles
    (1, 4, 67, (5, 4), (2, 3), 1, (1, 1), "contiguous"),       # K > 64: 26 k-tiles for dx, two dw row tiles
    (2, 2, 3, (13, 11), (3, 3), 1, 1, "sliced"),               # dw split-K: 18 tiles in 3 splits
    (1, 2, 3, (11,), (2,), 3, 1, "transposed"),                # 1-D, stride > kernel: a phase without taps
    (2, 4, 6, (9, 8), (3, 2), 2, (2, 1), "sliced", (2, 3), 2),  # dilation 2 = stride: phase 1 of h has no tap
    (1, 6, 9, (7, 8), (3, 3), 3, 2, "contiguous", 2, 3),       # stride 3, dilation 2: one tap per phase, 3 groups
    (2, 4, 4, (17,), (3,), 2, 2, "transposed", 3, 2),          # 1-D, dilation 3, stride 2, 2 groups
]
SPLIT_CASE = BACKWARD_CASES[4]


def dil_groups(case):
    return (tuple(case[8:]) + (1, 1))[:2] if len(case) > 8 else (1, 1)


def backward_problem(case, seed=0):
    n, c, k, spatial, kernel = case[:5]
    dilation, groups = dil_groups(case)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c) + spatial).astype(np.float32)
    w = rng.standard_normal((k, c // groups) + kernel).astype(np.float32)
    y = ref.conv_forward_ref(x, w, None, case[5], case[6], dilation, groups)
    dy = np.random.default_rng(seed + 1).standard_normal(y.shape).astype(np.float32)
    return x, w, dy


def backward_tc(case, direction, precision, x, w, dy, version=3):
    name = "conv1d" if len(case[3]) == 1 else "conv2d"
    dilation, groups = dil_groups(case)
    geo = (case[5], case[6], dilation, groups)
    kw = dict(layout=case[7], version=version, precision=precision)
    if direction == "backward_data":
        out = run(getattr(F, f"{name}_backward_data"), dy, w, x.shape, *geo, **kw)
        return out, ref.conv_backward_data_ref(dy, w, x.shape, *geo)
    out = run(getattr(F, f"{name}_backward_filter"), dy, x, w.shape, *geo, **kw)
    return out, ref.conv_backward_filter_ref(dy, x, w.shape, *geo)


def BACKWARD_ID(c):   # noqa: N802 (named like CASE_ID)
    return CASE_ID(c) + ("-d{}-g{}".format(*dil_groups(c)).replace(" ", "") if len(c) > 8 else "")


# ---------------------------------------------------------------------------
# Forward with dilation and groups: one GEMM per group on grid z (A the
# group's K/G filters, B its C/G channels), the dilation in the tap table.
# (N, C, K, spatial, kernel, stride, padding, layout, dilation, groups)
FORWARD_DG_CASES = [
    (1, 3, 5, (9, 11), (3, 2), (2, 1), (2, 1), "transposed", (2, 3), 1),  # batch 1, odd, rectangular dilation
    (2, 4, 6, (8, 7), (3, 3), 1, 1, "sliced", 2, 2),                      # dilation 2, 2 groups
    (2, 8, 12, (7, 6), (2, 3), 2, (1, 2), "contiguous", 1, 4),            # 4 groups, stride, padding
    (1, 5, 10, (6, 7), (3, 3), 1, 1, "contiguous", (1, 2), 5),            # depthwise-like C == G, 2 filters each
    (1, 4, 140, (5, 4), (2, 2), 1, 1, "sliced", (1, 2), 2),               # K/G = 70: two v3 row tiles per group
    (2, 4, 4, (17,), (3,), 2, 2, "transposed", 3, 2),                     # 1-D, dilation 3, stride 2, 2 groups
]
# v3 on every case, v4 (slow to emulate) on three
FORWARD_DG_EMULATED = [(c, 3) for c in FORWARD_DG_CASES] + [(FORWARD_DG_CASES[i], 4) for i in (1, 4, 5)]


def forward_dg_tc(case, precision, x, w, version=3):
    fn = F.conv1d if len(case[3]) == 1 else F.conv2d
    geo = (case[5], case[6]) + dil_groups(case)
    out = run(fn, x, w, None, *geo, layout=case[7], version=version, precision=precision)
    return out, ref.conv_forward_ref(x, w, None, *geo)


@pytest.mark.parametrize("precision", list(TOL))
@pytest.mark.parametrize("case, version", [pytest.param(c, v, id=f"v{v}-{BACKWARD_ID(c)}")
                                           for c, v in FORWARD_DG_EMULATED])
def test_tensor_core_forward_with_dilation_and_groups(dev, case, version, precision):
    x, w, _ = backward_problem(case)
    out, expected = forward_dg_tc(case, precision, x, w, version)
    assert out.dtype == np.float32 and out.shape == expected.shape and np.all(np.isfinite(out))
    err = rel_l2(out, expected)
    ERRORS.setdefault(("forward_dg", precision), []).append(err)
    assert err <= TOL[precision], f"{precision}: relative L2 error {err:.3g}"
    assert dev.launched() == {conv_gpu.TC_FORWARD[version][precision]}
    if precision != "highest":   # the operands really were rounded
        assert err > 1e-5


@pytest.mark.parametrize("precision", ["high", "medium"])
def test_default_choice_for_the_forward_with_dilation_and_groups(dev, precision):
    """version=None picks by the same rule as without them: tensor cores from
    16 rows (K/G); the depthwise kernel stays where it is chosen today."""
    x, w, _ = backward_problem(FORWARD_DG_CASES[4])                  # K/G = 70
    run(F.conv2d, x, w, None, 1, 1, (1, 2), 2, precision=precision)
    assert dev.launched() == {conv_gpu.TC_FORWARD[3][precision]}
    dev.launches.clear()
    run(F.conv2d, x, w, None, 1, 1, (1, 2), 2)                       # "highest": SIMT v2
    assert dev.launched() == {"conv2d_forward_v2"}
    dev.launches.clear()
    x, w, _ = backward_problem(FORWARD_DG_CASES[1])                  # K/G = 3: SIMT by the rows
    run(F.conv2d, x, w, None, 1, 1, 2, 2, precision=precision)
    assert not dev.launched() & conv_gpu.FLOAT32_ONLY
    dev.launches.clear()
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 2, 6, 5)).astype(np.float32)         # depthwise, 16 filters per channel
    w = rng.standard_normal((32, 1, 3, 3)).astype(np.float32)
    out = run(F.conv2d, x, w, None, 1, 1, 1, 2, precision=precision)
    assert dev.launched() == {"conv2d_depthwise_forward_v1"}
    assert rel_l2(out, ref.conv_forward_ref(x, w, None, 1, 1, 1, 2)) <= 1e-5
    dev.launches.clear()
    out = run(F.conv2d, x, w, None, 1, 1, 1, 2, version=3, precision=precision)   # forced: tensor cores
    assert dev.launched() == {conv_gpu.TC_FORWARD[3][precision]}
    assert rel_l2(out, ref.conv_forward_ref(x, w, None, 1, 1, 1, 2)) <= TOL[precision]


def test_forward_tap_table_holds_the_dilated_offsets(dev):
    """One int64 per kk = (c*R + r)*S + s: (c*H*W + r*dil_h*W + s*dil_w) << 32 | r*dil_h << 16 | s*dil_w."""
    C, H, W, R, S, dh, dw = 3, 9, 11, 3, 2, 2, 5
    taps = np.asarray(conv_gpu._tap_table(C, H, W, R, S, dh, dw, backend.cupy))
    kk = 0
    for c in range(C):
        for r in range(R):
            for s in range(S):
                assert taps[kk] == ((c * H * W + r * dh * W + s * dw) << 32) | (r * dh << 16) | (s * dw)
                kk += 1
    assert taps.shape == (C * R * S,)


def test_a_dilation_beyond_the_tap_fields_is_refused_before_any_launch(dev):
    """The tap table's 16-bit dh/dw fields: a dilated extent of 2^16 or more is a
    ValueError naming the op (forward and backward-data), not a wrong result."""
    x = np.ones((1, 1, 1, 1), np.float32)
    w = np.ones((1, 1, 1, 2), np.float32)
    with pytest.raises(ValueError, match="conv2d_forward: dilated kernel extent"):
        run(F.conv2d, x, w, None, 1, (0, 35000), (1, 70000), version=3, precision="high")
    dy = np.ones((1, 1, 1, 1), np.float32)
    with pytest.raises(ValueError, match="conv2d_backward_data: dilated kernel extent"):
        run(F.conv2d_backward_data, dy, w, x.shape, 1, (0, 35000), (1, 70000), version=3, precision="high")
    assert not dev.launched()


@pytest.mark.parametrize("bug", ["none", "group", "dilation"])
def test_emulator_catches_planted_forward_dilation_and_group_bugs(planted, monkeypatch, bug):
    """bug "group": every group's B columns start at group 0's channels (the
    kernel's group offset dropped); "dilation": the tap table built as if
    dil = 1 (the launcher ignores dilation). "none" is the control."""
    if bug == "group":
        monkeypatch.setitem(conv_gpu.TC_FORWARD[3], "high", "plant_group_tf32_v3")
    if bug == "dilation":
        real = conv_gpu._tap_table
        monkeypatch.setattr(conv_gpu, "_tap_table", lambda C, H, W, R, S, dh, dw, xp: real(C, H, W, R, S, 1, 1, xp))
    case = FORWARD_DG_CASES[1]   # dilation 2, 2 groups
    x, w, _ = backward_problem(case)
    out, expected = forward_dg_tc(case, "high", x, w)
    err = rel_l2(out, expected)
    if bug == "none":
        assert err <= TOL["high"]
    else:
        assert err > 10 * TOL["high"], f"{bug}: the planted bug went unnoticed (error {err:.3g})"
    assert planted.launched() == {conv_gpu.TC_FORWARD[3]["high"]}


def test_sanitizer_driver_runs_the_tensor_core_kernels_with_dilation_and_groups(dev, monkeypatch):
    """The compute-sanitizer driver's dilation/groups case runs every version
    of the three directions, the tensor-core ones at each precision (the 1-D
    case here; pools left out)."""
    from gpucnn.devtools import sanitizer_driver
    case = next(c for c in sanitizer_driver.CONV_CASES if len(c) > 7 and len(c[2]) == 1)
    monkeypatch.setattr(sanitizer_driver, "CONV_CASES", (case,))
    monkeypatch.setattr(sanitizer_driver, "POOL_CASES", ())
    monkeypatch.setattr(backend, "synchronize", lambda *a: None)
    lines = []
    assert sanitizer_driver.run_all(log=lines.append) == []
    assert {name for d in conv_gpu.TC_KERNELS.values() for by_p in d.values() for name in by_p.values()} \
        <= dev.launched()
    assert sum(" forward v" in line and " g2" in line for line in lines) == 2 * 2 + 2 * 3   # SIMT x 2 dtypes, TC


# ---------------------------------------------------------------------------
# Backward sweep

# v3 on every case and precision; v4 (slow to emulate) on two cases at "high".
BACKWARD_EMULATED = [(c, d, 3, p) for c in BACKWARD_CASES for d in ("backward_data", "backward_filter")
                     for p in TOL] + \
    [(BACKWARD_CASES[2], "backward_data", 4, "high"), (BACKWARD_CASES[3], "backward_filter", 4, "high")]


@pytest.mark.parametrize("case, direction, version, precision", [
    pytest.param(c, d, v, p, id=f"{d}-v{v}-{BACKWARD_ID(c)}-{p}") for c, d, v, p in BACKWARD_EMULATED])
def test_tensor_core_backward_within_the_precision_tolerance(dev, case, direction, version, precision):
    x, w, dy = backward_problem(case)
    out, expected = backward_tc(case, direction, precision, x, w, dy, version)
    assert out.dtype == np.float32 and out.shape == expected.shape and np.all(np.isfinite(out))
    err = rel_l2(out, expected)
    ERRORS.setdefault((direction, precision), []).append(err)
    assert err <= TOL[precision], f"{direction} {precision}: relative L2 error {err:.3g}"
    assert conv_gpu.TC_KERNELS[direction][version][precision] in dev.launched()
    if precision != "highest":   # the operands really were rounded
        assert err > 1e-5


def test_backward_data_runs_one_gemm_per_phase_over_only_its_taps(dev):
    """Stride (3, 3), kernel 3x3: nine launches, each phase's Kgemm = K (one tap),
    so no launch visits a tap that misses (the SIMT v2 visits all nine per phase)."""
    case = BACKWARD_CASES[1]
    x, w, dy = backward_problem(case)
    backward_tc(case, "backward_data", "high", x, w, dy)
    name = conv_gpu.TC_KERNELS["backward_data"][3]["high"]
    assert dev.launches[(name, "float32")] == 9
    phases, taps = conv_gpu._phase_tables(6, 3, 3, 3, 3, 3, 3, 1, 1, 1, backend.cupy)
    assert [p[2] for p in phases] == [6 * i for i in range(9)] and np.asarray(taps).shape == (54,)
    for dil, groups in [(1, 1), (2, 1), (3, 2)]:   # wt holds every (k, r, s) of c's group exactly once
        C, K, R, S, sh, sw = 4, 6, 5, 4, 2, 3
        w = np.arange(K * C // groups * R * S, dtype=np.float32).reshape(K, C // groups, R, S)
        phases, taps = conv_gpu._phase_tables(K, R, S, 4, 4, sh, sw, dil, dil, groups, backend.cupy)
        wt = np.asarray(conv_gpu._rotated_filter(backend.to_gpu(w), groups, phases))
        Kpg, Cg = K // groups, C // groups
        for c in range(C):
            g = c // Cg
            assert sorted(wt[c].tolist()) == sorted(w[g * Kpg:(g + 1) * Kpg, c - g * Cg].ravel().tolist())
        assert len(phases) == sh * sw and np.asarray(taps).shape == (Kpg * R * S,)


def test_backward_filter_split_k_is_deterministic_and_reduced_in_order(dev):
    """dw equals the float32 sum of the per-split partials taken in split order,
    bit for bit, and repeats bitwise; no atomics are involved."""
    case = SPLIT_CASE
    x, w, dy = backward_problem(case)
    first, _ = backward_tc(case, "backward_filter", "high", x, w, dy)
    again, _ = backward_tc(case, "backward_filter", "high", x, w, dy)
    assert np.array_equal(first, again)
    assert dev.launched() >= {conv_gpu.TC_KERNELS["backward_filter"][3]["high"], "conv2d_backward_filter_reduce_v2"}
    partials = split_partials(case, x, dy, "high")
    assert len(partials) == 3
    assert np.array_equal(first, ordered_sum(partials))


def split_partials(case, x, dy, precision, kernel=None):
    """The split-K workspace (splits, K, C, R, S) of one backward-filter call, captured at the reduction."""
    seen = []
    real = kernel_loader.launch

    def spy(k, grid, block, sig, args):
        if "reduce" in k.name:
            seen.append(np.array(args[0]))
        return real(k, grid, block, sig, args)
    import unittest.mock
    with unittest.mock.patch.object(kernel_loader, "launch", spy):
        run(F.conv2d_backward_filter, dy, x, (case[2], case[1]) + case[4], case[5], case[6], version=3,
            precision=precision)
    return seen[0]


def ordered_sum(partials):
    acc = np.zeros(partials.shape[1:], np.float32)
    for p in partials:
        acc = (acc + p).astype(np.float32)
    return acc


@pytest.mark.parametrize("precision", ["high", "medium"])
def test_default_choice_for_the_backward_directions(dev, precision):
    case = BACKWARD_CASES[2]    # C = 70 (dx rows), K = 4 (dw rows)
    x, w, dy = backward_problem(case)
    run(F.conv2d_backward_data, dy, w, x.shape, 2, 1, precision=precision)
    assert dev.launched() == {conv_gpu.TC_KERNELS["backward_data"][3][precision]}
    dev.launches.clear()
    run(F.conv2d_backward_filter, dy, x, w.shape, 2, 1, precision=precision)    # K = 4 rows: SIMT
    assert not dev.launched() & conv_gpu.FLOAT32_ONLY
    dev.launches.clear()
    run(F.conv2d_backward_data, dy, w, x.shape, 2, 1)                          # "highest": SIMT v2
    assert dev.launched() == {"conv2d_backward_data_v2"}
    dev.launches.clear()
    half = run(F.conv2d_backward_data, dy.astype(np.float16), w.astype(np.float16), x.shape, 2, 1,
               precision=precision)                                           # float16: as float32
    assert half.dtype == np.float16 and conv_gpu.TC_KERNELS["backward_data"][3][precision] in dev.launched()
    assert rel_l2(half, ref.conv_backward_data_ref(dy.astype(np.float16), w.astype(np.float16), x.shape, 2, 1)) \
        <= TOL[precision] + precision_mod.FLOAT16_TOLERANCE
    dev.launches.clear()
    case = BACKWARD_CASES[3]    # K = 67: dw on tensor cores (v3: 67 rows fill no 128-row tile)
    x, w, dy = backward_problem(case)
    run(F.conv2d_backward_filter, dy, x, w.shape, 1, (1, 1), precision=precision)
    assert conv_gpu.TC_KERNELS["backward_filter"][3][precision] in dev.launched()
    dev.launches.clear()
    # dilation and groups: the tensor-core kernels of every direction take both
    case = BACKWARD_CASES[7]
    x, w, dy = backward_problem(case)
    run(F.conv2d_backward_filter, dy, x, w.shape, 3, 2, 2, 3, precision=precision)   # K/G = 3 rows: SIMT
    assert not dev.launched() & conv_gpu.FLOAT32_ONLY
    run(F.conv2d_backward_filter, dy, x, w.shape, 3, 2, 2, 3, version=3, precision=precision)
    assert conv_gpu.TC_KERNELS["backward_filter"][3][precision] in dev.launched()
    dev.launches.clear()
    run(F.conv2d, x, w, None, 3, 2, 2, 3, precision=precision)                        # K/G = 3 rows: SIMT
    assert not dev.launched() & conv_gpu.FLOAT32_ONLY
    out = run(F.conv2d, x, w, None, 3, 2, 2, 3, version=3, precision=precision)       # forced: tensor cores
    assert conv_gpu.TC_FORWARD[3][precision] in dev.launched()
    assert rel_l2(out, ref.conv_forward_ref(x, w, None, 3, 2, 2, 3)) <= TOL[precision]


@pytest.mark.parametrize("version", [3, 4])
def test_fused_backward_on_tensor_cores_runs_the_epilogue_as_array_code(dev, version):
    """conv2d_bias_relu_backward with a tensor-core version: the ReLU mask and
    db as array code around the kernels (they have no fused variants)."""
    case = BACKWARD_CASES[7]   # stride 3, padding 2, dilation 2, 3 groups
    x, w, dy = backward_problem(case)
    y = np.maximum(ref.conv_forward_ref(x, w, None, 3, 2, 2, 3), 0).astype(np.float32)
    dx, dw, db = run(F.conv2d_bias_relu_backward, dy, y, x, w, 3, 2, 2, 3, version=version, precision="high")
    assert {conv_gpu.TC_KERNELS[d][version]["high"] for d in ("backward_data", "backward_filter")} \
        <= dev.launched()
    dz = dy * (y > 0)
    assert rel_l2(dx, ref.conv_backward_data_ref(dz, w, x.shape, 3, 2, 2, 3)) <= TOL["high"]
    assert rel_l2(dw, ref.conv_backward_filter_ref(dz, x, w.shape, 3, 2, 2, 3)) <= TOL["high"]
    assert rel_l2(db, dz.astype(np.float64).sum(axis=(0, 2, 3))) <= 1e-6


@pytest.mark.parametrize("kernel, direction, case", [
    ("conv2d_backward_data_tf32_v3", "backward_data", BACKWARD_CASES[0]),       # controls
    ("conv2d_backward_filter_tf32_v3", "backward_filter", SPLIT_CASE),
    ("plant_phase_tf32_v3", "backward_data", BACKWARD_CASES[0]),   # phase start ignores the padding
    ("plant_split_tf32_v3", "backward_filter", SPLIT_CASE),        # each split-K chunk drops a tile
])
def test_emulator_catches_planted_backward_bugs(planted, monkeypatch, kernel, direction, case):
    monkeypatch.setitem(conv_gpu.TC_KERNELS[direction][3], "high", kernel)
    x, w, dy = backward_problem(case)
    out, expected = backward_tc(case, direction, "high", x, w, dy)
    err = rel_l2(out, expected)
    if kernel.startswith("conv2d"):
        assert err <= TOL["high"]
    else:
        assert err > 10 * TOL["high"], f"{kernel}: the planted bug went unnoticed (error {err:.3g})"
    assert kernel in planted.launched()


def test_emulator_catches_a_reduction_in_the_wrong_order(planted, monkeypatch):
    """A split-K reduction in reverse order is as accurate, but not the fixed
    order: dw then differs bitwise from the in-order sum of the partials."""
    case = SPLIT_CASE
    x, w, dy = backward_problem(case, seed=3)
    partials = split_partials(case, x, dy, "high")
    assert len(partials) == 3
    good = run(F.conv2d_backward_filter, dy, x, w.shape, case[5], case[6], version=3, precision="high")
    assert np.array_equal(good, ordered_sum(partials))
    real = kernel_loader.get_typed_kernel
    monkeypatch.setattr(kernel_loader, "get_typed_kernel", lambda f, n, d: real(
        f, "plant_reduce_reversed_v2" if n == "conv2d_backward_filter_reduce_v2" else n, d))
    bad = run(F.conv2d_backward_filter, dy, x, w.shape, case[5], case[6], version=3, precision="high")
    assert "plant_reduce_reversed_v2" in planted.launched()
    assert rel_l2(bad, ref.conv_backward_filter_ref(dy, x, w.shape, case[5], case[6])) <= TOL["high"]
    assert not np.array_equal(bad, ordered_sum(partials))


# ---------------------------------------------------------------------------
# The warp-level instructions themselves, in a small C++ program per test.

PROGRAM = r"""
#include "cuda_emu.h"
#include "mma.cuh"
#include <cmath>
#include <string>
static int failures = 0;
#define CHECK(cond) do { if (!(cond)) { std::fprintf(stderr, "FAILED %s line %d\n", #cond, __LINE__); ++failures; } } while (0)

static float A8[16][8], B8[8][8], A16[16][16], B16[16][8];
static float D8[16][8], D16[16][8];

static void mma_kernel() {   // one warp: fragments by the PTX ISA layouts, D by the C layout
    const unsigned lane = threadIdx.x, g = lane >> 2, t = lane & 3;
    unsigned a[4] = {to_tf32(A8[g][t]), to_tf32(A8[g + 8][t]), to_tf32(A8[g][t + 4]), to_tf32(A8[g + 8][t + 4])};
    unsigned b[2] = {to_tf32(B8[t][g]), to_tf32(B8[t + 4][g])};
    float d[4] = {1, 1, 1, 1};
    mma_tf32_m16n8k8(d, a, b);
    D8[g][2 * t] = d[0]; D8[g][2 * t + 1] = d[1]; D8[g + 8][2 * t] = d[2]; D8[g + 8][2 * t + 1] = d[3];
    unsigned a16[4], b16[2];
    for (int r = 0; r < 4; ++r) {
        const unsigned row = g + 8 * (r & 1), col = 2 * t + 8 * (r >> 1);
        a16[r] = pack_bf16x2(A16[row][col], A16[row][col + 1]);
    }
    for (int r = 0; r < 2; ++r) b16[r] = pack_bf16x2(B16[2 * t + 8 * r][g], B16[2 * t + 8 * r + 1][g]);
    float e[4] = {0, 0, 0, 0};
    mma_bf16_m16n8k16(e, a16, b16);
    D16[g][2 * t] = e[0]; D16[g][2 * t + 1] = e[1]; D16[g + 8][2 * t] = e[2]; D16[g + 8][2 * t + 1] = e[3];
}

static unsigned short M[4][8][8];
static unsigned LD[32][4];
static void ldmatrix_kernel() {
    __shared__ __align__(16) unsigned short tile[4][8][8];
    const unsigned lane = threadIdx.x;
    for (int i = 0; i < 8; ++i) tile[lane / 8][lane % 8][i] = M[lane / 8][lane % 8][i];
    __syncwarp();
    ldmatrix_x4(LD[lane], &tile[lane / 8][lane % 8][0]);
}

static int SH[4][32];
static void shuffle_kernel() {
    const int lane = threadIdx.x;
    SH[0][lane] = __shfl_sync(0xffffffffu, lane * 10, 5);
    SH[1][lane] = __shfl_xor_sync(0xffffffffu, lane, 1);
    SH[2][lane] = __shfl_down_sync(0xffffffffu, lane, 3);
    SH[3][lane] = __shfl_up_sync(0xffffffffu, lane, 2, 8);
}

static float SRC[4] = {1, 2, 3, 4};
static float SEEN[3];
static void cp_async_kernel() {
    __shared__ float s[4];
    s[0] = s[1] = s[2] = s[3] = -1;
    cp_async4(&s[0], &SRC[0], true);
    cp_async_commit();
    cp_async4(&s[1], &SRC[1], false);        // zero-fill
    cp_async_commit();
    SEEN[0] = s[0];                          // before any wait: not landed
    cp_async_wait<1>();
    SEEN[1] = s[0];
    SEEN[2] = s[1];
    cp_async_wait<0>();
    SEEN[2] = s[1];
}

static float tf32f(float x) { return __uint_as_float(to_tf32(x)); }

int main(int argc, char** argv) {
    const std::string what = argv[1];
    dim3 grid, warp;
    warp.x = 32;
    if (what == "rounding") {
        CHECK(tf32f(1.0f + std::ldexp(1.0f, -11)) == 1.0f + std::ldexp(1.0f, -10));   // tie: away from 0
        CHECK(tf32f(-(1.0f + std::ldexp(1.0f, -11))) == -(1.0f + std::ldexp(1.0f, -10)));
        CHECK(tf32f(1.0f + std::ldexp(1.0f, -12)) == 1.0f);
        CHECK(tf32f(1.0f + 3 * std::ldexp(1.0f, -12)) == 1.0f + std::ldexp(1.0f, -10));
        const unsigned p = pack_bf16x2(1.0f + std::ldexp(1.0f, -8), 1.0f + 3 * std::ldexp(1.0f, -8));
        CHECK((p & 0xffffu) == 0x3f80u);          // tie to even: down
        CHECK((p >> 16) == 0x3f82u);              // tie to even: up
        CHECK(std::isinf(tf32f(INFINITY)) && std::isnan(tf32f(NAN)));
    } else if (what == "mma") {
        for (int i = 0; i < 16; ++i)
            for (int k = 0; k < 16; ++k) {
                if (k < 8) A8[i][k] = std::sin(1.0f + i * 8 + k);
                A16[i][k] = std::cos(1.0f + i * 16 + k);
            }
        for (int k = 0; k < 16; ++k)
            for (int j = 0; j < 8; ++j) {
                if (k < 8) B8[k][j] = std::cos(2.0f + k * 8 + j);
                B16[k][j] = std::sin(3.0f + k * 8 + j);
            }
        emu_run(grid, warp, true, false, [] { mma_kernel(); });
        double worst8 = 0, worst16 = 0, scale = 0;
        for (int i = 0; i < 16; ++i)
            for (int j = 0; j < 8; ++j) {
                double s8 = 1, s16 = 0, exact = 1;
                for (int k = 0; k < 8; ++k) {
                    s8 += (double)tf32f(A8[i][k]) * tf32f(B8[k][j]);
                    exact += (double)A8[i][k] * B8[k][j];
                }
                for (int k = 0; k < 16; ++k) {
                    const unsigned a = pack_bf16x2(A16[i][k], 0), b = pack_bf16x2(B16[k][j], 0);
                    s16 += (double)__uint_as_float(a << 16) * __uint_as_float(b << 16);
                }
                worst8 = std::fmax(worst8, std::fabs(D8[i][j] - s8));
                worst16 = std::fmax(worst16, std::fabs(D16[i][j] - s16));
                scale = std::fmax(scale, std::fabs(D8[i][j] - exact));
            }
        CHECK(worst8 < 1e-5 && worst16 < 1e-5);   // the rounded-operand product, summed in float
        CHECK(scale > 1e-5);                       // ... which differs from the unrounded one
    } else if (what == "ldmatrix") {
        for (int m = 0; m < 4; ++m)
            for (int r = 0; r < 8; ++r)
                for (int c = 0; c < 8; ++c) M[m][r][c] = (unsigned short)(m * 64 + r * 8 + c);
        emu_run(grid, warp, true, false, [] { ldmatrix_kernel(); });
        for (unsigned l = 0; l < 32; ++l)
            for (int m = 0; m < 4; ++m)
                CHECK(LD[l][m] == (M[m][l / 4][2 * (l % 4)] | (unsigned)M[m][l / 4][2 * (l % 4) + 1] << 16));
    } else if (what == "shuffle") {
        emu_run(grid, warp, true, false, [] { shuffle_kernel(); });
        for (int l = 0; l < 32; ++l) {
            CHECK(SH[0][l] == 50);
            CHECK(SH[1][l] == (l ^ 1));
            CHECK(SH[2][l] == (l + 3 < 32 ? l + 3 : l));
            CHECK(SH[3][l] == ((l % 8) >= 2 ? l - 2 : l));
        }
    } else if (what == "cp_async") {
        warp.x = 1;
        emu_run(grid, warp, true, false, [] { cp_async_kernel(); });
        CHECK(SEEN[0] == -1 && SEEN[1] == 1 && SEEN[2] == 0);
    } else if (what == "cp_async_unwaited") {
        warp.x = 1;
        emu_run(grid, warp, true, false, [] {
            __shared__ float s;
            cp_async4(&s, &SRC[0], true);
            cp_async_commit();
        });
    } else if (what == "divergent_mma") {
        emu_run(grid, warp, true, false, [] {
            if (threadIdx.x < 16) return;
            float d[4] = {};
            unsigned a[4] = {}, b[2] = {};
            mma_tf32_m16n8k8(d, a, b);
        });
    }
    return failures ? 1 : 0;
}
"""


@pytest.fixture(scope="module")
def warp_program(cxx, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("warp")
    (tmp / "t.cpp").write_text(PROGRAM)
    subprocess.run([cxx, "-std=c++17", "-O1", "-pthread", "-fsanitize=address,undefined",
                    "-I", str(emu.build.HERE), "-I", str(KERNELS), str(tmp / "t.cpp"), "-o", str(tmp / "t")],
                   check=True)
    return tmp / "t"


@pytest.mark.parametrize("what", ["rounding", "mma", "ldmatrix", "shuffle", "cp_async"])
def test_warp_instruction_semantics(warp_program, what):
    r = subprocess.run([warp_program, what], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("what, message", [
    ("cp_async_unwaited", "cp.async copies still queued"),
    ("divergent_mma", "not reached by every thread"),
])
def test_emulator_aborts_on_misused_warp_instructions(warp_program, what, message):
    r = subprocess.run([warp_program, what], capture_output=True, text=True)
    assert r.returncode == 3 and message in r.stderr, r.stderr


# ---------------------------------------------------------------------------
# On a real GPU (pytest -m gpu; part of python -m gpucnn.devtools.gpu_check)

@pytest.mark.gpu
@pytest.mark.parametrize("precision", list(TOL))
@pytest.mark.parametrize("case, version", [pytest.param(c, v, id=f"v{v}-{CASE_ID(c)}")
                                           for v in conv_gpu.TENSOR_CORE for c in CASES])
def test_tensor_core_forward_on_the_gpu(monkeypatch, case, version, precision):
    from gpucnn import backend
    monkeypatch.setattr(kernel_loader, "POISON_OUTPUTS", True)
    x, w = problem(case)
    fn = F.conv1d if len(case[3]) == 1 else F.conv2d
    out = backend.to_cpu(fn(backend.to_gpu(x), backend.to_gpu(w), None, case[5], case[6],
                            version=version, precision=precision))
    assert rel_l2(out, ref.conv_forward_ref(x, w, None, case[5], case[6])) <= TOL[precision]
    half = fn(backend.to_gpu(x.astype(np.float16)), backend.to_gpu(w.astype(np.float16)), None,
              case[5], case[6], version=version, precision=precision)
    assert half.dtype == np.float16


@pytest.mark.gpu
@pytest.mark.parametrize("precision", list(TOL))
@pytest.mark.parametrize("case, version", [pytest.param(c, v, id=f"v{v}-{BACKWARD_ID(c)}")
                                           for v in conv_gpu.TENSOR_CORE for c in FORWARD_DG_CASES])
def test_tensor_core_forward_with_dilation_and_groups_on_the_gpu(monkeypatch, case, version, precision):
    """The emulated dilation/groups sweep on the GPU; float16 comes back as float16."""
    from gpucnn import backend
    monkeypatch.setattr(kernel_loader, "POISON_OUTPUTS", True)
    x, w, _ = backward_problem(case)
    fn = F.conv1d if len(case[3]) == 1 else F.conv2d
    geo = (case[5], case[6]) + dil_groups(case)
    out = backend.to_cpu(fn(backend.to_gpu(x), backend.to_gpu(w), None, *geo, version=version, precision=precision))
    assert rel_l2(out, ref.conv_forward_ref(x, w, None, *geo)) <= TOL[precision]
    half = fn(backend.to_gpu(x.astype(np.float16)), backend.to_gpu(w.astype(np.float16)), None, *geo,
              version=version, precision=precision)
    assert half.dtype == np.float16


@pytest.mark.gpu
@pytest.mark.parametrize("precision", list(TOL))
@pytest.mark.parametrize("direction", ["backward_data", "backward_filter"])
@pytest.mark.parametrize("case, version", [pytest.param(c, v, id=f"v{v}-{BACKWARD_ID(c)}")
                                           for v in conv_gpu.TENSOR_CORE for c in BACKWARD_CASES])
def test_tensor_core_backward_on_the_gpu(monkeypatch, case, version, direction, precision):
    """Against the CPU reference, as the emulated sweep; float16 comes back as float16."""
    from gpucnn import backend
    monkeypatch.setattr(kernel_loader, "POISON_OUTPUTS", True)
    x, w, dy = backward_problem(case)
    name = "conv1d" if len(case[3]) == 1 else "conv2d"
    fn = getattr(F, f"{name}_{direction}")
    geo = (case[5], case[6]) + dil_groups(case)
    a, b, shape = (dy, w, x.shape) if direction == "backward_data" else (dy, x, w.shape)
    expected = (ref.conv_backward_data_ref(dy, w, x.shape, *geo) if direction == "backward_data"
                else ref.conv_backward_filter_ref(dy, x, w.shape, *geo))
    out = backend.to_cpu(fn(backend.to_gpu(a), backend.to_gpu(b), shape, *geo,
                            version=version, precision=precision))
    assert rel_l2(out, expected) <= TOL[precision]
    half = fn(backend.to_gpu(a.astype(np.float16)), backend.to_gpu(b.astype(np.float16)), shape, *geo,
              version=version, precision=precision)
    assert half.dtype == np.float16

