// ONNX export (export/onnx.h): the graph passes the ONNX checker (the exporter runs the C++ one;
// tests/parity/onnx_decode.py the Python one with full_check), and onnxruntime, decoding step by step
// from an empty state and through the prefill graph, gives the engine's logits at every step and the
// same greedy tokens — for every mixer and position encoding the configs allow, past the sliding
// window, and with int8 / 4-bit weights against the engine on the same dequantized weights.
// onnxruntime comes from the package index (scripts/test.sh installs it); without it the
// comparison skips visibly. MSLM_PYTHON picks the interpreter (default python3).
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "bench/onnx_reference.h"
#include "core/error.h"
#include "export/onnx.h"
#include "inference_configs.h"
#include "model/hybrid_lm.h"
#include "model/inference.h"
#include "ops/packed_linear.h"
#include "test_util.h"

using namespace mslm;

namespace {

std::string python() {
    const char* p = std::getenv("MSLM_PYTHON");
    return p && *p ? p : "python3";
}

// LayerNorm, GELU, biases everywhere, attention without positions, untied head.
ModelConfig layernorm_gelu_nopos() {
    ModelConfig c = test::base_config("MAMA");
    c.norm = NormKind::LayerNorm;
    c.mlp = {MlpKind::GELU, 12, true};
    c.mamba.proj_bias = true;
    c.attention.position = PositionKind::None;
    c.attention.qkv_bias = true;
    c.attention.out_bias = true;
    c.tie_embeddings = false;
    return c;
}

// GELU-tanh and ReLU MLPs over full RoPE with multi-query attention.
ModelConfig gelu_tanh_mqa() {
    ModelConfig c = test::base_config("AM");
    c.attention.n_kv_heads = 1;
    c.attention.rope_theta = 100;
    c.mlp = {MlpKind::GELUTanh, 9, false};
    return c;
}

// ReLU MLP, Mamba-1 without conv bias, ALiBi over 4 heads (a power of two) without a window.
ModelConfig mamba1_relu_alibi() {
    ModelConfig c = test::base_config("MA");
    c.mamba.version = 1;
    c.mamba.dt_rank = 2;
    c.mamba.conv_bias = false;
    c.attention.position = PositionKind::ALiBi;
    c.mlp = {MlpKind::ReLU, 11, false};
    return c;
}

// Wider (d_model 64): the 4-bit blocks of 32 are whole blocks for in_proj / qkv_proj and several per
// row for out_proj; untied head.
ModelConfig wide_mamba2_attention() {
    ModelConfig c = test::base_config("MA");
    c.d_model = 64;
    c.mamba.head_dim = 16;
    c.attention.n_heads = 4;
    c.mlp = {MlpKind::SwiGLU, 64, false};
    c.tie_embeddings = false;
    return c;
}

ModelConfig wide_mamba1_window() {
    ModelConfig c = wide_mamba2_attention();
    c.mamba.version = 1;
    c.mamba.dt_rank = 4;
    c.attention.sliding_window = 4;
    c.tie_embeddings = true;
    return c;
}

// Runs tests/parity/onnx_decode.py on an export and a reference file (the last step of a test: it
// skips the test when onnx / onnxruntime are missing).
void run_onnx_decode(const std::string& dir, const nlohmann::json& ref) {
    std::ofstream(dir + "/ref.json") << ref.dump();
    const std::string script = std::string(MSLM_FIXTURE_DIR) + "/../onnx_decode.py";
    const std::string cmd = fmt::format("'{}' '{}' '{}' '{}' > '{}/log.txt' 2>&1", python(), script,
                                        dir + "/export", dir + "/ref.json", dir);
    const int rc = std::system(cmd.c_str());
    std::ifstream lin(dir + "/log.txt");
    const std::string log((std::istreambuf_iterator<char>(lin)), std::istreambuf_iterator<char>());
    if (WIFEXITED(rc) && WEXITSTATUS(rc) == 77) {
        GTEST_SKIP() << "onnx / onnxruntime not importable by " << python() << " (" << log
                     << "): scripts/test.sh installs them";
    }
    EXPECT_TRUE(WIFEXITED(rc) && WEXITSTATUS(rc) == 0) << cmd << "\n" << log;
    std::printf("%s", log.c_str());
}

const std::vector<std::vector<int32_t>> kPrompts = {{3, 17, 5, 9, 1}, {22, 4, 4, 11, 27}};
constexpr int64_t kPlen = 5, kSteps = 14;  // 14 positions: past every window of the configs

// The engine's numbers for the reference file: two sequences decoded together, each from an empty
// state (the prompt, then greedy tokens), logits at every step; and the parallel prefill of each prompt.
nlohmann::json engine_reference(HybridLM<float>& model) {
    const ModelConfig& cfg = model.config();
    const int64_t batch = 2, V = cfg.vocab_size;
    InferenceState<float> st(cfg, batch, kSteps);
    const int64_t slots[2] = {0, 1};
    std::vector<int32_t> tok = {kPrompts[0][0], kPrompts[1][0]};
    std::vector<float> logits(batch * V);
    nlohmann::json ref_logits = nlohmann::json::array(), ref_tokens = nlohmann::json::array();
    for (int64_t t = 0; t < kSteps; ++t) {
        ref_tokens.push_back(tok);
        model.decode(st, slots, tok.data(), batch, logits.data(), nullptr);
        nlohmann::json step = nlohmann::json::array();
        for (int64_t i = 0; i < batch; ++i) {
            const float* row = logits.data() + i * V;
            step.push_back(std::vector<float>(row, row + V));
            tok[i] = t + 1 < kPlen ? kPrompts[i][t + 1]
                                   : static_cast<int32_t>(std::max_element(row, row + V) - row);
        }
        ref_logits.push_back(step);
    }
    nlohmann::json ref_prefill = nlohmann::json::array();
    InferenceState<float> pst(cfg, batch, kSteps);
    std::vector<float> pl(kPlen * V);
    for (int64_t i = 0; i < batch; ++i) {
        model.prefill(pst, i, kPrompts[i].data(), kPlen, pl.data(), nullptr, true);
        nlohmann::json rows = nlohmann::json::array();
        for (int64_t t = 0; t < kPlen; ++t)
            rows.push_back(std::vector<float>(pl.begin() + t * V, pl.begin() + (t + 1) * V));
        ref_prefill.push_back(rows);
    }
    // Tolerance: both sides compute in fp32 from the same fp32 weights; they differ in summation
    // order (GEMMs over ≤ 64 terms, the conv, the softmax) and in exp / erf / tanh / sigmoid
    // implementations (a few ulp). Each step is a handful of such layers, so differences of
    // ~1e-6 relative to the logits' scale are expected; 1e-4 leaves a margin while an error in the
    // graph (a wrong state update, rotation, window or mask) shows up at O(1).
    return {
        {"prompts", kPrompts},           {"steps", kSteps}, {"logits", ref_logits}, {"tokens", ref_tokens},
        {"prefill_logits", ref_prefill}, {"atol", 1e-5},    {"rtol", 1e-4}};
}

// Weights ten times the default spread: logits far enough apart that greedy choices are not
// decided by rounding (the check compares tokens exactly).
std::unique_ptr<HybridLM<float>> random_model(ModelConfig cfg) {
    cfg.initializer_range = 0.2;
    auto model = std::make_unique<HybridLM<float>>(cfg);
    model->init(11);
    return model;
}

struct OnnxCase {
    const char* name;
    ModelConfig (*make)();
};

void PrintTo(const OnnxCase& c, std::ostream* os) {
    *os << c.name;
}

class OnnxExportParity : public testing::TestWithParam<OnnxCase> {};

TEST_P(OnnxExportParity, OnnxRuntimeDecodesLikeTheEngine) {
    if (!onnx_export_available()) GTEST_SKIP() << "not built: ONNX export needs libonnx-dev";
    const auto model = random_model(GetParam().make());
    const ModelConfig& cfg = model->config();
    const nlohmann::json ref = engine_reference(*model);

    const std::string dir = test::fresh_test_dir("onnx");
    const OnnxExportSummary s = export_onnx(*model, dir + "/export", {});
    EXPECT_EQ(s.opset, 17);
    EXPECT_EQ(s.quantized, 0);
    EXPECT_EQ(s.outputs.front(), "logits");
    EXPECT_EQ(s.inputs.front(), "input_ids");
    // One past / present pair per state tensor, named by the layer index.
    for (int64_t l = 0; l < cfg.n_layers; ++l) {
        const bool attn = cfg.layers[l] == LayerKind::Attention;
        for (const char* kind : attn ? std::vector<const char*>{"key", "value"}
                                     : std::vector<const char*>{"conv_state", "ssm_state"}) {
            EXPECT_NE(
                std::find(s.inputs.begin(), s.inputs.end(), fmt::format("past_key_values.{}.{}", l, kind)),
                s.inputs.end());
            EXPECT_NE(std::find(s.outputs.begin(), s.outputs.end(), fmt::format("present.{}.{}", l, kind)),
                      s.outputs.end());
        }
    }
    std::ifstream gin(dir + "/export/genai_config.json");
    const nlohmann::json genai = nlohmann::json::parse(gin);
    EXPECT_EQ(genai["model"]["decoder"]["filename"], "model.onnx");
    EXPECT_EQ(genai["model"]["vocab_size"], cfg.vocab_size);
    EXPECT_EQ(genai["model"]["context_length"], cfg.max_seq_len);
    // mslm_config.json is the model's own config (what `bench --onnx` reads).
    EXPECT_EQ(load_config(dir + "/export/mslm_config.json").layer_pattern(), cfg.layer_pattern());

    run_onnx_decode(dir, ref);
}

INSTANTIATE_TEST_SUITE_P(Configs, OnnxExportParity,
                         testing::Values(OnnxCase{"Mamba2RopePartialGqa", test::mamba2_rope_partial},
                                         OnnxCase{"PureMamba2DtLimit", test::mamba2_dt_limit},
                                         OnnxCase{"LayerNormGeluNoPosition", layernorm_gelu_nopos},
                                         OnnxCase{"GeluTanhMqa", gelu_tanh_mqa},
                                         OnnxCase{"PureMamba1", test::mamba1_plain},
                                         OnnxCase{"Mamba1JambaNorms", test::mamba1_jamba},
                                         OnnxCase{"Mamba1ReluAlibi", mamba1_relu_alibi},
                                         OnnxCase{"AlibiWindowMqa", test::alibi_window},
                                         OnnxCase{"RopeWindowGqa", test::rope_window}),
                         [](const testing::TestParamInfo<OnnxCase>& i) { return std::string(i.param.name); });

struct QuantCase {
    const char* name;
    ModelConfig (*make)();
    OnnxWeights weights;
    double fp32_rtol;  // the bound on |quantized − fp32| / max|fp32 logit| over the prefill logits
};

void PrintTo(const QuantCase& c, std::ostream* os) {
    *os << c.name;
}

class OnnxExportQuantized : public testing::TestWithParam<QuantCase> {};

// The reference for a quantized export: the engine on the weights the export stores, dequantized.
// int8: the engine's own W8A16 packing (the export writes those int8 rows and scales). q4: an untied
// copy of the model whose linear weights (and LM head) hold the dequantized 4-bit values while the
// embedding lookup keeps fp32 — what the graph computes.
std::unique_ptr<HybridLM<float>> dequantized_engine(const HybridLM<float>& model, OnnxWeights w) {
    ModelConfig cfg = model.config();
    const bool int8 = w == OnnxWeights::Int8;
    if (!int8) cfg.tie_embeddings = false;
    auto copy = std::make_unique<HybridLM<float>>(cfg);
    auto& dst = copy->params();
    const auto& src = model.params();
    for (size_t i = 0; i < dst.specs().size(); ++i) {
        const ParamSpec& s = dst.specs()[i];
        const bool head = s.name == "lm_head.weight" && !src.contains("lm_head.weight");
        const size_t j = src.find(head ? "embed.weight" : s.name);
        int64_t n = 1;
        for (int64_t d : s.shape) n *= d;
        if (!int8 && dst.is_linear(i)) {
            const std::vector<float> q = onnx_dequantized_weight(src.value(j), s.shape[0], s.shape[1], w);
            std::copy(q.begin(), q.end(), dst.value(i));
        } else {
            std::copy_n(src.value(j), n, dst.value(i));
        }
    }
    if (int8) copy->pack_weights(ops::WeightFormat::W8A16);
    return copy;
}

TEST_P(OnnxExportQuantized, OnnxRuntimeMatchesTheEngineOnTheDequantizedWeights) {
    if (!onnx_export_available()) GTEST_SKIP() << "not built: ONNX export needs libonnx-dev";
    const QuantCase& c = GetParam();
    const auto model = random_model(c.make());
    const auto deq = dequantized_engine(*model, c.weights);
    // Tight: ORT and the engine multiply by the same dequantized weights (fp32 tolerance, argued in
    // engine_reference); tokens must agree exactly.
    nlohmann::json ref = engine_reference(*deq);
    // Loose: against the fp32 model on the prompts (teacher-forced, so no diverging tokens).
    ref["fp32_prefill_logits"] = engine_reference(*model)["prefill_logits"];
    ref["fp32_rtol"] = c.fp32_rtol;

    const std::string dir = test::fresh_test_dir("onnx");
    OnnxExportOptions opts;
    opts.weights = c.weights;
    const OnnxExportSummary s = export_onnx(*model, dir + "/export", opts);
    int64_t linear = 0;  // every weight the engine packs is stored quantized, each once
    for (size_t i = 0; i < model->params().specs().size(); ++i) linear += model->params().is_linear(i);
    EXPECT_EQ(s.quantized, linear);
    run_onnx_decode(dir, ref);
}

// Bounds on the distance to fp32, as a fraction of the largest fp32 logit over the prompts. The
// weights are Gaussian (std 0.2) rows. int8: per-row steps of absmax/127 with absmax ≈ 2.5–3 σ for
// rows of 16–64 weights, so the rounding error is uniform with rms ≈ absmax/(127·√12) ≈ 0.7 % of σ;
// a matrix product's relative error is about that, and a handful of products per layer over 2–4
// layers add up to a few percent at most: 0.05. q4: steps of absmax_block/8 (absmax of 32 weights
// ≈ 2.2 σ), rms error ≈ 2.2 σ/(8·√12) ≈ 8 % of σ per product, a few products per layer compounding:
// logits move by up to a few tens of percent of their scale: 0.5. An error in the packing or the
// layout (wrong nibble order, scale of another block or row) gives O(1) garbage and fails the tight
// comparison first.
INSTANTIATE_TEST_SUITE_P(
    Weights, OnnxExportQuantized,
    testing::Values(QuantCase{"Int8Mamba2RopeTied", test::mamba2_rope_partial, OnnxWeights::Int8, 0.05},
                    QuantCase{"Int8Mamba1JambaBiases", test::mamba1_jamba, OnnxWeights::Int8, 0.05},
                    QuantCase{"Q4WideMamba2Attention", wide_mamba2_attention, OnnxWeights::Q4, 0.5},
                    QuantCase{"Q4WideMamba1WindowTied", wide_mamba1_window, OnnxWeights::Q4, 0.5},
                    QuantCase{"Q4PartialBlocksJamba", test::mamba1_jamba, OnnxWeights::Q4, 0.5}),
    [](const testing::TestParamInfo<QuantCase>& i) { return std::string(i.param.name); });

// The 4-bit quantizer: each weight within half a step (amax / 8) of its block, except beyond +7.5
// steps on the side opposite to the block's largest-magnitude value m (codes reach −8·d = m on its
// side but only +7·d on the other), where the error is |w| − 7 steps ≤ one step; m itself is kept
// exactly; a zero block stays zero.
TEST(OnnxExport, Q4WeightsWithinHalfAStepOfTheirBlock) {
    const int64_t out = 3, in = 40;  // one whole block and one of 8 columns per row
    std::vector<float> w(static_cast<size_t>(out * in));
    for (int64_t i = 0; i < out * in; ++i)
        w[i] = std::sin(0.37f * static_cast<float>(i)) * static_cast<float>(1 + i % 7);
    std::fill_n(w.begin() + 2 * in, 32, 0.f);  // row 2's first block is zero
    const std::vector<float> q = onnx_dequantized_weight(w.data(), out, in, OnnxWeights::Q4);
    for (int64_t r = 0; r < out; ++r) {
        for (int64_t b0 = 0; b0 < in; b0 += 32) {
            const int64_t n = std::min<int64_t>(32, in - b0);
            float m = 0;
            for (int64_t c = 0; c < n; ++c)
                if (std::fabs(w[r * in + b0 + c]) > std::fabs(m)) m = w[r * in + b0 + c];
            const float step = std::fabs(m) / 8;
            for (int64_t c = 0; c < n; ++c) {
                const int64_t i = r * in + b0 + c;
                const bool far_side = w[i] * m < 0 && std::fabs(w[i]) > 7.5f * step;
                // Plus fp32 rounding of w/d and (q − 8)·d: a few ulp of |m|.
                const float bound = (far_side ? std::fabs(w[i]) - 7 * step : step / 2) + 1e-6f * std::fabs(m);
                EXPECT_LE(std::fabs(q[i] - w[i]), bound) << "row " << r << " column " << b0 + c;
                if (w[i] == m) {
                    EXPECT_EQ(q[i], w[i]) << "row " << r << " column " << b0 + c;
                }
            }
        }
    }
    for (int64_t c = 0; c < 32; ++c) EXPECT_EQ(q[2 * in + c], 0.f);
}

// int8 stores the engine's W8A16 rows: the dequantized weight is scale · q of the packed weight.
TEST(OnnxExport, Int8WeightsAreTheEnginesW8A16Rows) {
    const int64_t out = 4, in = 24;
    std::vector<float> w(static_cast<size_t>(out * in));
    for (int64_t i = 0; i < out * in; ++i)
        w[i] = std::cos(0.91f * static_cast<float>(i)) * static_cast<float>(1 + i % 5);
    const ops::PackedWeight p = ops::pack_weight(w.data(), out, in, ops::WeightFormat::W8A16);
    const std::vector<float> q = onnx_dequantized_weight(w.data(), out, in, OnnxWeights::Int8);
    for (int64_t r = 0; r < out; ++r)
        for (int64_t c = 0; c < in; ++c) EXPECT_EQ(q[r * in + c], p.at(r, c) * p.scale.get()[r]);
}

// What cannot be exported is refused with one line naming it.
TEST(OnnxExport, RefusesWeightsWithoutFp32ValuesAndUnknownTypes) {
    if (!onnx_export_available()) GTEST_SKIP() << "not built: ONNX export needs libonnx-dev";
    const std::string dir = test::fresh_test_dir("onnx");
    HybridLM<float> model(test::mamba1_plain());
    model.init(1);
    auto& p = model.params();
    const size_t i = p.find("layers.0.mixer.in_proj.weight");
    const ParamSpec& s = p.specs()[i];
    p.set_loaded_packed(i, ops::pack_weight(p.value(i), s.shape[0], s.shape[1], ops::WeightFormat::BF16));
    try {
        export_onnx(model, dir + "/out", {});
        ADD_FAILURE() << "exported a model whose weights were loaded packed";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("loaded packed"), std::string::npos) << e.what();
        EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
    }
    try {
        parse_onnx_weights("q8_0");
        ADD_FAILURE() << "accepted q8_0 as ONNX weights";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("q8_0"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("int8 or q4"), std::string::npos) << e.what();
    }
}

// `bench --onnx`: bench/bench_onnx_decode.py times ORT on an export and reports what was asked; an
// interpreter that cannot run it gives one line naming it instead of a number.
TEST(OnnxBench, ReportsOnnxRuntimeRatesOrSaysWhyNot) {
    if (!onnx_export_available()) GTEST_SKIP() << "not built: ONNX export needs libonnx-dev";
    const auto model = random_model(test::mamba2_rope_partial());
    const std::string dir = test::fresh_test_dir("onnx");
    export_onnx(*model, dir + "/export", {});
    bench::OnnxReferenceOptions o;
    o.threads = 1;
    o.prompt = 8;
    o.decode_prompt = 4;
    o.decode_tokens = 5;
    o.repeats = 1;
    o.script = std::string(MSLM_FIXTURE_DIR) + "/../../../bench/bench_onnx_decode.py";

    o.python = dir + "/no-such-python";
    const bench::OnnxReferenceResult missing = bench::run_onnx_reference(dir + "/export", o);
    EXPECT_FALSE(missing.available);
    EXPECT_NE(missing.reason.find("no-such-python"), std::string::npos) << missing.reason;
    EXPECT_EQ(missing.reason.find('\n'), std::string::npos) << missing.reason;
    EXPECT_NE(bench::format_onnx_reference(missing, 1, 1, 1).find("not measured"), std::string::npos);

    o.python = python();
    const bench::OnnxReferenceResult r = bench::run_onnx_reference(dir + "/export", o);
    if (!r.available) GTEST_SKIP() << r.reason;
    EXPECT_EQ(r.weights, "f32");
    EXPECT_EQ(r.threads, 1);
    EXPECT_EQ(r.prefill_tokens, 8);
    EXPECT_EQ(r.decode_prompt, 4);
    EXPECT_EQ(r.decode_tokens, 5);
    EXPECT_GT(r.prefill_tokens_per_s, 0);
    EXPECT_GT(r.decode_tokens_per_s, 0);
    const std::string table = bench::format_onnx_reference(r, 100, std::nan(""), 2);
    EXPECT_NE(table.find(r.runtime), std::string::npos) << table;
    EXPECT_NE(table.find("| mamba-slm | f32 | 2 | 100 | — |"), std::string::npos) << table;
}

}  // namespace
