// Quantized linear weights on the GPU: int8 (per-row absmax) and bitsandbytes' 4-bit NF4 / FP4
// (absmax per block, optionally double-quantized), and the products that dequantize them on the fly.
//
//   quant_gemv             y = x · Wᵀ for any number of rows M of x, in tiles of up to
//                          kQuantGemvMaxRows rows (the decode step's batch 1..16 is one tile): every
//                          weight is read once per tile, so at batch 1 the product streams 0.5625
//                          bytes per NF4 weight (blocks of 64, fp32 absmax) instead of bf16's 2.
//   quant_dequantize_bf16  W into a bf16 (out, in) buffer, for prefill: the caller multiplies that
//                          with cuBLASLt on tensor cores (the simplest correct GEMM; the weight is
//                          expanded once per product, which prefill's hundreds of rows amortise).
//
// GPU layout (QuantHostWeight, uploaded as is): rows of `row_bytes` bytes, a multiple of 16, so that
// every row starts on a 16-byte load.
//   NF4 / FP4  two codes per byte in bitsandbytes' order (element c of a row in byte c / 2, the
//              high nibble when c is even), rows padded with the code of 0.0 to a multiple of 32
//              columns; one block of `blocksize` columns (a power of two, 16..4096) per absmax, each
//              row starting a block of its own. When the row length is a multiple of the blocksize
//              (every preset), codes and absmax are byte for byte bitsandbytes' flattened tensors.
//              The absmax is fp32, or double-quantized as bitsandbytes does: an 8-bit code per block
//              into the 256-entry dynamic map, times the nested absmax of its group of 256 blocks
//              (over the flattened (out, row_blocks) array), plus the offset. w = code[q] · absmax,
//              computed in fp32 exactly as bitsandbytes' dequantize_4bit (and quant/bnb.h).
//   Int8       int8 rows padded with zeros to a multiple of 16 columns; one fp32 scale per row
//              (absmax / 127, ops/packed_linear.h's W8A16 / int8 weights): w = q · scale.
//
// Numerics: the activations are bf16 (the decoder's), products and sums fp32. The 4-bit GEMV sums
// code[q] · x over the 8 columns of one 32-bit word of codes, then adds that times the block's
// absmax; int8 sums q · x over the row and multiplies by the row's scale once. So the result is the
// fp32 product of x with the dequantized weights, summed in another order (the tolerance argued in
// tests/unit/test_cuda_quant_gemv.cpp). By default 4-bit weights in blocks of ≥ 32 columns take an
// int8 path instead (MSLM_QUANT_GEMV_DP4A=0 restores the above): the code book times 127 rounded to
// integers, x quantized per row and 32 columns (its largest magnitude to 127), exact integer sums of
// 32 products (dp4a; from 5 rows, fp32 absmax, int8 tensor-core tiles: MSLM_QUANT_GEMV_MMA) scaled by
// absmax · m / 127² — ~1% rms a product, +0.06% perplexity on a trained model (docs/PERFORMANCE.md).
// quant_dequantize_bf16 rounds each dequantized fp32 weight to bf16 once (bitsandbytes with
// bnb_4bit_compute_dtype=bfloat16 does the same).
//
// Plain C++17 header (the .cu files compile as C++17). The host-side builders (quant_weight_*) exist in every
// build, so the layout is tested without a GPU; the device functions only in builds with MSLM_HAVE_CUDA.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "ops/packed_linear.h"

namespace mslm::ops::cuda {

enum class QuantFormat : uint8_t { Int8, NF4, FP4 };

const char* quant_format_name(QuantFormat f);

// The GPU format a packed CPU weight maps to: Int8 and W8A16 => Int8 (the GPU product is
// weight-only: bf16 activations, see quant_gemv), NF4 => NF4, FP4 => FP4. Throws for the others.
QuantFormat quant_format_of(WeightFormat f);

constexpr int64_t kQuantGemvMaxRows = 16;

// A quantized weight (out, in) in the GPU layout, on the host.
struct QuantHostWeight {
    QuantFormat format = QuantFormat::NF4;
    int64_t out = 0, in = 0;
    int64_t row_bytes = 0;      // bytes per row of `data`, a multiple of 16
    std::vector<uint8_t> data;  // (out, row_bytes)
    // 4-bit: columns per absmax and blocks per row (ceil(in / blocksize)).
    int64_t blocksize = 0, row_blocks = 0;
    // Int8: (out) row scales. 4-bit without double quantization: (out, row_blocks) absmax.
    std::vector<float> scale;
    // 4-bit with double quantization (scale empty): (out · row_blocks) codes into nested_code (256,
    // bitsandbytes' dynamic map), ceil(out · row_blocks / 256) nested absmax values, and the offset.
    bool double_quant = false;
    std::vector<uint8_t> absmax_q;
    std::vector<float> nested_absmax, nested_code;
    float offset = 0;
    std::array<float, 16> code{};  // 4-bit: the code book, index -> value

    float absmax(int64_t r, int64_t block) const;  // 4-bit: the block's absmax in fp32
    float at(int64_t r, int64_t c) const;          // the dequantized weight in fp32, as the kernels see it
    size_t device_bytes() const;                   // bytes quant_weight_upload places
    size_t stream_bytes() const;                   // bytes one product reads: codes and scales
};

// Row length padded to the layout (columns): 32 for 4-bit, 16 for int8.
int64_t quant_padded_in(QuantFormat f, int64_t in);

// The GPU copy of a CPU packed weight (ops/packed_linear.h; Int8, W8A16, NF4, FP4): the same codes
// and scales, so the GPU multiplies by exactly the CPU's weights. A 4-bit weight's blocks are its
// scale groups (16, 32 or 64 columns).
QuantHostWeight quant_weight_from_packed(const PackedWeight& p);
// W (out, in) fp32 quantized with bitsandbytes' quantizer (quant/bnb.h), each row in blocks of its
// own; double_quant quantizes the (out, row_blocks) absmax array as bitsandbytes' compress_statistics.
// format NF4 or FP4.
QuantHostWeight quant_weight_4bit(const float* W, int64_t out, int64_t in, QuantFormat format,
                                  int64_t blocksize, bool double_quant);
// W (out, in) fp32 to int8 rows: q = round(w · 127 / absmax), half to even; scale = absmax / 127.
QuantHostWeight quant_weight_int8(const float* W, int64_t out, int64_t in);

// A weight placed in GPU memory (pointers into one block).
struct QuantWeight {
    QuantFormat format = QuantFormat::NF4;
    int64_t out = 0, in = 0, row_bytes = 0, blocksize = 0, row_blocks = 0;
    const uint8_t* data = nullptr;
    const float* scale = nullptr;          // Int8 rows, or 4-bit fp32 absmax
    const uint8_t* absmax_q = nullptr;     // double quantization
    const float* nested_absmax = nullptr;  // double quantization
    const float* nested_code = nullptr;    // double quantization: the 256-entry dynamic map
    float offset = 0;
    float code[16] = {};
};

// Copies w into `block` (GPU memory of w.device_bytes() bytes, 256-byte aligned) on `stream` and
// returns the view. The host weight must stay alive until the stream has run the copies.
QuantWeight quant_weight_upload(const QuantHostWeight& w, void* block, void* stream);

enum class QuantEpilogue {
    Store,     // out (bf16) = round(v + b)
    Residual,  // out (bf16) = round(out + round(v + b)): the unfused linear + axpy's two roundings
    SwiGLU,    // W holds [gate (O, in) | up (O, in)]: out = round(silu(round(g + b_g)) · round(u + b_u))
    F32,       // out32 = v + b, not rounded (logits)
};

struct QuantGemv {
    const uint16_t* x = nullptr;  // (M, in) bf16, row stride ld_x
    int64_t ld_x = 0, M = 0;
    QuantWeight W;                   // (O, in), or (2·O, in) for SwiGLU
    const uint16_t* bias = nullptr;  // (O) or (2·O), bf16, or null
    QuantEpilogue epi = QuantEpilogue::Store;
    uint16_t* out = nullptr;  // (M, O) bf16, row stride ld_out
    float* out32 = nullptr;   // F32: (M, O), row stride ld_out
    int64_t ld_out = 0;
};

// Outputs per product: W.out, or W.out / 2 for SwiGLU.
int64_t quant_gemv_outputs(const QuantGemv& a);
// Launched with programmatic dependent launch (sm_90; MSLM_DECODE_PDL=0 turns it off): the kernel
// starts its weight loads before the previous kernel in the stream has finished, and waits for it
// before reading x or out. So W must not be written by a kernel just before it in the stream (the
// decoder's weights are constants; copies are not kernels and complete first).
void quant_gemv(const QuantGemv& a, void* stream);

// out (W.out, W.in) bf16 row-major = the dequantized weights, each rounded once.
void quant_dequantize_bf16(uint16_t* out, const QuantWeight& W, void* stream);

}  // namespace mslm::ops::cuda
