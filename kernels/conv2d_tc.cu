// conv2d_tc.cu: 2-D convolution forward, backward-data and backward-filter on
// tensor cores (1-D runs here with H = R = 1).
//
// Build and launch: at run time through gpucnn.kernel_loader (NVRTC via
// cupy.RawModule, options --std=c++17 -lineinfo; float32 only, no SCALAR
// switch); the launchers are gpucnn/functional/conv_gpu.py (versions 3 and 4,
// the kernel chosen by precision). Standalone compile check:
//     nvcc -std=c++17 -arch=sm_90 --cubin -o /dev/null -Ikernels kernels/conv2d_tc.cu   (and sm_80)
// (python -m gpucnn.kernel_check [--sass] reports registers, spills and the
// main loop's instruction mix).
// Status: compiled (sm_80, sm_90) and emulated (tests/test_tensor_core_emulated.py),
// not yet run on a GPU.
//
// Math. As conv2d_forward.cu: x (N, C, H, W), w (K, C/G, R, S), stride (sh, sw),
// padding (ph, pw), dilation (dil_h, dil_w), G groups, y (N, K, Ho, Wo),
//     y[n,k,i,j] = sum_{c',r,s} x[n, c, i*sh + r*dil_h - ph, j*sw + s*dil_w - pw] * w[k,c',r,s]
// (c = g*C/G + c', g = k's group), one implicit GEMM per group (grid z = g)
//     Out[m, col] = sum_kk A[m, kk] * B[kk, col] with
//     m = k within the group (M = K/G), col = (n*Ho + i)*Wo + j (Ngemm = N*Ho*Wo),
//     kk = (c'*R + r)*S + s (Kgemm = C/G*R*S), A = the group's rows of w viewed
//     as K x C/G*R*S, B = the im2col matrix of the group's channels of x (never
//     stored). The dilation is only in the tap table: tap kk sits at
//     (r*dil_h, s*dil_w) from the column's corner.
//
// Backward data, by output phase. With dilation (dil_h, dil_w) and G groups,
// dx[n,c,h,w] = sum_{k in c's group, r, s} dy[n,k,i,j] w[k,c',r,s] over the taps
// with h + ph - r*dil_h = i*sh (and likewise w). For a dx row h only the taps
// with r*dil_h = h + ph (mod sh) can hit, so the dx positions split into sh*sw
// phases (ph_h, ph_w) = ((h + ph) mod sh, (w + pw) mod sw), and phase
// (ph_h, ph_w) is its own implicit GEMM over only its taps. Those form an
// arithmetic progression: with gc = gcd(sh, dil_h), r*dil_h mod sh repeats every
// step = sh/gc taps, so r = r0 + tr*step (r0 < step the first tap of the
// phase, none when no r0 exists; tr < Rp), and consecutive taps meet dy rows
// shift = dil_h/gc apart: i = hq - tr*shift with hq = (h + ph - r0*dil_h) / sh (exact).
// (Without dilation: r0 = ph_h, step = sh, shift = 1.) One GEMM per phase and group:
//     M = C/G, col = (n, u, v) for (h, w) = (h1 + u*sh, w1 + v*sw) (h1: the
//     phase's first row >= 0), kk = (k*Rp + tr)*Sp + ts over the group's K/G
//     filters (Kgemm = K/G*Rp*Sp), A[c, kk] = w[k, c', r, s] (the launcher
//     gathers it once per call into wt, C x K/G*R*S, the phases' blocks side
//     by side), B[kk, col] = dy[n, k, hq - tr*shift_h, wq - ts*shift_w].
// Every visited tap hits (no zero taps for stride > 1: the SIMT v2 visits
// all R*S per position and tests divisibility). A phase with Rp = 0 (R < sh,
// or no tap with that residue) still runs: Kgemm = 0 and it writes its zeros.
// One launch per phase, grid z = the group.
//
// Backward filter, split-K.
//     dw[k,c',r,s] = sum_{n,i,j} dy[n,k,i,j] x[n, c, i*sh + r*dil_h - ph, j*sw + s*dil_w - pw]
// (c = g*C/G + c', g = k's group), one GEMM per group:
//     M = K/G, col = (c'*R + r)*S + s, kk = (n, p = i*Wo + j) (Kgemm = N*Ho*Wo),
//     A[k, kk] = dy[n, k, p], B[kk, col] = x[n, c, i*sh + r*dil_h - ph, j*sw + s*dil_w - pw].
// kk runs image by image in tiles of 16 positions (a tile never straddles two
// images; the last tile of an image is zero-padded), so the decode is one
// table entry per p and a pointer step per image. The N * ceil(Ho*Wo/16)
// tiles are cut into `splits` chunks of `chunk` tiles (grid z = group*splits
// + chunk, from the shapes alone); chunk z writes its partial dw to a workspace, and
// conv2d_backward_filter_reduce_v2 (conv2d_backward.cu) adds the partials in
// z order: no atomics, bitwise reproducible. With one chunk the kernel
// writes dw itself.
//
// Versions (one main loop, tc_gemm, for every direction; the precision and the
// tile are template parameters; <dir> = forward, backward_data, backward_filter):
//   conv2d_<dir>_tf32_v3    "high":    operands rounded to TF32 (cvt.rna), one mma.m16n8k8 per step
//   conv2d_<dir>_bf16_v3    "medium":  operands rounded to BF16 (cvt.rn), one mma.m16n8k16 per step
//   conv2d_<dir>_3xtf32_v3  "highest": each operand split v = hi + lo (both TF32), and
//                           a*b ~ a_lo*b_hi + a_hi*b_lo + a_hi*b_hi (three mma; a_lo*b_lo dropped)
//   all: FP32 accumulation in registers; Kgemm step 16; grid (ceil(Ngemm / BN), ceil(M / BM), z):
//   forward (N*Ho*Wo, K/G, G); backward-data per phase (N*Hp*Wp, C/G, G); backward-filter
//   (C/G*R*S, K/G, G*splits). Every direction takes dilation and groups.
//   v3: block tile 64 (M) x 64 (Ngemm), 4 warps of 32x32 (2 m16 x 4 n8 mma tiles), 128 threads
//   v4: block tile 128 x 128, 8 warps of 64x32 (4 x 4 mma tiles), 256 threads: twice the mma
//       per copied element, for layers with K >= 128 (48 KiB of shared memory in 3 stages)
//
// The pipeline. TC_STAGES = 3 shared-memory stages filled by cp.async (4-byte
// copies: rows of w and x have no alignment guarantee; out-of-range taps and
// the padding are zero-filled by the copy, src-size 0). Iteration kt waits
// until tile kt has landed (cp.async.wait_group STAGES-2), one __syncthreads
// (tile kt visible to all, and every warp is done with tile kt-1), issues the
// copies of tile kt+2 into tile kt-1's stage, then runs the mma on tile kt.
//
// Indexing. The B loader decodes its column once, before the main loop; the
// Kgemm index comes from a table `taps` the launcher builds, one 64-bit word
// per kk: (offset << 32) | (dh << 16) | dw, dh and dw 16-bit unsigned, and
// the element is B[col's offset + offset] when col's (h0 + dh, w0 + dw) lies in
// the bounds, else 0 (tc_gemm's notes give each direction's words). A tap
// costs one 8-byte load, two bounds checks and one add: the main loop does no
// integer division (kernel_check --sass: div = 0). The A loader walks a pointer
// along the rows. Flat offsets into the arrays are 64-bit.
//
// Shared memory: each stage holds A as [64 rows m][16 kk] and B as [64 cols][16 kk]
// (B transposed, so both fragments read (row, kk) pairs the same way), and
// the 16 kk of row `row` are XOR-swizzled in groups of 4:
//     slot(row, kk) = row*16 + (kk ^ 4*((row >> 1) & 3))
// The 8 rows a fragment load touches (g = 0..7, kk = t or t+4) then hit 32
// distinct banks: without it rows g and g+2 (64 floats apart) collide.
// ldmatrix does not apply: the stages hold FP32 (cp.async cannot convert),
// and the operands are rounded to TF32/BF16 on the way into registers.

#include "common.cuh"
#include "mma.cuh"

#define TC_BK 16
#define TC_STAGES 3
#define TC_V3_THREADS 128
#define TC_V4_THREADS 256

// Block tile BM x BN x TC_BK; each warp computes MI x NJ mma tiles of 16 x 8.
template <int BM_, int BN_, int MI_, int NJ_>
struct TcTile {
    static constexpr int BM = BM_, BN = BN_, MI = MI_, NJ = NJ_;
    static constexpr int WARPS_N = BN / (8 * NJ);
    static constexpr int THREADS = 32 * (BM / (16 * MI)) * WARPS_N;
    static constexpr int A_ROWS = THREADS / TC_BK;   // rows of A one pass of the A loader covers
    static constexpr int B_KSTEP = THREADS / BN;     // kk rows of B one pass of the B loader covers
};
typedef TcTile<64, 64, 2, 4> TileV3;     // warps of 32 x 32, 2 x 2 warps
typedef TcTile<128, 128, 4, 4> TileV4;   // warps of 64 x 32, 2 x 4 warps: twice the mma per copy
static_assert(TileV3::THREADS == TC_V3_THREADS && TileV4::THREADS == TC_V4_THREADS, "thread counts");

#define TC_MODE_TF32 0
#define TC_MODE_BF16 1
#define TC_MODE_3XTF32 2

// Planted bugs: the kernels below instantiate PLANT = TC_PLANT_NONE only;
// tests/test_tensor_core_emulated.py appends kernels with each bug to this
// source for an emulator build, and shows the emulator catches every one.
#define TC_PLANT_NONE 0
#define TC_PLANT_LANE 1      // a1/a2 fragment registers swapped (wrong lane mapping)
#define TC_PLANT_NO_WAIT 2   // no cp.async.wait_group before the barrier
#define TC_PLANT_SWIZZLE 3   // the copies store with a different swizzle than the loads read
#define TC_PLANT_PHASE 4     // backward-data: each phase's first dx position ignores the padding
#define TC_PLANT_SPLIT 5     // backward-filter: each split-K chunk drops its last tile
#define TC_PLANT_GROUP 6     // forward: the B columns of every group start at group 0's channels

__device__ __forceinline__ int tc_slot(int row, int kk) {
    return row * TC_BK + (kk ^ (((row >> 1) & 3) << 2));
}

template <int PLANT>
__device__ __forceinline__ int tc_store_slot(int row, int kk) {
    if (PLANT == TC_PLANT_SWIZZLE) return row * TC_BK + (kk ^ ((row & 3) << 2));
    return tc_slot(row, kk);
}

// ---------------------------------------------------------------------------
// Fragments of one k-step from a stage. r0: the warp tile's first row of this
// m16 tile plus g; n: the column (B row) plus g; kb: the step's first kk.

template <int PLANT>
__device__ __forceinline__ void tc_load_a_f32(float f[4], const float* As, int r0, int kb, int t) {
    f[0] = As[tc_slot(r0, kb + t)];
    f[1] = As[tc_slot(r0 + 8, kb + t)];
    f[2] = As[tc_slot(r0, kb + t + 4)];
    f[3] = As[tc_slot(r0 + 8, kb + t + 4)];
    if (PLANT == TC_PLANT_LANE) { const float v = f[1]; f[1] = f[2]; f[2] = v; }
}

__device__ __forceinline__ void tc_load_b_f32(float f[2], const float* Bs, int n, int kb, int t) {
    f[0] = Bs[tc_slot(n, kb + t)];
    f[1] = Bs[tc_slot(n, kb + t + 4)];
}

__device__ __forceinline__ unsigned tc_pair(const float* S, int row, int kk) {
    return pack_bf16x2(S[tc_slot(row, kk)], S[tc_slot(row, kk + 1)]);
}

// acc[i][j] += the warp's (16 MI) x (8 NJ) tile of A * B over the 16 kk of one stage.
template <int MODE, int PLANT, int MI, int NJ>
__device__ __forceinline__ void tc_stage_mma(float acc[MI][NJ][4], const float* As, const float* Bs,
                                             int wm, int wn, int g, int t) {
    if constexpr (MODE == TC_MODE_BF16) {
        unsigned a[MI][4], b[NJ][2];
        for (int i = 0; i < MI; ++i) {
            const int r0 = wm + i * 16 + g;
            a[i][0] = tc_pair(As, r0, 2 * t);
            a[i][1] = tc_pair(As, r0 + 8, 2 * t);
            a[i][2] = tc_pair(As, r0, 2 * t + 8);
            a[i][3] = tc_pair(As, r0 + 8, 2 * t + 8);
            if (PLANT == TC_PLANT_LANE) { const unsigned v = a[i][1]; a[i][1] = a[i][2]; a[i][2] = v; }
        }
        for (int j = 0; j < NJ; ++j) {
            const int n = wn + j * 8 + g;
            b[j][0] = tc_pair(Bs, n, 2 * t);
            b[j][1] = tc_pair(Bs, n, 2 * t + 8);
        }
        for (int i = 0; i < MI; ++i)
            for (int j = 0; j < NJ; ++j) mma_bf16_m16n8k16(acc[i][j], a[i], b[j]);
    } else {
        for (int kb = 0; kb < TC_BK; kb += 8) {
            unsigned a_hi[MI][4], a_lo[MI][4], b_hi[NJ][2], b_lo[NJ][2];
            for (int i = 0; i < MI; ++i) {
                float f[4];
                tc_load_a_f32<PLANT>(f, As, wm + i * 16 + g, kb, t);
                for (int e = 0; e < 4; ++e) {
                    a_hi[i][e] = to_tf32(f[e]);
                    if (MODE == TC_MODE_3XTF32) a_lo[i][e] = to_tf32(f[e] - tf32_value(a_hi[i][e]));
                }
            }
            for (int j = 0; j < NJ; ++j) {
                float f[2];
                tc_load_b_f32(f, Bs, wn + j * 8 + g, kb, t);
                for (int e = 0; e < 2; ++e) {
                    b_hi[j][e] = to_tf32(f[e]);
                    if (MODE == TC_MODE_3XTF32) b_lo[j][e] = to_tf32(f[e] - tf32_value(b_hi[j][e]));
                }
            }
            for (int i = 0; i < MI; ++i)
                for (int j = 0; j < NJ; ++j) {
                    if (MODE == TC_MODE_3XTF32) {   // small terms first
                        mma_tf32_m16n8k8(acc[i][j], a_lo[i], b_hi[j]);
                        mma_tf32_m16n8k8(acc[i][j], a_hi[i], b_lo[j]);
                    }
                    mma_tf32_m16n8k8(acc[i][j], a_hi[i], b_hi[j]);
                }
        }
    }
}

// ---------------------------------------------------------------------------
// The shared main loop. All three directions are one implicit GEMM of the
// same shape of operands, so one loader serves them; only the setup before
// the loop (which column this thread copies, where the A rows start) and the
// epilogue (where Out[m, col] goes) are per direction:
//   A[m, kk]   = a[m*lda + seg*a_seg + kk]             0 for m >= M or kk >= seg_len
//   B[kk, col] = b[off(col) + seg*b_seg + tap.off]     0 unless h0(col) + tap.h in [0, Hb)
//                                                      and w0(col) + tap.w in [0, Wb)
// with tap = taps[kk] packed as (tap.off << 32) | (tap.h << 16) | tap.w (tap.h, tap.w
// 16-bit unsigned). The Kgemm range is a sequence of segments of seg_len kk
// each (forward and backward-data: one segment, the whole Kgemm; backward-
// filter: one segment per image n, kk = the output position i*Wo + j within
// it), walked in tiles of TC_BK that never straddle two segments: a segment
// whose length is not a multiple of TC_BK ends with a zero-padded tile.

struct TcOperands {
    const float* a;              // A row 0, segment 0, kk 0
    idx_t lda, a_seg;            // A row stride, A segment stride
    int M;                       // A rows (GEMM rows)
    const float* b;              // B base (x or dy)
    idx_t b_seg;                 // B segment stride
    int Hb, Wb;                  // the bounds of h0 + tap.h and w0 + tap.w
    const long long* taps;       // one packed tap per kk of a segment
    int seg_len;                 // kk per segment
};

struct TcColumn {                // the B column this thread copies, decoded before the loop
    idx_t off;                   // B offset of tap (0, 0, 0) (may be < 0)
    int h0, w0;
    bool ok;                     // the column exists
};

// acc = this block's tile (rows m0.., the columns whose B column this thread
// copies is `col`) of A * B over ktiles tiles, starting at segment seg0 and
// kk k0 within it. SEGMENTED = false: one segment (no per-tile wrap test).
// Every thread of the block calls it (it syncs).
template <int MODE, int PLANT, typename T, bool SEGMENTED>
__device__ __forceinline__ void tc_gemm(float (&acc)[T::MI][T::NJ][4], const TcOperands& op,
                                        const TcColumn& col, int m0, int seg0, int k0, int ktiles) {
    __shared__ __align__(16) float As[TC_STAGES][T::BM * TC_BK];
    __shared__ __align__(16) float Bs[TC_STAGES][T::BN * TC_BK];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int wm = (warp / T::WARPS_N) * 16 * T::MI, wn = (warp % T::WARPS_N) * 8 * T::NJ;

    // A loader: column a_kk of rows a_row + A_ROWS*e (16 consecutive floats of
    // an A row per 16 threads); a pointer walks along the rows, 16 floats a tile.
    const int a_kk = tid & (TC_BK - 1), a_row = tid / TC_BK;
    const idx_t a_step = (idx_t)T::A_ROWS * op.lda;
    const float* a_seg_src = op.a + (idx_t)(m0 + a_row) * op.lda + (idx_t)seg0 * op.a_seg + a_kk;
    const float* a_src = a_seg_src + k0;
    unsigned a_rows_ok = 0;   // bit e: row a_row + A_ROWS*e < M
    for (int e = 0; e < T::BM / T::A_ROWS; ++e) a_rows_ok |= (unsigned)(m0 + a_row + T::A_ROWS * e < op.M) << e;
    // B loader: one column for the whole loop (decoded by the caller); rows
    // kk = b_kk + B_KSTEP*e from the packed tap table, walked 16 entries a tile.
    const int b_col = tid % T::BN, b_kk = tid / T::BN;
    idx_t b_off = col.off + (idx_t)seg0 * op.b_seg;
    const long long* tap = op.taps + b_kk + k0;
    int kk0 = k0;   // this tile's first kk within its segment

    auto load_tile = [&](int stage) {
        const int k_left = op.seg_len - kk0;
        for (int e = 0; e < T::BM / T::A_ROWS; ++e) {
            const bool ok = ((a_rows_ok >> e) & 1) && a_kk < k_left;
            cp_async4(&As[stage][tc_store_slot<PLANT>(a_row + T::A_ROWS * e, a_kk)],
                      ok ? a_src + e * a_step : op.a, ok);
        }
        for (int e = 0; e < TC_BK / T::B_KSTEP; ++e) {
            const int kl = b_kk + T::B_KSTEP * e;
            bool ok = col.ok && kl < k_left;
            const long long tp = ok ? tap[T::B_KSTEP * e] : 0;
            ok = ok && in_range(col.h0 + (int)((tp >> 16) & 0xffff), op.Hb) &&
                 in_range(col.w0 + (int)(tp & 0xffff), op.Wb);
            cp_async4(&Bs[stage][tc_store_slot<PLANT>(b_col, kl)], ok ? op.b + (b_off + (tp >> 32)) : op.b, ok);
        }
        kk0 += TC_BK;   // the next tile: on in this segment, or the next segment's start
        a_src += TC_BK;
        tap += TC_BK;
        if (SEGMENTED && kk0 >= op.seg_len) {
            kk0 = 0;
            a_seg_src += op.a_seg;
            a_src = a_seg_src;
            b_off += op.b_seg;
            tap = op.taps + b_kk;
        }
    };

    for (int i = 0; i < T::MI; ++i)
        for (int j = 0; j < T::NJ; ++j)
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

    for (int s = 0; s < TC_STAGES - 1; ++s) {
        if (s < ktiles) load_tile(s);
        cp_async_commit();   // possibly empty: the group count stays fixed
    }
    int read_stage = 0, write_stage = TC_STAGES - 1;
    for (int kt = 0; kt < ktiles; ++kt) {
        if (PLANT != TC_PLANT_NO_WAIT) cp_async_wait<TC_STAGES - 2>();
        __syncthreads();
        if (kt + TC_STAGES - 1 < ktiles) load_tile(write_stage);
        cp_async_commit();
        tc_stage_mma<MODE, PLANT, T::MI, T::NJ>(acc, As[read_stage], Bs[read_stage], wm, wn, g, t);
        read_stage = read_stage == TC_STAGES - 1 ? 0 : read_stage + 1;
        write_stage = write_stage == TC_STAGES - 1 ? 0 : write_stage + 1;
    }
    cp_async_wait<0>();   // only empty groups remain in a correct kernel
}

// Epilogue: store(m, col, value) for each in-range element (m < M, col <
// ncols) of the tile; c0..c3 of each mma tile sit at (g, 2t), (g, 2t+1),
// (g+8, 2t), (g+8, 2t+1).
template <typename T, typename Store>
__device__ __forceinline__ void tc_epilogue(const float (&acc)[T::MI][T::NJ][4], int m0, int M,
                                            idx_t col0, idx_t ncols, Store store) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int wm = (warp / T::WARPS_N) * 16 * T::MI, wn = (warp % T::WARPS_N) * 8 * T::NJ;
#pragma unroll   // fully: acc stays in registers (a rolled loop would index it in local memory)
    for (int i = 0; i < T::MI; ++i)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int m = m0 + wm + i * 16 + g + 8 * half;
            if (m >= M) continue;
#pragma unroll
            for (int j = 0; j < T::NJ; ++j)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const idx_t c = col0 + wn + j * 8 + 2 * t + e;
                    if (c < ncols) store(m, c, acc[i][j][2 * half + e]);
                }
        }
}

// ---------------------------------------------------------------------------
// Forward, one group per grid z (Cg = C/G, Kpg = K/G, g = blockIdx.z):
// M = Kpg, col = (n*Ho + i)*Wo + j, kk = (c*R + r)*S + s over the group's Cg
// channels (one segment); A = w rows g*Kpg.. (Kpg x Cg*R*S, row-major), B
// column (n, i, j): off = (n*C + g*Cg)*H*W + h0*W + w0, (h0, w0) = (i*sh - ph,
// j*sw - pw), bounds (H, W); taps[kk] = (c*H*W + dh*W + dw, dh, dw) with
// (dh, dw) = (r*dil_h, s*dil_w): the dilation lives in the table alone
// (dil_h, dil_w are passed for the uniform argument list, not read here).

template <int MODE, int PLANT, typename T>
__device__ __forceinline__ void conv2d_forward_tc(
        const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ y,
        const long long* __restrict__ taps, int N, int C, int H, int W, int K, int R, int S,
        int Ho, int Wo, int sh, int sw, int ph, int pw, int groups) {
    const int Cg = C / groups, Kpg = K / groups, g = blockIdx.z;
    const int m0 = blockIdx.y * T::BM;
    const idx_t col0 = (idx_t)blockIdx.x * T::BN;
    const int kgemm = Cg * R * S;
    const idx_t HW = (idx_t)H * W, P = (idx_t)Ho * Wo, ncols = (idx_t)N * P;
    const TcOperands op{w + (idx_t)g * Kpg * kgemm, kgemm, 0, Kpg, x, 0, H, W, taps, kgemm};
    TcColumn col{0, 0, 0, false};
    const idx_t c = col0 + threadIdx.x % T::BN;
    if (c < ncols) {
        const idx_t n = c / P;
        const int pq = (int)(c - n * P);
        const int i = pq / Wo, j = pq - (pq / Wo) * Wo;
        const int b_group = PLANT == TC_PLANT_GROUP ? 0 : g;   // planted: every group reads group 0's x
        col = TcColumn{(n * C + (idx_t)b_group * Cg) * HW + (idx_t)(i * sh - ph) * W + (j * sw - pw),
                       i * sh - ph, j * sw - pw, true};
    }
    float acc[T::MI][T::NJ][4];
    tc_gemm<MODE, PLANT, T, false>(acc, op, col, m0, 0, 0, (kgemm + TC_BK - 1) / TC_BK);
    tc_epilogue<T>(acc, m0, Kpg, col0, ncols, [&](int k, idx_t cc, float v) {
        const idx_t n = cc / P;
        y[(n * K + (idx_t)g * Kpg + k) * P + (cc - n * P)] = v;
    });
}

// ---------------------------------------------------------------------------
// Backward data, one output phase (ph_h, ph_w) per launch, one group per grid
// z (see the notes; Cg = C/G, Kpg = K/G, g = blockIdx.z):
// M = Cg, col = (n*Hp + u)*Wp + v for dx position (h, w) = (h1 + u*sh, w1 + v*sw),
// kk = (k*Rp + tr)*Sp + ts for tap (r, s) = (r0 + tr*step_h, s0 + ts*step_w),
// k the group's k-th filter; A = the phase's block of wt rows g*Cg.. (wt:
// C x Kpg*R*S, columns koff..), B column: dy[n, g*Kpg] at (q0 + u - (Rp-1)*shift_h,
// likewise w), bounds (Ho, Wo); taps[koff + kk] = (k*Ho*Wo + dh*Wo + dw, dh, dw)
// with (dh, dw) = ((Rp-1-tr)*shift_h, (Sp-1-ts)*shift_w).

struct TcPhase {   // one axis of the phase decomposition of backward-data
    int taps;      // Rp: the taps r = r0 + t*step < R with r*dil = phase (mod stride)
    int shift;     // dy rows between consecutive taps: dil / gcd(stride, dil)
    int first;     // h1: the first dx position h >= 0 with h + pad = phase (mod stride)
    int count;     // Hp: positions h1, h1 + stride, ... < H
    int q0;        // (h1 + pad - r0*dil) / stride: the dy row of tap 0 at h1 (may be < 0)
};
template <int PLANT>
__device__ __forceinline__ TcPhase tc_phase(int phase, int R, int stride, int pad, int dil, int H) {
    int a = stride, b = dil;   // gcd: r*dil mod stride repeats every step = stride/gcd taps
    while (b) { const int t = a % b; a = b; b = t; }
    const int step = stride / a;
    int r0 = -1;
    for (int r = 0; r < R && r < step && r0 < 0; ++r)
        if ((r * dil) % stride == phase) r0 = r;
    TcPhase p;
    p.taps = r0 < 0 ? 0 : (R - 1 - r0) / step + 1;
    p.shift = dil / a;
    p.first = ((phase - pad) % stride + stride) % stride;
    if (PLANT == TC_PLANT_PHASE) p.first = phase;   // the padding ignored
    p.count = p.first < H ? (H - 1 - p.first) / stride + 1 : 0;
    p.q0 = r0 < 0 ? 0 : (p.first + pad - r0 * dil) / stride;   // exact
    return p;
}

template <int MODE, int PLANT, typename T>
__device__ __forceinline__ void conv2d_backward_data_tc(
        const float* __restrict__ dy, const float* __restrict__ wt, float* __restrict__ dx,
        const long long* __restrict__ taps, int N, int C, int H, int W, int K, int R, int S,
        int Ho, int Wo, int sh, int sw, int ph, int pw, int dil_h, int dil_w, int groups,
        int phase_h, int phase_w, int koff) {
    const TcPhase ah = tc_phase<PLANT>(phase_h, R, sh, ph, dil_h, H);
    const TcPhase aw = tc_phase<PLANT>(phase_w, S, sw, pw, dil_w, W);
    const int Cg = C / groups, Kpg = K / groups, g = blockIdx.z;
    const int m0 = blockIdx.y * T::BM;
    const idx_t col0 = (idx_t)blockIdx.x * T::BN;
    const int kgemm = Kpg * ah.taps * aw.taps;
    const idx_t P = (idx_t)Ho * Wo, Pp = (idx_t)ah.count * aw.count, ncols = (idx_t)N * Pp;
    const idx_t lda = (idx_t)Kpg * R * S;
    const TcOperands op{wt + (idx_t)g * Cg * lda + koff, lda, 0, Cg, dy, 0, Ho, Wo, taps + koff, kgemm};
    TcColumn col{0, 0, 0, false};
    const idx_t c = col0 + threadIdx.x % T::BN;
    if (c < ncols) {
        const idx_t n = c / Pp;
        const int uv = (int)(c - n * Pp);
        const int u = uv / aw.count, v = uv - (uv / aw.count) * aw.count;
        const int h0 = ah.q0 + u - (ah.taps - 1) * ah.shift, w0 = aw.q0 + v - (aw.taps - 1) * aw.shift;
        col = TcColumn{(n * K + (idx_t)g * Kpg) * P + (idx_t)h0 * Wo + w0, h0, w0, true};
    }
    float acc[T::MI][T::NJ][4];
    tc_gemm<MODE, PLANT, T, false>(acc, op, col, m0, 0, 0, (kgemm + TC_BK - 1) / TC_BK);
    const idx_t HW = (idx_t)H * W;
    tc_epilogue<T>(acc, m0, Cg, col0, ncols, [&](int ch, idx_t cc, float v) {
        const idx_t n = cc / Pp;
        const int uv = (int)(cc - n * Pp);
        const int u = uv / aw.count, vv = uv - (uv / aw.count) * aw.count;
        dx[(n * C + (idx_t)g * Cg + ch) * HW + (idx_t)(ah.first + u * sh) * W + (aw.first + vv * sw)] = v;
    });
}

// ---------------------------------------------------------------------------
// Backward filter, split-K (see the notes), grid z = g*splits + chunk:
// M = Kpg, col = (c*R + r)*S + s (c within the group), kk = (n, p = i*Wo + j),
// segments = images; chunk z covers the tiles [z*chunk, (z+1)*chunk) of the
// N * ceil(Ho*Wo / 16) tiles and writes its partial dw to out + z*K*Cg*R*S.
// A = dy[:, g*Kpg..] (rows k, lda Ho*Wo, segment K*Ho*Wo), B column (c, r, s):
// off = (g*Cg + c)*H*W + h0*W + w0, (h0, w0) = (r*dil_h - ph, s*dil_w - pw),
// bounds (H, W), segment C*H*W; taps[p] = (i*sh*W + j*sw, i*sh, j*sw).

template <int MODE, int PLANT, typename T>
__device__ __forceinline__ void conv2d_backward_filter_tc(
        const float* __restrict__ dy, const float* __restrict__ x, float* __restrict__ out,
        const long long* __restrict__ taps, int N, int C, int H, int W, int K, int R, int S,
        int Ho, int Wo, int sh, int sw, int ph, int pw, int dil_h, int dil_w, int groups, int chunk) {
    const int Cg = C / groups, Kpg = K / groups;
    const int splits = gridDim.z / groups, g = blockIdx.z / splits, z = blockIdx.z - g * splits;
    const int m0 = blockIdx.y * T::BM;
    const idx_t col0 = (idx_t)blockIdx.x * T::BN;
    const int crs = Cg * R * S, P = Ho * Wo;
    const int tiles_per_image = (P + TC_BK - 1) / TC_BK;
    const idx_t total = (idx_t)N * tiles_per_image, t0 = (idx_t)z * chunk;
    int ktiles = (int)(total - t0 < chunk ? total - t0 : chunk);
    if (PLANT == TC_PLANT_SPLIT) ktiles -= 1;   // each split drops its last tile
    const int n0 = (int)(t0 / tiles_per_image), k0 = (int)(t0 - (idx_t)n0 * tiles_per_image) * TC_BK;
    const idx_t HW = (idx_t)H * W;
    const TcOperands op{dy + (idx_t)g * Kpg * P, P, (idx_t)K * P, Kpg, x, C * HW, H, W, taps, P};
    TcColumn col{0, 0, 0, false};
    const int cc = (int)(col0 + threadIdx.x % T::BN);
    if (cc < crs) {
        const int ch = cc / (R * S), rs = cc - (cc / (R * S)) * (R * S);
        const int h0 = rs / S * dil_h - ph, w0 = (rs - (rs / S) * S) * dil_w - pw;
        col = TcColumn{((idx_t)g * Cg + ch) * HW + (idx_t)h0 * W + w0, h0, w0, true};
    }
    float acc[T::MI][T::NJ][4];
    tc_gemm<MODE, PLANT, T, true>(acc, op, col, m0, n0, k0, ktiles);
    float* part = out + ((idx_t)z * K + (idx_t)g * Kpg) * crs;
    tc_epilogue<T>(acc, m0, Kpg, col0, crs, [&](int k, idx_t c, float v) { part[(idx_t)k * crs + c] = v; });
}

// ---------------------------------------------------------------------------
// Kernels, one per (direction, precision, tile). Arguments: the three arrays
// and the tap table, then N, C, H, W, K, R, S, Ho, Wo, sh, sw, ph, pw, dil_h,
// dil_w, groups; then backward-data: phase_h, phase_w, koff; backward-filter:
// chunk (tiles per split).

#define TC_GEOM int N, int C, int H, int W, int K, int R, int S, int Ho, int Wo, int sh, int sw, int ph, int pw
#define TC_GEOM_ARGS N, C, H, W, K, R, S, Ho, Wo, sh, sw, ph, pw
#define TC_PARAMS const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ y, \
    const long long* __restrict__ taps, TC_GEOM, int dil_h, int dil_w, int groups
#define TC_ARGS x, w, y, taps, TC_GEOM_ARGS, groups
#define TC_BD_PARAMS const float* __restrict__ dy, const float* __restrict__ wt, float* __restrict__ dx, \
    const long long* __restrict__ taps, TC_GEOM, int dil_h, int dil_w, int groups, int phase_h, int phase_w, \
    int koff
#define TC_BD_ARGS dy, wt, dx, taps, TC_GEOM_ARGS, dil_h, dil_w, groups, phase_h, phase_w, koff
#define TC_BF_PARAMS const float* __restrict__ dy, const float* __restrict__ x, float* __restrict__ out, \
    const long long* __restrict__ taps, TC_GEOM, int dil_h, int dil_w, int groups, int chunk
#define TC_BF_ARGS dy, x, out, taps, TC_GEOM_ARGS, dil_h, dil_w, groups, chunk


extern "C" __global__ void __launch_bounds__(TC_V3_THREADS) conv2d_forward_tf32_v3(TC_PARAMS) {
    conv2d_forward_tc<TC_MODE_TF32, TC_PLANT_NONE, TileV3>(TC_ARGS);
}
extern "C" __global__ void __launch_bounds__(TC_V3_THREADS) conv2d_forward_bf16_v3(TC_PARAMS) {
    conv2d_forward_tc<TC_MODE_BF16, TC_PLANT_NONE, TileV3>(TC_ARGS);
}
extern "C" __global__ void __launch_bounds__(TC_V3_THREADS) conv2d_forward_3xtf32_v3(TC_PARAMS) {
    conv2d_forward_tc<TC_MODE_3XTF32, TC_PLANT_NONE, TileV3>(TC_ARGS);
}
extern "C" __global__ void __launch_bounds__(TC_V4_THREADS) conv2d_forward_tf32_v4(TC_PARAMS) {
    conv2d_forward_tc<TC_MODE_TF32, TC_PLANT_NONE, TileV4>(TC_ARGS);
}
extern "C" __global__ void __launch_bounds__(TC_V4_THREADS) conv2d_forward_bf16_v4(TC_PARAMS) {
    conv2d_forward_tc<TC_MODE_BF16, TC_PLANT_NONE, TileV4>(TC_ARGS);
}
extern "C" __global__ void __launch_bounds__(TC_V4_THREADS) conv2d_forward_3xtf32_v4(TC_PARAMS) {
    conv2d_forward_tc<TC_MODE_3XTF32, TC_PLANT_NONE, TileV4>(TC_ARGS);
}

extern "C" __global__ void __launch_bounds__(TC_V3_THREADS) conv2d_backward_data_tf32_v3(TC_BD_PARAMS) {
    conv2d_backward_data_tc<TC_MODE_TF32, TC_PLANT_NONE, TileV3>(TC_BD_ARGS);
}
extern "C" __global__ void __launch_bounds__(TC_V3_THREADS) conv2d_backward_data_bf16_v3(TC_BD_PARAMS) {
    conv2d_backward_data_tc<TC_MODE_BF16, TC_PLANT_NONE, TileV3>(TC_BD_ARGS);
}
extern "C" __global__ void __launch_bounds__(TC_V3_THREADS) conv2d_backward_data_3xtf32_v3(TC_BD_PARAMS) {
    conv2d_backward_data_tc<TC_MODE_3XTF32, TC_PLANT_NONE, TileV3>(TC_BD_ARGS);
}
extern "C" __global__ void __launch_bounds__(TC_V4_THREADS) conv2d_backward_data_tf32_v4(TC_BD_PARAMS) {
    conv2d_backward_data_tc<TC_MODE_TF32, TC_PLANT_NONE, TileV4>(TC_BD_ARGS);
}
extern "C" __global__ void __launch_bounds__(TC_V4_THREADS) conv2d_backward_data_bf16_v4(TC_BD_PARAMS) {
    conv2d_backward_data_tc<TC_MODE_BF16, TC_PLANT_NONE, TileV4>(TC_BD_ARGS);
}
extern "C" __global__ void __launch_bounds__(TC_V4_THREADS) conv2d_backward_data_3xtf32_v4(TC_BD_PARAMS) {
    conv2d_backward_data_tc<TC_MODE_3XTF32, TC_PLANT_NONE, TileV4>(TC_BD_ARGS);
}

extern "C" __global__ void __launch_bounds__(TC_V3_THREADS) conv2d_backward_filter_tf32_v3(TC_BF_PARAMS) {
    conv2d_backward_filter_tc<TC_MODE_TF32, TC_PLANT_NONE, TileV3>(TC_BF_ARGS);
}
extern "C" __global__ void __launch_bounds__(TC_V3_THREADS) conv2d_backward_filter_bf16_v3(TC_BF_PARAMS) {
    conv2d_backward_filter_tc<TC_MODE_BF16, TC_PLANT_NONE, TileV3>(TC_BF_ARGS);
}
extern "C" __global__ void __launch_bounds__(TC_V3_THREADS) conv2d_backward_filter_3xtf32_v3(TC_BF_PARAMS) {
    conv2d_backward_filter_tc<TC_MODE_3XTF32, TC_PLANT_NONE, TileV3>(TC_BF_ARGS);
}
extern "C" __global__ void __launch_bounds__(TC_V4_THREADS) conv2d_backward_filter_tf32_v4(TC_BF_PARAMS) {
    conv2d_backward_filter_tc<TC_MODE_TF32, TC_PLANT_NONE, TileV4>(TC_BF_ARGS);
}
extern "C" __global__ void __launch_bounds__(TC_V4_THREADS) conv2d_backward_filter_bf16_v4(TC_BF_PARAMS) {
    conv2d_backward_filter_tc<TC_MODE_BF16, TC_PLANT_NONE, TileV4>(TC_BF_ARGS);
}
extern "C" __global__ void __launch_bounds__(TC_V4_THREADS) conv2d_backward_filter_3xtf32_v4(TC_BF_PARAMS) {
    conv2d_backward_filter_tc<TC_MODE_3XTF32, TC_PLANT_NONE, TileV4>(TC_BF_ARGS);
}
