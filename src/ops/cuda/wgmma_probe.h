// The Hopper matrix-product building blocks (ops/cuda/wgmma.cuh: wgmma on 128-byte swizzled
// shared-memory tiles, A from shared memory or registers, B K-major or MN-major) checked on one tile,
// for the sm_90a kernels built on them: out (64 × 64, fp32, row-major) = A (64 × K bf16 rows) · B, with
// B given as 64 rows of K (b_kmajor: out = A · Bᵀ) or as K rows of 64; K a multiple of 64. One block
// of one warpgroup; fp32 accumulation in the tensor cores' order.
// Plain C++ header; the definitions exist only in builds with CUDA (wgmma_probe.sm90a.cu).
#pragma once
#include <cstdint>

namespace mslm::ops::cuda {

// Whether the current device runs this build's sm_90a code (compute capability 9.0).
bool wgmma_available();
// Throws when !wgmma_available() or K is not a positive multiple of 64; waits for the stream.
void wgmma_tile_product(float* out, const uint16_t* A, const uint16_t* B, int64_t K, bool b_kmajor,
                        bool a_registers, void* stream = nullptr);

}  // namespace mslm::ops::cuda
