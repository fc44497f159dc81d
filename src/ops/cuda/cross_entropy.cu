// Cross-entropy kernels: one thread block per row (grid-stride over rows), threads striding over
// the row in 16-byte packs when the row length and pointer allow it. Every exponential is of a
// value ≤ 0 (a logit minus the running maximum, or minus the logsumexp), so logits of ±1e4 neither
// overflow nor lose the loss to cancellation, as in the CPU reference.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cmath>

#include "core/error.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/cross_entropy.h"
#include "ops/cuda/reduce.cuh"

namespace mslm::ops::cuda {

namespace {

using namespace detail;

void check_shape(const char* kernel, int64_t N, int64_t vocab) {
    MSLM_CHECK(N >= 0 && vocab > 0, "CUDA kernel {}: bad shape (N {}, V {})", kernel, N, vocab);
    MSLM_CHECK(N < INT32_MAX && vocab < INT32_MAX, "CUDA kernel {}: N = {} or V = {} does not fit int32", kernel,
               N, vocab);
}

// Adds x to the running (maximum, Σ exp(· − maximum)): one exponential per logit.
__device__ __forceinline__ void max_sum_add(MaxSum& acc, float x) {
    if (x > acc.m) {
        acc.s = acc.s * expf(acc.m - x) + 1.0f;  // expf(−inf) = 0 for the first value
        acc.m = x;
    } else if (acc.m != -INFINITY) {  // else x = acc.m = −inf: contributes nothing
        acc.s += expf(x - acc.m);
    }
}

template <int V, typename T>
__global__ void cross_entropy_forward_kernel(float* losses, float* lse, const T* logits, const int32_t* targets,
                                             int64_t N, int64_t vocab, IndexStatus* status) {
    __shared__ MaxSum scratch[32];
    const int64_t packs = vocab / V;
    for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
        const T* row = logits + n * vocab;
        MaxSum acc{-INFINITY, 0.0f};
        for (int64_t p = threadIdx.x; p < packs; p += blockDim.x) {
            const Pack<T, V> pack = load<V>(row + p * V);
#pragma unroll
            for (int e = 0; e < V; ++e) max_sum_add(acc, to_f32(pack.v[e]));
        }
        acc = block_max_sum(acc, scratch);
        if (threadIdx.x != 0) continue;
        const float log_sum = logf(acc.s);
        lse[n] = acc.m + log_sum;
        const int32_t t = targets[n];
        if (t == kIgnoreIndex) {
            losses[n] = 0.0f;
        } else if (t >= 0 && t < vocab) {
            // (m − logit) + log Σ rather than lse − logit, as in the CPU reference: with logits ~1e4
            // the difference of two large numbers would lose the loss's low digits.
            losses[n] = (acc.m - to_f32(row[t])) + log_sum;
            if (status) atomicAdd(&status->count, 1ull);
        } else {
            losses[n] = NAN;
            record_bad_index(status, n, t);
        }
    }
}

// Reads each logit and then writes its gradient at the same index, from the same thread, so
// dlogits == logits is safe.
template <int V, typename T>
__global__ void cross_entropy_backward_kernel(T* dlogits, const T* logits, const float* lse,
                                              const int32_t* targets, int64_t N, int64_t vocab, float dloss,
                                              IndexStatus* status) {
    const int64_t packs = vocab / V;
    for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
        const int32_t t = targets[n];
        const bool good = t >= 0 && t < vocab;
        if (!good && t != kIgnoreIndex && threadIdx.x == 0) record_bad_index(status, n, t);
        const float l = good ? lse[n] : 0.0f;
        for (int64_t p = threadIdx.x; p < packs; p += blockDim.x) {
            Pack<T, V> pack;
            if (good) {
                pack = load<V>(logits + n * vocab + p * V);
#pragma unroll
                for (int e = 0; e < V; ++e) {
                    float d = expf(to_f32(pack.v[e]) - l) * dloss;
                    if (p * V + e == t) d -= dloss;
                    pack.v[e] = from_f32<T>(d);
                }
            } else {
#pragma unroll
                for (int e = 0; e < V; ++e) pack.v[e] = from_f32<T>(0.0f);
            }
            store<V>(dlogits + n * vocab + p * V, pack);
        }
    }
}

}  // namespace

template <typename T>
void cross_entropy_forward(float* losses, float* lse, const T* logits, const int32_t* targets, int64_t N,
                           int64_t V, IndexStatus* status, void* stream) {
    const char* kernel = "cross_entropy_forward";
    check_shape(kernel, N, V);
    auto s = static_cast<cudaStream_t>(stream);
    if (status) index_status_clear(status, stream);
    if (N == 0) return;
    using Dev = device_t<T>;
    constexpr int P = kVec<Dev>;
    auto x = reinterpret_cast<const Dev*>(logits);
    if (V % P == 0 && aligned16(logits)) {
        const int threads = row_threads(V, P);
        cross_entropy_forward_kernel<P>
            <<<row_grid<T>(N, threads, kernel), threads, 0, s>>>(losses, lse, x, targets, N, V, status);
    } else {
        const int threads = row_threads(V, 1);
        cross_entropy_forward_kernel<1>
            <<<row_grid<T>(N, threads, kernel), threads, 0, s>>>(losses, lse, x, targets, N, V, status);
    }
    check_launch<T>(kernel);
}

template <typename T>
void cross_entropy_backward(T* dlogits, const T* logits, const float* lse, const int32_t* targets, int64_t N,
                            int64_t V, float dloss, IndexStatus* status, void* stream) {
    const char* kernel = "cross_entropy_backward";
    check_shape(kernel, N, V);
    auto s = static_cast<cudaStream_t>(stream);
    if (status) index_status_clear(status, stream);
    if (N == 0) return;
    using Dev = device_t<T>;
    constexpr int P = kVec<Dev>;
    auto d = reinterpret_cast<Dev*>(dlogits);
    auto x = reinterpret_cast<const Dev*>(logits);
    if (V % P == 0 && aligned16(dlogits) && aligned16(logits)) {
        const int threads = row_threads(V, P);
        cross_entropy_backward_kernel<P>
            <<<row_grid<T>(N, threads, kernel), threads, 0, s>>>(d, x, lse, targets, N, V, dloss, status);
    } else {
        const int threads = row_threads(V, 1);
        cross_entropy_backward_kernel<1>
            <<<row_grid<T>(N, threads, kernel), threads, 0, s>>>(d, x, lse, targets, N, V, dloss, status);
    }
    check_launch<T>(kernel);
}

int64_t cross_entropy_check(const IndexStatus* status, int64_t V, void* stream) {
    const IndexReport report = index_status_read(status, stream);
    MSLM_CHECK(!report.bad,
               "cross_entropy: target {} at row {} is outside the vocabulary [0, {}) and is not the ignore "
               "index {}",
               report.index, report.position, V, kIgnoreIndex);
    return report.count;
}

#define MSLM_INSTANTIATE(T)                                                                              \
    template void cross_entropy_forward<T>(float*, float*, const T*, const int32_t*, int64_t, int64_t,    \
                                           IndexStatus*, void*);                                         \
    template void cross_entropy_backward<T>(T*, const T*, const float*, const int32_t*, int64_t, int64_t, \
                                            float, IndexStatus*, void*);
MSLM_INSTANTIATE(float)
MSLM_INSTANTIATE(uint16_t)
#undef MSLM_INSTANTIATE

}  // namespace mslm::ops::cuda
