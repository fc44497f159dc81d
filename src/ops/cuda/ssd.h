// CUDA Mamba-2 SSD (state-space duality): forward, backward and the decode step, with the
// semantics of ops/ssd.h (the CPU reference). Per head h (of H, head_dim P), group g = h / (H / G):
//   dt = clamp(softplus(dt_raw + dt_bias), dt_min, dt_max)   A = −exp(A_log)
//   S_t = exp(dt_t · A) · S_{t−1} + dt_t · x_t ⊗ B_t      S: (P, N), always fp32
//   y_t = S_t · C_t + D · x_t
//
// Plain C++ header (no CUDA includes); the definitions exist only in builds with MSLM_HAVE_CUDA.
// T is `float`, or `uint16_t` for bf16 (raw bits, as in core/dtype.h): activations, parameters and
// their gradients are stored as T, every computation is fp32 and states are fp32. All pointers are
// GPU memory; `stream` is a cudaStream_t (nullptr: the default stream); launches are asynchronous
// and a failed launch throws mslm::Error naming the kernel. Shapes and strides are those of
// ops/ssd.h: x (B, T, H, P) row stride ld_x, dt (B, T, H) row stride ld_dt, B and C (B, T, G, N)
// row strides ld_B, ld_C, y (B, T, H, P) contiguous; backward accumulates (+=) into every gradient
// it is given (null: not wanted), with the strides of the corresponding input, and is
// deterministic (no floating-point atomics: sums over heads, chunks and batch run in fixed order).
//
// The chunked algorithm (chunk length Q = min(chunk_size, T)), each step its own kernel:
//   (1) per chunk and head, fp32 dt and the cumulative sums of dt·A (kept in fp64, so that the
//       segment sums cum_t − cum_s carry no cancellation error);
//   (2) C·Bᵀ per chunk and group, shared by the group's heads;
//   (3) each chunk's own end state Σ_s exp(cum_last − cum_s)·dt_s·x_s ⊗ B_s;
//   (4) one sequential pass over the chunks carrying the state: the state entering every chunk;
//   (5) Y = (C·Bᵀ ∘ exp(segsum))·diag(dt)·X + diag(exp(cum))·C·S_inᵀ + D·X.
// The products are shared-memory tiled fp32 (32 × 32 output tiles), except for bf16 storage,
// where every product of the forward and the backward runs on tensor cores (bf16 mma.sync, fp32
// accumulation, 64 × 64 output tiles). Their operands are bf16 inputs, exact; per-row factors (dt,
// the decays) are applied to the fp32 results where they can be; y's two fp32-formed operands (the
// decayed scores (C·Bᵀ ∘ exp(segsum))·diag(dt) and the state S_in) are rounded once to bf16; every
// other fp32-formed operand (the decayed x of the chunk states, and in the backward the scores,
// d(C·Bᵀ), S_in and dS) is split into two bf16, hi + lo, within 2^-16 of it, so that the states and
// the gradients keep near-fp32 accuracy. States stay fp32 and the state passes (4) are fp32 either
// way. MSLM_SSD_TC=0 in the environment selects the fp32 products for bf16 too (ablations);
// MSLM_SSD_STAGE_TIMES=1 prints each call's per-stage milliseconds to stderr (bench_cuda_ssd --stages).
#pragma once
#include <cstddef>
#include <cstdint>
#include <limits>

#include "ops/cuda/kernel_trace.h"
#include "ops/ssd.h"

namespace mslm::ops::cuda {

using ops::SsdDims;
using ops::SsdGrads;  // every pointer T*, in GPU memory

// As ops::SsdInputs, with the dt clamp in fp32 whatever T is (a bf16 T has no infinity to default to).
template <typename T>
struct SsdInputs {
    const T* x;        int64_t ld_x;   // (B, T, H, P)
    const T* dt;       int64_t ld_dt;  // (B, T, H), before bias and softplus
    const T* dt_bias;                  // (H) or null
    const T* A_log;                    // (H)
    const T* Bm;       int64_t ld_B;   // (B, T, G, N)
    const T* Cm;       int64_t ld_C;   // (B, T, G, N)
    const T* D;                        // (H) or null
    float dt_min = 0.0f;
    float dt_max = std::numeric_limits<float>::infinity();
};

// The chunk-boundary states (B, n_chunks, H, P, N) fp32: entry c is the state entering chunk c
// (entry 0 is h0, or zeros). Forward writes them when given a buffer of this many floats;
// backward reads them instead of recomputing.
int64_t ssd_chunk_states_numel(const SsdDims& dims);

// Scratch in GPU memory (bytes, for 256-byte aligned buffers). A workspace of
// ssd_backward_workspace_bytes also serves the forward. workspace = nullptr: the call allocates and
// frees it stream-ordered (cudaMallocAsync / cudaFreeAsync) itself.
size_t ssd_forward_workspace_bytes(const SsdDims& dims);
size_t ssd_backward_workspace_bytes(const SsdDims& dims);

// y (B, T, H, P). h0 / h_last (B, H, P, N) fp32 or null; h_last may be h0 (the state advanced in
// place). chunk_states: null, or ssd_chunk_states_numel(dims) floats, filled for ssd_backward.
template <typename T>
void ssd_forward(T* y, float* h_last, const SsdInputs<T>& in, const float* h0, const SsdDims& dims,
                 float* chunk_states = nullptr, void* workspace = nullptr, void* stream = nullptr);

// Gradients of the loss through y (dy (B, T, H, P) contiguous) for the forward with the same inputs
// and h0 (no gradient flows to h0, none comes from h_last, as in ops::ssd_backward). chunk_states:
// what ssd_forward wrote for these inputs, or null to recompute them from h0.
template <typename T>
void ssd_backward(const SsdGrads<T>& grads, const T* dy, const SsdInputs<T>& in, const float* h0,
                  const float* chunk_states, const SsdDims& dims, void* workspace = nullptr,
                  void* stream = nullptr);

// One recurrent step for k = dims.batch sequences (seqlen and chunk_size are ignored): row i of the
// inputs is the next token of the sequence whose state is h[slots[i]], h (S, H, P, N) fp32; slots
// (k) int64 in GPU memory, distinct. Advances those states in place and writes y (k, H, P), with
// the arithmetic of one step of ops::ssd_forward_sequential. Launched with programmatic dependent
// launch (it waits for its predecessor before reading the inputs). early_state: the caller vouches
// that no kernel that may still be running writes h (the decode step: h's last writer is this
// layer's update in the previous step, and every step starts with a kernel launched without
// programmatic dependent launch), so the state rows are read before the wait. trace: a timing
// record (kernel_trace.h; the decode step's MSLM_DECODE_GEMV_TRACE diagnostics) or null.
template <typename T>
void ssd_update(T* y, float* h, const int64_t* slots, const SsdInputs<T>& in, const SsdDims& dims,
                void* stream = nullptr, bool early_state = false, KernelTrace* trace = nullptr);

// ssd_update with the states stored in bf16 (h (S, H, P, N) as bf16 bit patterns; bf16 inputs only):
// each state value is read, advanced in fp32 and rounded once when stored, and y is formed from the
// unrounded new state — so y and the stored state equal the fp32 kernel's y and round(state), bit
// for bit, given the same (bf16-representable) state before the step. Half the state's bytes a step:
// the decode at large batches streams the states (CudaCausalLM with MSLM_DECODE_STATE=bf16). This is
// what mamba-ssm's and transformers' Mamba-2 caches hold for a bf16 model.
void ssd_update_bf16_state(uint16_t* y, uint16_t* h, const int64_t* slots, const SsdInputs<uint16_t>& in,
                           const SsdDims& dims, void* stream = nullptr, bool early_state = false,
                           KernelTrace* trace = nullptr);

}  // namespace mslm::ops::cuda
