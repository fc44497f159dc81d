#pragma once
#include <cstdint>

namespace mslm::ops {

// Causal depthwise conv1d over time, channels last, as Mamba uses it (PyTorch Conv1d with
// groups = C, padding K − 1, output cut to the first T steps):
//   out[b, t, c] = bias[c] + Σ_k w[c, k] · x[b, t − (K − 1) + k, c]   (x before t = 0 is 0)
// then SiLU when `silu`. x (B, T, C) with row stride ld_x between tokens (it is often a slice of
// a wider projection); out (B, T, C) contiguous; w (C, K); bias (C) or null.
// pre (B, T, C) receives the pre-activation when `silu` and pre != null; the backward does not
// need it (it recomputes the K-tap sum, cheaper than keeping (B, T, C) values alive).
template <typename T>
void conv1d_causal_forward(T* out, T* pre, const T* x, int64_t ld_x, const T* w, const T* bias, int64_t B, int64_t Tn,
                           int64_t C, int64_t K, bool silu);
// dx uses the same row stride as x. Any of dx, dw, dbias may be null.
template <typename T>
void conv1d_causal_backward(T* dx, T* dw, T* dbias, const T* dout, const T* x, int64_t ld_x, const T* w,
                            const T* bias, int64_t B, int64_t Tn, int64_t C, int64_t K, bool silu);

// One decoding step for k sequences (causal-conv1d's `causal_conv1d_update`). Each sequence keeps
// its last K − 1 inputs as a window in `state` (S, K − 1, C), oldest row first; row i of x
// (k, C, row stride ld_x) is the next input of the sequence in state slot slots[i] (distinct
// slots). out (k, C) is what conv1d_causal_forward gives at that token over the whole history
// (a zero window is the zero padding before t = 0), summed in the same order; the window then
// shifts by one row and ends with x.
template <typename T>
void conv1d_causal_update(T* out, T* state, const int64_t* slots, const T* x, int64_t ld_x, const T* w,
                          const T* bias, int64_t k, int64_t C, int64_t K, bool silu);

}  // namespace mslm::ops
