// Packing, the reference product and the dispatch of ops/packed_linear.h; the fast kernels live in
// packed_gemv.cpp (decoding) and packed_gemm.cpp (prefill).
#include "ops/packed_linear.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "core/thread_pool.h"
#include "ops/cpu/packed_kernels.h"

namespace mslm::ops {

namespace {

int64_t round_up(int64_t v, int64_t m) {
    return (v + m - 1) / m * m;
}

template <typename T>
std::shared_ptr<T> aligned_zeroed(size_t count) {
    const size_t bytes = std::max<size_t>(64, round_up(static_cast<int64_t>(count * sizeof(T)), 64));
    void* p = std::aligned_alloc(64, bytes);
    MSLM_CHECK(p != nullptr, "out of memory packing weights ({} bytes)", bytes);
    std::memset(p, 0, bytes);
    return std::shared_ptr<T>(static_cast<T*>(p), [](T* q) { std::free(q); });
}

// Round half to even, as torch.round and the vector conversions in the default rounding mode.
inline int8_t quantize_one(float v, float inv_scale) {
    const float r = std::nearbyint(v * inv_scale);
    return static_cast<int8_t>(std::clamp(r, -127.0f, 127.0f));
}

}  // namespace

const char* weight_format_name(WeightFormat f) {
    switch (f) {
        case WeightFormat::F32:
            return "f32";
        case WeightFormat::BF16:
            return "bf16";
        case WeightFormat::Int8:
            return "int8";
        case WeightFormat::W8A16:
            return "w8a16";
        case WeightFormat::NF4:
            return "nf4";
        case WeightFormat::FP4:
            return "fp4";
    }
    return "?";
}

WeightFormat parse_weight_format(const std::string& s) {
    if (s == "f32" || s == "fp32" || s == "float32") return WeightFormat::F32;
    if (s == "bf16" || s == "bfloat16") return WeightFormat::BF16;
    if (s == "int8" || s == "w8a8") return WeightFormat::Int8;
    if (s == "w8a16") return WeightFormat::W8A16;
    if (s == "nf4") return WeightFormat::NF4;
    if (s == "fp4") return WeightFormat::FP4;
    throw Error(fmt::format("weight dtype '{}': expected f32, bf16, int8 (= w8a8), w8a16, nf4 or fp4", s));
}

uint16_t float_to_bf16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return static_cast<uint16_t>(u >> 16);
}

float bf16_to_float(uint16_t h) {
    const uint32_t u = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

size_t PackedWeight::bytes() const {
    if (is_4bit_format(format))  // the codes and the scales of the logical shape
        return static_cast<size_t>(out) * static_cast<size_t>((in + 1) / 2 + (in + group - 1) / group * 4);
    if (format == WeightFormat::W8A16)
        return static_cast<size_t>(out) * static_cast<size_t>(in) + static_cast<size_t>(out) * sizeof(float);
    const size_t elem = format == WeightFormat::Int8 ? 1 : format == WeightFormat::BF16 ? 2 : 4;
    size_t n = static_cast<size_t>(out) * static_cast<size_t>(in) * elem;
    if (format == WeightFormat::Int8) n += static_cast<size_t>(out) * (sizeof(float) + sizeof(int32_t));
    return n;
}

float PackedWeight::at(int64_t r, int64_t c) const {
    if (format == WeightFormat::BF16) return bf16_to_float(bf16()[r * ld + c]);
    if (format == WeightFormat::Int8 || format == WeightFormat::W8A16)
        return static_cast<float>(int8()[r * ld + c]);  // the row scale applies to the sum
    const uint8_t byte = nibbles()[r * (ld / 2) + (c / 32) * 16 + c % 16];
    const int q = c % 32 < 16 ? byte & 15 : byte >> 4;
    return code[q] * scale.get()[r * (ld / group) + c / group];
}

bool pack_weight_4bit(PackedWeight& p, const uint8_t* codes, const float* absmax, const float* code_book,
                      int64_t out, int64_t in, int64_t blocksize, bool row_blocks, WeightFormat format) {
    MSLM_CHECK(is_4bit_format(format), "pack_weight_4bit: format {} is not 4-bit",
               weight_format_name(format));
    MSLM_CHECK(out > 0 && in > 0, "pack_weight_4bit: empty weight ({} x {})", out, in);
    MSLM_CHECK(blocksize >= 16 && blocksize % 16 == 0,
               "pack_weight_4bit: blocksize {} is not a multiple of 16", blocksize);
    // Columns per scale: the largest of 64, 32, 16 that divides the blocksize and, for blocks over the
    // flattened tensor, the row length too (then no block boundary falls inside a group).
    int64_t group = 0;
    for (int64_t g : {64, 32, 16})
        if (blocksize % g == 0 && (row_blocks || in % g == 0)) {
            group = g;
            break;
        }
    if (group == 0) return false;
    p = PackedWeight{};
    p.format = format;
    p.out = out;
    p.in = in;
    p.ld = round_up(in, 64);
    p.out_padded = round_up(out, 16);
    p.group = group;
    int zero_code = 0;
    for (int i = 0; i < 16; ++i) {
        p.code[i] = code_book[i];
        if (code_book[i] == 0.0f) zero_code = i;
    }
    const int64_t row_bytes = p.ld / 2, groups = p.ld / group, row_nblocks = (in + blocksize - 1) / blocksize;
    auto data = aligned_zeroed<uint8_t>(static_cast<size_t>(p.out_padded * row_bytes));
    auto scale = aligned_zeroed<float>(static_cast<size_t>(p.out_padded * groups));
    std::memset(data.get(), zero_code | zero_code << 4, static_cast<size_t>(p.out_padded * row_bytes));
    parallel_for(out, [&](int64_t r0, int64_t r1) {  // rows on the pool: each writes its own
        for (int64_t r = r0; r < r1; ++r) {
            uint8_t* dst = data.get() + r * row_bytes;
            for (int64_t c = 0; c < in; ++c) {
                const int64_t f = r * in + c;
                const int q = f % 2 == 0 ? codes[f / 2] >> 4 : codes[f / 2] & 15;
                uint8_t& byte = dst[(c / 32) * 16 + c % 16];
                byte = c % 32 < 16 ? static_cast<uint8_t>((byte & 0xf0) | q)
                                   : static_cast<uint8_t>((byte & 0x0f) | q << 4);
            }
            for (int64_t g = 0; g * group < in; ++g) {
                const int64_t c = g * group;
                const int64_t block = row_blocks ? r * row_nblocks + c / blocksize : (r * in + c) / blocksize;
                scale.get()[r * groups + g] = absmax[block];
            }
        }
    });
    p.data = data;
    p.scale = scale;
    return true;
}

PackedWeight pack_weight(const float* W, int64_t out, int64_t in, WeightFormat format) {
    MSLM_CHECK(format == WeightFormat::BF16 || format == WeightFormat::Int8 || format == WeightFormat::W8A16,
               "pack_weight: format {} is not packed from fp32 here", weight_format_name(format));
    MSLM_CHECK(out > 0 && in > 0, "pack_weight: empty weight ({} x {})", out, in);
    PackedWeight p;
    p.format = format;
    p.out = out;
    p.in = in;
    p.ld = round_up(in, 64);
    p.out_padded = round_up(out, 16);
    const size_t count = static_cast<size_t>(p.out_padded) * static_cast<size_t>(p.ld);
    if (format == WeightFormat::BF16) {
        auto data = aligned_zeroed<uint16_t>(count);
        parallel_for(out, [&](int64_t r0, int64_t r1) {
            for (int64_t r = r0; r < r1; ++r)
                for (int64_t c = 0; c < in; ++c) data.get()[r * p.ld + c] = float_to_bf16(W[r * in + c]);
        });
        p.data = data;
    } else {
        auto data = aligned_zeroed<int8_t>(count);
        auto scale = aligned_zeroed<float>(static_cast<size_t>(p.out_padded));
        auto sums = aligned_zeroed<int32_t>(static_cast<size_t>(p.out_padded));
        parallel_for(out, [&](int64_t r0, int64_t r1) {  // rows on the pool: each writes its own
            for (int64_t r = r0; r < r1; ++r) {
                const float* w = W + r * in;
                float amax = 0;
                for (int64_t c = 0; c < in; ++c) amax = std::max(amax, std::fabs(w[c]));
                const float s = amax / 127.0f;
                scale.get()[r] = s;
                if (s == 0) continue;
                const float inv = 127.0f / amax;
                int32_t sum = 0;
                for (int64_t c = 0; c < in; ++c) {
                    const int8_t q = quantize_one(w[c], inv);
                    data.get()[r * p.ld + c] = q;
                    sum += q;
                }
                sums.get()[r] = sum;
            }
        });
        p.data = data;
        p.scale = scale;
        p.row_sum = sums;
    }
    return p;
}

namespace detail {

void quantize_rows_int8(int8_t* q, float* scale, const float* x, int64_t M, int64_t in, int64_t ld) {
    for (int64_t m = 0; m < M; ++m) {
        const float* xr = x + m * in;
        int8_t* qr = q + m * ld;
        // Eight running maxima (max is exact, so the grouping cannot change the result) instead of
        // one dependency chain, which cost as much as the AMX product at M = 512, in = 1536.
        float part[8] = {};
        int64_t c0 = 0;
        for (; c0 + 8 <= in; c0 += 8)
            for (int j = 0; j < 8; ++j) part[j] = std::max(part[j], std::fabs(xr[c0 + j]));
        float amax = 0;
        for (int64_t c = c0; c < in; ++c) amax = std::max(amax, std::fabs(xr[c]));
        for (float v : part) amax = std::max(amax, v);
        scale[m] = amax / 127.0f;
        if (amax == 0) {
            std::memset(qr, 0, static_cast<size_t>(ld));
            continue;
        }
        const float inv = 127.0f / amax;
        for (int64_t c = 0; c < in; ++c) qr[c] = quantize_one(xr[c], inv);
        std::memset(qr + in, 0, static_cast<size_t>(ld - in));
    }
}

}  // namespace detail

void packed_linear_reference(float* y, const float* x, const PackedWeight& W, const float* b, int64_t M,
                             bool gemm_numerics) {
    if (is_dequant_format(W.format)) {  // fp32 activations against the dequantized weights
        std::vector<float> wr(static_cast<size_t>(W.in));
        for (int64_t n = 0; n < W.out; ++n) {
            for (int64_t c = 0; c < W.in; ++c) wr[c] = W.at(n, c);
            const float post = W.format == WeightFormat::W8A16 ? W.scale.get()[n] : 1.0f;
            for (int64_t m = 0; m < M; ++m) {
                double acc = 0;
                for (int64_t c = 0; c < W.in; ++c) acc += static_cast<double>(x[m * W.in + c]) * wr[c];
                y[m * W.out + n] = post * static_cast<float>(acc) + (b ? b[n] : 0.0f);
            }
        }
        return;
    }
    if (W.format == WeightFormat::BF16) {
        std::vector<float> xr(static_cast<size_t>(W.in));
        for (int64_t m = 0; m < M; ++m) {
            for (int64_t c = 0; c < W.in; ++c)
                xr[c] = gemm_numerics ? bf16_to_float(float_to_bf16(x[m * W.in + c])) : x[m * W.in + c];
            for (int64_t n = 0; n < W.out; ++n) {
                const uint16_t* w = W.bf16() + n * W.ld;
                double acc = 0;
                for (int64_t c = 0; c < W.in; ++c) acc += static_cast<double>(xr[c]) * bf16_to_float(w[c]);
                y[m * W.out + n] = static_cast<float>(acc) + (b ? b[n] : 0.0f);
            }
        }
        return;
    }
    MSLM_CHECK(W.format == WeightFormat::Int8, "packed_linear: format {} is not packed",
               weight_format_name(W.format));
    std::vector<int8_t> q(static_cast<size_t>(W.ld));
    float sx = 0;
    for (int64_t m = 0; m < M; ++m) {
        detail::quantize_rows_int8(q.data(), &sx, x + m * W.in, 1, W.in, W.ld);
        for (int64_t n = 0; n < W.out; ++n) {
            const int8_t* w = W.int8() + n * W.ld;
            int64_t acc = 0;
            for (int64_t c = 0; c < W.in; ++c) acc += static_cast<int32_t>(q[c]) * w[c];
            y[m * W.out + n] =
                detail::dequantize_int8(W.scale.get()[n], sx, static_cast<int32_t>(acc), b ? b[n] : 0.0f);
        }
    }
}

void packed_linear_forward(float* y, const float* x, const PackedWeight& W, const float* b, int64_t M) {
    if (M <= 0) return;
    if (is_dequant_format(W.format)) {
        detail::packed_dequant_forward(y, x, W, b, M);
        return;
    }
    MSLM_CHECK(W.format == WeightFormat::BF16 || W.format == WeightFormat::Int8,
               "packed_linear: format {} is not packed", weight_format_name(W.format));
    if (M < kPackedGemmMinRows)
        detail::packed_gemv_forward(y, x, W, b, M);
    else
        detail::packed_gemm_forward(y, x, W, b, M);
}

std::string packed_kernels_description() {
    return "decode " + detail::packed_gemv_description() + ", prefill " + detail::packed_gemm_description() +
           ", w8a16 / nf4 / fp4 " + detail::packed_dequant_description();
}

}  // namespace mslm::ops
