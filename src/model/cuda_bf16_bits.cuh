// bf16 values as their 16-bit patterns, for the decode kernels (cuda_decoder_kernels.cu,
// cuda_decode_step.cu): decode, round-to-nearest-even encode, and the round trip.
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

namespace mslm::cuda_decoder_detail {

__device__ __forceinline__ float bf(uint16_t v) {
    return __uint_as_float(uint32_t(v) << 16);
}
__device__ __forceinline__ uint16_t to_bf(float v) {
    return __bfloat16_as_ushort(__float2bfloat16_rn(v));
}
__device__ __forceinline__ float round_bf(float v) {
    return bf(to_bf(v));
}

}  // namespace mslm::cuda_decoder_detail
