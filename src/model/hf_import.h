// Hugging Face model directories: MambaForCausalLM, Mamba2ForCausalLM, JambaForCausalLM (one
// expert) and BambaForCausalLM. Their config.json becomes a native ModelConfig, and each of their
// tensors maps onto rows of one native parameter (q/k/v into qkv_proj, gate/up into gate_up_proj,
// conv weights (C, 1, K) onto (C, K)). The facts behind the mapping are in docs/HF-MAPPING.md.
#pragma once
#include <nlohmann/json_fwd.hpp>

#include <string>
#include <vector>

#include "model/config.h"
#include "nn/parameters.h"

namespace mslm {

enum class HfArch { Mamba, Mamba2, Jamba, Bamba };

// One HF tensor = rows [row_begin, row_begin + rows) of a native parameter (all rows for most).
struct HfTensorMap {
    std::string hf_name;
    std::string native_name;
    int64_t row_begin = 0;
    int64_t rows = 0;   // rows of the native parameter's first dimension
    Shape hf_shape;
};

bool is_hf_model_type(const std::string& model_type);
HfArch hf_arch_from_model_type(const std::string& model_type, const std::string& source);
std::string hf_model_type(HfArch arch);

// The native equivalent of an HF config.json; throws naming the field for anything the native
// model cannot represent exactly (MoE, non-SiLU activations, odd rotary sizes, ...).
ModelConfig config_from_hf(const nlohmann::json& hf, const std::string& source);

// The HF tensors of a model with this config, in the order transformers saves them, each mapped
// onto the native parameters in `specs` (from HybridLM::params().specs()).
std::vector<HfTensorMap> hf_tensor_map(HfArch arch, const ModelConfig& cfg, const std::vector<ParamSpec>& specs);

}  // namespace mslm
