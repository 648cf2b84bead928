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

// Row-major decoding: returns idx % n, the last coordinate of an axis of size
// n, and leaves idx / n (the coordinates before it) in idx.
__device__ __forceinline__ int split_last(idx_t& idx, int n) {
    const int last = (int)(idx % n);
    idx /= n;
    return last;
}

// ---------------------------------------------------------------------------
// Sliding windows (pooling and convolution). Along one axis the input has
// `in` positions and the output `out`; output o's window covers inputs
// o*stride - pad + dil*[0, win) (dil: the dilation, taps dil apart; the
// window spans dil*(win-1) + 1 inputs). A 2-D kernel uses the 3-D helpers
// below with the depth axis FLAT_AXIS (one position, one output, window 1,
// no padding). Axis{in, out, win, stride, pad} leaves dil = 1.
struct Axis {
    int in, out, win, stride, pad;
    int dil = 1;
    __device__ __forceinline__ int span() const { return dil * (win - 1) + 1; }
};
#define FLAT_AXIS (Axis{1, 1, 1, 1, 0})

// The windows that contain input position h: o with
// o*stride - pad <= h <= o*stride - pad + win - 1, clipped to [0, out).
// Writes the half-open range [*lo, *hi).
__device__ __forceinline__ void covering_outputs(int h, int R, int stride, int pad, int out,
                                                 int* lo, int* hi) {
    const int first = h + pad - R + 1;  // o*stride >= first
    *lo = first <= 0 ? 0 : (first + stride - 1) / stride;
    const int last = (h + pad) / stride + 1;  // h + pad >= 0 always
    *hi = last < out ? last : out;
}

// f(at, tap) for every element of window (a, b, e) that lies inside the
// input, in row-major (t, r, s) order: at = (d*H + h)*W + v is its offset in
// the input volume, tap = (t*R + r)*S + s its offset in the window.
template <typename F>
__device__ __forceinline__ void for_each_in_window(const Axis& ad, const Axis& ah, const Axis& aw,
                                                   int a, int b, int e, F f) {
    const int d0 = a * ad.stride - ad.pad, h0 = b * ah.stride - ah.pad, v0 = e * aw.stride - aw.pad;
    for (int t = 0; t < ad.win; ++t) {
        const int d = d0 + t * ad.dil;
        if (!in_range(d, ad.in)) continue;
        for (int r = 0; r < ah.win; ++r) {
            const int h = h0 + r * ah.dil;
            if (!in_range(h, ah.in)) continue;
            for (int s = 0; s < aw.win; ++s) {
                const int v = v0 + s * aw.dil;
                if (in_range(v, aw.in))
                    f(((idx_t)d * ah.in + h) * aw.in + v, (t * ah.win + r) * aw.win + s);
            }
        }
    }
}

// f(o, tap) for every window that contains input (d, h, v), in row-major
// (a, b, e) order: o = (a*Ho + b)*Wo + e is the window's offset in the output
// volume, tap = (t*R + r)*S + s the position of (d, h, v) inside it. With
// dilation the windows whose span covers the input are scanned and those
// whose offset is not a multiple of dil (the input falls between two taps)
// skipped; with dil = 1 every offset is a tap.
template <typename F>
__device__ __forceinline__ void for_each_covering_window(const Axis& ad, const Axis& ah,
                                                         const Axis& aw, int d, int h, int v, F f) {
    int a_lo, a_hi, b_lo, b_hi, e_lo, e_hi;
    covering_outputs(d, ad.span(), ad.stride, ad.pad, ad.out, &a_lo, &a_hi);
    covering_outputs(h, ah.span(), ah.stride, ah.pad, ah.out, &b_lo, &b_hi);
    covering_outputs(v, aw.span(), aw.stride, aw.pad, aw.out, &e_lo, &e_hi);
    for (int a = a_lo; a < a_hi; ++a) {
        const int t = d + ad.pad - a * ad.stride;
        if (t % ad.dil) continue;
        for (int b = b_lo; b < b_hi; ++b) {
            const int r = h + ah.pad - b * ah.stride;
            if (r % ah.dil) continue;
            for (int e = e_lo; e < e_hi; ++e) {
                const int s = v + aw.pad - e * aw.stride;
                if (s % aw.dil) continue;
                f(((idx_t)a * ah.out + b) * aw.out + e,
                  ((t / ad.dil) * ah.win + r / ah.dil) * aw.win + s / aw.dil);
            }
        }
    }
}

// f(o, at) for every window (a, b, e) whose tap (t, r, s) lies inside the
// input, in row-major (a, b, e) order: o = (a*Ho + b)*Wo + e is the window's
// offset in the output volume, at = (d*H + h)*W + v that of the input
// element under the tap (d = a*stride - pad + t*dil, ...).
template <typename F>
__device__ __forceinline__ void for_each_window_at_tap(const Axis& ad, const Axis& ah,
                                                       const Axis& aw, int t, int r, int s, F f) {
    for (int a = 0; a < ad.out; ++a) {
        const int d = a * ad.stride + t * ad.dil - ad.pad;
        if (!in_range(d, ad.in)) continue;
        for (int b = 0; b < ah.out; ++b) {
            const int h = b * ah.stride + r * ah.dil - ah.pad;
            if (!in_range(h, ah.in)) continue;
            for (int e = 0; e < aw.out; ++e) {
                const int v = e * aw.stride + s * aw.dil - aw.pad;
                if (in_range(v, aw.in))
                    f(((idx_t)a * ah.out + b) * aw.out + e, ((idx_t)d * ah.in + h) * aw.in + v);
            }
        }
    }
}

// Max-pool backward, route form (max_pool*_backward_route_v1): one thread
// owns a whole (n, c) plane of dx (`in` elements), so its read-modify-writes
// need no atomics and happen in output order: zero the plane, then add dy[o]
// to dx[argmax[o]] for o = 0 .. out-1; an argmax outside the plane is skipped.
__device__ __forceinline__ void max_pool_route_planes(const scalar_t* __restrict__ dy,
                                                      const int* __restrict__ argmax,
                                                      scalar_t* __restrict__ dx, idx_t planes,
                                                      int in, idx_t out) {
    for (idx_t plane = global_thread_id(); plane < planes; plane += grid_stride()) {
        scalar_t* dxp = dx + plane * in;
        const scalar_t* dyp = dy + plane * out;
        const int* ap = argmax + plane * out;
        for (int e = 0; e < in; ++e) dxp[e] = 0;
        for (idx_t o = 0; o < out; ++o) {
            const int a = ap[o];
            if (in_range(a, in)) dxp[a] += dyp[o];
        }
    }
}

// Element idx of a grouped 2-D filter gradient dw (K, C/G, R, S): its
// filter k, the input channel c it reads (g*C/G + its weight channel, g =
// k / (K/G)) and its tap (r, s).
struct FilterTap {
    idx_t k;
    int c, r, s;
};
__device__ __forceinline__ FilterTap filter_tap(idx_t idx, int Cg, int Kpg, int R, int S) {
    FilterTap f;
    f.s = split_last(idx, S);
    f.r = split_last(idx, R);
    const int cl = split_last(idx, Cg);  // idx is the filter from here on
    f.k = idx;
    f.c = (int)(idx / Kpg) * Cg + cl;
    return f;
}

// Backward-data gather: input position h meets output i through tap r when
// h + pad - r = i*stride. Given q = h + pad - r, writes i = q / stride and
// says whether q is such a multiple with i in [0, out).
__device__ __forceinline__ bool exact_output(int q, int stride, int out, int* i) {
    *i = q / stride;  // truncates toward zero; a negative q is rejected below
    return q >= 0 && *i * stride == q && *i < out;
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

// A packed tap of a launcher-built table (the format of kernels/conv2d_tc.cu,
// built in gpucnn/functional/conv_gpu.py): one 64-bit word
// (off << 32) | (dh << 16) | dw, off a signed 32-bit offset, dh and dw
// 16-bit unsigned fields. Reading it is one load, two shifts and masks.
struct Tap {
    int off, dh, dw;
};
__device__ __forceinline__ Tap unpack_tap(long long t) {
    return Tap{(int)(t >> 32), (int)((t >> 16) & 0xffff), (int)(t & 0xffff)};
}

// ---------------------------------------------------------------------------
// Vector memory access (the v2 tiles, pool2d v2). VecBytes<T, B> is B bytes of
// T loaded or stored by one instruction (B = 16: LDG.E.128 / STG.E.128 /
// LDS.128, B = 8: .64) when the address is B-byte aligned; `aligned` tests
// that at run time, since a row's start depends on W, the plane and any array
// offset.
template <typename T, int B>
struct __align__(B) VecBytes {
    T v[B / sizeof(T)];
};
template <int B>
__device__ __forceinline__ bool aligned(const void* p) {
    return ((unsigned long long)p & (B - 1)) == 0;
}

// ---------------------------------------------------------------------------
// Block tile of the implicit-GEMM (v2) convolution kernels:
//     Out[TILE_M x TILE_N] += A[TILE_M x TILE_K] * B[TILE_K x TILE_N]
// with TILE_THREADS = 256 threads viewed as a 16 x 16 grid (tx = tid % 16,
// ty = tid / 16). Thread (tx, ty) owns the 4 x 4 outputs at rows 4*ty + i and
// columns 4*tx + j: per kk its 4 A and 4 B operands are 16-byte runs of a
// tile row, one 128-bit shared load each (two for double), where reading
// them one word at a time took 8 loads (a warp's B run is 256 consecutive
// bytes, its A runs two broadcasts: no bank conflict). Both tiles are stored
// k-major, rows padded by TILE_PAD elements to a multiple of 16 bytes (the
// 128-bit reads need aligned rows): 68 floats or 66 doubles. The loaders'
// transposed stores (4 per tile and operand) then meet 2-way bank conflicts
// for float (a row stride of 4 banks), against 128 -> 32 shared reads saved.
// Each output's sum over kk runs in the same order as with any thread
// mapping, so the mapping does not change results.
#define TILE_M 64
#define TILE_N 64
#define TILE_K 16
#define TILE_THREADS 256
#define TILE_PAD (16 / (int)sizeof(scalar_t))
#define THREAD_M 4
#define THREAD_N 4

typedef scalar_t tile_a_t[TILE_K][TILE_M + TILE_PAD];
typedef scalar_t tile_b_t[TILE_K][TILE_N + TILE_PAD];

// v[0..4) = p[0..4), p 16-byte aligned: 128-bit loads (4 floats or 2 doubles
// each), from shared memory (LDS.128) or global memory (LDG.E.128).
__device__ __forceinline__ void load_run4(const scalar_t* p, scalar_t (&v)[4]) {
    typedef VecBytes<scalar_t, 16> Vec;
    constexpr int per = 16 / sizeof(scalar_t);
#pragma unroll
    for (int q = 0; q < 4 / per; ++q) {
        const Vec w = reinterpret_cast<const Vec*>(p)[q];
#pragma unroll
        for (int e = 0; e < per; ++e) v[q * per + e] = w.v[e];
    }
}

// acc[i][j] += sum_kk As[kk][4 ty + i] * Bs[kk][4 tx + j], kk in fixed order.
__device__ __forceinline__ void tile_multiply(const tile_a_t& As, const tile_b_t& Bs,
                                              scalar_t (&acc)[THREAD_M][THREAD_N], int tx, int ty) {
    static_assert(THREAD_M == 4 && THREAD_N == 4 && (TILE_M + TILE_PAD) * sizeof(scalar_t) % 16 == 0,
                  "tile rows of 16-byte runs");
#pragma unroll
    for (int kk = 0; kk < TILE_K; ++kk) {
        scalar_t a[THREAD_M], b[THREAD_N];
        load_run4(&As[kk][THREAD_M * ty], a);
        load_run4(&Bs[kk][THREAD_N * tx], b);
#pragma unroll
        for (int i = 0; i < THREAD_M; ++i)
#pragma unroll
            for (int j = 0; j < THREAD_N; ++j) acc[i][j] += a[i] * b[j];
    }
}

// Thread -> B-tile load layouts of implicit_gemm_mainloop (below).
//   B_ALONG_COLUMNS: thread loads column tid % 64, rows kk = tid / 64 + 4*l; 64
//     consecutive lanes along the columns (the contiguous direction when the
//     columns are output positions). The column's state is decoded once.
//   B_ALONG_K: thread loads row kk = tid % 16, columns tid / 16 + 16*l; 16
//     lanes along kk (the contiguous direction when kk runs over positions).
//     Each of the 4 columns' state is decoded once.
enum BLayout { B_ALONG_COLUMNS, B_ALONG_K };

// The main loop of the implicit-GEMM kernels: for this block's tile (rows
// blockIdx.y*TILE_M + [0, TILE_M), columns blockIdx.x*TILE_N + [0, TILE_N))
//     acc[i][j] = sum_{k_begin <= kk < k_end} A[m, kk] * B[kk, col]
// over the thread's outputs (m, col) of tile_multiply, kk in increasing order.
// The operands are never stored; the kernel supplies element fetchers:
//   load_a(m, kk)        A[m, kk], 0 for a row m past the matrix;
//   column_of(col)       per-thread state of B column col (any copyable type),
//                        computed once before the loop;
//   load_b(kk, state)    B[kk, col], 0 for a column past the matrix.
// kk >= k_end loads as 0 without calling a fetcher. A thread loads 4 elements
// of each tile per TILE_K step, A with kk = tid % 16 and rows tid / 16 + 16*l
// (16 lanes along kk), B as BL says, staged through registers so that the
// next step's global loads are in flight while the current tile is
// multiplied. Double-buffered in registers, single in shared memory: two
// barriers per step. Every thread of the block must call it (it syncs).
//
// see_a (optional) is called with the 4 A elements the thread just loaded
// (rows tid / 16 + 16*l, l = 0..3, one kk, zeros past k_end): a fused
// epilogue can sum A's rows there (conv2d_backward_filter's bias gradient)
// without a second pass over A. The default ignores them (compiles away).
// A_RUNS = true: A is read as 16-byte runs instead, thread tid loading row
// tid / 4 at kk = 4*(tid % 4) .. +3 of each tile through load_a(m, kk, v)
// (v[e] = A[m, kk + e], zeros for a row past the matrix: 1 LDG.128 for float
// where 4 scalar loads were). The caller guarantees the runs exist and are
// aligned (conv2d_forward_v2: Kgemm % 4 == 0 and a 16-byte aligned w, tested
// uniformly in the kernel; else it runs the scalar layout); no see_a then.
// next_tile (optional) is called after each tile's loads, i.e. when the
// thread's kk move on by TILE_K: a kernel that decodes kk incrementally
// instead of dividing (conv2d_backward_filter_v2) steps its state there, and
// its fetchers read that state rather than the kk they are passed. The loads
// run for k0 = k_begin, k_begin + TILE_K, ... in that order, once each.
struct IgnoreA {
    __device__ __forceinline__ void operator()(const scalar_t (&)[4]) const {}
};
struct NoStep {
    __device__ __forceinline__ void operator()() const {}
};
template <BLayout BL, bool A_RUNS = false, typename Index, typename LoadA, typename ColumnOf, typename LoadB,
          typename SeeA = IgnoreA, typename NextTile = NoStep>
__device__ __forceinline__ void implicit_gemm_mainloop(Index k_begin, Index k_end, LoadA load_a,
                                                       ColumnOf column_of, LoadB load_b,
                                                       scalar_t (&acc)[THREAD_M][THREAD_N],
                                                       SeeA see_a = SeeA(),
                                                       NextTile next_tile = NextTile()) {
    __shared__ __align__(16) tile_a_t As;
    __shared__ __align__(16) tile_b_t Bs;
    constexpr bool along_cols = BL == B_ALONG_COLUMNS;
    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    const int m0 = blockIdx.y * TILE_M;
    const idx_t col0 = (idx_t)blockIdx.x * TILE_N;
    const int a_k = tid % TILE_K, a_m = tid / TILE_K;  // a_m in [0, 16)
    const int b_n = along_cols ? tid % TILE_N : tid / TILE_K;
    const int b_k = along_cols ? tid / TILE_N : tid % TILE_K;

    decltype(column_of(col0)) col_state[along_cols ? 1 : 4];
#pragma unroll
    for (int l = 0; l < (along_cols ? 1 : 4); ++l) col_state[l] = column_of(col0 + b_n + 16 * l);

    static_assert(!A_RUNS || sizeof(SeeA) == sizeof(IgnoreA), "see_a needs the A_ALONG_K layout");
    const int a_run_k = 4 * (tid % 4), a_run_m = tid / 4;   // A_RUNS: row tid / 4, kk 4*(tid % 4)..+3
    scalar_t a_reg[4], b_reg[4];
    auto load = [&](Index k0) {
        if constexpr (A_RUNS) {
            const Index ka = k0 + a_run_k;
            if (ka < k_end) load_a(m0 + a_run_m, ka, a_reg);
            else for (int e = 0; e < 4; ++e) a_reg[e] = 0;
        } else {
            const Index ka = k0 + a_k;
#pragma unroll
            for (int l = 0; l < 4; ++l)
                a_reg[l] = ka < k_end ? load_a(m0 + a_m + 16 * l, ka) : (scalar_t)0;
            see_a(a_reg);
        }
#pragma unroll
        for (int l = 0; l < 4; ++l) {
            const Index kb = k0 + b_k + (along_cols ? 4 * l : 0);
            b_reg[l] = kb < k_end ? load_b(kb, col_state[along_cols ? 0 : l]) : (scalar_t)0;
        }
        next_tile();
    };
    auto store = [&]() {
#pragma unroll
        for (int l = 0; l < 4; ++l) {
            if (A_RUNS) As[a_run_k + l][a_run_m] = a_reg[l];
            else As[a_k][a_m + 16 * l] = a_reg[l];
            if (along_cols) Bs[b_k + 4 * l][b_n] = b_reg[l];
            else Bs[b_k][b_n + 16 * l] = b_reg[l];
        }
    };

    if (k_begin >= k_end) return;  // uniform over the block
    load(k_begin);
    store();
    __syncthreads();
    for (Index k0 = k_begin; k0 < k_end; k0 += TILE_K) {
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

// The row sums of A over this block's kk range, from the per-thread sums of
// the elements implicit_gemm_mainloop handed to see_a (part[l]: the thread's
// row tid / 16 + 16*l over kk = tid % 16 (mod 16)): out[m] = sum_kk A[m, kk]
// for the block's rows m < rows, the 16 partial sums added in lane order
// (deterministic, no atomics). Every thread of the block must call it.
__device__ __forceinline__ void store_a_row_sums(const scalar_t (&part)[4], scalar_t* __restrict__ out,
                                                 int rows) {
    __shared__ scalar_t sums[TILE_M][TILE_K + 1];
    const int tid = threadIdx.x, a_k = tid % TILE_K, a_m = tid / TILE_K;
#pragma unroll
    for (int l = 0; l < 4; ++l) sums[a_m + 16 * l][a_k] = part[l];
    __syncthreads();
    const int m = blockIdx.y * TILE_M + tid;
    if (tid < TILE_M && m < rows) {
        scalar_t s = 0;
        for (int kk = 0; kk < TILE_K; ++kk) s += sums[tid][kk];
        out[m] = s;
    }
}

// The epilogue: stores the thread's outputs Out[m, col] of the tile (rows
// m < rows, columns col < Ng) at out[n, m, p] of an (Ng / spatial, M, spatial)
// array, col = n*spatial + p (the NC... layout of y and dx). A plain row-major
// M x Ng matrix is the case spatial = Ng. rows < M (grouped convolution):
// the tile is one group's rows; `out` then points at the group's first row.
// epilogue(m, v) (optional) maps each value before its store, m the row in
// [0, rows): a fused bias and activation (conv2d_forward's *_bias_* kernels).
// A thread's 4 columns of a row are consecutive, so one store instruction of
// a warp writes every 4th word of 2 x 256 bytes (4 such stores fill them).
// One 16-byte store per row would be denser, but its registers made ptxas
// spill (forward, float, sm_90; double backward-filter): left for a GPU
// measurement to decide (a staged epilogue through the freed tiles is the
// alternative).
struct StoreAsIs {
    __device__ __forceinline__ scalar_t operator()(int, scalar_t v) const { return v; }
};
template <typename Epilogue = StoreAsIs>
__device__ __forceinline__ void store_tile(const scalar_t (&acc)[THREAD_M][THREAD_N],
                                           scalar_t* __restrict__ out, int M, idx_t Ng,
                                           idx_t spatial, int rows = -1,
                                           Epilogue epilogue = Epilogue()) {
    if (rows < 0) rows = M;
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    const int m0 = blockIdx.y * TILE_M;
    const idx_t col0 = (idx_t)blockIdx.x * TILE_N;
#pragma unroll
    for (int j = 0; j < THREAD_N; ++j) {
        const idx_t col = col0 + THREAD_N * tx + j;
        if (col >= Ng) continue;
        const idx_t n = col / spatial;
        const idx_t p = col - n * spatial;
#pragma unroll
        for (int i = 0; i < THREAD_M; ++i) {
            const int m = m0 + THREAD_M * ty + i;
            if (m < rows) out[(n * M + m) * spatial + p] = epilogue(m, acc[i][j]);
        }
    }
}

// ---------------------------------------------------------------------------
// Storage type (pool2d v2). storage_t is the element type in global memory,
// scalar_t the one the kernel computes in; they are the same except in the
// float16 build (-DSCALAR=float -DSTORAGE_HALF): float16 arrays, float
// arithmetic. f16_t holds the IEEE half bits (NVRTC has no cuda_fp16.h
// here); load_value widens exactly (cvt.f32.f16), store_value rounds to
// nearest even (cvt.rn.f16.f32). The CPU emulator (no PTX) has the same
// conversions in tests/cuda_emulator/cuda_emu.h.
#ifdef STORAGE_HALF
struct f16_t {
    unsigned short bits;
};
typedef f16_t storage_t;
__device__ __forceinline__ float load_value(f16_t h) {
#ifdef __CUDA_ARCH__
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h.bits));
    return f;
#else
    return emu_cvt_f32_f16(h.bits);
#endif
}
__device__ __forceinline__ f16_t store_value(float f) {
    f16_t h;
#ifdef __CUDA_ARCH__
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h.bits) : "f"(f));
#else
    h.bits = emu_cvt_rn_f16_f32(f);
#endif
    return h;
}
#else
typedef scalar_t storage_t;
__device__ __forceinline__ scalar_t load_value(scalar_t v) { return v; }
__device__ __forceinline__ scalar_t store_value(scalar_t v) { return v; }
#endif

// ---------------------------------------------------------------------------
// Rows of global memory (pool2d v2), with VecBytes and aligned (above).

// f(c, row[c]) for c = c0 .. c1-1 in increasing order (the caller clips
// [c0, c1) to the row), each element loaded once: scalar loads up to the
// first 8-byte boundary, one 8-byte load (4-byte T) or scalar ones up to the
// first 16-byte one, 16-byte loads for the bulk, then an 8-byte and scalar
// tail.
template <typename T, typename F>
__device__ __forceinline__ void for_each_in_row(const T* __restrict__ row, int c0, int c1, F f) {
    constexpr int V8 = 8 / sizeof(T), V16 = 16 / sizeof(T);
    int c = c0;
    for (; c < c1 && !aligned<8>(row + c); ++c) f(c, row[c]);
    if (V8 > 1 && c + V8 <= c1 && !aligned<16>(row + c)) {
        const VecBytes<T, 8> q = *reinterpret_cast<const VecBytes<T, 8>*>(row + c);
#pragma unroll
        for (int e = 0; e < V8; ++e) f(c + e, q.v[e]);
        c += V8;
    }
    for (; c < c1 && !aligned<16>(row + c); ++c) f(c, row[c]);  // 8-byte T; or a short row
    for (; c + V16 <= c1; c += V16) {
        const VecBytes<T, 16> q = *reinterpret_cast<const VecBytes<T, 16>*>(row + c);
#pragma unroll
        for (int e = 0; e < V16; ++e) f(c + e, q.v[e]);
    }
    if (V8 > 1 && c + V8 <= c1) {
        const VecBytes<T, 8> q = *reinterpret_cast<const VecBytes<T, 8>*>(row + c);
#pragma unroll
        for (int e = 0; e < V8; ++e) f(c + e, q.v[e]);
        c += V8;
    }
    for (; c < c1; ++c) f(c, row[c]);
}

// row[0 .. n) = v[0 .. n), n <= K: with 16-byte (else 8-byte) stores when all
// K are written and the start is so aligned, else one element at a time.
// v is indexed by constants only, so it stays in registers.
template <typename T, int K>
__device__ __forceinline__ void store_run(T* __restrict__ row, const T (&v)[K], int n) {
    constexpr int V16 = 16 / sizeof(T), V8 = 8 / sizeof(T);
    if (K % V16 == 0 && n == K && aligned<16>(row)) {
#pragma unroll
        for (int q = 0; q < K / V16; ++q) {
            VecBytes<T, 16> w;
#pragma unroll
            for (int e = 0; e < V16; ++e) w.v[e] = v[q * V16 + e];
            reinterpret_cast<VecBytes<T, 16>*>(row)[q] = w;
        }
    } else if (V8 > 1 && K % V8 == 0 && n == K && aligned<8>(row)) {
#pragma unroll
        for (int q = 0; q < K / V8; ++q) {
            VecBytes<T, 8> w;
#pragma unroll
            for (int e = 0; e < V8; ++e) w.v[e] = v[q * V8 + e];
            reinterpret_cast<VecBytes<T, 8>*>(row)[q] = w;
        }
    } else {
#pragma unroll
        for (int k = 0; k < K; ++k)
            if (k < n) row[k] = v[k];
    }
}

#endif  // GPUCNN_COMMON_CUH
