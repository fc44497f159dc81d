#include "model/config.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"

namespace mslm {

using nlohmann::json;

int ModelConfig::count(LayerKind k) const {
    int n = 0;
    for (LayerKind l : layers) n += l == k;
    return n;
}

std::string ModelConfig::layer_pattern() const {
    std::string s;
    for (size_t i = 0; i < layers.size(); ++i) {
        if (i && i % 4 == 0) s += ' ';
        s += static_cast<char>(layers[i]);
    }
    return s;
}

std::vector<LayerKind> parse_layer_pattern(const std::string& pattern) {
    std::vector<LayerKind> out;
    for (char c : pattern) {
        if (c == ' ') continue;
        if (c == 'M' || c == 'm') {
            out.push_back(LayerKind::Mamba);
        } else if (c == 'A' || c == 'a') {
            out.push_back(LayerKind::Attention);
        } else {
            fail("layers \"{}\": unknown layer letter '{}' (expected M for Mamba or A for attention)", pattern, c);
        }
    }
    return out;
}

void ModelConfig::validate() const {
    auto positive = [](int64_t v, const char* field) { MSLM_CHECK(v > 0, "{} = {}: must be positive", field, v); };
    positive(vocab_size, "vocab_size");
    positive(d_model, "d_model");
    positive(n_layers, "n_layers");
    positive(max_seq_len, "max_seq_len");
    MSLM_CHECK(static_cast<int64_t>(layers.size()) == n_layers, "layers \"{}\" has {} layers but n_layers = {}",
               layer_pattern(), layers.size(), n_layers);
    MSLM_CHECK(norm_eps > 0, "norm_eps = {}: must be positive", norm_eps);
    if (count(LayerKind::Mamba) > 0) {
        MSLM_CHECK(mamba.version == 1 || mamba.version == 2, "mamba.version = {}: expected 1 or 2", mamba.version);
        positive(mamba.d_state, "mamba.d_state");
        positive(mamba.d_conv, "mamba.d_conv");
        positive(mamba_d_inner(), "mamba.d_inner");
        MSLM_CHECK(mamba.dt_min > 0 && mamba.dt_min <= mamba.dt_max, "mamba.dt_min/dt_max = {}/{}: need 0 < min <= max",
                   mamba.dt_min, mamba.dt_max);
        if (mamba.version == 2) {
            positive(mamba.head_dim, "mamba.head_dim");
            positive(mamba.n_groups, "mamba.n_groups");
            positive(mamba.chunk_size, "mamba.chunk_size");
            MSLM_CHECK(mamba_d_inner() % mamba.head_dim == 0, "mamba: d_inner {} is not a multiple of head_dim {}",
                       mamba_d_inner(), mamba.head_dim);
            MSLM_CHECK(mamba_n_heads() % mamba.n_groups == 0, "mamba: {} heads do not divide into n_groups = {}",
                       mamba_n_heads(), mamba.n_groups);
            MSLM_CHECK(mamba_d_inner() % mamba_norm_groups() == 0,
                       "mamba: d_inner {} is not a multiple of norm_groups {}", mamba_d_inner(), mamba_norm_groups());
        } else {
            positive(mamba_dt_rank(), "mamba.dt_rank");
        }
    }
    if (count(LayerKind::Attention) > 0) {
        positive(attention.n_heads, "attention.n_heads");
        positive(attn_kv_heads(), "attention.n_kv_heads");
        positive(attn_head_dim(), "attention.head_dim");
        MSLM_CHECK(attention.n_heads % attn_kv_heads() == 0, "attention: n_heads {} is not a multiple of n_kv_heads {}",
                   attention.n_heads, attn_kv_heads());
        MSLM_CHECK(attention.head_dim != 0 || d_model % attention.n_heads == 0,
                   "attention: d_model {} is not a multiple of n_heads {} (set attention.head_dim)", d_model,
                   attention.n_heads);
        if (attention.position == PositionKind::RoPE) {
            MSLM_CHECK(attn_rotary_dim() % 2 == 0 && attn_rotary_dim() <= attn_head_dim(),
                       "attention.rotary_dim = {}: must be even and at most head_dim {}", attn_rotary_dim(),
                       attn_head_dim());
        }
        MSLM_CHECK(attention.sliding_window >= 0, "attention.sliding_window = {}: must be >= 0 (0: none)",
                   attention.sliding_window);
    }
    if (mlp.kind != MlpKind::None) positive(mlp.d_ff, "mlp.d_ff");
    MSLM_CHECK(embed_padding_idx >= -1 && embed_padding_idx < vocab_size,
               "embed_padding_idx = {}: must be -1 (none) or a token id below vocab_size {}", embed_padding_idx,
               vocab_size);
    MSLM_CHECK(mamba.dt_limit_min >= 0 && mamba.dt_limit_min < mamba.dt_limit_max,
               "mamba.dt_limit = [{}, {}]: need 0 <= min < max", mamba.dt_limit_min, mamba.dt_limit_max);
}

namespace {

// Reads fields out of one JSON object and reports unknown keys, so a typo in a config is an
// error rather than a silently ignored setting.
class Reader {
public:
    Reader(const json& j, std::string where) : j_(j), where_(std::move(where)) {
        MSLM_CHECK(j.is_object(), "{}: expected a JSON object", where_);
    }
    template <typename V>
    void get(const char* key, V& out) {
        seen_.insert(key);
        auto it = j_.find(key);
        if (it == j_.end() || it->is_null()) return;
        try {
            out = it->get<V>();
        } catch (const json::exception&) {
            fail("{}: field \"{}\" has the wrong type ({})", where_, key, it->type_name());
        }
    }
    const json* sub(const char* key) {
        seen_.insert(key);
        auto it = j_.find(key);
        return it == j_.end() ? nullptr : &*it;
    }
    void finish(const std::set<std::string>& also_allowed = {}) {
        for (auto it = j_.begin(); it != j_.end(); ++it) {
            if (!seen_.count(it.key()) && !also_allowed.count(it.key()))
                fail("{}: unknown field \"{}\"", where_, it.key());
        }
    }

private:
    const json& j_;
    std::string where_;
    std::set<std::string> seen_;
};

template <typename E>
E enum_from(const std::string& s, std::initializer_list<std::pair<const char*, E>> options, const std::string& where) {
    std::string names;
    for (auto& [n, e] : options) {
        if (s == n) return e;
        names += names.empty() ? n : std::string(", ") + n;
    }
    fail("{}: \"{}\" is not one of {}", where, s, names);
}

const std::initializer_list<std::pair<const char*, MlpKind>> kMlpKinds = {
    {"swiglu", MlpKind::SwiGLU}, {"gelu", MlpKind::GELU}, {"gelu_tanh", MlpKind::GELUTanh}, {"relu", MlpKind::ReLU}};
const std::initializer_list<std::pair<const char*, PositionKind>> kPositions = {
    {"rope", PositionKind::RoPE}, {"alibi", PositionKind::ALiBi}, {"none", PositionKind::None}};
const std::initializer_list<std::pair<const char*, NormKind>> kNorms = {{"rmsnorm", NormKind::RMSNorm},
                                                                        {"layernorm", NormKind::LayerNorm}};

template <typename E>
std::string enum_name(E e, std::initializer_list<std::pair<const char*, E>> options) {
    for (auto& [n, v] : options)
        if (v == e) return n;
    return "?";
}

}  // namespace

ModelConfig config_from_json(const json& j, const std::string& source) {
    ModelConfig c;
    Reader r(j, source);
    std::string model_type = "mamba_slm";
    r.get("model_type", model_type);
    MSLM_CHECK(model_type == "mamba_slm", "{}: model_type \"{}\" is not a native mamba-slm config", source, model_type);
    r.get("vocab_size", c.vocab_size);
    r.get("d_model", c.d_model);
    r.get("n_layers", c.n_layers);
    std::string pattern;
    r.get("layers", pattern);
    c.layers = pattern.empty() ? std::vector<LayerKind>(static_cast<size_t>(std::max<int64_t>(c.n_layers, 0)), LayerKind::Mamba)
                               : parse_layer_pattern(pattern);
    if (const json* m = r.sub("mamba"); m && !m->is_null()) {
        Reader mr(*m, source + ": mamba");
        auto& mc = c.mamba;
        mr.get("version", mc.version);
        mr.get("d_state", mc.d_state);
        mr.get("d_conv", mc.d_conv);
        mr.get("expand", mc.expand);
        mr.get("d_inner", mc.d_inner);
        mr.get("head_dim", mc.head_dim);
        mr.get("n_groups", mc.n_groups);
        mr.get("chunk_size", mc.chunk_size);
        mr.get("dt_rank", mc.dt_rank);
        mr.get("dt_min", mc.dt_min);
        mr.get("dt_max", mc.dt_max);
        mr.get("dt_init_floor", mc.dt_init_floor);
        mr.get("A_init_min", mc.A_init_min);
        mr.get("A_init_max", mc.A_init_max);
        if (const json* lim = mr.sub("dt_limit"); lim && !lim->is_null()) {
            MSLM_CHECK(lim->is_array() && lim->size() == 2 && (*lim)[0].is_number() &&
                           ((*lim)[1].is_number() || (*lim)[1].is_null()),
                       "{}: mamba.dt_limit must be [min, max] (max null for none)", source);
            mc.dt_limit_min = (*lim)[0].get<double>();
            if (!(*lim)[1].is_null()) mc.dt_limit_max = (*lim)[1].get<double>();
        }
        mr.get("conv_bias", mc.conv_bias);
        mr.get("proj_bias", mc.proj_bias);
        mr.get("dt_bc_norm", mc.dt_bc_norm);
        mr.get("norm_groups", mc.norm_groups);
        mr.finish();
    }
    if (const json* a = r.sub("attention"); a && !a->is_null()) {
        Reader ar(*a, source + ": attention");
        auto& ac = c.attention;
        ar.get("n_heads", ac.n_heads);
        ar.get("n_kv_heads", ac.n_kv_heads);
        ar.get("head_dim", ac.head_dim);
        std::string pos = "rope";
        ar.get("position", pos);
        ac.position = enum_from(pos, kPositions, source + ": attention.position");
        ar.get("rope_theta", ac.rope_theta);
        ar.get("rotary_dim", ac.rotary_dim);
        ar.get("sliding_window", ac.sliding_window);
        ar.get("qkv_bias", ac.qkv_bias);
        ar.get("out_bias", ac.out_bias);
        ar.finish();
    }
    if (const json* m = r.sub("mlp")) {
        if (m->is_null()) {
            c.mlp.kind = MlpKind::None;
        } else {
            Reader mr(*m, source + ": mlp");
            std::string type = "swiglu";
            mr.get("type", type);
            c.mlp.kind = enum_from(type, kMlpKinds, source + ": mlp.type");
            mr.get("d_ff", c.mlp.d_ff);
            mr.get("bias", c.mlp.bias);
            mr.finish();
        }
    }
    std::string norm = "rmsnorm";
    r.get("norm", norm);
    c.norm = enum_from(norm, kNorms, source + ": norm");
    r.get("norm_eps", c.norm_eps);
    r.get("tie_embeddings", c.tie_embeddings);
    r.get("max_seq_len", c.max_seq_len);
    r.get("initializer_range", c.initializer_range);
    r.get("embed_padding_idx", c.embed_padding_idx);
    r.finish();
    try {
        c.validate();
    } catch (const Error& e) {
        fail("{}: {}", source, e.what());
    }
    return c;
}

json config_to_json(const ModelConfig& c) {
    json j;
    j["model_type"] = "mamba_slm";
    j["vocab_size"] = c.vocab_size;
    j["d_model"] = c.d_model;
    j["n_layers"] = c.n_layers;
    j["layers"] = c.layer_pattern();
    if (c.count(LayerKind::Mamba)) {
        const auto& m = c.mamba;
        json mj = {{"version", m.version}, {"d_state", m.d_state}, {"d_conv", m.d_conv}, {"expand", m.expand},
                   {"dt_min", m.dt_min}, {"dt_max", m.dt_max}, {"dt_init_floor", m.dt_init_floor},
                   {"conv_bias", m.conv_bias}, {"proj_bias", m.proj_bias}};
        if (m.d_inner) mj["d_inner"] = m.d_inner;
        if (m.version == 2) {
            mj["head_dim"] = m.head_dim;
            mj["n_groups"] = m.n_groups;
            mj["chunk_size"] = m.chunk_size;
            mj["A_init_min"] = m.A_init_min;
            mj["A_init_max"] = m.A_init_max;
            if (m.norm_groups) mj["norm_groups"] = m.norm_groups;
            if (m.dt_limit_min > 0 || std::isfinite(m.dt_limit_max))
                mj["dt_limit"] = {m.dt_limit_min, std::isfinite(m.dt_limit_max) ? json(m.dt_limit_max) : json(nullptr)};
        } else {
            mj["dt_rank"] = c.mamba_dt_rank();
            mj["dt_bc_norm"] = m.dt_bc_norm;
        }
        j["mamba"] = mj;
    }
    if (c.count(LayerKind::Attention)) {
        const auto& a = c.attention;
        json aj = {{"n_heads", a.n_heads}, {"n_kv_heads", c.attn_kv_heads()}, {"head_dim", c.attn_head_dim()},
                   {"position", enum_name(a.position, kPositions)}, {"qkv_bias", a.qkv_bias}, {"out_bias", a.out_bias}};
        if (a.position == PositionKind::RoPE) {
            aj["rope_theta"] = a.rope_theta;
            aj["rotary_dim"] = c.attn_rotary_dim();
        }
        aj["sliding_window"] = a.sliding_window ? json(a.sliding_window) : json(nullptr);
        j["attention"] = aj;
    }
    if (c.mlp.kind == MlpKind::None) {
        j["mlp"] = nullptr;
    } else {
        j["mlp"] = {{"type", enum_name(c.mlp.kind, kMlpKinds)}, {"d_ff", c.mlp.d_ff}, {"bias", c.mlp.bias}};
    }
    j["norm"] = enum_name(c.norm, kNorms);
    j["norm_eps"] = c.norm_eps;
    j["tie_embeddings"] = c.tie_embeddings;
    j["max_seq_len"] = c.max_seq_len;
    j["initializer_range"] = c.initializer_range;
    if (c.embed_padding_idx >= 0) j["embed_padding_idx"] = c.embed_padding_idx;
    return j;
}

ModelConfig load_config(const std::string& path) {
    std::filesystem::path p(path);
    if (std::filesystem::is_directory(p)) p /= "config.json";
    std::ifstream in(p);
    MSLM_CHECK(in.good(), "{}: cannot open (no such file?)", p.string());
    json j;
    try {
        j = json::parse(in);
    } catch (const json::parse_error& e) {
        fail("{}: invalid JSON: {}", p.string(), e.what());
    }
    return config_from_json(j, p.string());
}

void save_config(const ModelConfig& c, const std::string& path) {
    std::string tmp = path + ".tmp";
    {
        std::ofstream out(tmp);
        MSLM_CHECK(out.good(), "{}: cannot write", tmp);
        out << config_to_json(c).dump(2) << "\n";
        MSLM_CHECK(out.good(), "{}: write failed", tmp);
    }
    std::filesystem::rename(tmp, path);
}

namespace {

ModelConfig hybrid(int64_t d_model, int64_t n_layers, const std::string& pattern, int64_t d_state, int64_t head_dim,
                   int64_t n_heads, int64_t n_kv_heads, int64_t d_ff, int64_t vocab, int64_t max_seq) {
    ModelConfig c;
    c.vocab_size = vocab;
    c.d_model = d_model;
    c.n_layers = n_layers;
    c.layers = parse_layer_pattern(pattern);
    c.mamba.version = 2;
    c.mamba.d_state = d_state;
    c.mamba.head_dim = head_dim;
    c.mamba.chunk_size = std::min<int64_t>(256, max_seq);
    c.attention.n_heads = n_heads;
    c.attention.n_kv_heads = n_kv_heads;
    c.mlp = {MlpKind::SwiGLU, d_ff, false};
    c.max_seq_len = max_seq;
    return c;
}

ModelConfig pure_mamba(int version, int64_t d_model, int64_t n_layers, int64_t d_state) {
    ModelConfig c;
    c.vocab_size = 50280;  // GPT-NeoX tokenizer padded, as the state-spaces checkpoints use
    c.d_model = d_model;
    c.n_layers = n_layers;
    c.layers.assign(static_cast<size_t>(n_layers), LayerKind::Mamba);
    c.mamba.version = version;
    c.mamba.d_state = d_state;
    c.mlp.kind = MlpKind::None;
    c.max_seq_len = 2048;
    return c;
}

}  // namespace

int64_t cuda_training_ssd_chunk(const ModelConfig& c) {
    if (const char* env = std::getenv("MSLM_SSD_CHUNK"); env && *env) {
        char* end = nullptr;
        const long long v = std::strtoll(env, &end, 10);
        MSLM_CHECK(*end == '\0' && v > 0, "MSLM_SSD_CHUNK=\"{}\": need a positive integer", env);
        return v;
    }
    return std::min<int64_t>(c.mamba.chunk_size, kCudaTrainingSsdChunk);
}

ModelConfig with_cuda_training_chunk(ModelConfig c) {
    c.mamba.chunk_size = cuda_training_ssd_chunk(c);
    return c;
}

std::vector<std::string> preset_names() {
    return {"tiny", "30m", "130m", "370m", "1b", "mamba-130m", "mamba2-130m"};
}

ModelConfig preset(const std::string& name) {
    ModelConfig c;
    if (name == "tiny") {
        c = hybrid(64, 4, "MMMA", 16, 16, 4, 2, 128, 512, 256);
        c.mamba.chunk_size = 32;
    } else if (name == "30m") {
        c = hybrid(384, 8, "MMMA MMMA", 64, 64, 6, 2, 1024, 32000, 2048);
    } else if (name == "130m") {
        c = hybrid(768, 12, "MMMA MMMA MMMA", 128, 64, 12, 4, 2048, 32000, 4096);
    } else if (name == "370m") {
        c = hybrid(1024, 24, "MMMA MMMA MMMA MMMA MMMA MMMA", 128, 64, 16, 4, 2816, 32000, 4096);
    } else if (name == "1b") {
        c = hybrid(2048, 20, "MMMA MMMA MMMA MMMA MMMA", 128, 64, 16, 4, 4096, 32000, 4096);
    } else if (name == "mamba-130m") {
        c = pure_mamba(1, 768, 24, 16);
    } else if (name == "mamba2-130m") {
        c = pure_mamba(2, 768, 24, 128);
    } else {
        std::string names;
        for (auto& n : preset_names()) names += (names.empty() ? "" : ", ") + n;
        fail("unknown preset \"{}\" (presets: {})", name, names);
    }
    c.validate();
    return c;
}

}  // namespace mslm
