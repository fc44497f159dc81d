// Hopper's tensor memory accelerator and shared-memory barriers (sm_90 PTX; include only from
// *.sm90a.cu files, beside wgmma.cuh): a copy of one box of a tensor map (cuTensorMapEncodeTiled,
// made on the host) into shared memory that completes a transaction count on an mbarrier, the
// mbarrier's init / arrive / wait, and the register reallocation between warpgroups.
//
// A barrier's phase completes when its pending arrivals reach zero and the bytes it expects have
// landed; waiters name the parity of the phase they wait for (0 for the first, then 1, 0, ...).
#pragma once
#include <cstdint>

namespace mslm::ops::cuda::tma {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Dynamic shared memory rounded up to a 1024-byte boundary (the 128-byte swizzle's atoms; allocate
// 1024 bytes more than used).
__device__ __forceinline__ unsigned char* smem_1024(unsigned char* raw) {
    const auto base = static_cast<uint32_t>(__cvta_generic_to_shared(raw));
    return raw + ((1024 - (base & 1023)) & 1023);
}

// Once, by one thread, before the block's barrier that publishes it: `count` arrivals a phase.
__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(count) : "memory");
}
// After the inits, before the block's barrier: the inits visible to the copy engine.
__device__ __forceinline__ void mbar_init_fence() {
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
// One arrival that also announces `bytes` more to land in this phase.
__device__ __forceinline__ void mbar_arrive_expect(uint64_t* bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(bytes)
                 : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_addr(bar)) : "memory");
}
// Returns once the phase of the given parity has completed. The spin stays inside one asm block:
// a loop the compiler saw would be a divergent path to it, and it serializes the warpgroup products
// after one (ptxas C7520).
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
    asm volatile(
        "{\n"
        ".reg .pred done;\n"
        "WAIT:\n"
        "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
        "@!done bra WAIT;\n"
        "}\n" ::"r"(smem_addr(bar)),
        "r"(parity)
        : "memory");
}

// The box of the 4-D tensor map at element coordinates (c0 innermost .. c3) into smem (1024-byte
// aligned for the 128-byte swizzle), counted on bar. tmap: the address of a __grid_constant__
// CUtensorMap kernel parameter.
__device__ __forceinline__ void load_4d(void* smem, const void* tmap, uint64_t* bar, int c0, int c1, int c2,
                                        int c3) {
    asm volatile(
        "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, "
        "%3, %4, "
        "%5}], [%6];\n" ::"r"(smem_addr(smem)),
        "l"(reinterpret_cast<uint64_t>(tmap)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(smem_addr(bar))
        : "memory");
}

// The box of the 2-D tensor map at element coordinates (c0 innermost, c1) into smem, counted on bar.
__device__ __forceinline__ void load_2d(void* smem, const void* tmap, uint64_t* bar, int c0, int c1) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, "
        "%3}], "
        "[%4];\n" ::"r"(smem_addr(smem)),
        "l"(reinterpret_cast<uint64_t>(tmap)), "r"(c0), "r"(c1), "r"(smem_addr(bar))
        : "memory");
}

// Bulk reduction of `bytes` (a multiple of 16) of fp32 from shared memory onto global memory (+=),
// asynchronous, in this thread's bulk group; both addresses 16-byte aligned.
__device__ __forceinline__ void reduce_add_f32(float* gmem, const void* smem, uint32_t bytes) {
    asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n" ::"l"(gmem),
                 "r"(smem_addr(smem)), "r"(bytes)
                 : "memory");
}
__device__ __forceinline__ void bulk_commit() {
    asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
}
// Returns once this thread's bulk groups have all finished reading their shared memory.
__device__ __forceinline__ void bulk_wait_read() {
    asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
}
// Returns once all but this thread's newest N bulk groups have finished reading their shared memory.
template <int N>
__device__ __forceinline__ void bulk_wait_read_pending() {
    asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(N) : "memory");
}
// Returns once they have all completed.
__device__ __forceinline__ void bulk_wait() {
    asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
}

// A barrier of `threads` threads (a multiple of 32) on hardware barrier `id` (0 is __syncthreads's).
__device__ __forceinline__ void named_sync(int id, int threads) {
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
// An arrival on that barrier without waiting for it.
__device__ __forceinline__ void named_arrive(int id, int threads) {
    asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// The warpgroup's registers a thread lowered / raised to N (all its threads together).
template <int N>
__device__ __forceinline__ void regs_dealloc() {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}
template <int N>
__device__ __forceinline__ void regs_alloc() {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
}

}  // namespace mslm::ops::cuda::tma
