// conv2d_forward.cu: 2-D convolution forward (1-D runs here with H = R = 1).
//
// Build and launch: at run time through gpucnn.kernel_loader (NVRTC via
// cupy.RawModule, options --std=c++17 -lineinfo -DSCALAR=float|double); the
// launchers are gpucnn/functional/conv_gpu.py. Standalone compile check:
//     nvcc -arch=sm_90 -cubin -I kernels -DSCALAR=float kernels/conv2d_forward.cu
// (python -m gpucnn.kernel_check prints every kernel's registers and spills).
// Status: verified on an H100 (GPU tests + compute-sanitizer, bench/results/gpu-h100-2026-11-24).
//
// Math. x (N, C, H, W), w (K, C/G, R, S), stride (sh, sw), padding (ph, pw),
// dilation (dil_h, dil_w), G groups, y (N, K, Ho, Wo) with
// Ho = (H + 2 ph - dil_h*(R-1) - 1) / sh + 1, Wo likewise:
//     y[n,k,i,j] = sum_{c,r,s} x[n, g*C/G + c, i*sh + r*dil_h - ph, j*sw + s*dil_w - pw] * w[k,c,r,s]
// with g = k / (K/G) the filter's group and c < C/G, where x outside
// [0,H) x [0,W) is zero (the padding). Depthwise is G = C.
// Dilation and groups: compiled and emulated, not yet run on a GPU.
//
// Versions:
//   v1  one thread per output element, grid-stride loop; 1-D grid of 256-thread blocks
//   v2  implicit GEMM, 64x64 block tile, TILE_K 16, 4x4 outputs per thread;
//       grid (ceil(N*Ho*Wo / 64), ceil(K/G / 64), G), 256 threads: one GEMM per group
//       (grid z), whose rows are the group's K/G filters; kk -> (c, r, s) from the
//       launcher's tap table (argument `taps` after y), so the main loop does no
//       integer division, and w rows in 16-byte loads where aligned (issue 10;
//       kernel_check --sass: div 8 -> 0, bench/results/sass-simt-v2-tables-2026-12-02.txt;
//       compiled and emulated, not yet run on a GPU)
// Fused epilogues (issue 11): conv2d_forward_bias_v1/v2, conv2d_forward_relu_v1/v2
// and conv2d_forward_bias_relu_v1/v2 are v1/v2 with the bias and/or ReLU applied
// to each output before its store, one template instance of the same code each
// (the *_bias_* kernels take b after w; compiled and emulated, not yet run on a GPU):
//     y[n,k,i,j] = relu(sum(...) + b[k]),  relu(v) = v * [v > 0]
// written as v > 0 ? v : v * 0, the array code's x * (x > 0) (NaN stays NaN),
// so the fused result equals conv, then y += b, then ReLU, bit for bit.

#include "common.cuh"

// ---------------------------------------------------------------------------
// Notes on the math.
// As a matrix product (implicit GEMM: the im2col matrix is never stored):
//     Out[m, col] = sum_kk A[m, kk] * B[kk, col]
// per group g (k = g*K/G + m, channels g*C/G + c):
//     m   = k - g*K/G             (M = K/G)
//     col = (n*Ho + i)*Wo + j     (Ngemm = N*Ho*Wo)
//     kk  = (c*R + r)*S + s       (Kgemm = C/G*R*S)
//     A[m, kk]   = w[k, c, r, s]  = w_flat[k*Kgemm + kk]  (w is already K x (C/G)RS)
//     B[kk, col] = x[n, g*C/G + c, i*sh + r*dil_h - ph, j*sw + s*dil_w - pw]  (0 in the padding)
//     y[n, k, i, j] = Out[m, col]
// Rows, columns and kk past the matrix edges load as zeros; outputs past the
// edges are not stored. The sum over kk runs in increasing order.

// Geometry parameters of every kernel here, in launcher order (conv_gpu._SIG).
#define CONV2D_GEOMETRY                                                                 \
    int N, int C, int H, int W, int K, int R, int S, int Ho, int Wo, int sh, int sw,   \
        int ph, int pw, int dil_h, int dil_w, int groups
#define CONV2D_GEOMETRY_ARGS N, C, H, W, K, R, S, Ho, Wo, sh, sw, ph, pw, dil_h, dil_w, groups

// The fused epilogue of output channel k (b is read only when BIAS).
template <bool BIAS, bool RELU>
__device__ __forceinline__ scalar_t conv_epilogue(scalar_t v, const scalar_t* __restrict__ b, int k) {
    if (BIAS) v += b[k];
    if (RELU) v = v > 0 ? v : v * (scalar_t)0;
    return v;
}

// ---------------------------------------------------------------------------
// v1: straight from the formula.
template <bool BIAS, bool RELU>
__device__ __forceinline__ void conv2d_forward_direct(
    const scalar_t* __restrict__ x, const scalar_t* __restrict__ w, const scalar_t* __restrict__ b,
    scalar_t* __restrict__ y, CONV2D_GEOMETRY)
{
    const Axis ah{H, Ho, R, sh, ph, dil_h}, aw{W, Wo, S, sw, pw, dil_w};
    const int Cg = C / groups, Kpg = K / groups;
    const idx_t total = (idx_t)N * K * Ho * Wo;
    for (idx_t idx = global_thread_id(); idx < total; idx += grid_stride()) {
        idx_t n = idx;
        const int j = split_last(n, Wo);
        const int i = split_last(n, Ho);
        const int k = split_last(n, K);
        const int c0 = (k / Kpg) * Cg;  // the group's first input channel
        scalar_t acc = 0;
        for (int c = 0; c < Cg; ++c) {
            const scalar_t* xc = x + (n * C + c0 + c) * H * W;
            const scalar_t* wc = w + ((idx_t)k * Cg + c) * R * S;
            for_each_in_window(FLAT_AXIS, ah, aw, 0, i, j,
                               [&](idx_t at, int tap) { acc += xc[at] * wc[tap]; });
        }
        y[idx] = conv_epilogue<BIAS, RELU>(acc, b, k);
    }
}

extern "C" __global__ void conv2d_forward_v1(
    const scalar_t* __restrict__ x, const scalar_t* __restrict__ w, scalar_t* __restrict__ y,
    CONV2D_GEOMETRY)
{
    conv2d_forward_direct<false, false>(x, w, nullptr, y, CONV2D_GEOMETRY_ARGS);
}

extern "C" __global__ void conv2d_forward_bias_v1(
    const scalar_t* __restrict__ x, const scalar_t* __restrict__ w, const scalar_t* __restrict__ b,
    scalar_t* __restrict__ y, CONV2D_GEOMETRY)
{
    conv2d_forward_direct<true, false>(x, w, b, y, CONV2D_GEOMETRY_ARGS);
}

extern "C" __global__ void conv2d_forward_relu_v1(
    const scalar_t* __restrict__ x, const scalar_t* __restrict__ w, scalar_t* __restrict__ y,
    CONV2D_GEOMETRY)
{
    conv2d_forward_direct<false, true>(x, w, nullptr, y, CONV2D_GEOMETRY_ARGS);
}

extern "C" __global__ void conv2d_forward_bias_relu_v1(
    const scalar_t* __restrict__ x, const scalar_t* __restrict__ w, const scalar_t* __restrict__ b,
    scalar_t* __restrict__ y, CONV2D_GEOMETRY)
{
    conv2d_forward_direct<true, true>(x, w, b, y, CONV2D_GEOMETRY_ARGS);
}

// ---------------------------------------------------------------------------
// v2: implicit GEMM (tiles in common.cuh, loop in implicit_gemm_mainloop).
// A: 16 consecutive lanes read 16 consecutive weights of one filter row.
// B (B_ALONG_COLUMNS): 64 consecutive lanes read consecutive output positions
// (consecutive x addresses along a row when sw = 1). The column's (n, i, j)
// is decoded once into the offset of its window origin and that origin
// (i*sh - ph, j*sw - pw); kk -> (c, r, s) comes from the launcher's tap table
// (common.cuh's Tap), taps[kk] = (c*H*W + r*dil_h*W + s*dil_w, r*dil_h, s*dil_w)
// for the group's C/G channels: the main loop does no integer division. A
// warp's 32 lanes share their kk, so the table load is a broadcast. When the
// filter rows are whole 16-byte runs (C/G*R*S % 4 == 0, w 16-byte aligned;
// uniform over the grid) A is read with 128-bit loads (A_RUNS in common.cuh),
// else one weight at a time; both sum in the same order. The epilogue runs in
// store_tile, on registers.
template <bool BIAS, bool RELU>
__device__ __forceinline__ void conv2d_forward_gemm(
    const scalar_t* __restrict__ x, const scalar_t* __restrict__ w, const scalar_t* __restrict__ b,
    scalar_t* __restrict__ y, const long long* __restrict__ taps, CONV2D_GEOMETRY)
{
    const int Cg = C / groups, Kpg = K / groups, g = blockIdx.z;
    const int Kg = Cg * R * S;
    const idx_t HoWo = (idx_t)Ho * Wo;
    const idx_t Ng = (idx_t)N * HoWo;
    const scalar_t* wg = w + (idx_t)g * Kpg * Kg;   // the group's filters

    struct Column {
        idx_t at;             // offset in x of the window origin of x[n, g*C/G] (may be < 0)
        int hbase, wbase;     // window origin (i*sh - ph, j*sw - pw)
        bool ok;
    };
    auto column_of = [&](idx_t col) {
        Column b{0, 0, 0, col < Ng};
        if (b.ok) {
            const idx_t n = col / HoWo;
            const int p = (int)(col - n * HoWo);
            b.hbase = (p / Wo) * sh - ph;
            b.wbase = (p - (p / Wo) * Wo) * sw - pw;
            b.at = (n * C + (idx_t)g * Cg) * H * W + (idx_t)b.hbase * W + b.wbase;
        }
        return b;
    };
    auto load_a = [&](int m, int kk) {
        return m < Kpg ? __ldg(wg + (idx_t)m * Kg + kk) : (scalar_t)0;
    };
    auto load_b = [&](int kk, const Column& b) {
        const Tap t = unpack_tap(__ldg(taps + kk));
        return b.ok && in_range(b.hbase + t.dh, H) && in_range(b.wbase + t.dw, W)
                   ? __ldg(x + (b.at + t.off)) : (scalar_t)0;
    };
    // row m of the group's tile is filter g*K/G + m
    auto epilogue = [&](int m, scalar_t v) { return conv_epilogue<BIAS, RELU>(v, b, g * Kpg + m); };

    // A_RUNS: 4 consecutive weights of a row per load, 16-byte aligned when the rows are
    auto load_a_run = [&](int m, int kk, scalar_t (&v)[4]) {
        if (m < Kpg) load_run4(wg + (idx_t)m * Kg + kk, v);
        else for (int e = 0; e < 4; ++e) v[e] = 0;
    };

    scalar_t acc[THREAD_M][THREAD_N] = {};
    if (Kg % 4 == 0 && aligned<16>(wg))   // uniform over the grid
        implicit_gemm_mainloop<B_ALONG_COLUMNS, true>(0, Kg, load_a_run, column_of, load_b, acc);
    else
        implicit_gemm_mainloop<B_ALONG_COLUMNS>(0, Kg, load_a, column_of, load_b, acc);
    store_tile(acc, y + (idx_t)g * Kpg * HoWo, K, Ng, HoWo, Kpg, epilogue);
}

extern "C" __global__ void __launch_bounds__(TILE_THREADS) conv2d_forward_v2(
    const scalar_t* __restrict__ x, const scalar_t* __restrict__ w, scalar_t* __restrict__ y,
    const long long* __restrict__ taps, CONV2D_GEOMETRY)
{
    conv2d_forward_gemm<false, false>(x, w, nullptr, y, taps, CONV2D_GEOMETRY_ARGS);
}

extern "C" __global__ void __launch_bounds__(TILE_THREADS) conv2d_forward_bias_v2(
    const scalar_t* __restrict__ x, const scalar_t* __restrict__ w, const scalar_t* __restrict__ b,
    scalar_t* __restrict__ y, const long long* __restrict__ taps, CONV2D_GEOMETRY)
{
    conv2d_forward_gemm<true, false>(x, w, b, y, taps, CONV2D_GEOMETRY_ARGS);
}

extern "C" __global__ void __launch_bounds__(TILE_THREADS) conv2d_forward_relu_v2(
    const scalar_t* __restrict__ x, const scalar_t* __restrict__ w, scalar_t* __restrict__ y,
    const long long* __restrict__ taps, CONV2D_GEOMETRY)
{
    conv2d_forward_gemm<false, true>(x, w, nullptr, y, taps, CONV2D_GEOMETRY_ARGS);
}

extern "C" __global__ void __launch_bounds__(TILE_THREADS) conv2d_forward_bias_relu_v2(
    const scalar_t* __restrict__ x, const scalar_t* __restrict__ w, const scalar_t* __restrict__ b,
    scalar_t* __restrict__ y, const long long* __restrict__ taps, CONV2D_GEOMETRY)
{
    conv2d_forward_gemm<true, true>(x, w, b, y, taps, CONV2D_GEOMETRY_ARGS);
}
