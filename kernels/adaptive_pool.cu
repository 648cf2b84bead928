// adaptive_pool.cu: adaptive average and max pooling, 1-D, 2-D and 3-D (every
// input seen as (planes, D, H, W) with unit leading axes for 1-D and 2-D).
//
// Build and launch: at run time through gpucnn.kernel_loader (NVRTC via
// cupy.RawModule, options --std=c++17 -lineinfo -DSCALAR=float|double); the
// launchers are gpucnn/functional/adaptive_pool_gpu.py. Standalone compile check:
//     nvcc -std=c++17 -arch=sm_90 -cubin -I kernels -DSCALAR=float kernels/adaptive_pool.cu
// Status: compiled and emulated (tests/test_kernels_emulated.py), not yet run on a GPU.
//
// Math (PyTorch's adaptive windows). Along an axis of `in` inputs and `out`
// outputs, output o pools the inputs [start(o), end(o)) with
//     start(o) = floor(o*in/out),   end(o) = ceil((o+1)*in/out)
// (windows may overlap and differ in size by one; out > in repeats inputs).
//   avg:  y[p,a,b,e] = sum over the window / its size (D-, H-, W-extents multiplied)
//         dx[p,d,h,v] = sum over the windows containing (d,h,v) of dy / window size
//   max:  y, argmax as max_pool's: first maximum in row-major window order, a
//         NaN beats any number and the first NaN wins; argmax = (d*H + h)*W + v.
//         Its backward is max_pool's route kernel (argmax alone).
// The windows containing input h along an axis are the o in
//     [floor(h*out/in), ceil((h+1)*out/in))
// (start(o) <= h  <=>  o < (h+1)*out/in;  end(o) > h  <=>  o >= floor(h*out/in)).
//
// Versions (one thread per element, grid-stride loops, 1-D grids of 256 threads):
//   adaptive_avg_pool_forward_v1   one thread per output
//   adaptive_max_pool_forward_v1   one thread per output
//   adaptive_avg_pool_backward_v1  one thread per input element, gathers over the
//                                  windows containing it in row-major order
//                                  (deterministic, no atomics)

#include "common.cuh"

// Geometry after the pointers, the same for every kernel in this file.
#define ADAPTIVE_GEOMETRY \
    long long planes, int D, int H, int W, int Do, int Ho, int Wo

__device__ __forceinline__ int adaptive_start(int o, int in, int out) {
    return (int)(((idx_t)o * in) / out);
}
__device__ __forceinline__ int adaptive_end(int o, int in, int out) {
    return (int)(((idx_t)(o + 1) * in + out - 1) / out);
}

// Output idx of (planes, Do, Ho, Wo) -> its plane and input window
// [d0, d1) x [h0, h1) x [v0, v1).
struct AdaptiveWindow {
    idx_t plane;
    int d0, d1, h0, h1, v0, v1;
};
__device__ __forceinline__ AdaptiveWindow adaptive_window(idx_t idx, int D, int H, int W,
                                                          int Do, int Ho, int Wo) {
    const int e = split_last(idx, Wo);
    const int b = split_last(idx, Ho);
    const int a = split_last(idx, Do);
    return AdaptiveWindow{idx, adaptive_start(a, D, Do), adaptive_end(a, D, Do),
                          adaptive_start(b, H, Ho), adaptive_end(b, H, Ho),
                          adaptive_start(e, W, Wo), adaptive_end(e, W, Wo)};
}

extern "C" __global__ void adaptive_avg_pool_forward_v1(
    const scalar_t* __restrict__ x, scalar_t* __restrict__ y, ADAPTIVE_GEOMETRY)
{
    const idx_t total = planes * Do * Ho * Wo;
    for (idx_t idx = global_thread_id(); idx < total; idx += grid_stride()) {
        const AdaptiveWindow win = adaptive_window(idx, D, H, W, Do, Ho, Wo);
        const scalar_t* xp = x + win.plane * D * H * W;
        scalar_t acc = 0;
        for (int d = win.d0; d < win.d1; ++d)
            for (int h = win.h0; h < win.h1; ++h)
                for (int v = win.v0; v < win.v1; ++v) acc += xp[((idx_t)d * H + h) * W + v];
        y[idx] = acc / (scalar_t)((win.d1 - win.d0) * (win.h1 - win.h0) * (win.v1 - win.v0));
    }
}

extern "C" __global__ void adaptive_max_pool_forward_v1(
    const scalar_t* __restrict__ x, scalar_t* __restrict__ y, int* __restrict__ argmax,
    ADAPTIVE_GEOMETRY)
{
    const idx_t total = planes * Do * Ho * Wo;
    for (idx_t idx = global_thread_id(); idx < total; idx += grid_stride()) {
        const AdaptiveWindow win = adaptive_window(idx, D, H, W, Do, Ho, Wo);
        const scalar_t* xp = x + win.plane * D * H * W;
        scalar_t best = negative_infinity();
        int best_at = -1;
        for (int d = win.d0; d < win.d1; ++d)
            for (int h = win.h0; h < win.h1; ++h)
                for (int v = win.v0; v < win.v1; ++v) {
                    const int at = (d * H + h) * W + v;
                    const scalar_t val = xp[at];
                    if (best_at < 0 || max_pool_better(val, best)) {
                        best = val;
                        best_at = at;
                    }
                }
        y[idx] = best;
        argmax[idx] = best_at;
    }
}

// The outputs o along one axis whose window contains input h, as [*lo, *hi).
__device__ __forceinline__ void adaptive_covering(int h, int in, int out, int* lo, int* hi) {
    *lo = (int)(((idx_t)h * out) / in);
    const int last = (int)(((idx_t)(h + 1) * out + in - 1) / in);
    *hi = last < out ? last : out;
}

extern "C" __global__ void adaptive_avg_pool_backward_v1(
    const scalar_t* __restrict__ dy, scalar_t* __restrict__ dx, ADAPTIVE_GEOMETRY)
{
    const idx_t total = planes * D * H * W;
    for (idx_t idx = global_thread_id(); idx < total; idx += grid_stride()) {
        idx_t p = idx;
        const int v = split_last(p, W);
        const int h = split_last(p, H);
        const int d = split_last(p, D);
        int a0, a1, b0, b1, e0, e1;
        adaptive_covering(d, D, Do, &a0, &a1);
        adaptive_covering(h, H, Ho, &b0, &b1);
        adaptive_covering(v, W, Wo, &e0, &e1);
        const scalar_t* dyp = dy + p * Do * Ho * Wo;
        scalar_t acc = 0;
        for (int a = a0; a < a1; ++a) {
            const int nd = adaptive_end(a, D, Do) - adaptive_start(a, D, Do);
            for (int b = b0; b < b1; ++b) {
                const int nh = adaptive_end(b, H, Ho) - adaptive_start(b, H, Ho);
                for (int e = e0; e < e1; ++e) {
                    const int nw = adaptive_end(e, W, Wo) - adaptive_start(e, W, Wo);
                    acc += dyp[((idx_t)a * Ho + b) * Wo + e] / (scalar_t)(nd * nh * nw);
                }
            }
        }
        dx[idx] = acc;
    }
}
