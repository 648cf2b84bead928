// conv3d.cu: 3-D convolution, forward, backward-data and backward-filter.
//
// Build and launch: at run time through gpucnn.kernel_loader (NVRTC via
// cupy.RawModule, options --std=c++17 -lineinfo -DSCALAR=float|double); the
// launchers are gpucnn/functional/conv3d_gpu.py. Standalone compile check:
//     nvcc -arch=sm_90 -cubin -I kernels -DSCALAR=float kernels/conv3d.cu
// (python -m gpucnn.kernel_check prints every kernel's registers and spills).
// Status: verified on an H100 (GPU tests + compute-sanitizer, bench/results/gpu-h100-2026-11-24).
//
// Math. x (N, C, D, H, W), w (K, C/G, T, R, S), stride (sd, sh, sw), padding
// (pd, ph, pw), dilation (dil_d, dil_h, dil_w), G groups, y / dy (N, K, Do, Ho, Wo)
// with Do = (D + 2 pd - dil_d*(T-1) - 1) / sd + 1, Ho and Wo likewise; x is
// zero outside the volume (the padding). Below, tap offsets t, r, s stand
// for t*dil_d, r*dil_h, s*dil_w in positions, and c runs over the group
// g = k / (K/G) of each filter (input channel g*C/G + c, weight channel c).
//     y[n,k,a,b,e]  = sum_{c,t,r,s} x[n, c, a*sd + t - pd, b*sh + r - ph, e*sw + s - pw] * w[k,c,t,r,s]
//     dx[n,c,d,h,v] = sum_{k,t,r,s} dy[n, k, (d + pd - t)/sd, (h + ph - r)/sh, (v + pw - s)/sw] * w[k,c,t,r,s]
//                     over the taps where every division is exact and in range:
//                     the 180-degree rotated filter correlated with the stride-dilated dy
//     dw[k,c,t,r,s] = sum_{n,a,b,e} dy[n,k,a,b,e] * x[n, c, a*sd + t - pd, b*sh + r - ph, e*sw + s - pw]
// Dilation and groups: compiled and emulated, not yet run on a GPU.
//
// Versions:
//   forward_v1          one thread per y element; 1-D grid of 256-thread blocks
//   forward_v2          implicit GEMM per group (M = K/G, Ngemm = N*Do*Ho*Wo, Kgemm = C/G*T*R*S),
//                       64x64 tile, 4x4 per thread; grid (ceil(N*Do*Ho*Wo/64), ceil(K/G/64), G),
//                       256 threads
//   backward_data_v1    one thread per dx element, gathers over the windows containing it;
//                       1-D grid
//   backward_data_v2    implicit GEMM per group (M = C/G, Ngemm = N*D*H*W, Kgemm = K/G*T*R*S),
//                       same tile; grid (ceil(N*D*H*W/64), ceil(C/G/64), G), 256 threads
//   backward_filter_v1  one thread per dw element, sums over (n, a, b, e) in order; 1-D grid
// Every kernel is deterministic: each output element is summed by one thread
// in a fixed order, no atomics.

#include "common.cuh"

// ---------------------------------------------------------------------------
// Notes on the math.
// Backward data, gather form (v1): the windows that touched input depth d are
// the outputs a with a*sd - pd <= d <= a*sd - pd + T - 1, and their tap is
// t = d + pd - a*sd; likewise for h and v (for_each_covering_window in
// common.cuh). v2 tests each tap with exact_output instead.
// Implicit GEMM (v2): Out[m, col] = sum_kk A[m, kk] * B[kk, col], with
//   forward:        m = k, col = ((n*Do + a)*Ho + b)*Wo + e, kk = ((c*T + t)*R + r)*S + s
//                   A[m, kk]   = w[k, c, t, r, s] = w_flat[m*Kgemm + kk]
//                   B[kk, col] = x[n, c, a*sd + t - pd, b*sh + r - ph, e*sw + s - pw] (0 in the padding)
//   backward data:  m = c, col = ((n*D + d)*H + h)*W + v, kk = ((k*T + t)*R + r)*S + s
//                   A[m, kk]   = w[k, c, t, r, s]
//                   B[kk, col] = dy[n, k, (d + pd - t)/sd, (h + ph - r)/sh, (v + pw - s)/sw]
//                                if every division is exact and in range, else 0
// In both, Out[m, col] is stored at out[n, m, spatial(col)]. Rows, columns and
// kk past the matrix edges load as zeros; outputs past the edges are not
// stored. The sum over kk runs in increasing order.

// Geometry after the three pointers, the same for every kernel in this file.
#define CONV3D_GEOMETRY                                                         \
    int N, int C, int D, int H, int W, int K, int T, int R, int S,             \
    int Do, int Ho, int Wo, int sd, int sh, int sw, int pd, int ph, int pw,     \
    int dil_d, int dil_h, int dil_w, int groups

// ---------------------------------------------------------------------------
// forward v1: straight from the formula.
extern "C" __global__ void conv3d_forward_v1(
    const scalar_t* __restrict__ x, const scalar_t* __restrict__ w, scalar_t* __restrict__ y,
    CONV3D_GEOMETRY)
{
    const Axis ad{D, Do, T, sd, pd, dil_d}, ah{H, Ho, R, sh, ph, dil_h}, aw{W, Wo, S, sw, pw, dil_w};
    const int Cg = C / groups, Kpg = K / groups;
    const idx_t total = (idx_t)N * K * Do * Ho * Wo;
    const idx_t DHW = (idx_t)D * H * W;
    const int TRS = T * R * S;
    for (idx_t idx = global_thread_id(); idx < total; idx += grid_stride()) {
        idx_t n = idx;
        const int e = split_last(n, Wo);
        const int b = split_last(n, Ho);
        const int a = split_last(n, Do);
        const int k = split_last(n, K);
        const int c0 = (k / Kpg) * Cg;  // the group's first input channel
        scalar_t acc = 0;
        for (int c = 0; c < Cg; ++c) {
            const scalar_t* xc = x + (n * C + c0 + c) * DHW;
            const scalar_t* wc = w + ((idx_t)k * Cg + c) * TRS;
            for_each_in_window(ad, ah, aw, a, b, e,
                               [&](idx_t at, int tap) { acc += xc[at] * wc[tap]; });
        }
        y[idx] = acc;
    }
}

// ---------------------------------------------------------------------------
// backward data v1: gather over the windows that contain (d, h, v); for each
// channel k they are visited in row-major (a, b, e) order.
extern "C" __global__ void conv3d_backward_data_v1(
    const scalar_t* __restrict__ dy, const scalar_t* __restrict__ w, scalar_t* __restrict__ dx,
    CONV3D_GEOMETRY)
{
    const Axis ad{D, Do, T, sd, pd, dil_d}, ah{H, Ho, R, sh, ph, dil_h}, aw{W, Wo, S, sw, pw, dil_w};
    const int Cg = C / groups, Kpg = K / groups;
    const idx_t total = (idx_t)N * C * D * H * W;
    const idx_t oDHW = (idx_t)Do * Ho * Wo;
    const int TRS = T * R * S;
    for (idx_t idx = global_thread_id(); idx < total; idx += grid_stride()) {
        idx_t n = idx;
        const int v = split_last(n, W);
        const int h = split_last(n, H);
        const int d = split_last(n, D);
        const int c = split_last(n, C);
        const int g = c / Cg;
        scalar_t acc = 0;
        for (int k = g * Kpg; k < (g + 1) * Kpg; ++k) {
            const scalar_t* dyk = dy + (n * K + k) * oDHW;
            const scalar_t* wk = w + ((idx_t)k * Cg + (c - g * Cg)) * TRS;
            for_each_covering_window(ad, ah, aw, d, h, v,
                                     [&](idx_t o, int tap) { acc += dyk[o] * wk[tap]; });
        }
        dx[idx] = acc;
    }
}

// ---------------------------------------------------------------------------
// backward filter v1: one thread per dw element, sum over (n, a, b, e) in order.
extern "C" __global__ void conv3d_backward_filter_v1(
    const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x, scalar_t* __restrict__ dw,
    CONV3D_GEOMETRY)
{
    const Axis ad{D, Do, T, sd, pd, dil_d}, ah{H, Ho, R, sh, ph, dil_h}, aw{W, Wo, S, sw, pw, dil_w};
    const int Cg = C / groups, Kpg = K / groups;
    const idx_t total = (idx_t)K * Cg * T * R * S;
    const idx_t DHW = (idx_t)D * H * W;
    const idx_t oDHW = (idx_t)Do * Ho * Wo;
    for (idx_t idx = global_thread_id(); idx < total; idx += grid_stride()) {
        idx_t k = idx;
        const int s = split_last(k, S);
        const int r = split_last(k, R);
        const int t = split_last(k, T);
        const int cl = split_last(k, Cg);   // k is the filter from here on
        const int c = (int)(k / Kpg) * Cg + cl;  // the input channel
        scalar_t acc = 0;
        for (idx_t n = 0; n < N; ++n) {
            const scalar_t* dyk = dy + (n * K + k) * oDHW;
            const scalar_t* xc = x + (n * C + c) * DHW;
            for_each_window_at_tap(ad, ah, aw, t, r, s,
                                   [&](idx_t o, idx_t at) { acc += dyk[o] * xc[at]; });
        }
        dw[idx] = acc;
    }
}

// ---------------------------------------------------------------------------
// v2: implicit GEMM, one body for forward (FORWARD = true) and backward data,
// over implicit_gemm_mainloop (common.cuh) with the load layout of
// conv2d_forward_v2:
//   A: 16 lanes along kk (in the forward, consecutive weights of one filter row).
//   B (B_ALONG_COLUMNS): 64 lanes along the columns, i.e. along the innermost
//     spatial axis. The column's image and spatial position are decoded once;
//     only kk -> (ch, t, r, s) per element.
// src is x (forward) or dy (backward data); out is y or dx.
template <bool FORWARD>
__device__ __forceinline__ void conv3d_igemm(
    const scalar_t* __restrict__ src, const scalar_t* __restrict__ w, scalar_t* __restrict__ out,
    CONV3D_GEOMETRY)
{
    // One GEMM per group g = blockIdx.z: rows M (the group's filters or
    // channels), src channels (all, and the group's), out channels.
    const int Cg = C / groups, Kpg = K / groups, g = blockIdx.z;
    const int M = FORWARD ? Kpg : Cg;
    const int src_ch = FORWARD ? C : K, src_g = FORWARD ? Cg : Kpg;
    const int out_ch = FORWARD ? K : C;
    const int sD = FORWARD ? D : Do, sH = FORWARD ? H : Ho, sW = FORWARD ? W : Wo;
    const int oD = FORWARD ? Do : D, oH = FORWARD ? Ho : H, oW = FORWARD ? Wo : W;
    const int RS = R * S, TRS = T * RS;
    const int Kg = src_g * TRS;
    const idx_t sDHW = (idx_t)sD * sH * sW;
    const idx_t oHW = (idx_t)oH * oW, oDHW = oD * oHW;
    const idx_t Ng = (idx_t)N * oDHW;

    // A column: image n and base position, the window origin (a*sd - pd, ...)
    // in the forward, the shifted position (d + pd, ...) in the backward.
    struct Column {
        const scalar_t* img;  // src[n]
        int bd, bh, bw;
        bool ok;
    };
    auto column_of = [&](idx_t col) {
        Column b{src, 0, 0, 0, col < Ng};
        if (b.ok) {
            const idx_t n = col / oDHW;
            const idx_t p = col - n * oDHW;
            const int o0 = (int)(p / oHW), o1 = (int)((p / oW) % oH), o2 = (int)(p % oW);
            if (FORWARD) {
                b.bd = o0 * sd - pd; b.bh = o1 * sh - ph; b.bw = o2 * sw - pw;
            } else {
                b.bd = o0 + pd; b.bh = o1 + ph; b.bw = o2 + pw;
            }
            b.img = src + (n * src_ch + (idx_t)g * src_g) * sDHW;   // the group's first channel
        }
        return b;
    };
    const scalar_t* wg = w + (idx_t)g * Kpg * Cg * TRS;  // the group's K/G filters
    auto load_a = [&](int m, int kk) {  // forward: w[g*K/G + m, kk]; backward: w[g*K/G + k, c = m, trs]
        const int k = kk / TRS, trs = kk - k * TRS;
        return m < M ? __ldg(wg + (FORWARD ? (idx_t)m * Kg + kk : ((idx_t)k * Cg + m) * TRS + trs))
                     : (scalar_t)0;
    };
    auto load_b = [&](int kk, const Column& b) {
        const int ch = kk / TRS, trs = kk - ch * TRS;
        const int t = trs / RS, rs = trs - t * RS;
        const int r = rs / S, s = rs - r * S;
        int i0, i1, i2;
        bool ok;
        if (FORWARD) {
            i0 = b.bd + t * dil_d; i1 = b.bh + r * dil_h; i2 = b.bw + s * dil_w;
            ok = in_range(i0, sD) && in_range(i1, sH) && in_range(i2, sW);
        } else {  // dilated-dy position (d + pd - t, ...) must be a stride multiple
            ok = exact_output(b.bd - t * dil_d, sd, sD, &i0) && exact_output(b.bh - r * dil_h, sh, sH, &i1)
                 && exact_output(b.bw - s * dil_w, sw, sW, &i2);
        }
        return b.ok && ok ? __ldg(b.img + ch * sDHW + ((idx_t)i0 * sH + i1) * sW + i2)
                          : (scalar_t)0;
    };

    scalar_t acc[THREAD_M][THREAD_N] = {};
    implicit_gemm_mainloop<B_ALONG_COLUMNS>(0, Kg, load_a, column_of, load_b, acc);
    store_tile(acc, out + (idx_t)g * M * oDHW, out_ch, Ng, oDHW, M);
}

extern "C" __global__ void __launch_bounds__(TILE_THREADS) conv3d_forward_v2(
    const scalar_t* __restrict__ x, const scalar_t* __restrict__ w, scalar_t* __restrict__ y,
    CONV3D_GEOMETRY)
{
    conv3d_igemm<true>(x, w, y, N, C, D, H, W, K, T, R, S, Do, Ho, Wo, sd, sh, sw, pd, ph, pw,
                      dil_d, dil_h, dil_w, groups);
}

extern "C" __global__ void __launch_bounds__(TILE_THREADS) conv3d_backward_data_v2(
    const scalar_t* __restrict__ dy, const scalar_t* __restrict__ w, scalar_t* __restrict__ dx,
    CONV3D_GEOMETRY)
{
    conv3d_igemm<false>(dy, w, dx, N, C, D, H, W, K, T, R, S, Do, Ho, Wo, sd, sh, sw, pd, ph, pw,
                      dil_d, dil_h, dil_w, groups);
}
