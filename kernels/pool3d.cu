// pool3d.cu: 3-D max and average pooling, forward and backward.
//
// Build and launch: at run time through gpucnn.kernel_loader (NVRTC via
// cupy.RawModule, options --std=c++17 -lineinfo -DSCALAR=float|double); the
// launchers are gpucnn/functional/pool3d_gpu.py. Standalone compile check:
//     nvcc -arch=sm_90 -cubin -I kernels -DSCALAR=float kernels/pool3d.cu
// Status: verified on an H100 (GPU tests + compute-sanitizer, bench/results/gpu-h100-2026-11-24).
//
// Math. x (N, C, D, H, W), window T x R x S, stride (sd, sh, sw), padding
// (pd, ph, pw) with 2 pd <= T, 2 ph <= R, 2 pw <= S (every window holds a real
// element), y (N, C, Do, Ho, Wo), Do = (D + 2 pd - T) / sd + 1, Ho, Wo likewise.
// Window (a, b, e) covers depths a*sd - pd + [0, T), rows b*sh - ph + [0, R)
// and columns e*sw - pw + [0, S).
//   max:  y = max over the window (padding = -inf);
//         argmax = d*H*W + h*W + w of that maximum in the unpadded (n, c) volume,
//         first maximum in row-major (t, r, s) window order, a NaN beats any
//         number and the first NaN wins.
//         dx[n,c,d,h,w] = sum of dy[n,c,a,b,e] over the windows whose argmax is (d, h, w).
//   avg:  y = (sum over the window, padding = 0) / (T*R*S);
//         dx[n,c,d,h,w] = sum of dy over the windows containing (d, h, w), / (T*R*S).
//
// Versions (all one thread per element, grid-stride loops, 1-D grids of 256 threads):
//   max_pool3d_forward_v1         one thread per output
//   max_pool3d_backward_v1        one thread per input element, gathers from the
//                                 windows containing it (needs the geometry)
//   max_pool3d_backward_route_v1  one thread per (n, c) volume: zeroes dx's volume, then
//                                 adds dy to dx[argmax] walking the outputs in order
//                                 (argmax alone, no geometry); argmax outside the
//                                 volume is skipped
//   avg_pool3d_forward_v1         one thread per output
//   avg_pool3d_backward_v1        one thread per input element, gather
// Every backward is deterministic: each dx element is summed by one thread,
// over the windows in row-major order (the order the CPU path scatters in).

#include "common.cuh"

// ---------------------------------------------------------------------------
// Notes on the math.
// The window loops are the shared helpers of common.cuh: for_each_in_window
// (forward) walks a window's in-volume elements, for_each_covering_window
// (backward gather) the windows a in [a_lo, a_hi) x ... that contain an input
// element (covering_outputs), both in row-major order. Because
// 2*pad <= window, each window overlaps the volume, so a max window always
// has a real element: the first real element seeds the maximum and its index,
// and padding (-inf) never becomes the argmax. A volume has D*H*W < 2^31
// elements (the launcher checks: argmax is int32), so an argmax fits in int.

// Geometry after the pointers: shape, output shape, window, stride, padding.
#define POOL3D_GEOMETRY                                                         \
    int N, int C, int D, int H, int W, int Do, int Ho, int Wo,                 \
    int T, int R, int S, int sd, int sh, int sw, int pd, int ph, int pw

// ---------------------------------------------------------------------------
// Dilated max pooling: taps dil apart (compiled and emulated, not yet run on a GPU).
extern "C" __global__ void max_pool3d_forward_v1(
    const scalar_t* __restrict__ x, scalar_t* __restrict__ y, int* __restrict__ argmax,
    POOL3D_GEOMETRY, int dil_d, int dil_h, int dil_w)
{
    const Axis ad{D, Do, T, sd, pd, dil_d}, ah{H, Ho, R, sh, ph, dil_h}, aw{W, Wo, S, sw, pw, dil_w};
    const idx_t total = (idx_t)N * C * Do * Ho * Wo;
    for (idx_t idx = global_thread_id(); idx < total; idx += grid_stride()) {
        idx_t volume = idx;  // becomes n*C + c
        const int e = split_last(volume, Wo);
        const int b = split_last(volume, Ho);
        const int a = split_last(volume, Do);
        const scalar_t* xv = x + volume * D * H * W;
        scalar_t best = negative_infinity();
        int best_at = -1;
        for_each_in_window(ad, ah, aw, a, b, e, [&](idx_t at, int) {
            const scalar_t val = xv[at];
            if (best_at < 0 || max_pool_better(val, best)) {
                best = val;
                best_at = (int)at;
            }
        });
        y[idx] = best;
        argmax[idx] = best_at;
    }
}

// ---------------------------------------------------------------------------
extern "C" __global__ void max_pool3d_backward_v1(
    const scalar_t* __restrict__ dy, const int* __restrict__ argmax, scalar_t* __restrict__ dx,
    POOL3D_GEOMETRY)
{
    const Axis ad{D, Do, T, sd, pd}, ah{H, Ho, R, sh, ph}, aw{W, Wo, S, sw, pw};
    const idx_t total = (idx_t)N * C * D * H * W;
    const idx_t oDHW = (idx_t)Do * Ho * Wo;
    for (idx_t idx = global_thread_id(); idx < total; idx += grid_stride()) {
        idx_t volume = idx;
        const int v = split_last(volume, W);
        const int h = split_last(volume, H);
        const int d = split_last(volume, D);
        const int here = (d * H + h) * W + v;
        const idx_t base = volume * oDHW;
        scalar_t acc = 0;
        for_each_covering_window(ad, ah, aw, d, h, v, [&](idx_t o, int) {
            if (argmax[base + o] == here) acc += dy[base + o];
        });
        dx[idx] = acc;
    }
}

// ---------------------------------------------------------------------------
// One thread owns a whole (n, c) volume of dx (max_pool_route_planes): no
// atomics, output order. Parallelism is only N*C threads: the fallback for
// callers that cannot pass the window geometry.
extern "C" __global__ void max_pool3d_backward_route_v1(
    const scalar_t* __restrict__ dy, const int* __restrict__ argmax, scalar_t* __restrict__ dx,
    int N, int C, int D, int H, int W, int Do, int Ho, int Wo)
{
    max_pool_route_planes(dy, argmax, dx, (idx_t)N * C, D * H * W, (idx_t)Do * Ho * Wo);
}

// ---------------------------------------------------------------------------
extern "C" __global__ void avg_pool3d_forward_v1(
    const scalar_t* __restrict__ x, scalar_t* __restrict__ y, POOL3D_GEOMETRY)
{
    const Axis ad{D, Do, T, sd, pd}, ah{H, Ho, R, sh, ph}, aw{W, Wo, S, sw, pw};
    const idx_t total = (idx_t)N * C * Do * Ho * Wo;
    const scalar_t divisor = (scalar_t)(T * R * S);
    for (idx_t idx = global_thread_id(); idx < total; idx += grid_stride()) {
        idx_t volume = idx;
        const int e = split_last(volume, Wo);
        const int b = split_last(volume, Ho);
        const int a = split_last(volume, Do);
        const scalar_t* xv = x + volume * D * H * W;
        scalar_t acc = 0;
        for_each_in_window(ad, ah, aw, a, b, e, [&](idx_t at, int) { acc += xv[at]; });
        y[idx] = acc / divisor;
    }
}

// ---------------------------------------------------------------------------
extern "C" __global__ void avg_pool3d_backward_v1(
    const scalar_t* __restrict__ dy, scalar_t* __restrict__ dx, POOL3D_GEOMETRY)
{
    const Axis ad{D, Do, T, sd, pd}, ah{H, Ho, R, sh, ph}, aw{W, Wo, S, sw, pw};
    const idx_t total = (idx_t)N * C * D * H * W;
    const idx_t oDHW = (idx_t)Do * Ho * Wo;
    const scalar_t divisor = (scalar_t)(T * R * S);
    for (idx_t idx = global_thread_id(); idx < total; idx += grid_stride()) {
        idx_t volume = idx;
        const int v = split_last(volume, W);
        const int h = split_last(volume, H);
        const int d = split_last(volume, D);
        const scalar_t* dyv = dy + volume * oDHW;
        scalar_t acc = 0;
        for_each_covering_window(ad, ah, aw, d, h, v, [&](idx_t o, int) { acc += dyv[o]; });
        dx[idx] = acc / divisor;
    }
}
