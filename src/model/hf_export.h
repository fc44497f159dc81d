// Hugging Face export: a model we load (native or HF) becomes a transformers model directory
// (config.json, model.safetensors, tokenizer.json, tokenizer_config.json with the chat template,
// generation_config.json) for the class that expresses its architecture exactly:
//   pure Mamba-1 → MambaForCausalLM         pure Mamba-2 → Mamba2ForCausalLM
//   Mamba-1 + attention/MLP → JambaForCausalLM (one expert)
//   Mamba-2 + attention/MLP → BambaForCausalLM
// It is the inverse of hf_import: the config goes through hf_config_from_native (config_from_hf
// reads it back to the same native config), the tensors through hf_tensor_map, with the fused
// native parameters (qkv_proj, gate_up_proj) split back into HF's rows. A configuration no class
// can express is refused with one line naming the blocking feature. docs/HF-MAPPING.md §8.
#pragma once
#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/dtype.h"
#include "core/tensor.h"
#include "model/hf_import.h"
#include "model/hybrid_lm.h"

namespace mslm {

std::string hf_class_name(HfArch arch);  // "MambaForCausalLM", ...

// The class that expresses `c` exactly. Throws mslm::Error "cannot export to transformers: <the
// blocking feature and why>" when none does.
HfArch hf_arch_for(const ModelConfig& c);

// Special token ids for config.json (JSON null when unknown; eos may be a list).
struct HfTokenIds {
    nlohmann::json bos = nullptr, eos = nullptr, pad = nullptr;
};

// config.json for hf_arch_for(c). Jamba and Bamba build their embedding with padding_idx =
// pad_token_id, so there pad_token_id is c.embed_padding_idx (null for none) whatever ids.pad says.
nlohmann::json hf_config_from_native(const ModelConfig& c, const HfTokenIds& ids = {});

// The HF state dict of `model` (tied heads leave out lm_head), each tensor converted to
// dtypes[i] for the i-th entry of hf_tensor_map (one dtype for all when dtypes has one entry).
// Sorted as the safetensors library writes them (wider dtypes first, then by name), so a file saved
// by transformers and our export of the same weights are byte-identical.
std::vector<std::pair<std::string, Tensor>> hf_tensors_from_native(const HybridLM<float>& model, HfArch arch,
                                                                   const std::vector<DType>& dtypes);

struct HfExportOptions {
    std::optional<DType> dtype;  // F32, BF16 or F16 for every tensor; unset: each keeps its source dtype
    bool overwrite = false;      // replace an existing, non-empty output directory
};

struct HfExportSummary {
    HfArch arch = HfArch::Mamba;
    std::string source_format;       // "mamba_slm" or the source's HF model_type
    std::vector<std::string> files;  // written, in the output directory
    size_t tensors = 0;
    std::string dtypes;                // "F32", or per dtype: "BF16 x40, F32 x8"
    std::string chat_template_source;  // where the chat template came from
};

// Exports the model directory `model_dir` (native or HF) to `out_dir`. The directory is assembled
// next to out_dir and renamed into place, so out_dir never holds a partial export. out_dir must be
// absent or empty unless options.overwrite, and never the source itself.
HfExportSummary export_hf(const std::string& model_dir, const std::string& out_dir,
                          const HfExportOptions& options = {});

}  // namespace mslm
