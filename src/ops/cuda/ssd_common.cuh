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

// ---- the backward head's pieces shared by its mma.sync and warpgroup kernels. A warp owns rows
// 16·warp + grp and + 8 of the 64 × 64 tile (s rows, p columns), a thread columns 8j + 2·quad + odd
// (j < 8): acc(j, i) is its accumulator register i = 2·hf + odd of n8 block j (mma.sync's C layout,
// which is also the warpgroup accumulator's, register 4j + i).
struct HeadLanes {
    int warp, grp, quad;
    __device__ HeadLanes() : warp(threadIdx.x / 32), grp(threadIdx.x % 32 / 4), quad(threadIdx.x % 4) {}
    __device__ int row(int hf) const { return 16 * warp + grp + 8 * hf; }
};

// Σ over a thread's 16 columns of f(j, odd), then over its quad: row hf's sum in every lane of the quad.
template <class F>
__device__ __forceinline__ float head_row_sum(F f) {
    float v = 0.0f;
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int odd = 0; odd < 2; ++odd) v += f(j, odd);
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    v += __shfl_xor_sync(0xffffffffu, v, 2);
    return v;
}

__device__ __forceinline__ float tile_f32(const __nv_bfloat16 (&tile)[kSt][kStLd], int r, int col) {
    return __bfloat162float(tile[r][col]);
}

// This thread's C·Bᵀ values of 16-deep slice kk of an M step whose t tile starts at t0, in the A
// fragment's layout of Mᵀ: register r holds s row s0 + sl_lo + 8·(r % 2) and t columns
// t0 + 16·kk + 2·quad + 8·(r / 2) (.x) and the next (.y); zeros outside the chunk of L tokens.
__device__ __forceinline__ void head_load_cb_slice(float2 (&cbv)[4], const float* cb, int64_t Q, int64_t L,
                                                   int64_t s0, int64_t t0, int kk, int sl_lo, int quad) {
#pragma unroll
    for (int r = 0; r < 4; ++r) {
        const int64_t sv = s0 + sl_lo + 8 * (r % 2), t = t0 + 16 * kk + 2 * quad + 8 * (r / 2);
        const float* src = cb + t * Q + sv;
        cbv[r].x = sv < L && t < L ? src[0] : 0.0f;
        cbv[r].y = sv < L && t + 1 < L ? src[Q] : 0.0f;
    }
}

// Slice kk of Mᵀ (M[t, s] = CB[t, s]·exp(cum_t − cum_s) for s ≤ t < L) in those registers, split into
// hi (ah) and lo (al); cum_t: the step's t rows (local), cum_s: the s tile's.
__device__ __forceinline__ void head_m_slice(uint32_t (&ah)[4], uint32_t (&al)[4], const float2 (&cbv)[4],
                                             int64_t L, int64_t s0, int64_t t0, int kk, int sl_lo, int quad,
                                             const double* cum_t, const double* cum_s) {
#pragma unroll
    for (int r = 0; r < 4; ++r) {
        const int sl = sl_lo + 8 * (r % 2), tl = 16 * kk + 2 * quad + 8 * (r / 2);
        const int64_t sv = s0 + sl, t = t0 + tl;
        const float v0 = t < L && sv <= t ? cbv[r].x * exp_diff(cum_t[tl], cum_s[sl]) : 0.0f;
        const float v1 = t + 1 < L && sv <= t + 1 ? cbv[r].y * exp_diff(cum_t[tl + 1], cum_s[sl]) : 0.0f;
        ah[r] = split_pair_hi(v0, v1, al[r]);
    }
}

// After the V steps (acc = V = B_s·dSᵀ): the row sums q_s = decay_s·dt_s·⟨x_s, V_s⟩ into q, then
// acc *= decay_s (decay_s = exp(cum_last − cum_s), 0 past the chunk).
template <class Acc>
__device__ __forceinline__ void head_after_v(const Acc& acc, float (&q)[2],
                                             const __nv_bfloat16 (&xs)[kSt][kStLd], const double* cum_s,
                                             const float* dt_s, double cum_last, int rows_s,
                                             const HeadLanes& ln) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
        const int sl = ln.row(hf);
        const float decay = sl < rows_s ? exp_diff(cum_last, cum_s[sl]) : 0.0f;
        const float xv = head_row_sum([&](int j, int odd) {
            return tile_f32(xs, sl, 8 * j + 2 * ln.quad + odd) * acc(j, 2 * hf + odd);
        });
        q[hf] += decay * dt_s[sl] * xv;
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
            for (int odd = 0; odd < 2; ++odd) acc(j, 2 * hf + odd) *= decay;
    }
}

// acc = dX̃ of a p tile: dx += dt_s·dX̃ + D·dY (or written, with a.overwrite), a row (token s) at a
// time, its 16 old values loaded before any is stored; and the row sums ⟨x, dX̃⟩ into xdx and ⟨dY, x⟩
// into dyx. dxrow0: dx's row of the tile's first token at this head and p tile (null: no dx).
template <typename T, class Acc>
__device__ __forceinline__ void head_dx(const Args<T>& a, const Acc& acc, T* dxrow0, float Dh,
                                        const __nv_bfloat16 (&xs)[kSt][kStLd],
                                        const __nv_bfloat16 (&dys)[kSt][kStLd], const float* dt_s, int rows_s,
                                        int cols_p, float (&xdx)[2], float (&dyx)[2], const HeadLanes& ln) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
        const int sl = ln.row(hf);
        const bool in_s = sl < rows_s;
        const float dts = dt_s[sl];
        T* dxrow = dxrow0 ? dxrow0 + sl * a.ld_x : nullptr;
        float old[8][2];
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
            for (int odd = 0; odd < 2; ++odd) {
                const int pl = 8 * j + 2 * ln.quad + odd;
                old[j][odd] = !a.overwrite && dxrow && in_s && pl < cols_p ? to_f32(dxrow[pl]) : 0.0f;
            }
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
            for (int odd = 0; odd < 2; ++odd) {
                const int pl = 8 * j + 2 * ln.quad + odd;
                if (dxrow && in_s && pl < cols_p)
                    dxrow[pl] =
                        from_f32<T>(old[j][odd] + dts * acc(j, 2 * hf + odd) + Dh * tile_f32(dys, sl, pl));
            }
        xdx[hf] += head_row_sum([&](int j, int odd) {
            return tile_f32(xs, sl, 8 * j + 2 * ln.quad + odd) * acc(j, 2 * hf + odd);
        });
        dyx[hf] += head_row_sum([&](int j, int odd) {
            const int pl = 8 * j + 2 * ln.quad + odd;
            return tile_f32(dys, sl, pl) * tile_f32(xs, sl, pl);
        });
    }
}

// The per-token sums of the s tile's rows into tok's slots (Z's only when the kernel formed it).
__device__ __forceinline__ void head_store_tok(float* tok, int64_t n_tok, int64_t at0,
                                               const float (&tk)[4][2], bool with_z, int rows_s,
                                               const HeadLanes& ln) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
        const int sl = ln.row(hf);
        float* at = tok + at0 + sl;
        if (ln.quad == 0 && sl < rows_s) {
            at[kTokXdx * n_tok] = tk[0][hf];
            at[kTokQ * n_tok] = tk[1][hf];
            at[kTokDyX * n_tok] = tk[3][hf];
            if (with_z) at[kTokZ * n_tok] = tk[2][hf];
        }
    }
}

// The backward head on Hopper's warpgroup products (ssd_wgmma.sm90a.cu; only where wgmma_available()):
// its launch over grid (B·n_chunks·H, mma_tiles(Q)) with the arguments of
// ssd_backward_head_tc_kernel<T, true, false> (⟨dY, C·S_inᵀ⟩ from the dC kernel).
cudaError_t launch_backward_head_wgmma(const Args<__nv_bfloat16>& a, const __nv_bfloat16* dy, const float* CB,
                                       const float* dS_all, __nv_bfloat16* dx, float* tok, dim3 grid,
                                       cudaStream_t stream);

}  // namespace mslm::ops::cuda::ssd_detail
