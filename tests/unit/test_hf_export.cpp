// Hugging Face export (model/hf_export.h):
//  - round trips: every committed HF fixture → import → export gives back the same tensors (names,
//    shapes, dtypes, bytes) and a config that imports to the same native config; a native model →
//    export → import gives back the same parameters and the same logits;
//  - transformers parity: tests/parity/make_hf_export_fixtures.py ran our binary's export of the
//    models in fixtures/hf_export, loaded each export with transformers and recorded its logits and
//    the SHA-256 of every file it read; we export the same sources again, check the files are
//    those bytes, and compare our logits with transformers';
//  - every configuration no transformers class can express is refused with one line naming it.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>

#include "core/rng.h"
#include "core/safetensors.h"
#include "data/prepare.h"
#include "model/hf_export.h"
#include "model/model_io.h"
#include "test_util.h"
#include "tokenizer/chat_template.h"

using namespace mslm;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const std::string kFixtures = MSLM_FIXTURE_DIR;

std::string read_bytes(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

json read_json(const fs::path& p) {
    return json::parse(read_bytes(p));
}

// Every field of ModelConfig: a re-imported config must equal the first import exactly.
void expect_same_config(const ModelConfig& a, const ModelConfig& b, const std::string& what) {
    SCOPED_TRACE(what);
    EXPECT_EQ(a.vocab_size, b.vocab_size);
    EXPECT_EQ(a.d_model, b.d_model);
    EXPECT_EQ(a.n_layers, b.n_layers);
    EXPECT_EQ(a.layer_pattern(), b.layer_pattern());
    const MambaConfig &m = a.mamba, &n = b.mamba;
    EXPECT_EQ(m.version, n.version);
    EXPECT_EQ(m.d_state, n.d_state);
    EXPECT_EQ(m.d_conv, n.d_conv);
    EXPECT_EQ(m.expand, n.expand);
    EXPECT_EQ(m.d_inner, n.d_inner);
    EXPECT_EQ(m.head_dim, n.head_dim);
    EXPECT_EQ(m.n_groups, n.n_groups);
    EXPECT_EQ(m.chunk_size, n.chunk_size);
    EXPECT_EQ(m.dt_rank, n.dt_rank);
    EXPECT_EQ(m.dt_min, n.dt_min);
    EXPECT_EQ(m.dt_max, n.dt_max);
    EXPECT_EQ(m.dt_init_floor, n.dt_init_floor);
    EXPECT_EQ(m.A_init_min, n.A_init_min);
    EXPECT_EQ(m.A_init_max, n.A_init_max);
    EXPECT_EQ(m.dt_limit_min, n.dt_limit_min);
    EXPECT_EQ(m.dt_limit_max, n.dt_limit_max);
    EXPECT_EQ(m.conv_bias, n.conv_bias);
    EXPECT_EQ(m.proj_bias, n.proj_bias);
    EXPECT_EQ(m.dt_bc_norm, n.dt_bc_norm);
    EXPECT_EQ(m.norm_groups, n.norm_groups);
    const AttentionConfig &p = a.attention, &q = b.attention;
    EXPECT_EQ(p.n_heads, q.n_heads);
    EXPECT_EQ(p.n_kv_heads, q.n_kv_heads);
    EXPECT_EQ(p.head_dim, q.head_dim);
    EXPECT_EQ(p.position, q.position);
    EXPECT_EQ(p.rope_theta, q.rope_theta);
    EXPECT_EQ(p.rotary_dim, q.rotary_dim);
    EXPECT_EQ(p.sliding_window, q.sliding_window);
    EXPECT_EQ(p.qkv_bias, q.qkv_bias);
    EXPECT_EQ(p.out_bias, q.out_bias);
    EXPECT_EQ(a.mlp.kind, b.mlp.kind);
    EXPECT_EQ(a.mlp.d_ff, b.mlp.d_ff);
    EXPECT_EQ(a.mlp.bias, b.mlp.bias);
    EXPECT_EQ(a.norm, b.norm);
    EXPECT_EQ(a.norm_eps, b.norm_eps);
    EXPECT_EQ(a.tie_embeddings, b.tie_embeddings);
    EXPECT_EQ(a.max_seq_len, b.max_seq_len);
    EXPECT_EQ(a.initializer_range, b.initializer_range);
    EXPECT_EQ(a.embed_padding_idx, b.embed_padding_idx);
}

// ---------------------------------------------------------------- HF fixture → import → export

void check_hf_round_trip(const std::string& name) {
    const std::string src = kFixtures + "/" + name;
    const std::string out = test::fresh_test_dir("hfx") + "/export";
    const HfExportSummary s = export_hf(src, out);
    EXPECT_EQ(hf_model_type(s.arch), read_json(src + "/config.json")["model_type"]);

    const SafetensorsFile a = SafetensorsFile::open(src + "/model.safetensors");
    const SafetensorsFile b = SafetensorsFile::open(out + "/model.safetensors");
    EXPECT_EQ(std::set<std::string>(a.names().begin(), a.names().end()),
              std::set<std::string>(b.names().begin(), b.names().end()));
    for (const std::string& t : a.names()) {
        ASSERT_TRUE(b.contains(t)) << name << ": " << t << " missing from the export";
        EXPECT_EQ(a.entry(t).dtype, b.entry(t).dtype) << t;
        EXPECT_EQ(a.entry(t).shape, b.entry(t).shape) << t;
        const auto x = a.bytes(t), y = b.bytes(t);
        EXPECT_TRUE(x.size() == y.size() && std::memcmp(x.data(), y.data(), x.size()) == 0)
            << name << ": " << t << " bytes differ";
    }
    // Our writer lays the file out as the safetensors library does (header key order, tensor
    // order, padding), so the whole file is transformers' own save_pretrained output again.
    EXPECT_EQ(read_bytes(src + "/model.safetensors"), read_bytes(out + "/model.safetensors")) << name;

    expect_same_config(load_any_config(src), load_any_config(out), name);
}

TEST(HfExport, RoundTripMamba1Fixture) {
    check_hf_round_trip("mamba1");
}
TEST(HfExport, RoundTripMamba2Fixture) {
    check_hf_round_trip("mamba2");
}
TEST(HfExport, RoundTripJambaFixture) {
    check_hf_round_trip("jamba");
}
TEST(HfExport, RoundTripBambaFixture) {
    check_hf_round_trip("hybrid");
}
TEST(HfExport, RoundTripTrainedFixture) {
    check_hf_round_trip("trained");
}

// ---------------------------------------------------------------- native → export → import

// The same four shapes as make_hf_export_fixtures.py, each using the features its class maps.
ModelConfig native_config(const std::string& kind) {
    ModelConfig c;
    c.vocab_size = 50;
    c.d_model = 32;
    c.max_seq_len = 64;
    c.mamba.d_state = 8;
    c.mamba.head_dim = 8;
    c.mamba.n_groups = 2;
    c.mamba.chunk_size = 8;
    c.attention.n_heads = 4;
    c.attention.n_kv_heads = 2;
    c.mlp = {MlpKind::SwiGLU, 48, false};
    if (kind == "mamba1") {
        c.layers = parse_layer_pattern("MM");
        c.mamba.version = 1;
        c.mamba.dt_rank = 3;
        c.mlp.kind = MlpKind::None;
        c.tie_embeddings = true;
    } else if (kind == "mamba2") {
        c.layers = parse_layer_pattern("MM");
        c.mamba.proj_bias = true;
        c.mamba.dt_limit_max = 0.1;
        c.mlp.kind = MlpKind::None;
        c.tie_embeddings = false;
    } else if (kind == "jamba") {
        c.layers = parse_layer_pattern("MAM");
        c.mamba.version = 1;
        c.mamba.dt_bc_norm = true;
        c.attention.position = PositionKind::None;
        c.tie_embeddings = false;
        c.norm_eps = 1e-6;
        c.embed_padding_idx = 1;
    } else {
        c.layers = parse_layer_pattern("MMAM");
        c.attention.rope_theta = 500;
        c.attention.rotary_dim = 6;
        c.attention.qkv_bias = c.attention.out_bias = true;
        c.mlp.bias = true;
        c.tie_embeddings = true;
    }
    c.n_layers = static_cast<int64_t>(c.layers.size());
    c.validate();
    return c;
}

// A random model whose parameters all differ from their structured init (ones, zeros).
std::unique_ptr<HybridLM<float>> random_model(const ModelConfig& cfg, uint64_t seed) {
    auto model = std::make_unique<HybridLM<float>>(cfg);
    model->init(seed);
    Rng rng(seed + 1);
    Parameters<float>& p = model->params();
    for (size_t i = 0; i < p.specs().size(); ++i)
        for (int64_t k = 0; k < p.specs()[i].numel; ++k)
            p.value(i)[k] += static_cast<float>(rng.normal(0.0, 0.05));
    return model;
}

std::vector<float> logits_of(HybridLM<float>& model, const std::vector<int32_t>& ids, int64_t B) {
    const auto T = static_cast<int64_t>(ids.size()) / B;
    model.forward(ids.data(), nullptr, B, T);
    return {model.logits(), model.logits() + B * T * model.config().vocab_size};
}

void expect_same_params(const HybridLM<float>& a, const HybridLM<float>& b, const std::string& what) {
    const Parameters<float>&p = a.params(), &q = b.params();
    ASSERT_EQ(p.specs().size(), q.specs().size()) << what;
    for (size_t i = 0; i < p.specs().size(); ++i) {
        const ParamSpec& s = p.specs()[i];
        ASSERT_EQ(s.name, q.specs()[i].name) << what;
        ASSERT_EQ(s.shape, q.specs()[i].shape) << what << ": " << s.name;
        EXPECT_EQ(std::memcmp(p.value(i), q.value(i), static_cast<size_t>(s.numel) * sizeof(float)), 0)
            << what << ": " << s.name << " differs";
    }
}

void check_native_round_trip(const std::string& kind, HfArch want) {
    const std::string dir = test::fresh_test_dir("hfx");
    const ModelConfig cfg = native_config(kind);
    auto model = random_model(cfg, 7);
    save_model(*model, dir + "/native");
    const HfExportSummary s = export_hf(dir + "/native", dir + "/hf");
    EXPECT_EQ(s.arch, want) << kind;
    EXPECT_EQ(s.dtypes, "F32");
    LoadedModelInfo info;
    auto back = load_model<float>(dir + "/hf", &info);
    EXPECT_EQ(info.format, hf_model_type(want));
    expect_same_params(*model, *back, kind);
    // Same parameters and a config that computes the same thing: bitwise the same logits.
    std::vector<int32_t> ids;
    for (int i = 0; i < 2 * 10; ++i) ids.push_back((i * 17 + 3) % static_cast<int32_t>(cfg.vocab_size));
    EXPECT_EQ(logits_of(*model, ids, 2), logits_of(*back, ids, 2)) << kind;
    // And the export of the export is the same directory, byte for byte.
    export_hf(dir + "/hf", dir + "/hf2");
    for (const char* f :
         {"config.json", "model.safetensors", "generation_config.json", "tokenizer_config.json"})
        EXPECT_EQ(read_bytes(dir + "/hf/" + f), read_bytes(dir + "/hf2/" + f)) << kind << ": " << f;
}

TEST(HfExport, NativeMamba1RoundTrip) {
    check_native_round_trip("mamba1", HfArch::Mamba);
}
TEST(HfExport, NativeMamba2RoundTrip) {
    check_native_round_trip("mamba2", HfArch::Mamba2);
}
TEST(HfExport, NativeJambaRoundTrip) {
    check_native_round_trip("jamba", HfArch::Jamba);
}
TEST(HfExport, NativeBambaRoundTrip) {
    check_native_round_trip("bamba", HfArch::Bamba);
}

// Without --dtype every tensor keeps its source dtype; with it, every tensor takes that dtype.
TEST(HfExport, DtypeDefaultsToTheSourceAndCanBeChosen) {
    const std::string dir = test::fresh_test_dir("hfx");
    auto model = random_model(native_config("bamba"), 3);
    save_model(*model, dir + "/bf16", DType::BF16);
    save_model(*model, dir + "/f16", DType::F16);
    save_model(*model, dir + "/f32");

    export_hf(dir + "/bf16", dir + "/hf_bf16");
    HfExportOptions f16;
    f16.dtype = DType::F16;
    export_hf(dir + "/f32", dir + "/hf_f16", f16);
    for (const auto& [out, dtype, name] :
         {std::tuple{"/hf_bf16", DType::BF16, "bfloat16"}, std::tuple{"/hf_f16", DType::F16, "float16"}}) {
        const SafetensorsFile f = SafetensorsFile::open(dir + out + "/model.safetensors");
        for (const auto& e : f.entries()) EXPECT_EQ(e.dtype, dtype) << out << ": " << e.name;
        EXPECT_EQ(read_json(dir + out + "/config.json")["dtype"], name);
    }
    // The values are the source's rounded once, as save_model rounds them.
    expect_same_params(*load_model<float>(dir + "/bf16"), *load_model<float>(dir + "/hf_bf16"), "bf16");
    expect_same_params(*load_model<float>(dir + "/f16"), *load_model<float>(dir + "/hf_f16"), "f16");
}

// ---------------------------------------------------------------- transformers parity

// Bound on |ours − transformers'| relative to the largest |logit|. Both sides run the same fp32
// math from the same fp32 weights (bf16 ones are widened exactly); they differ only in the order
// of summation (GEMM blocking, chunked vs recurrent scans, softmax), which for a few layers of
// width ≤ 96 costs a few fp32 ulps of the largest activations: ~1e-6 relative, measured 1.3e-7 to
// 5.3e-7 here. 3e-5 is the bound the HF import parity test argues (tests/unit/test_hf_parity.cpp);
// a mapping mistake moves logits far more: on the bamba case, transformers with 4 rotary dims
// instead of 6 is off by 6e-3 of max |logit|, with rms_norm_eps 1e-6 instead of 1e-5 by 1.4e-2.
constexpr double kLogitTol = 3e-5;

void check_transformers_case(const std::string& name) {
    const fs::path dir = fs::path(kFixtures) / "hf_export" / name;
    ASSERT_TRUE(fs::exists(dir / "expected.json")) << dir;
    const json ex = read_json(dir / "expected.json");
    const std::string src = (dir.parent_path() / ex["source"].get<std::string>()).lexically_normal().string();
    HfExportOptions opts;
    const std::vector<std::string> args = ex["args"];
    for (size_t i = 0; i + 1 < args.size(); i += 2) {
        ASSERT_EQ(args[i], "--dtype") << "unknown export argument in " << dir;
        opts.dtype = args[i + 1] == "bf16" ? DType::BF16 : args[i + 1] == "f16" ? DType::F16 : DType::F32;
    }
    const std::string out = test::fresh_test_dir("hfx") + "/export";
    const HfExportSummary s = export_hf(src, out, opts);
    EXPECT_EQ(hf_class_name(s.arch), ex["class"]);

    // (a) The files transformers read, byte for byte, and no others.
    std::set<std::string> written;
    for (const auto& e : fs::directory_iterator(out)) written.insert(e.path().filename().string());
    std::set<std::string> read_by_transformers;
    for (const auto& [file, sha] : ex["files"].items()) {
        read_by_transformers.insert(file);
        EXPECT_EQ(sha256_file(out + "/" + file), sha.get<std::string>()) << name << ": " << file;
    }
    EXPECT_EQ(written, read_by_transformers) << name;
    if (fs::exists(src + "/tokenizer.json")) {
        EXPECT_EQ(read_bytes(src + "/tokenizer.json"), read_bytes(out + "/tokenizer.json")) << "copied as is";
    }

    // (b) Our logits on the source model (rounded as the export rounds it) against transformers'.
    auto model = load_model<float>(src);
    if (opts.dtype && *opts.dtype != DType::F32) {
        Parameters<float>& p = model->params();
        for (size_t i = 0; i < p.specs().size(); ++i) {
            Tensor t = Tensor::empty(p.specs()[i].shape, DType::F32);
            std::copy(p.value(i), p.value(i) + p.specs()[i].numel, t.data<float>());
            const Tensor r = t.to(*opts.dtype).to(DType::F32);
            std::copy(r.data<float>(), r.data<float>() + r.numel(), p.value(i));
        }
    }
    const SafetensorsFile expected = SafetensorsFile::open((dir / "expected.safetensors").string());
    const Tensor ids = expected.get("input_ids").clone();
    const std::vector<float> want = expected.get_f32("logits").to_float_vector();
    const std::vector<int32_t> id_vec(ids.data<int32_t>(), ids.data<int32_t>() + ids.numel());
    const std::vector<float> got = logits_of(*model, id_vec, ids.size(0));
    ASSERT_EQ(got.size(), want.size()) << name;
    double scale = 0, worst = 0;
    for (size_t i = 0; i < want.size(); ++i) {
        scale = std::max(scale, std::fabs(double(want[i])));
        worst = std::max(worst, std::fabs(double(got[i]) - want[i]));
    }
    EXPECT_GT(scale, 0.1) << name << ": logits this small would test little";
    EXPECT_LT(worst, kLogitTol * scale)
        << name << ": max |ours - transformers| " << worst << ", max |logit| " << scale;

    // The chat template transformers rendered from our tokenizer_config.json renders the same here.
    if (ex.contains("chat")) {
        std::vector<ChatMessage> msgs;
        for (const auto& m : ex["chat"]["messages"]) msgs.push_back({m["role"], m["content"]});
        const ChatTemplate t = ChatTemplate::load_for_model(out);
        EXPECT_EQ(t.source(), out + "/tokenizer_config.json");
        EXPECT_EQ(t.render(msgs, ex["chat"]["add_generation_prompt"]), ex["chat"]["text"].get<std::string>());
    }
}

TEST(HfExportTransformers, Mamba1) {
    check_transformers_case("mamba1");
}
TEST(HfExportTransformers, Mamba2) {
    check_transformers_case("mamba2");
}
TEST(HfExportTransformers, Jamba) {
    check_transformers_case("jamba");
}
TEST(HfExportTransformers, Bamba) {
    check_transformers_case("bamba");
}
TEST(HfExportTransformers, BambaBf16) {
    check_transformers_case("bamba_bf16");
}
TEST(HfExportTransformers, Trained) {
    check_transformers_case("trained");
}

// ---------------------------------------------------------------- files around the weights

TEST(HfExport, TokenizerFilesAndChatTemplate) {
    const std::string dir = test::fresh_test_dir("hfx");
    ModelConfig cfg = native_config("mamba2");
    cfg.vocab_size = 300;
    save_model(*random_model(cfg, 5), dir + "/native");
    // No tokenizer, no template, no generation config: ChatML, and the ids stay null.
    export_hf(dir + "/native", dir + "/plain");
    EXPECT_FALSE(fs::exists(dir + "/plain/tokenizer.json"));
    const ChatTemplate chatml = ChatTemplate::load_for_model(dir + "/plain");
    const std::vector<ChatMessage> msgs = {{"user", "hi"}};
    EXPECT_EQ(chatml.render(msgs, true), ChatTemplate::chatml().render(msgs, true));
    const json plain = read_json(dir + "/plain/config.json");
    EXPECT_TRUE(plain["eos_token_id"].is_null() && plain["bos_token_id"].is_null() &&
                plain["pad_token_id"].is_null());
    EXPECT_EQ(read_json(dir + "/plain/generation_config.json"), json::object());

    // A tokenizer, a tokenizer_config.json with a template, and a generation config.
    fs::copy_file(kFixtures + "/hf_export/mamba1/native/tokenizer.json", dir + "/native/tokenizer.json");
    const json gen = {{"eos_token_id", 0}, {"bos_token_id", 0}, {"temperature", 0.7}};
    std::ofstream(dir + "/native/generation_config.json") << gen.dump();
    std::ofstream(dir + "/native/tokenizer_config.json")
        << R"({"chat_template": "{{ messages[0]['content'] }}!"})";
    export_hf(dir + "/native", dir + "/full");
    EXPECT_EQ(read_bytes(dir + "/native/tokenizer.json"), read_bytes(dir + "/full/tokenizer.json"));
    EXPECT_EQ(read_bytes(dir + "/native/generation_config.json"),
              read_bytes(dir + "/full/generation_config.json"));
    const json tc = read_json(dir + "/full/tokenizer_config.json");
    EXPECT_EQ(tc["chat_template"], "{{ messages[0]['content'] }}!");
    EXPECT_EQ(tc["tokenizer_class"], "PreTrainedTokenizerFast");
    EXPECT_EQ(tc["eos_token"], "<|endoftext|>");  // id 0 of that tokenizer
    EXPECT_EQ(ChatTemplate::load_for_model(dir + "/full").render(msgs, false), "hi!");
    const json full = read_json(dir + "/full/config.json");
    EXPECT_EQ(full["eos_token_id"], 0);
    EXPECT_EQ(full["bos_token_id"], 0);
}

TEST(HfExport, OutputDirectoryRules) {
    const std::string dir = test::fresh_test_dir("hfx");
    save_model(*random_model(native_config("mamba1"), 1), dir + "/native");
    fs::create_directories(dir + "/busy");
    std::ofstream(dir + "/busy/keep.txt") << "x";
    try {
        export_hf(dir + "/native", dir + "/busy");
        FAIL() << "a non-empty output directory must be refused";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("exists and is not empty"), std::string::npos) << e.what();
    }
    EXPECT_TRUE(fs::exists(dir + "/busy/keep.txt"));
    HfExportOptions force;
    force.overwrite = true;
    export_hf(dir + "/native", dir + "/busy", force);
    EXPECT_FALSE(fs::exists(dir + "/busy/keep.txt"));
    EXPECT_TRUE(fs::exists(dir + "/busy/model.safetensors"));
    // No temporary directories are left beside it.
    for (const auto& e : fs::directory_iterator(dir))
        EXPECT_NE(e.path().filename().string()[0], '.') << e.path();
    EXPECT_THROW(export_hf(dir + "/native", dir + "/native", force), Error);
    EXPECT_TRUE(fs::exists(dir + "/native/config.json"));
    fs::create_directories(dir + "/empty");
    export_hf(dir + "/native", dir + "/empty");
    EXPECT_TRUE(fs::exists(dir + "/empty/config.json"));
}

// ---------------------------------------------------------------- refusals

// Each blocking feature: hf_arch_for throws one line that names it.
void expect_refused(const std::string& base, const std::function<void(ModelConfig&)>& change,
                    const std::string& names) {
    ModelConfig c = native_config(base);
    change(c);
    c.n_layers = static_cast<int64_t>(c.layers.size());
    c.validate();  // a valid native model: only the export refuses it
    try {
        hf_arch_for(c);
        FAIL() << "accepted; expected a refusal naming " << names;
    } catch (const Error& e) {
        const std::string msg = e.what();
        EXPECT_NE(msg.find("cannot export to transformers: "), std::string::npos) << msg;
        EXPECT_NE(msg.find(names), std::string::npos) << msg;
        EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    }
}

TEST(HfExportRefuses, NoMambaLayer) {
    expect_refused(
        "bamba", [](ModelConfig& c) { c.layers = parse_layer_pattern("AAAA"); }, "has no Mamba layer");
}
TEST(HfExportRefuses, LayerNorm) {
    expect_refused(
        "mamba2", [](ModelConfig& c) { c.norm = NormKind::LayerNorm; }, "norm layernorm");
}
TEST(HfExportRefuses, DInnerNotExpandTimesDModel) {
    expect_refused(
        "mamba2", [](ModelConfig& c) { c.mamba.d_inner = 48; }, "mamba.d_inner 48");
}
TEST(HfExportRefuses, NormGroupsDifferFromGroups) {
    expect_refused(
        "bamba", [](ModelConfig& c) { c.mamba.norm_groups = 1; }, "mamba.norm_groups 1");
}
TEST(HfExportRefuses, PureMamba1WithDtBcNorm) {
    expect_refused(
        "mamba1", [](ModelConfig& c) { c.mamba.dt_bc_norm = true; }, "mamba.dt_bc_norm without an MLP");
}
TEST(HfExportRefuses, JambaWithoutDtBcNorm) {
    expect_refused(
        "jamba", [](ModelConfig& c) { c.mamba.dt_bc_norm = false; }, "mamba.dt_bc_norm false");
}
TEST(HfExportRefuses, AttentionWithoutMlp) {
    expect_refused(
        "bamba", [](ModelConfig& c) { c.mlp.kind = MlpKind::None; }, "mlp null");
}
TEST(HfExportRefuses, NonGatedMlp) {
    expect_refused(
        "bamba", [](ModelConfig& c) { c.mlp.kind = MlpKind::GELU; }, "mlp.type gelu");
    expect_refused(
        "jamba", [](ModelConfig& c) { c.mlp.kind = MlpKind::ReLU; }, "mlp.type relu");
}
TEST(HfExportRefuses, Alibi) {
    expect_refused(
        "bamba", [](ModelConfig& c) { c.attention.position = PositionKind::ALiBi; },
        "attention.position alibi");
    expect_refused(
        "jamba", [](ModelConfig& c) { c.attention.position = PositionKind::ALiBi; },
        "attention.position alibi");
}
TEST(HfExportRefuses, SlidingWindow) {
    expect_refused(
        "bamba", [](ModelConfig& c) { c.attention.sliding_window = 16; }, "attention.sliding_window 16");
}
TEST(HfExportRefuses, HeadDimOtherThanDModelOverHeads) {
    expect_refused(
        "bamba", [](ModelConfig& c) { c.attention.head_dim = 16; }, "attention.head_dim 16");
}
TEST(HfExportRefuses, RopeOnMamba1Hybrid) {
    expect_refused(
        "jamba", [](ModelConfig& c) { c.attention.position = PositionKind::RoPE; },
        "attention.position rope");
}
TEST(HfExportRefuses, NoPositionOnMamba2Hybrid) {
    expect_refused(
        "bamba", [](ModelConfig& c) { c.attention.position = PositionKind::None; },
        "attention.position none");
}
TEST(HfExportRefuses, JambaAttentionBias) {
    expect_refused(
        "jamba", [](ModelConfig& c) { c.attention.qkv_bias = true; }, "attention.qkv_bias/out_bias");
}
TEST(HfExportRefuses, JambaMlpBias) {
    expect_refused(
        "jamba", [](ModelConfig& c) { c.mlp.bias = true; }, "mlp.bias");
}
TEST(HfExportRefuses, BambaSplitAttentionBias) {
    expect_refused(
        "bamba", [](ModelConfig& c) { c.attention.out_bias = false; },
        "attention.qkv_bias true with out_bias false");
}
TEST(HfExportRefuses, JambaNonPeriodicLayers) {
    expect_refused(
        "jamba", [](ModelConfig& c) { c.layers = parse_layer_pattern("MAAM"); }, "layers \"MAAM\"");
}
TEST(HfExportRefuses, PaddingRowOnPureMamba) {
    expect_refused(
        "mamba2", [](ModelConfig& c) { c.embed_padding_idx = 3; }, "embed_padding_idx 3");
}

// What the classes can say, they get: Jamba finds its period; an all-Mamba stack with an MLP
// goes to the hybrid class (its MLP has nowhere else to go).
TEST(HfExport, LayoutsTheHybridClassesExpress) {
    ModelConfig j = native_config("jamba");
    j.layers = parse_layer_pattern("MMMA MMMA");
    j.n_layers = 8;
    const json hj = hf_config_from_native(j);
    EXPECT_EQ(hj["attn_layer_period"], 4);
    EXPECT_EQ(hj["attn_layer_offset"], 3);
    EXPECT_EQ(config_from_hf(hj, "export").layer_pattern(), "MMMA MMMA");
    j.layers = parse_layer_pattern("MMM");
    j.n_layers = 3;
    EXPECT_EQ(hf_arch_for(j), HfArch::Jamba);
    EXPECT_EQ(config_from_hf(hf_config_from_native(j), "export").layer_pattern(), "MMM");
    ModelConfig b = native_config("bamba");
    b.layers = parse_layer_pattern("MMMM");
    EXPECT_EQ(hf_arch_for(b), HfArch::Bamba);
    EXPECT_EQ(hf_config_from_native(b)["attn_layer_indices"], json::array());
    b.embed_padding_idx = -1;
    EXPECT_TRUE(hf_config_from_native(b)["pad_token_id"].is_null());
    EXPECT_EQ(config_from_hf(hf_config_from_native(b), "export").embed_padding_idx, -1);
}

// Through export_hf the refusal names the source config too, and nothing is written.
TEST(HfExport, RefusalNamesTheSourceAndWritesNothing) {
    const std::string dir = test::fresh_test_dir("hfx");
    ModelConfig c = native_config("bamba");
    c.attention.position = PositionKind::ALiBi;
    save_model(*random_model(c, 2), dir + "/alibi");
    try {
        export_hf(dir + "/alibi", dir + "/out");
        FAIL();
    } catch (const Error& e) {
        const std::string msg = e.what();
        EXPECT_EQ(
            msg.rfind(dir + "/alibi/config.json: cannot export to transformers: attention.position alibi", 0),
            0u)
            << msg;
    }
    EXPECT_FALSE(fs::exists(dir + "/out"));
}

}  // namespace
