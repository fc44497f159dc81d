#include "model/hf_import.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <limits>
#include <map>

#include <fmt/format.h>

#include "core/error.h"

namespace mslm {

using nlohmann::json;

bool is_hf_model_type(const std::string& t) { return t == "mamba" || t == "mamba2" || t == "jamba" || t == "bamba"; }

HfArch hf_arch_from_model_type(const std::string& t, const std::string& source) {
    if (t == "mamba") return HfArch::Mamba;
    if (t == "mamba2") return HfArch::Mamba2;
    if (t == "jamba") return HfArch::Jamba;
    if (t == "bamba") return HfArch::Bamba;
    fail("{}: model_type \"{}\" is not supported (mamba_slm, mamba, mamba2, jamba, bamba are)", source, t);
}

std::string hf_model_type(HfArch arch) {
    switch (arch) {
        case HfArch::Mamba: return "mamba";
        case HfArch::Mamba2: return "mamba2";
        case HfArch::Jamba: return "jamba";
        case HfArch::Bamba: return "bamba";
    }
    return "";
}

namespace {

// Reads HF config fields with their transformers defaults, decoding {"__float__": "Infinity"}.
class HfFields {
public:
    HfFields(const json& j, std::string source) : j_(j), source_(std::move(source)) {
        MSLM_CHECK(j.is_object(), "{}: expected a JSON object", source_);
    }
    bool has(const char* key) const { return j_.contains(key) && !j_.at(key).is_null(); }
    bool present(const char* key) const { return j_.contains(key); }  // null included
    double number(const json& v, const char* key) const {
        if (v.is_number()) return v.get<double>();
        if (v.is_object() && v.contains("__float__") && v["__float__"].is_string()) {
            std::string s = v["__float__"].get<std::string>();
            if (s == "Infinity") return std::numeric_limits<double>::infinity();
            if (s == "-Infinity") return -std::numeric_limits<double>::infinity();
            if (s == "NaN") return std::numeric_limits<double>::quiet_NaN();
        }
        fail("{}: field \"{}\" is not a number", source_, key);
    }
    double f(const char* key, double def) const { return has(key) ? number(j_.at(key), key) : def; }
    int64_t i(const char* key, int64_t def) const {
        if (!has(key)) return def;
        const json& v = j_.at(key);
        MSLM_CHECK(v.is_number_integer(), "{}: field \"{}\" must be an integer", source_, key);
        return v.get<int64_t>();
    }
    bool b(const char* key, bool def) const {
        if (!has(key)) return def;
        MSLM_CHECK(j_.at(key).is_boolean(), "{}: field \"{}\" must be true or false", source_, key);
        return j_.at(key).get<bool>();
    }
    std::string s(const char* key, const std::string& def) const {
        if (!has(key)) return def;
        MSLM_CHECK(j_.at(key).is_string(), "{}: field \"{}\" must be a string", source_, key);
        return j_.at(key).get<std::string>();
    }
    const json& at(const char* key) const { return j_.at(key); }
    // [lo, hi] pairs such as time_step_limit.
    std::pair<double, double> pair(const char* key, double lo, double hi) const {
        if (!has(key)) return {lo, hi};
        const json& v = j_.at(key);
        MSLM_CHECK(v.is_array() && v.size() == 2, "{}: field \"{}\" must be a pair", source_, key);
        return {number(v[0], key), number(v[1], key)};
    }
    const std::string& source() const { return source_; }

private:
    const json& j_;
    std::string source_;
};

void require_silu(const HfFields& h, const char* key) {
    std::string act = h.s(key, "silu");
    MSLM_CHECK(act == "silu" || act == "swish", "{}: {} \"{}\" is not supported (only silu)", h.source(), key, act);
}

// An integer, or "auto" (0 here: ceil(d_model / 16), resolved by ModelConfig).
int64_t dt_rank(const HfFields& h, const char* key) {
    if (h.has(key) && h.at(key).is_string()) {
        MSLM_CHECK(h.at(key) == "auto", "{}: {} must be an integer or \"auto\"", h.source(), key);
        return 0;
    }
    return h.i(key, 0);
}

// Jamba and Bamba build their embedding with padding_idx = pad_token_id: an absent key is the
// class default 0, an explicit null is no padding row.
int64_t padding_idx(const HfFields& h) {
    if (!h.has("pad_token_id")) return h.present("pad_token_id") ? -1 : 0;
    return h.i("pad_token_id", 0);
}

void apply_dt_limit(const HfFields& h, ModelConfig& c) {
    auto [lo, hi] = h.pair("time_step_limit", 0.0, std::numeric_limits<double>::infinity());
    c.mamba.dt_limit_min = lo;
    c.mamba.dt_limit_max = hi;
}

}  // namespace

ModelConfig config_from_hf(const json& j, const std::string& source) {
    HfFields h(j, source);
    HfArch arch = hf_arch_from_model_type(h.s("model_type", ""), source);
    ModelConfig c;
    c.vocab_size = h.i("vocab_size", 0);
    c.d_model = h.i("hidden_size", 0);
    c.n_layers = h.i("num_hidden_layers", 0);
    c.initializer_range = h.f("initializer_range", 0.02);
    c.mlp.kind = MlpKind::None;
    c.mamba.dt_min = h.f(arch == HfArch::Mamba || arch == HfArch::Mamba2 ? "time_step_min" : "mamba_dt_min", 0.001);
    c.mamba.dt_max = h.f(arch == HfArch::Mamba || arch == HfArch::Mamba2 ? "time_step_max" : "mamba_dt_max", 0.1);
    c.max_seq_len = h.i("max_position_embeddings", 1 << 20);  // SSMs have no positional limit
    switch (arch) {
        case HfArch::Mamba: {
            c.layers.assign(static_cast<size_t>(c.n_layers), LayerKind::Mamba);
            c.mamba.version = 1;
            c.mamba.d_state = h.i("state_size", 16);
            c.mamba.d_conv = h.i("conv_kernel", 4);
            c.mamba.expand = h.i("expand", 2);
            c.mamba.d_inner = h.i("intermediate_size", c.mamba.expand * c.d_model);
            c.mamba.dt_rank = dt_rank(h, "time_step_rank");
            c.mamba.proj_bias = h.b("use_bias", false);
            c.mamba.conv_bias = h.b("use_conv_bias", true);
            c.norm_eps = h.f("layer_norm_epsilon", 1e-5);
            c.tie_embeddings = h.b("tie_word_embeddings", true);
            require_silu(h, "hidden_act");
            break;
        }
        case HfArch::Mamba2: {
            c.layers.assign(static_cast<size_t>(c.n_layers), LayerKind::Mamba);
            c.mamba.version = 2;
            c.mamba.d_state = h.i("state_size", 128);
            c.mamba.d_conv = h.i("conv_kernel", 4);
            c.mamba.expand = h.i("expand", 2);
            c.mamba.head_dim = h.i("head_dim", 64);
            c.mamba.d_inner = h.i("num_heads", 128) * c.mamba.head_dim;
            c.mamba.n_groups = h.i("n_groups", 8);
            c.mamba.chunk_size = h.i("chunk_size", 256);
            c.mamba.proj_bias = h.b("use_bias", false);
            c.mamba.conv_bias = h.b("use_conv_bias", true);
            MSLM_CHECK(h.b("rms_norm", true), "{}: rms_norm = false (no gated norm) is not supported", source);
            apply_dt_limit(h, c);
            c.norm_eps = h.f("layer_norm_epsilon", 1e-5);
            c.tie_embeddings = h.b("tie_word_embeddings", false);
            require_silu(h, "hidden_act");
            break;
        }
        case HfArch::Jamba: {
            MSLM_CHECK(h.i("num_experts", 16) == 1, "{}: num_experts = {}: mixture-of-experts Jamba is not supported "
                       "(only num_experts = 1)", source, h.i("num_experts", 16));
            int64_t period = h.i("attn_layer_period", 8), offset = h.i("attn_layer_offset", 4);
            MSLM_CHECK(period > 0 && offset >= 0 && offset < period, "{}: attn_layer_offset must be below attn_layer_period",
                       source);
            for (int64_t l = 0; l < c.n_layers; ++l)
                c.layers.push_back(l % period == offset ? LayerKind::Attention : LayerKind::Mamba);
            c.mamba.version = 1;
            c.mamba.d_state = h.i("mamba_d_state", 16);
            c.mamba.d_conv = h.i("mamba_d_conv", 4);
            c.mamba.expand = h.i("mamba_expand", 2);
            c.mamba.dt_rank = dt_rank(h, "mamba_dt_rank");
            c.mamba.conv_bias = h.b("mamba_conv_bias", true);
            c.mamba.proj_bias = h.b("mamba_proj_bias", false);
            c.mamba.dt_bc_norm = true;
            c.attention.n_heads = h.i("num_attention_heads", 32);
            c.attention.n_kv_heads = h.i("num_key_value_heads", 8);
            c.attention.position = PositionKind::None;
            c.mlp = {MlpKind::SwiGLU, h.i("intermediate_size", 14336), false};
            c.norm_eps = h.f("rms_norm_eps", 1e-6);
            c.tie_embeddings = h.b("tie_word_embeddings", false);
            c.embed_padding_idx = padding_idx(h);
            require_silu(h, "hidden_act");
            break;
        }
        case HfArch::Bamba: {
            c.layers.assign(static_cast<size_t>(c.n_layers), LayerKind::Mamba);
            if (h.has("attn_layer_indices")) {
                for (const auto& v : h.at("attn_layer_indices")) {
                    MSLM_CHECK(v.is_number_integer() && v.get<int64_t>() >= 0 && v.get<int64_t>() < c.n_layers,
                               "{}: attn_layer_indices holds {} (layers are 0..{})", source, v.dump(), c.n_layers - 1);
                    c.layers[static_cast<size_t>(v.get<int64_t>())] = LayerKind::Attention;
                }
            }
            c.mamba.version = 2;
            c.mamba.d_state = h.i("mamba_d_state", 256);
            c.mamba.d_conv = h.i("mamba_d_conv", 4);
            c.mamba.expand = h.i("mamba_expand", 2);
            int64_t n_heads = h.i("mamba_n_heads", 128);
            int64_t d_inner = c.mamba.expand * c.d_model;
            c.mamba.head_dim = h.has("mamba_d_head") && !h.at("mamba_d_head").is_string() ? h.i("mamba_d_head", 0)
                                                                                          : d_inner / n_heads;
            c.mamba.d_inner = n_heads * c.mamba.head_dim;
            c.mamba.n_groups = h.i("mamba_n_groups", 1);
            c.mamba.chunk_size = h.i("mamba_chunk_size", 256);
            c.mamba.conv_bias = h.b("mamba_conv_bias", true);
            c.mamba.proj_bias = h.b("mamba_proj_bias", false);
            apply_dt_limit(h, c);
            c.attention.n_heads = h.i("num_attention_heads", 32);
            c.attention.n_kv_heads = h.i("num_key_value_heads", 8);
            c.attention.position = PositionKind::RoPE;
            double theta = h.f("rope_theta", 10000.0), factor = 0.5;
            if (h.has("rope_parameters")) {
                HfFields rp(h.at("rope_parameters"), source + ": rope_parameters");
                std::string type = rp.s("rope_type", "default");
                MSLM_CHECK(type == "default", "{}: rope_type \"{}\" is not supported (only default)", source, type);
                theta = rp.f("rope_theta", theta);
                factor = rp.f("partial_rotary_factor", factor);
            }
            c.attention.rope_theta = theta;
            const int64_t head_dim = c.attention.n_heads > 0 ? c.d_model / c.attention.n_heads : 0;
            const auto rotary = static_cast<int64_t>(static_cast<double>(head_dim) * factor);
            // Only attention layers rotate: an all-Mamba Bamba may carry any attention fields.
            MSLM_CHECK(c.count(LayerKind::Attention) == 0 || (rotary > 0 && rotary % 2 == 0),
                       "{}: rotary dims int({} x {}) = {} must be even and positive", source, head_dim, factor, rotary);
            c.attention.rotary_dim = rotary;
            c.attention.qkv_bias = c.attention.out_bias = h.b("attention_bias", false);
            c.mlp = {MlpKind::SwiGLU, h.i("intermediate_size", 14336), h.b("mlp_bias", false)};
            c.norm_eps = h.f("rms_norm_eps", 1e-5);
            c.tie_embeddings = h.b("tie_word_embeddings", false);
            c.embed_padding_idx = padding_idx(h);
            MSLM_CHECK(h.f("z_loss_coefficient", 0.0) == 0.0, "{}: z_loss_coefficient > 0 is not supported", source);
            require_silu(h, "hidden_act");
            break;
        }
    }
    MSLM_CHECK(c.vocab_size > 0 && c.d_model > 0 && c.n_layers > 0,
               "{}: vocab_size, hidden_size and num_hidden_layers must be present and positive", source);
    try {
        c.validate();
    } catch (const Error& e) {
        fail("{}: {}", source, e.what());
    }
    return c;
}

std::vector<HfTensorMap> hf_tensor_map(HfArch arch, const ModelConfig& cfg, const std::vector<ParamSpec>& specs) {
    std::map<std::string, const ParamSpec*> by_name;
    for (const auto& s : specs) by_name[s.name] = &s;
    std::vector<HfTensorMap> out;
    // Maps an HF tensor onto rows of a native parameter; hf_shape defaults to the native shape
    // restricted to those rows.
    auto add = [&](const std::string& hf, const std::string& native, int64_t row_begin = 0, int64_t rows = -1,
                   Shape hf_shape = {}) {
        auto it = by_name.find(native);
        if (it == by_name.end()) return;  // optional parameter (a bias the config does not have)
        const ParamSpec& s = *it->second;
        HfTensorMap m{hf, native, row_begin, rows < 0 ? s.shape[0] : rows, hf_shape};
        if (m.hf_shape.empty()) {
            m.hf_shape = s.shape;
            m.hf_shape[0] = m.rows;
        }
        out.push_back(std::move(m));
    };
    const bool mamba_style = arch == HfArch::Mamba || arch == HfArch::Mamba2;
    const std::string root = mamba_style ? "backbone." : "model.";
    add(root + (mamba_style ? "embeddings.weight" : "embed_tokens.weight"), "embed.weight");
    for (int64_t l = 0; l < cfg.n_layers; ++l) {
        const std::string hp = fmt::format("{}layers.{}.", root, l), np = fmt::format("layers.{}.", l);
        const std::string mixer = mamba_style ? "mixer." : "mamba.";
        add(hp + (mamba_style ? "norm.weight" : "input_layernorm.weight"), np + "norm.weight");
        if (cfg.layers[l] == LayerKind::Mamba) {
            const int64_t K = cfg.mamba.d_conv;
            for (const char* lin : {"in_proj", "x_proj", "dt_proj", "out_proj"}) {
                add(hp + mixer + lin + ".weight", np + "mixer." + lin + ".weight");
                add(hp + mixer + lin + ".bias", np + "mixer." + lin + ".bias");
            }
            const std::string conv = np + "mixer.conv1d.weight";
            if (by_name.count(conv)) add(hp + mixer + "conv1d.weight", conv, 0, -1, {by_name[conv]->shape[0], 1, K});
            add(hp + mixer + "conv1d.bias", np + "mixer.conv1d.bias");
            add(hp + mixer + "dt_bias", np + "mixer.dt_bias");
            add(hp + mixer + "A_log", np + "mixer.A_log");
            add(hp + mixer + "D", np + "mixer.D");
            add(hp + mixer + "norm.weight", np + "mixer.norm.weight");
            add(hp + mixer + "dt_layernorm.weight", np + "mixer.dt_norm.weight");
            add(hp + mixer + "b_layernorm.weight", np + "mixer.B_norm.weight");
            add(hp + mixer + "c_layernorm.weight", np + "mixer.C_norm.weight");
        } else {
            const int64_t q = cfg.attention.n_heads * cfg.attn_head_dim(), kv = cfg.attn_kv_heads() * cfg.attn_head_dim();
            for (const char* suffix : {".weight", ".bias"}) {
                const std::string qkv = np + "mixer.qkv_proj" + suffix;
                add(hp + "self_attn.q_proj" + suffix, qkv, 0, q);
                add(hp + "self_attn.k_proj" + suffix, qkv, q, kv);
                add(hp + "self_attn.v_proj" + suffix, qkv, q + kv, kv);
                add(hp + "self_attn.o_proj" + suffix, np + "mixer.o_proj" + suffix);
            }
        }
        if (cfg.mlp.kind != MlpKind::None) {
            add(hp + "pre_ff_layernorm.weight", np + "mlp_norm.weight");
            const int64_t F = cfg.mlp.d_ff;
            for (const char* suffix : {".weight", ".bias"}) {
                add(hp + "feed_forward.gate_proj" + suffix, np + "mlp.gate_up_proj" + suffix, 0, F);
                add(hp + "feed_forward.up_proj" + suffix, np + "mlp.gate_up_proj" + suffix, F, F);
                add(hp + "feed_forward.down_proj" + suffix, np + "mlp.down_proj" + suffix);
            }
        }
    }
    add(root + (mamba_style ? "norm_f.weight" : "final_layernorm.weight"), "final_norm.weight");
    if (!cfg.tie_embeddings) add("lm_head.weight", "lm_head.weight");
    return out;
}

}  // namespace mslm
