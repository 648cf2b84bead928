// pool2d.cu: 2-D max and average pooling, forward and backward (1-D runs here
// with H = R = 1).
//
// Build and launch: at run time through gpucnn.kernel_loader (NVRTC via
// cupy.RawModule, options --std=c++17 -lineinfo -DSCALAR=float|double, or
// -DSCALAR=float -DSTORAGE_HALF for float16 arrays); the launchers are
// gpucnn/functional/pool_gpu.py. Standalone compile check:
//     nvcc -arch=sm_90 -cubin -I kernels -DSCALAR=float kernels/pool2d.cu
// Status: v1 verified on an H100 (GPU tests + compute-sanitizer,
// bench/results/gpu-h100-2026-11-24) before dilation was added; v2 compiled
// and emulated, not yet run on a GPU.
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
// Versions (grid-stride loops, 1-D grids of 256 threads; v1 one thread per element):
//   max_pool2d_forward_v1         one thread per output (dilation: taps dil apart)
//   max_pool2d_backward_v1        one thread per input element, gathers from the
//                                 windows containing it (needs the geometry)
//   max_pool2d_backward_route_v1  one thread per (n, c) plane: zeroes dx's plane, then
//                                 adds dy to dx[argmax] walking the outputs in order
//                                 (argmax alone, no geometry); argmax outside the
//                                 plane is skipped
//   avg_pool2d_forward_v1         one thread per output
//   avg_pool2d_backward_v1        one thread per input element, gather
//   max_pool2d_forward_v2         POOL_RUN = 4 consecutive outputs of a row per
//                                 thread, the windows' input rows read once each
//                                 with 16/8-byte vector loads; stores of whole
//                                 runs as one vector (no dilation)
//   max_pool2d_backward_v2        4 consecutive inputs of a row per thread; each
//                                 covering window's dy and argmax loaded once
//   avg_pool2d_forward_v2         as max_pool2d_forward_v2
//   avg_pool2d_backward_v2        as max_pool2d_backward_v2
// v2's arrays are storage_t (common.cuh): scalar_t, or float16 with float
// arithmetic in the -DSTORAGE_HALF build. v2 gives v1's results bit for bit
// (same per-element order of the max and of the sums); in float16, the bits
// of v1 on float32 copies rounded to float16.
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

// ===========================================================================
// v2: several consecutive elements of a row per thread (POOL_RUN), rows read
// with vector loads (for_each_in_row: 16-byte loads where aligned, 8-byte and
// scalar at the ends), results written with store_run (16-byte stores when
// the run is whole and aligned). Compiled and emulated, not yet run on a GPU.
//
// Forward: a thread owns outputs j0 .. j0+n-1 (n <= POOL_RUN) of row i. The
// union of their windows' columns, [v0, v0 + (n-1)*sw + S), is read once per
// window row, left to right, and each element is offered to every output
// whose window holds it. For one output that is row-major (r, s) order, the
// order v1 visits, so the max (ties, NaN) and the sums are bit for bit v1's.
// Backward: a thread owns inputs c0 .. c0+n-1 of row h and walks the windows
// covering any of them once, in (b, e) order; each window's dy (and argmax)
// is loaded once and added to the inputs it covers: for one input that is
// v1's order, so the sums are bit for bit v1's, and no x is read. With
// stride >= window (2x2/2) each input meets at most one window.
// Window taps are adjacent (no dilation: the launcher runs v1 for dilated
// max pooling).
#define POOL_RUN 4

// tap(k, v, at) for each in-image element v = xp[at] (at = h*W + c, widened
// to scalar_t) of the
// windows of outputs j0 + k, k < n, of output row i; per k in (r, s) order.
template <typename Tap>
__device__ __forceinline__ void for_each_in_windows_of_run(const storage_t* __restrict__ xp,
                                                           const Axis& ah, const Axis& aw, int i,
                                                           int j0, int n, Tap tap) {
    const int h0 = i * ah.stride - ah.pad, v0 = j0 * aw.stride - aw.pad;
    const int end = v0 + (n - 1) * aw.stride + aw.win;
    const int c0 = v0 < 0 ? 0 : v0, c1 = end < aw.in ? end : aw.in;
    for (int r = 0; r < ah.win; ++r) {
        const int h = h0 + r;
        if (!in_range(h, ah.in)) continue;
        for_each_in_row(xp + (idx_t)h * aw.in, c0, c1, [&](int c, storage_t stored) {
            const scalar_t v = load_value(stored);
#pragma unroll
            for (int k = 0; k < POOL_RUN; ++k)
                if (k < n && in_range(c - v0 - k * aw.stride, aw.win)) tap(k, v, h * aw.in + c);
        });
    }
}

// window(o, s0) for each window o = b*Wo + e that covers any of the inputs
// c0 .. c0+n-1 of input row h, in (b, e) order; input c0 + k is its tap
// s0 + k when 0 <= s0 + k < S.
template <typename Window>
__device__ __forceinline__ void for_each_window_of_run(const Axis& ah, const Axis& aw, int h, int c0,
                                                       int n, Window window) {
    int b_lo, b_hi, e_lo, e_hi, unused;
    covering_outputs(h, ah.win, ah.stride, ah.pad, ah.out, &b_lo, &b_hi);
    covering_outputs(c0, aw.win, aw.stride, aw.pad, aw.out, &e_lo, &unused);
    covering_outputs(c0 + n - 1, aw.win, aw.stride, aw.pad, aw.out, &unused, &e_hi);
    for (int b = b_lo; b < b_hi; ++b)
        for (int e = e_lo; e < e_hi; ++e)
            window((idx_t)b * aw.out + e, c0 + aw.pad - e * aw.stride);
}

// The run of a thread: element `first` .. first+n-1 of row `row` of plane
// `plane` in a (planes, rows, cols) array, from the flat run index idx.
// The run's values rounded to storage_t, for store_run.
__device__ __forceinline__ void to_storage(const scalar_t (&v)[POOL_RUN], storage_t (&out)[POOL_RUN]) {
#pragma unroll
    for (int k = 0; k < POOL_RUN; ++k) out[k] = store_value(v[k]);
}

struct RowRun {
    idx_t plane;
    int row, first, n;
};
__device__ __forceinline__ RowRun row_run(idx_t idx, int rows, int cols) {
    RowRun t;
    t.first = split_last(idx, (cols + POOL_RUN - 1) / POOL_RUN) * POOL_RUN;
    t.row = split_last(idx, rows);
    t.plane = idx;
    t.n = cols - t.first < POOL_RUN ? cols - t.first : POOL_RUN;
    return t;
}

__device__ __forceinline__ idx_t row_runs(idx_t planes, int rows, int cols) {
    return planes * rows * ((cols + POOL_RUN - 1) / POOL_RUN);
}

// ---------------------------------------------------------------------------
extern "C" __global__ void max_pool2d_forward_v2(
    const storage_t* __restrict__ x, storage_t* __restrict__ y, int* __restrict__ argmax,
    int N, int C, int H, int W, int Ho, int Wo, int R, int S, int sh, int sw, int ph, int pw)
{
    const Axis ah{H, Ho, R, sh, ph}, aw{W, Wo, S, sw, pw};
    const idx_t total = row_runs((idx_t)N * C, Ho, Wo);
    for (idx_t idx = global_thread_id(); idx < total; idx += grid_stride()) {
        const RowRun t = row_run(idx, Ho, Wo);
        scalar_t best[POOL_RUN];
        int best_at[POOL_RUN];
#pragma unroll
        for (int k = 0; k < POOL_RUN; ++k) {
            best[k] = negative_infinity();
            best_at[k] = -1;
        }
        for_each_in_windows_of_run(x + t.plane * H * W, ah, aw, t.row, t.first, t.n,
                                   [&](int k, scalar_t v, int at) {
            if (best_at[k] < 0 || max_pool_better(v, best[k])) {
                best[k] = v;
                best_at[k] = at;
            }
        });
        const idx_t out = (t.plane * Ho + t.row) * Wo + t.first;
        storage_t stored[POOL_RUN];
        to_storage(best, stored);
        store_run(y + out, stored, t.n);
        store_run(argmax + out, best_at, t.n);
    }
}

// ---------------------------------------------------------------------------
extern "C" __global__ void max_pool2d_backward_v2(
    const storage_t* __restrict__ dy, const int* __restrict__ argmax, storage_t* __restrict__ dx,
    int N, int C, int H, int W, int Ho, int Wo, int R, int S, int sh, int sw, int ph, int pw)
{
    const Axis ah{H, Ho, R, sh, ph}, aw{W, Wo, S, sw, pw};
    const idx_t total = row_runs((idx_t)N * C, H, W);
    for (idx_t idx = global_thread_id(); idx < total; idx += grid_stride()) {
        const RowRun t = row_run(idx, H, W);
        const idx_t base = t.plane * Ho * Wo;
        const int here = t.row * W + t.first;
        scalar_t acc[POOL_RUN];
#pragma unroll
        for (int k = 0; k < POOL_RUN; ++k) acc[k] = 0;
        for_each_window_of_run(ah, aw, t.row, t.first, t.n, [&](idx_t o, int s0) {
            const int a = argmax[base + o];
            const scalar_t g = load_value(dy[base + o]);
#pragma unroll
            for (int k = 0; k < POOL_RUN; ++k)
                if (k < t.n && in_range(s0 + k, S) && a == here + k) acc[k] += g;
        });
        storage_t stored[POOL_RUN];
        to_storage(acc, stored);
        store_run(dx + (t.plane * H + t.row) * W + t.first, stored, t.n);
    }
}

// ---------------------------------------------------------------------------
extern "C" __global__ void avg_pool2d_forward_v2(
    const storage_t* __restrict__ x, storage_t* __restrict__ y,
    int N, int C, int H, int W, int Ho, int Wo, int R, int S, int sh, int sw, int ph, int pw)
{
    const Axis ah{H, Ho, R, sh, ph}, aw{W, Wo, S, sw, pw};
    const idx_t total = row_runs((idx_t)N * C, Ho, Wo);
    const scalar_t divisor = (scalar_t)(R * S);
    for (idx_t idx = global_thread_id(); idx < total; idx += grid_stride()) {
        const RowRun t = row_run(idx, Ho, Wo);
        scalar_t acc[POOL_RUN];
#pragma unroll
        for (int k = 0; k < POOL_RUN; ++k) acc[k] = 0;
        for_each_in_windows_of_run(x + t.plane * H * W, ah, aw, t.row, t.first, t.n,
                                   [&](int k, scalar_t v, int) { acc[k] += v; });
#pragma unroll
        for (int k = 0; k < POOL_RUN; ++k) acc[k] /= divisor;
        storage_t stored[POOL_RUN];
        to_storage(acc, stored);
        store_run(y + (t.plane * Ho + t.row) * Wo + t.first, stored, t.n);
    }
}

// ---------------------------------------------------------------------------
extern "C" __global__ void avg_pool2d_backward_v2(
    const storage_t* __restrict__ dy, storage_t* __restrict__ dx,
    int N, int C, int H, int W, int Ho, int Wo, int R, int S, int sh, int sw, int ph, int pw)
{
    const Axis ah{H, Ho, R, sh, ph}, aw{W, Wo, S, sw, pw};
    const idx_t total = row_runs((idx_t)N * C, H, W);
    const scalar_t divisor = (scalar_t)(R * S);
    for (idx_t idx = global_thread_id(); idx < total; idx += grid_stride()) {
        const RowRun t = row_run(idx, H, W);
        const storage_t* dyp = dy + t.plane * Ho * Wo;
        scalar_t acc[POOL_RUN];
#pragma unroll
        for (int k = 0; k < POOL_RUN; ++k) acc[k] = 0;
        for_each_window_of_run(ah, aw, t.row, t.first, t.n, [&](idx_t o, int s0) {
            const scalar_t g = load_value(dyp[o]);
#pragma unroll
            for (int k = 0; k < POOL_RUN; ++k)
                if (k < t.n && in_range(s0 + k, S)) acc[k] += g;
        });
#pragma unroll
        for (int k = 0; k < POOL_RUN; ++k) acc[k] /= divisor;
        storage_t stored[POOL_RUN];
        to_storage(acc, stored);
        store_run(dx + (t.plane * H + t.row) * W + t.first, stored, t.n);
    }
}
