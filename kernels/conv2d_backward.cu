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
//                             256 threads; each tap's (r, s), split by the stride, and its offsets
//                             from the launcher's table (argument `taps` after dx)
//   backward_filter_v1        one thread per dw element (sums over n, i, j in order); 1-D grid
//   backward_filter_v2        implicit GEMM per group (M = K/G, Ngemm = C/G*R*S, Kgemm =
//                             N*Ho*Wo) split along Kgemm into chunks; grid (ceil(C/G*RS/64),
//                             ceil(K/G/64), G*splits) (z = g*splits + chunk), 256 threads;
//                             chunk z writes its partial dw to out + chunk*K*(C/G)RS; kk = (n, i, j)
//                             stepped incrementally (KkWalk)
// Neither v2 main loop does an integer division (issue 10; kernel_check --sass: div 20 -> 0,
// bench/results/sass-simt-v2-tables-2026-12-02.txt; the sums keep their order, so results are
// bitwise those of the earlier v2 in the emulator). Compiled and emulated, not yet run on a GPU.
//   backward_filter_reduce_v2 dw[e] = sum_z partial[z][e] for z = 0, 1, ... in order; 1-D grid
// Both backward_filter versions are deterministic: no atomics, every sum in a
// fixed order, so equal inputs give bitwise equal dw.
// Fused variants (issue 11; compiled and emulated, not yet run on a GPU), one
// template instance of the same code each, taking y (the forward's output
// after ReLU) after the two inputs:
//   backward_data_relu_v1/v2             dy replaced by dy * [y > 0] as it is loaded
//                                        (ReLU's backward folded into the loader)
//   backward_filter_relu_v1/v2           the same in backward-filter's dy loads
//   backward_filter_bias_v1/v2,          also the bias gradient db[k] = sum_{n,i,j} dy'
//   backward_filter_bias_relu_v1/v2      (dy' = dy, or the masked dy), written after dw:
//                                        out = [dw (K*C/G*R*S) | db (K)]; v1 gives db its
//                                        own K threads, v2 sums A's rows in the main loop
//                                        (implicit_gemm_mainloop's see_a) and per chunk,
//                                        and the reduce adds [dw | db] chunk partials.
// The masked dy is v > 0 ? dy : dy * 0 per element: the array code's dy * (y > 0).
// Without RELU, y is not read (the launcher passes dy).

#include "common.cuh"

// ---------------------------------------------------------------------------
// Notes on the math.
// Backward data, gather form. For output position (n, c, h, w) the windows
// that touched it are the outputs i with i*sh - ph <= h <= i*sh - ph + R - 1
// (covering_outputs in common.cuh), and the filter tap is r = h + ph - i*sh.
// v1 walks those windows directly (for_each_covering_window, no divisibility
// tests); v2 tests each tap as exact_output would, from the table's quotient
// and remainder by the stride (no division). As a GEMM (v2):
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

// Geometry parameters of every kernel here, in launcher order (conv_gpu._SIG).
#define CONV2D_GEOMETRY                                                                 \
    int N, int C, int H, int W, int K, int R, int S, int Ho, int Wo, int sh, int sw,   \
        int ph, int pw, int dil_h, int dil_w, int groups
#define CONV2D_GEOMETRY_ARGS N, C, H, W, K, R, S, Ho, Wo, sh, sw, ph, pw, dil_h, dil_w, groups

// dy[at], masked by ReLU's derivative at the same position when RELU.
template <bool RELU>
__device__ __forceinline__ scalar_t relu_grad(scalar_t g, const scalar_t* __restrict__ y, idx_t at) {
    if (RELU) g = __ldg(y + at) > 0 ? g : g * (scalar_t)0;
    return g;
}

// ---------------------------------------------------------------------------
// backward data v1: gather over the windows that contain (h, w).
template <bool RELU>
__device__ __forceinline__ void conv2d_backward_data_direct(
    const scalar_t* __restrict__ dy, const scalar_t* __restrict__ w, const scalar_t* __restrict__ y,
    scalar_t* __restrict__ dx, CONV2D_GEOMETRY)
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
            const idx_t dyk = (n * K + k) * Ho * Wo;
            const scalar_t* wk = w + ((idx_t)k * Cg + (c - g * Cg)) * R * S;
            for_each_covering_window(FLAT_AXIS, ah, aw, 0, h, ww, [&](idx_t o, int tap) {
                acc += relu_grad<RELU>(dy[dyk + o], y, dyk + o) * wk[tap];
            });
        }
        dx[idx] = acc;
    }
}

extern "C" __global__ void conv2d_backward_data_v1(
    const scalar_t* __restrict__ dy, const scalar_t* __restrict__ w, scalar_t* __restrict__ dx,
    CONV2D_GEOMETRY)
{
    conv2d_backward_data_direct<false>(dy, w, nullptr, dx, CONV2D_GEOMETRY_ARGS);
}

extern "C" __global__ void conv2d_backward_data_relu_v1(
    const scalar_t* __restrict__ dy, const scalar_t* __restrict__ w, const scalar_t* __restrict__ y,
    scalar_t* __restrict__ dx, CONV2D_GEOMETRY)
{
    conv2d_backward_data_direct<true>(dy, w, y, dx, CONV2D_GEOMETRY_ARGS);
}

// ---------------------------------------------------------------------------
// backward data v2: implicit GEMM with the loop and load layout of
// conv2d_forward_v2 (A: 16 lanes along kk; B: 64 lanes along the columns,
// i.e. along dx's w, each column decoded once). No integer division in the
// main loop: the column splits its shifted position once into quotient and
// remainder by the stride, hb = h + ph = hq*sh + hr, and each tap r*dil_h =
// rq*sh + rr comes split from the launcher's table, two words per kk:
//     taps[2 kk]     = Tap(k*Ho*Wo - rq*Wo - sq, rq, sq)    (B: the dy offset, the quotients)
//     taps[2 kk + 1] = Tap(k*(C/G)*R*S + r*S + s, rr, sr)  (A: the w offset; the remainders)
// (kk = (k*R + r)*S + s over the group's K/G filters). hb - r*dil_h is then a
// multiple of sh exactly when hr == rr, the output row i = hq - rq, and the
// dy element sits at the column's offset (hq*Wo + wq from dy[n, g*K/G]) plus
// the tap's offset: the exact_output test without its division.
template <bool RELU>
__device__ __forceinline__ void conv2d_backward_data_gemm(
    const scalar_t* __restrict__ dy, const scalar_t* __restrict__ w, const scalar_t* __restrict__ y,
    scalar_t* __restrict__ dx, const long long* __restrict__ taps, CONV2D_GEOMETRY)
{
    const int Cg = C / groups, Kpg = K / groups, g = blockIdx.z;
    const int RS = R * S, Kg = Kpg * RS;
    const idx_t HW = (idx_t)H * W;
    const idx_t Ng = (idx_t)N * HW;
    const scalar_t* wg = w + (idx_t)g * Kpg * Cg * RS;   // the group's filters

    struct Column {
        idx_t at;             // offset of dy[n, g*K/G, hq, wq] (and of y's, for the mask)
        int hq, wq, hr, wr;   // (h + ph, w + pw) = (hq*sh + hr, wq*sw + wr)
        bool ok;
    };
    auto column_of = [&](idx_t col) {
        Column b{0, 0, 0, 0, 0, col < Ng};
        if (b.ok) {
            const idx_t n = col / HW;
            const int p = (int)(col - n * HW);
            const int hb = p / W + ph, wb = p - (p / W) * W + pw;
            b.hq = hb / sh, b.hr = hb - b.hq * sh;
            b.wq = wb / sw, b.wr = wb - b.wq * sw;
            b.at = (n * K + (idx_t)g * Kpg) * Ho * Wo + (idx_t)b.hq * Wo + b.wq;   // the group's first dy channel
        }
        return b;
    };
    auto load_a = [&](int c, int kk) {  // w[g*K/G + k, c, r, s]
        return c < Cg ? __ldg(wg + (idx_t)c * RS + unpack_tap(__ldg(taps + 2 * kk + 1)).off) : (scalar_t)0;
    };
    auto load_b = [&](int kk, const Column& b) {
        const Tap q = unpack_tap(__ldg(taps + 2 * kk)), rem = unpack_tap(__ldg(taps + 2 * kk + 1));
        if (!(b.ok && b.hr == rem.dh && b.wr == rem.dw && in_range(b.hq - q.dh, Ho) && in_range(b.wq - q.dw, Wo)))
            return (scalar_t)0;
        const idx_t at = b.at + q.off;
        return relu_grad<RELU>(__ldg(dy + at), y, at);
    };

    scalar_t acc[THREAD_M][THREAD_N] = {};
    implicit_gemm_mainloop<B_ALONG_COLUMNS>(0, Kg, load_a, column_of, load_b, acc);
    store_tile(acc, dx + (idx_t)g * Cg * HW, C, Ng, HW, Cg);
}

extern "C" __global__ void __launch_bounds__(TILE_THREADS) conv2d_backward_data_v2(
    const scalar_t* __restrict__ dy, const scalar_t* __restrict__ w, scalar_t* __restrict__ dx,
    const long long* __restrict__ taps, CONV2D_GEOMETRY)
{
    conv2d_backward_data_gemm<false>(dy, w, nullptr, dx, taps, CONV2D_GEOMETRY_ARGS);
}

extern "C" __global__ void __launch_bounds__(TILE_THREADS) conv2d_backward_data_relu_v2(
    const scalar_t* __restrict__ dy, const scalar_t* __restrict__ w, const scalar_t* __restrict__ y,
    scalar_t* __restrict__ dx, const long long* __restrict__ taps, CONV2D_GEOMETRY)
{
    conv2d_backward_data_gemm<true>(dy, w, y, dx, taps, CONV2D_GEOMETRY_ARGS);
}

// ---------------------------------------------------------------------------
// backward filter v1: one thread per dw element, sum over (n, i, j) in order;
// with BIAS, K more threads after them, thread K*C/G*R*S + k summing dy[:, k]
// (in (n, i, j) order) into out[K*C/G*R*S + k].
template <bool BIAS, bool RELU>
__device__ __forceinline__ void conv2d_backward_filter_direct(
    const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x, const scalar_t* __restrict__ y,
    scalar_t* __restrict__ dw, CONV2D_GEOMETRY)
{
    const Axis ah{H, Ho, R, sh, ph, dil_h}, aw{W, Wo, S, sw, pw, dil_w};
    const int Cg = C / groups, Kpg = K / groups;
    const idx_t HoWo = (idx_t)Ho * Wo;
    const idx_t total_w = (idx_t)K * Cg * R * S;
    const idx_t total = total_w + (BIAS ? K : 0);
    for (idx_t idx = global_thread_id(); idx < total; idx += grid_stride()) {
        scalar_t acc = 0;
        if (BIAS && idx >= total_w) {
            const idx_t k = idx - total_w;
            for (int n = 0; n < N; ++n) {
                const idx_t dyk = (n * K + k) * HoWo;
                for (idx_t o = 0; o < HoWo; ++o) acc += relu_grad<RELU>(dy[dyk + o], y, dyk + o);
            }
        } else {
            const FilterTap f = filter_tap(idx, Cg, Kpg, R, S);
            for (int n = 0; n < N; ++n) {
                const idx_t dyk = ((idx_t)n * K + f.k) * HoWo;
                const scalar_t* xc = x + ((idx_t)n * C + f.c) * H * W;
                for_each_window_at_tap(FLAT_AXIS, ah, aw, 0, f.r, f.s, [&](idx_t o, idx_t at) {
                    acc += relu_grad<RELU>(dy[dyk + o], y, dyk + o) * xc[at];
                });
            }
        }
        dw[idx] = acc;
    }
}

extern "C" __global__ void conv2d_backward_filter_v1(
    const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x, scalar_t* __restrict__ dw,
    CONV2D_GEOMETRY)
{
    conv2d_backward_filter_direct<false, false>(dy, x, nullptr, dw, CONV2D_GEOMETRY_ARGS);
}

extern "C" __global__ void conv2d_backward_filter_relu_v1(
    const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x, const scalar_t* __restrict__ y,
    scalar_t* __restrict__ out, CONV2D_GEOMETRY)
{
    conv2d_backward_filter_direct<false, true>(dy, x, y, out, CONV2D_GEOMETRY_ARGS);
}

extern "C" __global__ void conv2d_backward_filter_bias_v1(
    const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x, const scalar_t* __restrict__ y,
    scalar_t* __restrict__ out, CONV2D_GEOMETRY)
{
    conv2d_backward_filter_direct<true, false>(dy, x, y, out, CONV2D_GEOMETRY_ARGS);
}

extern "C" __global__ void conv2d_backward_filter_bias_relu_v1(
    const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x, const scalar_t* __restrict__ y,
    scalar_t* __restrict__ out, CONV2D_GEOMETRY)
{
    conv2d_backward_filter_direct<true, true>(dy, x, y, out, CONV2D_GEOMETRY_ARGS);
}

// ---------------------------------------------------------------------------
// backward filter v2: split-Kgemm implicit GEMM. Both operands are read along
// kk = (n, i, j), the contiguous direction of dy and (for sw = 1) of x:
//   A: 16 lanes along kk, rows (filters k).
//   B (B_ALONG_K): 16 lanes along kk; each of the thread's 4 columns has its
//     (c, r, s) decoded once into an offset into x and the tap shift
//     (r*dil_h - ph, s*dil_w - pw).
// A and B read the same kk per thread (k_begin + tid % 16, then on by TILE_K
// a tile), so the thread decodes it once, before the loop, into (n, i, j) and
// then steps that state by TILE_K = (dn*Ho + di)*Wo + dj with two carries
// (KkWalk): the main loop does no integer division.
// Chunk z = blockIdx.z covers kk in [z*chunk, min((z+1)*chunk, Kgemm)),
// chunk a multiple of TILE_K; it writes out[z*stride + k*CRS + col] for every
// in-range (k, col) of its tile, zeros included (stride = K*CRS, + K with
// BIAS: the blocks of column tile 0 then also write their rows' sums of A,
// the chunk's partial db, at out[z*stride + K*CRS + k]).

// kk = (n*Ho + i)*Wo + j, walked in steps of TILE_K without division: the
// step is split once, TILE_K = (dn*Ho + di)*Wo + dj (di < Ho, dj < Wo), so
// adding it digit by digit carries at most 1 into i and then into n. dy_n and
// x_n follow n as the offsets of image n in dy and x; p = i*Wo + j.
struct KkWalk {
    int i, j, p, di, dj, dp, Ho, Wo;
    idx_t dy_n, x_n, dy_step, x_step, dy_image, x_image;
    __device__ __forceinline__ KkWalk(idx_t kk, int Ho_, int Wo_, idx_t dy_image_, idx_t x_image_)
        : Ho(Ho_), Wo(Wo_), dy_image(dy_image_), x_image(x_image_) {
        const idx_t HoWo = (idx_t)Ho * Wo;
        const idx_t n = kk / HoWo, dn = TILE_K / HoWo;
        p = (int)(kk - n * HoWo);
        i = p / Wo, j = p - i * Wo;
        dp = (int)(TILE_K - dn * HoWo);
        di = dp / Wo, dj = dp - di * Wo;
        dy_n = n * dy_image, x_n = n * x_image;
        dy_step = dn * dy_image, x_step = dn * x_image;
    }
    __device__ __forceinline__ void next() {   // kk += TILE_K
        j += dj, i += di, p += dp, dy_n += dy_step, x_n += x_step;
        if (j >= Wo) j -= Wo, ++i;
        if (i >= Ho) i -= Ho, p -= Ho * Wo, dy_n += dy_image, x_n += x_image;
    }
};

template <bool BIAS, bool RELU>
__device__ __forceinline__ void conv2d_backward_filter_gemm(
    const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x, const scalar_t* __restrict__ y,
    scalar_t* __restrict__ out, CONV2D_GEOMETRY, long long chunk)
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
    scalar_t* out_z = out + (idx_t)z * ((idx_t)K * Ng + (BIAS ? K : 0));

    struct Column {
        idx_t off;   // (g*C/G + c)*H*W + dh*W + dw
        int dh, dw;  // tap shift (r*dil_h - ph, s*dil_w - pw)
        bool ok;
    };
    auto column_of = [&](idx_t col) {
        const bool ok = col < Ng;
        const int cc = ok ? (int)col : 0;
        const int c = cc / RS, rs = cc - (cc / RS) * RS;
        const int dh = (rs / S) * dil_h - ph, dw = (rs - (rs / S) * S) * dil_w - pw;
        return Column{((idx_t)g * Cg + c) * HW + (idx_t)dh * W + dw, dh, dw, ok};
    };
    // the thread's kk: k_begin + tid % TILE_K (A's and B_ALONG_K's layout), stepped by next_tile
    KkWalk kk_at(k_begin + threadIdx.x % TILE_K, Ho, Wo, (idx_t)K * HoWo, (idx_t)C * HW);
    auto next_tile = [&] { kk_at.next(); };
    auto load_a = [&](int k, idx_t) {  // dy[n, g*K/G + k, p]
        const idx_t at = kk_at.dy_n + ((idx_t)g * Kpg + k) * HoWo + kk_at.p;
        return k < Kpg ? relu_grad<RELU>(__ldg(dy + at), y, at) : (scalar_t)0;
    };
    auto load_b = [&](idx_t, const Column& b) {
        const int ih = kk_at.i * sh, jw = kk_at.j * sw;
        return b.ok && in_range(ih + b.dh, H) && in_range(jw + b.dw, W)
                   ? __ldg(x + (kk_at.x_n + b.off + (idx_t)ih * W + jw)) : (scalar_t)0;
    };

    scalar_t acc[THREAD_M][THREAD_N] = {};
    if (BIAS) {
        scalar_t row_sum[4] = {};   // this thread's share of db over the chunk
        auto see_a = [&](const scalar_t (&a)[4]) {
#pragma unroll
            for (int l = 0; l < 4; ++l) row_sum[l] += a[l];
        };
        implicit_gemm_mainloop<B_ALONG_K>(k_begin, k_end, load_a, column_of, load_b, acc, see_a, next_tile);
        if (blockIdx.x == 0)   // uniform over the block; one column tile writes db
            store_a_row_sums(row_sum, out_z + (idx_t)K * Ng + (idx_t)g * Kpg, Kpg);
    } else {
        implicit_gemm_mainloop<B_ALONG_K>(k_begin, k_end, load_a, column_of, load_b, acc, IgnoreA(), next_tile);
    }
    store_tile(acc, out_z + (idx_t)g * Kpg * Ng, Kpg, Ng, Ng);
}

extern "C" __global__ void __launch_bounds__(TILE_THREADS) conv2d_backward_filter_v2(
    const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x, scalar_t* __restrict__ out,
    CONV2D_GEOMETRY, long long chunk)
{
    conv2d_backward_filter_gemm<false, false>(dy, x, nullptr, out, CONV2D_GEOMETRY_ARGS, chunk);
}

extern "C" __global__ void __launch_bounds__(TILE_THREADS) conv2d_backward_filter_relu_v2(
    const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x, const scalar_t* __restrict__ y,
    scalar_t* __restrict__ out, CONV2D_GEOMETRY, long long chunk)
{
    conv2d_backward_filter_gemm<false, true>(dy, x, y, out, CONV2D_GEOMETRY_ARGS, chunk);
}

extern "C" __global__ void __launch_bounds__(TILE_THREADS) conv2d_backward_filter_bias_v2(
    const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x, const scalar_t* __restrict__ y,
    scalar_t* __restrict__ out, CONV2D_GEOMETRY, long long chunk)
{
    conv2d_backward_filter_gemm<true, false>(dy, x, y, out, CONV2D_GEOMETRY_ARGS, chunk);
}

extern "C" __global__ void __launch_bounds__(TILE_THREADS) conv2d_backward_filter_bias_relu_v2(
    const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x, const scalar_t* __restrict__ y,
    scalar_t* __restrict__ out, CONV2D_GEOMETRY, long long chunk)
{
    conv2d_backward_filter_gemm<true, true>(dy, x, y, out, CONV2D_GEOMETRY_ARGS, chunk);
}

// dw[e] = sum_{z < splits} partial[z * count + e], z in increasing order
// (also [dw | db] of the *_bias_v2 kernels: count = K*C/G*R*S + K).
extern "C" __global__ void conv2d_backward_filter_reduce_v2(
    const scalar_t* __restrict__ partial, scalar_t* __restrict__ dw, long long count, int splits)
{
    for (idx_t e = global_thread_id(); e < count; e += grid_stride()) {
        scalar_t acc = 0;
        for (int z = 0; z < splits; ++z) acc += partial[(idx_t)z * count + e];
        dw[e] = acc;
    }
}
