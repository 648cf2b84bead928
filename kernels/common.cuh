// common.cuh: device helpers shared by the gpucnn kernels (kernels/*.cu).
//
// gpucnn.kernel_loader.read_source inlines this file into each .cu before
// NVRTC compiles it (CuPy's cache is keyed on the text); a standalone nvcc
// build finds it with -I kernels. It includes no system header: NVRTC has
// none, and its built-ins (blockIdx, __ldg, __longlong_as_double) suffice.
#ifndef GPUCNN_COMMON_CUH
#define GPUCNN_COMMON_CUH

// ---------------------------------------------------------------------------
// Element type. Every kernel is written once over scalar_t, and each .cu is
// compiled once per dtype: -DSCALAR=float (the default) or -DSCALAR=double.
// Sums accumulate in scalar_t, so float32 adds in float and float64 in double.
#ifndef SCALAR
#define SCALAR float
#endif
typedef SCALAR scalar_t;

// 64-bit index type for flat offsets: N*C*H*W and friends can pass 2^31.
typedef long long idx_t;

// Grid-stride loops: a launch with any number of blocks covers any size.
__device__ __forceinline__ idx_t global_thread_id() {
    return (idx_t)blockIdx.x * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ idx_t grid_stride() {
    return (idx_t)gridDim.x * blockDim.x;
}

// 0 <= v < n in one unsigned comparison (a negative v wraps to a huge value).
__device__ __forceinline__ bool in_range(int v, int n) {
    return (unsigned)v < (unsigned)n;
}

// The windows of a pooling (or the output positions of a convolution) that
// contain input row h: o with o*stride - pad <= h <= o*stride - pad + R - 1,
// clipped to [0, out). Writes the half-open range [*lo, *hi).
__device__ __forceinline__ void covering_outputs(int h, int R, int stride, int pad, int out,
                                                 int* lo, int* hi) {
    const int first = h + pad - R + 1;  // o*stride >= first
    *lo = first <= 0 ? 0 : (first + stride - 1) / stride;
    const int last = (h + pad) / stride + 1;  // h + pad >= 0 always
    *hi = last < out ? last : out;
}

// -inf of scalar_t, built from bits (NVRTC has no INFINITY macro).
__device__ __forceinline__ scalar_t negative_infinity() {
    return (scalar_t)(-__longlong_as_double(0x7ff0000000000000LL));
}

// Max-pool order: v replaces the running maximum when strictly larger (ties
// keep the first in row-major window order) or when v is the first NaN
// (NaN beats every number; once the maximum is NaN nothing replaces it).
__device__ __forceinline__ bool max_pool_better(scalar_t v, scalar_t best) {
    return v > best || (v != v && best == best);
}

// ---------------------------------------------------------------------------
// Block tile of the implicit-GEMM (v2) convolution kernels:
//     Out[TILE_M x TILE_N] += A[TILE_M x TILE_K] * B[TILE_K x TILE_N]
// with TILE_THREADS = 256 threads viewed as a 16 x 16 grid (tx = tid % 16,
// ty = tid / 16). Thread (tx, ty) owns the 4 x 4 outputs at rows ty + 16*i and
// columns tx + 16*j: a warp then reads 16 consecutive B words (no bank
// conflict) and two broadcast A words per step, and its stores of a row of
// outputs are 16 consecutive addresses. Both tiles are stored k-major, rows
// padded by TILE_PAD so that the loaders' transposed stores hit distinct banks.
#define TILE_M 64
#define TILE_N 64
#define TILE_K 16
#define TILE_THREADS 256
#define TILE_PAD 2
#define THREAD_M 4
#define THREAD_N 4

typedef scalar_t tile_a_t[TILE_K][TILE_M + TILE_PAD];
typedef scalar_t tile_b_t[TILE_K][TILE_N + TILE_PAD];

// acc[i][j] += sum_kk As[kk][ty + 16 i] * Bs[kk][tx + 16 j], kk in fixed order.
__device__ __forceinline__ void tile_multiply(const tile_a_t& As, const tile_b_t& Bs,
                                              scalar_t (&acc)[THREAD_M][THREAD_N], int tx, int ty) {
#pragma unroll
    for (int kk = 0; kk < TILE_K; ++kk) {
        scalar_t a[THREAD_M], b[THREAD_N];
#pragma unroll
        for (int i = 0; i < THREAD_M; ++i) a[i] = As[kk][ty + 16 * i];
#pragma unroll
        for (int j = 0; j < THREAD_N; ++j) b[j] = Bs[kk][tx + 16 * j];
#pragma unroll
        for (int i = 0; i < THREAD_M; ++i)
#pragma unroll
            for (int j = 0; j < THREAD_N; ++j) acc[i][j] += a[i] * b[j];
    }
}

#endif  // GPUCNN_COMMON_CUH
