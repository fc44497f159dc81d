// Whole-directory LoRA operations behind `mamba-slm lora`: merging adapters into a model directory,
// and combining adapters into one.
#pragma once
#include <string>
#include <vector>

namespace mslm {

struct LoraMergeOptions {
    std::string model_dir;              // the base model (native or Hugging Face directory)
    std::vector<std::string> adapters;  // PEFT adapter directories
    // Empty: every adapter is merged as it is (their deltas add up). Otherwise one weight per adapter,
    // combined first by PEFT's add_weighted_adapter with `combination`.
    std::vector<double> weights;
    std::string combination = "cat";  // "cat" (exact: Σ wᵢ·sᵢ·Bᵢ·Aᵢ) or "linear" (PEFT's approximation)
    std::string out_dir;
};

// Writes out_dir as a native model directory (config.json + model.safetensors, fp32) holding the
// merged weights, and copies the base directory's tokenizer and generation files beside them.
// Returns the number of modules changed.
size_t merge_lora_into_model(const LoraMergeOptions& o);

// Writes the weighted combination of o.adapters (o.weights required) to out_dir as one PEFT adapter.
void combine_lora_adapters(const LoraMergeOptions& o);

}  // namespace mslm
