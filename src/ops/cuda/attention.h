// CUDA causal multi-head attention, decode attention and rotary embeddings, on buffers in GPU
// memory. The semantics are those of ops/attention.h (the CPU reference): GQA (query head h reads
// KV head h / (Hq / Hkv)), scale, ALiBi with the slopes of ops::alibi_slopes, sliding window
// counting the query itself, q_offset (forward only), strided q/k/v rows (slices of one fused
// projection) and backward accumulating (+=) into every gradient it produces (or writing it, with
// accumulate = false).
//
// Two differences from the CPU signatures, both for precision or the GPU:
// - lse (B, Hq, T) is fp32 whatever T is: the backward recomputes p = exp(s − lse), so a bf16 lse
//   (|lse| ≈ 5, half-ulp 2^-7) would put ~1% errors into every weight.
// - attention_decode needs no scores workspace (it keeps an online softmax in registers), and its
//   slots and pos live in GPU memory.
//
// Plain C++ header (no CUDA includes); the definitions exist only in builds with MSLM_HAVE_CUDA.
// T is `float`, or `uint16_t` for bf16 (raw bits, as in core/dtype.h): loads are decoded to fp32,
// all math is fp32 and stores round once, to nearest even. head_dim ≤ 128 (32, 64 and 128 run
// without padding; other sizes are zero-padded to the next of these). `stream` is a cudaStream_t;
// nullptr is the default stream. Launches are asynchronous; a launch that fails, or a shape the
// kernels do not take, throws mslm::Error naming the kernel.
//
// Tensor cores: bf16 with head_dim 64 or 128 runs attention_forward and attention_backward on
// FlashAttention-2-style mma.sync kernels (bf16 operands, fp32 accumulation, softmax statistics,
// row sums, lse and D = rowsum(dout ∘ out) in fp32). Beyond the fp32 kernels they round the
// softmax weights p (forward P·V, backward Pᵀ·dout) and the score gradients ds (ds·K, dsᵀ·Q) once
// each to bf16: a relative 2^-8 per term of those sums. The backward stays deterministic (no
// atomics) and takes a B·Hq·T fp32 scratch for D from the stream-ordered allocator
// (cudaMallocAsync on `stream`). MSLM_ATTN_TC=0 in the environment (read at every call) selects
// the fp32 kernels instead; f32, other head dims and attention_decode always run them. Rows whose
// stride and address are multiples of 16 bytes are staged with cp.async, others with plain loads.
#pragma once
#include <cstdint>

#include "ops/attention.h"

namespace mslm::ops::cuda {

using ops::AttentionDims;
using AttentionOptions = ops::AttentionOptions<float>;

constexpr int64_t kAttentionMaxHeadDim = 128;

// q (B, T, Hq, Dh) row stride ld_q; k, v (B, q_offset + T, Hkv, Dh) row strides ld_k, ld_v.
// out (B, T, Hq, Dh) contiguous; lse (B, Hq, T) fp32.
template <typename T>
void attention_forward(T* out, float* lse, const T* q, int64_t ld_q, const T* k, int64_t ld_k, const T* v,
                       int64_t ld_v, const AttentionDims& dims, const AttentionOptions& opt,
                       void* stream = nullptr);

// dq, dk, dv (each may be nullptr to skip it) use the strides of q, k, v and are accumulated (+=),
// or written with opt.accumulate = false;
// dout and out (B, T, Hq, Dh) contiguous; lse as saved by the forward. q_offset must be 0.
// Deterministic: no atomics, every gradient element is summed by one thread in a fixed order.
template <typename T>
void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* out, const float* lse, const T* q,
                        int64_t ld_q, const T* k, int64_t ld_k, const T* v, int64_t ld_v,
                        const AttentionDims& dims, const AttentionOptions& opt, void* stream = nullptr);

// One query per sequence against its KV cache; dims.batch = number of queries, dims.seqlen = L.
// Row i of q (row stride ld_q) is the token at position pos[i] ≥ 0 of the sequence in cache slot
// slots[i]; k_cache, v_cache (S, L, Hkv, Dh) are ring buffers holding position p at row p % L, the
// query's own key and value already written. The query sees positions
// max(0, pos − L + 1, pos − window + 1) .. pos. out (k, Hq, Dh). slots and pos in GPU memory.
template <typename T>
void attention_decode(T* out, const T* q, int64_t ld_q, const T* k_cache, const T* v_cache,
                      const int64_t* slots, const int64_t* pos, const AttentionDims& dims,
                      const AttentionOptions& opt, void* stream = nullptr);

// Rotary embedding in place, as ops::rope_apply: x (B, T, H, Dh) row stride ld, positions pos0 + t,
// HF rotate_half pairs (i, i + rotary_dim/2) in the first rotary_dim channels; `inverse` turns
// back (the backward, applied to the gradient). Angles are computed in double, the rotation in fp32.
template <typename T>
void rope_apply(T* x, int64_t ld, int64_t B, int64_t Tn, int64_t H, int64_t Dh, int64_t rotary_dim,
                double theta, int64_t pos0, bool inverse, void* stream = nullptr);
// The same for N rows at their own positions pos (N, in GPU memory).
template <typename T>
void rope_apply_at(T* x, int64_t ld, int64_t N, int64_t H, int64_t Dh, int64_t rotary_dim, double theta,
                   const int64_t* pos, bool inverse, void* stream = nullptr);

}  // namespace mslm::ops::cuda
