// Scalar functions shared by the CPU kernels, with PyTorch's numerics.
#pragma once
#include <cmath>

namespace mslm::ops {

// 1 / (1 + e^−v): for very negative v the exponential overflows to inf and the result is a clean 0.
template <typename T>
inline T sigmoid(T v) {
    return T(1) / (T(1) + std::exp(-v));
}

// d/dv silu(v) = σ(v) · (1 + v · (1 − σ(v))), given s = σ(v).
template <typename T>
inline T silu_grad(T v, T s) {
    return s * (T(1) + v * (T(1) - s));
}

// PyTorch's softplus (beta 1, threshold 20): the identity above 20, where log1p(exp(v)) equals v
// to within 2e-9.
template <typename T>
inline T softplus(T v) {
    return v > T(20) ? v : std::log1p(std::exp(v));
}

template <typename T>
inline T softplus_grad(T v) {
    return v > T(20) ? T(1) : sigmoid(v);
}

}  // namespace mslm::ops
