// A LoRA adapter's configuration in PEFT's terms (peft.LoraConfig, adapter_config.json), and the
// rule by which it selects modules.
#pragma once
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

namespace mslm {

struct LoraConfig {
    int64_t r = 8;
    double alpha = 8;         // lora_alpha
    double dropout = 0.0;     // lora_dropout, on the adapter's input only, while training
    bool use_rslora = false;  // scaling alpha / sqrt(r) instead of alpha / r
    // PEFT's target_modules in its two forms. Names (a JSON array): a module matches when its path
    // equals a name or ends with "." + name. A regex (a JSON string): the whole path must match
    // (Python's re.fullmatch). Exactly one is set. "all-linear" as the regex is PEFT's shorthand for
    // every linear projection but the output layer; resolve_all_linear() turns it into names.
    std::vector<std::string> target_names;
    std::string target_regex;
    // init_lora_weights: "default" (PEFT's true: A Kaiming-uniform with a = sqrt(5), i.e.
    // U(±1/sqrt(in)), B = 0) or "gaussian" (A ~ N(0, 1/r²), B = 0). Loaded adapters keep whatever
    // their file said (its JSON value, written back unchanged).
    std::string init = "default";
    std::string base_model_name_or_path;
    std::string task_type = "CAUSAL_LM";

    double scaling() const;
    bool matches(const std::string& module_path) const;
    bool is_all_linear() const { return target_names.empty() && target_regex == "all-linear"; }
    // Throws naming the field: r > 0, alpha finite, dropout in [0, 1), one target form, a regex that
    // compiles, init "default" or "gaussian" (for adapters we initialise).
    void validate(bool for_init = true) const;
};

// "q_proj,v_proj" (names) or a regex (any of * + ? ( ) [ ] | ^ $ \ in it), as --lora-targets takes
// it; "all-linear" stays the shorthand.
void set_lora_targets(LoraConfig& c, const std::string& spec);
std::string lora_targets_string(const LoraConfig& c);  // inverse of set_lora_targets, for messages

// adapter_config.json as PEFT writes it (every field PEFT's LoraConfig reads, at the values that
// mean "off"), so that PeftModel.from_pretrained loads it without warnings.
nlohmann::json lora_config_to_peft_json(const LoraConfig& c);
// Reads PEFT's adapter_config.json. Fields for features mamba-slm does not implement (DoRA,
// rank/alpha patterns, biases, modules_to_save, layer selection, fan_in_fan_out, ...) must be at
// their "off" values; anything else is an error naming the field and `source`.
LoraConfig lora_config_from_peft_json(const nlohmann::json& j, const std::string& source);

}  // namespace mslm
