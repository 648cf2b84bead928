// conv2d_forward.cu: 2-D convolution forward (1-D runs here with H = R = 1).
//
// Build and launch: at run time through gpucnn.kernel_loader (NVRTC via
// cupy.RawModule, options --std=c++17 -lineinfo -DSCALAR=float|double); the
// launchers are gpucnn/functional/conv_gpu.py. Standalone compile check:
//     nvcc -arch=sm_90 -cubin -I kernels -DSCALAR=float kernels/conv2d_forward.cu
// (python -m gpucnn.kernel_check prints every kernel's registers and spills).
// Status: compiled, not yet run on a GPU.
//
// Math. x (N, C, H, W), w (K, C, R, S), stride (sh, sw), padding (ph, pw),
// y (N, K, Ho, Wo) with Ho = (H + 2 ph - R) / sh + 1, Wo likewise:
//     y[n,k,i,j] = sum_{c,r,s} x[n, c, i*sh + r - ph, j*sw + s - pw] * w[k,c,r,s]
// where x outside [0,H) x [0,W) is zero (the padding).
//
// Versions:
//   v1  one thread per output element, grid-stride loop; 1-D grid of 256-thread blocks
//   v2  implicit GEMM, 64x64 block tile, TILE_K 16, 4x4 outputs per thread;
//       grid (ceil(N*Ho*Wo / 64), ceil(K / 64)), 256 threads

#include "common.cuh"

// ---------------------------------------------------------------------------
// Notes on the math.
// As a matrix product (implicit GEMM: the im2col matrix is never stored):
//     Out[m, col] = sum_kk A[m, kk] * B[kk, col]
//     m   = k                     (M = K)
//     col = (n*Ho + i)*Wo + j     (Ngemm = N*Ho*Wo)
//     kk  = (c*R + r)*S + s       (Kgemm = C*R*S)
//     A[m, kk]   = w[k, c, r, s]  = w_flat[m*Kgemm + kk]  (w is already K x CRS)
//     B[kk, col] = x[n, c, i*sh + r - ph, j*sw + s - pw]  (0 in the padding)
//     y[n, k, i, j] = Out[k, col]
// Rows, columns and kk past the matrix edges load as zeros; outputs past the
// edges are not stored. The sum over kk runs in increasing order.

// ---------------------------------------------------------------------------
// v1: straight from the formula.
extern "C" __global__ void conv2d_forward_v1(
    const scalar_t* __restrict__ x, const scalar_t* __restrict__ w, scalar_t* __restrict__ y,
    int N, int C, int H, int W, int K, int R, int S, int Ho, int Wo,
    int sh, int sw, int ph, int pw)
{
    const idx_t total = (idx_t)N * K * Ho * Wo;
    for (idx_t idx = global_thread_id(); idx < total; idx += grid_stride()) {
        const int j = (int)(idx % Wo);
        idx_t t = idx / Wo;
        const int i = (int)(t % Ho);
        t /= Ho;
        const int k = (int)(t % K);
        const idx_t n = t / K;
        const int h0 = i * sh - ph, w0 = j * sw - pw;
        scalar_t acc = 0;
        for (int c = 0; c < C; ++c) {
            const scalar_t* xc = x + (n * C + c) * H * W;
            const scalar_t* wc = w + ((idx_t)k * C + c) * R * S;
            for (int r = 0; r < R; ++r) {
                const int h = h0 + r;
                if (!in_range(h, H)) continue;
                for (int s = 0; s < S; ++s) {
                    const int ww = w0 + s;
                    if (!in_range(ww, W)) continue;
                    acc += xc[(idx_t)h * W + ww] * wc[r * S + s];
                }
            }
        }
        y[idx] = acc;
    }
}

// ---------------------------------------------------------------------------
// v2: implicit GEMM (see the tile description in common.cuh).
// Loads per TILE_K step, 4 elements of each tile per thread, staged through
// registers so that the next step's global loads are in flight while the
// current tile is multiplied:
//   A tile (TILE_K x TILE_M): thread loads kk = a_k, rows a_m + 16*l; 16
//     consecutive lanes read 16 consecutive weights of one filter row.
//   B tile (TILE_K x TILE_N): thread loads column b_n, rows b_k + 4*l; 64
//     consecutive lanes read consecutive output positions (consecutive x
//     addresses along a row when sw = 1). The column's (n, i, j) is decoded
//     once; only kk -> (c, r, s) is decoded per element.
extern "C" __global__ void __launch_bounds__(TILE_THREADS) conv2d_forward_v2(
    const scalar_t* __restrict__ x, const scalar_t* __restrict__ w, scalar_t* __restrict__ y,
    int N, int C, int H, int W, int K, int R, int S, int Ho, int Wo,
    int sh, int sw, int ph, int pw)
{
    __shared__ tile_a_t As;
    __shared__ tile_b_t Bs;

    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    const int RS = R * S;
    const int Kg = C * RS;
    const idx_t HoWo = (idx_t)Ho * Wo;
    const idx_t Ng = (idx_t)N * HoWo;
    const idx_t col0 = (idx_t)blockIdx.x * TILE_N;
    const int m0 = blockIdx.y * TILE_M;

    const int a_k = tid % TILE_K, a_m = tid / TILE_K;  // a_m in [0, 16)
    const int b_n = tid % TILE_N, b_k = tid / TILE_N;  // b_k in [0, 4)

    // This thread's B column: image n, window origin (hbase, wbase).
    const idx_t b_col = col0 + b_n;
    const bool b_col_ok = b_col < Ng;
    const scalar_t* x_img = x;
    int hbase = 0, wbase = 0;
    if (b_col_ok) {
        const idx_t n = b_col / HoWo;
        const int p = (int)(b_col - n * HoWo);
        const int i = p / Wo, j = p - (p / Wo) * Wo;
        hbase = i * sh - ph;
        wbase = j * sw - pw;
        x_img = x + n * C * H * W;
    }

    scalar_t a_reg[4], b_reg[4];
    auto load = [&](int k0) {
        const int ka = k0 + a_k;
#pragma unroll
        for (int l = 0; l < 4; ++l) {
            const int m = m0 + a_m + 16 * l;
            a_reg[l] = (m < K && ka < Kg) ? __ldg(w + (idx_t)m * Kg + ka) : (scalar_t)0;
        }
#pragma unroll
        for (int l = 0; l < 4; ++l) {
            const int kb = k0 + b_k + 4 * l;
            scalar_t v = 0;
            if (b_col_ok && kb < Kg) {
                const int c = kb / RS, rs = kb - (kb / RS) * RS;
                const int r = rs / S, s = rs - (rs / S) * S;
                const int h = hbase + r, ww = wbase + s;
                if (in_range(h, H) && in_range(ww, W))
                    v = __ldg(x_img + ((idx_t)c * H + h) * W + ww);
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
        const idx_t n = col / HoWo;
        const idx_t p = col - n * HoWo;
#pragma unroll
        for (int i = 0; i < THREAD_M; ++i) {
            const int m = m0 + ty + 16 * i;
            if (m < K) y[(n * K + m) * HoWo + p] = acc[i][j];
        }
    }
}
