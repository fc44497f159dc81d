// The host side of ops/cuda/quant_gemv.h: the GPU layout of quantized weights, built from the CPU's
// packed weights or quantized from fp32, and its reference dequantization. No CUDA here, so the
// layout is tested in every build.
#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "core/thread_pool.h"
#include "ops/cuda/quant_gemv.h"
#include "quant/bnb.h"

namespace mslm::ops::cuda {

namespace {

int64_t round_up(int64_t v, int64_t m) {
    return (v + m - 1) / m * m;
}

size_t aligned256(size_t n) {
    return (n + 255) / 256 * 256;
}

int zero_code(const std::array<float, 16>& code) {
    for (int i = 0; i < 16; ++i)
        if (code[i] == 0.0f) return i;
    return 0;
}

void set_nibble(std::vector<uint8_t>& data, int64_t row_bytes, int64_t r, int64_t c, int q) {
    uint8_t& byte = data[static_cast<size_t>(r * row_bytes + c / 2)];
    byte =
        c % 2 == 0 ? static_cast<uint8_t>((byte & 0x0f) | q << 4) : static_cast<uint8_t>((byte & 0xf0) | q);
}

// A 4-bit weight with every code the zero code (the padding), shaped and sized.
QuantHostWeight empty_4bit(QuantFormat format, int64_t out, int64_t in, int64_t blocksize,
                           const std::array<float, 16>& code) {
    MSLM_CHECK(out > 0 && in > 0, "quantized weight: empty shape ({} x {})", out, in);
    MSLM_CHECK(blocksize >= 16 && blocksize <= 4096 && (blocksize & (blocksize - 1)) == 0,
               "quantized weight: blocksize {} is not a power of two in [16, 4096]", blocksize);
    QuantHostWeight w;
    w.format = format;
    w.out = out;
    w.in = in;
    w.row_bytes = quant_padded_in(format, in) / 2;
    w.blocksize = blocksize;
    w.row_blocks = (in + blocksize - 1) / blocksize;
    w.code = code;
    const int z = zero_code(code);
    w.data.assign(static_cast<size_t>(out * w.row_bytes), static_cast<uint8_t>(z << 4 | z));
    return w;
}

}  // namespace

const char* quant_format_name(QuantFormat f) {
    switch (f) {
        case QuantFormat::Int8:
            return "int8";
        case QuantFormat::NF4:
            return "nf4";
        case QuantFormat::FP4:
            return "fp4";
    }
    return "?";
}

QuantFormat quant_format_of(WeightFormat f) {
    switch (f) {
        case WeightFormat::Int8:
        case WeightFormat::W8A16:
            return QuantFormat::Int8;
        case WeightFormat::NF4:
            return QuantFormat::NF4;
        case WeightFormat::FP4:
            return QuantFormat::FP4;
        default:
            fail("weight dtype {} has no quantized GPU format (expected int8, w8a16, nf4 or fp4)",
                 weight_format_name(f));
    }
}

int64_t quant_padded_in(QuantFormat f, int64_t in) {
    return round_up(in, f == QuantFormat::Int8 ? 16 : 32);
}

float QuantHostWeight::absmax(int64_t r, int64_t block) const {
    const int64_t i = r * row_blocks + block;
    if (!double_quant) return scale[static_cast<size_t>(i)];
    // bitsandbytes: dequantize_blockwise (code · nested absmax, fp32) then + offset, two roundings
    // (volatile: the compiler may not fuse them into one multiply-add).
    const volatile float a = nested_code[absmax_q[static_cast<size_t>(i)]] *
                             nested_absmax[static_cast<size_t>(i / quant::kBnbNestedBlocksize)];
    return a + offset;
}

float QuantHostWeight::at(int64_t r, int64_t c) const {
    const uint8_t* row = data.data() + r * row_bytes;
    if (format == QuantFormat::Int8) return static_cast<float>(static_cast<int8_t>(row[c])) * scale[r];
    const int q = c % 2 == 0 ? row[c / 2] >> 4 : row[c / 2] & 15;
    return code[static_cast<size_t>(q)] * absmax(r, c / blocksize);
}

size_t QuantHostWeight::device_bytes() const {
    size_t n = aligned256(data.size()) + aligned256(sizeof(float) * scale.size());
    if (double_quant)
        n += aligned256(absmax_q.size()) + aligned256(sizeof(float) * nested_absmax.size()) +
             aligned256(sizeof(float) * nested_code.size());
    return n;
}

size_t QuantHostWeight::stream_bytes() const {
    return data.size() + sizeof(float) * (scale.size() + nested_absmax.size()) + absmax_q.size();
}

QuantHostWeight quant_weight_from_packed(const PackedWeight& p) {
    const QuantFormat format = quant_format_of(p.format);
    if (format == QuantFormat::Int8) {
        MSLM_CHECK(p.out > 0 && p.in > 0, "quantized weight: empty shape ({} x {})", p.out, p.in);
        QuantHostWeight w;
        w.format = format;
        w.out = p.out;
        w.in = p.in;
        w.row_bytes = quant_padded_in(format, p.in);
        w.data.assign(static_cast<size_t>(p.out * w.row_bytes), 0);
        w.scale.assign(p.scale.get(), p.scale.get() + p.out);
        parallel_for(p.out, [&](int64_t r0, int64_t r1) {
            for (int64_t r = r0; r < r1; ++r)
                std::memcpy(w.data.data() + r * w.row_bytes, p.int8() + r * p.ld, static_cast<size_t>(p.in));
        });
        return w;
    }
    std::array<float, 16> code;
    std::copy(p.code, p.code + 16, code.begin());
    QuantHostWeight w = empty_4bit(format, p.out, p.in, p.group, code);
    w.scale.resize(static_cast<size_t>(p.out * w.row_blocks));
    const int64_t groups = p.ld / p.group;
    parallel_for(p.out, [&](int64_t r0, int64_t r1) {  // rows on the pool: each writes its own bytes
        for (int64_t r = r0; r < r1; ++r) {
            for (int64_t b = 0; b < w.row_blocks; ++b)
                w.scale[static_cast<size_t>(r * w.row_blocks + b)] = p.scale.get()[r * groups + b];
            // The CPU layout: byte j of each 32-column group holds columns j (low nibble) and j + 16.
            const uint8_t* src = p.nibbles() + r * (p.ld / 2);
            for (int64_t c = 0; c < p.in; ++c) {
                const uint8_t byte = src[(c / 32) * 16 + c % 16];
                set_nibble(w.data, w.row_bytes, r, c, c % 32 < 16 ? byte & 15 : byte >> 4);
            }
        }
    });
    return w;
}

QuantHostWeight quant_weight_4bit(const float* W, int64_t out, int64_t in, QuantFormat format,
                                  int64_t blocksize, bool double_quant) {
    MSLM_CHECK(format != QuantFormat::Int8, "quant_weight_4bit: int8 is not a 4-bit format");
    const quant::Bnb4Type type = format == QuantFormat::NF4 ? quant::Bnb4Type::NF4 : quant::Bnb4Type::FP4;
    QuantHostWeight w = empty_4bit(format, out, in, blocksize, quant::bnb4_code(type));
    w.scale.resize(static_cast<size_t>(out * w.row_blocks));
    parallel_for(out, [&](int64_t r0, int64_t r1) {  // rows on the pool: each writes its own bytes
        for (int64_t r = r0; r < r1; ++r) {
            const quant::Bnb4Quantized q = quant::bnb4_quantize(
                std::span<const float>(W + r * in, static_cast<size_t>(in)), type, blocksize);
            std::copy(q.absmax.begin(), q.absmax.end(), w.scale.begin() + r * w.row_blocks);
            // The row's codes start on a byte of their own: a row's packed bytes are the layout's bytes.
            std::copy(q.packed.begin(), q.packed.end(), w.data.begin() + r * w.row_bytes);
            if (in % 2 == 1)
                set_nibble(w.data, w.row_bytes, r, in, zero_code(w.code));  // the quantizer's pad
        }
    });
    if (double_quant) {
        quant::DoubleQuantized d = quant::double_quantize_absmax(w.scale);
        w.double_quant = true;
        w.absmax_q = std::move(d.q);
        w.nested_absmax = std::move(d.nested_absmax);
        w.offset = d.offset;
        w.nested_code.assign(quant::bnb_dynamic_map().begin(), quant::bnb_dynamic_map().end());
        w.scale.clear();
    }
    return w;
}

QuantHostWeight quant_weight_int8(const float* W, int64_t out, int64_t in) {
    return quant_weight_from_packed(pack_weight(W, out, in, WeightFormat::W8A16));
}

}  // namespace mslm::ops::cuda
