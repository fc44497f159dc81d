// Hopper warpgroup matrix products (wgmma, sm_90a only): the shared-memory descriptor of a tile in
// the 128-byte swizzled layout and the m64n64k16 bf16 product with fp32 accumulators, A from shared
// memory or from registers. Include only from *.sm90a.cu files (CMakeLists.txt builds them for
// sm_90a alone; their kernels run on compute capability 9.0 devices).
//
// Also m64n128k16 with both operands K-major from shared memory.
//
// Layouts (PTX ISA, "asynchronous warpgroup level matrix shared memory layout"):
// - A tile of 64-element (128-byte) bf16 rows, 8 rows an atom of 1024 bytes, atoms 1024-byte aligned.
//   Row r's 16-byte chunk c is stored at chunk c ^ (r % 8) of the row (the 128-byte swizzle):
//   sw128_offset gives an element's byte offset.
// - K-major operand (A (M, K) or B given as (N, K) rows): rows are M or N, 64 k values a row; a 16-deep
//   k step starts 32 bytes further along the rows.
// - MN-major operand (B given as (K, N) rows, N = 64): rows are k, 64 n values a row; a 16-deep k
//   step starts 16 rows (2048 bytes) further.
// Either way the descriptor's stride between 8-row atoms is 1024 bytes and the leading offset is
// unused (one atom spans the 64 values of a row).
// - The fp32 accumulators of m64nNk16: warp w of the warpgroup holds rows 16w + g and 16w + g + 8 (g =
//   lane / 4); its registers 4j .. 4j + 3 are columns 8j + 2t, 8j + 2t + 1 (t = lane % 4) of row 16w + g,
//   then of row 16w + g + 8 — mma.m16n8k16's C layout, one n8 block after the other.
// - A from registers (m64nNk16, 16-bit types): each warp's 16 rows in mma.m16n8k16's A layout, four
//   registers of two bf16: (g, 2t..2t+1), (g + 8, 2t..), (g, 2t + 8..), (g + 8, 2t + 8..).
#pragma once
#include <cstdint>

#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#error "ops/cuda/wgmma.cuh needs sm_90a: include it only from *.sm90a.cu files"
#endif

namespace mslm::ops::cuda::wgmma {

// Byte offset of element (r, c) (c < 64) of a 128-byte swizzled tile of bf16 rows.
__host__ __device__ constexpr uint32_t sw128_offset(uint32_t r, uint32_t c) {
    return r * 128 + ((((c >> 3) ^ r) & 7) << 4) + ((c & 7) << 1);
}

// The descriptor of a 128-byte swizzled tile starting at smem (1024-byte aligned, or an atom's base
// plus a k step's offset): start address, leading offset 16 bytes (unused), stride 1024 bytes between
// 8-row atoms, swizzle mode 1 (128 bytes) in bits 62–63.
__device__ __forceinline__ uint64_t sw128_desc(const void* smem) {
    const auto addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
    return uint64_t((addr >> 4) & 0x3fff) | (uint64_t(1) << 16) | (uint64_t(1024 >> 4) << 32) |
           (uint64_t(1) << 62);
}

// Shared memory written by ordinary stores, read next by wgmma: each writing thread fences before
// the barrier that publishes it.
__device__ __forceinline__ void fence_proxy_async() {
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
// Before the first wgmma that reads or writes accumulators other instructions touched.
__device__ __forceinline__ void fence() {
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void commit() {
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
// Returns once at most N committed groups are pending.
template <int N>
__device__ __forceinline__ void wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

#define MSLM_WGMMA_D32                                                                              \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]),    \
        "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]),  \
        "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]),  \
        "+f"(d[29]), "+f"(d[30]), "+f"(d[31])

// d (64 × 64 fp32, the warpgroup's accumulators) = A (64 × 16) · B (16 × 64) (+ d when accumulate),
// both from shared memory by descriptor; kTransB: B is MN-major (given as k rows of 64 n values), else
// K-major; kTransA likewise for A (k rows of 64 m values).
template <bool kTransB, bool kTransA = false>
__device__ __forceinline__ void m64n64k16_ss(float (&d)[32], uint64_t desc_a, uint64_t desc_b,
                                             bool accumulate) {
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
        "%32, %33, p, 1, 1, %36, %35;\n"
        "}\n"
        : MSLM_WGMMA_D32
        : "l"(desc_a), "l"(desc_b), "r"(int(accumulate)), "n"(kTransB ? 1 : 0), "n"(kTransA ? 1 : 0));
}

// The same with A from registers (the layout above).
template <bool kTransB>
__device__ __forceinline__ void m64n64k16_rs(float (&d)[32], const uint32_t (&a)[4], uint64_t desc_b,
                                             bool accumulate) {
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
        "{%32, %33, %34, %35}, %36, p, 1, 1, %38;\n"
        "}\n"
        : MSLM_WGMMA_D32
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(int(accumulate)),
          "n"(kTransB ? 1 : 0));
}

#undef MSLM_WGMMA_D32

#define MSLM_WGMMA_D64                                                                              \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]),    \
        "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]),  \
        "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]),  \
        "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]),  \
        "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]),  \
        "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]),  \
        "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]),  \
        "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])

// d (64 × 128 fp32) = A (64 × 16) · B (16 × 128) (+ d when accumulate), both K-major from shared
// memory by descriptor (B given as 128 rows of n, its 16 atoms 1024 bytes apart).
__device__ __forceinline__ void m64n128k16_ss(float (&d)[64], uint64_t desc_a, uint64_t desc_b,
                                              bool accumulate) {
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
        "%64, %65, p, 1, 1, 0, 0;\n"
        "}\n"
        : MSLM_WGMMA_D64
        : "l"(desc_a), "l"(desc_b), "r"(int(accumulate)));
}

#undef MSLM_WGMMA_D64

}  // namespace mslm::ops::cuda::wgmma
