// CPU reference for the elementwise activations and the SwiGLU gate. Formulas follow PyTorch's
// (torch.nn.functional) so that converted checkpoints reproduce its outputs.
#include "ops/activation.h"

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "core/thread_pool.h"
#include "ops/cpu/scalar_math.h"
#include "ops/cpu/vec_array.h"

namespace mslm::ops {
namespace {

constexpr int64_t kMinWork = 1 << 14;  // fewest elements worth handing to another thread

constexpr double kInvSqrt2 = 0.70710678118654752440;     // 1/√2
constexpr double kInvSqrt2Pi = 0.39894228040143267794;   // 1/√(2π)
constexpr double kSqrt2OverPi = 0.79788456080286535588;  // √(2/π)
constexpr double kGeluCubic = 0.044715;
constexpr double kSoftplusThreshold = 20;

// Runs f(i) for every i in [0, n), split across the pool.
template <typename F>
void elementwise(int64_t n, F f) {
    parallel_for(
        n,
        [&](int64_t i0, int64_t i1) {
            for (int64_t i = i0; i < i1; ++i) f(i);
        },
        kMinWork);
}

}  // namespace

template <typename T>
void silu_forward(T* out, const T* x, int64_t n) {
    elementwise(n, [&](int64_t i) { out[i] = x[i] * sigmoid(x[i]); });
}

template <typename T>
void silu_backward(T* dx, const T* dout, const T* x, int64_t n) {
    elementwise(n, [&](int64_t i) { dx[i] += dout[i] * silu_grad(x[i], sigmoid(x[i])); });
}

// gelu(x) = x · Φ(x), Φ(x) = (1 + erf(x/√2)) / 2; gelu'(x) = Φ(x) + x · φ(x).
template <typename T>
void gelu_forward(T* out, const T* x, int64_t n) {
    elementwise(n, [&](int64_t i) { out[i] = T(0.5) * x[i] * (T(1) + std::erf(x[i] * T(kInvSqrt2))); });
}

template <typename T>
void gelu_backward(T* dx, const T* dout, const T* x, int64_t n) {
    elementwise(n, [&](int64_t i) {
        T v = x[i];
        T cdf = T(0.5) * (T(1) + std::erf(v * T(kInvSqrt2)));
        T pdf = T(kInvSqrt2Pi) * std::exp(T(-0.5) * v * v);
        dx[i] += dout[i] * (cdf + v * pdf);
    });
}

// gelu_tanh(x) = x/2 · (1 + tanh(u)), u = √(2/π) · (x + 0.044715 x³).
template <typename T>
void gelu_tanh_forward(T* out, const T* x, int64_t n) {
    elementwise(n, [&](int64_t i) {
        T v = x[i];
        T u = T(kSqrt2OverPi) * (v + T(kGeluCubic) * v * v * v);
        out[i] = T(0.5) * v * (T(1) + std::tanh(u));
    });
}

template <typename T>
void gelu_tanh_backward(T* dx, const T* dout, const T* x, int64_t n) {
    elementwise(n, [&](int64_t i) {
        T v = x[i];
        T u = T(kSqrt2OverPi) * (v + T(kGeluCubic) * v * v * v);
        T t = std::tanh(u);
        T du = T(kSqrt2OverPi) * (T(1) + T(3 * kGeluCubic) * v * v);
        dx[i] += dout[i] * (T(0.5) * (T(1) + t) + T(0.5) * v * (T(1) - t * t) * du);
    });
}

// Above the threshold log(1 + eˣ) equals x to working precision and eˣ would soon overflow, so
// PyTorch returns x with gradient 1; below it the gradient is eˣ / (1 + eˣ).
template <typename T>
void softplus_forward(T* out, const T* x, int64_t n) {
    elementwise(n, [&](int64_t i) {
        T v = x[i];
        out[i] = v > T(kSoftplusThreshold) ? v : std::log1p(std::exp(v));
    });
}

template <typename T>
void softplus_backward(T* dx, const T* dout, const T* x, int64_t n) {
    elementwise(n, [&](int64_t i) {
        T v = x[i];
        if (v > T(kSoftplusThreshold)) {
            dx[i] += dout[i];
        } else {
            T e = std::exp(v);
            dx[i] += dout[i] * e / (e + T(1));
        }
    });
}

template <typename T>
void swiglu_forward(T* out, const T* gate_up, int64_t N, int64_t F) {
    parallel_for(
        N,
        [&](int64_t n0, int64_t n1) {
            for (int64_t n = n0; n < n1; ++n) {
                const T* gate = gate_up + n * 2 * F;  // (2F): [gate | up]
                const T* up = gate + F;
                T* o = out + n * F;
                if constexpr (std::is_same_v<T, float>)
                    vec_array::silu_mul(o, gate, up, F);
                else
                    for (int64_t f = 0; f < F; ++f) o[f] = gate[f] * sigmoid(gate[f]) * up[f];
            }
        },
        std::max<int64_t>(1, kMinWork / std::max<int64_t>(F, 1)));
}

template <typename T>
void swiglu_backward(T* dgate_up, const T* dout, const T* gate_up, int64_t N, int64_t F) {
    parallel_for(
        N,
        [&](int64_t n0, int64_t n1) {
            for (int64_t n = n0; n < n1; ++n) {
                const T* gate = gate_up + n * 2 * F;
                const T* up = gate + F;
                const T* d = dout + n * F;
                T* dgate = dgate_up + n * 2 * F;
                T* dup = dgate + F;
                for (int64_t f = 0; f < F; ++f) {
                    T s = sigmoid(gate[f]);
                    dgate[f] += d[f] * up[f] * silu_grad(gate[f], s);
                    dup[f] += d[f] * gate[f] * s;
                }
            }
        },
        std::max<int64_t>(1, kMinWork / std::max<int64_t>(F, 1)));
}

#define MSLM_INSTANTIATE_ACTIVATION(T)                                    \
    template void silu_forward<T>(T*, const T*, int64_t);                 \
    template void silu_backward<T>(T*, const T*, const T*, int64_t);      \
    template void gelu_forward<T>(T*, const T*, int64_t);                 \
    template void gelu_backward<T>(T*, const T*, const T*, int64_t);      \
    template void gelu_tanh_forward<T>(T*, const T*, int64_t);            \
    template void gelu_tanh_backward<T>(T*, const T*, const T*, int64_t); \
    template void softplus_forward<T>(T*, const T*, int64_t);             \
    template void softplus_backward<T>(T*, const T*, const T*, int64_t);  \
    template void swiglu_forward<T>(T*, const T*, int64_t, int64_t);      \
    template void swiglu_backward<T>(T*, const T*, const T*, int64_t, int64_t);
MSLM_INSTANTIATE_ACTIVATION(float)
MSLM_INSTANTIATE_ACTIVATION(double)
#undef MSLM_INSTANTIATE_ACTIVATION

}  // namespace mslm::ops
