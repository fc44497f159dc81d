// Elementwise CUDA kernels. All are memory bound: each thread moves 16 bytes per load (float4 or
// 8 × bf16) when every pointer is 16-byte aligned and the row length allows it, and falls back to
// one element per load otherwise. Loops are grid-stride over a grid sized to fill the GPU once.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <initializer_list>

#include "core/error.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/elementwise.h"

namespace mslm::ops::cuda {

namespace {

using namespace detail;

// ---- flat elementwise: y[i] = op(y[i], a[i], b[i]) for i < n

struct SiluForwardOp {
    static constexpr bool kReadsY = false, kReadsB = false;
    __device__ float operator()(float, float x, float) const { return silu(x); }
};
struct SiluBackwardOp {  // y = dx, a = dout, b = x
    static constexpr bool kReadsY = true, kReadsB = true;
    __device__ float operator()(float dx, float dout, float x) const { return dx + dout * silu_grad(x); }
};
// GELU, exact form, as x · Φ(x) with Φ(x) = erfc(−x/√2) / 2: the textbook (1 + erf(x/√2)) / 2
// cancels for x < 0 and loses every significant bit of Φ below x ≈ −5.3 in fp32; erfc keeps them.
constexpr float kInvSqrt2 = 0.70710678118654752440f;    // 1/√2
constexpr float kInvSqrt2Pi = 0.39894228040143267794f;  // 1/√(2π)

__device__ __forceinline__ float gelu_cdf(float x) {
    return 0.5f * erfcf(-x * kInvSqrt2);
}
struct GeluForwardOp {
    static constexpr bool kReadsY = false, kReadsB = false;
    __device__ float operator()(float, float x, float) const { return x * gelu_cdf(x); }
};
struct GeluBackwardOp {  // y = dx, a = dout, b = x; gelu'(x) = Φ(x) + x · φ(x)
    static constexpr bool kReadsY = true, kReadsB = true;
    __device__ float operator()(float dx, float dout, float x) const {
        const float pdf = kInvSqrt2Pi * expf(-0.5f * x * x);
        return dx + dout * (gelu_cdf(x) + x * pdf);
    }
};

// GELU, tanh form, as x · σ(2u): (1 + tanh(u)) / 2 = σ(2u), and sigmoid_pair keeps σ and 1 − σ
// free of cancellation (the textbook 1 + tanh(u) loses every bit of it for u ≲ −9).
// gelu_tanh'(x) = σ(2u) + 2x · σ(2u) · (1 − σ(2u)) · u'(x), u'(x) = √(2/π) · (1 + 3 · 0.044715 x²).
constexpr float kSqrt2OverPi = 0.79788456080286535588f;  // √(2/π)
constexpr float kGeluCubic = 0.044715f;

__device__ __forceinline__ float gelu_tanh_u(float x) {
    return kSqrt2OverPi * (x + kGeluCubic * x * x * x);
}
struct GeluTanhForwardOp {
    static constexpr bool kReadsY = false, kReadsB = false;
    __device__ float operator()(float, float x, float) const {
        return x * sigmoid_pair(2.0f * gelu_tanh_u(x)).s;
    }
};
struct GeluTanhBackwardOp {  // y = dx, a = dout, b = x
    static constexpr bool kReadsY = true, kReadsB = true;
    __device__ float operator()(float dx, float dout, float x) const {
        // Beyond |x| = 20, |2u| > 600 makes σ(2u) exactly 0 or 1 in fp32 and the gradient exactly
        // 0 or 1; the clamp gives that value without x³ overflowing into inf · 0 = NaN.
        const float xc = fminf(fmaxf(x, -20.0f), 20.0f);
        const SigmoidPair p = sigmoid_pair(2.0f * gelu_tanh_u(xc));
        const float du = kSqrt2OverPi * (1.0f + 3.0f * kGeluCubic * xc * xc);
        return dx + dout * (p.s + 2.0f * xc * p.s * p.c * du);
    }
};

// ReLU as nn/mlp.cpp: x > 0 is false for NaN, which gives 0 and no gradient.
struct ReluForwardOp {
    static constexpr bool kReadsY = false, kReadsB = false;
    __device__ float operator()(float, float x, float) const { return x > 0.0f ? x : 0.0f; }
};
struct ReluBackwardOp {  // y = dx, a = dout, b = x
    static constexpr bool kReadsY = true, kReadsB = true;
    __device__ float operator()(float dx, float dout, float x) const { return x > 0.0f ? dx + dout : dx; }
};

struct AxpyOp {
    static constexpr bool kReadsY = true, kReadsB = false;
    float alpha;
    __device__ float operator()(float y, float x, float) const { return y + alpha * x; }
};

// Elements [i, i + V).
template <int V, typename T, typename Op>
__device__ __forceinline__ void map_pack(T* y, const T* a, const T* b, int64_t i, Op op) {
    Pack<T, V> yp{}, ap = load<V>(a + i), bp{};
    if constexpr (Op::kReadsY) yp = load<V>(y + i);
    if constexpr (Op::kReadsB) bp = load<V>(b + i);
#pragma unroll
    for (int k = 0; k < V; ++k) yp.v[k] = from_f32<T>(op(to_f32(yp.v[k]), to_f32(ap.v[k]), to_f32(bp.v[k])));
    store<V>(y + i, yp);
}

// V = kVec<T> needs y, a, b 16-byte aligned; the last n % V elements go one at a time.
// No __restrict__: forward may run in place (y == a).
template <int V, typename T, typename Op>
__global__ void map_kernel(T* y, const T* a, const T* b, int64_t n, Op op) {
    const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    const int64_t stride = int64_t(gridDim.x) * blockDim.x;
    const int64_t n_packs = n / V;
    for (int64_t p = first; p < n_packs; p += stride) map_pack<V>(y, a, b, p * V, op);
    if constexpr (V > 1) {
        for (int64_t i = n_packs * V + first; i < n; i += stride) map_pack<1>(y, a, b, i, op);
    }
}

// ---- SwiGLU over rows of [gate | up]. V > 1 needs V | F and aligned bases, so every row's
// gate, up and out segments start on a 16-byte boundary.

template <int V, typename T>
__global__ void swiglu_forward_kernel(T* out, const T* gate_up, int64_t N, int64_t F) {
    pdl_wait();  // launched with programmatic dependent launch (launch_ops_pdl)
    pdl_trigger();
    const int64_t packs_per_row = F / V;
    const int64_t total = N * packs_per_row;
    const int64_t stride = int64_t(gridDim.x) * blockDim.x;
    for (int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; p < total; p += stride) {
        const int64_t row = p / packs_per_row;
        const int64_t col = (p - row * packs_per_row) * V;
        const T* gate = gate_up + row * 2 * F + col;
        Pack<T, V> g = load<V>(gate), u = load<V>(gate + F), o;
#pragma unroll
        for (int k = 0; k < V; ++k) o.v[k] = from_f32<T>(silu_rounded<T>(to_f32(g.v[k])) * to_f32(u.v[k]));
        store<V>(out + row * F + col, o);
    }
}

// A block per (row, blockDim.x packs of its F columns), rows strided by gridDim.y: no division and no
// grid-stride loop over packs. The grid-stride form (a 64-bit division a pack) ran the 130m training
// step's backward at 2.2 TB/s; this one at ~4.3 (docs/PERFORMANCE.md).
template <int V, bool kAccumulate, typename T>
__global__ void swiglu_backward_kernel(T* dgate_up, const T* dout, const T* gate_up, int64_t N, int64_t F) {
    const int64_t col = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * V;
    if (col >= F) return;
    for (int64_t row = blockIdx.y; row < N; row += gridDim.y) {
        const int64_t at = row * 2 * F + col;
        Pack<T, V> g = load<V>(gate_up + at), u = load<V>(gate_up + at + F);
        Pack<T, V> dg, du;
        if constexpr (kAccumulate) dg = load<V>(dgate_up + at), du = load<V>(dgate_up + at + F);
        Pack<T, V> d = load<V>(dout + row * F + col);
#pragma unroll
        for (int k = 0; k < V; ++k) {
            const float gk = to_f32(g.v[k]), dk = to_f32(d.v[k]);
            const SigmoidPair sp = sigmoid_pair(gk);
            const float dgk = dk * to_f32(u.v[k]) * sp.s * (1.0f + gk * sp.c), duk = dk * gk * sp.s;
            // += 0 first where there is nothing to add, so both forms round the same value.
            dg.v[k] = from_f32<T>((kAccumulate ? to_f32(dg.v[k]) : 0.0f) + dgk);
            du.v[k] = from_f32<T>((kAccumulate ? to_f32(du.v[k]) : 0.0f) + duk);
        }
        store<V>(dgate_up + at, dg);
        store<V>(dgate_up + at + F, du);
    }
}

template <typename T, typename Op>
void launch_map(const char* kernel, T* y, const T* a, const T* b, int64_t n, Op op, void* stream) {
    MSLM_CHECK(n >= 0, "CUDA kernel {}: negative size {}", kernel, n);
    if (n == 0) return;
    using D = device_t<T>;
    constexpr int V = kVec<D>;
    D* dy = reinterpret_cast<D*>(y);
    const D* da = reinterpret_cast<const D*>(a);
    const D* db = reinterpret_cast<const D*>(b);
    const bool vec = aligned16(y) && aligned16(a) && (!Op::kReadsB || aligned16(b));
    auto s = static_cast<cudaStream_t>(stream);
    if (vec) {
        map_kernel<V><<<grid_size<T>(map_kernel<V, D, Op>, n / V + n % V, kernel), kThreads, 0, s>>>(
            dy, da, db, n, op);
    } else {
        map_kernel<1><<<grid_size<T>(map_kernel<1, D, Op>, n, kernel), kThreads, 0, s>>>(dy, da, db, n, op);
    }
    check_launch<T>(kernel);
}

bool swiglu_vectorised(int64_t F, int vec, std::initializer_list<const void*> ptrs) {
    return F % vec == 0 && std::all_of(ptrs.begin(), ptrs.end(), aligned16);
}

}  // namespace

template <typename T>
void silu_forward(T* out, const T* x, int64_t n, void* stream) {
    launch_map("silu_forward", out, x, static_cast<const T*>(nullptr), n, SiluForwardOp{}, stream);
}

template <typename T>
void silu_backward(T* dx, const T* dout, const T* x, int64_t n, void* stream) {
    launch_map("silu_backward", dx, dout, x, n, SiluBackwardOp{}, stream);
}

template <typename T>
void gelu_forward(T* out, const T* x, int64_t n, void* stream) {
    launch_map("gelu_forward", out, x, static_cast<const T*>(nullptr), n, GeluForwardOp{}, stream);
}

template <typename T>
void gelu_backward(T* dx, const T* dout, const T* x, int64_t n, void* stream) {
    launch_map("gelu_backward", dx, dout, x, n, GeluBackwardOp{}, stream);
}

template <typename T>
void gelu_tanh_forward(T* out, const T* x, int64_t n, void* stream) {
    launch_map("gelu_tanh_forward", out, x, static_cast<const T*>(nullptr), n, GeluTanhForwardOp{}, stream);
}

template <typename T>
void gelu_tanh_backward(T* dx, const T* dout, const T* x, int64_t n, void* stream) {
    launch_map("gelu_tanh_backward", dx, dout, x, n, GeluTanhBackwardOp{}, stream);
}

template <typename T>
void relu_forward(T* out, const T* x, int64_t n, void* stream) {
    launch_map("relu_forward", out, x, static_cast<const T*>(nullptr), n, ReluForwardOp{}, stream);
}

template <typename T>
void relu_backward(T* dx, const T* dout, const T* x, int64_t n, void* stream) {
    launch_map("relu_backward", dx, dout, x, n, ReluBackwardOp{}, stream);
}

template <typename T>
void axpy(T* y, const T* x, int64_t n, float alpha, void* stream) {
    launch_map("axpy", y, x, static_cast<const T*>(nullptr), n, AxpyOp{alpha}, stream);
}

template <typename T>
void swiglu_forward(T* out, const T* gate_up, int64_t N, int64_t F, void* stream) {
    const char* kernel = "swiglu_forward";
    MSLM_CHECK(N >= 0 && F >= 0, "CUDA kernel {}: negative shape ({}, {})", kernel, N, F);
    if (N == 0 || F == 0) return;
    using D = device_t<T>;
    constexpr int V = kVec<D>;
    D* o = reinterpret_cast<D*>(out);
    const D* gu = reinterpret_cast<const D*>(gate_up);
    auto s = static_cast<cudaStream_t>(stream);
    const bool vec = swiglu_vectorised(F, V, {out, gate_up});
    auto fn = vec ? swiglu_forward_kernel<V, D> : swiglu_forward_kernel<1, D>;
    check_cuda<T>(
        launch_ops_pdl(fn, grid_size<T>(fn, vec ? N * (F / V) : N * F, kernel), kThreads, 0, s, o, gu, N, F),
        "launch", kernel);
}

template <bool kAccumulate, typename T>
void swiglu_backward_launch(T* dgate_up, const T* dout, const T* gate_up, int64_t N, int64_t F, void* stream) {
    const char* kernel = kAccumulate ? "swiglu_backward" : "swiglu_backward_overwrite";
    MSLM_CHECK(N >= 0 && F >= 0, "CUDA kernel {}: negative shape ({}, {})", kernel, N, F);
    if (N == 0 || F == 0) return;
    using D = device_t<T>;
    constexpr int V = kVec<D>;
    D* dgu = reinterpret_cast<D*>(dgate_up);
    const D* d = reinterpret_cast<const D*>(dout);
    const D* gu = reinterpret_cast<const D*>(gate_up);
    auto s = static_cast<cudaStream_t>(stream);
    const bool vec = swiglu_vectorised(F, V, {dgate_up, dout, gate_up});
    const int64_t packs = vec ? F / V : F;
    const dim3 grid(unsigned((packs + kThreads - 1) / kThreads), unsigned(std::min<int64_t>(N, 65535)));
    if (vec) {
        swiglu_backward_kernel<V, kAccumulate><<<grid, kThreads, 0, s>>>(dgu, d, gu, N, F);
    } else {
        swiglu_backward_kernel<1, kAccumulate><<<grid, kThreads, 0, s>>>(dgu, d, gu, N, F);
    }
    check_launch<T>(kernel);
}

template <typename T>
void swiglu_backward(T* dgate_up, const T* dout, const T* gate_up, int64_t N, int64_t F, void* stream) {
    swiglu_backward_launch<true>(dgate_up, dout, gate_up, N, F, stream);
}

template <typename T>
void swiglu_backward_overwrite(T* dgate_up, const T* dout, const T* gate_up, int64_t N, int64_t F, void* stream) {
    swiglu_backward_launch<false>(dgate_up, dout, gate_up, N, F, stream);
}

#define MSLM_INSTANTIATE(T)                                                            \
    template void silu_forward<T>(T*, const T*, int64_t, void*);                       \
    template void silu_backward<T>(T*, const T*, const T*, int64_t, void*);            \
    template void gelu_forward<T>(T*, const T*, int64_t, void*);                       \
    template void gelu_backward<T>(T*, const T*, const T*, int64_t, void*);            \
    template void gelu_tanh_forward<T>(T*, const T*, int64_t, void*);                  \
    template void gelu_tanh_backward<T>(T*, const T*, const T*, int64_t, void*);       \
    template void relu_forward<T>(T*, const T*, int64_t, void*);                       \
    template void relu_backward<T>(T*, const T*, const T*, int64_t, void*);            \
    template void swiglu_forward<T>(T*, const T*, int64_t, int64_t, void*);            \
    template void swiglu_backward<T>(T*, const T*, const T*, int64_t, int64_t, void*); \
    template void swiglu_backward_overwrite<T>(T*, const T*, const T*, int64_t, int64_t, void*); \
    template void axpy<T>(T*, const T*, int64_t, float, void*);
MSLM_INSTANTIATE(float)
MSLM_INSTANTIATE(uint16_t)
#undef MSLM_INSTANTIATE

}  // namespace mslm::ops::cuda
