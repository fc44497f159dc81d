// The kernels CudaHybridLM needs of its own (model/cuda_model.h): adding the bf16 staged gradients
// of a backward into the fp32 gradients, and scaling the fp32 gradients (gradient accumulation).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "core/error.h"
#include "ops/cuda/common.cuh"

namespace mslm::cuda_model_detail {

namespace {

__global__ void accumulate_bf16_kernel(float* __restrict__ dst, const __nv_bfloat16* __restrict__ src,
                                       int64_t n) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
         i += int64_t(gridDim.x) * blockDim.x)
        dst[i] += ops::cuda::detail::to_f32(src[i]);
}

__global__ void scale_f32_kernel(float* __restrict__ x, float s, int64_t n) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
         i += int64_t(gridDim.x) * blockDim.x)
        x[i] = __fmul_rn(x[i], s);  // one fp32 rounding, as the CPU trainer's g *= s
}

}  // namespace

// dst (n) += src (n), src bf16 bits, in fp32.
void accumulate_bf16(float* dst, const uint16_t* src, int64_t n, void* stream) {
    using namespace ops::cuda::detail;
    if (n <= 0) return;
    const char* kernel = "accumulate_bf16";
    accumulate_bf16_kernel<<<grid_size<uint16_t>(n, kernel), kThreads, 0,
                             static_cast<cudaStream_t>(stream)>>>(
        dst, reinterpret_cast<const __nv_bfloat16*>(src), n);
    check_launch<uint16_t>(kernel);
}

// x (n) *= s in fp32.
void scale_f32(float* x, float s, int64_t n, void* stream) {
    using namespace ops::cuda::detail;
    if (n <= 0) return;
    const char* kernel = "scale_f32";
    scale_f32_kernel<<<grid_size<float>(n, kernel), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(x, s, n);
    check_launch<float>(kernel);
}

}  // namespace mslm::cuda_model_detail
