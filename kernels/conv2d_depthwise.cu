// conv2d_depthwise.cu: backward-filter of a depthwise (grouped) 2-D convolution
// (1-D runs here with H = R = 1).
//
// Build and launch: at run time through gpucnn.kernel_loader (NVRTC via
// cupy.RawModule, options --std=c++17 -lineinfo -DSCALAR=float|double); the
// launcher is gpucnn/functional/conv_gpu.py (backward_filter, picked when
// C/G == 1 and G > 1 with version=None). Standalone compile check:
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
// Versions:
//   depthwise_backward_filter_v1  one 256-thread block per dw element (grid-stride over
//                                 elements): thread t sums the positions q = t, t + 256, ...
//                                 of the N*Ho*Wo sum in order, then a shared-memory tree
//                                 reduction in a fixed order. Deterministic (no atomics).
// Forward and backward-data of a depthwise conv run the direct v1 kernels of
// conv2d_forward.cu / conv2d_backward.cu (chosen by version=None: GEMM rows
// K/G < 16), which read one channel per output already.

#include "common.cuh"

#define DEPTHWISE_THREADS 256

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
