#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "ops/cuda/common.cuh"
#include "ops/cuda/nf4_dequant.h"

namespace mslm::ops::cuda {

namespace {

constexpr int64_t kNestedBlocksize = 256;  // quant::kBnbNestedBlocksize

// The kernel's arguments: the tensor's pointers and sizes, and its tables (about 1 KB, under the
// 4 KB of kernel parameters).
struct Stored {
    const uint8_t* codes;
    const float* absmax;
    const uint8_t* absmax_q;
    const float* nested_absmax;
    float offset;
    int64_t n, blocksize;
    bool round_f16;
};

struct Tables {
    float code[16];
    float map[256];
};

__device__ __forceinline__ float block_absmax(const Stored& t, const Tables& tab, int64_t b) {
    if (t.absmax) return t.absmax[b];
    // __fmul_rn / __fadd_rn: no fused multiply-add, as the CPU's two roundings.
    return __fadd_rn(__fmul_rn(tab.map[t.absmax_q[b]], t.nested_absmax[b / kNestedBlocksize]), t.offset);
}

__device__ __forceinline__ __nv_bfloat16 dequant(const Stored& t, const Tables& tab, int q, int64_t i) {
    float v = __fmul_rn(tab.code[q], block_absmax(t, tab, i / t.blocksize));
    if (t.round_f16) v = __half2float(__float2half_rn(v));
    return __float2bfloat16_rn(v);
}

// One thread per stored byte: its two values.
__global__ void bnb4_dequantize_kernel(__nv_bfloat16* __restrict__ out, const Stored t, const Tables tab) {
    const int64_t bytes = (t.n + 1) / 2;
    for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < bytes;
         j += int64_t(gridDim.x) * blockDim.x) {
        const uint8_t byte = t.codes[j];
        out[2 * j] = dequant(t, tab, byte >> 4, 2 * j);
        if (2 * j + 1 < t.n) out[2 * j + 1] = dequant(t, tab, byte & 0xF, 2 * j + 1);
    }
}

}  // namespace

void bnb4_dequantize_bf16(uint16_t* out, const Bnb4DeviceTensor& t, void* stream) {
    using namespace detail;
    const char* kernel = "bnb4_dequantize_bf16";
    MSLM_CHECK(t.codes && (t.absmax || (t.absmax_q && t.nested_absmax)) && t.blocksize > 0,
               "{}: a tensor needs codes and an absmax (fp32 or double-quantized)", kernel);
    if (t.n <= 0) return;
    const Stored st{t.codes, t.absmax, t.absmax_q, t.nested_absmax, t.offset, t.n, t.blocksize, t.round_f16};
    Tables tab;
    for (int i = 0; i < 16; ++i) tab.code[i] = t.code[i];
    for (int i = 0; i < 256; ++i) tab.map[i] = t.dynamic_map[i];
    bnb4_dequantize_kernel<<<grid_size<uint16_t>((t.n + 1) / 2, kernel), kThreads, 0,
                             static_cast<cudaStream_t>(stream)>>>(reinterpret_cast<__nv_bfloat16*>(out), st,
                                                                  tab);
    check_launch<uint16_t>(kernel);
}

}  // namespace mslm::ops::cuda
