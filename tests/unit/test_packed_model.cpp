// A whole model on packed inference weights (bf16 / int8, ops/packed_linear.h): logits against the
// fp32 model, decoding against prefill, thread-count independence, and training refused.
//
// Error model for the tolerances. bf16 rounds each weight with relative error ≤ 2^-9; the errors of
// a dot product's terms are independent, so a product's relative error is about 2^-9 (an
// rms-weighted average, not a sum). Prefill products (≥ 16 rows) also round the activations to
// bf16: another 2^-9. Through L residual blocks these add roughly in quadrature, so for these
// 3-layer models the logits move by ~√(2·3)·2^-9 ≈ 5e-3 of their rms, and we allow 2e-2 (4×).
// int8 rounds each weight to a step of absmax/127 (error ≤ absmax/254, uniform): for Gaussian rows
// of `in` ≈ 64 weights, absmax ≈ 2.4σ, so the relative rms error is 2.4/(254·√3) ≈ 5.5e-3 per
// weight, and the per-token activation quantization adds as much (activations have outliers, so
// their absmax/σ is larger: take 2×); ≈ 1.2e-2 per product, √6 · 1.2e-2 ≈ 3e-2 through the model;
// we allow 8e-2. A bug (a wrong scale, a dropped row sum, a transposed tile) moves logits by O(1).
// Measured (reference kernels and fast kernels alike): bf16 1.9e-3–4.5e-3, int8 7e-3–2.0e-2;
// bf16 decode vs its prefill 1.3e-3–3.4e-3; int8 decode vs its prefill ≤ 5e-8.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/thread_pool.h"
#include "model/config.h"
#include "inference_configs.h"
#include "model/hybrid_lm.h"
#include "model/inference.h"

using namespace mslm;

namespace {

using test::packed_model_config;

struct Case {
    const char* name;
    ModelConfig cfg;
};

std::vector<Case> cases() {
    return {{"mamba2+attention", packed_model_config("MAM", 2)},
            {"mamba1+attention", packed_model_config("MAM", 1)},
            {"attention", packed_model_config("AA", 2)}};
}

std::vector<int32_t> random_ids(int64_t n, int64_t vocab, uint64_t seed) {
    Rng rng(seed);
    std::vector<int32_t> ids(n);
    for (auto& x : ids) x = static_cast<int32_t>(rng.below(vocab));
    return ids;
}

// Logits at every position of a prefill of `ids`.
std::vector<float> prefill_logits(HybridLM<float>& m, const std::vector<int32_t>& ids) {
    InferenceState<float> st(m.config(), 1, static_cast<int64_t>(ids.size()));
    std::vector<float> logits(ids.size() * m.config().vocab_size);
    m.prefill(st, 0, ids.data(), static_cast<int64_t>(ids.size()), logits.data(), nullptr, true);
    return logits;
}

// Logits of a prefill of the first `first` tokens (the last position) then one decode step per token.
std::vector<float> decode_logits(HybridLM<float>& m, const std::vector<int32_t>& ids, int64_t first) {
    const int64_t V = m.config().vocab_size, n = static_cast<int64_t>(ids.size());
    InferenceState<float> st(m.config(), 1, n);
    std::vector<float> out((n - first + 1) * V);
    m.prefill(st, 0, ids.data(), first, out.data(), nullptr);
    const int64_t slot = 0;
    for (int64_t t = first; t < n; ++t)
        m.decode(st, &slot, &ids[t], 1, out.data() + (t - first + 1) * V, nullptr);
    return out;
}

double rms(const float* a, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; ++i) s += static_cast<double>(a[i]) * a[i];
    return std::sqrt(s / static_cast<double>(n));
}

double rel_rms_diff(const float* a, const float* b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; ++i)
        s += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    return std::sqrt(s / static_cast<double>(n)) / rms(b, n);
}

}  // namespace

TEST(PackedModel, LogitsCloseToFp32) {
    for (const Case& c : cases()) {
        HybridLM<float> m(c.cfg);
        m.init(3);
        const auto ids = random_ids(40, c.cfg.vocab_size, 5);
        const auto ref = prefill_logits(m, ids);
        for (auto [format, tol] :
             {std::pair{ops::WeightFormat::BF16, 2e-2}, std::pair{ops::WeightFormat::Int8, 8e-2}}) {
            m.pack_weights(format);
            ASSERT_EQ(m.weight_format(), format);
            const auto got = prefill_logits(m, ids);
            const double err = rel_rms_diff(got.data(), ref.data(), ref.size());
            EXPECT_LT(err, tol) << c.name << " " << ops::weight_format_name(format);
            EXPECT_GT(err, 0.0) << c.name << " " << ops::weight_format_name(format)
                                << ": packed weights unused";
            // Decoding (GEMV kernels) against the same model's prefill (GEMM kernels): int8 runs the
            // same integer products in both, so they agree like the fp32 model does (1e-5); bf16
            // prefill also rounds activations, decoding does not, so they differ by that rounding.
            const auto dec = decode_logits(m, ids, 20);
            const int64_t V = c.cfg.vocab_size;
            const double step_err = rel_rms_diff(dec.data(), got.data() + 19 * V, dec.size());
            EXPECT_LT(step_err, format == ops::WeightFormat::Int8 ? 1e-5 : 2e-2)
                << c.name << " " << ops::weight_format_name(format);
        }
        m.pack_weights(ops::WeightFormat::F32);
        EXPECT_EQ(prefill_logits(m, ids), ref) << c.name << ": unpacking must restore the fp32 model";
    }
}

TEST(PackedModel, SameLogitsForAnyThreadCount) {
    const int saved = num_threads();
    for (const Case& c : cases()) {
        HybridLM<float> m(c.cfg);
        m.init(4);
        const auto ids = random_ids(33, c.cfg.vocab_size, 6);
        for (auto format : {ops::WeightFormat::BF16, ops::WeightFormat::Int8}) {
            m.pack_weights(format);
            set_num_threads(1);
            const auto one = prefill_logits(m, ids);
            const auto one_dec = decode_logits(m, ids, 17);
            set_num_threads(2);
            EXPECT_EQ(prefill_logits(m, ids), one) << c.name;
            EXPECT_EQ(decode_logits(m, ids, 17), one_dec) << c.name;
        }
    }
    set_num_threads(saved);
}

// release_unpacked_values (what generate and chat do on the CPU after packing) gives back the fp32
// values of every packed weight: the forward passes must read none of them, so prefill and decode
// logits stay bit for bit those of the same packed model that kept them; the tied embedding (its
// lookup reads fp32) is kept; repacking is refused.
TEST(PackedModel, ReleasedFp32ValuesAreNeverRead) {
    for (const Case& c : cases())
        for (const bool tie : {true, false}) {
            ModelConfig cfg = c.cfg;
            cfg.tie_embeddings = tie;
            for (auto format : {ops::WeightFormat::BF16, ops::WeightFormat::Int8, ops::WeightFormat::NF4}) {
                SCOPED_TRACE(std::string(c.name) + (tie ? " tied " : " untied ") + ops::weight_format_name(format));
                HybridLM<float> kept(cfg), released(cfg);
                kept.init(7);
                released.init(7);
                kept.pack_weights(format);
                released.pack_weights(format);
                const size_t bytes = released.release_unpacked_values();
                EXPECT_GT(bytes, static_cast<size_t>(0.8 * 4.0 * static_cast<double>(released.num_params())) -
                                     (tie ? 4 * cfg.vocab_size * cfg.d_model : 0))
                    << "most fp32 bytes are packed weights";
                const auto ids = random_ids(30, cfg.vocab_size, 8);
                EXPECT_EQ(prefill_logits(released, ids), prefill_logits(kept, ids));
                EXPECT_EQ(decode_logits(released, ids, 12), decode_logits(kept, ids, 12));
                EXPECT_THROW(released.pack_weights(ops::WeightFormat::F32), Error);
                EXPECT_EQ(released.release_unpacked_values(), 0u) << "a second call has nothing left";
            }
        }
}

TEST(PackedModel, TrainingRefused) {
    HybridLM<float> m(packed_model_config("MA", 2));
    m.init(1);
    m.pack_weights(ops::WeightFormat::BF16);
    const auto ids = random_ids(8, 97, 2);
    m.forward(ids.data(), ids.data(), 1, 8);
    EXPECT_THROW(m.backward(), Error);
    HybridLM<double> d(packed_model_config("MA", 2));
    EXPECT_THROW(d.pack_weights(ops::WeightFormat::Int8), Error);
}

TEST(PackedModel, StreamsFewerBytes) {
    HybridLM<float> m(packed_model_config("MAM", 2));
    m.init(1);
    const double f32 = m.weight_bytes_per_token();
    m.pack_weights(ops::WeightFormat::BF16);
    const double bf16 = m.weight_bytes_per_token();
    m.pack_weights(ops::WeightFormat::Int8);
    const double int8 = m.weight_bytes_per_token();
    EXPECT_NEAR(f32, 4.0 * static_cast<double>(m.num_params()), 1.0);
    // Nearly every parameter is in a matrix; norms, conv, A_log, D, dt bias stay fp32.
    EXPECT_LT(bf16, 0.56 * f32);
    EXPECT_LT(int8, 0.30 * f32);
    EXPECT_LT(int8, bf16);
}

TEST(PackedWeights, ParseFormat) {
    EXPECT_EQ(ops::parse_weight_format("bf16"), ops::WeightFormat::BF16);
    EXPECT_EQ(ops::parse_weight_format("int8"), ops::WeightFormat::Int8);
    EXPECT_EQ(ops::parse_weight_format("fp32"), ops::WeightFormat::F32);
    EXPECT_THROW(ops::parse_weight_format("fp8"), Error);
}
