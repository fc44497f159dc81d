#include "lora/merge.h"

#include <filesystem>

#include "core/error.h"
#include "lora/lora.h"
#include "model/model_io.h"

namespace mslm {

namespace fs = std::filesystem;

namespace {

std::string adapter_name(size_t i) {
    return "adapter_" + std::to_string(i);
}

// Loads every adapter of o onto `lora`, and when weights are given combines them into "combined";
// returns the names to make active.
std::vector<std::string> load_adapters(LoraModel<float>& lora, const LoraMergeOptions& o) {
    MSLM_CHECK(!o.adapters.empty(), "lora: give at least one --adapter");
    MSLM_CHECK(o.weights.empty() || o.weights.size() == o.adapters.size(),
               "lora: {} --adapter directories but {} --weights", o.adapters.size(), o.weights.size());
    std::vector<std::string> names;
    for (size_t i = 0; i < o.adapters.size(); ++i) {
        lora.load_adapter(o.adapters[i], adapter_name(i));
        names.push_back(adapter_name(i));
    }
    if (o.weights.empty()) return names;
    lora.add_weighted_adapter(names, o.weights, "combined", o.combination);
    return {"combined"};
}

}  // namespace

size_t merge_lora_into_model(const LoraMergeOptions& o) {
    MSLM_CHECK(!o.out_dir.empty(), "lora merge: --out is required");
    MSLM_CHECK(fs::weakly_canonical(o.out_dir) != fs::weakly_canonical(o.model_dir),
               "lora merge: --out {} is the base model's directory; write the merged model elsewhere",
               o.out_dir);
    LoadedModelInfo info;
    auto model = load_model<float>(o.model_dir, &info);
    size_t modules = 0;
    {
        LoraModel<float> lora(*model, lora_naming_arch(model->config(), info.format));
        const std::vector<std::string> active = load_adapters(lora, o);
        for (const auto& n : active) modules += lora.adapter(n).modules().size();
        lora.set_active(active);
        lora.merge_and_unload();
    }
    save_model(*model, o.out_dir);
    const fs::path base = fs::path(info.config_path).parent_path();
    for (const char* f :
         {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"})
        if (fs::exists(base / f))
            fs::copy_file(base / f, fs::path(o.out_dir) / f, fs::copy_options::overwrite_existing);
    return modules;
}

void combine_lora_adapters(const LoraMergeOptions& o) {
    MSLM_CHECK(!o.out_dir.empty(), "lora combine: --out is required");
    MSLM_CHECK(!o.weights.empty(), "lora combine: --weights is required (one per --adapter)");
    LoadedModelInfo info;
    auto model = load_model<float>(o.model_dir, &info);
    LoraModel<float> lora(*model, lora_naming_arch(model->config(), info.format));
    load_adapters(lora, o);
    lora.save_adapter("combined", o.out_dir);
}

}  // namespace mslm
