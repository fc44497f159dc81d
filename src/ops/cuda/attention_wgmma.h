// Causal attention on Hopper's warpgroup products, TMA and shared-memory barriers
// (attention_wgmma.sm90a.cu), taken by ops::cuda::attention_forward / attention_backward where it
// applies (MSLM_ATTN_WGMMA=0, read at every call, keeps the mma.sync kernels): bf16, head dims 64 and
// 128, no ALiBi, no window, q_offset 0, a positive scale. The same function as the mma.sync
// kernels (attention.cu): scores and products in fp32 accumulators, the softmax weights and score gradients
// rounded once to bf16 for their products, lse = m·ln 2 + ln l in fp32.
//
// Forward: a producer warpgroup streams 128-key K and V tiles by TMA into three stages
// (MSLM_ATTN_WGMMA_STAGES=2: two); three consumer warpgroups (MSLM_ATTN_WGMMA_WG=2: two) of 64 query
// rows each compute S = Q·Kⱼᵀ, then O += Pⱼ₋₁·Vⱼ₋₁ while tile j's softmax runs, and issue their
// products in turn (MSLM_ATTN_WGMMA_PP=0: freely). Backward: below. Plain C++ header.
#pragma once
#include <cstddef>
#include <cstdint>

namespace mslm::ops::cuda {

// Whether the forward takes the call: a compute capability 9.0 device with the sm_90a code, the
// options above, head dim 64 or 128 (two consumer warpgroups, each tile as two 64-column halves),
// 16-byte aligned rows. The backward takes the same calls.
bool attention_forward_wgmma_takes(int64_t head_dim, bool alibi, float scale, int64_t q_offset,
                                   int64_t window, const void* q, int64_t ld_q, const void* k, int64_t ld_k,
                                   const void* v, int64_t ld_v);
bool attention_backward_wgmma_takes(int64_t head_dim, bool alibi, float scale, int64_t q_offset,
                                    int64_t window, const void* q, int64_t ld_q, const void* k, int64_t ld_k,
                                    const void* v, int64_t ld_v);
// q (B, T, Hq, head_dim) row stride ld_q; k, v (B, T, Hkv, head_dim) row strides ld_k, ld_v; out
// (B, T, Hq, head_dim) contiguous; lse (B, Hq, T) fp32. Asynchronous on `stream`.
void attention_forward_wgmma(uint16_t* out, float* lse, const uint16_t* q, int64_t ld_q, const uint16_t* k,
                             int64_t ld_k, const uint16_t* v, int64_t ld_v, int64_t B, int64_t T, int64_t Hq,
                             int64_t Hkv, int64_t head_dim, float scale, void* stream);

// The backward (dq, dk, dv each nullable, accumulated += or, with accumulate false, written; rows
// of q's, k's and v's strides; dout
// (B, T, Hq, head_dim) contiguous; lse as the forward saved it; delta (B, Hq, T) = rowsum(dout ∘ out) in
// fp32): one kernel over 128-key blocks computes dK and dV and adds dQ's parts onto an fp32
// accumulator in `scratch` (attention_backward_wgmma_scratch floats, zeroed here), a second adds it
// to dq. The softmax weights and score gradients rounded once to bf16 for their products, as in
// the mma.sync kernels.
size_t attention_backward_wgmma_scratch(int64_t B, int64_t T, int64_t Hq, int64_t head_dim);
void attention_backward_wgmma(uint16_t* dq, uint16_t* dk, uint16_t* dv, const uint16_t* dout,
                              const float* lse, const float* delta, const uint16_t* q, int64_t ld_q,
                              const uint16_t* k, int64_t ld_k, const uint16_t* v, int64_t ld_v, int64_t B,
                              int64_t T, int64_t Hq, int64_t Hkv, int64_t head_dim, float scale,
                              bool accumulate, float* scratch, void* stream);

}  // namespace mslm::ops::cuda
