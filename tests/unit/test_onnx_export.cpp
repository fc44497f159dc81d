// ONNX export (export/onnx.h): the graph passes the ONNX checker (the exporter runs the C++ one;
// tests/parity/onnx_decode.py the Python one with full_check), and onnxruntime, decoding step by step
// from an empty state, gives the engine's logits at every step and the same greedy tokens.
// onnxruntime comes from the package index (scripts/test.sh installs it); without it the
// comparison skips visibly. MSLM_PYTHON picks the interpreter (default python3).
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "export/onnx.h"
#include "inference_configs.h"
#include "model/hybrid_lm.h"
#include "model/inference.h"
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

struct OnnxCase {
    const char* name;
    ModelConfig (*make)();
};

void PrintTo(const OnnxCase& c, std::ostream* os) { *os << c.name; }

class OnnxExportParity : public testing::TestWithParam<OnnxCase> {};

TEST_P(OnnxExportParity, OnnxRuntimeDecodesLikeTheEngine) {
    if (!onnx_export_available()) GTEST_SKIP() << "not built: ONNX export needs libonnx-dev";
    ModelConfig cfg = GetParam().make();
    // Weights ten times the default spread: logits far enough apart that greedy choices are not
    // decided by rounding (the check compares tokens exactly).
    cfg.initializer_range = 0.2;
    HybridLM<float> model(cfg);
    model.init(11);

    // Two sequences decoded together (the graph's batch axis), each from an empty state: the
    // prompt, then greedy tokens.
    const std::vector<std::vector<int32_t>> prompts = {{3, 17, 5, 9, 1}, {22, 4, 4, 11, 27}};
    const int64_t batch = 2, plen = 5, steps = 14, V = cfg.vocab_size;
    InferenceState<float> st(cfg, batch, steps);
    const int64_t slots[2] = {0, 1};
    std::vector<int32_t> tok = {prompts[0][0], prompts[1][0]};
    std::vector<float> logits(batch * V);
    nlohmann::json ref_logits = nlohmann::json::array(), ref_tokens = nlohmann::json::array();
    for (int64_t t = 0; t < steps; ++t) {
        ref_tokens.push_back(tok);
        model.decode(st, slots, tok.data(), batch, logits.data(), nullptr);
        nlohmann::json step = nlohmann::json::array();
        for (int64_t i = 0; i < batch; ++i) {
            const float* row = logits.data() + i * V;
            step.push_back(std::vector<float>(row, row + V));
            tok[i] = t + 1 < plen ? prompts[i][t + 1]
                                  : static_cast<int32_t>(std::max_element(row, row + V) - row);
        }
        ref_logits.push_back(step);
    }

    // The engine's parallel prefill of each prompt, logits at every position.
    nlohmann::json ref_prefill = nlohmann::json::array();
    {
        InferenceState<float> pst(cfg, batch, steps);
        std::vector<float> pl(plen * V);
        for (int64_t i = 0; i < batch; ++i) {
            model.prefill(pst, i, prompts[i].data(), plen, pl.data(), nullptr, true);
            nlohmann::json rows = nlohmann::json::array();
            for (int64_t t = 0; t < plen; ++t)
                rows.push_back(std::vector<float>(pl.begin() + t * V, pl.begin() + (t + 1) * V));
            ref_prefill.push_back(rows);
        }
    }

    const std::string dir = test::fresh_test_dir("onnx");
    const OnnxExportSummary s = export_onnx(model, dir + "/export", {});
    EXPECT_EQ(s.opset, 17);
    EXPECT_EQ(s.outputs.front(), "logits");
    EXPECT_EQ(s.inputs.front(), "input_ids");
    // One past / present pair per state tensor, named by the layer index.
    for (int64_t l = 0; l < cfg.n_layers; ++l) {
        const bool attn = cfg.layers[l] == LayerKind::Attention;
        for (const char* kind : attn ? std::vector<const char*>{"key", "value"}
                                     : std::vector<const char*>{"conv_state", "ssm_state"}) {
            EXPECT_NE(std::find(s.inputs.begin(), s.inputs.end(), fmt::format("past_key_values.{}.{}", l, kind)),
                      s.inputs.end());
            EXPECT_NE(std::find(s.outputs.begin(), s.outputs.end(), fmt::format("present.{}.{}", l, kind)),
                      s.outputs.end());
        }
    }
    std::ifstream gin(dir + "/export/genai_config.json");
    const nlohmann::json genai = nlohmann::json::parse(gin);
    EXPECT_EQ(genai["model"]["decoder"]["filename"], "model.onnx");
    EXPECT_EQ(genai["model"]["vocab_size"], V);
    EXPECT_EQ(genai["model"]["context_length"], cfg.max_seq_len);

    // Tolerance: both sides compute in fp32 from the same fp32 weights; they differ in summation
    // order (GEMMs over ≤ 48 terms, the conv, the softmax) and in exp / erf / tanh / sigmoid
    // implementations (a few ulp). Each step is a handful of such layers, so differences of
    // ~1e-6 relative to the logits' scale are expected; 1e-4 leaves a margin while an error in the
    // graph (a wrong state update, rotation or mask) shows up at O(1).
    const nlohmann::json ref = {{"prompts", prompts}, {"steps", steps}, {"logits", ref_logits},
                                {"tokens", ref_tokens}, {"prefill_logits", ref_prefill}, {"atol", 1e-5}, {"rtol", 1e-4}};
    std::ofstream(dir + "/ref.json") << ref.dump();
    const std::string script = std::string(MSLM_FIXTURE_DIR) + "/../onnx_decode.py";
    const std::string cmd =
        fmt::format("'{}' '{}' '{}' '{}' > '{}/log.txt' 2>&1", python(), script, dir + "/export", dir + "/ref.json", dir);
    const int rc = std::system(cmd.c_str());
    std::ifstream lin(dir + "/log.txt");
    const std::string log((std::istreambuf_iterator<char>(lin)), std::istreambuf_iterator<char>());
    if (WIFEXITED(rc) && WEXITSTATUS(rc) == 77)
        GTEST_SKIP() << "onnx / onnxruntime not importable by " << python() << " (" << log
                     << "): scripts/test.sh installs them";
    ASSERT_TRUE(WIFEXITED(rc) && WEXITSTATUS(rc) == 0) << cmd << "\n" << log;
    std::printf("%s", log.c_str());
}

INSTANTIATE_TEST_SUITE_P(Configs, OnnxExportParity,
                         testing::Values(OnnxCase{"Mamba2RopePartialGqa", test::mamba2_rope_partial},
                                         OnnxCase{"PureMamba2DtLimit", test::mamba2_dt_limit},
                                         OnnxCase{"LayerNormGeluNoPosition", layernorm_gelu_nopos},
                                         OnnxCase{"GeluTanhMqa", gelu_tanh_mqa}),
                         [](const testing::TestParamInfo<OnnxCase>& i) { return std::string(i.param.name); });

// What the graph cannot express yet is refused with one line naming the field.
TEST(OnnxExport, RefusesUnsupportedConfigurations) {
    if (!onnx_export_available()) GTEST_SKIP() << "not built: ONNX export needs libonnx-dev";
    const std::string dir = test::fresh_test_dir("onnx");
    const std::pair<ModelConfig (*)(), const char*> cases[] = {{test::mamba1_plain, "mamba.version 1"},
                                                               {test::alibi_window, "alibi"},
                                                               {test::rope_window, "sliding_window 5"}};
    for (const auto& [make, what] : cases) {
        HybridLM<float> model(make());
        model.init(1);
        try {
            export_onnx(model, dir + "/out", {});
            ADD_FAILURE() << "exported a model with " << what;
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
            EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
        }
    }
}

}  // namespace
