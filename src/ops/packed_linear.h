// Inference-only weights of nn.Linear in a compact format, and the product x · Wᵀ against them.
//
// Training keeps fp32 weights; `generate`, `chat` and `bench_decode` may pack every linear weight
// (and the tied LM head) into bf16 or int8 once after loading. Batch-1 decoding streams every
// weight once per token, so half or a quarter of the bytes is up to 2× or 4× the tokens/s; prefill
// runs the packed weights on AMX tiles where the CPU has them.
//
// Layout (bf16, int8): W (out, in) row-major, each row padded with zeros to `ld` elements, a
// multiple of 64, and the rows padded with zero rows to `out_padded`, a multiple of 16; the buffer
// is 64-byte aligned. One layout serves every kernel: a GEMV streams rows, and an AMX tile of 16
// rows × 64 bytes loads straight from it with stride ld (y = x·Wᵀ is computed as yᵀ = W·xᵀ, with W
// the tile's A operand).
//
// Numerics:
//   BF16  weights rounded to nearest even. Decoding rows (M below kPackedGemmMinRows) multiply
//         fp32 activations by the widened weights with fp32 accumulation; longer products (prefill)
//         round the activations to bf16 as well (AMX / AVX-512 BF16 dot products, fp32
//         accumulation), like PyTorch's bf16 autocast on the CPU.
//   INT8  symmetric per-output-row absmax: w_q = round(w / s), s = absmax(row) / 127, and row sums
//         of w_q kept for the u8 × s8 dot-product trick. Activations are quantized per row of x
//         (per token) the same way at run time, the dot product is exact in int32, and
//         y = s_w · s_x · Σ x_q · w_q (+ bias). This is bitsandbytes' LLM.int8 vector-wise scheme
//         without its outlier decomposition ("W8A8"; the name "w8a8" selects it too).
//   W8A16 the same int8 weights and row scales, fp32 activations: y = s_w · Σ x · w_q (+ bias), the
//         int8 weights widened to fp32 on the fly, fp32 FMA accumulation. Dynamic activation
//         quantization costs precision (issue 8, must 7); this is the alternative it is measured against.
//   NF4 / FP4  bitsandbytes' 4-bit blockwise formats (quant/bnb.h): w = code[q] · absmax[block], one
//         16-entry code book and one fp32 scale per `group` columns of a row (group 16, 32 or 64, a
//         divisor of the blocksize: bitsandbytes' double-quantized absmax is decoded to fp32 once at
//         pack time). The kernels look the codes up in a 16-entry table held in registers, multiply by
//         the group's scale (so each weight is exactly bitsandbytes' dequantized fp32 value) and
//         accumulate x · w in fp32. Codes are stored two per byte, but in our own order (see
//         packed_linear.cpp: byte j of each 32-column group holds columns j and j + 16), 4 bits a weight.
// Every output element is computed by one thread in a fixed order, so results do not depend on
// the thread count; they do depend on the kernel chosen (AVX-512 / AVX2 / scalar), within the
// tolerance argued in tests/unit/test_packed_linear.cpp.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace mslm::ops {

enum class WeightFormat : uint8_t { F32, BF16, Int8, W8A16, NF4, FP4 };

const char* weight_format_name(WeightFormat f);
// The formats that dequantize on the fly to fp32 inside the kernels (packed_dequant.cpp).
inline bool is_dequant_format(WeightFormat f) {
    return f == WeightFormat::W8A16 || f == WeightFormat::NF4 || f == WeightFormat::FP4;
}
inline bool is_4bit_format(WeightFormat f) {
    return f == WeightFormat::NF4 || f == WeightFormat::FP4;
}
// "f32" | "fp32" | "bf16" | "int8" (= "w8a8") | "w8a16" | "nf4" | "fp4"; throws with the accepted names
// otherwise.
WeightFormat parse_weight_format(const std::string& s);

// Products with at least this many rows of x use the GEMM kernels (AMX where available); fewer rows
// use the GEMV kernels, which keep activations in fp32.
constexpr int64_t kPackedGemmMinRows = 16;
// W8A16 / NF4 / FP4 products with at most this many rows of x run as GEMV passes of up to
// kPackedGemmMinRows − 1 rows (each pass decodes the weights again); more dequantize the whole
// weight once (bf16 for AMX, or fp32 panels). Measured: docs/PERFORMANCE.md, "CPU decode at batch
// 16+ on 4-bit and W8A16 weights".
constexpr int64_t kDequantGemvMaxRows = 31;

struct PackedWeight {
    WeightFormat format = WeightFormat::BF16;
    int64_t out = 0, in = 0;       // logical shape (out, in)
    int64_t ld = 0;                // row stride in elements: in rounded up to a multiple of 64
    int64_t out_padded = 0;        // out rounded up to a multiple of 16 (the extra rows are zero)
    std::shared_ptr<void> data;    // out_padded × ld elements (uint16 bf16 bits or int8; 4-bit: ld / 2
                                   // bytes a row), 64-byte aligned
    std::shared_ptr<float> scale;  // Int8, W8A16: out_padded per-row scales (absmax / 127; 0 for a zero
                                   // row). NF4 / FP4: out_padded × (ld / group) scales, row-major
    std::shared_ptr<int32_t> row_sum;  // Int8: out_padded sums of the quantized row
    int64_t group = 0;                 // NF4 / FP4: columns per scale (16, 32 or 64)
    float code[16] = {};               // NF4 / FP4: the code book, index -> value

    const uint16_t* bf16() const { return static_cast<const uint16_t*>(data.get()); }
    const int8_t* int8() const { return static_cast<const int8_t*>(data.get()); }
    const uint8_t* nibbles() const { return static_cast<const uint8_t*>(data.get()); }
    // The weight at (r, c) in fp32, as the kernels see it (any packed format): the reference's view.
    float at(int64_t r, int64_t c) const;
    size_t bytes() const;  // bytes a product reads: weights, scales and row sums
};

// Packs W (out, in) row-major fp32. format must be BF16, Int8 or W8A16 (NF4 / FP4: pack_weight_4bit,
// after quantizing, e.g. with quant::bnb4_quantize; nn/parameters.cpp does).
PackedWeight pack_weight(const float* W, int64_t out, int64_t in, WeightFormat format);

// Packs a 4-bit weight (out, in) from bitsandbytes' layout: `codes` two per byte in the order of the
// elements, first in the high nibble; absmax (fp32, already restored from double quantization) one
// per `blocksize` elements; code_book the 16 values. `row_blocks` false: blocks run over the
// flattened tensor, as bitsandbytes stores them (ceil(out·in / blocksize) scales); true: every row
// starts a new block (out · ceil(in / blocksize) scales; a row's codes still follow on from the
// previous row's in `codes`). Returns false, packing nothing, when a block boundary of the flattened
// layout would fall inside a group of 16 columns (in not a multiple of 16 and not of the blocksize),
// which the kernels' one-scale-per-group layout cannot express.
bool pack_weight_4bit(PackedWeight& p, const uint8_t* codes, const float* absmax, const float* code_book,
                      int64_t out, int64_t in, int64_t blocksize, bool row_blocks, WeightFormat format);

// y (M, out) = x (M, in) · Wᵀ + b (out); b may be null; rows of x are `in` apart, rows of y `out`.
// Splits the output columns over the thread pool. Dispatches on M and on the CPU.
void packed_linear_forward(float* y, const float* x, const PackedWeight& W, const float* b, int64_t M);

// The slow and obviously-correct version of packed_linear_forward (same numerics for the format,
// written in plain loops): what the fast kernels are tested against.
void packed_linear_reference(float* y, const float* x, const PackedWeight& W, const float* b, int64_t M,
                             bool gemm_numerics);

// Which kernels this CPU runs ("avx512-bf16+amx", "avx2", "scalar", ...) for logs and benchmarks.
std::string packed_kernels_description();

// bf16 helpers (round to nearest even; NaN kept quiet).
uint16_t float_to_bf16(float f);
float bf16_to_float(uint16_t h);

}  // namespace mslm::ops
