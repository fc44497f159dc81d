// Inference-only weights of nn.Linear in a compact format, and the product x · Wᵀ against them.
//
// Training keeps fp32 weights; `generate`, `chat` and `bench_decode` may pack every linear weight
// (and the tied LM head) into bf16 or int8 once after loading. Batch-1 decoding streams every
// weight once per token, so half or a quarter of the bytes is up to 2× or 4× the tokens/s; prefill
// runs the packed weights on AMX tiles where the CPU has them.
//
// Layout (both formats): W (out, in) row-major, each row padded with zeros to `ld` elements, a
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
//         without its outlier decomposition.
// Every output element is computed by one thread in a fixed order, so results do not depend on
// the thread count; they do depend on the kernel chosen (AVX-512 / AVX2 / scalar), within the
// tolerance argued in tests/unit/test_packed_linear.cpp.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace mslm::ops {

enum class WeightFormat : uint8_t { F32, BF16, Int8 };

const char* weight_format_name(WeightFormat f);
// "f32" | "fp32" | "bf16" | "int8"; throws with the accepted names otherwise.
WeightFormat parse_weight_format(const std::string& s);

// Products with at least this many rows of x use the GEMM kernels (AMX where available); fewer rows
// use the GEMV kernels, which keep activations in fp32.
constexpr int64_t kPackedGemmMinRows = 16;

struct PackedWeight {
    WeightFormat format = WeightFormat::BF16;
    int64_t out = 0, in = 0;       // logical shape (out, in)
    int64_t ld = 0;                // row stride in elements: in rounded up to a multiple of 64
    int64_t out_padded = 0;        // out rounded up to a multiple of 16 (the extra rows are zero)
    std::shared_ptr<void> data;    // out_padded × ld elements (uint16 bf16 bits or int8), 64-byte aligned
    std::shared_ptr<float> scale;  // Int8: out_padded per-row scales (absmax / 127; 0 for a zero row)
    std::shared_ptr<int32_t> row_sum;  // Int8: out_padded sums of the quantized row

    const uint16_t* bf16() const { return static_cast<const uint16_t*>(data.get()); }
    const int8_t* int8() const { return static_cast<const int8_t*>(data.get()); }
    size_t bytes() const;  // bytes a product reads: weights, scales and row sums
};

// Packs W (out, in) row-major fp32. format must be BF16 or Int8.
PackedWeight pack_weight(const float* W, int64_t out, int64_t in, WeightFormat format);

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
