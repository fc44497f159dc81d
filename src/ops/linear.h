#pragma once
#include <cstdint>

namespace mslm::ops {

// out (N, O) = x (N, I) · W(O, I)ᵀ + b (O); b may be null. (PyTorch nn.Linear layout.)
template <typename T>
void linear_forward(T* out, const T* x, const T* W, const T* b, int64_t N, int64_t I, int64_t O);
// dx (N, I) += dout · W; dW (O, I) += doutᵀ · x; db (O) += Σ_n dout. Any of dx, dW, db may be null.
template <typename T>
void linear_backward(T* dx, T* dW, T* db, const T* dout, const T* x, const T* W, int64_t N, int64_t I,
                     int64_t O);

}  // namespace mslm::ops
