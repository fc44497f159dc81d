// CUDA causal depthwise conv1d (+ optional SiLU), its backward and the one-token decode update, on
// buffers in GPU memory. The semantics, layouts and row strides are those of ops/conv1d.h (the CPU
// reference); backward accumulates (+=) into every gradient it produces.
//
// Plain C++ header (no CUDA includes); the definitions exist only in builds with MSLM_HAVE_CUDA.
// T is `float`, or `uint16_t` for bf16 bits: storage T, fp32 math, one rounding on store. `stream`
// is a cudaStream_t (nullptr: the default stream); launches are asynchronous and a bad launch or
// argument throws mslm::Error naming the kernel. Every pointer, `slots` included, is device memory.
#pragma once
#include <cstddef>
#include <cstdint>

#include "ops/cuda/grad_store.h"

namespace mslm::ops::cuda {

// out (B, T, C) = bias + Σ_k w[c, k] · x[b, t − (K − 1) + k, c], then SiLU when `silu`; x (B, T, C)
// with row stride ld_x; w (C, K); bias (C) or null; pre (B, T, C) gets the pre-activation when
// `silu` and pre != null. Taps are summed in k order with fused multiply-adds, as in the update.
template <typename T>
void conv1d_causal_forward(T* out, T* pre, const T* x, int64_t ld_x, const T* w, const T* bias, int64_t B,
                           int64_t Tn, int64_t C, int64_t K, bool silu, void* stream = nullptr);
// The same with the K − 1 inputs before each sequence's start given: hist (B, K − 1, C), oldest
// first, read where the taps above see zeros (a prompt continuing a decoder's conv window). Each
// output is the fma chain, in k order, of the forward over [hist | x]'s rows from K − 1 on.
template <typename T>
void conv1d_causal_forward(T* out, T* pre, const T* x, int64_t ld_x, const T* hist, const T* w, const T* bias,
                           int64_t B, int64_t Tn, int64_t C, int64_t K, bool silu, void* stream = nullptr);

// Longest kernel the backward takes (its taps live in registers).
constexpr int64_t kConv1dBackwardMaxK = 8;

// Bytes of workspace conv1d_causal_backward needs for dw and dbias: per-(sequence chunk, channel)
// partial sums, added afterwards in a fixed order, so the result does not depend on the device.
// Sized for both kernel sets (64-token chunks; the fast kernels use 128, MSLM_CONV_FAST=0 the old).
size_t conv1d_causal_backward_workspace_bytes(int64_t B, int64_t Tn, int64_t C, int64_t K);

// dx (row stride ld_x) += (or, with dx_store Overwrite, =), dw (C, K) += , dbias (C) += ; any of
// them may be null. The workspace (conv1d_causal_backward_workspace_bytes, any alignment of 4) is
// needed only when dw or dbias is given. 1 ≤ K ≤ kConv1dBackwardMaxK.
template <typename T>
void conv1d_causal_backward(T* dx, T* dw, T* dbias, const T* dout, const T* x, int64_t ld_x, const T* w,
                            const T* bias, int64_t B, int64_t Tn, int64_t C, int64_t K, bool silu,
                            void* workspace, size_t workspace_bytes, void* stream = nullptr,
                            GradStore dx_store = GradStore::Add);

// One decode step for k sequences: state (S, K − 1, C) holds each slot's last K − 1 inputs, oldest
// first; row i of x (k, C, row stride ld_x) is the next input of slot slots[i] (distinct). out (k, C)
// gets the bits conv1d_causal_forward gives at that token; the window then shifts and ends with x.
template <typename T>
void conv1d_causal_update(T* out, T* state, const int64_t* slots, const T* x, int64_t ld_x, const T* w,
                          const T* bias, int64_t k, int64_t C, int64_t K, bool silu, void* stream = nullptr);

}  // namespace mslm::ops::cuda
