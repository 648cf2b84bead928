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
from gpucnn import kernel_loader, precision
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
                               ("plant_swizzle_tf32_v3", "TC_MODE_TF32", "TC_PLANT_SWIZZLE")])


@pytest.fixture(scope="module")
def planted_build(cxx):
    if not emu.sanitizers_work(cxx):
        pytest.skip("no sanitizer runtime")
    source = kernel_loader.read_source(conv_gpu.TC_FILE) + PLANTED
    return emu.build.build(sources={conv_gpu.TC_FILE: source}, dtypes=("float32",))


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
