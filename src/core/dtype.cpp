#include "core/dtype.h"

#include <cstring>

namespace mslm {

namespace {
struct DTypeInfo {
    DType type;
    size_t size;
    std::string_view name;
};
constexpr DTypeInfo kInfo[] = {
    {DType::F32, 4, "F32"}, {DType::F64, 8, "F64"}, {DType::BF16, 2, "BF16"}, {DType::F16, 2, "F16"},
    {DType::I64, 8, "I64"}, {DType::I32, 4, "I32"}, {DType::I16, 2, "I16"},  {DType::I8, 1, "I8"},
    {DType::U8, 1, "U8"},   {DType::BOOL, 1, "BOOL"},
};
}  // namespace

size_t dtype_size(DType t) { return kInfo[static_cast<int>(t)].size; }
std::string_view dtype_name(DType t) { return kInfo[static_cast<int>(t)].name; }

bool dtype_from_name(std::string_view name, DType* out) {
    for (const auto& info : kInfo) {
        if (info.name == name) {
            *out = info.type;
            return true;
        }
    }
    return false;
}

uint16_t f32_to_f16(float f) {
    uint32_t x = std::bit_cast<uint32_t>(f);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t mag = x & 0x7fffffffu;
    if (mag > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
    if (mag >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u); // rounds to >= 65520: inf
    if (mag < 0x38800000u) {
        // Subnormal half (or zero): value = mag_float; half ulp = 2^-24.
        float af = std::bit_cast<float>(mag);
        // Adding 0.5 (2^-1) puts the half subnormal bits in the low mantissa bits with RNE.
        float shifted = af + 0.5f;
        uint32_t bits = std::bit_cast<uint32_t>(shifted) - 0x3f000000u;
        return static_cast<uint16_t>(sign | bits);
    }
    uint32_t mant_odd = (mag >> 13) & 1u;
    mag += 0xc8000fffu + mant_odd;  // rebias exponent (-112 << 23) and round to nearest even
    return static_cast<uint16_t>(sign | (mag >> 13));
}

float f16_to_f32(uint16_t h) {
    uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else {
            float v = static_cast<float>(mant) * 0x1.0p-24f;
            return sign ? -v : v;
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 112) << 23) | (mant << 13);
    }
    return std::bit_cast<float>(bits);
}

}  // namespace mslm
