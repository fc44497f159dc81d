// mamba-slm models as llama.cpp GGUF files, both ways. One mapping serves export and import:
// which llama.cpp architecture expresses a config, its metadata keys, and every GGUF tensor as
// rows of one native parameter with the conventions of llama.cpp's converter
// (convert_hf_to_gguf.py, conversion/mamba.py, jamba.py, granite.py):
//   pure Mamba-1 → "mamba"; pure Mamba-2 → "mamba2"; Mamba-1 + attention → "jamba";
//   Mamba-2 + attention → "granitehybrid" (the arch llama.cpp's converter gives BambaForCausalLM);
//   ssm_a = −exp(A_log) (Mamba-2: shaped (n_head, 1), as is ssm_d); conv weights (C, K) with the
//   middle 1 squeezed; Mamba-2's gated norm weight shaped (n_group, d_inner / n_group);
//   granitehybrid's q/k rows permuted from rotate-half pairs (i, i + r/2) to llama.cpp's adjacent
//   pairs (2i, 2i + 1) over the r rotary dims of each head (its RoPE is the "normal" kind).
// Anything llama.cpp cannot compute exactly (LayerNorm, non-SwiGLU MLPs, Mamba-1 with expand ≠ 2,
// projection biases, a dt clamp, ...) is refused in one line naming the feature.
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "export/gguf.h"
#include "model/config.h"
#include "model/hybrid_lm.h"
#include "nn/parameters.h"

namespace mslm {

enum class GgufArch { Mamba, Mamba2, Jamba, GraniteHybrid };
std::string gguf_arch_name(GgufArch arch);

// The llama.cpp architecture that computes this config exactly; throws one line naming the
// feature that blocks it otherwise.
GgufArch gguf_arch_for(const ModelConfig& cfg);

enum class GgufTransform {
    None,
    NegExp,          // GGUF = −exp(native): ssm_a from A_log
    RopeInterleave,  // rows of each head permuted from rotate-half to adjacent rotary pairs
};

struct GgufTensorMap {
    std::string gguf_name;
    std::string native_name;  // empty: zeros that the arch requires and the model lacks (conv bias)
    int64_t row_begin = 0;    // rows of the native parameter's first dimension
    int64_t rows = 0;
    std::vector<int64_t> ne;  // GGUF dims, ne[0] contiguous
    GgufTransform transform = GgufTransform::None;
};

// Every GGUF tensor of `arch` for this config, mapped onto the native parameters in `specs`.
std::vector<GgufTensorMap> gguf_tensor_map(GgufArch arch, const ModelConfig& cfg,
                                           const std::vector<ParamSpec>& specs);

// The type a tensor gets when `requested` is asked for, by llama.cpp's rules (its converter and
// llama-quantize): 1-D tensors, norms, ssm_conv1d and tensors not named "*.weight" (ssm_a, ssm_d,
// biases) stay F32; a block type needs rows (ne[0]) that are a multiple of 32, and a tensor whose
// rows are not (Mamba-1's ssm_dt when dt_rank is 48) is kept in F16.
gguf::TensorType gguf_tensor_type(const GgufTensorMap& m, gguf::TensorType requested);

struct GgufExportOptions {
    gguf::TensorType type = gguf::TensorType::F32;  // F32, F16, Q8_0 or Q4_0
    // Where tokenizer.json / tokenizer_config.json / generation_config.json are looked for; without
    // a tokenizer.json the file says tokenizer "none" with the vocabulary size only.
    std::string tokenizer_dir;
    std::string name;  // general.name
};

struct GgufExportReport {
    GgufArch arch = GgufArch::Mamba;
    std::vector<std::pair<std::string, gguf::TensorType>> tensors;  // in file order
    std::vector<std::string> notes;  // tensors kept in another type than requested, and why; a dropped
                                     // tokenizer normalizer
    bool tokenizer = false;
};

GgufExportReport export_gguf(const HybridLM<float>& model, const std::string& out_path,
                             const GgufExportOptions& opt);

// The native config of a GGUF written by us or by llama.cpp's converter for the four archs.
ModelConfig config_from_gguf(const gguf::File& file, GgufArch* arch = nullptr);

// Loads a .gguf (F32, F16, BF16, Q8_0 and Q4_0 tensors; block types are dequantized).
template <typename T>
std::unique_ptr<HybridLM<T>> load_gguf_model(const std::string& path);

}  // namespace mslm
