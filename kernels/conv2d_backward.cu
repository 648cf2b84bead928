// conv2d_backward.cu: 2-D convolution backward, data and filter gradients
// (1-D runs here with H = R = 1).
//
// Build and launch: at run time through gpucnn.kernel_loader (NVRTC via
// cupy.RawModule, options --std=c++17 -lineinfo -DSCALAR=float|double); the
// launchers are gpucnn/functional/conv_gpu.py. Standalone compile check:
//     nvcc -arch=sm_90 -cubin -I kernels -DSCALAR=float kernels/conv2d_backward.cu
// Status: compiled, not yet run on a GPU.
//
// Math. x (N, C, H, W), w (K, C, R, S), stride (sh, sw), padding (ph, pw),
// dy (N, K, Ho, Wo), Ho = (H + 2 ph - R) / sh + 1, Wo likewise.
//     dx[n,c,h,w] = sum_{k,r,s} dy[n, k, (h + ph - r)/sh, (w + pw - s)/sw] * w[k,c,r,s]
//                   over the (r, s) where both divisions are exact and land in
//                   [0,Ho) x [0,Wo): the 180-degree rotated filter correlated
//                   with the stride-dilated dy.
//     dw[k,c,r,s] = sum_{n,i,j} dy[n,k,i,j] * x[n, c, i*sh + r - ph, j*sw + s - pw]
//                   (x zero outside the image).
//
// Versions:
//   backward_data_v1          one thread per dx element; 1-D grid of 256-thread blocks
//   backward_data_v2          implicit GEMM (M = C, Ngemm = N*H*W, Kgemm = K*R*S), 64x64
//                             tile, 4x4 per thread; grid (ceil(N*H*W/64), ceil(C/64)), 256 threads
//   backward_filter_v1        one thread per dw element (sums over n, i, j in order); 1-D grid
//   backward_filter_v2        implicit GEMM (M = K, Ngemm = C*R*S, Kgemm = N*Ho*Wo) split
//                             along Kgemm into gridDim.z chunks; grid (ceil(CRS/64),
//                             ceil(K/64), splits), 256 threads; chunk z writes its partial
//                             dw to out + z*K*CRS
//   backward_filter_reduce_v2 dw[e] = sum_z partial[z][e] for z = 0, 1, ... in order; 1-D grid
// Both backward_filter versions are deterministic: no atomics, every sum in a
// fixed order, so equal inputs give bitwise equal dw.

#include "common.cuh"

// ---------------------------------------------------------------------------
// Notes on the math.
// Backward data, gather form. For output position (n, c, h, w) the windows
// that touched it are the outputs i with i*sh - ph <= h <= i*sh - ph + R - 1
// (covering_outputs in common.cuh), and the filter tap is r = h + ph - i*sh.
// v1 walks those windows directly (no divisibility tests). As a GEMM (v2):
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
    int sh, int sw, int ph, int pw)
{
    const idx_t total = (idx_t)N * C * H * W;
    for (idx_t idx = global_thread_id(); idx < total; idx += grid_stride()) {
        const int ww = (int)(idx % W);
        idx_t t = idx / W;
        const int h = (int)(t % H);
        t /= H;
        const int c = (int)(t % C);
        const idx_t n = t / C;
        int i_lo, i_hi, j_lo, j_hi;
        covering_outputs(h, R, sh, ph, Ho, &i_lo, &i_hi);
        covering_outputs(ww, S, sw, pw, Wo, &j_lo, &j_hi);
        scalar_t acc = 0;
        for (int k = 0; k < K; ++k) {
            const scalar_t* dyk = dy + (n * K + k) * Ho * Wo;
            const scalar_t* wk = w + ((idx_t)k * C + c) * R * S;
            for (int i = i_lo; i < i_hi; ++i) {
                const int r = h + ph - i * sh;
                for (int j = j_lo; j < j_hi; ++j) {
                    const int s = ww + pw - j * sw;
                    acc += dyk[(idx_t)i * Wo + j] * wk[r * S + s];
                }
            }
        }
        dx[idx] = acc;
    }
}

// ---------------------------------------------------------------------------
// backward data v2: implicit GEMM with the same tiling and load pattern as
// conv2d_forward_v2 (A: 16 lanes along kk; B: 64 lanes along the columns,
// i.e. along dx's w, each column decoded once).
extern "C" __global__ void __launch_bounds__(TILE_THREADS) conv2d_backward_data_v2(
    const scalar_t* __restrict__ dy, const scalar_t* __restrict__ w, scalar_t* __restrict__ dx,
    int N, int C, int H, int W, int K, int R, int S, int Ho, int Wo,
    int sh, int sw, int ph, int pw)
{
    __shared__ tile_a_t As;
    __shared__ tile_b_t Bs;

    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    const int RS = R * S;
    const int Kg = K * RS;
    const idx_t HW = (idx_t)H * W;
    const idx_t Ng = (idx_t)N * HW;
    const idx_t col0 = (idx_t)blockIdx.x * TILE_N;
    const int m0 = blockIdx.y * TILE_M;

    const int a_k = tid % TILE_K, a_m = tid / TILE_K;  // a_m in [0, 16)
    const int b_n = tid % TILE_N, b_k = tid / TILE_N;  // b_k in [0, 4)

    // This thread's B column: image n, shifted position (h + ph, w + pw).
    const idx_t b_col = col0 + b_n;
    const bool b_col_ok = b_col < Ng;
    const scalar_t* dy_img = dy;
    int hb = 0, wb = 0;
    if (b_col_ok) {
        const idx_t n = b_col / HW;
        const int p = (int)(b_col - n * HW);
        hb = p / W + ph;
        wb = p - (p / W) * W + pw;
        dy_img = dy + n * K * Ho * Wo;
    }

    scalar_t a_reg[4], b_reg[4];
    auto load = [&](int k0) {
        const int ka = k0 + a_k;
        const int k_a = ka / RS, rs_a = ka - (ka / RS) * RS;
#pragma unroll
        for (int l = 0; l < 4; ++l) {
            const int c = m0 + a_m + 16 * l;
            a_reg[l] = (c < C && ka < Kg) ? __ldg(w + ((idx_t)k_a * C + c) * RS + rs_a) : (scalar_t)0;
        }
#pragma unroll
        for (int l = 0; l < 4; ++l) {
            const int kb = k0 + b_k + 4 * l;
            scalar_t v = 0;
            if (b_col_ok && kb < Kg) {
                const int k = kb / RS, rs = kb - (kb / RS) * RS;
                const int r = rs / S, s = rs - (rs / S) * S;
                const int hh = hb - r, wv = wb - s;  // i*sh and j*sw when exact
                if (hh >= 0 && wv >= 0) {
                    const int i = hh / sh, j = wv / sw;
                    if (i * sh == hh && j * sw == wv && i < Ho && j < Wo)
                        v = __ldg(dy_img + ((idx_t)k * Ho + i) * Wo + j);
                }
            }
            b_reg[l] = v;
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
        const idx_t n = col / HW;
        const idx_t p = col - n * HW;
#pragma unroll
        for (int i = 0; i < THREAD_M; ++i) {
            const int c = m0 + ty + 16 * i;
            if (c < C) dx[(n * C + c) * HW + p] = acc[i][j];
        }
    }
}

// ---------------------------------------------------------------------------
// backward filter v1: one thread per dw element, sum over (n, i, j) in order.
extern "C" __global__ void conv2d_backward_filter_v1(
    const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x, scalar_t* __restrict__ dw,
    int N, int C, int H, int W, int K, int R, int S, int Ho, int Wo,
    int sh, int sw, int ph, int pw)
{
    const idx_t total = (idx_t)K * C * R * S;
    for (idx_t idx = global_thread_id(); idx < total; idx += grid_stride()) {
        const int s = (int)(idx % S);
        idx_t t = idx / S;
        const int r = (int)(t % R);
        t /= R;
        const int c = (int)(t % C);
        const int k = (int)(t / C);
        scalar_t acc = 0;
        for (int n = 0; n < N; ++n) {
            const scalar_t* dyk = dy + ((idx_t)n * K + k) * Ho * Wo;
            const scalar_t* xc = x + ((idx_t)n * C + c) * H * W;
            for (int i = 0; i < Ho; ++i) {
                const int h = i * sh + r - ph;
                if (!in_range(h, H)) continue;
                for (int j = 0; j < Wo; ++j) {
                    const int ww = j * sw + s - pw;
                    if (!in_range(ww, W)) continue;
                    acc += dyk[(idx_t)i * Wo + j] * xc[(idx_t)h * W + ww];
                }
            }
        }
        dw[idx] = acc;
    }
}

// ---------------------------------------------------------------------------
// backward filter v2: split-Kgemm implicit GEMM. Both operands are read along
// kk = (n, i, j), the contiguous direction of dy and (for sw = 1) of x:
//   A tile: thread loads kk = a_k, rows (filters k) a_m + 16*l.
//   B tile: thread loads kk = b_k, columns b_n + 16*l, whose (c, r, s) are
//     decoded once into an offset into x and the tap shift (r - ph, s - pw).
// Chunk z = blockIdx.z covers kk in [z*chunk, min((z+1)*chunk, Kgemm)),
// chunk a multiple of TILE_K; it writes out[z*K*CRS + k*CRS + col] for every
// in-range (k, col) of its tile, zeros included.
extern "C" __global__ void __launch_bounds__(TILE_THREADS) conv2d_backward_filter_v2(
    const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x, scalar_t* __restrict__ out,
    int N, int C, int H, int W, int K, int R, int S, int Ho, int Wo,
    int sh, int sw, int ph, int pw, long long chunk)
{
    __shared__ tile_a_t As;
    __shared__ tile_b_t Bs;

    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    const int RS = R * S;
    const int Ng = C * RS;
    const idx_t HoWo = (idx_t)Ho * Wo;
    const idx_t HW = (idx_t)H * W;
    const idx_t Kg = (idx_t)N * HoWo;
    const int col0 = blockIdx.x * TILE_N;
    const int m0 = blockIdx.y * TILE_M;
    const idx_t k_begin = (idx_t)blockIdx.z * chunk;
    const idx_t k_end = k_begin + chunk < Kg ? k_begin + chunk : Kg;

    const int a_k = tid % TILE_K, a_m = tid / TILE_K;  // a_m in [0, 16)
    const int b_k = tid % TILE_K, b_n = tid / TILE_K;  // b_n in [0, 16)

    // This thread's 4 B columns: x offset of (c, tap origin) and the tap shift.
    idx_t b_off[4];
    int b_dh[4], b_dw[4];
    bool b_ok[4];
#pragma unroll
    for (int l = 0; l < 4; ++l) {
        const int col = col0 + b_n + 16 * l;
        b_ok[l] = col < Ng;
        const int cc = b_ok[l] ? col : 0;
        const int c = cc / RS, rs = cc - (cc / RS) * RS;
        const int r = rs / S, s = rs - (rs / S) * S;
        b_off[l] = (idx_t)c * HW;
        b_dh[l] = r - ph;
        b_dw[l] = s - pw;
    }

    scalar_t a_reg[4], b_reg[4];
    auto load = [&](idx_t k0) {
        const idx_t ka = k0 + a_k;
        const bool ka_ok = ka < k_end;
        const idx_t na = ka_ok ? ka / HoWo : 0;
        const idx_t pa = ka_ok ? ka - na * HoWo : 0;
#pragma unroll
        for (int l = 0; l < 4; ++l) {
            const int k = m0 + a_m + 16 * l;
            a_reg[l] = (ka_ok && k < K) ? __ldg(dy + (na * K + k) * HoWo + pa) : (scalar_t)0;
        }
        const idx_t kb = k0 + b_k;
        const bool kb_ok = kb < k_end;
        const idx_t nb = kb_ok ? kb / HoWo : 0;
        const int pb = kb_ok ? (int)(kb - nb * HoWo) : 0;
        const int i = pb / Wo, j = pb - (pb / Wo) * Wo;
        const scalar_t* x_img = x + nb * C * HW;
#pragma unroll
        for (int l = 0; l < 4; ++l) {
            const int h = i * sh + b_dh[l], ww = j * sw + b_dw[l];
            b_reg[l] = (kb_ok && b_ok[l] && in_range(h, H) && in_range(ww, W))
                           ? __ldg(x_img + b_off[l] + (idx_t)h * W + ww) : (scalar_t)0;
        }
    };
    auto store = [&]() {
#pragma unroll
        for (int l = 0; l < 4; ++l) {
            As[a_k][a_m + 16 * l] = a_reg[l];
            Bs[b_k][b_n + 16 * l] = b_reg[l];
        }
    };

    scalar_t acc[THREAD_M][THREAD_N] = {};
    if (k_begin < k_end) {  // uniform over the block
        load(k_begin);
        store();
        __syncthreads();
        for (idx_t k0 = k_begin; k0 < k_end; k0 += TILE_K) {
            const bool more = k0 + TILE_K < k_end;  // uniform over the block
            if (more) load(k0 + TILE_K);
            tile_multiply(As, Bs, acc, tx, ty);
            __syncthreads();
            if (more) {
                store();
                __syncthreads();
            }
        }
    }

    scalar_t* out_z = out + (idx_t)blockIdx.z * K * Ng;
#pragma unroll
    for (int i = 0; i < THREAD_M; ++i) {
        const int k = m0 + ty + 16 * i;
        if (k >= K) continue;
#pragma unroll
        for (int j = 0; j < THREAD_N; ++j) {
            const int col = col0 + tx + 16 * j;
            if (col < Ng) out_z[(idx_t)k * Ng + col] = acc[i][j];
        }
    }
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
