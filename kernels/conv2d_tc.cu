// conv2d_tc.cu: 2-D convolution forward on tensor cores (1-D runs here with H = R = 1).
//
// Build and launch: at run time through gpucnn.kernel_loader (NVRTC via
// cupy.RawModule, options --std=c++17 -lineinfo; float32 only, no SCALAR
// switch); the launcher is gpucnn/functional/conv_gpu.py (version 3, chosen
// by precision). Standalone compile check:
//     nvcc -std=c++17 -arch=sm_90 --cubin -o /dev/null -Ikernels kernels/conv2d_tc.cu   (and sm_80)
// (python -m gpucnn.kernel_check [--sass] reports registers, spills and the
// main loop's instruction mix).
// Status: compiled (sm_80, sm_90) and emulated (tests/test_tensor_core_emulated.py),
// not yet run on a GPU.
//
// Math. As conv2d_forward.cu: x (N, C, H, W), w (K, C, R, S), stride (sh, sw),
// padding (ph, pw), y (N, K, Ho, Wo),
//     y[n,k,i,j] = sum_{c,r,s} x[n, c, i*sh + r - ph, j*sw + s - pw] * w[k,c,r,s]
// as an implicit GEMM  Out[m, col] = sum_kk A[m, kk] * B[kk, col] with
//     m = k (M = K), col = (n*Ho + i)*Wo + j (Ngemm = N*Ho*Wo), kk = (c*R + r)*S + s (Kgemm = C*R*S),
//     A = w viewed as K x CRS, B = the im2col matrix of x (never stored).
//
// Versions (one main loop; the precision and the tile are template parameters):
//   conv2d_forward_tf32_v3    "high":    operands rounded to TF32 (cvt.rna), one mma.m16n8k8 per step
//   conv2d_forward_bf16_v3    "medium":  operands rounded to BF16 (cvt.rn), one mma.m16n8k16 per step
//   conv2d_forward_3xtf32_v3  "highest": each operand split v = hi + lo (both TF32), and
//                             a*b ~ a_lo*b_hi + a_hi*b_lo + a_hi*b_hi (three mma; a_lo*b_lo dropped)
//   all: FP32 accumulation in registers; Kgemm step 16; grid (ceil(N*Ho*Wo / BN), ceil(K / BM)).
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
// Indexing. The B loader decodes its column (n, i, j) once, before the main
// loop; the Kgemm index kk -> (c, r, s) comes from a table `taps` the
// launcher builds, one 64-bit word per kk:
//     (c*H*W + r*W + s) << 32 | r << 16 | s      (the launcher checks C*H*W < 2^31)
// so a tap costs one 8-byte load, two bounds checks and one add: the main
// loop does no integer division. The A loader walks a pointer along w's rows.
// Flat offsets into x, w and y are 64-bit.
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
// The kernel body (one main loop for every precision).

template <int MODE, int PLANT, typename T>
__device__ __forceinline__ void conv2d_forward_tc(
        const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ y,
        const long long* __restrict__ taps, int N, int C, int H, int W, int K, int R, int S,
        int Ho, int Wo, int sh, int sw, int ph, int pw) {
    __shared__ __align__(16) float As[TC_STAGES][T::BM * TC_BK];
    __shared__ __align__(16) float Bs[TC_STAGES][T::BN * TC_BK];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int wm = (warp / T::WARPS_N) * 16 * T::MI, wn = (warp % T::WARPS_N) * 8 * T::NJ;
    const int m0 = blockIdx.y * T::BM;
    const idx_t col0 = (idx_t)blockIdx.x * T::BN;
    const int kgemm = C * R * S;
    const idx_t HW = (idx_t)H * W, P = (idx_t)Ho * Wo, ncols = (idx_t)N * P;

    // A loader: column a_kk of rows a_row + A_ROWS*e (16 consecutive floats of
    // a w row per 16 threads); a pointer walks along the rows, 16 floats a tile.
    const int a_kk = tid & (TC_BK - 1), a_row = tid / TC_BK;
    const idx_t a_step = (idx_t)T::A_ROWS * kgemm;
    const float* a_src = w + (idx_t)(m0 + a_row) * kgemm + a_kk;
    unsigned a_rows_ok = 0;   // bit e: row a_row + A_ROWS*e < K
    for (int e = 0; e < T::BM / T::A_ROWS; ++e) a_rows_ok |= (unsigned)(m0 + a_row + T::A_ROWS * e < K) << e;
    // B loader: one column (n, i, j) for the whole loop, decoded here once;
    // rows kk = b_kk + B_KSTEP*e from the packed tap table, walked 16 entries a tile.
    const int b_col = tid % T::BN, b_kk = tid / T::BN;
    const idx_t col = col0 + b_col;
    const bool col_ok = col < ncols;
    idx_t x_col = 0;   // x offset of tap (c, r, s) = (0, 0, 0) for this column (may be < 0)
    int h0 = 0, w0 = 0;
    if (col_ok) {
        const idx_t n = col / P;
        const int pq = (int)(col - n * P);
        const int i = pq / Wo, j = pq - (pq / Wo) * Wo;
        h0 = i * sh - ph;
        w0 = j * sw - pw;
        x_col = n * C * HW + (idx_t)h0 * W + w0;
    }
    const long long* tap = taps + b_kk;

    auto load_tile = [&](int stage, int k_left) {   // k_left = kgemm - this tile's first kk
        for (int e = 0; e < T::BM / T::A_ROWS; ++e) {
            const bool ok = ((a_rows_ok >> e) & 1) && a_kk < k_left;
            cp_async4(&As[stage][tc_store_slot<PLANT>(a_row + T::A_ROWS * e, a_kk)],
                      ok ? a_src + e * a_step : w, ok);
        }
        for (int e = 0; e < TC_BK / T::B_KSTEP; ++e) {
            const int kl = b_kk + T::B_KSTEP * e;
            bool ok = col_ok && kl < k_left;
            const long long t = ok ? tap[T::B_KSTEP * e] : 0;
            ok = ok && in_range(h0 + (int)((t >> 16) & 0xffff), H) && in_range(w0 + (int)(t & 0xffff), W);
            cp_async4(&Bs[stage][tc_store_slot<PLANT>(b_col, kl)], ok ? x + (x_col + (t >> 32)) : x, ok);
        }
        a_src += TC_BK;
        tap += TC_BK;
    };

    float acc[T::MI][T::NJ][4];
    for (int i = 0; i < T::MI; ++i)
        for (int j = 0; j < T::NJ; ++j)
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

    const int ktiles = (kgemm + TC_BK - 1) / TC_BK;
    for (int s = 0; s < TC_STAGES - 1; ++s) {
        if (s < ktiles) load_tile(s, kgemm - s * TC_BK);
        cp_async_commit();   // possibly empty: the group count stays fixed
    }
    int read_stage = 0, write_stage = TC_STAGES - 1;
    for (int kt = 0; kt < ktiles; ++kt) {
        if (PLANT != TC_PLANT_NO_WAIT) cp_async_wait<TC_STAGES - 2>();
        __syncthreads();
        if (kt + TC_STAGES - 1 < ktiles) load_tile(write_stage, kgemm - (kt + TC_STAGES - 1) * TC_BK);
        cp_async_commit();
        tc_stage_mma<MODE, PLANT, T::MI, T::NJ>(acc, As[read_stage], Bs[read_stage], wm, wn, g, t);
        read_stage = read_stage == TC_STAGES - 1 ? 0 : read_stage + 1;
        write_stage = write_stage == TC_STAGES - 1 ? 0 : write_stage + 1;
    }
    cp_async_wait<0>();   // only empty groups remain in a correct kernel

    // Epilogue: c0..c3 of each mma tile at (g, 2t), (g, 2t+1), (g+8, 2t), (g+8, 2t+1).
    for (int i = 0; i < T::MI; ++i)
        for (int half = 0; half < 2; ++half) {
            const int k = m0 + wm + i * 16 + g + 8 * half;
            if (k >= K) continue;
            for (int j = 0; j < T::NJ; ++j)
                for (int e = 0; e < 2; ++e) {
                    const idx_t c = col0 + wn + j * 8 + 2 * t + e;
                    if (c >= ncols) continue;
                    const idx_t n = c / P;
                    y[(n * K + k) * P + (c - n * P)] = acc[i][j][2 * half + e];
                }
        }
}

// ---------------------------------------------------------------------------
// Kernels. Arguments: x, w, y, taps (one packed tap per kk, see the notes), then
// N, C, H, W, K, R, S, Ho, Wo, sh, sw, ph, pw.

#define TC_PARAMS const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ y, \
    const long long* __restrict__ taps, int N, int C, int H, int W, int K, int R, int S, int Ho, int Wo, \
    int sh, int sw, int ph, int pw
#define TC_ARGS x, w, y, taps, N, C, H, W, K, R, S, Ho, Wo, sh, sw, ph, pw

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
