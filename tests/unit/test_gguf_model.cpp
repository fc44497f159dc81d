// mamba-slm models as GGUF (export/gguf_model.h): export → import round trips for the four
// llama.cpp archs at every type, with error bounds argued from the formats; the configs llama.cpp
// cannot compute are refused; llama.cpp's type rules; the tokenizer keys. The GgufLlamaCpp suite
// runs llama.cpp itself (tests/llama_cpp/llama_logits.cpp, built by scripts/build_llama_cpp.sh) on
// our exports and skips, saying so, when that build is absent.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/utf8.h"
#include "export/gguf_model.h"
#include "model/model_io.h"
#include "tokenizer/tokenizer.h"
#include "test_util.h"

namespace mslm {
namespace {

namespace fs = std::filesystem;
using gguf::TensorType;

// Small models inside llama.cpp's limits: Mamba-1 d_inner = 2 d_model, conv 4, d_state 16;
// granitehybrid also expand 2 and a SwiGLU MLP in every layer; jamba attention without positions.
ModelConfig arch_config(GgufArch arch) {
    ModelConfig c;
    c.vocab_size = 64;
    c.d_model = 32;
    c.max_seq_len = 64;
    c.initializer_range = 0.1;  // logits of a visible size
    c.mamba.d_state = 16;
    c.mamba.d_conv = 4;
    c.mamba.expand = 2;
    c.mamba.dt_rank = 4;
    c.mamba.head_dim = 16;
    c.mamba.n_groups = 2;
    c.mamba.chunk_size = 8;
    c.attention.n_heads = 4;
    c.attention.n_kv_heads = 2;
    c.mlp = {MlpKind::SwiGLU, 64, false};
    switch (arch) {
        case GgufArch::Mamba:
            c.layers = parse_layer_pattern("MMM");
            c.mamba.version = 1;
            c.mlp.kind = MlpKind::None;
            break;
        case GgufArch::Mamba2:
            c.layers = parse_layer_pattern("MMM");
            c.mamba.version = 2;
            c.mlp.kind = MlpKind::None;
            c.tie_embeddings = false;
            break;
        case GgufArch::Jamba:
            c.layers = parse_layer_pattern("MAMA");
            c.mamba.version = 1;
            c.mamba.dt_bc_norm = true;
            c.attention.position = PositionKind::None;
            c.tie_embeddings = false;
            break;
        case GgufArch::GraniteHybrid:
            c.layers = parse_layer_pattern("MMAM");
            c.mamba.version = 2;
            c.attention.position = PositionKind::RoPE;
            c.attention.rotary_dim = 4;  // partial: half of the head
            c.attention.rope_theta = 100;
            break;
    }
    c.n_layers = static_cast<int64_t>(c.layers.size());
    return c;
}

// A random model whose norm weights, D and conv biases are not at their initial constants, so a
// swapped or dropped one shows in the logits.
std::unique_ptr<HybridLM<float>> random_model(const ModelConfig& cfg, uint64_t seed) {
    auto m = std::make_unique<HybridLM<float>>(cfg);
    m->init(seed);
    std::mt19937 rng(static_cast<uint32_t>(seed));
    std::uniform_real_distribution<float> around_one(0.5f, 1.5f), small(-0.2f, 0.2f);
    Parameters<float>& p = m->params();
    for (size_t i = 0; i < p.specs().size(); ++i) {
        const std::string& n = p.specs()[i].name;
        const bool scale = n.ends_with("norm.weight") || n.ends_with(".D");
        const bool shift = n.ends_with("conv1d.bias") || n.ends_with("dt_bias");
        for (int64_t k = 0; k < p.specs()[i].numel; ++k) {
            if (scale) p.value(i)[k] = around_one(rng);
            if (shift) p.value(i)[k] += small(rng);
        }
    }
    return m;
}

const GgufArch kArchs[] = {GgufArch::Mamba, GgufArch::Mamba2, GgufArch::Jamba, GgufArch::GraniteHybrid};

std::string arch_param_name(const testing::TestParamInfo<GgufArch>& info) {
    return gguf_arch_name(info.param);
}

// |x - y| allowed for one GGUF tensor of type t, elementwise over the native values x of that
// tensor (rows of ne[0]).
//   F32: exact, except ssm_a = -exp(A_log): the fp32 rounding of a = -exp(x) (relative 2^-24,
//     exp and log in double) becomes an absolute 2^-24 in log(-a), plus the half ulp of the
//     result, ≤ 2^-24 |x|.
//   F16: round to nearest, relative 2^-11 for normal values (|x| ≥ 2^-14), absolute 2^-25 below.
//   Q8_0: d = amax/127 per block, stored as fp16 d' (|d - d'| ≤ 2^-11 d); q = round(x/d) is off by
//     at most d/2 and |q| ≤ 127, so |x - d'q| ≤ d/2 + 127 · 2^-11 d.
//   Q4_0: d = m/-8 for the block's largest-magnitude value m; the opposite end clamps at q = 15, a
//     full step, so |x - d'(q-8)| ≤ |d| + 8 · 2^-11 |d|.
// A relative 1e-6 of the block's amax covers the fp32 products x · (1/d).
std::vector<double> allowed_error(const std::vector<float>& x, TensorType t, int64_t row, GgufTransform tr) {
    std::vector<double> tol(x.size(), 0.0);
    const double u11 = std::ldexp(1.0, -11);
    for (size_t i = 0; i < x.size(); ++i) {
        const double a = std::fabs(x[i]);
        if (t == TensorType::F32 && tr == GgufTransform::NegExp) tol[i] = std::ldexp(1.0, -24) * (1 + a);
        if (t == TensorType::F16) tol[i] = std::max(a * u11, std::ldexp(1.0, -25));
    }
    if (t == TensorType::Q8_0 || t == TensorType::Q4_0) {
        for (size_t b = 0; b < x.size(); b += 32) {
            double amax = 0;
            for (size_t j = b; j < b + 32; ++j) amax = std::max(amax, static_cast<double>(std::fabs(x[j])));
            const double d = t == TensorType::Q8_0 ? amax / 127 : amax / 8;
            const double bound = t == TensorType::Q8_0 ? d * (0.5 + 127 * u11) : d * (1 + 8 * u11);
            for (size_t j = b; j < b + 32; ++j) tol[j] = bound + 1e-6 * amax;
        }
    }
    (void)row;
    return tol;
}

class GgufModel : public testing::TestWithParam<GgufArch> {};

TEST_P(GgufModel, ExportImportRoundTripsWithinTheFormat) {
    const ModelConfig cfg = arch_config(GetParam());
    ASSERT_EQ(gguf_arch_for(cfg), GetParam());
    auto model = random_model(cfg, 7);
    const std::string dir = test::fresh_test_dir("gguf");
    for (TensorType type : {TensorType::F32, TensorType::F16, TensorType::Q8_0, TensorType::Q4_0}) {
        SCOPED_TRACE(std::string(gguf::tensor_type_name(type)));
        const std::string path = dir + "/m.gguf";
        GgufExportOptions opt;
        opt.type = type;
        const GgufExportReport report = export_gguf(*model, path, opt);
        EXPECT_EQ(report.arch, GetParam());
        auto back = load_model<float>(path);
        ASSERT_EQ(back->config().layer_pattern(), cfg.layer_pattern());
        ASSERT_EQ(back->params().specs().size(), model->params().specs().size());
        const Parameters<float>& p = model->params();
        const Parameters<float>& q = back->params();
        for (const GgufTensorMap& m : gguf_tensor_map(GetParam(), cfg, p.specs())) {
            const TensorType t = gguf_tensor_type(m, type);
            const size_t i = p.find(m.native_name), j = q.find(m.native_name);
            const int64_t row = p.specs()[i].numel / p.specs()[i].shape[0];
            const int64_t begin = m.row_begin * row, n = m.rows * row;
            std::vector<float> x(p.value(i) + begin, p.value(i) + begin + n);
            const std::vector<double> tol = allowed_error(x, t, row, m.transform);
            for (int64_t k = 0; k < n; ++k)
                ASSERT_LE(std::fabs(static_cast<double>(q.value(j)[begin + k]) - x[k]), tol[k])
                    << m.gguf_name << " (" << gguf::tensor_type_name(t) << ") element " << k << ": " << x[k];
        }
        if (type == TensorType::F32) {
            // The same function: logits agree up to what the A_log rounding moves them.
            const std::vector<int32_t> ids = {1, 5, 9, 2, 33, 60, 7, 7, 12, 0, 41, 3};
            model->forward(ids.data(), nullptr, 1, 12);
            back->forward(ids.data(), nullptr, 1, 12);
            for (int64_t k = 0; k < 12 * cfg.vocab_size; ++k)
                ASSERT_NEAR(back->logits()[k], model->logits()[k], 1e-5) << k;
        }
    }
}

INSTANTIATE_TEST_SUITE_P(Archs, GgufModel, testing::ValuesIn(kArchs), arch_param_name);

TEST(GgufModelRules, TypesFollowLlamaCpp) {
    // Mamba-1 with dt_rank 48 (the 130M shape): ssm_dt's rows are 48 long, so it stays F16 under
    // q8_0 and the exporter says so; ssm_x's rows are d_inner long and quantize.
    ModelConfig cfg = arch_config(GgufArch::Mamba);
    cfg.mamba.dt_rank = 48;
    auto model = random_model(cfg, 3);
    const std::string path = test::fresh_test_dir("gguf") + "/m.gguf";
    GgufExportOptions opt;
    opt.type = TensorType::Q8_0;
    const GgufExportReport r = export_gguf(*model, path, opt);
    std::map<std::string, TensorType> types(r.tensors.begin(), r.tensors.end());
    EXPECT_EQ(types.at("blk.0.ssm_dt.weight"), TensorType::F16);
    EXPECT_EQ(types.at("blk.0.ssm_x.weight"), TensorType::Q8_0);
    EXPECT_EQ(types.at("blk.0.ssm_in.weight"), TensorType::Q8_0);
    EXPECT_EQ(types.at("blk.0.ssm_out.weight"), TensorType::Q8_0);
    EXPECT_EQ(types.at("token_embd.weight"), TensorType::Q8_0);
    for (const char* f32 : {"blk.0.ssm_conv1d.weight", "blk.0.ssm_conv1d.bias", "blk.0.ssm_a", "blk.0.ssm_d",
                            "blk.0.ssm_dt.bias", "blk.0.attn_norm.weight", "output_norm.weight"})
        EXPECT_EQ(types.at(f32), TensorType::F32) << f32;
    ASSERT_EQ(r.notes.size(), 3u);  // one per layer
    EXPECT_NE(r.notes[0].find("blk.0.ssm_dt.weight kept in F16: its rows hold 48 values"), std::string::npos);

    const gguf::File f = gguf::File::open(path);
    EXPECT_EQ(f.get_string("general.architecture"), "mamba");
    EXPECT_EQ(f.get_uint("general.file_type"), 7u);
    EXPECT_EQ(f.get_uint("mamba.ssm.time_step_rank"), 48u);
    EXPECT_EQ(f.get_uint("mamba.ssm.inner_size"), 64u);
    EXPECT_FALSE(f.get_bool("mamba.ssm.dt_b_c_rms"));
    EXPECT_EQ(f.find_tensor("blk.0.ssm_a")->ne, (std::vector<int64_t>{16, 64}));
    EXPECT_EQ(f.find_tensor("blk.0.ssm_conv1d.weight")->ne, (std::vector<int64_t>{4, 64}));
    EXPECT_EQ(f.find_tensor("output.weight"), nullptr);  // tied
}

TEST(GgufModelRules, Mamba2AndHybridLayoutsFollowTheConverter) {
    const std::string dir = test::fresh_test_dir("gguf");
    auto m2 = random_model(arch_config(GgufArch::Mamba2), 1);
    export_gguf(*m2, dir + "/m2.gguf", {});
    const gguf::File f2 = gguf::File::open(dir + "/m2.gguf");
    EXPECT_EQ(f2.get_uint("mamba2.ssm.time_step_rank"), 4u);  // heads
    EXPECT_EQ(f2.get_uint("mamba2.ssm.group_count"), 2u);
    EXPECT_EQ(f2.find_tensor("blk.1.ssm_a")->ne, (std::vector<int64_t>{1, 4}));
    EXPECT_EQ(f2.find_tensor("blk.1.ssm_d")->ne, (std::vector<int64_t>{1, 4}));
    EXPECT_EQ(f2.find_tensor("blk.1.ssm_norm.weight")->ne, (std::vector<int64_t>{32, 2}));
    EXPECT_EQ(f2.find_tensor("blk.1.ssm_conv1d.weight")->ne, (std::vector<int64_t>{4, 64 + 2 * 2 * 16}));
    EXPECT_EQ(f2.find_tensor("blk.1.ssm_in.weight")->ne, (std::vector<int64_t>{32, 2 * 64 + 2 * 2 * 16 + 4}));
    EXPECT_NE(f2.find_tensor("output.weight"), nullptr);
    const auto a = f2.to_f32(*f2.find_tensor("blk.1.ssm_a"));
    const auto& p = m2->params();
    const float* A_log = p.value(p.find("layers.1.mixer.A_log"));
    for (size_t h = 0; h < a.size(); ++h) EXPECT_FLOAT_EQ(a[h], -std::exp(A_log[h]));

    auto gh = random_model(arch_config(GgufArch::GraniteHybrid), 1);
    export_gguf(*gh, dir + "/gh.gguf", {});
    const gguf::File fh = gguf::File::open(dir + "/gh.gguf");
    EXPECT_EQ(fh.get_array("granitehybrid.attention.head_count_kv", gguf::ValueType::I32).ints,
              (std::vector<int64_t>{0, 0, 2, 0}));
    EXPECT_EQ(fh.get_uint("granitehybrid.rope.dimension_count"), 4u);
    EXPECT_TRUE(fh.get_bool("granitehybrid.rope.scaling.finetuned"));
    EXPECT_EQ(fh.find_tensor("blk.2.attn_k.weight")->ne, (std::vector<int64_t>{32, 16}));
    // q rows of head 1 in llama.cpp's order: rotary pairs (0, 2), (1, 3) of the head become
    // adjacent; rows 4..7 (not rotated) stay.
    const auto q = fh.to_f32(*fh.find_tensor("blk.2.attn_q.weight"));
    const float* qkv = gh->params().value(gh->params().find("layers.2.mixer.qkv_proj.weight"));
    const int order[8] = {0, 2, 1, 3, 4, 5, 6, 7};
    for (int r = 0; r < 8; ++r)
        for (int k = 0; k < 32; ++k)
            ASSERT_EQ(q[static_cast<size_t>((8 + r) * 32 + k)], qkv[(8 + order[r]) * 32 + k]);
}

TEST(GgufModelRules, RefusesWhatLlamaCppCannotCompute) {
    struct Case {
        GgufArch base;
        std::function<void(ModelConfig&)> change;
        std::string needle;
    };
    const std::vector<Case> cases = {
        {GgufArch::Mamba, [](ModelConfig& c) { c.norm = NormKind::LayerNorm; }, "norm = layernorm"},
        {GgufArch::Mamba, [](ModelConfig& c) { c.mamba.expand = 3; },
         "d_inner = 96 with d_model = 32 (mamba supports "
         "only d_inner = 2 x d_model)"},
        {GgufArch::Mamba, [](ModelConfig& c) { c.mamba.proj_bias = true; }, "mamba.proj_bias"},
        {GgufArch::Mamba, [](ModelConfig& c) { c.mamba.dt_bc_norm = true; },
         "mamba.dt_bc_norm without attention"},
        {GgufArch::Mamba2, [](ModelConfig& c) { c.mamba.dt_limit_max = 0.1; }, "mamba.dt_limit = [0, 0.1]"},
        {GgufArch::Mamba2, [](ModelConfig& c) { c.mamba.norm_groups = 1; }, "mamba.norm_groups = 1 differs"},
        {GgufArch::Jamba, [](ModelConfig& c) { c.attention.position = PositionKind::RoPE; },
         "jamba's attention has no positions"},
        {GgufArch::Jamba, [](ModelConfig& c) { c.mlp.kind = MlpKind::GELU; }, "mlp.kind other than swiglu"},
        {GgufArch::Jamba, [](ModelConfig& c) { c.mamba.dt_bc_norm = false; }, "without mamba.dt_bc_norm"},
        {GgufArch::GraniteHybrid, [](ModelConfig& c) { c.mlp.kind = MlpKind::None; },
         "no MLP (granitehybrid needs"},
        {GgufArch::GraniteHybrid, [](ModelConfig& c) { c.attention.sliding_window = 8; },
         "sliding_window = 8"},
        {GgufArch::GraniteHybrid, [](ModelConfig& c) { c.mamba.expand = 4; },
         "granitehybrid supports only d_inner"},
    };
    for (const Case& k : cases) {
        ModelConfig c = arch_config(k.base);
        k.change(c);
        c.validate();
        try {
            gguf_arch_for(c);
            ADD_FAILURE() << "accepted: " << k.needle;
        } catch (const Error& e) {
            const std::string m = e.what();
            EXPECT_NE(m.find(k.needle), std::string::npos) << m;
            EXPECT_NE(m.find("llama.cpp has no architecture"), std::string::npos) << m;
            EXPECT_EQ(m.find('\n'), std::string::npos) << m;
        }
    }
}

TEST(GgufModelRules, WritesTheByteLevelTokenizerAsTheConverterDoes) {
    struct Case {
        const char *file, *pre, *eos;
    };
    for (const Case& c :
         {Case{"gpt2.json", "gpt-2", "<|endoftext|>"}, Case{"llama3.json", "llama-bpe", "<|end_of_text|>"}}) {
        SCOPED_TRACE(c.file);
        const std::string dir = test::fresh_test_dir("gguf");
        fs::copy_file(std::string(MSLM_FIXTURE_DIR) + "/tokenizers/" + c.file, dir + "/tokenizer.json");
        std::ofstream(dir + "/tokenizer_config.json")
            << fmt::format(R"({{"eos_token": "{}", "chat_template": "{{{{ x }}}}"}})", c.eos);
        ModelConfig cfg = arch_config(GgufArch::Mamba);
        cfg.vocab_size = 6008;  // more than either tokenizer: the rest are padding
        auto model = random_model(cfg, 2);
        GgufExportOptions opt;
        opt.tokenizer_dir = dir;
        const GgufExportReport r = export_gguf(*model, dir + "/m.gguf", opt);
        EXPECT_TRUE(r.tokenizer);
        const gguf::File f = gguf::File::open(dir + "/m.gguf");
        const nlohmann::json tok = nlohmann::json::parse(std::ifstream(dir + "/tokenizer.json"));
        EXPECT_EQ(f.get_string("tokenizer.ggml.model"), "gpt2");
        EXPECT_EQ(f.get_string("tokenizer.ggml.pre"), c.pre);
        const auto& tokens = f.get_array("tokenizer.ggml.tokens", gguf::ValueType::STRING).strings;
        const auto& types = f.get_array("tokenizer.ggml.token_type", gguf::ValueType::I32).ints;
        ASSERT_EQ(tokens.size(), 6008u);
        for (const auto& [t, id] : tok["model"]["vocab"].items()) ASSERT_EQ(tokens[id.get<size_t>()], t);
        for (const auto& a : tok["added_tokens"]) {
            EXPECT_EQ(tokens[a["id"].get<size_t>()], a["content"].get<std::string>());
            EXPECT_EQ(types[a["id"].get<size_t>()], a["special"].get<bool>() ? 3 : 4);
        }
        EXPECT_EQ(tokens[6007], "[PAD6007]");
        EXPECT_EQ(types[6007], 5);
        EXPECT_EQ(f.get_array("tokenizer.ggml.merges", gguf::ValueType::STRING).size(),
                  tok["model"]["merges"].size());
        const uint64_t eos = f.get_uint("tokenizer.ggml.eos_token_id");
        EXPECT_EQ(tokens[eos], c.eos);
        EXPECT_EQ(f.get_string("tokenizer.chat_template"), "{{ x }}");
    }
}

// Files written by llama.cpp's own converter (convert_hf_to_gguf.py, F32) from the HF fixtures,
// tokenizer dropped (tests/parity/make_gguf_fixtures.py): our importer gives the parameters of the
// same HF checkpoint loaded directly (ssm_a → A_log within the bound argued above), and our
// exporter writes the converter's tensors byte for byte with the same keys.
TEST(GgufModelRules, ReadsAndWritesWhatLlamaCppsConverterDoes) {
    for (const char* name : {"mamba1", "mamba2"}) {
        SCOPED_TRACE(name);
        const std::string fx = std::string(MSLM_FIXTURE_DIR);
        const std::string converted = fx + "/gguf/converter_" + name + ".gguf";
        auto from_gguf = load_model<float>(converted);
        auto from_hf = load_model<float>(fx + "/" + name);
        const Parameters<float>& p = from_hf->params();
        const Parameters<float>& q = from_gguf->params();
        ASSERT_EQ(p.specs().size(), q.specs().size());
        for (size_t i = 0; i < p.specs().size(); ++i) {
            const ParamSpec& s = p.specs()[i];
            ASSERT_EQ(q.specs()[i].name, s.name);
            ASSERT_EQ(q.specs()[i].shape, s.shape) << s.name;
            const bool a_log = s.name.ends_with("A_log");
            for (int64_t k = 0; k < s.numel; ++k) {
                const double x = p.value(i)[k];
                ASSERT_LE(std::fabs(q.value(i)[k] - x),
                          a_log ? std::ldexp(1.0, -24) * (1 + std::fabs(x)) : 0.0)
                    << s.name << " element " << k;
            }
        }
    }
    // The HF Mamba-1 fixture exported by us against the converter's file.
    const std::string dir = test::fresh_test_dir("gguf");
    auto hf = load_model<float>(std::string(MSLM_FIXTURE_DIR) + "/mamba1");
    export_gguf(*hf, dir + "/ours.gguf", {});
    const gguf::File ours = gguf::File::open(dir + "/ours.gguf");
    const gguf::File theirs = gguf::File::open(std::string(MSLM_FIXTURE_DIR) + "/gguf/converter_mamba1.gguf");
    for (const auto& [key, v] : theirs.header().kv) {
        if (key == "general.name" || key == "general.size_label") continue;
        const gguf::Value* mine = ours.find(key);
        ASSERT_NE(mine, nullptr) << key;
        EXPECT_EQ(mine->type, v.type) << key;
        EXPECT_EQ(mine->ints, v.ints) << key;
        EXPECT_EQ(mine->floats, v.floats) << key;
        EXPECT_EQ(mine->strings, v.strings) << key;
    }
    ASSERT_EQ(ours.tensors().size(), theirs.tensors().size());
    for (const auto& t : theirs.tensors()) {
        const gguf::TensorInfo* m = ours.find_tensor(t.name);
        ASSERT_NE(m, nullptr) << t.name;
        EXPECT_EQ(m->ne, t.ne) << t.name;
        EXPECT_EQ(m->type, t.type) << t.name;
        const auto a = ours.bytes(*m), b = theirs.bytes(t);
        if (t.name.ends_with("ssm_a")) {
            // -exp in torch's float32 against ours in double rounded once: within an ulp.
            const auto x = ours.to_f32(*m), y = theirs.to_f32(t);
            for (size_t k = 0; k < x.size(); ++k) EXPECT_NEAR(x[k], y[k], std::fabs(y[k]) * 1.2e-7) << t.name;
        } else {
            EXPECT_TRUE(a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size()) == 0) << t.name;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// llama.cpp itself.

std::string llama_tool() {
    if (const char* p = std::getenv("MSLM_LLAMA_LOGITS")) return p;
    const char* cache = std::getenv("MSLM_CACHE_DIR");
    const char* home = std::getenv("HOME");
    const std::string base = cache ? cache : std::string(home ? home : "") + "/.cache/mamba-slm";
    return base + "/llama.cpp-0.3.36/build/mslm_llama_logits";
}

#define SKIP_WITHOUT_LLAMA_CPP()                                        \
    if (!fs::exists(llama_tool()))                                      \
    GTEST_SKIP() << "llama.cpp test tool not found at " << llama_tool() \
                 << " (scripts/build_llama_cpp.sh builds it)"

// llama.cpp's logits for `ids`, evaluated in independent windows: (ids.size(), vocab).
std::vector<float> llama_logits(const std::string& gguf_path, const std::vector<int32_t>& ids, int64_t window,
                                int64_t vocab, const std::string& dir) {
    {
        std::ofstream t(dir + "/tokens.txt");
        for (int32_t id : ids) t << id << ' ';
    }
    const std::string cmd =
        fmt::format("'{}' '{}' '{}/tokens.txt' '{}/logits.f32' --window {} --threads 2 > '{}/llama.log' 2>&1",
                    llama_tool(), gguf_path, dir, dir, window, dir);
    const int rc = std::system(cmd.c_str());
    std::ifstream log(dir + "/llama.log");
    const std::string text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
    EXPECT_EQ(rc, 0) << cmd << "\n" << text;
    EXPECT_NE(text.find(fmt::format("n_vocab {}", vocab)), std::string::npos) << text;
    std::vector<float> out(ids.size() * static_cast<size_t>(vocab));
    std::ifstream in(dir + "/logits.f32", std::ios::binary);
    in.read(reinterpret_cast<char*>(out.data()), static_cast<std::streamsize>(out.size() * sizeof(float)));
    EXPECT_EQ(static_cast<size_t>(in.gcount()), out.size() * sizeof(float)) << "short logits file";
    return out;
}

class GgufLlamaCpp : public testing::TestWithParam<GgufArch> {};

// Both sides compute in fp32 (our CPU path, llama.cpp's CPU backend with F32 weights and an F32
// KV cache) but sum in different orders and use different exp / SiLU / softplus code. Each
// product is a dot product of K ≤ 128 terms (error ≤ K · 2^-24 of the sum of magnitudes, and far
// less in practice), the scans add ≤ T = 24 steps, and four layers compound it; the differences
// measured are about 1e-6 of the logits' range. 1e-4 of the row's largest |logit| leaves a margin
// of ~100 and is still far below what any mapping error produces (a swapped row, a missing
// norm weight, the RoPE pairing or ssm_a's sign move logits by 10 % or more of their range).
TEST_P(GgufLlamaCpp, F32LogitsMatchOurs) {
    SKIP_WITHOUT_LLAMA_CPP();
    const ModelConfig cfg = arch_config(GetParam());
    auto model = random_model(cfg, 11);
    const std::string dir = test::fresh_test_dir("gguf_llama");
    export_gguf(*model, dir + "/m.gguf", {});
    std::mt19937 rng(5);
    std::vector<int32_t> ids(24);
    for (auto& id : ids) id = static_cast<int32_t>(rng() % static_cast<uint32_t>(cfg.vocab_size));
    const std::vector<float> theirs = llama_logits(dir + "/m.gguf", ids, 24, cfg.vocab_size, dir);
    model->forward(ids.data(), nullptr, 1, 24);
    const float* ours = model->logits();
    double worst = 0;
    for (size_t t = 0; t < ids.size(); ++t) {
        double scale = 0;
        for (int64_t v = 0; v < cfg.vocab_size; ++v)
            scale = std::max(scale, std::fabs(static_cast<double>(ours[t * cfg.vocab_size + v])));
        for (int64_t v = 0; v < cfg.vocab_size; ++v) {
            const size_t k = t * static_cast<size_t>(cfg.vocab_size) + static_cast<size_t>(v);
            const double diff = std::fabs(static_cast<double>(theirs[k]) - ours[k]);
            worst = std::max(worst, diff / scale);
            ASSERT_LE(diff, 1e-4 * scale)
                << "position " << t << " token " << v << ": llama.cpp " << theirs[k] << ", ours " << ours[k];
        }
    }
    RecordProperty("worst_relative_diff", fmt::format("{:.3g}", worst));
    std::printf("[ %s ] worst |llama.cpp - ours| / max|logit| = %.3g\n", gguf_arch_name(GetParam()).c_str(),
                worst);
}

INSTANTIATE_TEST_SUITE_P(Archs, GgufLlamaCpp, testing::ValuesIn(kArchs), arch_param_name);

// Mean next-token NLL over windows of `window` tokens (every position but the last of each window
// predicts the next one), from (n, V) logits.
double mean_nll(const float* logits, const std::vector<int32_t>& ids, int64_t window, int64_t V) {
    double nll = 0;
    int64_t count = 0;
    for (size_t s = 0; s < ids.size(); s += static_cast<size_t>(window)) {
        for (size_t t = s; t + 1 < std::min(ids.size(), s + static_cast<size_t>(window)); ++t) {
            const float* row = logits + t * static_cast<size_t>(V);
            double mx = row[0], sum = 0;
            for (int64_t v = 1; v < V; ++v) mx = std::max(mx, static_cast<double>(row[v]));
            for (int64_t v = 0; v < V; ++v) sum += std::exp(row[v] - mx);
            nll += mx + std::log(sum) - row[ids[t + 1]];
            ++count;
        }
    }
    return nll / static_cast<double>(count);
}

// The small trained Bamba (byte ids, tests/parity/fixtures/trained) on a WikiText-2 slice: llama.cpp
// on our q8_0 export must be within 1 % of our fp32 perplexity (the issue's bar). Its d_model of 48
// is not a multiple of 32, so the matrices that read the residual stream stay F16 and ssm_out /
// ffn_down (rows of 96) are Q8_0: the perplexity moves by the weight rounding of both. The f32
// export is held to 1e-4 (fp32 against fp32, as above).
TEST(GgufLlamaCppPerplexity, TrainedModelQ8_0WithinOnePercent) {
    SKIP_WITHOUT_LLAMA_CPP();
    const char* data_dir = std::getenv("MSLM_DATA_DIR");
    const std::string text_path = std::string(data_dir ? data_dir : MSLM_DATA_DIR) + "/wikitext2-test.txt";
    if (!fs::exists(text_path)) GTEST_SKIP() << text_path << " not found";
    std::ifstream in(text_path, std::ios::binary);
    std::vector<int32_t> ids;
    for (char c; ids.size() < 4096 && in.get(c);)
        if (static_cast<unsigned char>(c) < 128) ids.push_back(static_cast<unsigned char>(c));
    ASSERT_EQ(ids.size(), 4096u);
    const int64_t window = 256;
    auto model = load_model<float>(std::string(MSLM_FIXTURE_DIR) + "/trained");
    const int64_t V = model->config().vocab_size;
    std::vector<float> ours(ids.size() * static_cast<size_t>(V));
    for (size_t s = 0; s < ids.size(); s += window) {
        model->forward(ids.data() + s, nullptr, 1, window);
        std::copy(model->logits(), model->logits() + window * V,
                  ours.begin() + static_cast<std::ptrdiff_t>(s * V));
    }
    const double ppl_ours = std::exp(mean_nll(ours.data(), ids, window, V));
    const std::string dir = test::fresh_test_dir("gguf_llama");
    std::map<std::string, double> ppl;
    for (auto [name, type] : {std::pair{"f32", TensorType::F32}, std::pair{"q8_0", TensorType::Q8_0}}) {
        GgufExportOptions opt;
        opt.type = type;
        export_gguf(*model, dir + "/" + name + ".gguf", opt);
        const auto logits = llama_logits(dir + "/" + name + ".gguf", ids, window, V, dir);
        ppl[name] = std::exp(mean_nll(logits.data(), ids, window, V));
    }
    std::printf(
        "perplexity on %zu WikiText-2 bytes: ours fp32 %.5f, llama.cpp f32 %.5f, llama.cpp q8_0 %.5f\n",
        ids.size(), ppl_ours, ppl["f32"], ppl["q8_0"]);
    EXPECT_LT(std::fabs(ppl["f32"] / ppl_ours - 1), 1e-4);
    EXPECT_LT(std::fabs(ppl["q8_0"] / ppl_ours - 1), 0.01);
}

// llama.cpp's tokenizer on the vocabulary our export writes: for each byte-level BPE fixture
// tokenizer (GPT-2's and Llama 3's pre-tokenizers), llama.cpp must split a WikiText-2 slice and the
// tokenizer edge cases (scripts, emoji, contractions, whitespace runs, digits) into exactly our ids.
// Token ids are discrete: any difference is a mismatch in the vocabulary, the merges, the
// pre-tokenizer type we name, or one of the two implementations.
TEST(GgufLlamaCppTokenizer, SameIdsAsOurTokenizer) {
    SKIP_WITHOUT_LLAMA_CPP();
    const char* data_dir = std::getenv("MSLM_DATA_DIR");
    const std::string wiki = std::string(data_dir ? data_dir : MSLM_DATA_DIR) + "/wikitext2-test.txt";
    if (!fs::exists(wiki)) GTEST_SKIP() << wiki << " not found";
    std::string text;
    {
        std::ifstream in(wiki, std::ios::binary);
        text.resize(32768);
        in.read(text.data(), static_cast<std::streamsize>(text.size()));
        text.resize(static_cast<size_t>(in.gcount()));
        text.resize(text.size() - utf8::incomplete_suffix(text));
        // The edge cases' lines of invalid UTF-8 are left out: llama.cpp's tokenizer throws
        // ("invalid codepoint") and aborts the process on them, where ours maps each bad byte as
        // HF tokenizers does.
        std::ifstream edge(std::string(MSLM_FIXTURE_DIR) + "/tokenizers/edge_cases.txt", std::ios::binary);
        int dropped = 0;
        for (std::string line; std::getline(edge, line);) {
            if (utf8::is_valid(line))
                text += line + "\n";
            else
                ++dropped;
        }
        ASSERT_LE(dropped, 2) << "the edge cases are meant to be mostly valid UTF-8";
    }
    ASSERT_TRUE(utf8::is_valid(text));
    for (const char* file : {"gpt2.json", "llama3.json"}) {
        SCOPED_TRACE(file);
        const std::string dir = test::fresh_test_dir("gguf_llama_tok");
        fs::copy_file(std::string(MSLM_FIXTURE_DIR) + "/tokenizers/" + file, dir + "/tokenizer.json");
        const Tokenizer tok = Tokenizer::load(dir + "/tokenizer.json");
        ModelConfig cfg = arch_config(GgufArch::Mamba);
        cfg.vocab_size = 6008;  // at least either tokenizer's vocabulary
        auto model = random_model(cfg, 2);
        GgufExportOptions opt;
        opt.tokenizer_dir = dir;
        const GgufExportReport report = export_gguf(*model, dir + "/m.gguf", opt);
        ASSERT_TRUE(report.tokenizer);
        // The Llama 3 fixture normalizes to NFC, which GGUF cannot carry: the export says so, and
        // the comparison leaves out the one line that is not already NFC (combining accents).
        const bool nfc = std::string(file) == "llama3.json";
        const bool noted = std::any_of(report.notes.begin(), report.notes.end(), [](const std::string& n) {
            return n.find("normalizer NFC not written") != std::string::npos;
        });
        EXPECT_EQ(noted, nfc);
        std::string input = text;
        if (nfc) {
            const size_t a = input.find("Combining:"), b = input.find('\n', a);
            ASSERT_NE(a, std::string::npos);
            input.erase(a, b + 1 - a);
        }
        std::ofstream(dir + "/text.txt", std::ios::binary) << input;
        const std::string cmd = fmt::format("'{}' --tokenize '{}/m.gguf' '{}/text.txt' '{}/ids.txt' > '{}/llama.log' 2>&1",
                                            llama_tool(), dir, dir, dir, dir);
        ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
        std::vector<int32_t> theirs;
        {
            std::ifstream in(dir + "/ids.txt");
            for (long v; in >> v;) theirs.push_back(static_cast<int32_t>(v));
        }
        const std::vector<int32_t> ours = tok.encode(input);
        size_t first = 0;
        while (first < ours.size() && first < theirs.size() && ours[first] == theirs[first]) ++first;
        std::string near;
        for (size_t i = first; i < std::min(ours.size(), first + 6); ++i) near += tok.decode(std::vector<int32_t>{ours[i]}) + "|";
        EXPECT_EQ(first, ours.size()) << "first difference at id " << first << " of " << ours.size()
                                      << " (ours then: " << near << ")";
        EXPECT_EQ(theirs.size(), ours.size());
        std::printf("[ %s ] %zu bytes -> %zu ids, llama.cpp's identical: %s\n", file, input.size(), ours.size(),
                    ours == theirs ? "yes" : "no");
    }
}

}  // namespace
}  // namespace mslm
