// CUDA RMSNorm, LayerNorm and Mamba-2's grouped gated RMSNorm, on buffers in GPU memory, plus the
// fused residual add + RMSNorm of every block boundary. The semantics are those of ops/norm.h (the
// CPU reference): same layouts and formulas, backward accumulates (+=) into every gradient it
// produces, and a null gradient pointer means "not needed".
//
// Plain C++ header (no CUDA includes). T is `float`, or `uint16_t` for bf16 (raw bits, as in
// core/dtype.h): kernels load T, compute in fp32 and round once, to nearest even, on store. The saved
// statistics (mean, rstd) are always fp32. `stream` is a cudaStream_t (nullptr: the default stream);
// launches are asynchronous and a failed launch throws mslm::Error naming the kernel. Buffers are
// contiguous and do not overlap unless said.
//
// Parameter gradients are deterministic without float atomics: the backward kernel writes one
// partial sum of dw (and db) per thread block into `workspace`, each block summing a fixed set of
// rows in a fixed order, and a second kernel adds the partials into dw column by column in block
// order. The number of blocks depends only on N, so results are bitwise reproducible on any GPU.
#pragma once
#include <cstddef>
#include <cstdint>

#include "ops/cuda/grad_store.h"

namespace mslm::ops::cuda {

// Bytes of GPU memory `workspace` must hold for any of the backward passes below with these N and
// D (16-byte aligned, e.g. from cudaMalloc). Not read before it is written; callers may share one
// buffer among all the norms of a model that run on one stream.
size_t norm_backward_workspace_bytes(int64_t N, int64_t D);

// out (N, D) = x / sqrt(mean(x²) + eps) · w; w (D); rstd (N) saved for backward.
template <typename T>
void rmsnorm_forward(T* out, float* rstd, const T* x, const T* w, int64_t N, int64_t D, float eps,
                     void* stream = nullptr);

// The block boundary `x += mixer(...)` fused with the next norm: res (N, D) += x (N, D), then
// out (N, D) = rmsnorm(res) · w as above. The norm reads res as stored (rounded to T), so the
// backward, given res, sees exactly what the forward normalised.
template <typename T>
void residual_rmsnorm_forward(T* out, float* rstd, T* res, const T* x, const T* w, int64_t N, int64_t D,
                              float eps, void* stream = nullptr);
// The same into another buffer: res (N, D) = res_in + x, then out = rmsnorm(res) · w — the training
// forward's block boundary, whose incoming residual (a saved activation) stays. res_in may be res
// (the call above); x must not overlap either.
template <typename T>
void residual_rmsnorm_forward(T* out, float* rstd, T* res, const T* res_in, const T* x, const T* w, int64_t N,
                              int64_t D, float eps, void* stream = nullptr);

// With x̂ = x·rstd and g = dout·w: dx (N, D) += rstd · (g − x̂ · mean(g·x̂)); dw (D) += Σ_n dout·x̂.
template <typename T>
void rmsnorm_backward(T* dx, T* dw, void* workspace, const T* dout, const T* x, const T* w, const float* rstd,
                      int64_t N, int64_t D, void* stream = nullptr);

// out (N, D) = (x − mean) · rstd · w + b; b may be null. mean, rstd (N) saved.
template <typename T>
void layernorm_forward(T* out, float* mean, float* rstd, const T* x, const T* w, const T* b, int64_t N,
                       int64_t D, float eps, void* stream = nullptr);

// With x̂ = (x − mean)·rstd and g = dout·w: dx += rstd · (g − mean(g) − x̂ · mean(g·x̂));
// dw += Σ_n dout·x̂; db += Σ_n dout.
template <typename T>
void layernorm_backward(T* dx, T* dw, T* db, void* workspace, const T* dout, const T* x, const T* w,
                        const float* mean, const float* rstd, int64_t N, int64_t D, void* stream = nullptr);

// Mamba-2's grouped gated RMSNorm (norm_before_gate = False): g = x · silu(z),
// out = g / sqrt(mean_group(g²) + eps) · w over each of G contiguous groups of D/G channels.
// x, z, out (N, D); w (D); rstd (N, G) saved.
template <typename T>
void gated_rmsnorm_forward(T* out, float* rstd, const T* x, const T* z, const T* w, int64_t N, int64_t D,
                           int64_t G, float eps, void* stream = nullptr);
// The same with z's rows ld_z ≥ D apart: z read in place as D columns of a wider matrix (the decode
// step's in_proj output [z | xBC | dt]) instead of copied out first. Bit for bit with the contiguous
// call when both take 16-byte loads (z aligned, ld_z a multiple of the vector width); otherwise the
// sums run in another order, within the same bound.
template <typename T>
void gated_rmsnorm_forward_strided_z(T* out, float* rstd, const T* x, const T* z, int64_t ld_z, const T* w,
                                     int64_t N, int64_t D, int64_t G, float eps, void* stream = nullptr);

// Per group, with ĝ = g·rstd and h = dout·w: dg = rstd · (h − ĝ · mean(h·ĝ)), dx += dg · silu(z),
// dz += dg · x · silu'(z), dw += Σ_n dout·ĝ. g is recomputed from x and z. store Overwrite: dx and dz
// get the bits a zeroed buffer's += gives, without the zeroing (dw still adds).
template <typename T>
void gated_rmsnorm_backward(T* dx, T* dz, T* dw, void* workspace, const T* dout, const T* x, const T* z,
                            const T* w, const float* rstd, int64_t N, int64_t D, int64_t G,
                            void* stream = nullptr, GradStore store = GradStore::Add);

// The same with z and dz rows ld_z and ld_dz elements apart (≥ D): z read in place from the in
// projection's output [z | xBC | dt] and dz written straight into its gradient's z columns, instead of
// through contiguous copies. Bit for bit with the contiguous call when both take 16-byte loads (z and
// dz aligned, the strides multiples of the vector width); otherwise the sums run in another order,
// within the same bound.
template <typename T>
void gated_rmsnorm_backward_strided_z(T* dx, T* dz, int64_t ld_dz, T* dw, void* workspace, const T* dout,
                                      const T* x, const T* z, int64_t ld_z, const T* w, const float* rstd,
                                      int64_t N, int64_t D, int64_t G, void* stream = nullptr,
                                      GradStore store = GradStore::Add);

}  // namespace mslm::ops::cuda
