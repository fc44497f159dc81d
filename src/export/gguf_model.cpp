#include "export/gguf_model.h"

#include <fmt/format.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "model/model_io.h"
#include "tokenizer/pretokenizer.h"

namespace mslm {

namespace fs = std::filesystem;
using gguf::TensorType;
using gguf::Value;
using nlohmann::json;

std::string gguf_arch_name(GgufArch arch) {
    switch (arch) {
        case GgufArch::Mamba:
            return "mamba";
        case GgufArch::Mamba2:
            return "mamba2";
        case GgufArch::Jamba:
            return "jamba";
        case GgufArch::GraniteHybrid:
            return "granitehybrid";
    }
    return "";
}

namespace {

[[noreturn]] void refuse(const std::string& what) {
    fail("GGUF export: {}: llama.cpp has no architecture that computes this", what);
}

void check_attention_common(const ModelConfig& c) {
    if (c.attention.sliding_window != 0)
        refuse(fmt::format("attention.sliding_window = {} (sliding-window attention)",
                           c.attention.sliding_window));
    if (c.attention.position == PositionKind::ALiBi) refuse("attention.position = alibi");
}

void check_mlp_swiglu(const ModelConfig& c, const char* arch) {
    if (c.mlp.kind == MlpKind::None)
        refuse(fmt::format("a model with attention layers but no MLP ({} needs a SwiGLU MLP in every layer)",
                           arch));
    if (c.mlp.kind != MlpKind::SwiGLU)
        refuse(fmt::format("mlp.kind other than swiglu ({} uses SwiGLU)", arch));
}

void check_expand_2(const ModelConfig& c, const char* arch) {
    if (c.mamba_d_inner() != 2 * c.d_model)
        refuse(fmt::format("mamba d_inner = {} with d_model = {} ({} supports only d_inner = 2 x d_model)",
                           c.mamba_d_inner(), c.d_model, arch));
}

}  // namespace

GgufArch gguf_arch_for(const ModelConfig& c) {
    if (c.count(LayerKind::Mamba) == 0) refuse("a model without Mamba layers");
    if (c.norm != NormKind::RMSNorm) refuse("norm = layernorm (llama.cpp's Mamba archs use RMSNorm)");
    if (c.mamba.proj_bias) refuse("mamba.proj_bias (in_proj / out_proj biases)");
    const bool attention = c.count(LayerKind::Attention) > 0;
    if (c.mamba.version == 2) {
        if (c.mamba.dt_limit_min != 0 || c.mamba.dt_limit_max != std::numeric_limits<double>::infinity())
            refuse(fmt::format("mamba.dt_limit = [{}, {}] (a clamp on dt)", c.mamba.dt_limit_min,
                               c.mamba.dt_limit_max));
        if (c.mamba_norm_groups() != c.mamba.n_groups)
            refuse(fmt::format(
                "mamba.norm_groups = {} differs from mamba.n_groups = {} (llama.cpp normalizes per "
                "group of B/C)",
                c.mamba_norm_groups(), c.mamba.n_groups));
        if (!attention && c.mlp.kind == MlpKind::None) return GgufArch::Mamba2;
        check_mlp_swiglu(c, "granitehybrid");
        check_expand_2(c, "granitehybrid");
        check_attention_common(c);
        return GgufArch::GraniteHybrid;
    }
    if (!attention && c.mlp.kind == MlpKind::None) {
        if (c.mamba.dt_bc_norm)
            refuse(
                "mamba.dt_bc_norm without attention layers (llama.cpp's mamba arch has no dt/B/C norm "
                "weights)");
        check_expand_2(c, "mamba");
        return GgufArch::Mamba;
    }
    if (!c.mamba.dt_bc_norm)
        refuse("Mamba-1 with attention or an MLP but without mamba.dt_bc_norm (jamba has dt/B/C norms)");
    check_mlp_swiglu(c, "jamba");
    check_expand_2(c, "jamba");
    check_attention_common(c);
    if (c.mlp.bias) refuse("mlp.bias (jamba's MLP has no biases)");
    if (attention) {
        if (c.attention.position != PositionKind::None)
            refuse("attention.position = rope (jamba's attention has no positions)");
        if (c.attention.qkv_bias || c.attention.out_bias)
            refuse("attention biases (jamba's attention has none)");
        if (c.attn_head_dim() * c.attention.n_heads != c.d_model)
            refuse(fmt::format("attention head_dim x n_heads = {} x {} differs from d_model = {}",
                               c.attn_head_dim(), c.attention.n_heads, c.d_model));
    }
    return GgufArch::Jamba;
}

std::vector<GgufTensorMap> gguf_tensor_map(GgufArch arch, const ModelConfig& cfg,
                                           const std::vector<ParamSpec>& specs) {
    std::map<std::string, const ParamSpec*> by_name;
    for (const auto& s : specs) by_name[s.name] = &s;
    std::vector<GgufTensorMap> out;
    // `torch_shape` is the PyTorch-order shape of the GGUF tensor (default: the native rows'
    // shape); ne is its reverse. An absent native parameter is skipped unless `zeros_if_absent`.
    auto add = [&](const std::string& gguf_name, const std::string& native, Shape torch_shape = {},
                   int64_t row_begin = 0, int64_t rows = -1, GgufTransform tr = GgufTransform::None,
                   bool zeros_if_absent = false) {
        auto it = by_name.find(native);
        GgufTensorMap m{gguf_name, native, row_begin, rows, {}, tr};
        if (it == by_name.end()) {
            if (!zeros_if_absent) return;
            m.native_name.clear();
        } else if (m.rows < 0) {
            m.rows = it->second->shape[0];
        }
        if (torch_shape.empty()) {
            torch_shape = it->second->shape;
            torch_shape[0] = m.rows;
        }
        m.ne.assign(torch_shape.rbegin(), torch_shape.rend());
        out.push_back(std::move(m));
    };
    const bool rope = arch == GgufArch::GraniteHybrid && cfg.attention.position == PositionKind::RoPE;
    add("token_embd.weight", "embed.weight");
    for (int64_t l = 0; l < cfg.n_layers; ++l) {
        const std::string b = fmt::format("blk.{}.", l), n = fmt::format("layers.{}.", l), mx = n + "mixer.";
        add(b + "attn_norm.weight", n + "norm.weight");
        if (cfg.layers[static_cast<size_t>(l)] == LayerKind::Mamba) {
            add(b + "ssm_in.weight", mx + "in_proj.weight");
            add(b + "ssm_conv1d.weight", mx + "conv1d.weight");
            const int64_t conv_channels = by_name.at(mx + "conv1d.weight")->shape[0];
            // llama.cpp's mamba, mamba2 and jamba require the conv bias: zeros stand in when the
            // model has none (the same function).
            add(b + "ssm_conv1d.bias", mx + "conv1d.bias", {conv_channels}, 0, -1, GgufTransform::None,
                arch != GgufArch::GraniteHybrid);
            if (cfg.mamba.version == 1) {
                const int64_t di = cfg.mamba_d_inner(), N = cfg.mamba.d_state;
                add(b + "ssm_x.weight", mx + "x_proj.weight");
                add(b + "ssm_dt.weight", mx + "dt_proj.weight");
                add(b + "ssm_dt.bias", mx + "dt_proj.bias");
                add(b + "ssm_a", mx + "A_log", {di, N}, 0, -1, GgufTransform::NegExp);
                add(b + "ssm_d", mx + "D");
                add(b + "ssm_dt_norm.weight", mx + "dt_norm.weight");
                add(b + "ssm_b_norm.weight", mx + "B_norm.weight");
                add(b + "ssm_c_norm.weight", mx + "C_norm.weight");
            } else {
                const int64_t H = cfg.mamba_n_heads(), G = cfg.mamba.n_groups, di = cfg.mamba_d_inner();
                add(b + "ssm_dt.bias", mx + "dt_bias");
                add(b + "ssm_a", mx + "A_log", {H, 1}, 0, -1, GgufTransform::NegExp);
                add(b + "ssm_d", mx + "D", {H, 1});
                add(b + "ssm_norm.weight", mx + "norm.weight", {G, di / G});
            }
            add(b + "ssm_out.weight", mx + "out_proj.weight");
        } else {
            const int64_t hd = cfg.attn_head_dim(), q = cfg.attention.n_heads * hd,
                          kv = cfg.attn_kv_heads() * hd;
            const GgufTransform qk = rope ? GgufTransform::RopeInterleave : GgufTransform::None;
            for (const char* suffix : {"weight", "bias"}) {
                const std::string qkv = mx + "qkv_proj." + suffix;
                Shape w = std::string(suffix) == "weight" ? Shape{q, cfg.d_model} : Shape{q};
                Shape wk = std::string(suffix) == "weight" ? Shape{kv, cfg.d_model} : Shape{kv};
                add(b + "attn_q." + suffix, qkv, w, 0, q, qk);
                add(b + "attn_k." + suffix, qkv, wk, q, kv, qk);
                add(b + "attn_v." + suffix, qkv, wk, q + kv, kv);
                add(b + "attn_output." + suffix, mx + "o_proj." + suffix);
            }
        }
        if (cfg.mlp.kind != MlpKind::None) {
            const int64_t F = cfg.mlp.d_ff;
            add(b + "ffn_norm.weight", n + "mlp_norm.weight");
            add(b + "ffn_gate.weight", n + "mlp.gate_up_proj.weight", {F, cfg.d_model}, 0, F);
            add(b + "ffn_up.weight", n + "mlp.gate_up_proj.weight", {F, cfg.d_model}, F, F);
            add(b + "ffn_down.weight", n + "mlp.down_proj.weight");
            add(b + "ffn_gate.bias", n + "mlp.gate_up_proj.bias", {F}, 0, F);
            add(b + "ffn_up.bias", n + "mlp.gate_up_proj.bias", {F}, F, F);
            add(b + "ffn_down.bias", n + "mlp.down_proj.bias");
        }
    }
    add("output_norm.weight", "final_norm.weight");
    if (!cfg.tie_embeddings) add("output.weight", "lm_head.weight");
    return out;
}

TensorType gguf_tensor_type(const GgufTensorMap& m, TensorType requested) {
    const std::string& n = m.gguf_name;
    auto ends_with = [&](std::string_view s) {
        return n.size() >= s.size() && n.compare(n.size() - s.size(), s.size(), s) == 0;
    };
    if (m.ne.size() <= 1 || ends_with("_norm.weight") || n.find("ssm_conv1d") != std::string::npos ||
        !ends_with(".weight"))
        return TensorType::F32;
    if (gguf::is_block_type(requested) && m.ne[0] % gguf::kBlock != 0) return TensorType::F16;
    return requested;
}

namespace {

// Applies (or, `inverse`, undoes) a transform on `rows` x `cols` values in place.
void apply_transform(GgufTransform tr, std::vector<float>& v, int64_t rows, int64_t cols,
                     const ModelConfig& cfg, bool inverse, const std::string& where) {
    switch (tr) {
        case GgufTransform::None:
            return;
        case GgufTransform::NegExp:
            for (float& x : v) {
                if (!inverse) {
                    x = static_cast<float>(-std::exp(static_cast<double>(x)));
                } else {
                    MSLM_CHECK(x < 0, "{}: ssm_a holds {}, but A = -exp(A_log) must be negative", where, x);
                    x = static_cast<float>(std::log(-static_cast<double>(x)));
                }
            }
            return;
        case GgufTransform::RopeInterleave: {
            const int64_t hd = cfg.attn_head_dim(), r = cfg.attn_rotary_dim(), half = r / 2;
            std::vector<float> src = v;
            for (int64_t h = 0; h < rows / hd; ++h) {
                for (int64_t i = 0; i < half; ++i) {
                    for (int k = 0; k < 2; ++k) {
                        const int64_t native = h * hd + i + k * half, interleaved = h * hd + 2 * i + k;
                        const int64_t to = inverse ? native : interleaved,
                                      from = inverse ? interleaved : native;
                        std::copy_n(src.begin() + from * cols, cols, v.begin() + to * cols);
                    }
                }
            }
            return;
        }
    }
}

uint32_t file_type_of(TensorType t) {
    switch (t) {
        case TensorType::F32:
            return 0;  // LLAMA_FTYPE_ALL_F32
        case TensorType::F16:
            return 1;  // MOSTLY_F16
        case TensorType::Q4_0:
            return 2;  // MOSTLY_Q4_0
        case TensorType::Q8_0:
            return 7;  // MOSTLY_Q8_0
        case TensorType::BF16:
            return 32;  // MOSTLY_BF16
    }
    return 0;
}

uint32_t u32_of(int64_t v, const char* what) {
    MSLM_CHECK(v >= 0 && v <= std::numeric_limits<uint32_t>::max(),
               "GGUF export: {} = {} does not fit in 32 bits", what, v);
    return static_cast<uint32_t>(v);
}

void write_config(gguf::Writer& w, GgufArch arch, const ModelConfig& c) {
    const std::string a = gguf_arch_name(arch) + ".";
    auto u32 = [&](const std::string& key, int64_t v) { w.add(a + key, Value::u32(u32_of(v, key.c_str()))); };
    std::vector<int32_t> kv_heads;
    for (LayerKind k : c.layers)
        kv_heads.push_back(k == LayerKind::Attention ? static_cast<int32_t>(c.attn_kv_heads()) : 0);
    u32("block_count", c.n_layers);
    u32("context_length", std::min<int64_t>(c.max_seq_len, std::numeric_limits<uint32_t>::max()));
    u32("embedding_length", c.d_model);
    u32("feed_forward_length", c.mlp.kind == MlpKind::None ? 0 : c.mlp.d_ff);
    const bool hybrid = arch == GgufArch::Jamba || arch == GgufArch::GraniteHybrid;
    u32("attention.head_count", hybrid ? c.attention.n_heads : 0);
    if (hybrid) w.add(a + "attention.head_count_kv", Value::i32_array(kv_heads));
    w.add(a + "attention.layer_norm_rms_epsilon", Value::f32(static_cast<float>(c.norm_eps)));
    u32("vocab_size", c.vocab_size);
    u32("ssm.conv_kernel", c.mamba.d_conv);
    u32("ssm.inner_size", c.mamba_d_inner());
    u32("ssm.state_size", c.mamba.d_state);
    u32("ssm.time_step_rank", c.mamba.version == 1 ? c.mamba_dt_rank() : c.mamba_n_heads());
    if (c.mamba.version == 2) u32("ssm.group_count", c.mamba.n_groups);
    if (arch == GgufArch::Mamba) w.add(a + "ssm.dt_b_c_rms", Value::boolean(false));
    if (arch == GgufArch::Jamba) {
        u32("expert_count", 1);
        u32("expert_used_count", 1);
    }
    if (arch == GgufArch::GraniteHybrid) {
        const bool rope = c.attention.position == PositionKind::RoPE;
        // llama.cpp's granite archs use rope_finetuned as the switch for RoPE.
        w.add(a + "rope.scaling.finetuned", Value::boolean(rope));
        if (rope) {
            w.add(a + "rope.freq_base", Value::f32(static_cast<float>(c.attention.rope_theta)));
            u32("rope.dimension_count", c.attn_rotary_dim());
        }
        if (c.attn_head_dim() * c.attention.n_heads != c.d_model) {
            u32("attention.key_length", c.attn_head_dim());
            u32("attention.value_length", c.attn_head_dim());
        }
    }
}

// llama.cpp's name for the pre-tokenizer of a byte-level BPE tokenizer.json.
std::string pre_tokenizer_name(const json& pre, const std::string& src) {
    auto is_type = [](const json& j, const char* t) { return j.is_object() && j.value("type", "") == t; };
    if (is_type(pre, "ByteLevel") && pre.value("use_regex", true)) return "gpt-2";
    if (is_type(pre, "Sequence") && pre.contains("pretokenizers") && pre["pretokenizers"].size() == 2) {
        const json& split = pre["pretokenizers"][0];
        const json& bl = pre["pretokenizers"][1];
        if (is_type(split, "Split") && split.contains("pattern") && split["pattern"].is_object() &&
            split["pattern"].value("Regex", "") == kLlama3Pattern && is_type(bl, "ByteLevel") &&
            !bl.value("use_regex", true))
            return "llama-bpe";
    }
    fail(
        "GGUF export: {}: pre_tokenizer {} is neither GPT-2's ByteLevel nor Llama-3's split, the two that "
        "map onto "
        "llama.cpp's pre-tokenizers",
        src, pre.dump().substr(0, 120));
}

// Writes tokenizer.ggml.* as llama.cpp's converter does for a byte-level BPE tokenizer.json
// (_set_vocab_gpt2): tokens by id, padded to the model's vocabulary with [PADn] (type UNUSED);
// token types NORMAL 1, CONTROL 3 (special added tokens), USER_DEFINED 4 (other added tokens);
// merges as "a b". Returns false (and writes model "none") when there is no tokenizer.json. GGUF has
// no key for a normalizer: llama.cpp tokenizes the text as given, so a tokenizer.json normalizer
// (NFC, say) is dropped with a note in `notes`.
bool write_tokenizer(gguf::Writer& w, const std::string& dir, int64_t vocab_size, std::vector<std::string>& notes) {
    const fs::path tok = fs::path(dir) / "tokenizer.json";
    if (dir.empty() || !fs::exists(tok)) {
        w.add("tokenizer.ggml.model", Value::string("none"));
        return false;
    }
    const json j = read_json_file(tok.string());
    const std::string src = tok.string();
    MSLM_CHECK(j.contains("model") && j["model"].value("type", "") == "BPE",
               "GGUF export: {}: model.type is not BPE", src);
    const json& model = j["model"];
    MSLM_CHECK(model.contains("vocab") && model["vocab"].is_object(), "GGUF export: {}: model.vocab missing",
               src);
    const std::string pre = pre_tokenizer_name(j.value("pre_tokenizer", json()), src);
    if (const json norm = j.value("normalizer", json()); !norm.is_null())
        notes.push_back(fmt::format(
            "tokenizer normalizer {} not written (GGUF has no normalizer): llama.cpp tokenizes text as "
            "given, so text not already normalized may split into other ids",
            norm.is_object() ? norm.value("type", std::string("?")) : norm.dump()));
    std::vector<std::string> tokens(static_cast<size_t>(vocab_size));
    std::vector<int32_t> types(static_cast<size_t>(vocab_size), 5);
    std::map<std::string, int64_t> ids;
    auto put = [&](const std::string& t, int64_t id, int32_t type) {
        MSLM_CHECK(id >= 0 && id < vocab_size,
                   "GGUF export: {}: token '{}' has id {}, outside the model's vocabulary "
                   "of {}",
                   src, t, id, vocab_size);
        tokens[static_cast<size_t>(id)] = t;
        types[static_cast<size_t>(id)] = type;
        ids[t] = id;
    };
    for (const auto& [t, id] : model["vocab"].items()) put(t, id.get<int64_t>(), 1);
    for (const auto& a : j.value("added_tokens", json::array()))
        put(a.at("content").get<std::string>(), a.at("id").get<int64_t>(), a.value("special", false) ? 3 : 4);
    for (size_t i = 0; i < tokens.size(); ++i)
        if (types[i] == 5) tokens[i] = fmt::format("[PAD{}]", i);
    std::vector<std::string> merges;
    for (const auto& m : model.value("merges", json::array())) {
        if (m.is_string())
            merges.push_back(m.get<std::string>());
        else
            merges.push_back(m.at(0).get<std::string>() + " " + m.at(1).get<std::string>());
    }
    w.add("tokenizer.ggml.model", Value::string("gpt2"));
    w.add("tokenizer.ggml.pre", Value::string(pre));
    w.add("tokenizer.ggml.tokens", Value::string_array(std::move(tokens)));
    w.add("tokenizer.ggml.token_type", Value::i32_array(types));
    w.add("tokenizer.ggml.merges", Value::string_array(std::move(merges)));

    // Special tokens and the chat template: tokenizer_config.json, else generation_config.json.
    std::map<std::string, int64_t> special;
    const fs::path tc = fs::path(dir) / "tokenizer_config.json";
    json tok_cfg = fs::exists(tc) ? read_json_file(tc.string()) : json::object();
    for (const char* role : {"bos", "eos", "unk", "pad"}) {
        const std::string key = std::string(role) + "_token";
        if (!tok_cfg.contains(key)) continue;
        const json& v = tok_cfg[key];
        const std::string content = v.is_string()   ? v.get<std::string>()
                                    : v.is_object() ? v.value("content", "")
                                                    : "";
        if (auto it = ids.find(content); it != ids.end()) special[role] = it->second;
    }
    const fs::path gc = fs::path(dir) / "generation_config.json";
    if (fs::exists(gc)) {
        json g = read_json_file(gc.string());
        for (const char* role : {"bos", "eos", "pad"}) {
            const std::string key = std::string(role) + "_token_id";
            if (!special.count(role) && g.contains(key) && g[key].is_number_integer())
                special[role] = g[key].get<int64_t>();
        }
    }
    for (const auto& [role, id] : special)
        if (id >= 0 && id < vocab_size)
            w.add("tokenizer.ggml." + role + "_token_id", Value::u32(static_cast<uint32_t>(id)));
    w.add("tokenizer.ggml.add_bos_token", Value::boolean(tok_cfg.value("add_bos_token", false)));
    if (tok_cfg.contains("chat_template") && tok_cfg["chat_template"].is_string())
        w.add("tokenizer.chat_template", Value::string(tok_cfg["chat_template"].get<std::string>()));
    return true;
}

}  // namespace

GgufExportReport export_gguf(const HybridLM<float>& model, const std::string& out_path,
                             const GgufExportOptions& opt) {
    const ModelConfig& cfg = model.config();
    MSLM_CHECK(opt.type == TensorType::F32 || opt.type == TensorType::F16 || opt.type == TensorType::Q8_0 ||
                   opt.type == TensorType::Q4_0,
               "GGUF export: type {} is not offered (f32, f16, q8_0, q4_0 are)",
               gguf::tensor_type_name(opt.type));
    GgufExportReport report;
    report.arch = gguf_arch_for(cfg);
    gguf::Writer w;
    w.add("general.architecture", Value::string(gguf_arch_name(report.arch)));
    w.add("general.type", Value::string("model"));
    if (!opt.name.empty()) w.add("general.name", Value::string(opt.name));
    w.add("general.file_type", Value::u32(file_type_of(opt.type)));
    w.add("general.quantization_version", Value::u32(2));
    write_config(w, report.arch, cfg);
    report.tokenizer = write_tokenizer(w, opt.tokenizer_dir, cfg.vocab_size, report.notes);

    const Parameters<float>& params = model.params();
    for (const GgufTensorMap& m : gguf_tensor_map(report.arch, cfg, params.specs())) {
        int64_t numel = 1;
        for (int64_t d : m.ne) numel *= d;
        std::vector<float> v(static_cast<size_t>(numel), 0.0f);
        if (!m.native_name.empty()) {
            const size_t idx = params.find(m.native_name);
            const ParamSpec& s = params.specs()[idx];
            const int64_t row = s.numel / s.shape[0];
            const float* src = params.value(idx) + m.row_begin * row;
            std::copy(src, src + m.rows * row, v.begin());
            apply_transform(m.transform, v, m.rows, row, cfg, false, out_path);
        }
        const TensorType t = gguf_tensor_type(m, opt.type);
        if (t != opt.type && t == TensorType::F16)
            report.notes.push_back(
                fmt::format("{} kept in F16: its rows hold {} values, not a multiple of {}", m.gguf_name,
                            m.ne[0], gguf::kBlock));
        w.add_tensor(m.gguf_name, m.ne, t, gguf::encode(t, v.data(), numel, m.ne[0]));
        report.tensors.emplace_back(m.gguf_name, t);
    }
    w.write(out_path);
    return report;
}

ModelConfig config_from_gguf(const gguf::File& f, GgufArch* arch_out) {
    const std::string arch_name = f.get_string("general.architecture");
    GgufArch arch;
    if (arch_name == "mamba")
        arch = GgufArch::Mamba;
    else if (arch_name == "mamba2")
        arch = GgufArch::Mamba2;
    else if (arch_name == "jamba")
        arch = GgufArch::Jamba;
    else if (arch_name == "granitehybrid")
        arch = GgufArch::GraniteHybrid;
    else
        fail("{}: general.architecture \"{}\" is not supported (mamba, mamba2, jamba, granitehybrid are)",
             f.name(), arch_name);
    const std::string a = arch_name + ".";
    auto u = [&](const char* key) { return static_cast<int64_t>(f.get_uint(a + key)); };
    auto has = [&](const std::string& key) { return f.find(a + key) != nullptr; };
    const gguf::TensorInfo* embd = f.find_tensor("token_embd.weight");
    MSLM_CHECK(embd && embd->ne.size() == 2, "{}: no 2-D tensor 'token_embd.weight'", f.name());

    ModelConfig c;
    c.vocab_size = embd->ne[1];
    c.d_model = u("embedding_length");
    c.n_layers = u("block_count");
    MSLM_CHECK(c.n_layers > 0 && c.n_layers <= 4096, "{}: {}block_count = {} is out of range", f.name(), a,
               c.n_layers);
    c.max_seq_len = has("context_length") ? u("context_length") : (1 << 20);
    c.norm_eps = f.get_float(a + "attention.layer_norm_rms_epsilon");
    c.tie_embeddings = f.find_tensor("output.weight") == nullptr;
    c.mamba.d_conv = u("ssm.conv_kernel");
    c.mamba.d_inner = u("ssm.inner_size");
    c.mamba.d_state = u("ssm.state_size");
    c.mamba.expand = c.d_model > 0 && c.mamba.d_inner % c.d_model == 0 ? c.mamba.d_inner / c.d_model : 2;
    c.mlp.kind = MlpKind::None;
    c.layers.assign(static_cast<size_t>(c.n_layers), LayerKind::Mamba);
    const bool v2 = arch == GgufArch::Mamba2 || arch == GgufArch::GraniteHybrid;
    if (v2) {
        c.mamba.version = 2;
        const int64_t heads = u("ssm.time_step_rank");
        MSLM_CHECK(heads > 0 && c.mamba.d_inner % heads == 0,
                   "{}: {}ssm.time_step_rank = {} (heads) does not divide "
                   "ssm.inner_size = {}",
                   f.name(), a, heads, c.mamba.d_inner);
        c.mamba.head_dim = c.mamba.d_inner / heads;
        c.mamba.n_groups = u("ssm.group_count");
    } else {
        c.mamba.version = 1;
        c.mamba.dt_rank = u("ssm.time_step_rank");
        if (has("ssm.dt_b_c_rms"))
            MSLM_CHECK(!f.get_bool(a + "ssm.dt_b_c_rms"),
                       "{}: {}ssm.dt_b_c_rms = true (weightless dt/B/C norms, "
                       "FalconMamba) is not supported",
                       f.name(), a);
    }
    c.mamba.conv_bias = arch != GgufArch::GraniteHybrid || f.find_tensor("blk.0.ssm_conv1d.bias") != nullptr;
    if (arch == GgufArch::Jamba || arch == GgufArch::GraniteHybrid) {
        c.mlp = {MlpKind::SwiGLU, u("feed_forward_length"), f.find_tensor("blk.0.ffn_up.bias") != nullptr};
        c.attention.n_heads = u("attention.head_count");
        const gguf::Value& kv = f.get_array(a + "attention.head_count_kv", gguf::ValueType::I32);
        MSLM_CHECK(static_cast<int64_t>(kv.size()) == c.n_layers,
                   "{}: {}attention.head_count_kv has {} entries for {} "
                   "layers",
                   f.name(), a, kv.size(), c.n_layers);
        int64_t kv_heads = 0;
        for (size_t l = 0; l < kv.size(); ++l) {
            if (kv.ints[l] == 0) continue;
            MSLM_CHECK(kv_heads == 0 || kv.ints[l] == kv_heads,
                       "{}: {}attention.head_count_kv differs between attention "
                       "layers ({} and {})",
                       f.name(), a, kv_heads, kv.ints[l]);
            kv_heads = kv.ints[l];
            c.layers[l] = LayerKind::Attention;
        }
        c.attention.n_kv_heads = kv_heads;
        if (has("attention.key_length")) c.attention.head_dim = u("attention.key_length");
        if (arch == GgufArch::Jamba) {
            c.mamba.dt_bc_norm = true;
            c.attention.position = PositionKind::None;
            if (has("expert_count"))
                MSLM_CHECK(u("expert_count") <= 1,
                           "{}: jamba with {} experts (mixture of experts) is not supported", f.name(),
                           u("expert_count"));
        } else {
            for (const char* scale :
                 {"embedding_scale", "residual_scale", "logit_scale", "attention.scale"}) {
                if (!has(scale)) continue;
                const double v = f.get_float(a + scale);
                const bool neutral = std::string(scale) == "attention.scale" ? v == 0 : (v == 0 || v == 1);
                MSLM_CHECK(neutral, "{}: {}{} = {} (Granite's scaling) is not supported", f.name(), a, scale,
                           v);
            }
            const bool rope = !has("rope.scaling.finetuned") || f.get_bool(a + "rope.scaling.finetuned");
            c.attention.position = rope ? PositionKind::RoPE : PositionKind::None;
            if (has("rope.freq_base")) c.attention.rope_theta = f.get_float(a + "rope.freq_base");
            if (has("rope.dimension_count")) c.attention.rotary_dim = u("rope.dimension_count");
            for (int64_t l = 0; l < c.n_layers; ++l) {
                if (c.layers[static_cast<size_t>(l)] != LayerKind::Attention) continue;
                c.attention.qkv_bias = f.find_tensor(fmt::format("blk.{}.attn_q.bias", l)) != nullptr;
                c.attention.out_bias = f.find_tensor(fmt::format("blk.{}.attn_output.bias", l)) != nullptr;
                break;
            }
        }
    }
    try {
        c.validate();
    } catch (const Error& e) {
        fail("{}: {}", f.name(), e.what());
    }
    if (arch_out) *arch_out = arch;
    return c;
}

template <typename T>
std::unique_ptr<HybridLM<T>> load_gguf_model(const std::string& path) {
    gguf::File f = gguf::File::open(path);
    GgufArch arch;
    ModelConfig cfg = config_from_gguf(f, &arch);
    auto model = std::make_unique<HybridLM<T>>(cfg);
    Parameters<T>& params = model->params();
    std::vector<bool> filled(params.specs().size(), false);
    std::set<std::string> used;
    for (const GgufTensorMap& m : gguf_tensor_map(arch, cfg, params.specs())) {
        const gguf::TensorInfo* t = f.find_tensor(m.gguf_name);
        MSLM_CHECK(t, "{}: missing tensor '{}'", f.name(), m.gguf_name);
        // ggml ignores trailing dims of 1 (llama-quantize writes ssm_norm of one group as 1-D).
        auto squeezed = [](std::vector<int64_t> ne) {
            while (ne.size() > 1 && ne.back() == 1) ne.pop_back();
            return ne;
        };
        MSLM_CHECK(squeezed(t->ne) == squeezed(m.ne), "{}: tensor '{}' has dims [{}], the config needs [{}]",
                   f.name(), m.gguf_name, fmt::join(t->ne, ", "), fmt::join(m.ne, ", "));
        used.insert(m.gguf_name);
        std::vector<float> v = f.to_f32(*t);
        const size_t idx = params.find(m.native_name);
        const ParamSpec& s = params.specs()[idx];
        const int64_t row = s.numel / s.shape[0];
        apply_transform(m.transform, v, m.rows, row, cfg, true,
                        fmt::format("{}: tensor '{}'", f.name(), m.gguf_name));
        T* dst = params.value(idx) + m.row_begin * row;
        for (size_t i = 0; i < v.size(); ++i) dst[i] = static_cast<T>(v[i]);
        filled[idx] = true;
    }
    for (size_t i = 0; i < filled.size(); ++i)
        MSLM_CHECK(filled[i], "{}: nothing in the file maps to parameter '{}'", f.name(),
                   params.specs()[i].name);
    for (const auto& t : f.tensors())
        MSLM_CHECK(used.count(t.name), "{}: unexpected tensor '{}' (not part of a {} model with this config)",
                   f.name(), t.name, gguf_arch_name(arch));
    return model;
}

template std::unique_ptr<HybridLM<float>> load_gguf_model<float>(const std::string&);
template std::unique_ptr<HybridLM<double>> load_gguf_model<double>(const std::string&);

}  // namespace mslm
