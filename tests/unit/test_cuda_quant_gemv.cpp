// The quantized GPU weights and products (ops/cuda/quant_gemv.h).
//
// CudaQuantLayout (every build): the GPU layout holds bitsandbytes' blocks — each dequantized weight
// is bit for bit what quant/bnb.h's dequantizers give (NF4, FP4, double quantization), a row length
// that is a multiple of the blocksize gives bitsandbytes' flattened bytes as they are, and a weight
// taken from the CPU's packed copy (ops/packed_linear.h) is exactly the CPU's weight.
// CudaQuantGemv (skips without a GPU): the GEMV against a double-precision product over the same
// bf16 inputs and the bnb.h-dequantized weights, for every format, odd and padded row lengths, rows
// not a multiple of the blocksize, blocks of 16..256, 1..40 rows of x (several tiles), strided and
// misaligned x, every epilogue; and the bf16 dequantization bit for bit.
// CudaDecodeGemvQuant (skips without a GPU): the decode step's fused GEMV (model/cuda_decoder_kernels.h)
// on quantized weights — the product against the same double-precision reference for 1..8 rows;
// with the RMS and gated-norm prologues and the Store / Residual / SwiGLU epilogues against
// quant_gemv applied to the very rows the prologue normalised (its x_out); shapes it cannot take
// are reported as such; the Mamba-2 in_proj's causal-conv epilogue bit for bit as the store epilogue
// followed by ops::cuda::conv1d_causal_update.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/cuda_device.h"
#include "core/error.h"
#include "core/rng.h"
#include "cuda_test_util.h"
#include "model/cuda_decoder_kernels.h"
#include "ops/cuda/conv1d.h"
#include "ops/cuda/quant_gemv.h"
#include "ops/packed_linear.h"
#include "quant/bnb.h"
#include "test_util.h"

namespace mslm {
namespace {

using ops::cuda::QuantFormat;
using ops::cuda::QuantHostWeight;

quant::Bnb4Type bnb_type(QuantFormat f) {
    return f == QuantFormat::NF4 ? quant::Bnb4Type::NF4 : quant::Bnb4Type::FP4;
}

// Roughly normal weights with a few outliers (the blocks' absmax then differ widely).
std::vector<float> random_weights(Rng& rng, int64_t out, int64_t in) {
    std::vector<float> w(static_cast<size_t>(out * in));
    for (auto& v : w) v = static_cast<float>(0.05 * rng.normal());
    for (size_t i = 0; i < w.size(); i += 97) w[i] *= 20.0f;
    return w;
}

bool same_bits(float a, float b) {
    return std::memcmp(&a, &b, sizeof a) == 0;
}

// The weights bitsandbytes' dequantizer gives for W quantized one row at a time (quant/bnb.h), the
// absmax array (out, row_blocks) double-quantized first when asked.
std::vector<float> bnb_reference(const std::vector<float>& W, int64_t out, int64_t in, QuantFormat f,
                                 int64_t blocksize, bool double_quant) {
    const int64_t row_blocks = (in + blocksize - 1) / blocksize;
    std::vector<quant::Bnb4Quantized> rows;
    std::vector<float> absmax;
    for (int64_t r = 0; r < out; ++r) {
        rows.push_back(quant::bnb4_quantize(
            std::span<const float>(W.data() + r * in, static_cast<size_t>(in)), bnb_type(f), blocksize));
        absmax.insert(absmax.end(), rows.back().absmax.begin(), rows.back().absmax.end());
    }
    if (double_quant) absmax = quant::double_dequantize_absmax(quant::double_quantize_absmax(absmax));
    std::vector<float> deq(W.size());
    for (int64_t r = 0; r < out; ++r)
        quant::bnb4_dequantize(
            rows[r].packed,
            std::span<const float>(absmax.data() + r * row_blocks, static_cast<size_t>(row_blocks)),
            bnb_type(f), blocksize, std::span<float>(deq.data() + r * in, static_cast<size_t>(in)));
    return deq;
}

struct Shape4 {
    int64_t out, in, blocksize;
};
// Odd rows, rows shorter than a block, rows not a multiple of the blocksize or of 32, long rows.
constexpr Shape4 kShapes4[] = {{5, 64, 64}, {3, 200, 64}, {7, 33, 32},   {4, 1000, 128},
                               {2, 1, 64},  {6, 95, 256}, {3, 2048, 64}, {1, 4096, 4096}};

TEST(CudaQuantLayout, FourBitIsBitsandbytesDequantized) {
    Rng rng(1);
    for (QuantFormat f : {QuantFormat::NF4, QuantFormat::FP4})
        for (bool dq : {false, true})
            for (const Shape4& s : kShapes4) {
                SCOPED_TRACE(std::string(ops::cuda::quant_format_name(f)) + (dq ? " double quant" : "") +
                             " " + std::to_string(s.out) + "x" + std::to_string(s.in) + " blocks of " +
                             std::to_string(s.blocksize));
                const std::vector<float> W = random_weights(rng, s.out, s.in);
                const QuantHostWeight q =
                    ops::cuda::quant_weight_4bit(W.data(), s.out, s.in, f, s.blocksize, dq);
                const std::vector<float> ref = bnb_reference(W, s.out, s.in, f, s.blocksize, dq);
                EXPECT_EQ(q.row_bytes % 16, 0);
                EXPECT_EQ(q.double_quant, dq);
                int64_t misses = 0;
                for (int64_t r = 0; r < s.out; ++r)
                    for (int64_t c = 0; c < s.in; ++c) misses += !same_bits(q.at(r, c), ref[r * s.in + c]);
                EXPECT_EQ(misses, 0);
                // The padding of each row is the code of 0.0.
                const auto& code = q.code;
                for (int64_t r = 0; r < s.out; ++r)
                    for (int64_t c = s.in; c < 2 * q.row_bytes; ++c) {
                        const uint8_t byte = q.data[r * q.row_bytes + c / 2];
                        EXPECT_EQ(code[c % 2 == 0 ? byte >> 4 : byte & 15], 0.0f)
                            << "row " << r << " column " << c;
                    }
            }
}

TEST(CudaQuantLayout, WholeBlockRowsAreBitsandbytesBytes) {
    // Rows of a whole number of blocks (and of 32 columns): the codes and absmax are bitsandbytes'
    // flattened tensors byte for byte, and the double quantization its nested tensors.
    Rng rng(2);
    for (QuantFormat f : {QuantFormat::NF4, QuantFormat::FP4}) {
        const int64_t out = 9, in = 256;
        const std::vector<float> W = random_weights(rng, out, in);
        const quant::Bnb4Quantized flat = quant::bnb4_quantize(W, bnb_type(f), 64);
        const QuantHostWeight q = ops::cuda::quant_weight_4bit(W.data(), out, in, f, 64, false);
        EXPECT_EQ(q.data, flat.packed);
        EXPECT_EQ(q.scale, flat.absmax);
        const quant::DoubleQuantized d = quant::double_quantize_absmax(flat.absmax);
        const QuantHostWeight qd = ops::cuda::quant_weight_4bit(W.data(), out, in, f, 64, true);
        EXPECT_EQ(qd.absmax_q, d.q);
        EXPECT_EQ(qd.nested_absmax, d.nested_absmax);
        EXPECT_TRUE(same_bits(qd.offset, d.offset));
        EXPECT_TRUE(qd.scale.empty());
        EXPECT_EQ(qd.nested_code.size(), 256u);
    }
}

TEST(CudaQuantLayout, FromPackedIsTheCpuWeight) {
    Rng rng(3);
    // 4-bit, packed from bitsandbytes' flattened blocks: a row length of 48 with blocks of 64 gives
    // groups of 16 columns (blocks of 16 on the GPU); rows of 64·k + 32, groups of 32; and packed one
    // row at a time (as --dtype nf4 packs an fp32 model) with a row length off every group size.
    struct Case {
        int64_t out, in;
        bool row_blocks;
        int64_t group;
    };
    for (QuantFormat f : {QuantFormat::NF4, QuantFormat::FP4})
        for (const Case& c : {Case{6, 48, false, 16}, Case{5, 160, false, 32}, Case{4, 256, false, 64},
                              Case{7, 100, true, 64}, Case{3, 5, true, 64}}) {
            SCOPED_TRACE(std::to_string(c.out) + "x" + std::to_string(c.in) +
                         (c.row_blocks ? " row blocks" : ""));
            const std::vector<float> W = random_weights(rng, c.out, c.in);
            std::vector<uint8_t> codes;
            std::vector<float> absmax;
            if (c.row_blocks) {
                codes.assign(static_cast<size_t>((c.out * c.in + 1) / 2), 0);
                for (int64_t r = 0; r < c.out; ++r) {
                    const quant::Bnb4Quantized q = quant::bnb4_quantize(
                        std::span<const float>(W.data() + r * c.in, static_cast<size_t>(c.in)), bnb_type(f),
                        64);
                    absmax.insert(absmax.end(), q.absmax.begin(), q.absmax.end());
                    for (int64_t k = 0; k < c.in; ++k) {
                        const int v = k % 2 == 0 ? q.packed[k / 2] >> 4 : q.packed[k / 2] & 15;
                        const int64_t e = r * c.in + k;
                        codes[e / 2] |= static_cast<uint8_t>(e % 2 == 0 ? v << 4 : v);
                    }
                }
            } else {
                const quant::Bnb4Quantized q = quant::bnb4_quantize(W, bnb_type(f), 64);
                codes = q.packed;
                absmax = q.absmax;
            }
            ops::PackedWeight p;
            ASSERT_TRUE(ops::pack_weight_4bit(
                p, codes.data(), absmax.data(), quant::bnb4_code(bnb_type(f)).data(), c.out, c.in, 64,
                c.row_blocks, f == QuantFormat::NF4 ? ops::WeightFormat::NF4 : ops::WeightFormat::FP4));
            ASSERT_EQ(p.group, c.group);
            const QuantHostWeight q = ops::cuda::quant_weight_from_packed(p);
            EXPECT_EQ(q.blocksize, c.group);
            int64_t misses = 0;
            for (int64_t r = 0; r < c.out; ++r)
                for (int64_t k = 0; k < c.in; ++k) misses += !same_bits(q.at(r, k), p.at(r, k));
            EXPECT_EQ(misses, 0);
        }
    // int8 (the int8 and w8a16 packs share weights and row scales): w = q · scale.
    for (ops::WeightFormat f : {ops::WeightFormat::Int8, ops::WeightFormat::W8A16})
        for (int64_t in : {int64_t(1), int64_t(37), int64_t(64), int64_t(300)}) {
            const int64_t out = 5;
            std::vector<float> W = random_weights(rng, out, in);
            std::fill(W.begin() + in, W.begin() + 2 * in, 0.0f);  // a zero row: scale 0
            const ops::PackedWeight p = ops::pack_weight(W.data(), out, in, f);
            const QuantHostWeight q = ops::cuda::quant_weight_from_packed(p);
            EXPECT_EQ(q.format, QuantFormat::Int8);
            EXPECT_EQ(q.row_bytes % 16, 0);
            for (int64_t r = 0; r < out; ++r)
                for (int64_t k = 0; k < in; ++k)
                    ASSERT_TRUE(same_bits(q.at(r, k), p.at(r, k) * p.scale.get()[r]));
        }
}

TEST(CudaQuantLayout, RefusesOtherFormats) {
    EXPECT_THROW(ops::cuda::quant_format_of(ops::WeightFormat::BF16), Error);
    EXPECT_THROW(ops::cuda::quant_format_of(ops::WeightFormat::F32), Error);
    Rng rng(4);
    const std::vector<float> W = random_weights(rng, 2, 64);
    EXPECT_THROW(ops::cuda::quant_weight_4bit(W.data(), 2, 64, QuantFormat::NF4, 48, false), Error);
    EXPECT_THROW(ops::cuda::quant_weight_4bit(W.data(), 2, 64, QuantFormat::Int8, 64, false), Error);
}

#ifdef MSLM_HAVE_CUDA

using ops::cuda::QuantEpilogue;
using ops::cuda::QuantGemv;
using ops::cuda::QuantWeight;

// A host weight on the GPU for the life of the test.
struct DeviceWeight {
    test::DeviceBytes block;
    QuantWeight view;
    explicit DeviceWeight(const QuantHostWeight& h)
        : block(h.device_bytes()), view(ops::cuda::quant_weight_upload(h, block.get(), nullptr)) {
        cuda_synchronize();
    }
};

// A weight to test, with the fp32 reference values w (out, in) from bnb.h's dequantizers (4-bit,
// quantized here one row at a time) or the CPU's packed weights (int8; 4-bit blocks of 16 and 32).
struct Subject {
    std::string name;
    QuantHostWeight host;
    std::vector<float> w;
};

Subject subject_4bit(Rng& rng, QuantFormat f, int64_t out, int64_t in, int64_t blocksize, bool dq) {
    const std::vector<float> W = random_weights(rng, out, in);
    Subject s{std::string(ops::cuda::quant_format_name(f)) + (dq ? "+dq" : "") + " " + std::to_string(out) +
                  "x" + std::to_string(in) + " bs" + std::to_string(blocksize),
              ops::cuda::quant_weight_4bit(W.data(), out, in, f, blocksize, dq),
              bnb_reference(W, out, in, f, blocksize, dq)};
    return s;
}

// Packed from bitsandbytes' flattened blocks of 64 with rows of 48 (groups, hence blocks, of 16).
Subject subject_blocks16(Rng& rng, int64_t out) {
    const int64_t in = 48;
    const std::vector<float> W = random_weights(rng, out, in);
    const quant::Bnb4Quantized q = quant::bnb4_quantize(W, quant::Bnb4Type::NF4, 64);
    ops::PackedWeight p;
    EXPECT_TRUE(ops::pack_weight_4bit(p, q.packed.data(), q.absmax.data(),
                                      quant::bnb4_code(quant::Bnb4Type::NF4).data(), out, in, 64, false,
                                      ops::WeightFormat::NF4));
    Subject s{"nf4 " + std::to_string(out) + "x48 bs16", ops::cuda::quant_weight_from_packed(p),
              std::vector<float>(static_cast<size_t>(out * in))};
    std::vector<float> deq(W.size());
    quant::bnb4_dequantize(q.packed, q.absmax, quant::Bnb4Type::NF4, 64, deq);
    s.w = deq;
    return s;
}

Subject subject_int8(Rng& rng, int64_t out, int64_t in) {
    const std::vector<float> W = random_weights(rng, out, in);
    const ops::PackedWeight p = ops::pack_weight(W.data(), out, in, ops::WeightFormat::W8A16);
    Subject s{"int8 " + std::to_string(out) + "x" + std::to_string(in),
              ops::cuda::quant_weight_from_packed(p), std::vector<float>(static_cast<size_t>(out * in))};
    for (int64_t r = 0; r < out; ++r)
        for (int64_t c = 0; c < in; ++c) s.w[r * in + c] = p.at(r, c) * p.scale.get()[r];
    return s;
}

std::vector<Subject> subjects() {
    Rng rng(21);
    std::vector<Subject> v;
    for (QuantFormat f : {QuantFormat::NF4, QuantFormat::FP4})
        for (bool dq : {false, true}) {
            v.push_back(subject_4bit(rng, f, 37, 200, 64, dq));    // rows off the blocksize and 32
            v.push_back(subject_4bit(rng, f, 13, 33, 32, dq));     // odd row length
            v.push_back(subject_4bit(rng, f, 300, 2048, 64, dq));  // two warps a row group
        }
    v.push_back(subject_4bit(rng, QuantFormat::NF4, 64, 8192, 64, false));  // eight warps a row group
    v.push_back(subject_4bit(rng, QuantFormat::NF4, 21, 1000, 256, true));
    v.push_back(subject_4bit(rng, QuantFormat::FP4, 5, 1, 64, false));  // one column
    v.push_back(subject_blocks16(rng, 9));
    v.push_back(subject_int8(rng, 29, 37));
    v.push_back(subject_int8(rng, 33, 512));
    v.push_back(subject_int8(rng, 200, 4096));
    return v;
}

std::vector<uint16_t> random_bf16(Rng& rng, size_t n) {
    std::vector<uint16_t> v(n);
    for (auto& x : v) x = f32_to_bf16(static_cast<float>(rng.uniform(-1.0, 1.0)));
    return v;
}

// The product of x (M rows of ld_x) with the reference weights in double, and Σ |x·w| per output.
void reference(const Subject& s, const std::vector<uint16_t>& x, int64_t M, int64_t ld_x,
               std::vector<double>& y, std::vector<double>& mag) {
    const int64_t O = s.host.out, K = s.host.in;
    y.assign(static_cast<size_t>(M * O), 0.0);
    mag.assign(y.size(), 0.0);
    for (int64_t m = 0; m < M; ++m)
        for (int64_t o = 0; o < O; ++o) {
            double acc = 0, a = 0;
            for (int64_t k = 0; k < K; ++k) {
                const double t = double(bf16_to_f32(x[m * ld_x + k])) * double(s.w[o * K + k]);
                acc += t;
                a += std::fabs(t);
            }
            y[m * O + o] = acc;
            mag[m * O + o] = a;
        }
}

// fp32 products summed in fp32: each output is a sum of K products added in a tree whose depth is at
// most 8 (the 8 columns of one word) + 2 (times the block's absmax, into the lane's sum) + K / 256
// (the lane's segments of 8 columns one after the other: at most one in 256 columns) + 5 (the warp) +
// 3 (the warps sharing a row) + 1 (the bias), plus 1 for the reference's own rounding of code·absmax:
// each a rounding of ≤ 2^-24 relative, so |error| ≤ n·2^-24·Σ|x·w| with n = 24 + K/256 (a bound, not
// an estimate). One wrong code or absmax would move an output by about Σ|x·w| / K · O(1), far above.
double gemv_tol(int64_t K, double mag) {
    return (24.0 + double(K) / 256.0) * 0x1p-24 * mag;
}

// The batch-1 tensor-core product (decode_gemv on 4-bit rows with fp32 absmax, blocks of ≥ 32) on
// fp16 operands: its exact model is the code book rounded to fp16 (what half_book gives) times the
// block's absmax, and x scaled by 2^-e into fp16, exact for every value within 2^28 of the row's
// largest. So against that model: fp32 sums of depth ≤ 24 + K / 256 as gemv_tol, taken at 2^-23 a
// rounding (the tensor cores' fp32 accumulation is not specified to round to nearest), plus the x
// values below 2^-14 of the largest, each off by at most 2^-25 of 2^e ≤ 2^-39 · max|x|.
// (Opt-in, MSLM_DECODE_GEMV_TC=1: the tests below run both kernels where it applies.)
bool takes_tc(const QuantHostWeight& w, int64_t M) {
    return M == 1 && w.format != QuantFormat::Int8 && !w.double_quant && w.blocksize >= 32;
}
Subject half_book_model(const Subject& s) {
    Subject h = s;
    const QuantHostWeight& q = s.host;
    for (int64_t r = 0; r < q.out; ++r)
        for (int64_t c = 0; c < q.in; ++c) {
            const uint8_t byte = q.data[static_cast<size_t>(r * q.row_bytes + c / 2)];
            const int code = c % 2 == 0 ? byte >> 4 : byte & 15;
            h.w[static_cast<size_t>(r * q.in + c)] =
                f16_to_f32(f32_to_f16(q.code[static_cast<size_t>(code)])) * q.absmax(r, c / q.blocksize);
        }
    return h;
}
double tc_tol(int64_t K, double mag, double max_x, double sum_w) {
    return (24.0 + double(K) / 256.0) * 0x1p-23 * mag + 0x1p-39 * max_x * sum_w;
}

// The batch-1 dp4a product (decode_gemv on 4-bit rows; MSLM_DECODE_GEMV_DP4A, see
// model/cuda_decoder_kernels.cu): its exact model is the code book times 127 rounded to integers and
// x quantized per 32 columns — m the group's largest |x|, q = rn(x · fl(127 / m)) — each 32-column
// sum of q · code exact in integers, scaled by absmax · fl(m / 127²). Against that model the sums
// are gemv_tol's fp32 tree (each output a sum of K / 32 scaled integer sums). dp4a_error: the bound
// of that model's distance from the exact product, Σ |x|·|w − ŵ| + |ŵ|·|x − x̂| with |w − ŵ| ≤
// 0.5 / 127 of the block's absmax and |x − x̂| ≤ 0.5 / 127 of the group's m (0.501: fl(127 / m)'s
// rounding moves x · 127 / m by ≤ 127 · 2^-24).
bool takes_dp(const QuantHostWeight& w, int64_t M) {
    return M == 1 && w.format != QuantFormat::Int8;
}
// quant_gemv's tiles take the same arithmetic for every row count (MSLM_QUANT_GEMV_DP4A), for 4-bit
// codes in blocks of ≥ 32 columns.
bool gemv_takes_dp(const QuantHostWeight& w) {
    return w.format != QuantFormat::Int8 && w.blocksize >= 32;
}
int code_i8(float c) {
    return int(std::rint(c * 127.0f));
}
// M rows of x (row stride ld_x) against the weight: y, mag and the error bound (M, out).
void dp4a_reference(const Subject& s, const std::vector<uint16_t>& x, int64_t M, int64_t ld_x,
                    std::vector<double>& y, std::vector<double>& mag, std::vector<double>* error = nullptr) {
    const QuantHostWeight& q = s.host;
    const int64_t K = q.in, O = q.out, groups = (K + 31) / 32;
    y.assign(static_cast<size_t>(M * O), 0.0);
    mag.assign(y.size(), 0.0);
    if (error) error->assign(y.size(), 0.0);
    std::vector<int> xq(static_cast<size_t>(groups * 32));
    std::vector<double> sx(static_cast<size_t>(groups)), gm(sx.size());
    for (int64_t m = 0; m < M; ++m) {
        const uint16_t* xr = x.data() + m * ld_x;
        std::fill(xq.begin(), xq.end(), 0);
        for (int64_t g = 0; g < groups; ++g) {
            float mx = 0.0f;
            for (int64_t k = g * 32; k < std::min(K, g * 32 + 32); ++k)
                mx = std::max(mx, std::fabs(bf16_to_f32(xr[k])));
            const float inv = mx > 0.0f ? 127.0f / mx : 0.0f;
            for (int64_t k = g * 32; k < std::min(K, g * 32 + 32); ++k) {
                const float t = bf16_to_f32(xr[k]) * inv;
                xq[static_cast<size_t>(k)] = int(std::rint(t));
            }
            sx[static_cast<size_t>(g)] = double(mx / 16129.0f);
            gm[static_cast<size_t>(g)] = mx;
        }
        for (int64_t o = 0; o < O; ++o) {
            double acc = 0, a = 0, e = 0;
            for (int64_t k = 0; k < K; ++k) {
                const uint8_t byte = q.data[static_cast<size_t>(o * q.row_bytes + k / 2)];
                const int c = code_i8(q.code[static_cast<size_t>(k % 2 == 0 ? byte >> 4 : byte & 15)]);
                const double absmax = q.absmax(o, k / q.blocksize);
                const double t =
                    double(xq[static_cast<size_t>(k)]) * c * absmax * sx[static_cast<size_t>(k / 32)];
                acc += t;
                a += std::fabs(t);
                e += 0.501 / 127.0 *
                     (std::fabs(bf16_to_f32(xr[k])) * absmax +
                      std::fabs(c * absmax / 127.0) * gm[static_cast<size_t>(k / 32)]);
            }
            const size_t i = static_cast<size_t>(m * O + o);
            y[i] = acc;
            mag[i] = a;
            if (error) (*error)[i] = e;
        }
    }
}

using test::ScopedEnv;

#endif  // MSLM_HAVE_CUDA

#define SKIP_WITHOUT_GPU() \
    if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU: " << cuda_device_summary()

TEST(CudaQuantGemv, MatchesBitsandbytesDequantizedProduct) {
    SKIP_WITHOUT_GPU();
#ifdef MSLM_HAVE_CUDA
    Rng rng(5);
    for (const Subject& s : subjects()) {
        const DeviceWeight dw(s.host);
        const int64_t O = s.host.out, K = s.host.in;
        for (int64_t M : {1, 2, 3, 5, 8, 13, 16, 17, 40}) {
            // Contiguous rows, then rows 3 columns apart from a misaligned start (the staging's
            // element path).
            for (int64_t pad : {int64_t(0), int64_t(3)}) {
                SCOPED_TRACE(s.name + " M=" + std::to_string(M) + " row padding " + std::to_string(pad));
                const int64_t ld_x = K + pad;
                const std::vector<uint16_t> x = random_bf16(rng, static_cast<size_t>(M * ld_x));
                const test::DeviceBuffer<uint16_t> dx(x, pad ? 1 : 0);
                test::DeviceBuffer<float> dy(static_cast<size_t>(M * O));
                QuantGemv g;
                g.x = dx.get();
                g.ld_x = ld_x;
                g.M = M;
                g.W = dw.view;
                g.epi = QuantEpilogue::F32;
                g.out32 = dy.get();
                g.ld_out = O;
                std::vector<double> ref, mag, tol;
                if (gemv_takes_dp(s.host)) {
                    // The dp4a products (the CUDA-core tiles, then from 2 rows the tensor-core
                    // kernel) against their int8 model, and that model's bound from the exact
                    // product; then the fp32 code book's products against the exact one.
                    std::vector<double> err, exact, emag;
                    dp4a_reference(s, x, M, ld_x, ref, mag, &err);
                    reference(s, x, M, ld_x, exact, emag);
                    for (const char* mma : {"0", "1"}) {
                        if (M < 2 && mma[0] == '1') continue;
                        SCOPED_TRACE(mma[0] == '1' ? "tensor cores" : "dp4a tiles");
                        {
                            const ScopedEnv env("MSLM_QUANT_GEMV_DP4A", "1"),
                                env2("MSLM_QUANT_GEMV_MMA", mma);
                            ops::cuda::quant_gemv(g, nullptr);
                        }
                        tol.clear();
                        for (double a : mag) tol.push_back(gemv_tol(K, a) + 1e-30);
                        const std::vector<float> got = dy.download();
                        EXPECT_TRUE(test::all_within(got, ref, tol)) << "dp4a products";
                        for (size_t i = 0; i < tol.size(); ++i) tol[i] += err[i];
                        EXPECT_TRUE(test::all_within(got, exact, tol))
                            << "dp4a products against the exact ones";
                    }
                    tol.clear();
                }
                {
                    const ScopedEnv env("MSLM_QUANT_GEMV_DP4A", "0");
                    ops::cuda::quant_gemv(g, nullptr);
                }
                reference(s, x, M, ld_x, ref, mag);
                for (double a : mag) tol.push_back(gemv_tol(K, a) + 1e-30);
                EXPECT_TRUE(test::all_within(dy.download(), ref, tol));
            }
        }
    }
#endif
}

TEST(CudaQuantGemv, Epilogues) {
    SKIP_WITHOUT_GPU();
#ifdef MSLM_HAVE_CUDA
    Rng rng(6);
    for (int which = 0; which < 3; ++which) {
        Subject s = which == 0   ? subject_4bit(rng, QuantFormat::NF4, 2 * 45, 320, 64, true)
                    : which == 1 ? subject_4bit(rng, QuantFormat::FP4, 2 * 45, 320, 64, false)
                                 : subject_int8(rng, 2 * 45, 320);
        const DeviceWeight dw(s.host);
        const int64_t K = s.host.in, rows = s.host.out, M = 3;
        const std::vector<uint16_t> x = random_bf16(rng, static_cast<size_t>(M * K));
        const std::vector<uint16_t> bias = random_bf16(rng, static_cast<size_t>(rows));
        const test::DeviceBuffer<uint16_t> dx(x), db(bias);
        std::vector<double> v, mag;
        reference(s, x, M, K, v, mag);
        // The fp32 code book (kernel 0), then (4-bit) the dp4a products — the CUDA-core tiles (1), the
        // tensor-core kernel (2) — with their bound from the exact ones.
        std::vector<double> dpe(static_cast<size_t>(M * rows), 0.0);
        for (int kernel : {0, 1, 2})
            for (QuantEpilogue epi : {QuantEpilogue::Store, QuantEpilogue::Residual, QuantEpilogue::SwiGLU}) {
                const bool dp = kernel > 0;
                if (dp && !gemv_takes_dp(s.host)) continue;
                if (dp) {
                    std::vector<double> y_dp, mag_dp;
                    dp4a_reference(s, x, M, K, y_dp, mag_dp, &dpe);
                }
                const ScopedEnv env("MSLM_QUANT_GEMV_DP4A", dp ? "1" : "0"),
                    env2("MSLM_QUANT_GEMV_MMA", kernel == 2 ? "1" : "0");
                const int64_t O = epi == QuantEpilogue::SwiGLU ? rows / 2 : rows;
                SCOPED_TRACE(s.name + " epilogue " + std::to_string(static_cast<int>(epi)) + " kernel " +
                             std::to_string(kernel));
                const std::vector<uint16_t> res = random_bf16(rng, static_cast<size_t>(M * O));
                test::DeviceBuffer<uint16_t> dout(res);
                QuantGemv g;
                g.x = dx.get();
                g.ld_x = K;
                g.M = M;
                g.W = dw.view;
                g.bias = db.get();
                g.epi = epi;
                g.out = dout.get();
                g.ld_out = O;
                ops::cuda::quant_gemv(g, nullptr);
                // Each bf16 rounding adds ≤ 2^-9 relative; 2^-8 covers it with the product's own bound.
                std::vector<double> ref(static_cast<size_t>(M * O)), tol(ref.size());
                for (int64_t m = 0; m < M; ++m)
                    for (int64_t o = 0; o < O; ++o) {
                        const size_t i = static_cast<size_t>(m * O + o);
                        const double e = gemv_tol(K, mag[m * rows + o]) + dpe[m * rows + o];
                        const double a = v[m * rows + o] + bf16_to_f32(bias[o]);
                        if (epi == QuantEpilogue::Store) {
                            ref[i] = a;
                            tol[i] = e + 0x1p-8 * std::fabs(a);
                        } else if (epi == QuantEpilogue::Residual) {
                            ref[i] = bf16_to_f32(res[i]) + a;
                            tol[i] = e + 0x1p-8 * (std::fabs(a) + std::fabs(ref[i]));
                        } else {
                            const double u = v[m * rows + O + o] + bf16_to_f32(bias[O + o]);
                            const double eu = gemv_tol(K, mag[m * rows + O + o]) + dpe[m * rows + O + o];
                            const double sg = a / (1.0 + std::exp(-a));
                            ref[i] = sg * u;
                            // silu' ≤ 1.1: |Δ silu| ≤ 1.1·|Δg|.
                            tol[i] = 1.1 * (e + 0x1p-8 * std::fabs(a)) * std::fabs(u) +
                                     std::fabs(sg) * (eu + 0x1p-8 * std::fabs(u)) +
                                     0x1p-8 * std::fabs(ref[i]) + 1e-30;
                        }
                    }
                EXPECT_TRUE(test::all_within(dout.download(), ref, tol));
            }
    }
#endif
}

TEST(CudaQuantGemv, DequantizeIsBitsandbytesInBf16) {
    SKIP_WITHOUT_GPU();
#ifdef MSLM_HAVE_CUDA
    for (const Subject& s : subjects()) {
        SCOPED_TRACE(s.name);
        const DeviceWeight dw(s.host);
        test::DeviceBuffer<uint16_t> out(static_cast<size_t>(s.host.out * s.host.in));
        ops::cuda::quant_dequantize_bf16(out.get(), dw.view, nullptr);
        const std::vector<uint16_t> got = out.download();
        int64_t misses = 0;
        for (size_t i = 0; i < got.size(); ++i) misses += got[i] != f32_to_bf16(s.w[i]);
        EXPECT_EQ(misses, 0);
    }
#endif
}

TEST(CudaQuantGemv, RefusesMalformedCalls) {
    SKIP_WITHOUT_GPU();
#ifdef MSLM_HAVE_CUDA
    Rng rng(8);
    Subject s = subject_4bit(rng, QuantFormat::NF4, 3, 64, 64, false);
    const DeviceWeight dw(s.host);
    test::DeviceBuffer<uint16_t> x(64), out(64);
    QuantGemv g;
    g.x = x.get();
    g.ld_x = 64;
    g.M = 1;
    g.W = dw.view;
    g.epi = QuantEpilogue::SwiGLU;  // 3 rows cannot be [gate | up]
    g.out = out.get();
    g.ld_out = 3;
    try {
        ops::cuda::quant_gemv(g, nullptr);
        ADD_FAILURE() << "no error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("SwiGLU needs [gate | up] rows, got 3 rows"), std::string::npos)
            << e.what();
    }
    g.epi = QuantEpilogue::Store;
    g.W.blocksize = 48;
    try {
        ops::cuda::quant_gemv(g, nullptr);
        ADD_FAILURE() << "no error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("blocksize 48"), std::string::npos) << e.what();
    }
#endif
}

TEST(CudaDecodeGemvQuant, MatchesBitsandbytesDequantizedProduct) {
    SKIP_WITHOUT_GPU();
#ifdef MSLM_HAVE_CUDA
    using cuda_decoder_detail::DecodeEpilogue;
    using cuda_decoder_detail::DecodeGemv;
    Rng rng(9);
    std::vector<Subject> all = subjects();
    all.push_back(subject_4bit(rng, QuantFormat::NF4, 2100, 2048, 64, true));  // rows past one wave
    // Blocks other than 64 on the batch-1 paths (the tensor-core product's B columns: 4 blocks a half
    // strip at 32, one at 128, both halves of a strip in one block at 256).
    all.push_back(subject_4bit(rng, QuantFormat::NF4, 70, 512, 32, false));
    all.push_back(subject_4bit(rng, QuantFormat::FP4, 40, 1024, 128, false));
    all.push_back(subject_4bit(rng, QuantFormat::NF4, 24, 768, 256, false));
    all.push_back(subject_int8(rng, 1500, 1024));
    all.push_back(subject_int8(rng, 70, 560));  // 140 fp32 units of x at batch 1: a group of 8 cut short
    int tested = 0;
    for (const Subject& s : all) {
        const DeviceWeight dw(s.host);
        const int64_t O = s.host.out, K = s.host.in;
        for (int64_t M : {1, 2, 3, 5, 8}) {
            for (int64_t pad : {int64_t(0), int64_t(3)}) {
                SCOPED_TRACE(s.name + " M=" + std::to_string(M) + " row padding " + std::to_string(pad));
                const int64_t ld_x = K + pad;
                const std::vector<uint16_t> x = random_bf16(rng, static_cast<size_t>(M * ld_x));
                const test::DeviceBuffer<uint16_t> dx(x, pad ? 1 : 0);
                test::DeviceBuffer<float> dy(static_cast<size_t>(M * O));
                DecodeGemv a;
                a.x = dx.get();
                a.ld_x = ld_x;
                a.q = &dw.view;
                a.k = M;
                a.I = K;
                a.O = O;
                a.epi = DecodeEpilogue::F32;
                a.out32 = dy.get();
                a.ld_out = O;
                // The staged rows are whole 16-byte segments; batch 1 on 4-bit codes scales a 32-column
                // load by one absmax, so blocks of 16 go unfused there.
                const bool blocks16 = s.host.format != QuantFormat::Int8 && s.host.blocksize < 32;
                if (K % 8 != 0 || (M == 1 && blocks16)) {
                    EXPECT_FALSE(cuda_decoder_detail::decode_gemv_supported(a));
                    continue;
                }
                ASSERT_TRUE(cuda_decoder_detail::decode_gemv_supported(a));
                std::vector<double> ref, mag, tol;
                if (takes_tc(s.host, M)) {
                    // The tensor-core kernel against the fp16 code book model; then the default
                    // (streaming) kernel against the exact weights.
                    setenv("MSLM_DECODE_GEMV_TC", "1", 1);
                    cuda_decoder_detail::decode_gemv(a, nullptr);
                    unsetenv("MSLM_DECODE_GEMV_TC");
                    const Subject h = half_book_model(s);
                    reference(h, x, M, ld_x, ref, mag);
                    double max_x = 0;
                    for (int64_t k = 0; k < K; ++k)
                        max_x = std::max(max_x, double(std::fabs(bf16_to_f32(x[k]))));
                    for (int64_t o = 0; o < O; ++o) {
                        double sum_w = 0;
                        for (int64_t k = 0; k < K; ++k)
                            sum_w += std::fabs(h.w[static_cast<size_t>(o * K + k)]);
                        tol.push_back(tc_tol(K, mag[static_cast<size_t>(o)], max_x, sum_w) + 1e-30);
                    }
                    EXPECT_TRUE(test::all_within(dy.download(), ref, tol)) << "tensor-core product";
                    tol.clear();
                }
                if (takes_dp(s.host, M)) {
                    // The dp4a kernel against its int8 model (x as the kernel reads it: row 0's K
                    // columns); then the fp32-code-book kernel against the exact weights below.
                    {
                        const ScopedEnv dp("MSLM_DECODE_GEMV_DP4A", "1");
                        cuda_decoder_detail::decode_gemv(a, nullptr);
                    }
                    std::vector<double> err;
                    dp4a_reference(s, x, 1, ld_x, ref, mag, &err);
                    for (double v : mag) tol.push_back(gemv_tol(K, v) + 1e-30);
                    const std::vector<float> got = dy.download();
                    EXPECT_TRUE(test::all_within(got, ref, tol)) << "dp4a product";
                    // ... and that model within its bound of the exact product.
                    std::vector<double> exact, emag;
                    reference(s, x, M, ld_x, exact, emag);
                    for (size_t o = 0; o < tol.size(); ++o) tol[o] = err[o] + gemv_tol(K, mag[o]) + 1e-30;
                    EXPECT_TRUE(test::all_within(got, exact, tol)) << "dp4a product against the exact one";
                    tol.clear();
                }
                {
                    const ScopedEnv exact_book("MSLM_DECODE_GEMV_DP4A", "0");
                    cuda_decoder_detail::decode_gemv(a, nullptr);
                }
                reference(s, x, M, ld_x, ref, mag);
                for (double v : mag) tol.push_back(gemv_tol(K, v) + 1e-30);
                EXPECT_TRUE(test::all_within(dy.download(), ref, tol));
                ++tested;
            }
        }
    }
    EXPECT_GE(tested, 100);
#endif
}

TEST(CudaDecodeGemvQuant, NormProloguesAndEpiloguesAsTheUnfusedPath) {
    SKIP_WITHOUT_GPU();
#ifdef MSLM_HAVE_CUDA
    using cuda_decoder_detail::DecodeEpilogue;
    using cuda_decoder_detail::DecodeGemv;
    using cuda_decoder_detail::DecodeNorm;
    Rng rng(10);
    // The last subject is tall: at batch 1 each warp's lanes finish more than 32 of its outputs (the
    // first 32 with their epilogue inputs read ahead).
    for (int which = 0; which < 5; ++which) {
        Subject s = which == 0   ? subject_4bit(rng, QuantFormat::NF4, 2 * 45, 320, 64, true)
                    : which == 1 ? subject_4bit(rng, QuantFormat::FP4, 2 * 45, 320, 64, false)
                    : which == 2 ? subject_4bit(rng, QuantFormat::NF4, 2 * 150, 2048, 64, false)
                    : which == 3 ? subject_int8(rng, 2 * 45, 320)
                                 : subject_4bit(rng, QuantFormat::NF4, 2 * 40000, 64, 64, true);
        const DeviceWeight dw(s.host);
        const int64_t K = s.host.in, rows = s.host.out;
        for (int64_t M : {1, 3}) {
            const std::vector<uint16_t> x = random_bf16(rng, static_cast<size_t>(M * K));
            const std::vector<uint16_t> z = random_bf16(rng, static_cast<size_t>(M * K));
            std::vector<uint16_t> nw = random_bf16(rng, static_cast<size_t>(K));
            const std::vector<uint16_t> bias = random_bf16(rng, static_cast<size_t>(rows));
            const test::DeviceBuffer<uint16_t> dx(x), dz(z), dnw(nw), db(bias);
            for (DecodeNorm norm : {DecodeNorm::RMS, DecodeNorm::Gated})
                for (DecodeEpilogue epi :
                     {DecodeEpilogue::Store, DecodeEpilogue::Residual, DecodeEpilogue::SwiGLU})
                    // Batch 1 on 4-bit rows: the dp4a kernel, the fp32-code-book one, the opt-in
                    // tensor-core one; else the one kernel.
                    for (int kernel : {0, 1, 2}) {
                        const bool dp = kernel == 0 && takes_dp(s.host, M), tc = kernel == 2;
                        if ((kernel == 1 && !takes_dp(s.host, M)) || (tc && !takes_tc(s.host, M))) continue;
                        const int64_t O = epi == DecodeEpilogue::SwiGLU ? rows / 2 : rows;
                        SCOPED_TRACE(s.name + " M=" + std::to_string(M) + " norm " +
                                     std::to_string(int(norm)) + " epilogue " + std::to_string(int(epi)) +
                                     (tc   ? " tensor cores"
                                      : dp ? " dp4a"
                                           : ""));
                        const std::vector<uint16_t> res = random_bf16(rng, static_cast<size_t>(M * O));
                        test::DeviceBuffer<uint16_t> fused(res), unfused(res), xn(static_cast<size_t>(M * K));
                        DecodeGemv a;
                        a.x = dx.get();
                        a.ld_x = K;
                        a.q = &dw.view;
                        a.bias = db.get();
                        a.k = M;
                        a.I = K;
                        a.O = O;
                        a.norm = norm;
                        a.norm_w = dnw.get();
                        a.eps = 1e-5f;
                        a.z = dz.get();
                        a.ld_z = K;
                        a.groups = norm == DecodeNorm::Gated ? 2 : 1;
                        a.x_out = xn.get();
                        a.epi = epi;
                        a.out = fused.get();
                        a.ld_out = O;
                        ASSERT_TRUE(cuda_decoder_detail::decode_gemv_supported(a));
                        {
                            const ScopedEnv tc_env("MSLM_DECODE_GEMV_TC", tc ? "1" : "0"),
                                dp_env("MSLM_DECODE_GEMV_DP4A", dp ? "1" : "0");
                            cuda_decoder_detail::decode_gemv(a, nullptr);
                        }
                        // The unfused product on the rows the prologue normalised.
                        QuantGemv g;
                        g.x = xn.get();
                        g.ld_x = K;
                        g.M = M;
                        g.W = dw.view;
                        g.bias = db.get();
                        g.epi = epi == DecodeEpilogue::Store      ? QuantEpilogue::Store
                                : epi == DecodeEpilogue::Residual ? QuantEpilogue::Residual
                                                                  : QuantEpilogue::SwiGLU;
                        g.out = unfused.get();
                        g.ld_out = O;
                        {
                            const ScopedEnv exact("MSLM_QUANT_GEMV_DP4A", "0");  // the fp32 code book
                            ops::cuda::quant_gemv(g, nullptr);
                        }
                        const std::vector<uint16_t> xs = xn.download(), want = unfused.download(),
                                                    got = fused.download();
                        // The normalised rows are finite and not all zero (the prologue ran).
                        double xsum = 0;
                        for (uint16_t v : xs) xsum += std::fabs(bf16_to_f32(v));
                        ASSERT_TRUE(std::isfinite(xsum) && xsum > 0);
                        // ... and are the norm of x (and z), computed here in double: within one bf16 step
                        // (≤ 2^-7 relative) of it — the products below use the kernel's own rows, so this
                        // is what catches an input staged in the wrong place.
                        {
                            std::vector<double> xr(static_cast<size_t>(M * K)), tx(xr.size());
                            const int64_t groups = norm == DecodeNorm::Gated ? 2 : 1, width = K / groups;
                            for (int64_t m = 0; m < M; ++m)
                                for (int64_t g0 = 0; g0 < K; g0 += width) {
                                    double ss = 0;
                                    for (int64_t i = g0; i < g0 + width; ++i) {
                                        double t = bf16_to_f32(x[m * K + i]);
                                        if (norm == DecodeNorm::Gated) {
                                            const double zz = bf16_to_f32(z[m * K + i]);
                                            t *= zz / (1 + std::exp(-zz));
                                        }
                                        xr[m * K + i] = t;
                                        ss += t * t;
                                    }
                                    const double rstd = 1 / std::sqrt(ss / double(width) + 1e-5);
                                    for (int64_t i = g0; i < g0 + width; ++i) {
                                        xr[m * K + i] *= rstd * bf16_to_f32(nw[i]);
                                        tx[m * K + i] = 0x1p-7 * std::fabs(xr[m * K + i]) * 1.01 + 1e-30;
                                    }
                                }
                            std::vector<float> xsf(xs.size());
                            for (size_t i = 0; i < xs.size(); ++i) xsf[i] = bf16_to_f32(xs[i]);
                            EXPECT_TRUE(test::all_within(xsf, xr, tx)) << "the normalised rows";
                        }
                        // Both products are within gemv_tol of the exact one over the same rows, so of each
                        // other within twice that; each rounds to bf16 once or twice more (2^-8 relative
                        // covers the rounding to either neighbour), SwiGLU's silu(g)·u through both halves.
                        // The tensor-core product (batch 1) multiplies by the fp16 code book: each weight
                        // within 2^-11 of its own, so 2^-11 · Σ|x·w| more (its sums against that model are
                        // checked tightly in MatchesBitsandbytesDequantizedProduct).
                        const double book = tc ? 0x1p-11 : 0.0;
                        std::vector<double> v, mag;
                        reference(s, xs, M, K, v, mag);
                        // The dp4a kernel: its int8 model's distance from the exact product on top
                        // (dp4a_reference's bound).
                        std::vector<double> dpe(static_cast<size_t>(M * rows), 0.0);
                        if (dp) {
                            std::vector<double> y_dp, mag_dp;
                            dp4a_reference(s, xs, 1, K, y_dp, mag_dp, &dpe);
                        }
                        std::vector<double> ref(static_cast<size_t>(M * O)), tol(ref.size());
                        for (int64_t m = 0; m < M; ++m)
                            for (int64_t o = 0; o < O; ++o) {
                                const size_t i = static_cast<size_t>(m * O + o);
                                const double e = 2 * gemv_tol(K, mag[m * rows + o]) +
                                                 book * mag[m * rows + o] + dpe[m * rows + o];
                                const double w = bf16_to_f32(want[i]);
                                ref[i] = w;
                                if (epi == DecodeEpilogue::SwiGLU) {
                                    const double g0 = v[m * rows + o] + bf16_to_f32(bias[o]);
                                    const double u0 = v[m * rows + O + o] + bf16_to_f32(bias[O + o]);
                                    const double eu = 2 * gemv_tol(K, mag[m * rows + O + o]) +
                                                      book * mag[m * rows + O + o] + dpe[m * rows + O + o];
                                    tol[i] = 1.1 * (e + 0x1p-8 * std::fabs(g0)) * std::fabs(u0) +
                                             std::fabs(g0) * (eu + 0x1p-8 * std::fabs(u0)) +
                                             0x1p-7 * std::fabs(w) + 1e-30;
                                } else {
                                    const double r0 =
                                        epi == DecodeEpilogue::Residual ? bf16_to_f32(res[i]) : 0.0;
                                    const double a0 = v[m * rows + o] + bf16_to_f32(bias[o]);
                                    tol[i] = e + 0x1p-8 * (std::fabs(a0) + std::fabs(r0)) +
                                             0x1p-8 * std::fabs(w) + 1e-30;
                                }
                            }
                        std::vector<float> gotf(got.size());
                        for (size_t i = 0; i < got.size(); ++i) gotf[i] = bf16_to_f32(got[i]);
                        EXPECT_TRUE(test::all_within(gotf, ref, tol));
                    }
        }
    }
#endif
}

TEST(CudaDecodeGemvConv, EpilogueIsTheConvKernelBitForBit) {
    SKIP_WITHOUT_GPU();
#ifdef MSLM_HAVE_CUDA
    using cuda_decoder_detail::DecodeGemv;
    Rng rng(11);
    // A warp's outputs at batch 1 are finished by its lanes, 32 at a time, the first 32 with their
    // epilogue inputs read ahead: 200 outputs give a warp one; 110,000 give every warp more than 32
    // (≥ 33 a warp up to 3,333 warps), most of them conv channels.
    for (auto [K, O, col0, C] :
         {std::array<int64_t, 4>{256, 200, 40, 120}, std::array<int64_t, 4>{64, 110000, 40, 109900}}) {
        SCOPED_TRACE("K " + std::to_string(K) + " O " + std::to_string(O));
        const int64_t conv_K = 4, slots = 5;
        const std::vector<float> Wf = random_weights(rng, O, K);
        std::vector<uint16_t> Wb(Wf.size());
        for (size_t i = 0; i < Wf.size(); ++i) Wb[i] = f32_to_bf16(Wf[i]);
        const test::DeviceBuffer<uint16_t> dWb(Wb);
        const DeviceWeight nf4(ops::cuda::quant_weight_4bit(Wf.data(), O, K, QuantFormat::NF4, 64, true));
        const DeviceWeight int8(ops::cuda::quant_weight_int8(Wf.data(), O, K));
        const std::vector<uint16_t> conv_w = random_bf16(rng, static_cast<size_t>(C * conv_K));
        const std::vector<uint16_t> conv_b = random_bf16(rng, static_cast<size_t>(C));
        const std::vector<uint16_t> bias = random_bf16(rng, static_cast<size_t>(O));
        const test::DeviceBuffer<uint16_t> dcw(conv_w), dcb(conv_b), db(bias);
        for (int weight = 0; weight < 3; ++weight)
            for (int64_t k : {1, 3}) {
                SCOPED_TRACE("weight " + std::to_string(weight) + " rows " + std::to_string(k));
                const std::vector<uint16_t> x = random_bf16(rng, static_cast<size_t>(k * K));
                const std::vector<uint16_t> state =
                    random_bf16(rng, static_cast<size_t>(slots * (conv_K - 1) * C));
                const std::vector<int64_t> slot_of =
                    k == 1 ? std::vector<int64_t>{3} : std::vector<int64_t>{4, 0, 2};
                const test::DeviceBuffer<uint16_t> dx(x);
                const test::DeviceBuffer<int64_t> dslots(slot_of);
                test::DeviceBuffer<uint16_t> out_a(static_cast<size_t>(k * O)),
                    out_b(static_cast<size_t>(k * O));
                test::DeviceBuffer<uint16_t> conv_a(static_cast<size_t>(k * C)),
                    conv_b_out(static_cast<size_t>(k * C));
                test::DeviceBuffer<uint16_t> state_a(state), state_b(state);
                DecodeGemv a;
                a.x = dx.get();
                a.ld_x = K;
                if (weight == 0)
                    a.W = dWb.get();
                else
                    a.q = weight == 1 ? &nf4.view : &int8.view;
                a.bias = db.get();
                a.k = k;
                a.I = K;
                a.O = O;
                a.out = out_b.get();
                a.ld_out = O;
                ASSERT_TRUE(cuda_decoder_detail::decode_gemv_supported(a));
                cuda_decoder_detail::decode_gemv(a, nullptr);  // the store epilogue, then the conv kernel
                ops::cuda::conv1d_causal_update(conv_b_out.get(), state_b.get(), dslots.get(),
                                                out_b.get() + col0, O, dcw.get(), dcb.get(), k, C, conv_K,
                                                true, nullptr);
                a.out = out_a.get();
                a.conv_state = state_a.get();
                a.conv_slots = dslots.get();
                a.conv_w = dcw.get();
                a.conv_b = dcb.get();
                a.conv_out = conv_a.get();
                a.conv_col0 = col0;
                a.conv_C = C;
                a.conv_K = conv_K;
                ASSERT_TRUE(cuda_decoder_detail::decode_gemv_supported(a));
                cuda_decoder_detail::decode_gemv(a, nullptr);  // the conv in the epilogue
                EXPECT_EQ(out_a.download(), out_b.download());
                EXPECT_EQ(conv_a.download(), conv_b_out.download());
                EXPECT_EQ(state_a.download(), state_b.download());
                // The conv ran: some window of a used slot changed, the unused slots did not.
                const std::vector<uint16_t> after = state_a.download();
                EXPECT_NE(after, state);
                for (int64_t sl = 0; sl < slots; ++sl) {
                    if (std::find(slot_of.begin(), slot_of.end(), sl) != slot_of.end()) continue;
                    for (int64_t e = 0; e < (conv_K - 1) * C; ++e)
                        ASSERT_EQ(after[sl * (conv_K - 1) * C + e], state[sl * (conv_K - 1) * C + e]);
                }
                a.epi = cuda_decoder_detail::DecodeEpilogue::Residual;  // the conv needs the store epilogue
                EXPECT_FALSE(cuda_decoder_detail::decode_gemv_supported(a));
            }
    }
#endif
}

}  // namespace
}  // namespace mslm
