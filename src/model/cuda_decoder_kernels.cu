// The kernels CudaCausalLM (model/cuda_inference.h) needs of its own: appending one token's key and
// value rows to each slot's KV ring buffer, and gathering per-slot state blocks by index (beam
// search's reorder).
#include <cuda_runtime.h>

#include <cstdint>

#include "core/error.h"
#include <algorithm>

namespace mslm::cuda_decoder_detail {

namespace {

// Row i of k_src / v_src (width values, row strides ld) goes to row pos[i] % L of slot slots[i] of
// k_cache / v_cache (S, L, width). One block per row.
__global__ void kv_append_kernel(uint16_t* __restrict__ k_cache, uint16_t* __restrict__ v_cache,
                                 const uint16_t* __restrict__ k_src, const uint16_t* __restrict__ v_src,
                                 int64_t ld, const int64_t* __restrict__ slots, const int64_t* __restrict__ pos,
                                 int64_t L, int64_t width) {
    const int64_t i = blockIdx.x;
    const int64_t dst = (slots[i] * L + pos[i] % L) * width;
    for (int64_t c = threadIdx.x; c < width; c += blockDim.x) {
        k_cache[dst + c] = k_src[i * ld + c];
        v_cache[dst + c] = v_src[i * ld + c];
    }
}

// dst block i (words 16-bit wide) = src block idx[i].
__global__ void gather_blocks_kernel(uint16_t* __restrict__ dst, const uint16_t* __restrict__ src,
                                     const int64_t* __restrict__ idx, int64_t block) {
    const int64_t i = blockIdx.y;
    const uint16_t* from = src + idx[i] * block;
    uint16_t* to = dst + i * block;
    for (int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; c < block; c += int64_t(gridDim.x) * blockDim.x)
        to[c] = from[c];
}

void check(const char* kernel) {
    const cudaError_t err = cudaGetLastError();
    MSLM_CHECK(err == cudaSuccess, "CUDA kernel {}: {}", kernel, cudaGetErrorString(err));
}

}  // namespace

void kv_append(uint16_t* k_cache, uint16_t* v_cache, const uint16_t* k_src, const uint16_t* v_src, int64_t ld,
               const int64_t* slots, const int64_t* pos, int64_t k, int64_t L, int64_t width, void* stream) {
    if (k <= 0 || width <= 0) return;
    MSLM_CHECK(k <= 2147483647, "kv_append: {} rows", k);
    kv_append_kernel<<<unsigned(k), 128, 0, static_cast<cudaStream_t>(stream)>>>(k_cache, v_cache, k_src, v_src, ld,
                                                                                 slots, pos, L, width);
    check("kv_append");
}

void gather_blocks(void* dst, const void* src, const int64_t* idx, int64_t n, size_t block_bytes, void* stream) {
    if (n <= 0 || block_bytes == 0) return;
    MSLM_CHECK(block_bytes % 2 == 0 && n <= 65535, "gather_blocks: {} blocks of {} bytes", n, block_bytes);
    const auto words = static_cast<int64_t>(block_bytes / 2);
    const auto x = unsigned(std::min<int64_t>((words + 255) / 256, 1024));
    gather_blocks_kernel<<<dim3(x, unsigned(n)), 256, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<uint16_t*>(dst), static_cast<const uint16_t*>(src), idx, words);
    check("gather_blocks");
}

}  // namespace mslm::cuda_decoder_detail
