// Cross-entropy kernels: one thread block per row (grid-stride over rows), threads striding over
// the row in 16-byte packs when the row length and pointer allow it. Every exponential is of a
// value ≤ 0 (a logit minus the running maximum, or minus the logsumexp), so logits of ±1e4 neither
// overflow nor lose the loss to cancellation, as in the CPU reference.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cmath>
#include <type_traits>

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

// Adds a batch of n logits (in registers) to the running (maximum, Σ exp(· − maximum)): the batch's
// maximum first, then one exponential per logit on the special-function unit (ex2 of the difference
// times log2 e; relative error ~2^-22 a term) and one to rescale the running sum. A thread's share
// of a 32,000-logit row thus costs ~5 instructions a logit; the former per-logit online update (an
// accurate expf and a branch each) made this kernel instruction-bound at 29% of the memory
// bandwidth (docs/PERFORMANCE.md).
template <int n>
__device__ __forceinline__ void max_sum_add(MaxSum& acc, const float (&x)[n]) {
    constexpr float kLog2e = 1.4426950408889634f;
    float m = acc.m;
#pragma unroll
    for (int i = 0; i < n; ++i) m = fmaxf(m, x[i]);
    if (m == -INFINITY) return;                         // every logit so far is −inf: nothing to add
    float s = acc.s * fast_exp2((acc.m - m) * kLog2e);  // exp(−inf) = 0 for the first batch
#pragma unroll
    for (int i = 0; i < n; ++i) s += fast_exp2((x[i] - m) * kLog2e);
    acc = {m, s};
}

// The row's running (maximum, Σ exp) over the block, returned to every thread.
template <int V, typename T>
__device__ __forceinline__ MaxSum row_max_sum(const T* row, int64_t packs, MaxSum* scratch) {
    MaxSum acc{-INFINITY, 0.0f};
    // Two packs a step, both loads issued before either is used.
    const int64_t step = 2 * int64_t(blockDim.x);
    int64_t p = threadIdx.x;
    for (; p + blockDim.x < packs; p += step) {
        const Pack<T, V> a = load<V>(row + p * V), b = load<V>(row + (p + blockDim.x) * V);
        float x[2 * V];
#pragma unroll
        for (int e = 0; e < V; ++e) x[e] = to_f32(a.v[e]), x[V + e] = to_f32(b.v[e]);
        max_sum_add(acc, x);
    }
    if (p < packs) {
        const Pack<T, V> a = load<V>(row + p * V);
        float x[V];
#pragma unroll
        for (int e = 0; e < V; ++e) x[e] = to_f32(a.v[e]);
        max_sum_add(acc, x);
    }
    return block_max_sum(acc, scratch);
}

// Thread 0's part of the forward for row n: lse, the loss (reading the target's logit) and the status.
template <typename T>
__device__ __forceinline__ float row_loss(float* losses, float* lse, const T* row, const int32_t* targets,
                                          int64_t n, int64_t vocab, const MaxSum& acc, IndexStatus* status) {
    const float log_sum = logf(acc.s);
    const float l = acc.m + log_sum;
    lse[n] = l;
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
    return l;
}

template <int V, typename T>
__global__ void cross_entropy_forward_kernel(float* losses, float* lse, const T* logits, const int32_t* targets,
                                             int64_t N, int64_t vocab, IndexStatus* status) {
    __shared__ MaxSum scratch[32];
    const int64_t packs = vocab / V;
    for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
        const T* row = logits + n * vocab;
        const MaxSum acc = row_max_sum<V>(row, packs, scratch);
        if (threadIdx.x == 0) row_loss(losses, lse, row, targets, n, vocab, acc, status);
    }
}

// Row n's gradient: each thread reads a pack of logits, then writes its gradient at the same index,
// so dlogits == logits (in place) is safe.
template <int V, typename T>
__device__ __forceinline__ void row_gradient(T* drow, const T* row, int64_t packs, float l, int32_t t,
                                             bool good, float dloss) {
    for (int64_t p = threadIdx.x; p < packs; p += blockDim.x) {
        Pack<T, V> pack;
        if (good) {
            pack = load<V>(row + p * V);
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
        store<V>(drow + p * V, pack);
    }
}

template <int V, typename T>
__global__ void cross_entropy_backward_kernel(T* dlogits, const T* logits, const float* lse,
                                              const int32_t* targets, int64_t N, int64_t vocab, float dloss,
                                              IndexStatus* status) {
    const int64_t packs = vocab / V;
    for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
        const int32_t t = targets[n];
        const bool good = t >= 0 && t < vocab;
        if (!good && t != kIgnoreIndex && threadIdx.x == 0) record_bad_index(status, n, t);
        row_gradient<V>(dlogits + n * vocab, logits + n * vocab, packs, good ? lse[n] : 0.0f, t, good, dloss);
    }
}

// The forward, then (after a barrier: thread 0 has read the target's logit) the backward's gradient
// over the same row, in place.
template <int V, typename T>
__global__ void cross_entropy_forward_backward_kernel(float* losses, float* lse, T* logits,
                                                      const int32_t* targets, int64_t N, int64_t vocab,
                                                      float dloss, IndexStatus* status) {
    __shared__ MaxSum scratch[32];
    __shared__ float row_lse;
    const int64_t packs = vocab / V;
    for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
        T* row = logits + n * vocab;
        const MaxSum acc = row_max_sum<V>(row, packs, scratch);
        if (threadIdx.x == 0) row_lse = row_loss(losses, lse, row, targets, n, vocab, acc, status);
        __syncthreads();
        const int32_t t = targets[n];
        const bool good = t >= 0 && t < vocab;
        row_gradient<V>(row, row, packs, good ? row_lse : 0.0f, t, good, dloss);
        __syncthreads();  // row_lse and scratch are rewritten for the next row
    }
}

// The host side shared by the three kernels: checks, the status cleared, then launch(pack, grid,
// threads, stream) with pack = std::integral_constant<int, P> — 16-byte packs where V is a multiple
// of them and `aligned` (every row pointer 16-byte aligned), else 1 — for a block per row.
template <typename T, typename Launch>
void launch_rows(const char* kernel, int64_t N, int64_t V, bool aligned, IndexStatus* status, void* stream,
                 Launch launch) {
    check_shape(kernel, N, V);
    auto s = static_cast<cudaStream_t>(stream);
    if (status) index_status_clear(status, stream);
    if (N == 0) return;
    constexpr int P = kVec<device_t<T>>;
    const bool vec = V % P == 0 && aligned;
    const int threads = row_threads(V, vec ? P : 1);
    const unsigned grid = row_grid<T>(N, threads, kernel);
    if (vec) {
        launch(std::integral_constant<int, P>{}, grid, threads, s);
    } else {
        launch(std::integral_constant<int, 1>{}, grid, threads, s);
    }
    check_launch<T>(kernel);
}

}  // namespace

template <typename T>
void cross_entropy_forward(float* losses, float* lse, const T* logits, const int32_t* targets, int64_t N,
                           int64_t V, IndexStatus* status, void* stream) {
    auto x = reinterpret_cast<const device_t<T>*>(logits);
    launch_rows<T>("cross_entropy_forward", N, V, aligned16(logits), status, stream,
                   [&](auto pack, unsigned grid, int threads, cudaStream_t s) {
                       cross_entropy_forward_kernel<decltype(pack)::value>
                           <<<grid, threads, 0, s>>>(losses, lse, x, targets, N, V, status);
                   });
}

template <typename T>
void cross_entropy_backward(T* dlogits, const T* logits, const float* lse, const int32_t* targets, int64_t N,
                            int64_t V, float dloss, IndexStatus* status, void* stream) {
    auto d = reinterpret_cast<device_t<T>*>(dlogits);
    auto x = reinterpret_cast<const device_t<T>*>(logits);
    launch_rows<T>("cross_entropy_backward", N, V, aligned16(dlogits) && aligned16(logits), status, stream,
                   [&](auto pack, unsigned grid, int threads, cudaStream_t s) {
                       cross_entropy_backward_kernel<decltype(pack)::value>
                           <<<grid, threads, 0, s>>>(d, x, lse, targets, N, V, dloss, status);
                   });
}

template <typename T>
void cross_entropy_forward_backward(float* losses, float* lse, T* logits, const int32_t* targets, int64_t N,
                                    int64_t V, float dloss, IndexStatus* status, void* stream) {
    auto x = reinterpret_cast<device_t<T>*>(logits);
    launch_rows<T>("cross_entropy_forward_backward", N, V, aligned16(logits), status, stream,
                   [&](auto pack, unsigned grid, int threads, cudaStream_t s) {
                       cross_entropy_forward_backward_kernel<decltype(pack)::value>
                           <<<grid, threads, 0, s>>>(losses, lse, x, targets, N, V, dloss, status);
                   });
}

int64_t cross_entropy_check(const IndexStatus* status, int64_t V, void* stream) {
    const IndexReport report = index_status_read(status, stream);
    MSLM_CHECK(!report.bad,
               "cross_entropy: target {} at row {} is outside the vocabulary [0, {}) and is not the ignore "
               "index {}",
               report.index, report.position, V, kIgnoreIndex);
    return report.count;
}

#define MSLM_INSTANTIATE(T)                                                                               \
    template void cross_entropy_forward<T>(float*, float*, const T*, const int32_t*, int64_t, int64_t,    \
                                           IndexStatus*, void*);                                          \
    template void cross_entropy_backward<T>(T*, const T*, const float*, const int32_t*, int64_t, int64_t, \
                                            float, IndexStatus*, void*);                                  \
    template void cross_entropy_forward_backward<T>(float*, float*, T*, const int32_t*, int64_t, int64_t, \
                                                    float, IndexStatus*, void*);
MSLM_INSTANTIATE(float)
MSLM_INSTANTIATE(uint16_t)
#undef MSLM_INSTANTIATE

}  // namespace mslm::ops::cuda
