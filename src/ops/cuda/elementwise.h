// CUDA elementwise kernels: SiLU, GELU, ReLU, SwiGLU and the residual axpy, on buffers in GPU memory. The
// semantics are those of ops/activation.h (the CPU reference): same layouts, and backward
// accumulates (+=) into every gradient it produces.
//
// Plain C++ header (no CUDA includes) so host code can call the kernels; the definitions exist
// only in builds with MSLM_HAVE_CUDA. T is `float`, or `uint16_t` for bf16 (raw bits, as in
// core/dtype.h): bf16 kernels load bf16, compute in fp32 and round once, to nearest even, on store.
// `stream` is a cudaStream_t; nullptr is the default stream. Launches are asynchronous; a launch
// that fails throws mslm::Error naming the kernel. Buffers are contiguous and, except where said,
// do not overlap.
#pragma once
#include <cstdint>

namespace mslm::ops::cuda {

// out (n) = x · σ(x); out may be x (in place). Backward: dx (n) += dout · σ(x) · (1 + x · (1 − σ(x))).
template <typename T>
void silu_forward(T* out, const T* x, int64_t n, void* stream = nullptr);
template <typename T>
void silu_backward(T* dx, const T* dout, const T* x, int64_t n, void* stream = nullptr);

// GELU, exact (erf) form: out (n) = x · Φ(x); out may be x. Backward: dx (n) += dout · (Φ(x) + x · φ(x)).
template <typename T>
void gelu_forward(T* out, const T* x, int64_t n, void* stream = nullptr);
template <typename T>
void gelu_backward(T* dx, const T* dout, const T* x, int64_t n, void* stream = nullptr);

// GELU, tanh approximation (gelu_pytorch_tanh): out (n) = x/2 · (1 + tanh(u)),
// u = √(2/π) · (x + 0.044715 x³); out may be x. Backward: dx (n) += dout · d out / dx.
template <typename T>
void gelu_tanh_forward(T* out, const T* x, int64_t n, void* stream = nullptr);
template <typename T>
void gelu_tanh_backward(T* dx, const T* dout, const T* x, int64_t n, void* stream = nullptr);

// out (n) = x > 0 ? x : 0 (NaN gives 0, as nn/mlp.cpp); out may be x. Backward: dx (n) += x > 0 ? dout : 0.
template <typename T>
void relu_forward(T* out, const T* x, int64_t n, void* stream = nullptr);
template <typename T>
void relu_backward(T* dx, const T* dout, const T* x, int64_t n, void* stream = nullptr);

// out (N, F) = silu(gate) · up, gate_up (N, 2F) holding [gate | up] per row.
// Backward: dgate_up (N, 2F) += [dout · up · silu'(gate) | dout · silu(gate)].
template <typename T>
void swiglu_forward(T* out, const T* gate_up, int64_t N, int64_t F, void* stream = nullptr);
template <typename T>
void swiglu_backward(T* dgate_up, const T* dout, const T* gate_up, int64_t N, int64_t F,
                     void* stream = nullptr);
// The same gradient written over dgate_up (=, not +=): for a buffer nothing else writes, which then
// needs neither zeroing first nor reading back (two of the backward's five passes over (N, 2F)).
template <typename T>
void swiglu_backward_overwrite(T* dgate_up, const T* dout, const T* gate_up, int64_t N, int64_t F,
                               void* stream = nullptr);

// y (n) += alpha · x, y may be x: the residual add (alpha = 1) and scaled accumulation.
template <typename T>
void axpy(T* y, const T* x, int64_t n, float alpha, void* stream = nullptr);

}  // namespace mslm::ops::cuda
