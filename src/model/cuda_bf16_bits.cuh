// bf16 values as their 16-bit patterns, the dependent-launch helpers and the bf16 dot step, for the decode
// kernels (cuda_decoder_kernels.cu, cuda_decode_step.cu): the ones of ops/cuda/common.cuh, named in the
// decoder's namespace.
#pragma once
#include "ops/cuda/common.cuh"

namespace mslm::cuda_decoder_detail {

using ops::cuda::detail::bf;
using ops::cuda::detail::pdl_trigger;
using ops::cuda::detail::pdl_wait;
using ops::cuda::detail::round_bf;
using ops::cuda::detail::to_bf;

// acc + Σ_j w_j · x_j over 8 bf16 pairs (the words' low halves first), one fused multiply-add each
// in order — the batch-1 products' dot step, the same bits wherever it is used.
__device__ __forceinline__ float dot8_bf16(const uint4& w, const uint4& x, float acc) {
    const uint32_t wv[4] = {w.x, w.y, w.z, w.w}, xw[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        acc = fmaf(__uint_as_float(wv[j] << 16), __uint_as_float(xw[j] << 16), acc);
        acc = fmaf(__uint_as_float(wv[j] & 0xffff0000u), __uint_as_float(xw[j] & 0xffff0000u), acc);
    }
    return acc;
}

}  // namespace mslm::cuda_decoder_detail
