// pool3d.cu: 3-D max and average pooling, forward and backward.
//
// Build and launch: at run time through gpucnn.kernel_loader (NVRTC via
// cupy.RawModule, options --std=c++17 -lineinfo -DSCALAR=float|double); the
// launchers are gpucnn/functional/pool3d_gpu.py. Standalone compile check:
//     nvcc -arch=sm_90 -cubin -I kernels -DSCALAR=float kernels/pool3d.cu
// Status: compiled, not yet run on a GPU.
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
// The windows containing input depth d are a in [a_lo, a_hi) from
// covering_outputs (common.cuh); likewise for rows and columns. Because
// 2*pad <= window, each window overlaps the volume, so a max window always
// has a real element: the first real element seeds the maximum and its index,
// and padding (-inf) never becomes the argmax. A volume has D*H*W < 2^31
// elements (the launcher checks: argmax is int32), so in-volume offsets are int.

// Geometry after the pointers: shape, output shape, window, stride, padding.
#define POOL3D_GEOMETRY                                                         \
    int N, int C, int D, int H, int W, int Do, int Ho, int Wo,                 \
    int T, int R, int S, int sd, int sh, int sw, int pd, int ph, int pw

// ---------------------------------------------------------------------------
extern "C" __global__ void max_pool3d_forward_v1(
    const scalar_t* __restrict__ x, scalar_t* __restrict__ y, int* __restrict__ argmax,
    POOL3D_GEOMETRY)
{
    const idx_t total = (idx_t)N * C * Do * Ho * Wo;
    for (idx_t idx = global_thread_id(); idx < total; idx += grid_stride()) {
        const int e = (int)(idx % Wo);
        idx_t q = idx / Wo;
        const int b = (int)(q % Ho);
        q /= Ho;
        const int a = (int)(q % Do);
        const idx_t volume = q / Do;  // n*C + c
        const scalar_t* xv = x + volume * D * H * W;
        const int d0 = a * sd - pd, h0 = b * sh - ph, v0 = e * sw - pw;
        scalar_t best = negative_infinity();
        int best_at = -1;
        for (int t = 0; t < T; ++t) {
            const int d = d0 + t;
            if (!in_range(d, D)) continue;
            for (int r = 0; r < R; ++r) {
                const int h = h0 + r;
                if (!in_range(h, H)) continue;
                for (int s = 0; s < S; ++s) {
                    const int v = v0 + s;
                    if (!in_range(v, W)) continue;
                    const int at = (d * H + h) * W + v;
                    const scalar_t val = xv[at];
                    if (best_at < 0 || max_pool_better(val, best)) {
                        best = val;
                        best_at = at;
                    }
                }
            }
        }
        y[idx] = best;
        argmax[idx] = best_at;
    }
}

// ---------------------------------------------------------------------------
extern "C" __global__ void max_pool3d_backward_v1(
    const scalar_t* __restrict__ dy, const int* __restrict__ argmax, scalar_t* __restrict__ dx,
    POOL3D_GEOMETRY)
{
    const idx_t total = (idx_t)N * C * D * H * W;
    const idx_t oDHW = (idx_t)Do * Ho * Wo;
    for (idx_t idx = global_thread_id(); idx < total; idx += grid_stride()) {
        const int v = (int)(idx % W);
        idx_t q = idx / W;
        const int h = (int)(q % H);
        q /= H;
        const int d = (int)(q % D);
        const idx_t volume = q / D;
        const int here = (d * H + h) * W + v;
        int a_lo, a_hi, b_lo, b_hi, e_lo, e_hi;
        covering_outputs(d, T, sd, pd, Do, &a_lo, &a_hi);
        covering_outputs(h, R, sh, ph, Ho, &b_lo, &b_hi);
        covering_outputs(v, S, sw, pw, Wo, &e_lo, &e_hi);
        const idx_t base = volume * oDHW;
        scalar_t acc = 0;
        for (int a = a_lo; a < a_hi; ++a)
            for (int b = b_lo; b < b_hi; ++b)
                for (int e = e_lo; e < e_hi; ++e) {
                    const idx_t o = base + ((idx_t)a * Ho + b) * Wo + e;
                    if (argmax[o] == here) acc += dy[o];
                }
        dx[idx] = acc;
    }
}

// ---------------------------------------------------------------------------
// One thread owns a whole (n, c) volume of dx, so its read-modify-writes need
// no atomics and happen in output order. Parallelism is only N*C threads: the
// fallback for callers that cannot pass the window geometry.
extern "C" __global__ void max_pool3d_backward_route_v1(
    const scalar_t* __restrict__ dy, const int* __restrict__ argmax, scalar_t* __restrict__ dx,
    int N, int C, int D, int H, int W, int Do, int Ho, int Wo)
{
    const idx_t volumes = (idx_t)N * C;
    const int DHW = D * H * W;
    const idx_t oDHW = (idx_t)Do * Ho * Wo;
    for (idx_t volume = global_thread_id(); volume < volumes; volume += grid_stride()) {
        scalar_t* dxv = dx + volume * DHW;
        const scalar_t* dyv = dy + volume * oDHW;
        const int* av = argmax + volume * oDHW;
        for (int i = 0; i < DHW; ++i) dxv[i] = 0;
        for (idx_t o = 0; o < oDHW; ++o) {
            const int at = av[o];
            if (in_range(at, DHW)) dxv[at] += dyv[o];
        }
    }
}

// ---------------------------------------------------------------------------
extern "C" __global__ void avg_pool3d_forward_v1(
    const scalar_t* __restrict__ x, scalar_t* __restrict__ y, POOL3D_GEOMETRY)
{
    const idx_t total = (idx_t)N * C * Do * Ho * Wo;
    const scalar_t divisor = (scalar_t)(T * R * S);
    for (idx_t idx = global_thread_id(); idx < total; idx += grid_stride()) {
        const int e = (int)(idx % Wo);
        idx_t q = idx / Wo;
        const int b = (int)(q % Ho);
        q /= Ho;
        const int a = (int)(q % Do);
        const idx_t volume = q / Do;
        const scalar_t* xv = x + volume * D * H * W;
        const int d0 = a * sd - pd, h0 = b * sh - ph, v0 = e * sw - pw;
        scalar_t acc = 0;
        for (int t = 0; t < T; ++t) {
            const int d = d0 + t;
            if (!in_range(d, D)) continue;
            for (int r = 0; r < R; ++r) {
                const int h = h0 + r;
                if (!in_range(h, H)) continue;
                for (int s = 0; s < S; ++s) {
                    const int v = v0 + s;
                    if (in_range(v, W)) acc += xv[(d * H + h) * W + v];
                }
            }
        }
        y[idx] = acc / divisor;
    }
}

// ---------------------------------------------------------------------------
extern "C" __global__ void avg_pool3d_backward_v1(
    const scalar_t* __restrict__ dy, scalar_t* __restrict__ dx, POOL3D_GEOMETRY)
{
    const idx_t total = (idx_t)N * C * D * H * W;
    const idx_t oDHW = (idx_t)Do * Ho * Wo;
    const scalar_t divisor = (scalar_t)(T * R * S);
    for (idx_t idx = global_thread_id(); idx < total; idx += grid_stride()) {
        const int v = (int)(idx % W);
        idx_t q = idx / W;
        const int h = (int)(q % H);
        q /= H;
        const int d = (int)(q % D);
        const idx_t volume = q / D;
        int a_lo, a_hi, b_lo, b_hi, e_lo, e_hi;
        covering_outputs(d, T, sd, pd, Do, &a_lo, &a_hi);
        covering_outputs(h, R, sh, ph, Ho, &b_lo, &b_hi);
        covering_outputs(v, S, sw, pw, Wo, &e_lo, &e_hi);
        const scalar_t* dyv = dy + volume * oDHW;
        scalar_t acc = 0;
        for (int a = a_lo; a < a_hi; ++a)
            for (int b = b_lo; b < b_hi; ++b)
                for (int e = e_lo; e < e_hi; ++e) acc += dyv[((idx_t)a * Ho + b) * Wo + e];
        dx[idx] = acc / divisor;
    }
}
