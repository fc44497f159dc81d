// bitsandbytes 4-bit weights (NF4 / FP4, quant/bnb.h) dequantized on the GPU into bf16: the frozen
// base of QLoRA training (model/cuda_model.h) expands one stored tensor at a time into a scratch
// that the next product reads. (The fused 4-bit GEMV kernels for decoding are ops/cuda/quant_gemv.)
//
// Plain C++ header (no CUDA includes); the definitions exist only in builds with MSLM_HAVE_CUDA.
// Launches are asynchronous on `stream` (a cudaStream_t, nullptr the default stream); a bad launch
// throws mslm::Error naming the kernel.
#pragma once
#include <array>
#include <cstdint>

namespace mslm::ops::cuda {

// One stored 4-bit tensor of n values in GPU memory, with the tables the kernel needs by value.
struct Bnb4DeviceTensor {
    const uint8_t* codes = nullptr;        // (ceil(n/2),) first element in the high nibble
    const float* absmax = nullptr;         // (blocks,) fp32; null with double quantization
    const uint8_t* absmax_q = nullptr;     // (blocks,) double quantization: indices into `dynamic_map`
    const float* nested_absmax = nullptr;  // (ceil(blocks / 256),) double quantization
    float offset = 0;                      // double quantization: the mean subtracted before it
    int64_t n = 0, blocksize = 64;
    bool round_f16 = false;                // a float16 quant state: values rounded to fp16 first
    std::array<float, 16> code{};          // the NF4 / FP4 code book (quant::bnb4_code)
    std::array<float, 256> dynamic_map{};  // quant::bnb_dynamic_map(), double quantization only
};

// out (n,) bf16 bits = bf16(code[q] · absmax[block]) where, with double quantization,
// absmax[b] = dynamic_map[absmax_q[b]] · nested_absmax[b / 256] + offset. Every product and sum is
// one fp32 rounding in the order quant/bnb.cpp uses, so out equals quant::bnb4_tensor_dequantize
// rounded to bf16, bit for bit.
void bnb4_dequantize_bf16(uint16_t* out, const Bnb4DeviceTensor& t, void* stream = nullptr);

}  // namespace mslm::ops::cuda
