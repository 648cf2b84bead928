// conv2d_depthwise.cu: depthwise 2-D convolution (groups = C, each filter
// reads one channel), forward and backward-filter (1-D runs here with H = R = 1).
//
// Build and launch: at run time through gpucnn.kernel_loader (NVRTC via
// cupy.RawModule, options --std=c++17 -lineinfo -DSCALAR=float|double); the
// launcher is gpucnn/functional/conv_gpu.py (forward and backward_filter pick
// these kernels when C/G == 1 and G > 1 with version=None; the forward also
// needs its input tile to fit DW_IN, else v1 runs). Standalone compile check:
//     nvcc -std=c++17 -arch=sm_90 -cubin -I kernels -DSCALAR=float kernels/conv2d_depthwise.cu
// Status: compiled and emulated (tests/test_kernels_emulated.py), not yet run on a GPU.
//
// Math. x (N, C, H, W), w (K, C/G, R, S), stride (sh, sw), padding (ph, pw),
// dilation (dil_h, dil_w), G groups, dy (N, K, Ho, Wo):
//     dw[k,c,r,s] = sum_{n,i,j} dy[n,k,i,j] * x[n, g*C/G + c, i*sh + r*dil_h - ph, j*sw + s*dil_w - pw]
// with g = k / (K/G) (x zero outside the image). Depthwise is G = C: each
// filter sees one channel and dw has only K*R*S elements, each a sum over
// N*Ho*Wo products. The implicit GEMM (conv2d_backward_filter_v2) would run
// G GEMMs of K/G rows (the channel multiplier, usually 1) on 64-row tiles,
// and v1 one thread per dw element (K*R*S threads, a few thousand, each
// walking N*Ho*Wo positions alone); this kernel gives each dw element a block.
//
//     y[n,k,i,j]  = sum_{r,s} x[n, c, i*sh + r*dil_h - ph, j*sw + s*dil_w - pw] * w[k,0,r,s]
// (c = k / (K/G), the filter's one channel, when C/G = 1).
//
// Versions:
//   depthwise_forward_v1          a 16x16 tile of one (n, k) output plane per 256-thread
//                                 block: the input rows/columns the tile reads (its
//                                 window union, (16-1)*stride + dil*(R-1) + 1 per axis,
//                                 zeros for the padding) are staged once in shared
//                                 memory and every output reads its R*S taps from
//                                 there; grid (tiles of the plane, min(N*K, 65535)),
//                                 planes grid-stride along y
//   depthwise_backward_filter_v1  one 256-thread block per dw element (grid-stride over
//                                 elements): thread t sums the positions q = t, t + 256, ...
//                                 of the N*Ho*Wo sum in order, then a shared-memory tree
//                                 reduction in a fixed order. Deterministic (no atomics).
// The backward-data of a depthwise conv runs the direct v1 kernel of
// conv2d_backward.cu (chosen by version=None: GEMM rows C/G = 1 < 16), which
// reads one channel per input already. The forward taps are summed in the
// same row-major order as conv2d_forward_v1's (padding taps add 0 here).

#include "common.cuh"

#define DEPTHWISE_THREADS 256
#define DW_TILE 16   // output tile side (DW_TILE^2 = DEPTHWISE_THREADS)
#define DW_IN 48     // largest staged input tile side: (DW_TILE-1)*stride + dil*(R-1) + 1 <= DW_IN

extern "C" __global__ void __launch_bounds__(DEPTHWISE_THREADS, 1) conv2d_depthwise_forward_v1(
    const scalar_t* __restrict__ x, const scalar_t* __restrict__ w, scalar_t* __restrict__ y,
    int N, int C, int H, int W, int K, int R, int S, int Ho, int Wo,
    int sh, int sw, int ph, int pw, int dil_h, int dil_w, int groups)
{
    __shared__ scalar_t tile[DW_IN][DW_IN + 1];
    const int Kpg = K / groups;                       // the channel multiplier (C/G = 1)
    const int rows = (DW_TILE - 1) * sh + dil_h * (R - 1) + 1;
    const int cols = (DW_TILE - 1) * sw + dil_w * (S - 1) + 1;
    const int tiles_w = (Wo + DW_TILE - 1) / DW_TILE;
    const int i0 = (int)(blockIdx.x / tiles_w) * DW_TILE, j0 = (int)(blockIdx.x % tiles_w) * DW_TILE;
    const int tx = threadIdx.x % DW_TILE, ty = threadIdx.x / DW_TILE;
    const int i = i0 + ty, j = j0 + tx;
    for (idx_t plane = blockIdx.y; plane < (idx_t)N * K; plane += gridDim.y) {  // uniform over the block
        const int k = (int)(plane % K);
        const idx_t n = plane / K;
        const scalar_t* xc = x + (n * C + k / Kpg) * H * W;
        const int hb = i0 * sh - ph, wb = j0 * sw - pw;   // the tile's first input row/column
        for (int e = threadIdx.x; e < rows * cols; e += DEPTHWISE_THREADS) {
            const int r = e / cols, q = e - (e / cols) * cols;
            const int h = hb + r, v = wb + q;
            tile[r][q] = in_range(h, H) && in_range(v, W) ? xc[(idx_t)h * W + v] : (scalar_t)0;
        }
        __syncthreads();
        if (i < Ho && j < Wo) {
            const scalar_t* wk = w + (idx_t)k * R * S;
            scalar_t acc = 0;
            for (int r = 0; r < R; ++r) {
                const scalar_t* row = &tile[ty * sh + r * dil_h][tx * sw];
                for (int s = 0; s < S; ++s) acc += row[s * dil_w] * __ldg(wk + r * S + s);
            }
            y[(plane * Ho + i) * Wo + j] = acc;
        }
        __syncthreads();  // the tile is reloaded for the next plane
    }
}

extern "C" __global__ void __launch_bounds__(DEPTHWISE_THREADS) conv2d_depthwise_backward_filter_v1(
    const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x, scalar_t* __restrict__ dw,
    int N, int C, int H, int W, int K, int R, int S, int Ho, int Wo,
    int sh, int sw, int ph, int pw, int dil_h, int dil_w, int groups)
{
    __shared__ scalar_t part[DEPTHWISE_THREADS];
    const int Cg = C / groups, Kpg = K / groups;
    const idx_t total = (idx_t)K * Cg * R * S;
    const idx_t positions = (idx_t)N * Ho * Wo;
    for (idx_t e = blockIdx.x; e < total; e += gridDim.x) {  // uniform over the block
        const FilterTap f = filter_tap(e, Cg, Kpg, R, S);
        const idx_t k = f.k;
        const int c = f.c, r = f.r, s = f.s;
        scalar_t acc = 0;
        for (idx_t q = threadIdx.x; q < positions; q += DEPTHWISE_THREADS) {
            idx_t n = q;
            const int j = split_last(n, Wo);
            const int i = split_last(n, Ho);
            const int h = i * sh + r * dil_h - ph, v = j * sw + s * dil_w - pw;
            if (in_range(h, H) && in_range(v, W))
                acc += dy[((n * K + k) * Ho + i) * Wo + j] * x[((n * C + c) * H + h) * W + v];
        }
        part[threadIdx.x] = acc;
        __syncthreads();
        for (int half = DEPTHWISE_THREADS / 2; half > 0; half /= 2) {
            if ((int)threadIdx.x < half) part[threadIdx.x] += part[threadIdx.x + half];
            __syncthreads();
        }
        if (threadIdx.x == 0) dw[e] = part[0];
        __syncthreads();  // part is reused by the next element
    }
}
