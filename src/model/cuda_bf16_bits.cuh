// bf16 values as their 16-bit patterns and the dependent-launch helpers, for the decode kernels
// (cuda_decoder_kernels.cu, cuda_decode_step.cu): the ones of ops/cuda/common.cuh, named in the
// decoder's namespace.
#pragma once
#include "ops/cuda/common.cuh"

namespace mslm::cuda_decoder_detail {

using ops::cuda::detail::bf;
using ops::cuda::detail::pdl_trigger;
using ops::cuda::detail::pdl_wait;
using ops::cuda::detail::round_bf;
using ops::cuda::detail::to_bf;

}  // namespace mslm::cuda_decoder_detail
