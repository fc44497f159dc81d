// Mamba-2 state-space duality (SSD). Per head h (of H, head_dim P), group g = h / (H / G):
//   dt = clamp(softplus(dt_raw + dt_bias), dt_min, dt_max)   A = −exp(A_log)  (a scalar per head)
//   S_t = exp(dt_t · A) · S_{t−1} + dt_t · x_t ⊗ B_t      S: (P, N)
//   y_t = S_t · C_t + D · x_t
// `ssd_forward` uses the chunked algorithm (intra-chunk quadratic form + inter-chunk state
// passing); `ssd_forward_sequential` is the plain recurrence kept as the test reference.
#pragma once
#include <cstdint>
#include <limits>

namespace mslm::ops {

struct SsdDims {
    int64_t batch, seqlen, n_heads, head_dim, n_groups, d_state, chunk_size;
};

template <typename T>
struct SsdInputs {
    const T* x;        int64_t ld_x;   // (B, T, H, P), row stride ld_x between tokens
    const T* dt;       int64_t ld_dt;  // (B, T, H), before bias and softplus
    const T* dt_bias;                  // (H) or null
    const T* A_log;                    // (H)
    const T* Bm;       int64_t ld_B;   // (B, T, G, N)
    const T* Cm;       int64_t ld_C;   // (B, T, G, N)
    const T* D;                        // (H) or null
    // dt is clamped to [dt_min, dt_max] after the softplus (HF time_step_limit); the gradient is
    // zero where the clamp is active.
    T dt_min = T(0);
    T dt_max = std::numeric_limits<T>::infinity();
};

template <typename T>
struct SsdGrads {
    T* dx; T* ddt; T* ddt_bias; T* dA_log; T* dB; T* dC; T* dD;
    // false: every gradient is added to what its buffer holds. true: dx, ddt, dB and dC (activation
    // gradients, laid out as x, dt, B and C) are written instead, so their buffers need no zeroing
    // first; the parameter gradients (ddt_bias, dA_log, dD) are still added to.
    bool overwrite = false;
};

// y (B, T, H, P) contiguous; h0 / h_last (B, H, P, N) or null; h_last may be h0 (the state
// advanced in place).
template <typename T>
void ssd_forward(T* y, T* h_last, const SsdInputs<T>& in, const T* h0, const SsdDims& dims);
template <typename T>
void ssd_forward_sequential(T* y, T* h_last, const SsdInputs<T>& in, const T* h0, const SsdDims& dims);
// The recurrence again, vectorised over d_state for float where the CPU and d_state allow (else
// ssd_forward_sequential): on a CPU this is the fastest prefill, about 2·P·N multiply-adds per token
// and head against the chunked form's 2·P·(L + 2N) at its matrix-product efficiency (DESIGN §5 note
// in docs/ARCHITECTURE.md). Same arithmetic per token as ssd_update, so prefill and decoding agree.
template <typename T>
void ssd_forward_recurrent(T* y, T* h_last, const SsdInputs<T>& in, const T* h0, const SsdDims& dims);
template <typename T>
void ssd_backward(const SsdGrads<T>& grads, const T* dy, const SsdInputs<T>& in, const T* h0, const SsdDims& dims);

// One recurrent step for k = dims.batch sequences (dims.seqlen and chunk_size are ignored): row i
// of the inputs is the next token of the sequence whose state is h[slots[i]], h (S, H, P, N);
// slots must be distinct. Advances those states in place and writes y (k, H, P) with the
// arithmetic of one step of ssd_forward_sequential.
template <typename T>
void ssd_update(T* y, T* h, const int64_t* slots, const SsdInputs<T>& in, const SsdDims& dims);

// ssd_update with the states stored in bf16 (h (S, H, P, N) as bf16 bit patterns; N a multiple of 8,
// ssd_update_bf16_state_supported): each state value is widened, advanced in fp32 exactly as
// ssd_update does, and rounded once (nearest even) when stored; y comes from the unrounded state.
// So y and the stored states equal ssd_update's y and f32_to_bf16(state), bit for bit, given the same
// (bf16-representable) states before the step. Half the state's bytes: the batched decode's state
// traffic (InferenceState with MSLM_DECODE_STATE=bf16).
void ssd_update_bf16_state(float* y, uint16_t* h, const int64_t* slots, const SsdInputs<float>& in,
                           const SsdDims& dims);
bool ssd_update_bf16_state_supported(int64_t d_state);

}  // namespace mslm::ops
