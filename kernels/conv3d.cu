// conv3d.cu: 3-D convolution, forward, backward-data and backward-filter.
//
// Build and launch: at run time through gpucnn.kernel_loader (NVRTC via
// cupy.RawModule, options --std=c++17 -lineinfo -DSCALAR=float|double); the
// launchers are gpucnn/functional/conv3d_gpu.py. Standalone compile check:
//     nvcc -arch=sm_90 -cubin -I kernels -DSCALAR=float kernels/conv3d.cu
// (python -m gpucnn.kernel_check prints every kernel's registers and spills).
// Status: compiled, not yet run on a GPU.
//
// Math. x (N, C, D, H, W), w (K, C, T, R, S), stride (sd, sh, sw), padding
// (pd, ph, pw), y / dy (N, K, Do, Ho, Wo) with Do = (D + 2 pd - T) / sd + 1,
// Ho and Wo likewise; x is zero outside the volume (the padding).
//     y[n,k,a,b,e]  = sum_{c,t,r,s} x[n, c, a*sd + t - pd, b*sh + r - ph, e*sw + s - pw] * w[k,c,t,r,s]
//     dx[n,c,d,h,v] = sum_{k,t,r,s} dy[n, k, (d + pd - t)/sd, (h + ph - r)/sh, (v + pw - s)/sw] * w[k,c,t,r,s]
//                     over the taps where every division is exact and in range:
//                     the 180-degree rotated filter correlated with the stride-dilated dy
//     dw[k,c,t,r,s] = sum_{n,a,b,e} dy[n,k,a,b,e] * x[n, c, a*sd + t - pd, b*sh + r - ph, e*sw + s - pw]
//
// Versions:
//   forward_v1          one thread per y element; 1-D grid of 256-thread blocks
//   forward_v2          implicit GEMM (M = K, Ngemm = N*Do*Ho*Wo, Kgemm = C*T*R*S), 64x64
//                       tile, 4x4 per thread; grid (ceil(N*Do*Ho*Wo/64), ceil(K/64)), 256 threads
//   backward_data_v1    one thread per dx element, gathers over the windows containing it;
//                       1-D grid
//   backward_data_v2    implicit GEMM (M = C, Ngemm = N*D*H*W, Kgemm = K*T*R*S), same tile;
//                       grid (ceil(N*D*H*W/64), ceil(C/64)), 256 threads
//   backward_filter_v1  one thread per dw element, sums over (n, a, b, e) in order; 1-D grid
// Every kernel is deterministic: each output element is summed by one thread
// in a fixed order, no atomics.

#include "common.cuh"

// ---------------------------------------------------------------------------
// Notes on the math.
// Backward data, gather form (v1): the windows that touched input depth d are
// the outputs a with a*sd - pd <= d <= a*sd - pd + T - 1 (covering_outputs in
// common.cuh), and their tap is t = d + pd - a*sd; likewise for h and v.
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
    int Do, int Ho, int Wo, int sd, int sh, int sw, int pd, int ph, int pw

// ---------------------------------------------------------------------------
// forward v1: straight from the formula.
extern "C" __global__ void conv3d_forward_v1(
    const scalar_t* __restrict__ x, const scalar_t* __restrict__ w, scalar_t* __restrict__ y,
    CONV3D_GEOMETRY)
{
    const idx_t total = (idx_t)N * K * Do * Ho * Wo;
    const idx_t DHW = (idx_t)D * H * W;
    const int TRS = T * R * S;
    for (idx_t idx = global_thread_id(); idx < total; idx += grid_stride()) {
        const int e = (int)(idx % Wo);
        idx_t q = idx / Wo;
        const int b = (int)(q % Ho);
        q /= Ho;
        const int a = (int)(q % Do);
        q /= Do;
        const int k = (int)(q % K);
        const idx_t n = q / K;
        const int d0 = a * sd - pd, h0 = b * sh - ph, v0 = e * sw - pw;
        scalar_t acc = 0;
        for (int c = 0; c < C; ++c) {
            const scalar_t* xc = x + (n * C + c) * DHW;
            const scalar_t* wc = w + ((idx_t)k * C + c) * TRS;
            for (int t = 0; t < T; ++t) {
                const int d = d0 + t;
                if (!in_range(d, D)) continue;
                for (int r = 0; r < R; ++r) {
                    const int h = h0 + r;
                    if (!in_range(h, H)) continue;
                    for (int s = 0; s < S; ++s) {
                        const int v = v0 + s;
                        if (!in_range(v, W)) continue;
                        acc += xc[((idx_t)d * H + h) * W + v] * wc[(t * R + r) * S + s];
                    }
                }
            }
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
    const idx_t total = (idx_t)N * C * D * H * W;
    const idx_t oDHW = (idx_t)Do * Ho * Wo;
    const int TRS = T * R * S;
    for (idx_t idx = global_thread_id(); idx < total; idx += grid_stride()) {
        const int v = (int)(idx % W);
        idx_t q = idx / W;
        const int h = (int)(q % H);
        q /= H;
        const int d = (int)(q % D);
        q /= D;
        const int c = (int)(q % C);
        const idx_t n = q / C;
        int a_lo, a_hi, b_lo, b_hi, e_lo, e_hi;
        covering_outputs(d, T, sd, pd, Do, &a_lo, &a_hi);
        covering_outputs(h, R, sh, ph, Ho, &b_lo, &b_hi);
        covering_outputs(v, S, sw, pw, Wo, &e_lo, &e_hi);
        scalar_t acc = 0;
        for (int k = 0; k < K; ++k) {
            const scalar_t* dyk = dy + (n * K + k) * oDHW;
            const scalar_t* wk = w + ((idx_t)k * C + c) * TRS;
            for (int a = a_lo; a < a_hi; ++a) {
                const int t = d + pd - a * sd;
                for (int b = b_lo; b < b_hi; ++b) {
                    const int r = h + ph - b * sh;
                    for (int e = e_lo; e < e_hi; ++e) {
                        const int s = v + pw - e * sw;
                        acc += dyk[((idx_t)a * Ho + b) * Wo + e] * wk[(t * R + r) * S + s];
                    }
                }
            }
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
    const idx_t total = (idx_t)K * C * T * R * S;
    const idx_t DHW = (idx_t)D * H * W;
    const idx_t oDHW = (idx_t)Do * Ho * Wo;
    for (idx_t idx = global_thread_id(); idx < total; idx += grid_stride()) {
        const int s = (int)(idx % S);
        idx_t q = idx / S;
        const int r = (int)(q % R);
        q /= R;
        const int t = (int)(q % T);
        q /= T;
        const int c = (int)(q % C);
        const idx_t k = q / C;
        scalar_t acc = 0;
        for (idx_t n = 0; n < N; ++n) {
            const scalar_t* dyk = dy + (n * K + k) * oDHW;
            const scalar_t* xc = x + (n * C + c) * DHW;
            for (int a = 0; a < Do; ++a) {
                const int d = a * sd + t - pd;
                if (!in_range(d, D)) continue;
                for (int b = 0; b < Ho; ++b) {
                    const int h = b * sh + r - ph;
                    if (!in_range(h, H)) continue;
                    for (int e = 0; e < Wo; ++e) {
                        const int v = e * sw + s - pw;
                        if (!in_range(v, W)) continue;
                        acc += dyk[((idx_t)a * Ho + b) * Wo + e] * xc[((idx_t)d * H + h) * W + v];
                    }
                }
            }
        }
        dw[idx] = acc;
    }
}

// ---------------------------------------------------------------------------
// v2: implicit GEMM, one body for forward (FORWARD = true) and backward data.
// Tiles and the thread -> output map are those of common.cuh (tile_multiply).
// Loads per TILE_K step, 4 elements of each tile per thread, staged through
// registers so that the next step's global loads are in flight while the
// current tile is multiplied:
//   A tile: thread loads kk = a_k, rows a_m + 16*l (16 lanes along kk: in the
//     forward, consecutive weights of one filter row).
//   B tile: thread loads column b_n, rows b_k + 4*l (64 lanes along the
//     columns, i.e. along the innermost spatial axis). The column's image and
//     spatial position are decoded once; only kk -> (ch, t, r, s) per element.
// src is x (forward) or dy (backward data); out is y or dx.
template <bool FORWARD>
__device__ __forceinline__ void conv3d_igemm(
    const scalar_t* __restrict__ src, const scalar_t* __restrict__ w, scalar_t* __restrict__ out,
    CONV3D_GEOMETRY)
{
    __shared__ tile_a_t As;
    __shared__ tile_b_t Bs;

    // GEMM rows M, src channels, and the spatial sizes of src and out.
    const int M = FORWARD ? K : C;
    const int src_ch = FORWARD ? C : K;
    const int sD = FORWARD ? D : Do, sH = FORWARD ? H : Ho, sW = FORWARD ? W : Wo;
    const int oD = FORWARD ? Do : D, oH = FORWARD ? Ho : H, oW = FORWARD ? Wo : W;
    const int RS = R * S, TRS = T * RS;
    const int Kg = src_ch * TRS;
    const idx_t sDHW = (idx_t)sD * sH * sW;
    const idx_t oHW = (idx_t)oH * oW, oDHW = oD * oHW;
    const idx_t Ng = (idx_t)N * oDHW;

    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    const idx_t col0 = (idx_t)blockIdx.x * TILE_N;
    const int m0 = blockIdx.y * TILE_M;
    const int a_k = tid % TILE_K, a_m = tid / TILE_K;  // a_m in [0, 16)
    const int b_n = tid % TILE_N, b_k = tid / TILE_N;  // b_k in [0, 4)

    // This thread's B column: image n and base position, the window origin
    // (a*sd - pd, ...) in the forward, the shifted position (d + pd, ...) in
    // the backward.
    const idx_t b_col = col0 + b_n;
    const bool b_col_ok = b_col < Ng;
    const scalar_t* src_img = src;
    int base_d = 0, base_h = 0, base_w = 0;
    if (b_col_ok) {
        const idx_t n = b_col / oDHW;
        const idx_t p = b_col - n * oDHW;
        const int o0 = (int)(p / oHW), o1 = (int)((p / oW) % oH), o2 = (int)(p % oW);
        if (FORWARD) {
            base_d = o0 * sd - pd; base_h = o1 * sh - ph; base_w = o2 * sw - pw;
        } else {
            base_d = o0 + pd; base_h = o1 + ph; base_w = o2 + pw;
        }
        src_img = src + n * src_ch * sDHW;
    }

    scalar_t a_reg[4], b_reg[4];
    auto load = [&](int k0) {
        const int ka = k0 + a_k;
        const int ch_a = ka / TRS, trs_a = ka - ch_a * TRS;
#pragma unroll
        for (int l = 0; l < 4; ++l) {
            const int m = m0 + a_m + 16 * l;
            scalar_t u = 0;
            if (m < M && ka < Kg)   // forward: w[m, kk]; backward: w[k = ch_a, c = m, trs]
                u = __ldg(w + (FORWARD ? (idx_t)m * Kg + ka : ((idx_t)ch_a * C + m) * TRS + trs_a));
            a_reg[l] = u;
        }
#pragma unroll
        for (int l = 0; l < 4; ++l) {
            const int kb = k0 + b_k + 4 * l;
            scalar_t u = 0;
            if (b_col_ok && kb < Kg) {
                const int ch = kb / TRS, trs = kb - ch * TRS;
                const int t = trs / RS, rs = trs - t * RS;
                const int r = rs / S, s = rs - r * S;
                int i0, i1, i2;
                bool ok;
                if (FORWARD) {
                    i0 = base_d + t; i1 = base_h + r; i2 = base_w + s;
                    ok = in_range(i0, sD) && in_range(i1, sH) && in_range(i2, sW);
                } else {  // dilated-dy position (d + pd - t, ...) must be a stride multiple
                    const int q0 = base_d - t, q1 = base_h - r, q2 = base_w - s;
                    ok = q0 >= 0 && q1 >= 0 && q2 >= 0;
                    i0 = q0 / sd; i1 = q1 / sh; i2 = q2 / sw;
                    ok = ok && i0 * sd == q0 && i1 * sh == q1 && i2 * sw == q2
                            && i0 < sD && i1 < sH && i2 < sW;
                }
                if (ok) u = __ldg(src_img + ch * sDHW + ((idx_t)i0 * sH + i1) * sW + i2);
            }
            b_reg[l] = u;
        }
    };
    auto store = [&]() {
#pragma unroll
        for (int l = 0; l < 4; ++l) {
            As[a_k][a_m + 16 * l] = a_reg[l];
            Bs[b_k + 4 * l][b_n] = b_reg[l];
        }
    };

    scalar_t acc[THREAD_M][THREAD_N] = {};
    load(0);
    store();
    __syncthreads();
    for (int k0 = 0; k0 < Kg; k0 += TILE_K) {
        const bool more = k0 + TILE_K < Kg;  // uniform over the block
        if (more) load(k0 + TILE_K);
        tile_multiply(As, Bs, acc, tx, ty);
        __syncthreads();
        if (more) {
            store();
            __syncthreads();
        }
    }

#pragma unroll
    for (int j = 0; j < THREAD_N; ++j) {
        const idx_t col = col0 + tx + 16 * j;
        if (col >= Ng) continue;
        const idx_t n = col / oDHW;
        const idx_t p = col - n * oDHW;
#pragma unroll
        for (int i = 0; i < THREAD_M; ++i) {
            const int m = m0 + ty + 16 * i;
            if (m < M) out[(n * M + m) * oDHW + p] = acc[i][j];
        }
    }
}

extern "C" __global__ void __launch_bounds__(TILE_THREADS) conv3d_forward_v2(
    const scalar_t* __restrict__ x, const scalar_t* __restrict__ w, scalar_t* __restrict__ y,
    CONV3D_GEOMETRY)
{
    conv3d_igemm<true>(x, w, y, N, C, D, H, W, K, T, R, S, Do, Ho, Wo, sd, sh, sw, pd, ph, pw);
}

extern "C" __global__ void __launch_bounds__(TILE_THREADS) conv3d_backward_data_v2(
    const scalar_t* __restrict__ dy, const scalar_t* __restrict__ w, scalar_t* __restrict__ dx,
    CONV3D_GEOMETRY)
{
    conv3d_igemm<false>(dy, w, dx, N, C, D, H, W, K, T, R, S, Do, Ho, Wo, sd, sh, sw, pd, ph, pw);
}
