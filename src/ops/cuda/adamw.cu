// AdamW step and gradient norm. Both are memory bound. The step moves 4 elements per thread per
// load (float4 for p, m, v) when every pointer allows it, else one; the norm is a two-pass
// reduction with a partition fixed independently of the GPU, so it is bitwise reproducible.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "core/error.h"
#include "ops/cuda/adamw.h"
#include "ops/cuda/common.cuh"

namespace mslm::ops::cuda {

namespace {

using namespace detail;

// Every operation explicitly rounded (the _rn intrinsics are never contracted into FMAs), in
// AdamW<float>::step's order.
__device__ __forceinline__ void adamw_update(float& p, float& m, float& v, float g, bool decay,
                                             const AdamWScalars& s) {
    if (decay) p = __fmul_rn(p, s.decay);
    m = __fadd_rn(m, __fmul_rn(s.one_minus_beta1, __fsub_rn(g, m)));
    v = __fadd_rn(__fmul_rn(v, s.beta2), __fmul_rn(__fmul_rn(s.one_minus_beta2, g), g));
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), s.bias_correction2_sqrt), s.eps);
    p = __fsub_rn(p, __fmul_rn(s.step_size, __fdiv_rn(m, denom)));
}

// Elements [i, i + V).
template <int V, typename G>
__device__ __forceinline__ void adamw_pack(float* params, __nv_bfloat16* params_bf16, float* m, float* v,
                                           const G* grads, const uint8_t* decay_mask, int64_t i,
                                           const AdamWScalars& s, float scale) {
    Pack<float, V> pp = load<V>(params + i), mp = load<V>(m + i), vp = load<V>(v + i);
    const Pack<G, V> gp = load<V>(grads + i);
    const Pack<uint8_t, V> dp = load<V>(decay_mask + i);
    Pack<__nv_bfloat16, V> bp;
#pragma unroll
    for (int k = 0; k < V; ++k) {
        const float g = __fmul_rn(to_f32(gp.v[k]), scale);
        adamw_update(pp.v[k], mp.v[k], vp.v[k], g, s.decay_on && dp.v[k] != 0, s);
        bp.v[k] = __float2bfloat16_rn(pp.v[k]);
    }
    store<V>(params + i, pp);
    store<V>(m + i, mp);
    store<V>(v + i, vp);
    if (params_bf16) store<V>(params_bf16 + i, bp);
}

// V = 4 needs every pointer aligned to 4 of its elements; the last n % V elements go one at a time.
template <int V, typename G>
__global__ void adamw_kernel(float* __restrict__ params, __nv_bfloat16* __restrict__ params_bf16,
                             float* __restrict__ m, float* __restrict__ v, const G* __restrict__ grads,
                             const uint8_t* __restrict__ decay_mask, int64_t n, AdamWScalars s,
                             const float* __restrict__ grad_scale) {
    // x · 1 = x exactly, so no scale and a scale of 1 are the same arithmetic.
    const float scale = grad_scale ? *grad_scale : 1.0f;
    const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    const int64_t stride = int64_t(gridDim.x) * blockDim.x;
    const int64_t n_packs = n / V;
    for (int64_t p = first; p < n_packs; p += stride)
        adamw_pack<V>(params, params_bf16, m, v, grads, decay_mask, p * V, s, scale);
    if constexpr (V > 1) {
        for (int64_t i = n_packs * V + first; i < n; i += stride)
            adamw_pack<1>(params, params_bf16, m, v, grads, decay_mask, i, s, scale);
    }
}

constexpr int kAdamWVec = 4;

bool aligned_to(const void* p, size_t bytes) {
    return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

// ---- gradient norm

constexpr int kNormThreads = 256;  // pass 1, per block
constexpr int kNormBlocks = int(kGradNormPartials);
static_assert(kNormBlocks == 1024, "pass 2 runs one block of kNormBlocks threads (at most 1024)");

// Fixed-order tree over sh[0, count), count a power of two; the sum ends in sh[0].
template <int Count>
__device__ __forceinline__ void block_tree_sum(double* sh) {
    for (int half = Count / 2; half > 0; half /= 2) {
        if (int(threadIdx.x) < half) sh[threadIdx.x] += sh[threadIdx.x + half];
        __syncthreads();
    }
}

// partials[block] = Σ grads[i]² over i ≡ block·kNormThreads + thread (mod kNormBlocks·kNormThreads):
// each thread adds its elements in order, then the block's threads are added in a fixed tree.
template <typename G>
__global__ void sum_squares_kernel(double* partials, const G* grads, int64_t n) {
    __shared__ double sh[kNormThreads];
    const int64_t stride = int64_t(kNormBlocks) * kNormThreads;
    double sum = 0.0;
    for (int64_t i = int64_t(blockIdx.x) * kNormThreads + threadIdx.x; i < n; i += stride) {
        const double g = to_f32(grads[i]);
        sum += g * g;
    }
    sh[threadIdx.x] = sum;
    __syncthreads();
    block_tree_sum<kNormThreads>(sh);
    if (threadIdx.x == 0) partials[blockIdx.x] = sh[0];
}

// One block of kNormBlocks threads: *norm = √(Σ partials), and *scale when asked for.
__global__ void finish_norm_kernel(double* norm, float* scale, const double* partials, double max_norm) {
    __shared__ double sh[kNormBlocks];
    sh[threadIdx.x] = partials[threadIdx.x];
    __syncthreads();
    block_tree_sum<kNormBlocks>(sh);
    if (threadIdx.x != 0) return;
    const double total = sqrt(sh[0]);
    *norm = total;
    if (!scale) return;
    // As clip_grad_norm in train/optimizer.cpp: a non-finite norm or a coefficient ≥ 1 leaves the
    // gradients alone.
    const double coef = max_norm / (total + 1e-6);
    *scale = isfinite(total) && coef < 1.0 ? float(coef) : 1.0f;
}

template <typename G>
void launch_norm(const char* kernel, double* norm, float* scale, const G* grads, int64_t n, double max_norm,
                 double* partials, void* stream) {
    MSLM_CHECK(n >= 0, "CUDA kernel {}: negative size {}", kernel, n);
    using D = device_t<G>;
    auto s = static_cast<cudaStream_t>(stream);
    // n = 0 still runs: every partial is 0 and the norm is written.
    sum_squares_kernel<<<kNormBlocks, kNormThreads, 0, s>>>(partials, reinterpret_cast<const D*>(grads), n);
    check_launch<G>(kernel);
    finish_norm_kernel<<<1, kNormBlocks, 0, s>>>(norm, scale, partials, max_norm);
    check_launch<G>(kernel);
}

}  // namespace

template <typename G>
void adamw_step(float* params, uint16_t* params_bf16, float* m, float* v, const G* grads,
                const uint8_t* decay_mask, int64_t n, const AdamWScalars& s, const float* grad_scale,
                void* stream) {
    const char* kernel = "adamw_step";
    MSLM_CHECK(n >= 0, "CUDA kernel {}: negative size {}", kernel, n);
    if (n == 0) return;
    using D = device_t<G>;
    auto* pb = reinterpret_cast<__nv_bfloat16*>(params_bf16);
    const D* g = reinterpret_cast<const D*>(grads);
    constexpr int V = kAdamWVec;
    const bool vec = aligned_to(params, V * sizeof(float)) && aligned_to(m, V * sizeof(float)) &&
                     aligned_to(v, V * sizeof(float)) && aligned_to(grads, V * sizeof(G)) &&
                     aligned_to(decay_mask, V) && aligned_to(params_bf16, V * sizeof(uint16_t));
    auto st = static_cast<cudaStream_t>(stream);
    if (vec) {
        adamw_kernel<V><<<grid_size<G>(adamw_kernel<V, D>, n / V + n % V, kernel), kThreads, 0, st>>>(
            params, pb, m, v, g, decay_mask, n, s, grad_scale);
    } else {
        adamw_kernel<1><<<grid_size<G>(adamw_kernel<1, D>, n, kernel), kThreads, 0, st>>>(
            params, pb, m, v, g, decay_mask, n, s, grad_scale);
    }
    check_launch<G>(kernel);
}

template <typename G>
void grad_norm(double* norm, const G* grads, int64_t n, double* partials, void* stream) {
    launch_norm("grad_norm", norm, static_cast<float*>(nullptr), grads, n, 0.0, partials, stream);
}

template <typename G>
void clip_grad_norm(double* norm, float* scale, const G* grads, int64_t n, double max_norm, double* partials,
                    void* stream) {
    MSLM_CHECK(max_norm > 0, "clip_grad_norm: max_norm must be positive, got {}", max_norm);
    launch_norm("clip_grad_norm", norm, scale, grads, n, max_norm, partials, stream);
}

template void adamw_step<float>(float*, uint16_t*, float*, float*, const float*, const uint8_t*, int64_t,
                                const AdamWScalars&, const float*, void*);
template void adamw_step<uint16_t>(float*, uint16_t*, float*, float*, const uint16_t*, const uint8_t*,
                                   int64_t, const AdamWScalars&, const float*, void*);
template void grad_norm<float>(double*, const float*, int64_t, double*, void*);
template void grad_norm<uint16_t>(double*, const uint16_t*, int64_t, double*, void*);
template void clip_grad_norm<float>(double*, float*, const float*, int64_t, double, double*, void*);
template void clip_grad_norm<uint16_t>(double*, float*, const uint16_t*, int64_t, double, double*, void*);

}  // namespace mslm::ops::cuda
