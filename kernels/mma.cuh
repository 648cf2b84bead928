// mma.cuh: warp-level tensor-core and async-copy helpers (sm_80+), as inline PTX.
//
// Build: inlined by gpucnn.kernel_loader like common.cuh; standalone
//     nvcc -std=c++17 -arch=sm_90 --cubin -o /dev/null -Ikernels kernels/conv2d_tc.cu
// Status: compiled (sm_80, sm_90) and emulated, not yet run on a GPU.
//
// Under nvcc/NVRTC (__CUDACC__) every helper is one PTX instruction. Under
// the CPU emulator (tests/cuda_emulator/cuda_emu.h, g++) the same names call
// emu_* functions that implement the PTX ISA semantics (fragment layouts,
// TF32/BF16 rounding, deferred cp.async groups), so a kernel written against
// this header runs unchanged in both.
//
// Fragment layouts (PTX ISA, "Matrix fragments for mma.m16n8k8" / "m16n8k16"),
// lane = 4*g + t (g = lane >> 2 in 0..7, t = lane & 3):
//   m16n8k8 .tf32   A 16x8 row:  a0 (g, t)   a1 (g+8, t)   a2 (g, t+4)   a3 (g+8, t+4)
//                   B 8x8 col:   b0 (t, g)   b1 (t+4, g)
//   m16n8k16 .bf16  A 16x16 row: a0 (g, 2t..2t+1)  a1 (g+8, 2t..2t+1)
//                                a2 (g, 2t+8..2t+9) a3 (g+8, 2t+8..2t+9)
//                   B 16x8 col:  b0 (2t..2t+1, g)   b1 (2t+8..2t+9, g)
//                   (two bf16 per register, the lower index in the low half)
//   C/D 16x8 f32 (both):          c0 (g, 2t) c1 (g, 2t+1) c2 (g+8, 2t) c3 (g+8, 2t+1)
// TF32 operands are float bit patterns of which the tensor core reads the
// top 19 bits (sign, 8 exponent, 10 mantissa); to_tf32 rounds to nearest,
// ties away from zero (cvt.rna), as the mma expects.
#ifndef GPUCNN_MMA_CUH
#define GPUCNN_MMA_CUH

#if defined(__CUDACC__)

__device__ __forceinline__ unsigned smem_addr(const void* p) {
    return (unsigned)__cvta_generic_to_shared(p);
}

// 4-byte global -> shared copy, asynchronous (cp.async.ca); full == false
// copies nothing and zero-fills the destination (src-size 0): the padding.
__device__ __forceinline__ void cp_async4(void* dst, const void* src, bool full) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n"
                 :: "r"(smem_addr(dst)), "l"(src), "r"(full ? 4 : 0));
}
__device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::);
}
// Wait until at most N committed groups of this thread are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" :: "n"(N));
}

__device__ __forceinline__ unsigned to_tf32(float x) {
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
    return r;
}
// Two floats as bf16x2 (round to nearest even): lo in bits 0-15, hi in 16-31.
__device__ __forceinline__ unsigned pack_bf16x2(float lo, float hi) {
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// d += A (16x8 tf32) * B (8x8 tf32), f32 accumulation.
__device__ __forceinline__ void mma_tf32_m16n8k8(float d[4], const unsigned a[4], const unsigned b[2]) {
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
// d += A (16x16 bf16) * B (16x8 bf16), f32 accumulation.
__device__ __forceinline__ void mma_bf16_m16n8k16(float d[4], const unsigned a[4], const unsigned b[2]) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
// Four 8x8 b16 matrices from shared memory: lanes 8i..8i+7 give the row
// addresses (16 bytes each, 16-byte aligned) of matrix i; lane l receives in
// r[i] the two elements of row l/4, columns 2(l%4), 2(l%4)+1 of matrix i.
__device__ __forceinline__ void ldmatrix_x4(unsigned r[4], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_addr(row)));
}

#else  // the CPU emulator (tests/cuda_emulator/cuda_emu.h defines the emu_* functions)

inline void cp_async4(void* dst, const void* src, bool full) { emu_cp_async(dst, src, 4, full ? 4 : 0); }
inline void cp_async_commit() { emu_cp_async_commit(); }
template <int N>
inline void cp_async_wait() { emu_cp_async_wait(N); }
inline unsigned to_tf32(float x) { return emu_cvt_rna_tf32(x); }
inline unsigned pack_bf16x2(float lo, float hi) { return emu_pack_bf16x2(lo, hi); }
inline void mma_tf32_m16n8k8(float d[4], const unsigned a[4], const unsigned b[2]) {
    emu_warp_mma_m16n8k8_tf32(d, a, b);
}
inline void mma_bf16_m16n8k16(float d[4], const unsigned a[4], const unsigned b[2]) {
    emu_warp_mma_m16n8k16_bf16(d, a, b);
}
inline void ldmatrix_x4(unsigned r[4], const void* row) { emu_warp_ldmatrix_x4(r, row); }

#endif

// The float value of a TF32 bit pattern (the low 13 bits are zero after to_tf32).
__device__ __forceinline__ float tf32_value(unsigned bits) {
    return __uint_as_float(bits & 0xffffe000u);
}

#endif  // GPUCNN_MMA_CUH
