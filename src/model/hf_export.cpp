#include "model/hf_export.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <fmt/format.h>

#include "core/error.h"
#include "core/safetensors.h"
#include "model/model_io.h"
#include "tokenizer/chat_template.h"

namespace mslm {

namespace fs = std::filesystem;
using nlohmann::json;
using ojson = nlohmann::ordered_json;

std::string hf_class_name(HfArch arch) {
    switch (arch) {
        case HfArch::Mamba: return "MambaForCausalLM";
        case HfArch::Mamba2: return "Mamba2ForCausalLM";
        case HfArch::Jamba: return "JambaForCausalLM";
        case HfArch::Bamba: return "BambaForCausalLM";
    }
    return "";
}

namespace {

template <typename... Args>
[[noreturn]] void refuse(fmt::format_string<Args...> format, Args&&... args) {
    fail("cannot export to transformers: {}", fmt::format(format, std::forward<Args>(args)...));
}

// Jamba puts attention at layer i iff i % attn_layer_period == attn_layer_offset. The smallest
// period that reproduces `layers`; an all-Mamba stack gets period n + 1, offset n (never hit).
std::optional<std::pair<int64_t, int64_t>> jamba_period(const std::vector<LayerKind>& layers) {
    const auto n = static_cast<int64_t>(layers.size());
    for (int64_t period = 1; period <= n + 1; ++period) {
        for (int64_t offset = 0; offset < period; ++offset) {
            bool match = true;
            for (int64_t i = 0; i < n && match; ++i)
                match = (i % period == offset) == (layers[static_cast<size_t>(i)] == LayerKind::Attention);
            if (match) return std::make_pair(period, offset);
        }
    }
    return std::nullopt;
}

// Python's json writes inf and nan as these objects in transformers' config files.
json hf_float(double v) {
    if (std::isnan(v)) return {{"__float__", "NaN"}};
    if (std::isinf(v)) return {{"__float__", v > 0 ? "Infinity" : "-Infinity"}};
    return v;
}

// Bamba rotates int(head_dim · partial_rotary_factor) dims: the factor that gives `rotary`
// (0.5, the class's default, whenever it does).
double rotary_factor(int64_t head_dim, int64_t rotary) {
    if (static_cast<int64_t>(static_cast<double>(head_dim) * 0.5) == rotary) return 0.5;
    double f = static_cast<double>(rotary) / static_cast<double>(head_dim);
    while (static_cast<int64_t>(static_cast<double>(head_dim) * f) < rotary) f = std::nextafter(f, 2.0);
    return f;
}

const char* torch_dtype_name(DType d) {
    switch (d) {
        case DType::F32: return "float32";
        case DType::BF16: return "bfloat16";
        case DType::F16: return "float16";
        case DType::F64: return "float64";
        default: return "float32";
    }
}

bool is_float(DType d) {
    return d == DType::F32 || d == DType::BF16 || d == DType::F16 || d == DType::F64;
}

// safetensors' writer orders tensors by dtype, widest first (its Dtype enum: F16 < BF16 < F32 < F64).
int safetensors_rank(DType d) {
    switch (d) {
        case DType::F64: return 3;
        case DType::F32: return 2;
        case DType::BF16: return 1;
        default: return 0;
    }
}

}  // namespace

HfArch hf_arch_for(const ModelConfig& c) {
    const bool has_attn = c.count(LayerKind::Attention) > 0, has_mlp = c.mlp.kind != MlpKind::None;
    const int v = c.mamba.version;
    if (c.count(LayerKind::Mamba) == 0)
        refuse("layers \"{}\" has no Mamba layer (Mamba, Mamba2, Jamba and Bamba all need one)",
               c.layer_pattern());
    if (c.norm != NormKind::RMSNorm) refuse("norm layernorm: every Mamba class of transformers uses RMSNorm");
    if (c.mamba_d_inner() % c.d_model != 0)
        refuse(
            "mamba.d_inner {} is not a multiple of d_model {}: the classes derive it as expand · hidden_size",
            c.mamba_d_inner(), c.d_model);
    if (v == 2 && c.mamba_norm_groups() != c.mamba.n_groups)
        refuse(
            "mamba.norm_groups {} differs from n_groups {}: the gated norm of Mamba2 and Bamba uses n_groups",
            c.mamba_norm_groups(), c.mamba.n_groups);

    HfArch arch;
    if (!has_attn && !has_mlp) {
        if (v == 1 && c.mamba.dt_bc_norm)
            refuse(
                "mamba.dt_bc_norm without an MLP: MambaForCausalLM has no dt/B/C norms and JambaForCausalLM "
                "needs an MLP in every layer");
        arch = v == 1 ? HfArch::Mamba : HfArch::Mamba2;
    } else {
        arch = v == 1 ? HfArch::Jamba : HfArch::Bamba;
        const std::string cls = hf_class_name(arch);
        if (!has_mlp) refuse("mlp null with attention layers: {} has an MLP in every layer", cls);
        if (c.mlp.kind != MlpKind::SwiGLU)
            refuse(
                "mlp.type {}: {}'s MLP is gated SiLU (SwiGLU), and its hidden_act also drives the Mamba conv",
                c.mlp.kind == MlpKind::GELU       ? "gelu"
                : c.mlp.kind == MlpKind::GELUTanh ? "gelu_tanh"
                                                  : "relu",
                cls);
        if (has_attn) {
            const AttentionConfig& a = c.attention;
            if (a.position == PositionKind::ALiBi) refuse("attention.position alibi: {} has no ALiBi", cls);
            if (a.sliding_window > 0)
                refuse("attention.sliding_window {}: {} has no sliding-window attention", a.sliding_window,
                       cls);
            if (c.attn_head_dim() * a.n_heads != c.d_model)
                refuse("attention.head_dim {} with {} heads: {} needs head_dim = d_model / n_heads = {}",
                       c.attn_head_dim(), a.n_heads, cls, c.d_model / a.n_heads);
        }
        if (arch == HfArch::Jamba) {
            if (!c.mamba.dt_bc_norm)
                refuse(
                    "mamba.dt_bc_norm false: JambaForCausalLM (Mamba-1 with attention or an MLP) always "
                    "normalises dt, B and C");
            if (has_attn && c.attention.position != PositionKind::None)
                refuse(
                    "attention.position rope: JambaForCausalLM (Mamba-1 + attention) has no positional "
                    "encoding");
            if (has_attn && (c.attention.qkv_bias || c.attention.out_bias))
                refuse("attention.qkv_bias/out_bias: JambaForCausalLM's attention has no biases");
            if (c.mlp.bias) refuse("mlp.bias: JambaForCausalLM's MLP has no biases");
            if (!jamba_period(c.layers))
                refuse(
                    "layers \"{}\": JambaForCausalLM places attention every attn_layer_period layers from "
                    "attn_layer_offset, and no period gives this pattern",
                    c.layer_pattern());
        } else {
            if (has_attn && c.attention.position != PositionKind::RoPE)
                refuse("attention.position none: BambaForCausalLM (Mamba-2 + attention) always applies RoPE");
            if (has_attn && c.attention.qkv_bias != c.attention.out_bias)
                refuse(
                    "attention.qkv_bias {} with out_bias {}: BambaForCausalLM has one attention_bias for "
                    "both",
                    c.attention.qkv_bias, c.attention.out_bias);
        }
    }
    if ((arch == HfArch::Mamba || arch == HfArch::Mamba2) && c.embed_padding_idx >= 0)
        refuse("embed_padding_idx {}: {}'s embedding has no padding row", c.embed_padding_idx,
               hf_class_name(arch));
    return arch;
}

json hf_config_from_native(const ModelConfig& c, const HfTokenIds& ids) {
    const HfArch arch = hf_arch_for(c);
    const MambaConfig& m = c.mamba;
    const int64_t d_inner = c.mamba_d_inner(), expand = d_inner / c.d_model;
    json j;
    j["architectures"] = {hf_class_name(arch)};
    j["model_type"] = hf_model_type(arch);
    j["vocab_size"] = c.vocab_size;
    j["hidden_size"] = c.d_model;
    j["num_hidden_layers"] = c.n_layers;
    j["hidden_act"] = "silu";
    j["initializer_range"] = c.initializer_range;
    j["tie_word_embeddings"] = c.tie_embeddings;
    j["bos_token_id"] = ids.bos;
    j["eos_token_id"] = ids.eos;
    // Jamba and Bamba build their embedding with padding_idx = pad_token_id.
    const bool padded = arch == HfArch::Jamba || arch == HfArch::Bamba;
    j["pad_token_id"] = !padded                    ? ids.pad
                        : c.embed_padding_idx >= 0 ? json(c.embed_padding_idx)
                                                   : json(nullptr);
    switch (arch) {
        case HfArch::Mamba:
            j["state_size"] = m.d_state;
            j["expand"] = expand;
            j["intermediate_size"] = d_inner;
            j["conv_kernel"] = m.d_conv;
            j["time_step_rank"] = c.mamba_dt_rank();
            j["use_bias"] = m.proj_bias;
            j["use_conv_bias"] = m.conv_bias;
            j["layer_norm_epsilon"] = c.norm_eps;
            j["time_step_min"] = m.dt_min;
            j["time_step_max"] = m.dt_max;
            j["time_step_floor"] = m.dt_init_floor;
            j["residual_in_fp32"] = true;
            break;
        case HfArch::Mamba2:
            j["num_heads"] = c.mamba_n_heads();
            j["head_dim"] = m.head_dim;
            j["n_groups"] = m.n_groups;
            j["state_size"] = m.d_state;
            j["expand"] = expand;
            j["conv_kernel"] = m.d_conv;
            j["chunk_size"] = m.chunk_size;
            j["use_bias"] = m.proj_bias;
            j["use_conv_bias"] = m.conv_bias;
            j["layer_norm_epsilon"] = c.norm_eps;
            j["time_step_limit"] = {hf_float(m.dt_limit_min), hf_float(m.dt_limit_max)};
            j["time_step_min"] = m.dt_min;
            j["time_step_max"] = m.dt_max;
            j["time_step_floor"] = m.dt_init_floor;
            j["residual_in_fp32"] = true;
            break;
        case HfArch::Jamba: {
            const auto [period, offset] = *jamba_period(c.layers);
            j["attn_layer_period"] = period;
            j["attn_layer_offset"] = offset;
            j["num_experts"] = 1;
            j["num_experts_per_tok"] = 1;
            j["mamba_d_state"] = m.d_state;
            j["mamba_d_conv"] = m.d_conv;
            j["mamba_expand"] = expand;
            j["mamba_dt_rank"] = c.mamba_dt_rank();
            j["mamba_conv_bias"] = m.conv_bias;
            j["mamba_proj_bias"] = m.proj_bias;
            // Not JambaConfig fields (its dt init range is fixed); kept for our importer, ignored there.
            j["mamba_dt_min"] = m.dt_min;
            j["mamba_dt_max"] = m.dt_max;
            j["num_attention_heads"] = c.attention.n_heads;
            j["num_key_value_heads"] = c.attn_kv_heads();
            j["intermediate_size"] = c.mlp.d_ff;
            j["rms_norm_eps"] = c.norm_eps;
            j["max_position_embeddings"] = c.max_seq_len;
            break;
        }
        case HfArch::Bamba: {
            json attn = json::array();
            for (int64_t l = 0; l < c.n_layers; ++l)
                if (c.layers[static_cast<size_t>(l)] == LayerKind::Attention) attn.push_back(l);
            j["attn_layer_indices"] = attn;
            j["mamba_n_heads"] = c.mamba_n_heads();
            j["mamba_d_head"] = m.head_dim;
            j["mamba_n_groups"] = m.n_groups;
            j["mamba_d_state"] = m.d_state;
            j["mamba_d_conv"] = m.d_conv;
            j["mamba_expand"] = expand;
            j["mamba_chunk_size"] = m.chunk_size;
            j["mamba_conv_bias"] = m.conv_bias;
            j["mamba_proj_bias"] = m.proj_bias;
            j["mamba_dt_min"] = m.dt_min;  // as for Jamba: read by our importer only
            j["mamba_dt_max"] = m.dt_max;
            j["time_step_limit"] = {hf_float(m.dt_limit_min), hf_float(m.dt_limit_max)};
            j["num_attention_heads"] = c.attention.n_heads;
            j["num_key_value_heads"] = c.attn_kv_heads();
            // An all-Mamba Bamba still carries attention fields; without a valid head size the
            // rotary fraction is left at the class default.
            const int64_t n_heads = c.attention.n_heads, hd = n_heads > 0 ? c.d_model / n_heads : 0,
                          rotary = c.attn_rotary_dim();
            const bool valid =
                hd > 0 && hd * n_heads == c.d_model && rotary > 0 && rotary % 2 == 0 && rotary <= hd;
            j["rope_parameters"] = {{"rope_type", "default"},
                                    {"rope_theta", c.attention.rope_theta},
                                    {"partial_rotary_factor", valid ? rotary_factor(hd, rotary) : 0.5}};
            j["attention_bias"] = c.attention.qkv_bias;
            j["mlp_bias"] = c.mlp.bias;
            j["intermediate_size"] = c.mlp.d_ff;
            j["rms_norm_eps"] = c.norm_eps;
            j["max_position_embeddings"] = c.max_seq_len;
            j["z_loss_coefficient"] = 0.0;
            break;
        }
    }
    return j;
}

std::vector<std::pair<std::string, Tensor>> hf_tensors_from_native(const HybridLM<float>& model, HfArch arch,
                                                                   const std::vector<DType>& dtypes) {
    const Parameters<float>& params = model.params();
    const std::vector<HfTensorMap> maps = hf_tensor_map(arch, model.config(), params.specs());
    MSLM_CHECK(dtypes.size() == 1 || dtypes.size() == maps.size(),
               "hf_tensors_from_native: {} dtypes for {} tensors", dtypes.size(), maps.size());
    std::vector<int64_t> rows_covered(params.specs().size(), 0);
    std::vector<std::pair<std::string, Tensor>> out;
    for (size_t i = 0; i < maps.size(); ++i) {
        const HfTensorMap& m = maps[i];
        const size_t idx = params.find(m.native_name);
        const ParamSpec& s = params.specs()[idx];
        const int64_t row = s.numel / s.shape[0];
        Tensor t = Tensor::empty(m.hf_shape, DType::F32);
        MSLM_CHECK(t.numel() == m.rows * row, "{}: shape {} does not hold {} rows of '{}'", m.hf_name,
                   shape_str(m.hf_shape), m.rows, m.native_name);
        const float* src = params.value(idx) + m.row_begin * row;
        std::copy(src, src + t.numel(), t.data<float>());
        const DType d = dtypes.size() == 1 ? dtypes[0] : dtypes[i];
        MSLM_CHECK(is_float(d), "{}: cannot export as {} (F32, BF16 or F16)", m.hf_name, dtype_name(d));
        out.emplace_back(m.hf_name, t.to(d));
        rows_covered[idx] += m.rows;
    }
    // Every native value must land in the file: a parameter the class has no place for would be
    // dropped silently. hf_arch_for refuses such configs; this guards the map itself.
    for (size_t i = 0; i < rows_covered.size(); ++i)
        MSLM_CHECK(rows_covered[i] == params.specs()[i].shape[0],
                   "cannot export to transformers: parameter '{}' "
                   "has no place in {}",
                   params.specs()[i].name, hf_class_name(arch));
    std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
        const int ra = safetensors_rank(a.second.dtype()), rb = safetensors_rank(b.second.dtype());
        return ra != rb ? ra > rb : a.first < b.first;
    });
    return out;
}

namespace {

std::string read_file(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    MSLM_CHECK(in.good(), "{}: cannot open", p.string());
    std::stringstream ss;
    ss << in.rdbuf();
    MSLM_CHECK(!in.bad(), "{}: read error", p.string());
    return ss.str();
}

template <typename J>
J read_json_file(const fs::path& p) {
    try {
        return J::parse(read_file(p));
    } catch (const nlohmann::json::exception& e) {
        fail("{}: invalid JSON: {}", p.string(), e.what());
    }
}

void write_file(const fs::path& p, const std::string& text) {
    std::ofstream out(p, std::ios::binary);
    MSLM_CHECK(out.good(), "{}: cannot write", p.string());
    out << text;
    out.close();
    MSLM_CHECK(out.good(), "{}: write failed", p.string());
}

template <typename J>
void write_json_file(const fs::path& p, const J& j) {
    write_file(p, j.dump(2) + "\n");
}

// A token id from a config: an integer, null, or (eos only) a list of integers.
json token_id(const json& j, const char* key, bool list_ok, const fs::path& source) {
    if (!j.is_object() || !j.contains(key)) return nullptr;
    const json& v = j.at(key);
    const bool ok = v.is_null() || v.is_number_integer() ||
                    (list_ok && v.is_array() &&
                     std::all_of(v.begin(), v.end(), [](const json& x) { return x.is_number_integer(); }));
    MSLM_CHECK(ok, "{}: {} must be an integer{} or null", source.string(), key,
               list_ok ? ", a list of integers" : "");
    return v;
}

// The text of token `id` in a tokenizer.json (added tokens first, then the model's vocabulary).
std::optional<std::string> token_text(const ojson& tok, int64_t id) {
    if (tok.contains("added_tokens") && tok["added_tokens"].is_array())
        for (const auto& t : tok["added_tokens"])
            if (t.is_object() && t.value("id", int64_t{-1}) == id && t.contains("content") &&
                t["content"].is_string())
                return t["content"].get<std::string>();
    if (tok.contains("model") && tok["model"].is_object() && tok["model"].contains("vocab") &&
        tok["model"]["vocab"].is_object())
        for (const auto& [text, v] : tok["model"]["vocab"].items())
            if (v.is_number_integer() && v.get<int64_t>() == id) return text;
    return std::nullopt;
}

std::string dtype_summary(const std::vector<std::pair<std::string, Tensor>>& tensors) {
    std::map<std::string, int> counts;
    for (const auto& [name, t] : tensors) ++counts[std::string(dtype_name(t.dtype()))];
    if (counts.size() == 1) return counts.begin()->first;
    std::string s;
    for (const auto& [name, n] : counts) s += fmt::format("{}{} x{}", s.empty() ? "" : ", ", name, n);
    return s;
}

fs::path normalized(const std::string& p) {
    fs::path a = fs::absolute(p).lexically_normal();
    return a.has_filename() ? a : a.parent_path();
}

}  // namespace

HfExportSummary export_hf(const std::string& model_dir, const std::string& out_dir,
                          const HfExportOptions& options) {
    MSLM_CHECK(!options.dtype || *options.dtype == DType::F32 || *options.dtype == DType::BF16 ||
                   *options.dtype == DType::F16,
               "export: dtype {} is not f32, bf16 or f16", dtype_name(*options.dtype));
    // The source's config first: a missing model or a refused configuration fails before any weights
    // are read or anything is written.
    HfExportSummary summary;
    const bool is_dir = fs::is_directory(model_dir);
    const fs::path config_path = is_dir ? fs::path(model_dir) / "config.json" : fs::path(model_dir);
    const fs::path src_dir = is_dir ? normalized(model_dir) : normalized(model_dir).parent_path();
    const ModelConfig source_cfg = load_any_config(model_dir, &summary.source_format);
    try {
        summary.arch = hf_arch_for(source_cfg);
    } catch (const Error& e) {
        fail("{}: {}", config_path.string(), e.what());
    }
    const fs::path out = normalized(out_dir);
    std::error_code ec;
    if (fs::exists(out, ec)) {
        MSLM_CHECK(fs::is_directory(out, ec), "{}: exists and is not a directory", out.string());
        MSLM_CHECK(!fs::equivalent(out, src_dir, ec), "{}: is the source model; export to another directory",
                   out.string());
        MSLM_CHECK(options.overwrite || fs::is_empty(out, ec),
                   "{}: exists and is not empty (pass --force to "
                   "replace it)",
                   out.string());
    }

    LoadedModelInfo info;
    const std::unique_ptr<HybridLM<float>> model = load_model<float>(model_dir, &info);
    const ModelConfig& cfg = model->config();

    // Each tensor keeps the dtype of the source tensor its values came from, unless one is asked for.
    std::vector<DType> dtypes;
    const std::vector<HfTensorMap> maps = hf_tensor_map(summary.arch, cfg, model->params().specs());
    if (options.dtype) {
        dtypes = {*options.dtype};
    } else {
        const SafetensorsFile src = SafetensorsFile::open(info.weights_path);
        std::map<std::pair<std::string, int64_t>, DType> by_rows;  // (native parameter, first row)
        std::map<std::string, DType> by_param;
        if (info.format == "mamba_slm") {
            for (const ParamSpec& s : model->params().specs()) by_param[s.name] = src.entry(s.name).dtype;
        } else {
            const HfArch src_arch = hf_arch_from_model_type(info.format, info.config_path);
            for (const HfTensorMap& m : hf_tensor_map(src_arch, cfg, model->params().specs())) {
                const DType d = src.entry(m.hf_name).dtype;
                by_rows[{m.native_name, m.row_begin}] = d;
                by_param.emplace(m.native_name, d);
            }
        }
        for (const HfTensorMap& m : maps) {
            auto it = by_rows.find({m.native_name, m.row_begin});
            dtypes.push_back(it != by_rows.end() ? it->second : by_param.at(m.native_name));
        }
    }
    std::vector<std::pair<std::string, Tensor>> tensors =
        hf_tensors_from_native(*model, summary.arch, dtypes);
    summary.tensors = tensors.size();
    summary.dtypes = dtype_summary(tensors);

    // Special token ids: an HF source's config.json, else its generation_config.json.
    const fs::path gen_path = src_dir / "generation_config.json", tok_path = src_dir / "tokenizer.json",
                   tok_cfg_path = src_dir / "tokenizer_config.json",
                   jinja_path = src_dir / "chat_template.jinja";
    const json src_cfg = info.format == "mamba_slm" ? json::object() : read_json_file<json>(info.config_path);
    const json gen = fs::exists(gen_path, ec) ? read_json_file<json>(gen_path) : json::object();
    auto pick = [&](const char* key, bool list_ok) {
        if (src_cfg.contains(key)) return token_id(src_cfg, key, list_ok, info.config_path);
        return token_id(gen, key, list_ok, gen_path);
    };
    HfTokenIds ids{pick("bos_token_id", false), pick("eos_token_id", true), pick("pad_token_id", false)};
    json hf_cfg = hf_config_from_native(cfg, ids);
    const auto embed = std::find_if(tensors.begin(), tensors.end(), [](const auto& t) {
        return t.first.ends_with("embeddings.weight") || t.first.ends_with("embed_tokens.weight");
    });
    hf_cfg["dtype"] = torch_dtype_name(embed != tensors.end() ? embed->second.dtype() : DType::F32);

    // tokenizer_config.json: the source's (or a new one), with the chat template transformers would
    // use for the source (chat_template.jinja first), or ChatML when it has none.
    ojson tok_cfg = fs::exists(tok_cfg_path, ec) ? read_json_file<ojson>(tok_cfg_path) : ojson::object();
    MSLM_CHECK(tok_cfg.is_object(), "{}: not a JSON object", tok_cfg_path.string());
    if (fs::exists(jinja_path, ec)) {
        tok_cfg["chat_template"] = read_file(jinja_path);
        summary.chat_template_source = jinja_path.string();
    } else if (tok_cfg.contains("chat_template") && !tok_cfg["chat_template"].is_null()) {
        summary.chat_template_source = tok_cfg_path.string();
    } else {
        tok_cfg["chat_template"] = std::string(ChatTemplate::chatml_text());
        summary.chat_template_source = "built-in ChatML";
    }
    const bool has_tokenizer = fs::exists(tok_path, ec);
    if (has_tokenizer) {
        if (!tok_cfg.contains("tokenizer_class")) tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast";
        const ojson tok = read_json_file<ojson>(tok_path);
        const json& eos = hf_cfg["eos_token_id"];
        const std::pair<const char*, json> named[] = {
            {"bos_token", hf_cfg["bos_token_id"]},
            {"eos_token", eos.is_array() && !eos.empty() ? eos[0] : eos},
            {"pad_token", hf_cfg["pad_token_id"]}};
        for (const auto& [key, id] : named) {
            if (tok_cfg.contains(key) || !id.is_number_integer()) continue;
            if (auto text = token_text(tok, id.get<int64_t>())) tok_cfg[key] = *text;
        }
    }

    // Assemble next to the destination, then rename into place.
    const fs::path parent = out.parent_path();
    fs::create_directories(parent, ec);
    MSLM_CHECK(!ec, "{}: cannot create: {}", parent.string(), ec.message());
    const fs::path tmp = parent / fmt::format(".{}.tmp-{}", out.filename().string(), getpid());
    fs::remove_all(tmp, ec);
    MSLM_CHECK(fs::create_directory(tmp, ec), "{}: cannot create: {}", tmp.string(), ec.message());
    try {
        write_json_file(tmp / "config.json", hf_cfg);
        save_safetensors((tmp / "model.safetensors").string(), tensors, {{"format", "pt"}});
        summary.files = {"config.json", "model.safetensors"};
        if (has_tokenizer) {
            MSLM_CHECK(fs::copy_file(tok_path, tmp / "tokenizer.json", ec), "{}: cannot copy: {}",
                       tok_path.string(), ec.message());
            summary.files.push_back("tokenizer.json");
        }
        write_json_file(tmp / "tokenizer_config.json", tok_cfg);
        summary.files.push_back("tokenizer_config.json");
        if (fs::exists(gen_path, ec)) {
            MSLM_CHECK(fs::copy_file(gen_path, tmp / "generation_config.json", ec), "{}: cannot copy: {}",
                       gen_path.string(), ec.message());
        } else {
            json g = json::object();
            for (const char* key : {"bos_token_id", "eos_token_id", "pad_token_id"})
                if (!hf_cfg[key].is_null()) g[key] = hf_cfg[key];
            write_json_file(tmp / "generation_config.json", g);
        }
        summary.files.push_back("generation_config.json");

        if (fs::exists(out, ec) && !fs::is_empty(out, ec)) {
            const fs::path old = parent / fmt::format(".{}.old-{}", out.filename().string(), getpid());
            fs::rename(out, old, ec);
            MSLM_CHECK(!ec, "{}: cannot move the old export aside: {}", out.string(), ec.message());
            fs::rename(tmp, out, ec);
            MSLM_CHECK(!ec, "{}: cannot rename {} into place: {}", out.string(), tmp.string(), ec.message());
            fs::remove_all(old, ec);
        } else {
            fs::rename(tmp, out, ec);  // replaces an empty directory
            MSLM_CHECK(!ec, "{}: cannot rename {} into place: {}", out.string(), tmp.string(), ec.message());
        }
    } catch (...) {
        fs::remove_all(tmp, ec);
        throw;
    }
    return summary;
}

}  // namespace mslm
