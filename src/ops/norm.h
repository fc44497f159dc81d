#pragma once
#include <cstdint>

namespace mslm::ops {

// RMSNorm over the last dim: out = x / sqrt(mean(x²) + eps) · w. x, out (N, D); w (D);
// rstd (N) saved for backward.
template <typename T>
void rmsnorm_forward(T* out, T* rstd, const T* x, const T* w, int64_t N, int64_t D, T eps);
template <typename T>
void rmsnorm_backward(T* dx, T* dw, const T* dout, const T* x, const T* w, const T* rstd, int64_t N, int64_t D);

// LayerNorm: out = (x − mean) · rstd · w + b; b may be null. mean, rstd (N) saved.
template <typename T>
void layernorm_forward(T* out, T* mean, T* rstd, const T* x, const T* w, const T* b, int64_t N, int64_t D, T eps);
template <typename T>
void layernorm_backward(T* dx, T* dw, T* db, const T* dout, const T* x, const T* w, const T* mean, const T* rstd,
                        int64_t N, int64_t D);

// Mamba-2's grouped gated RMSNorm (norm_before_gate = False):
//   g = x · silu(z); out = g / sqrt(mean_group(g²) + eps) · w
// x, z, out (N, D); w (D); the mean runs over each of G contiguous groups of D/G channels.
// rstd (N, G) saved.
template <typename T>
void gated_rmsnorm_forward(T* out, T* rstd, const T* x, const T* z, const T* w, int64_t N, int64_t D, int64_t G,
                           T eps);
template <typename T>
void gated_rmsnorm_backward(T* dx, T* dz, T* dw, const T* dout, const T* x, const T* z, const T* w, const T* rstd,
                            int64_t N, int64_t D, int64_t G);

}  // namespace mslm::ops
