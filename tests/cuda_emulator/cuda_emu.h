// cuda_emu.h: the CUDA built-ins on the host, so that gpucnn's kernels
// (kernels/*.cu, unchanged) compile with g++ and run on the CPU under
// AddressSanitizer and UndefinedBehaviorSanitizer.
//
// CPU emulation of the CUDA kernels (index math, bounds, barriers); not a
// substitute for a GPU run, compute-sanitizer or NVRTC.
//
// Execution model of one launch (emu_run):
//   - blocks run one after another, blockIdx.x fastest (or in reverse order,
//     to show that a result does not depend on the block schedule);
//   - a kernel that never reaches __syncthreads (the builder reads that from
//     the source) runs its threads one after another on the calling thread;
//     a __syncthreads reached anyway aborts the run;
//   - a kernel that does gets one OS thread per CUDA thread of the block, and
//     __syncthreads is a real barrier across them. A barrier that only part of
//     the block reaches (divergent __syncthreads, undefined on a GPU) aborts.
//   - __shared__ variables are function-local statics: one copy, used by one
//     block at a time (a barrier closes every block).
//
//   - warps (see "Warps" below): in a barrier launch the 32 threads of a warp
//     (consecutive linear thread ids) also share a warp barrier; the warp
//     collectives (__shfl*_sync, __syncwarp, and kernels/mma.cuh's mma.sync
//     m16n8k8 TF32 / m16n8k16 BF16 and ldmatrix.x4) exchange each lane's
//     operands through it and give every lane its PTX-ISA result. A lane
//     that ends the block while the rest of its warp waits in a collective
//     aborts (divergent collective); so does any barrier that waits 60 s
//     (a deadlock). A kernel that uses a collective runs as a barrier launch
//     (build.py finds it by name, as it finds __syncthreads).
//   - cp.async (kernels/mma.cuh): each copy is queued by its thread and
//     performed only when a cp.async.wait_group releases its group, so a
//     read of a stage before its wait sees the old contents, as it may on a
//     GPU. A block that ends with copies still queued aborts.
//   - TF32 / BF16: cvt.rna.tf32.f32 and cvt.rn.bf16x2.f32 round as the PTX
//     ISA says; the mma reads only the top 19 (TF32) / 16 (BF16) bits of
//     each operand; products are exact in float and summed in float in k
//     order onto C (the tensor core's internal order and rounding of the
//     sum are unspecified, so results match a GPU only to rounding).
//
// What it cannot model:
//   - warps in lockstep: implicit warp synchrony (no collective between a
//     shared-memory store and another lane's load), votes, and shuffles with
//     a partial mask are not emulated (a partial mask aborts).
//   - the memory model: a race (a missing barrier between a shared-memory
//     store and another thread's load, two blocks writing one element) shows
//     only if the OS schedule happens to expose it; blocks never overlap.
//   - atomics: none is defined, and their ordering is not modelled.
//   - shared memory is not re-initialised between blocks, so a load of a
//     slot no thread of this block stored can read a stale value unnoticed.
//   - resources and timing: registers, shared-memory size, occupancy, clocks.
//   - arithmetic: g++ on the host rounds as the host does (no FMA
//     contraction, host libm), so results match the GPU's only to rounding.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <memory>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <mutex>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

template <typename T>
inline T __ldg(const T* p) { return *p; }

inline float __uint_as_float(unsigned v) {
    float f;
    std::memcpy(&f, &v, sizeof f);
    return f;
}

inline unsigned __float_as_uint(float f) {
    unsigned v;
    std::memcpy(&v, &f, sizeof v);
    return v;
}

inline double __longlong_as_double(long long v) {
    double d;
    std::memcpy(&d, &v, sizeof d);
    return d;
}

[[noreturn]] inline void emu_fail(const char* what) {
    std::fprintf(stderr, "cuda_emulator: %s (block %u,%u,%u thread %u,%u,%u)\n", what,
                 blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z);
    std::_Exit(3);
}

// A barrier for the threads of one block that also knows why each thread
// arrived: at a __syncthreads or at the end of the block. A phase in which
// the two are mixed means the __syncthreads was divergent.
class BlockBarrier {
public:
    enum Kind { SYNCTHREADS, BLOCK_END };
    explicit BlockBarrier(unsigned threads) : threads_(threads) {}

    void wait(Kind kind) {
        std::unique_lock<std::mutex> lock(mutex_);
        if (arrived_ == 0) kind_ = kind;
        else if (kind != kind_) emu_fail("__syncthreads not reached by every thread of the block");
        if (++arrived_ == threads_) {
            arrived_ = 0;
            ++phase_;
            released_.notify_all();
            return;
        }
        const unsigned long long phase = phase_;
        if (!released_.wait_for(lock, std::chrono::seconds(60), [&] { return phase_ != phase; }))
            emu_fail("a barrier waited 60 s: deadlock (a warp collective or __syncthreads not reached)");
    }

private:
    std::mutex mutex_;
    std::condition_variable released_;
    const unsigned threads_;
    unsigned arrived_ = 0;
    unsigned long long phase_ = 0;
    Kind kind_ = SYNCTHREADS;
};

inline BlockBarrier* emu_barrier = nullptr;  // set while a barrier launch runs

inline void __syncthreads() {
    if (emu_barrier == nullptr) emu_fail("__syncthreads in a kernel the builder found barrier-free");
    emu_barrier->wait(BlockBarrier::SYNCTHREADS);
}

// ---------------------------------------------------------------------------
// Warps. Lane = linear thread id % 32. A collective writes each lane's
// operand into its slot, waits for the warp, lets every lane read any slot,
// and waits again before the slots may be reused.

constexpr unsigned EMU_WARP_SIZE = 32;
constexpr unsigned EMU_SLOT_BYTES = 64;

struct WarpSync {
    explicit WarpSync(unsigned lanes) : barrier(lanes), lanes(lanes) {}
    BlockBarrier barrier;
    const unsigned lanes;
    alignas(16) unsigned char slot[EMU_WARP_SIZE][EMU_SLOT_BYTES];
};

inline std::vector<std::unique_ptr<WarpSync>>* emu_warps = nullptr;  // set while a barrier launch runs

inline unsigned emu_linear_thread() {
    return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}
inline unsigned emu_lane() { return emu_linear_thread() % EMU_WARP_SIZE; }

inline WarpSync& emu_warp() {
    if (emu_warps == nullptr) emu_fail("warp collective in a kernel the builder found barrier-free");
    return *(*emu_warps)[emu_linear_thread() / EMU_WARP_SIZE];
}

// Runs read(slots) between the two warp barriers around a slot exchange.
template <typename T, typename Read>
inline void emu_warp_exchange(const T& mine, Read read) {
    static_assert(sizeof(T) <= EMU_SLOT_BYTES, "slot too small");
    WarpSync& w = emu_warp();
    std::memcpy(w.slot[emu_lane()], &mine, sizeof(T));
    w.barrier.wait(BlockBarrier::SYNCTHREADS);
    read([&](unsigned lane) {
        if (lane >= w.lanes) emu_fail("warp collective reads a lane the (partial) warp does not have");
        T v;
        std::memcpy(&v, w.slot[lane], sizeof(T));
        return v;
    });
    w.barrier.wait(BlockBarrier::SYNCTHREADS);
}

inline void emu_check_full_mask(unsigned mask) {
    const WarpSync& w = emu_warp();
    const unsigned full = w.lanes == 32 ? 0xffffffffu : (1u << w.lanes) - 1;
    if (mask != full) emu_fail("warp collective with a partial mask (not emulated)");
}

inline void __syncwarp(unsigned mask = 0xffffffffu) {
    emu_check_full_mask(mask);
    emu_warp_exchange(0, [](auto) {});
}

// Shuffles: the source lane within the lane's segment of `width` lanes; a
// source outside the segment returns the lane's own value (PTX shfl.sync).
template <typename T, typename Src>
inline T emu_shfl(unsigned mask, T v, int width, Src src) {
    emu_check_full_mask(mask);
    if (width < 1 || width > 32 || (width & (width - 1))) emu_fail("shuffle width not a power of 2 <= 32");
    const int lane = (int)emu_lane(), base = lane & ~(width - 1);
    T out = v;
    emu_warp_exchange(v, [&](auto peer) {
        const int s = src(lane - base);
        if (s >= 0 && s < width) out = peer((unsigned)(base + s));
    });
    return out;
}
template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    return emu_shfl(mask, v, width, [&](int) { return src % width; });
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    return emu_shfl(mask, v, width, [&](int l) { return l ^ lane_mask; });
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    return emu_shfl(mask, v, width, [&](int l) { return l + (int)delta; });
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    return emu_shfl(mask, v, width, [&](int l) { return l - (int)delta; });
}

// TF32 / BF16 conversions (PTX cvt.rna.tf32.f32, cvt.rn.bf16x2.f32).
inline unsigned emu_cvt_rna_tf32(float x) {
    unsigned b = __float_as_uint(x);
    if ((b & 0x7f800000u) != 0x7f800000u) b += 0x1000u;   // half an ulp of the magnitude: ties away
    return b & 0xffffe000u;
}
inline unsigned short emu_bf16_rn(float x) {
    const unsigned b = __float_as_uint(x);
    if ((b & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((b >> 16) | 0x40u);   // quiet NaN
    return (unsigned short)((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);                   // nearest even
}
inline unsigned emu_pack_bf16x2(float lo, float hi) {
    return (unsigned)emu_bf16_rn(lo) | ((unsigned)emu_bf16_rn(hi) << 16);
}
inline float emu_tf32_operand(unsigned bits) { return __uint_as_float(bits & 0xffffe000u); }
inline float emu_bf16_operand(unsigned short bits) { return __uint_as_float((unsigned)bits << 16); }

// float16 <-> float (PTX cvt.f32.f16: exact; cvt.rn.f16.f32: nearest even,
// overflow to infinity, subnormals kept). A NaN stays a quiet NaN of the
// same sign; its payload is not modelled.
inline float emu_cvt_f32_f16(unsigned short h) {
    const unsigned sign = (unsigned)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0x1f) return __uint_as_float(sign | 0x7f800000u | (m << 13));
    if (e == 0) {
        const float v = (float)m * 5.9604644775390625e-8f;   // m * 2^-24, exact
        return sign ? -v : v;
    }
    return __uint_as_float(sign | ((e + 112u) << 23) | (m << 13));
}
inline unsigned short emu_cvt_rn_f16_f32(float f) {
    const unsigned x = __float_as_uint(f), sign = (x >> 16) & 0x8000u, a = x & 0x7fffffffu;
    if (a > 0x7f800000u) return (unsigned short)(sign | 0x7e00u);             // NaN
    if (a >= 0x477ff000u) return (unsigned short)(sign | 0x7c00u);            // >= 65520: infinity
    if (a >= 0x38800000u) {                                                   // normal half
        const unsigned b = a - 0x38000000u, low = b & 0x1fffu;
        unsigned h = b >> 13;
        if (low > 0x1000u || (low == 0x1000u && (h & 1u))) ++h;
        return (unsigned short)(sign | h);
    }
    if (a < 0x33000000u) return (unsigned short)sign;                         // < 2^-25: zero
    const unsigned e = a >> 23, m = (a & 0x7fffffu) | 0x800000u, shift = 126u - e;  // subnormal half
    unsigned h = m >> shift;
    const unsigned rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (h & 1u))) ++h;
    return (unsigned short)(sign | h);
}

struct EmuMmaFragments {
    unsigned a[4], b[2];
};

// d (16x8) += A (16xKD) * B (KD x8); A(row, k) and B(k, col) read from the
// lanes' fragments by the layouts in kernels/mma.cuh; each lane gets its c0..c3.
template <int KD, typename AAt, typename BAt>
inline void emu_warp_mma(float d[4], const unsigned a[4], const unsigned b[2], AAt a_at, BAt b_at) {
    if (emu_warp().lanes != EMU_WARP_SIZE) emu_fail("mma.sync in a partial warp");
    EmuMmaFragments mine;
    std::memcpy(mine.a, a, sizeof mine.a);
    std::memcpy(mine.b, b, sizeof mine.b);
    const unsigned g = emu_lane() >> 2, t = emu_lane() & 3;
    float out[4];
    emu_warp_exchange(mine, [&](auto peer) {
        float A[16][KD], B[KD][8];
        for (unsigned lane = 0; lane < 32; ++lane) {
            const EmuMmaFragments f = peer(lane);
            a_at(A, f, lane >> 2, lane & 3);
            b_at(B, f, lane >> 2, lane & 3);
        }
        for (int e = 0; e < 4; ++e) {
            const unsigned row = g + 8 * (e >> 1), col = 2 * t + (e & 1);
            float sum = d[e];
            for (int k = 0; k < KD; ++k) sum += A[row][k] * B[k][col];
            out[e] = sum;
        }
    });
    std::memcpy(d, out, sizeof out);
}

inline void emu_warp_mma_m16n8k8_tf32(float d[4], const unsigned a[4], const unsigned b[2]) {
    emu_warp_mma<8>(d, a, b,
        [](float (*A)[8], const EmuMmaFragments& f, unsigned g, unsigned t) {
            A[g][t] = emu_tf32_operand(f.a[0]);
            A[g + 8][t] = emu_tf32_operand(f.a[1]);
            A[g][t + 4] = emu_tf32_operand(f.a[2]);
            A[g + 8][t + 4] = emu_tf32_operand(f.a[3]);
        },
        [](float (*B)[8], const EmuMmaFragments& f, unsigned g, unsigned t) {
            B[t][g] = emu_tf32_operand(f.b[0]);
            B[t + 4][g] = emu_tf32_operand(f.b[1]);
        });
}

inline void emu_warp_mma_m16n8k16_bf16(float d[4], const unsigned a[4], const unsigned b[2]) {
    auto lo = [](unsigned v) { return emu_bf16_operand((unsigned short)(v & 0xffffu)); };
    auto hi = [](unsigned v) { return emu_bf16_operand((unsigned short)(v >> 16)); };
    emu_warp_mma<16>(d, a, b,
        [&](float (*A)[16], const EmuMmaFragments& f, unsigned g, unsigned t) {
            for (int r = 0; r < 4; ++r) {
                const unsigned row = g + 8 * (r & 1), col = 2 * t + 8 * (r >> 1);
                A[row][col] = lo(f.a[r]);
                A[row][col + 1] = hi(f.a[r]);
            }
        },
        [&](float (*B)[8], const EmuMmaFragments& f, unsigned g, unsigned t) {
            for (int r = 0; r < 2; ++r) {
                B[2 * t + 8 * r][g] = lo(f.b[r]);
                B[2 * t + 8 * r + 1][g] = hi(f.b[r]);
            }
        });
}

// ldmatrix.sync.aligned.m8n8.x4.b16: lane 8i+j gives row j of matrix i;
// lane l receives 4 bytes at byte 4*(l%4) of row l/4 of each matrix.
inline void emu_warp_ldmatrix_x4(unsigned r[4], const void* row) {
    if (reinterpret_cast<unsigned long long>(row) % 16) emu_fail("ldmatrix row address not 16-byte aligned");
    const unsigned lane = emu_lane();
    emu_warp_exchange(row, [&](auto peer) {
        for (int i = 0; i < 4; ++i) {
            const unsigned char* p = static_cast<const unsigned char*>(peer(8 * i + lane / 4));
            std::memcpy(&r[i], p + 4 * (lane % 4), 4);
        }
    });
}

// cp.async: per-thread queue of copies; commit closes a group; wait_group(n)
// performs the oldest groups until at most n remain queued.
struct EmuCopy {
    void* dst;
    const void* src;
    unsigned bytes, src_bytes;
};
inline thread_local std::vector<EmuCopy> emu_cp_open;
inline thread_local std::deque<std::vector<EmuCopy>> emu_cp_groups;

inline void emu_cp_async(void* dst, const void* src, unsigned bytes, unsigned src_bytes) {
    emu_cp_open.push_back({dst, src, bytes, src_bytes});
}
inline void emu_cp_async_commit() {
    emu_cp_groups.push_back(std::move(emu_cp_open));
    emu_cp_open.clear();
}
inline void emu_cp_async_wait(unsigned n) {
    while (emu_cp_groups.size() > n) {
        for (const EmuCopy& c : emu_cp_groups.front()) {
            std::memcpy(c.dst, c.src, c.src_bytes);
            std::memset(static_cast<char*>(c.dst) + c.src_bytes, 0, c.bytes - c.src_bytes);
        }
        emu_cp_groups.pop_front();
    }
}
// At the end of a thread's block: copies never waited for are a bug.
inline void emu_cp_async_check_drained() {
    bool pending = !emu_cp_open.empty();
    for (const auto& group : emu_cp_groups) pending = pending || !group.empty();
    emu_cp_open.clear();
    emu_cp_groups.clear();
    if (pending) emu_fail("cp.async copies still queued at the end of the block (missing cp.async.wait_group)");
}

inline dim3 emu_unflatten(unsigned long long i, dim3 shape) {
    dim3 v;
    v.x = (unsigned)(i % shape.x);
    v.y = (unsigned)(i / shape.x % shape.y);
    v.z = (unsigned)(i / shape.x / shape.y);
    return v;
}

// Runs body() once for every thread of every block of the grid.
template <typename Body>
void emu_run(dim3 grid, dim3 block, bool barrier, bool reverse, Body body) {
    gridDim = grid;
    blockDim = block;
    const unsigned long long blocks = (unsigned long long)grid.x * grid.y * grid.z;
    const unsigned threads = block.x * block.y * block.z;
    auto block_at = [&](unsigned long long b) { return emu_unflatten(reverse ? blocks - 1 - b : b, grid); };
    if (!barrier) {
        for (unsigned long long b = 0; b < blocks; ++b) {
            blockIdx = block_at(b);
            for (unsigned t = 0; t < threads; ++t) {
                threadIdx = emu_unflatten(reverse ? threads - 1 - t : t, block);
                body();
                emu_cp_async_check_drained();
            }
        }
        return;
    }
    BlockBarrier bar(threads);
    emu_barrier = &bar;
    std::vector<std::unique_ptr<WarpSync>> warps;
    for (unsigned first = 0; first < threads; first += EMU_WARP_SIZE)
        warps.push_back(std::make_unique<WarpSync>(std::min(EMU_WARP_SIZE, threads - first)));
    emu_warps = &warps;
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < threads; ++t)
        pool.emplace_back([&, t] {
            threadIdx = emu_unflatten(t, block);
            for (unsigned long long b = 0; b < blocks; ++b) {
                blockIdx = block_at(b);
                body();
                emu_cp_async_check_drained();
                warps[t / EMU_WARP_SIZE]->barrier.wait(BlockBarrier::BLOCK_END);  // no lane left in a collective
                bar.wait(BlockBarrier::BLOCK_END);  // the next block may reuse __shared__
            }
        });
    for (auto& th : pool) th.join();
    emu_barrier = nullptr;
    emu_warps = nullptr;
}
