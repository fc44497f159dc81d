// Warp and block reductions for the row kernels (norms, cross-entropy), and their launch shapes.
// Include from .cu files only.
//
// Every reduction runs in a fixed order that depends only on blockDim, never on timing, so a
// kernel's results are bitwise reproducible from run to run.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "ops/cuda/common.cuh"

namespace mslm::ops::cuda::detail {

constexpr unsigned kFullMask = 0xffffffffu;

// Running maximum m and Σ exp(x − m) of a set of values, merged without overflow: the sum is kept
// relative to the current maximum and rescaled when it grows. The empty set is (−inf, 0).
struct MaxSum {
    float m;
    float s;
};

__device__ __forceinline__ MaxSum max_sum_merge(MaxSum a, MaxSum b) {
    if (a.m < b.m) {
        MaxSum t = a;
        a = b;
        b = t;
    }
    if (b.m == -INFINITY) return a;  // also when both are empty: exp(−inf − (−inf)) would be NaN
    return {a.m, a.s + b.s * expf(b.m - a.m)};
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
    return v;
}

__device__ __forceinline__ float2 warp_sum(float2 v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        v.x += __shfl_xor_sync(kFullMask, v.x, o);
        v.y += __shfl_xor_sync(kFullMask, v.y, o);
    }
    return v;
}

__device__ __forceinline__ MaxSum warp_max_sum(MaxSum v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        MaxSum other{__shfl_xor_sync(kFullMask, v.m, o), __shfl_xor_sync(kFullMask, v.s, o)};
        v = max_sum_merge(v, other);
    }
    return v;
}

// Combines one value per thread over the block and returns the result to every thread.
// blockDim.x must be a multiple of 32 (≤ 1024) and every thread of the block must call it.
// `scratch` holds 32 values in shared memory; the leading barrier lets consecutive calls reuse it.
template <typename V, typename WarpOp>
__device__ __forceinline__ V block_reduce(V v, V* scratch, V identity, WarpOp warp_op) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    v = warp_op(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    // Every warp reduces the per-warp values itself, in the same order: no broadcast barrier.
    v = lane < warps ? scratch[lane] : identity;
    return warp_op(v);
}

__device__ __forceinline__ float block_sum(float v, float* scratch) {
    return block_reduce(v, scratch, 0.0f, [](float a) { return warp_sum(a); });
}

__device__ __forceinline__ float2 block_sum(float2 v, float2* scratch) {
    return block_reduce(v, scratch, make_float2(0.0f, 0.0f), [](float2 a) { return warp_sum(a); });
}

__device__ __forceinline__ MaxSum block_max_sum(MaxSum v, MaxSum* scratch) {
    return block_reduce(v, scratch, MaxSum{-INFINITY, 0.0f}, [](MaxSum a) { return warp_max_sum(a); });
}

// ---- launching: one thread block per row, grid-stride over rows

constexpr int kMaxRowThreads = 512;

// Threads for rows of `width` elements read `vec` at a time: one pack per thread where that fits,
// a multiple of 32 as block_reduce needs.
inline int row_threads(int64_t width, int vec) {
    const int64_t packs = (width + vec - 1) / vec;
    return int(std::clamp<int64_t>((packs + 31) / 32 * 32, 32, kMaxRowThreads));
}

// Blocks for N rows: all of them, up to what the device keeps resident at once.
template <typename T>
unsigned row_grid(int64_t N, int threads, const char* kernel) {
    return unsigned(std::clamp<int64_t>(N, 1, int64_t(multiprocessors<T>(kernel)) * (2048 / threads)));
}

// A warp's online-softmax state — (m, l, Σ w·v over its lane's DL columns, column lane + 32·e) — into
// the block's shared arrays for the merge across warps, then a barrier (split-key decode attention).
template <int DL, int D>
__device__ __forceinline__ void stash_warp(float* s_m, float* s_l, float (*s_acc)[D], float m, float l,
                                           const float (&acc)[DL]) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) {
        s_m[warp] = m;
        s_l[warp] = l;
    }
#pragma unroll
    for (int e = 0; e < DL; ++e) s_acc[warp][lane + 32 * e] = acc[e];
    __syncthreads();
}

}  // namespace mslm::ops::cuda::detail
