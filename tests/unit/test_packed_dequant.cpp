// The on-the-fly dequantizing kernels of ops/packed_linear (src/ops/cpu/packed_dequant.cpp): W8A16,
// NF4 and FP4 products on every path this CPU runs (AVX-512, AVX2, scalar), decoding (M < 16) and
// prefill (M >= 16), against an fp32-exact product with the dequantized weights; the 4-bit packing
// against bitsandbytes' own dequantization (quant::bnb4_dequantize) bit for bit, for every blocksize
// class; and the loader path that packs a bitsandbytes 4-bit directory straight from its codes.
//
// Tolerance of the products. Every kernel multiplies fp32 activations by weights that are exactly
// the dequantized fp32 values (code · absmax is one fp32 product, the same one bnb4_dequantize makes;
// W8A16 widens int8 exactly and applies the row scale to the sum), so the only difference from the
// reference (a double sum of the same fp32 products) is the fp32 rounding of the products and of the
// sums, in whatever order the kernel adds them. For n terms any order of recursive / blocked fp32
// summation is within γ_n · Σ|x_c w_c| of the exact sum, γ_n = n·u / (1 - n·u), u = 2^-24 (Higham,
// Accuracy and Stability, §4.2), the products' own rounding adding u · Σ|x_c w_c|; the bias addition
// and W8A16's row-scale product round once more each (u · |y|). The test uses exactly that bound,
// with n = in + 2.
//
// Prefill on AMX (M >= 16 where packed_gemm runs on AMX) rounds the dequantized weights and the
// activations to bf16 (u_b = 2^-9 each) before the fp32-accumulated product: each product x_c w_c
// then errs by at most (2·u_b + u_b²)·|x_c w_c| ≤ 2^-8·1.002·|x_c w_c| on top of the above, so those
// cases add 2^-8·1.002·Σ|x_c w_c| (times the row scale). Each case runs on both prefill paths: the
// bf16 one and, with MSLM_DEQUANT_PREFILL=fp32, the fp32 panels under the exact bound.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "model/model_io.h"
#include "ops/packed_linear.h"
#include "quant/bnb.h"
#include "quant/bnb_model.h"
#include "inference_configs.h"
#include "packed_path_util.h"
#include "test_util.h"

namespace mslm::ops::detail {
// Test hook in packed_dequant.cpp: forces "scalar", "avx2" or "avx512" (throws for one the CPU
// lacks); "" restores the configured choice.
void force_packed_dequant_kernel(const std::string& name);
bool packed_gemm_uses_amx();  // packed_gemm.cpp
}  // namespace mslm::ops::detail

using namespace mslm;
using namespace mslm::ops;

namespace {

std::vector<std::string> supported_paths() {
    return test::supported_packed_paths(detail::force_packed_dequant_kernel);
}

struct ForcedPath : test::ForcedPackedPath {
    explicit ForcedPath(const std::string& name) : test::ForcedPackedPath(detail::force_packed_dequant_kernel, name) {}
};

std::vector<float> randn(Rng& rng, int64_t n, float scale) {
    std::vector<float> v(static_cast<size_t>(n));
    for (float& x : v) x = scale * static_cast<float>(rng.normal());
    return v;
}

// y = x · Wdᵀ · post + b against the kernel's y, with the bound argued at the top of the file.
// Wd (out, in): the dequantized weights; post: W8A16's row scales (else 1).
void check_products(const PackedWeight& W, const std::vector<float>& Wd, const std::vector<float>& post,
                    Rng& rng, const std::string& what) {
    const int64_t out = W.out, in = W.in;
    const double u = std::ldexp(1.0, -24), n = static_cast<double>(in + 2);
    const double gamma = n * u / (1 - n * u);
    const std::vector<float> bias = randn(rng, out, 0.5f);
    for (const std::string& path : supported_paths()) {
        ForcedPath forced(path);
        for (const bool fp32_prefill : {false, true})
            // 16 and 31: two GEMV passes; 33: the whole weight dequantized (bf16 on AMX, or fp32 panels).
            for (int64_t M : {1, 2, 3, 4, 5, 15, 16, 31, 33}) {
                const bool whole = M > kDequantGemvMaxRows;
                if (fp32_prefill && !whole) continue;
                if (fp32_prefill)
                    setenv("MSLM_DEQUANT_PREFILL", "fp32", 1);
                else
                    unsetenv("MSLM_DEQUANT_PREFILL");
                const bool bf16 = whole && !fp32_prefill && detail::packed_gemm_uses_amx();
                SCOPED_TRACE(what + " path " + path + " M " + std::to_string(M) +
                             (bf16 ? " (bf16 prefill)" : ""));
                const std::vector<float> x = randn(rng, M * in, 1.0f);
                for (bool with_bias : {false, true}) {
                    std::vector<float> y(static_cast<size_t>(M * out), NAN);
                    packed_linear_forward(y.data(), x.data(), W, with_bias ? bias.data() : nullptr, M);
                    int bad = 0;
                    for (int64_t m = 0; m < M; ++m)
                        for (int64_t r = 0; r < out; ++r) {
                            double exact = 0, mag = 0;
                            for (int64_t c = 0; c < in; ++c) {
                                const double p = double(x[m * in + c]) * Wd[r * in + c];
                                exact += p;
                                mag += std::fabs(p);
                            }
                            const double s = post[r], bb = with_bias ? bias[r] : 0.0;
                            const double want = s * exact + bb;
                            const double tol = (gamma + (bf16 ? 0x1p-8 * 1.002 : 0.0)) * std::fabs(s) * mag +
                                               gamma * std::fabs(bb) + 2 * u * std::fabs(want);
                            const double got = y[m * out + r];
                            if (!(std::fabs(got - want) <= tol) && bad++ < 5)
                                ADD_FAILURE() << "y[" << m << "," << r << "] = " << got << ", want " << want
                                              << " ± " << tol;
                        }
                }
            }
    }
    unsetenv("MSLM_DEQUANT_PREFILL");
}

// Batches past one GEMV pass (16..kDequantGemvMaxRows rows) run as several passes: every output is
// the same fixed sum as when its row of x is multiplied alone, so bit for bit the one-row products.
TEST(PackedDequant, GemvPassesEqualOneRowProducts) {
    Rng rng(15);
    const int64_t out = 70, in = 256;
    const std::vector<float> w = randn(rng, out * in, 0.05f);
    const quant::Bnb4Quantized q = quant::bnb4_quantize(w, quant::Bnb4Type::NF4, 64);
    PackedWeight nf4;
    ASSERT_TRUE(pack_weight_4bit(nf4, q.packed.data(), q.absmax.data(),
                                 quant::bnb4_code(quant::Bnb4Type::NF4).data(), out, in, 64, false,
                                 WeightFormat::NF4));
    const PackedWeight w8 = pack_weight(w.data(), out, in, WeightFormat::W8A16);
    const std::vector<float> bias = randn(rng, out, 0.5f);
    for (const std::string& path : supported_paths()) {
        ForcedPath forced(path);
        for (const PackedWeight* W : {static_cast<const PackedWeight*>(&nf4), &w8})
            for (int64_t M : {int64_t{16}, int64_t{23}, kDequantGemvMaxRows}) {
                SCOPED_TRACE(std::string(weight_format_name(W->format)) + " path " + path + " M " +
                             std::to_string(M));
                const std::vector<float> x = randn(rng, M * in, 1.0f);
                std::vector<float> y(static_cast<size_t>(M * out)), one(static_cast<size_t>(out));
                packed_linear_forward(y.data(), x.data(), *W, bias.data(), M);
                for (int64_t m = 0; m < M; ++m) {
                    packed_linear_forward(one.data(), x.data() + m * in, *W, bias.data(), 1);
                    for (int64_t r = 0; r < out; ++r)
                        ASSERT_EQ(y[m * out + r], one[r]) << "row " << m << " output " << r;
                }
            }
    }
}

// Flattened bitsandbytes quantization of W (out, in), the codes packed and checked against
// bnb4_dequantize value for value (bit for bit), then the products.
void check_4bit(quant::Bnb4Type type, int64_t out, int64_t in, int64_t bs, Rng& rng) {
    const WeightFormat format = type == quant::Bnb4Type::NF4 ? WeightFormat::NF4 : WeightFormat::FP4;
    const std::string what = std::string(weight_format_name(format)) + " " + std::to_string(out) + "x" +
                             std::to_string(in) + " blocksize " + std::to_string(bs);
    SCOPED_TRACE(what);
    const std::vector<float> w = randn(rng, out * in, 0.05f);
    const quant::Bnb4Quantized q = quant::bnb4_quantize(w, type, bs);
    std::vector<float> wd(w.size());
    quant::bnb4_dequantize(q.packed, q.absmax, type, bs, wd);
    PackedWeight p;
    ASSERT_TRUE(pack_weight_4bit(p, q.packed.data(), q.absmax.data(), quant::bnb4_code(type).data(), out, in,
                                 bs, false, format));
    EXPECT_EQ(p.group, std::min<int64_t>({64, bs, in % 64 == 0 ? 64 : in % 32 == 0 ? 32 : 16}));
    for (int64_t r = 0; r < out; ++r)
        for (int64_t c = 0; c < in; ++c)
            ASSERT_EQ(p.at(r, c), wd[r * in + c]) << "(" << r << ", " << c << ")";
    check_products(p, wd, std::vector<float>(static_cast<size_t>(out), 1.0f), rng, what);
}

}  // namespace

// Every blocksize class (32: groups of 32; 64 and up: groups of 64; rows shorter than a block, so
// blocks spanning rows), odd numbers of rows, rows not a multiple of 64 (padding) or of 32
// (groups of 16), both code books.
TEST(PackedDequant, FourBitMatchesDequantizedProduct) {
    Rng rng(11);
    for (auto type : {quant::Bnb4Type::NF4, quant::Bnb4Type::FP4}) {
        for (int64_t bs : {32, 64, 128, 256, 1024, 4096}) check_4bit(type, 37, 192, bs, rng);
        check_4bit(type, 5, 48, 64, rng);     // in = 48: groups of 16, blocks across rows
        check_4bit(type, 3, 80, 32, rng);     // groups of 16 under blocks of 32
        check_4bit(type, 17, 96, 4096, rng);  // groups of 32, one block over all rows
        check_4bit(type, 130, 768, 64, rng);  // a model-sized row, several blocks of output rows
    }
}

// Rows quantized in blocks of their own (how Parameters packs an fp32 model), with row lengths no
// multiple of 16 (the padding of the last group and row).
TEST(PackedDequant, FourBitRowBlocksOddShapes) {
    Rng rng(12);
    for (auto type : {quant::Bnb4Type::NF4, quant::Bnb4Type::FP4}) {
        const WeightFormat format = type == quant::Bnb4Type::NF4 ? WeightFormat::NF4 : WeightFormat::FP4;
        for (int64_t in : {30, 130, 250}) {  // even: row r's codes start at byte r · in / 2
            const int64_t out = 9, bs = 64;
            SCOPED_TRACE("in " + std::to_string(in));
            const std::vector<float> w = randn(rng, out * in, 0.05f);
            std::vector<uint8_t> codes;
            std::vector<float> absmax, wd(w.size());
            for (int64_t r = 0; r < out; ++r) {
                const std::span<const float> row(w.data() + r * in, static_cast<size_t>(in));
                const quant::Bnb4Quantized q = quant::bnb4_quantize(row, type, bs);
                codes.insert(codes.end(), q.packed.begin(), q.packed.end());
                absmax.insert(absmax.end(), q.absmax.begin(), q.absmax.end());
                quant::bnb4_dequantize(q.packed, q.absmax, type, bs,
                                       std::span<float>(wd.data() + r * in, static_cast<size_t>(in)));
            }
            PackedWeight p;
            ASSERT_TRUE(pack_weight_4bit(p, codes.data(), absmax.data(), quant::bnb4_code(type).data(), out,
                                         in, bs, true, format));
            for (int64_t r = 0; r < out; ++r)
                for (int64_t c = 0; c < in; ++c) ASSERT_EQ(p.at(r, c), wd[r * in + c]);
            check_products(p, wd, std::vector<float>(static_cast<size_t>(out), 1.0f), rng,
                           weight_format_name(format));
        }
    }
}

// A flattened layout whose blocks would split a group of 16 columns is refused (the loader then
// dequantizes that weight to fp32 instead).
TEST(PackedDequant, FourBitRefusesMisalignedBlocks) {
    const std::vector<uint8_t> codes(1000 * 3, 0x77);
    const std::vector<float> absmax(1000, 1.0f);
    PackedWeight p;
    EXPECT_FALSE(pack_weight_4bit(p, codes.data(), absmax.data(),
                                  quant::bnb4_code(quant::Bnb4Type::NF4).data(), 3, 1000, 64, false,
                                  WeightFormat::NF4));  // 1000 % 16 != 0
    EXPECT_FALSE(pack_weight_4bit(p, codes.data(), absmax.data(),
                                  quant::bnb4_code(quant::Bnb4Type::NF4).data(), 3, 40, 32, false,
                                  WeightFormat::NF4));
    EXPECT_TRUE(pack_weight_4bit(p, codes.data(), absmax.data(),
                                 quant::bnb4_code(quant::Bnb4Type::NF4).data(), 3, 40, 32, true,
                                 WeightFormat::NF4));  // rows in blocks of their own: fine
}

// W8A16: the int8 weights and row scales of pack_weight(Int8), fp32 activations.
TEST(PackedDequant, W8A16MatchesDequantizedProduct) {
    Rng rng(13);
    for (auto [out, in] : {std::pair<int64_t, int64_t>{37, 192}, {5, 30}, {64, 769}, {130, 768}}) {
        const std::vector<float> w = randn(rng, out * in, 0.05f);
        const PackedWeight p = pack_weight(w.data(), out, in, WeightFormat::W8A16);
        const PackedWeight p8 = pack_weight(w.data(), out, in, WeightFormat::Int8);
        std::vector<float> wd(w.size()), post(static_cast<size_t>(out));
        for (int64_t r = 0; r < out; ++r) {
            post[r] = p.scale.get()[r];
            EXPECT_EQ(post[r], p8.scale.get()[r]);
            for (int64_t c = 0; c < in; ++c) {
                wd[r * in + c] = p.at(r, c);
                ASSERT_EQ(p.int8()[r * p.ld + c], p8.int8()[r * p8.ld + c]);
            }
        }
        check_products(p, wd, post, rng, "w8a16 " + std::to_string(out) + "x" + std::to_string(in));
    }
}

// Each packed format's bytes(): what a product streams, and the names round-trip.
TEST(PackedDequant, BytesAndNames) {
    Rng rng(14);
    const std::vector<float> w = randn(rng, 64 * 768, 0.05f);
    const PackedWeight b = pack_weight(w.data(), 64, 768, WeightFormat::BF16);
    const PackedWeight i = pack_weight(w.data(), 64, 768, WeightFormat::W8A16);
    const quant::Bnb4Quantized q = quant::bnb4_quantize(w, quant::Bnb4Type::NF4, 64);
    PackedWeight n;
    ASSERT_TRUE(pack_weight_4bit(n, q.packed.data(), q.absmax.data(),
                                 quant::bnb4_code(quant::Bnb4Type::NF4).data(), 64, 768, 64, false,
                                 WeightFormat::NF4));
    EXPECT_EQ(b.bytes(), size_t{64 * 768 * 2});
    EXPECT_EQ(i.bytes(), size_t{64 * 768 + 64 * 4});
    EXPECT_EQ(n.bytes(), size_t{64 * 768 / 2 + 64 * 12 * 4});  // 4.5 bits a weight with blocks of 64
    for (const char* name : {"w8a16", "nf4", "fp4"})
        EXPECT_STREQ(weight_format_name(parse_weight_format(name)), name);
    EXPECT_EQ(parse_weight_format("w8a8"), WeightFormat::Int8);
}

namespace {

// Loads `dir` twice, dequantizing (the reference) and packing `format`; every packed weight holds
// exactly the dequantizing loader's fp32 values and its own fp32 slot stays zero (never expanded);
// every other parameter equals the reference's. Returns the number of packed weights.
int64_t check_packed_load(const std::string& dir, WeightFormat format) {
    auto ref = load_model<float>(dir);
    auto packed = load_model<float>(dir, nullptr, format);
    const Parameters<float>& rp = ref->params();
    const Parameters<float>& pp = packed->params();
    int64_t checked = 0;
    for (size_t i = 0; i < pp.specs().size(); ++i) {
        const ParamSpec& s = pp.specs()[i];
        const PackedWeight* w = pp.packed(i);
        if (!w) {
            for (int64_t k = 0; k < s.numel; ++k) EXPECT_EQ(pp.value(i)[k], rp.value(i)[k]) << s.name;
            continue;
        }
        ++checked;
        EXPECT_EQ(w->format, format) << s.name;
        for (int64_t r = 0; r < w->out; ++r)
            for (int64_t c = 0; c < w->in; ++c) {
                EXPECT_EQ(w->at(r, c), rp.value(i)[r * w->in + c]) << s.name << " (" << r << ", " << c << ")";
                EXPECT_EQ(pp.value(i)[r * w->in + c], 0.0f) << s.name;
            }
    }
    EXPECT_EQ(checked, pp.loaded_packed());
    if (checked > 0) {  // such a model accepts only its own format
        EXPECT_NO_THROW(packed->pack_weights(format));
        EXPECT_THROW(packed->pack_weights(WeightFormat::BF16), Error);
    }
    return checked;
}

using test::packed_model_config;

}  // namespace

// The loader packs `mamba-slm quantize` directories straight from their codes: NF4 with double
// quantization and FP4 with blocks of 128, Mamba-1 and Mamba-2 hybrids (rows of 64, 96, 128 columns).
TEST(PackedDequant, LoaderPacksQuantizedDirectories) {
    const std::string tmp = test::fresh_test_dir("packed_dequant_load");
    int n = 0;
    for (auto [layers, version] : {std::pair<const char*, int>{"MAM", 1}, {"MA", 2}}) {
        HybridLM<float> m(packed_model_config(layers, version));
        m.init(5);
        const std::string base = tmp + "/base" + std::to_string(n++);
        save_model(m, base);
        quant::BnbQuantizeOptions nf4;
        nf4.kind = quant::BnbKind::NF4;
        nf4.double_quant = true;
        quant::quantize_model_dir(base, base + "_nf4", nf4);
        quant::BnbQuantizeOptions fp4;
        fp4.kind = quant::BnbKind::FP4;
        fp4.blocksize = 128;
        quant::quantize_model_dir(base, base + "_fp4", fp4);
        SCOPED_TRACE(layers);
        EXPECT_GT(check_packed_load(base + "_nf4", WeightFormat::NF4), 3);
        EXPECT_GT(check_packed_load(base + "_fp4", WeightFormat::FP4), 3);
        // A directory of the other 4-bit type loads dequantized: nothing packed.
        EXPECT_EQ(check_packed_load(base + "_nf4", WeightFormat::FP4), 0);
    }
}

// transformers' fixtures (tests/parity/fixtures/bnb_models) have rows of 36, 56 or 72 columns: their
// flattened blocks split groups of 16 columns, so every weight falls back to the dequantizing path,
// with the same values.
TEST(PackedDequant, LoaderFallsBackOnMisalignedDirectories) {
    const std::string fixtures = MSLM_FIXTURE_DIR;
    for (auto [dir, format] : {std::pair<const char*, WeightFormat>{"hybrid_nf4_dq", WeightFormat::NF4},
                               {"mamba2_fp4", WeightFormat::FP4},
                               {"jamba_fp4_dq", WeightFormat::FP4}}) {
        SCOPED_TRACE(dir);
        EXPECT_EQ(check_packed_load(fixtures + "/bnb_models/" + dir, format), 0);
    }
}
