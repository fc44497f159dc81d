#include "lora/config.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <cmath>
#include <memory>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace mslm {

using nlohmann::json;

namespace {

// Python's re.fullmatch over a module path: anchored at both ends. Compiled per call: adapters
// are matched against a few hundred module names once, when they are created or loaded.
struct Regex {
    pcre2_code* code = nullptr;
    explicit Regex(const std::string& pattern) {
        int err = 0;
        PCRE2_SIZE offset = 0;
        code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                             PCRE2_ANCHORED | PCRE2_ENDANCHORED | PCRE2_UTF, &err, &offset, nullptr);
        if (!code) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(err, msg, sizeof msg);
            fail("LoRA target_modules regex \"{}\": {} at offset {}", pattern,
                 reinterpret_cast<const char*>(msg), offset);
        }
    }
    ~Regex() { pcre2_code_free(code); }
    Regex(const Regex&) = delete;
    Regex& operator=(const Regex&) = delete;
    bool full_match(const std::string& s) const {
        std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> md(
            pcre2_match_data_create_from_pattern(code, nullptr), pcre2_match_data_free);
        return pcre2_match(code, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), 0, 0, md.get(), nullptr) >=
               0;
    }
};

bool is_off(const json& j) {
    return j.is_null() || (j.is_boolean() && !j.get<bool>()) || (j.is_array() && j.empty()) ||
           (j.is_object() && j.empty());
}

}  // namespace

double LoraConfig::scaling() const {
    return use_rslora ? alpha / std::sqrt(static_cast<double>(r)) : alpha / static_cast<double>(r);
}

bool LoraConfig::matches(const std::string& path) const {
    if (!target_names.empty()) {
        for (const std::string& n : target_names) {
            if (path == n) return true;
            if (path.size() > n.size() && path.compare(path.size() - n.size(), n.size(), n) == 0 &&
                path[path.size() - n.size() - 1] == '.')
                return true;
        }
        return false;
    }
    return Regex(target_regex).full_match(path);
}

void LoraConfig::validate(bool for_init) const {
    MSLM_CHECK(r > 0, "LoRA config: r must be > 0 (got {})", r);
    MSLM_CHECK(std::isfinite(alpha), "LoRA config: lora_alpha must be finite (got {})", alpha);
    MSLM_CHECK(dropout >= 0 && dropout < 1, "LoRA config: lora_dropout must be in [0, 1) (got {})", dropout);
    MSLM_CHECK(target_names.empty() != target_regex.empty(),
               "LoRA config: target_modules must be a non-empty list of names or a regex");
    if (!target_regex.empty() && !is_all_linear()) Regex check(target_regex);
    if (for_init)
        MSLM_CHECK(init == "default" || init == "gaussian",
                   "LoRA config: init_lora_weights must be \"default\" or \"gaussian\" (got \"{}\")", init);
}

void set_lora_targets(LoraConfig& c, const std::string& spec) {
    c.target_names.clear();
    c.target_regex.clear();
    if (spec == "all-linear" || spec.find_first_of("*+?()[]|^$\\") != std::string::npos) {
        c.target_regex = spec;
        return;
    }
    size_t begin = 0;
    while (begin <= spec.size()) {
        size_t comma = spec.find(',', begin);
        if (comma == std::string::npos) comma = spec.size();
        std::string name = spec.substr(begin, comma - begin);
        MSLM_CHECK(!name.empty(), "--lora-targets \"{}\": empty module name", spec);
        c.target_names.push_back(name);
        begin = comma + 1;
    }
}

std::string lora_targets_string(const LoraConfig& c) {
    if (c.target_names.empty()) return c.target_regex;
    std::string s;
    for (const auto& n : c.target_names) s += (s.empty() ? "" : ",") + n;
    return s;
}

json lora_config_to_peft_json(const LoraConfig& c) {
    json init = c.init == "default" ? json(true) : c.init == "false" ? json(false) : json(c.init);
    json targets = c.target_names.empty() ? json(c.target_regex) : json(c.target_names);
    const bool integral =
        std::floor(c.alpha) == c.alpha && std::fabs(c.alpha) < 9e15;  // PEFT writes 8, not 8.0
    // PEFT 0.21's LoraConfig fields; the ones for features we do not implement at their "off" value.
    return {
        {"peft_type", "LORA"},
        {"task_type", c.task_type.empty() ? json(nullptr) : json(c.task_type)},
        {"base_model_name_or_path",
         c.base_model_name_or_path.empty() ? json(nullptr) : json(c.base_model_name_or_path)},
        {"revision", nullptr},
        {"inference_mode", true},
        {"r", c.r},
        {"lora_alpha", integral ? json(static_cast<int64_t>(c.alpha)) : json(c.alpha)},
        {"lora_dropout", c.dropout},
        {"target_modules", targets},
        {"use_rslora", c.use_rslora},
        {"init_lora_weights", init},
        {"bias", "none"},
        {"fan_in_fan_out", false},
        {"exclude_modules", nullptr},
        {"target_parameters", nullptr},
        {"modules_to_save", nullptr},
        {"layers_to_transform", nullptr},
        {"layers_pattern", nullptr},
        {"rank_pattern", json::object()},
        {"alpha_pattern", json::object()},
        {"megatron_config", nullptr},
        {"megatron_core", "megatron.core"},
        {"loftq_config", json::object()},
        {"eva_config", nullptr},
        {"corda_config", nullptr},
        {"use_dora", false},
        {"use_qalora", false},
        {"qalora_group_size", 16},
        {"layer_replication", nullptr},
        {"lora_bias", false},
        {"trainable_token_indices", nullptr},
        {"ensure_weight_tying", false},
        {"alora_invocation_tokens", nullptr},
    };
}

LoraConfig lora_config_from_peft_json(const json& j, const std::string& source) {
    MSLM_CHECK(j.is_object(), "{}: not a JSON object", source);
    auto field = [&](const char* key) -> const json& {
        auto it = j.find(key);
        MSLM_CHECK(it != j.end(), "{}: missing field \"{}\"", source, key);
        return *it;
    };
    MSLM_CHECK(field("peft_type") == "LORA", "{}: peft_type is {}, expected \"LORA\"", source,
               field("peft_type").dump());
    LoraConfig c;
    try {
        c.r = field("r").get<int64_t>();
        c.alpha = field("lora_alpha").get<double>();
        c.dropout = j.value("lora_dropout", 0.0);
        c.use_rslora = j.value("use_rslora", false);
        const json& t = field("target_modules");
        if (t.is_string())
            c.target_regex = t.get<std::string>();
        else
            c.target_names = t.get<std::vector<std::string>>();
        auto init = j.find("init_lora_weights");
        if (init == j.end() || (init->is_boolean() && init->get<bool>()))
            c.init = "default";
        else if (init->is_boolean())
            c.init = "false";
        else
            c.init = init->get<std::string>();
        auto base = j.find("base_model_name_or_path");
        c.base_model_name_or_path = base != j.end() && base->is_string() ? base->get<std::string>() : "";
        auto task = j.find("task_type");
        c.task_type = task != j.end() && task->is_string() ? task->get<std::string>() : "";
    } catch (const json::exception& e) {
        fail("{}: a LoRA field has the wrong type ({})", source, e.what());
    }
    if (auto b = j.find("bias"); b != j.end())
        MSLM_CHECK(*b == "none", "{}: bias {} is not supported (only \"none\")", source, b->dump());
    // Features that change what an adapter computes: refuse them rather than load a different model.
    for (const char* key :
         {"use_dora", "fan_in_fan_out", "modules_to_save", "rank_pattern", "alpha_pattern",
          "layers_to_transform", "exclude_modules", "target_parameters", "lora_bias", "use_qalora",
          "layer_replication", "trainable_token_indices", "alora_invocation_tokens", "use_bdlora"}) {
        auto it = j.find(key);
        MSLM_CHECK(it == j.end() || is_off(*it), "{}: {} = {} is not supported by mamba-slm's LoRA", source,
                   key, it->dump());
    }
    try {
        c.validate(false);
    } catch (const Error& e) {
        fail("{}: {}", source, e.what());
    }
    return c;
}

}  // namespace mslm
