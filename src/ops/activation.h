#pragma once
#include <cstdint>

namespace mslm::ops {

// Elementwise activations over n values. Backward: dx += dout · f'(x).
template <typename T> void silu_forward(T* out, const T* x, int64_t n);
template <typename T> void silu_backward(T* dx, const T* dout, const T* x, int64_t n);
// GELU, exact (erf) form: x · Φ(x). `gelu_tanh_*` is the tanh approximation (gelu_pytorch_tanh).
template <typename T> void gelu_forward(T* out, const T* x, int64_t n);
template <typename T> void gelu_backward(T* dx, const T* dout, const T* x, int64_t n);
template <typename T> void gelu_tanh_forward(T* out, const T* x, int64_t n);
template <typename T> void gelu_tanh_backward(T* dx, const T* dout, const T* x, int64_t n);
// softplus(x) = log(1 + eˣ), returning x itself above 20 (PyTorch's threshold).
template <typename T> void softplus_forward(T* out, const T* x, int64_t n);
template <typename T> void softplus_backward(T* dx, const T* dout, const T* x, int64_t n);

// SwiGLU gate: out (N, F) = silu(gate) · up, where gate_up (N, 2F) holds [gate | up] per row
// (the layout of one fused gate_up projection).
template <typename T> void swiglu_forward(T* out, const T* gate_up, int64_t N, int64_t F);
template <typename T> void swiglu_backward(T* dgate_up, const T* dout, const T* gate_up, int64_t N, int64_t F);

}  // namespace mslm::ops
