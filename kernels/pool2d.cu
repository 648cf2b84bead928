// pool2d.cu: 2-D max and average pooling, forward and backward (1-D runs here
// with H = R = 1).
//
// Build and launch: at run time through gpucnn.kernel_loader (NVRTC via
// cupy.RawModule, options --std=c++17 -lineinfo -DSCALAR=float|double); the
// launchers are gpucnn/functional/pool_gpu.py. Standalone compile check:
//     nvcc -arch=sm_90 -cubin -I kernels -DSCALAR=float kernels/pool2d.cu
// Status: verified on an H100 (GPU tests + compute-sanitizer, bench/results/gpu-h100-2026-11-24).
//
// Math. x (N, C, H, W), window R x S, stride (sh, sw), padding (ph, pw) with
// 2 ph <= R and 2 pw <= S (every window holds a real element), y (N, C, Ho, Wo),
// Ho = (H + 2 ph - R) / sh + 1. Window (i, j) covers rows i*sh - ph + [0, R)
// and columns j*sw - pw + [0, S).
//   max:  y[n,c,i,j] = max over the window (padding = -inf);
//         argmax[n,c,i,j] = h*W + w of that maximum in the unpadded plane,
//         first maximum in row-major window order, a NaN beats any number
//         and the first NaN wins.
//         dx[n,c,h,w] = sum of dy[n,c,i,j] over the windows with argmax = h*W + w.
//   avg:  y[n,c,i,j] = (sum over the window, padding = 0) / (R*S);
//         dx[n,c,h,w] = sum of dy[n,c,i,j] over the windows containing (h, w), / (R*S).
//
// Versions (all one thread per element, grid-stride loops, 1-D grids of 256 threads):
//   max_pool2d_forward_v1         one thread per output (dilation: taps dil apart)
//   max_pool2d_backward_v1        one thread per input element, gathers from the
//                                 windows containing it (needs the geometry)
//   max_pool2d_backward_route_v1  one thread per (n, c) plane: zeroes dx's plane, then
//                                 adds dy to dx[argmax] walking the outputs in order
//                                 (argmax alone, no geometry); argmax outside the
//                                 plane is skipped
//   avg_pool2d_forward_v1         one thread per output
//   avg_pool2d_backward_v1        one thread per input element, gather
// Every backward is deterministic: each dx element is summed by one thread,
// over the windows in row-major order (the order the CPU path scatters in).

#include "common.cuh"

// ---------------------------------------------------------------------------
// Notes on the math.
// The window loops are the shared helpers of common.cuh, with the depth axis
// FLAT_AXIS: for_each_in_window (forward) walks a window's in-image elements,
// for_each_covering_window (backward gather) the windows i in [i_lo, i_hi)
// x [j_lo, j_hi) that contain an input element (covering_outputs), both in
// row-major order. Because 2*pad <= kernel,
// each window overlaps the image, so a max window always has a real element:
// the first real element seeds the maximum and its index, and padding (-inf)
// never becomes the argmax.

// ---------------------------------------------------------------------------
// Dilated max pooling (PyTorch's dilation): the window taps are dil apart,
// Ho = (H + 2 ph - dil_h*(R-1) - 1) / sh + 1 (the launcher computes it). The
// dilation is compiled and emulated, not yet run on a GPU.
extern "C" __global__ void max_pool2d_forward_v1(
    const scalar_t* __restrict__ x, scalar_t* __restrict__ y, int* __restrict__ argmax,
    int N, int C, int H, int W, int Ho, int Wo, int R, int S, int sh, int sw, int ph, int pw,
    int dil_h, int dil_w)
{
    const Axis ah{H, Ho, R, sh, ph, dil_h}, aw{W, Wo, S, sw, pw, dil_w};
    const idx_t total = (idx_t)N * C * Ho * Wo;
    for (idx_t idx = global_thread_id(); idx < total; idx += grid_stride()) {
        idx_t plane = idx;  // becomes n*C + c
        const int j = split_last(plane, Wo);
        const int i = split_last(plane, Ho);
        const scalar_t* xp = x + plane * H * W;
        scalar_t best = negative_infinity();
        int best_at = -1;
        for_each_in_window(FLAT_AXIS, ah, aw, 0, i, j, [&](idx_t at, int) {
            const scalar_t v = xp[at];
            if (best_at < 0 || max_pool_better(v, best)) {
                best = v;
                best_at = (int)at;
            }
        });
        y[idx] = best;
        argmax[idx] = best_at;
    }
}

// ---------------------------------------------------------------------------
extern "C" __global__ void max_pool2d_backward_v1(
    const scalar_t* __restrict__ dy, const int* __restrict__ argmax, scalar_t* __restrict__ dx,
    int N, int C, int H, int W, int Ho, int Wo, int R, int S, int sh, int sw, int ph, int pw)
{
    const Axis ah{H, Ho, R, sh, ph}, aw{W, Wo, S, sw, pw};
    const idx_t total = (idx_t)N * C * H * W;
    for (idx_t idx = global_thread_id(); idx < total; idx += grid_stride()) {
        idx_t plane = idx;
        const int ww = split_last(plane, W);
        const int h = split_last(plane, H);
        const int here = h * W + ww;
        const idx_t base = plane * Ho * Wo;
        scalar_t acc = 0;
        for_each_covering_window(FLAT_AXIS, ah, aw, 0, h, ww, [&](idx_t o, int) {
            if (argmax[base + o] == here) acc += dy[base + o];
        });
        dx[idx] = acc;
    }
}

// ---------------------------------------------------------------------------
// One thread owns a whole (n, c) plane of dx (max_pool_route_planes): no
// atomics, output order. Parallelism is only N*C threads: the fallback for
// callers that cannot pass the window geometry.
extern "C" __global__ void max_pool2d_backward_route_v1(
    const scalar_t* __restrict__ dy, const int* __restrict__ argmax, scalar_t* __restrict__ dx,
    int N, int C, int H, int W, int Ho, int Wo)
{
    max_pool_route_planes(dy, argmax, dx, (idx_t)N * C, H * W, (idx_t)Ho * Wo);
}

// ---------------------------------------------------------------------------
extern "C" __global__ void avg_pool2d_forward_v1(
    const scalar_t* __restrict__ x, scalar_t* __restrict__ y,
    int N, int C, int H, int W, int Ho, int Wo, int R, int S, int sh, int sw, int ph, int pw)
{
    const Axis ah{H, Ho, R, sh, ph}, aw{W, Wo, S, sw, pw};
    const idx_t total = (idx_t)N * C * Ho * Wo;
    const scalar_t divisor = (scalar_t)(R * S);
    for (idx_t idx = global_thread_id(); idx < total; idx += grid_stride()) {
        idx_t plane = idx;
        const int j = split_last(plane, Wo);
        const int i = split_last(plane, Ho);
        const scalar_t* xp = x + plane * H * W;
        scalar_t acc = 0;
        for_each_in_window(FLAT_AXIS, ah, aw, 0, i, j, [&](idx_t at, int) { acc += xp[at]; });
        y[idx] = acc / divisor;
    }
}

// ---------------------------------------------------------------------------
extern "C" __global__ void avg_pool2d_backward_v1(
    const scalar_t* __restrict__ dy, scalar_t* __restrict__ dx,
    int N, int C, int H, int W, int Ho, int Wo, int R, int S, int sh, int sw, int ph, int pw)
{
    const Axis ah{H, Ho, R, sh, ph}, aw{W, Wo, S, sw, pw};
    const idx_t total = (idx_t)N * C * H * W;
    const scalar_t divisor = (scalar_t)(R * S);
    for (idx_t idx = global_thread_id(); idx < total; idx += grid_stride()) {
        idx_t plane = idx;
        const int ww = split_last(plane, W);
        const int h = split_last(plane, H);
        const scalar_t* dyp = dy + plane * Ho * Wo;
        scalar_t acc = 0;
        for_each_covering_window(FLAT_AXIS, ah, aw, 0, h, ww, [&](idx_t o, int) { acc += dyp[o]; });
        dx[idx] = acc / divisor;
    }
}
