// conv2d_backward.cu: 2-D convolution backward, data and filter gradients
// (1-D runs here with H = R = 1).
//
// Build and launch: at run time through gpucnn.kernel_loader (NVRTC via
// cupy.RawModule, options --std=c++17 -lineinfo -DSCALAR=float|double); the
// launchers are gpucnn/functional/conv_gpu.py. Standalone compile check:
//     nvcc -arch=sm_90 -cubin -I kernels -DSCALAR=float kernels/conv2d_backward.cu
// Status: verified on an H100 (GPU tests + compute-sanitizer, bench/results/gpu-h100-2026-11-24).
//
// Math. x (N, C, H, W), w (K, C/G, R, S), stride (sh, sw), padding (ph, pw),
// dilation (dil_h, dil_w), G groups, dy (N, K, Ho, Wo),
// Ho = (H + 2 ph - dil_h*(R-1) - 1) / sh + 1, Wo likewise.
//     dx[n,c,h,w] = sum_{k,r,s} dy[n, k, (h + ph - r*dil_h)/sh, (w + pw - s*dil_w)/sw] * w[k,c',r,s]
//                   over the k of c's group (c' = c - g*C/G) and the (r, s) where both
//                   divisions are exact and land in [0,Ho) x [0,Wo): the 180-degree
//                   rotated filter correlated with the stride-dilated dy.
//     dw[k,c,r,s] = sum_{n,i,j} dy[n,k,i,j] * x[n, g*C/G + c, i*sh + r*dil_h - ph, j*sw + s*dil_w - pw]
//                   (x zero outside the image; g = k / (K/G)).
// The transposed convolution (conv_transpose*d) is backward_data with its
// input in dy's place. Dilation and groups: compiled and emulated, not yet
// run on a GPU.
//
// Versions:
//   backward_data_v1          one thread per dx element; 1-D grid of 256-thread blocks
//   backward_data_v2          implicit GEMM per group (M = C/G, Ngemm = N*H*W, Kgemm = K/G*R*S),
//                             64x64 tile, 4x4 per thread; grid (ceil(N*H*W/64), ceil(C/G/64), G),
//                             256 threads
//   backward_filter_v1        one thread per dw element (sums over n, i, j in order); 1-D grid
//   backward_filter_v2        implicit GEMM per group (M = K/G, Ngemm = C/G*R*S, Kgemm =
//                             N*Ho*Wo) split along Kgemm into chunks; grid (ceil(C/G*RS/64),
//                             ceil(K/G/64), G*splits) (z = g*splits + chunk), 256 threads;
//                             chunk z writes its partial dw to out + chunk*K*(C/G)RS
//   backward_filter_reduce_v2 dw[e] = sum_z partial[z][e] for z = 0, 1, ... in order; 1-D grid
// Both backward_filter versions are deterministic: no atomics, every sum in a
// fixed order, so equal inputs give bitwise equal dw.

#include "common.cuh"

// ---------------------------------------------------------------------------
// Notes on the math.
// Backward data, gather form. For output position (n, c, h, w) the windows
// that touched it are the outputs i with i*sh - ph <= h <= i*sh - ph + R - 1
// (covering_outputs in common.cuh), and the filter tap is r = h + ph - i*sh.
// v1 walks those windows directly (for_each_covering_window, no divisibility
// tests); v2 tests each tap with exact_output. As a GEMM (v2):
//     m = c, col = (n*H + h)*W + w, kk = (k*R + r)*S + s
//     A[m, kk]   = w[k, c, r, s]
//     B[kk, col] = dy[n, k, (h + ph - r)/sh, (w + pw - s)/sw]  if exact and in range, else 0
// Backward filter as a GEMM (v2):
//     m = k, col = (c*R + r)*S + s, kk = (n*Ho + i)*Wo + j
//     A[m, kk]   = dy[n, k, i, j]
//     B[kk, col] = x[n, c, i*sh + r - ph, j*sw + s - pw]  (0 in the padding)
// Kgemm = N*Ho*Wo is long and M*Ngemm is small, so the kk range is cut into
// `splits` chunks (a multiple of TILE_K each, chosen by the launcher from the
// shapes alone) that run as separate blocks; a second kernel adds the
// partials in chunk order. With one chunk the first kernel writes dw itself.

// ---------------------------------------------------------------------------
// backward data v1: gather over the windows that contain (h, w).
extern "C" __global__ void conv2d_backward_data_v1(
    const scalar_t* __restrict__ dy, const scalar_t* __restrict__ w, scalar_t* __restrict__ dx,
    int N, int C, int H, int W, int K, int R, int S, int Ho, int Wo,
    int sh, int sw, int ph, int pw, int dil_h, int dil_w, int groups)
{
    const Axis ah{H, Ho, R, sh, ph, dil_h}, aw{W, Wo, S, sw, pw, dil_w};
    const int Cg = C / groups, Kpg = K / groups;
    const idx_t total = (idx_t)N * C * H * W;
    for (idx_t idx = global_thread_id(); idx < total; idx += grid_stride()) {
        idx_t n = idx;
        const int ww = split_last(n, W);
        const int h = split_last(n, H);
        const int c = split_last(n, C);
        const int g = c / Cg;
        scalar_t acc = 0;
        for (int k = g * Kpg; k < (g + 1) * Kpg; ++k) {
            const scalar_t* dyk = dy + (n * K + k) * Ho * Wo;
            const scalar_t* wk = w + ((idx_t)k * Cg + (c - g * Cg)) * R * S;
            for_each_covering_window(FLAT_AXIS, ah, aw, 0, h, ww,
                                     [&](idx_t o, int tap) { acc += dyk[o] * wk[tap]; });
        }
        dx[idx] = acc;
    }
}

// ---------------------------------------------------------------------------
// backward data v2: implicit GEMM with the loop and load layout of
// conv2d_forward_v2 (A: 16 lanes along kk; B: 64 lanes along the columns,
// i.e. along dx's w, each column decoded once).
extern "C" __global__ void __launch_bounds__(TILE_THREADS) conv2d_backward_data_v2(
    const scalar_t* __restrict__ dy, const scalar_t* __restrict__ w, scalar_t* __restrict__ dx,
    int N, int C, int H, int W, int K, int R, int S, int Ho, int Wo,
    int sh, int sw, int ph, int pw, int dil_h, int dil_w, int groups)
{
    const int RS = R * S;
    const int Cg = C / groups, Kpg = K / groups, g = blockIdx.z;
    const int Kg = Kpg * RS;
    const idx_t HW = (idx_t)H * W;
    const idx_t Ng = (idx_t)N * HW;

    struct Column {
        const scalar_t* img;  // dy[n]
        int hb, wb;           // shifted position (h + ph, w + pw)
        bool ok;
    };
    auto column_of = [&](idx_t col) {
        Column b{dy, 0, 0, col < Ng};
        if (b.ok) {
            const idx_t n = col / HW;
            const int p = (int)(col - n * HW);
            b.hb = p / W + ph;
            b.wb = p - (p / W) * W + pw;
            b.img = dy + (n * K + (idx_t)g * Kpg) * Ho * Wo;   // the group's first dy channel
        }
        return b;
    };
    auto load_a = [&](int c, int kk) {  // w[g*K/G + k, c, r, s], kk = k*RS + rs
        const int k = kk / RS, rs = kk - (kk / RS) * RS;
        return c < Cg ? __ldg(w + (((idx_t)g * Kpg + k) * Cg + c) * RS + rs) : (scalar_t)0;
    };
    auto load_b = [&](int kk, const Column& b) {
        const int k = kk / RS, rs = kk - (kk / RS) * RS;
        const int r = rs / S, s = rs - (rs / S) * S;
        int i, j;
        return b.ok && exact_output(b.hb - r * dil_h, sh, Ho, &i) && exact_output(b.wb - s * dil_w, sw, Wo, &j)
                   ? __ldg(b.img + ((idx_t)k * Ho + i) * Wo + j) : (scalar_t)0;
    };

    scalar_t acc[THREAD_M][THREAD_N] = {};
    implicit_gemm_mainloop<B_ALONG_COLUMNS>(0, Kg, load_a, column_of, load_b, acc);
    store_tile(acc, dx + (idx_t)g * Cg * HW, C, Ng, HW, Cg);
}

// ---------------------------------------------------------------------------
// backward filter v1: one thread per dw element, sum over (n, i, j) in order.
extern "C" __global__ void conv2d_backward_filter_v1(
    const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x, scalar_t* __restrict__ dw,
    int N, int C, int H, int W, int K, int R, int S, int Ho, int Wo,
    int sh, int sw, int ph, int pw, int dil_h, int dil_w, int groups)
{
    const Axis ah{H, Ho, R, sh, ph, dil_h}, aw{W, Wo, S, sw, pw, dil_w};
    const int Cg = C / groups, Kpg = K / groups;
    const idx_t total = (idx_t)K * Cg * R * S;
    for (idx_t idx = global_thread_id(); idx < total; idx += grid_stride()) {
        const FilterTap f = filter_tap(idx, Cg, Kpg, R, S);
        scalar_t acc = 0;
        for (int n = 0; n < N; ++n) {
            const scalar_t* dyk = dy + ((idx_t)n * K + f.k) * Ho * Wo;
            const scalar_t* xc = x + ((idx_t)n * C + f.c) * H * W;
            for_each_window_at_tap(FLAT_AXIS, ah, aw, 0, f.r, f.s,
                                   [&](idx_t o, idx_t at) { acc += dyk[o] * xc[at]; });
        }
        dw[idx] = acc;
    }
}

// ---------------------------------------------------------------------------
// backward filter v2: split-Kgemm implicit GEMM. Both operands are read along
// kk = (n, i, j), the contiguous direction of dy and (for sw = 1) of x:
//   A: 16 lanes along kk, rows (filters k).
//   B (B_ALONG_K): 16 lanes along kk; each of the thread's 4 columns has its
//     (c, r, s) decoded once into an offset into x and the tap shift
//     (r - ph, s - pw).
// Chunk z = blockIdx.z covers kk in [z*chunk, min((z+1)*chunk, Kgemm)),
// chunk a multiple of TILE_K; it writes out[z*K*CRS + k*CRS + col] for every
// in-range (k, col) of its tile, zeros included.
extern "C" __global__ void __launch_bounds__(TILE_THREADS) conv2d_backward_filter_v2(
    const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x, scalar_t* __restrict__ out,
    int N, int C, int H, int W, int K, int R, int S, int Ho, int Wo,
    int sh, int sw, int ph, int pw, int dil_h, int dil_w, int groups, long long chunk)
{
    const int RS = R * S;
    const int Cg = C / groups, Kpg = K / groups;
    const int splits = gridDim.z / groups;
    const int g = blockIdx.z / splits, z = blockIdx.z - g * splits;
    const int Ng = Cg * RS;
    const idx_t HoWo = (idx_t)Ho * Wo;
    const idx_t HW = (idx_t)H * W;
    const idx_t Kg = (idx_t)N * HoWo;
    const idx_t k_begin = (idx_t)z * chunk;
    const idx_t k_end = k_begin + chunk < Kg ? k_begin + chunk : Kg;

    struct Column {
        idx_t off;   // (g*C/G + c)*H*W
        int dh, dw;  // tap shift (r - ph, s - pw)
        bool ok;
    };
    auto column_of = [&](idx_t col) {
        const bool ok = col < Ng;
        const int cc = ok ? (int)col : 0;
        const int c = cc / RS, rs = cc - (cc / RS) * RS;
        const int r = rs / S, s = rs - (rs / S) * S;
        return Column{((idx_t)g * Cg + c) * HW, r * dil_h - ph, s * dil_w - pw, ok};
    };
    auto load_a = [&](int k, idx_t kk) {  // dy[n, g*K/G + k, p], kk = n*HoWo + p
        const idx_t n = kk / HoWo, p = kk - (kk / HoWo) * HoWo;
        return k < Kpg ? __ldg(dy + (n * K + (idx_t)g * Kpg + k) * HoWo + p) : (scalar_t)0;
    };
    auto load_b = [&](idx_t kk, const Column& b) {
        const idx_t n = kk / HoWo;
        const int p = (int)(kk - n * HoWo);
        const int h = (p / Wo) * sh + b.dh, ww = (p - (p / Wo) * Wo) * sw + b.dw;
        return b.ok && in_range(h, H) && in_range(ww, W)
                   ? __ldg(x + n * C * HW + b.off + (idx_t)h * W + ww) : (scalar_t)0;
    };

    scalar_t acc[THREAD_M][THREAD_N] = {};
    implicit_gemm_mainloop<B_ALONG_K>(k_begin, k_end, load_a, column_of, load_b, acc);
    store_tile(acc, out + ((idx_t)z * K + (idx_t)g * Kpg) * Ng, Kpg, Ng, Ng);
}

// dw[e] = sum_{z < splits} partial[z * count + e], z in increasing order.
extern "C" __global__ void conv2d_backward_filter_reduce_v2(
    const scalar_t* __restrict__ partial, scalar_t* __restrict__ dw, long long count, int splits)
{
    for (idx_t e = global_thread_id(); e < count; e += grid_stride()) {
        scalar_t acc = 0;
        for (int z = 0; z < splits; ++z) acc += partial[(idx_t)z * count + e];
        dw[e] = acc;
    }
}
