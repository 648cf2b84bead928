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
// What it cannot model:
//   - warps: threads never run in lockstep. Warp-synchronous code (implicit
//     warp synchrony, shuffles, votes, __syncwarp) is neither emulated nor
//     diagnosed; none of those built-ins is defined, so a kernel using them
//     does not compile here.
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

#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

template <typename T>
inline T __ldg(const T* p) { return *p; }

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
        released_.wait(lock, [&] { return phase_ != phase; });
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
            }
        }
        return;
    }
    BlockBarrier bar(threads);
    emu_barrier = &bar;
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < threads; ++t)
        pool.emplace_back([&, t] {
            threadIdx = emu_unflatten(t, block);
            for (unsigned long long b = 0; b < blocks; ++b) {
                blockIdx = block_at(b);
                body();
                bar.wait(BlockBarrier::BLOCK_END);  // the next block may reuse __shared__
            }
        });
    for (auto& th : pool) th.join();
    emu_barrier = nullptr;
}
