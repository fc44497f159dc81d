// Internal: the kernels behind ops::packed_linear_forward (ops/packed_linear.h). Each owns its
// threading (parallel_for over output columns) and its CPU dispatch (target attributes, checked at
// run time, so a build without -march=native still carries the AVX-512 / AMX paths).
#pragma once
#include <cstdint>
#include <cstring>
#include <string>

#include "ops/packed_linear.h"

namespace mslm::ops::detail {

// Same rounding as ops::float_to_bf16 (nearest even, NaN made quiet), inline so that the packing and
// dequantizing loops vectorise.
inline uint16_t to_bf16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return static_cast<uint16_t>(u >> 16);
}

// The vector paths of the packed CPU kernels (packed_gemv.cpp, packed_dequant.cpp), chosen at run
// time. MSLM_PACKED_KERNEL=scalar|avx2|avx512 forces one for every packed kernel.
enum class PackedPath : int { Scalar, Avx2, Avx512 };
const char* packed_path_name(PackedPath p);
// `name` as a path; throws naming `source` when the name is unknown or this CPU lacks the path.
PackedPath parse_packed_path(const std::string& name, const char* source);
// MSLM_PACKED_KERNEL when set, else the widest path this CPU has; read once.
PackedPath configured_packed_path();

// M < kPackedGemmMinRows (decoding): fp32 activations against widened bf16 weights; int8 activations
// quantized per row against int8 weights. In packed_gemv.cpp.
void packed_gemv_forward(float* y, const float* x, const PackedWeight& W, const float* b, int64_t M);
std::string packed_gemv_description();

// M >= kPackedGemmMinRows (prefill): bf16 × bf16 or int8 × int8 products with fp32 / int32
// accumulation, on AMX tiles where the CPU and kernel allow. In packed_gemm.cpp.
void packed_gemm_forward(float* y, const float* x, const PackedWeight& W, const float* b, int64_t M);
std::string packed_gemm_description();
// Whether packed_gemm_forward's bf16 products run on AMX tiles now (the CPU has them, the OS allows
// them, and MSLM_PACKED_GEMM or a test did not force the fallback).
bool packed_gemm_uses_amx();

// W8A16, NF4 and FP4 (weights dequantized on the fly), any M: fused decode + FMA kernels up to
// kDequantGemvMaxRows rows of x (in passes of < kPackedGemmMinRows rows); above, the weights
// dequantized to bf16 for the AMX product where packed_gemm_uses_amx(), else panels dequantized to
// fp32 for an OpenBLAS product. In packed_dequant.cpp.
void packed_dequant_forward(float* y, const float* x, const PackedWeight& W, const float* b, int64_t M);
std::string packed_dequant_description();

// Per-row symmetric int8 quantization of activations: q = round(x / s) clamped to ±127,
// s = absmax(row) / 127 (0 for a zero row, whose q are all 0). Shared by both kernels so that they
// see the same quantized activations. Rows of x are `in` apart; rows of q are `ld` apart and zero
// padded from `in` to `ld`.
void quantize_rows_int8(int8_t* q, float* scale, const float* x, int64_t M, int64_t in, int64_t ld);

// y = (s_w · s_x) · float(acc) + b with exactly these two roundings: the empty asm keeps GCC's
// default -ffp-contract=fast from fusing the product and the sum into one FMA, which would change
// the last bit and make the kernels disagree with each other and with the reference.
inline float dequantize_int8(float scale_w, float sx, int32_t acc, float bias) {
    float p = scale_w * sx * static_cast<float>(acc);
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    asm("" : "+x"(p));
#endif
    return p + bias;
}

}  // namespace mslm::ops::detail
