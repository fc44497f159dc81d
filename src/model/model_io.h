// Model directories (or a single .gguf file, read by export/gguf_model): the native layout (config.json with model_type "mamba_slm" +
// model.safetensors with native names) and Hugging Face directories (their config.json +
// model.safetensors, mapped through hf_import). Loading checks that every parameter is present
// exactly once with the right shape and that nothing is left over.
#pragma once
#include <nlohmann/json_fwd.hpp>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/safetensors.h"
#include "model/hybrid_lm.h"

namespace mslm {

struct LoadedModelInfo {
    std::string format;  // "mamba_slm" or the HF model_type
    std::string config_path, weights_path;
    std::string quantization;  // "" or how the file stores the weights, e.g. "bitsandbytes nf4 + double quant"
};

// A JSON file (config.json, tokenizer_config.json, ...); throws naming the file when it cannot be
// opened or parsed.
nlohmann::json read_json_file(const std::string& path);

// Reads a model directory's config (native or HF) without loading weights. A bitsandbytes
// `quantization_config` (quant/bnb_model.h) is accepted and described in `quantization`; the
// weights are dequantized to the model's compute type on load.
ModelConfig load_any_config(const std::string& dir, std::string* format = nullptr,
                            std::string* quantization = nullptr);

// Takes a file tensor that maps onto rows [row_begin, row_begin + file_shape[0]) of the linear weight
// `param` instead of the loader writing it into the fp32 values (QLoRA's frozen 4-bit base,
// quant/qlora.h). Returns true when it took the tensor, with every file key it read appended to
// `used`; false leaves the tensor to the loader.
using LinearWeightTaker = std::function<bool(size_t param, int64_t row_begin, const SafetensorsFile& file,
                                             const std::string& key, const Shape& file_shape,
                                             std::vector<std::string>* used)>;

// pack_4bit NF4 / FP4 (float models only): linear weights that the file stores in that bitsandbytes
// 4-bit format are packed for the CPU kernels straight from their codes (quant::bnb4_pack), not
// dequantized; their fp32 values stay zero (Parameters::set_loaded_packed). Other weights load as usual.
// `take` (model directories; a .gguf file ignores it) sees every tensor of a linear weight first.
template <typename T>
std::unique_ptr<HybridLM<T>> load_model(const std::string& dir, LoadedModelInfo* info = nullptr,
                                        ops::WeightFormat pack_4bit = ops::WeightFormat::F32,
                                        const LinearWeightTaker& take = {});

// Writes config.json + model.safetensors (native names) atomically file by file. `dtype` is F32,
// BF16 or F16.
template <typename T>
void save_model(const HybridLM<T>& model, const std::string& dir, DType dtype = DType::F32);

}  // namespace mslm
