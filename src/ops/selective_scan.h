// Mamba-1 selective scan (S6), per channel d and state n:
//   delta = softplus(delta_raw + delta_bias)        A = −exp(A_log)
//   h_t = exp(delta_t · A) · h_{t−1} + delta_t · B_t · u_t
//   y_t = C_t · h_t + D · u_t ;  y_t ·= silu(z_t) when z is given
#pragma once
#include <cstdint>

namespace mslm::ops {

struct ScanDims {
    int64_t batch, seqlen, d_inner, d_state;
};

// Sequence inputs have a row stride between tokens (ld_*) because they are usually slices of a
// wider projection; everything else is contiguous.
template <typename T>
struct SelectiveScanInputs {
    const T* u;          int64_t ld_u;      // (B, T, Din)
    const T* delta;      int64_t ld_delta;  // (B, T, Din), before bias and softplus
    const T* delta_bias;                    // (Din) or null
    const T* A_log;                         // (Din, N)
    const T* Bm;         int64_t ld_B;      // (B, T, N)
    const T* Cm;         int64_t ld_C;      // (B, T, N)
    const T* D;                             // (Din) or null
    const T* z;          int64_t ld_z;      // (B, T, Din) or null (no gate)
};

// Gradients, laid out like the inputs (same row strides). Null = not needed.
template <typename T>
struct SelectiveScanGrads {
    T* du; T* ddelta; T* ddelta_bias; T* dA_log; T* dB; T* dC; T* dD; T* dz;
};

// y (B, T, Din) contiguous; h0 (B, Din, N) initial state or null (zeros); h_last (B, Din, N)
// final state or null. h_last may be h0 (the state advanced in place).
template <typename T>
void selective_scan_forward(T* y, T* h_last, const SelectiveScanInputs<T>& in, const T* h0, const ScanDims& dims);
// dy (B, T, Din) contiguous. Recomputes what it needs from the inputs (h0 must match forward).
template <typename T>
void selective_scan_backward(const SelectiveScanGrads<T>& grads, const T* dy, const SelectiveScanInputs<T>& in,
                             const T* h0, const ScanDims& dims);

// One recurrent step for k sequences (mamba_ssm's `selective_state_update`): row i of the inputs
// (k rows, strides as above) is the next token of the sequence whose state is h[slots[i]], h
// (S, Din, N); slots must be distinct. Advances those states in place and writes y (k, Din) with
// the arithmetic of one step of selective_scan_forward.
template <typename T>
void selective_scan_update(T* y, T* h, const int64_t* slots, const SelectiveScanInputs<T>& in, int64_t k,
                           int64_t d_inner, int64_t d_state);

}  // namespace mslm::ops
