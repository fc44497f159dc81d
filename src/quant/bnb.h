// bitsandbytes' 4-bit (NF4, FP4) and 8-bit formats, bit for bit: blockwise absmax quantization,
// double quantization of the absmax values, and int8 row-wise absmax. The rules (nearest value,
// ties, partial blocks, NaN) follow bitsandbytes' pure-PyTorch reference kernels
// (bitsandbytes/backends/default/ops.py, 0.50); tests/parity/make_bnb_fixtures.py pins them.
#pragma once
#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace mslm::quant {

enum class Bnb4Type { NF4, FP4 };

constexpr int64_t kBnbDefaultBlocksize = 64;
constexpr int64_t kBnbNestedBlocksize = 256;  // double quantization of the absmax values

// Code book, index -> value in [-1, 1]; FP4 is bitsandbytes' own (not OCP E2M1): bit 3 sign,
// low bits {0, 0.0625, 8, 12, 4, 6, 2, 3} / 12.
const std::array<float, 16>& bnb4_code(Bnb4Type type);
// The signed 8-bit dynamic map of bitsandbytes.functional.create_dynamic_map(), sorted.
const std::array<float, 256>& bnb_dynamic_map();
// Throws unless blocksize is a power of two in [32, 4096] (bitsandbytes' accepted set).
void check_bnb4_blocksize(int64_t blocksize);

struct Bnb4Quantized {
    std::vector<uint8_t> packed;  // (ceil(n/2),) first element in the high nibble
    std::vector<float> absmax;    // (ceil(n/blocksize),)
};

Bnb4Quantized bnb4_quantize(std::span<const float> x, Bnb4Type type, int64_t blocksize = kBnbDefaultBlocksize);
// out (n,) = code[nibble] * absmax[block].
void bnb4_dequantize(std::span<const uint8_t> packed, std::span<const float> absmax, Bnb4Type type,
                     int64_t blocksize, std::span<float> out);

struct Blockwise8Quantized {
    std::vector<uint8_t> q;     // (n,) index into the 256-entry code
    std::vector<float> absmax;  // (ceil(n/blocksize),)
};

// bitsandbytes' quantize_blockwise on a sorted 256-entry code (the dynamic map by default).
Blockwise8Quantized quantize_blockwise_8bit(std::span<const float> x, int64_t blocksize,
                                            const std::array<float, 256>& code = bnb_dynamic_map());
void dequantize_blockwise_8bit(std::span<const uint8_t> q, std::span<const float> absmax, int64_t blocksize,
                               std::span<float> out, const std::array<float, 256>& code = bnb_dynamic_map());

// Double quantization: offset = mean(absmax); (absmax - offset) quantized 8-bit blockwise (256)
// on the dynamic map. bitsandbytes keys: weight.absmax = q, weight.nested_absmax, nested_offset.
struct DoubleQuantized {
    std::vector<uint8_t> q;
    std::vector<float> nested_absmax;
    float offset = 0;
};

DoubleQuantized double_quantize_absmax(std::span<const float> absmax);
std::vector<float> double_dequantize_absmax(const DoubleQuantized& d);

// A 4-bit tensor as bitsandbytes keeps it (Params4bit + QuantState): the codes, the absmax of each
// block in fp32 or double-quantized, and the dtype that dequantization rounds to (the quant state's
// dtype, bnb_4bit_compute_dtype: "float32", "bfloat16" or "float16").
struct Bnb4Tensor {
    Bnb4Type type = Bnb4Type::NF4;
    int64_t blocksize = kBnbDefaultBlocksize;
    int64_t n = 0;
    std::vector<uint8_t> codes;  // (ceil(n/2),) first element in the high nibble
    std::vector<float> absmax;   // (ceil(n/blocksize),) without double quantization; empty with it
    bool double_quant = false;
    DoubleQuantized nested;      // with double quantization
    std::string dtype = "float32";

    // Bytes held: codes, plus the fp32 absmax or the 8-bit absmax, nested absmax and offset.
    size_t bytes() const;
    // Switches the absmax between the two forms: double_quantize_absmax of the fp32 values, or their
    // restoration (double_dequantize_absmax); the codes do not change.
    void set_double_quant(bool on);
};

Bnb4Tensor bnb4_tensor_quantize(std::span<const float> x, Bnb4Type type, int64_t blocksize, bool double_quant);
// out (n,) = code[nibble] · absmax[block] (the absmax restored first), rounded to t.dtype and back.
void bnb4_tensor_dequantize(const Bnb4Tensor& t, std::span<float> out);

// int8 absmax per row (LLM.int8()'s int8_vectorwise_quant, threshold 0): q = round(x·(127/absmax)),
// half to even. Weights: one row per output feature. Activations: one row per token, computed on
// the fly (dynamic). A row of zeros gets absmax 0 and q = 0 (bitsandbytes divides by zero there);
// a row with a NaN gets absmax NaN and q = 0 (bitsandbytes casts NaN to int8, undefined).
struct Int8Rows {
    std::vector<int8_t> q;      // (rows, cols)
    std::vector<float> absmax;  // (rows,)
};

Int8Rows int8_quantize_rows(std::span<const float> x, int64_t rows, int64_t cols);
void int8_dequantize_rows(const Int8Rows& q, int64_t rows, int64_t cols, std::span<float> out);

}  // namespace mslm::quant
