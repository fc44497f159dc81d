// The SSD's CUDA kernels' shared pieces (ssd.cu, and the Hopper kernels of ssd_wgmma.sm90a.cu): the
// arguments every kernel reads, a chunk's extent, the fp64-difference exponential, the tensor-core
// tiles' shapes and the backward's per-token slots. ssd.cu's header comment describes the algorithm.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "ops/cuda/common.cuh"
#include "ops/cuda/mma.cuh"

namespace mslm::ops::cuda::ssd_detail {

using namespace detail;

template <typename T>  // T: float or __nv_bfloat16
struct Args {
    const T* x;
    int64_t ld_x;
    const T* dt;
    int64_t ld_dt;
    const T* dt_bias;
    const T* A_log;
    const T* Bm;
    int64_t ld_B;
    const T* Cm;
    int64_t ld_C;
    const T* D;
    float dt_min, dt_max;
    int64_t batch, seqlen, H, P, G, N, Q, n_chunks, heads_per_group;
    const float* dtv;   // (B, H, T)
    const double* cum;  // (B, H, T)
    bool overwrite;     // the backward's tensor-core kernels write dx, ddt, dB, dC (SsdGrads::overwrite)
};

// One chunk of one sequence: tokens [t0, t0 + L), flattened rows [row0, row0 + L).
struct Chunk {
    int64_t b, c, t0, L, row0;
};

template <typename T>
__device__ __forceinline__ Chunk chunk_of(const Args<T>& a, int64_t b, int64_t c) {
    const int64_t t0 = c * a.Q;
    return {b, c, t0, min(a.Q, a.seqlen - t0), b * a.seqlen + t0};
}

// exp of a segment sum, the difference taken in fp64 (exact enough that only the fp32 steps round):
// 2^(log2(e)·d) on the special-function unit, relative error about 2^-22 plus 2^-24·|d·log2(e)|
// from the product (both far below the bf16 rounding of the scores they make); results below 2^-126
// (d < −87) flush to 0.
__device__ __forceinline__ float exp_diff(double hi, double lo) {
    return fast_exp2(static_cast<float>(hi - lo) * 1.44269504f);
}

// Tiles of the tensor-core kernels (64 rows or columns) covering n.
__host__ __device__ inline int64_t mma_tiles(int64_t n) {
    return (n + kMmaM - 1) / kMmaM;
}

// ---- the tiles of the staged tensor-core kernels (output, backward)
// Tiles: 64 × 64, 4 warps, warp w owning output rows 16w .. 16w + 15 and all 64 columns (8 n8
// tiles), so a row's sum is one warp's (quad shuffles). Shared rows 72 bf16 = 144 bytes: ldmatrix
// rows 16-byte aligned, and 8 rows at 144-byte pitch fall in distinct bank quads.
constexpr int kSt = 64, kStLd = 72;
// fp32 tiles (split by their readers): rows of 68 floats (272 bytes, 16-byte aligned); a warp's
// column-pair loads (rows 2q + const, columns grp + const) then fall in 32 distinct banks.
constexpr int kF32Ld = kSt + 4;
static_assert(kSt == kMmaM, "tiles of the grids and slots are per mma_tiles(Q) tile");

// The per-token sums' slots in Workspace::tok: ⟨x, dX̃⟩, q, ⟨dY, x⟩, then ⟨dY, Z⟩ (Z = C·S_inᵀ): in
// slot kTokZ alone when the head kernel forms Z, or one partial per 64-column n tile from kTokZ on
// when the dC kernel takes it from its own dY·S_in product (Σ_n C·(dY·S_in) = ⟨dY, C·S_inᵀ⟩).
constexpr int kTokXdx = 0, kTokQ = 1, kTokDyX = 2, kTokZ = 3;

// The backward head on Hopper's warpgroup products (ssd_wgmma.sm90a.cu; only where wgmma_available()):
// its launch over grid (B·n_chunks·H, mma_tiles(Q)) with the arguments of
// ssd_backward_head_tc_kernel<T, true, false> (⟨dY, C·S_inᵀ⟩ from the dC kernel).
cudaError_t launch_backward_head_wgmma(const Args<__nv_bfloat16>& a, const __nv_bfloat16* dy, const float* CB,
                                       const float* dS_all, __nv_bfloat16* dx, float* tok, dim3 grid,
                                       cudaStream_t stream);

}  // namespace mslm::ops::cuda::ssd_detail
