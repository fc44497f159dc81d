#include "model/model_io.h"

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <set>
#include <type_traits>

#include "core/safetensors.h"
#include "export/gguf_model.h"
#include "model/hf_import.h"
#include "quant/bnb_model.h"

namespace mslm {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {


bool is_gguf_file(const std::string& path) {
    return fs::path(path).extension() == ".gguf" && fs::is_regular_file(path);
}

fs::path config_path(const std::string& dir) {
    fs::path p(dir);
    return fs::is_directory(p) ? p / "config.json" : p;
}

// Copies a file tensor (any float dtype, or a bitsandbytes-quantized linear weight, dequantized)
// into `rows` rows of a native parameter; records the file tensors it read in `used`.
template <typename T>
void copy_rows(const SafetensorsFile& file, const std::string& name, const Shape& expected, T* dst,
               std::set<std::string>& used) {
    Tensor t;
    if (quant::bnb_is_quantized(file, name)) {
        std::vector<std::string> keys;
        t = quant::bnb_dequantize(file, name, &keys);
        used.insert(keys.begin(), keys.end());
    } else {
        t = file.get_f32(name);
        used.insert(name);
    }
    MSLM_CHECK(t.shape() == expected, "{}: tensor '{}' has shape {}, the config needs {}", file.name(), name,
               shape_str(t.shape()), shape_str(expected));
    const float* src = t.data<float>();
    for (int64_t i = 0; i < t.numel(); ++i) dst[i] = static_cast<T>(src[i]);
}

}  // namespace

nlohmann::json read_json_file(const std::string& path) {
    std::ifstream in(path);
    MSLM_CHECK(in.good(), "{}: cannot open (is this a model directory?)", path);
    try {
        return nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
        fail("{}: invalid JSON: {}", path, e.what());
    }
}

ModelConfig load_any_config(const std::string& dir, std::string* format, std::string* quantization) {
    if (is_gguf_file(dir)) {
        if (format) *format = "gguf";
        if (quantization) quantization->clear();
        return config_from_gguf(gguf::File::open(dir));
    }
    fs::path p = config_path(dir);
    json j = read_json_file(p.string());
    if (quantization) quantization->clear();
    if (j.is_object() && j.contains("quantization_config")) {
        // The weights say how each tensor is stored (bnb_model.h); the block only has to be one we read.
        std::string q = quant::check_quantization_config(j["quantization_config"], p.string());
        if (quantization) *quantization = q;
        j.erase("quantization_config");
    }
    std::string type = j.is_object() && j.contains("model_type") && j["model_type"].is_string()
                           ? j["model_type"].get<std::string>()
                           : "mamba_slm";
    if (format) *format = type;
    if (type == "mamba_slm") return config_from_json(j, p.string());
    return config_from_hf(j, p.string());
}

template <typename T>
std::unique_ptr<HybridLM<T>> load_model(const std::string& dir, LoadedModelInfo* info,
                                        ops::WeightFormat pack_4bit, const LinearWeightTaker& take) {
    if (is_gguf_file(dir)) {
        if (info) *info = {"gguf", dir, dir, ""};
        return load_gguf_model<T>(dir);
    }
    std::string format, quantization;
    ModelConfig cfg = load_any_config(dir, &format, &quantization);
    fs::path weights = config_path(dir).parent_path() / "model.safetensors";
    MSLM_CHECK(fs::exists(weights), "{}: no model.safetensors beside the config (sharded checkpoints are not "
               "supported yet)", weights.string());
    SafetensorsFile file = SafetensorsFile::open(weights.string());
    auto model = std::make_unique<HybridLM<T>>(cfg);
    Parameters<T>& params = model->params();
    std::set<std::string> used;
    // A whole linear weight stored in 4-bit: packed straight from the file when asked to.
    auto try_pack = [&](size_t idx, const std::string& name, const Shape& file_shape) {
        if constexpr (!std::is_same_v<T, float>) {
            return false;
        } else {
            if (!ops::is_4bit_format(pack_4bit) || !params.is_linear(idx) ||
                file_shape != params.specs()[idx].shape)
                return false;
            ops::PackedWeight p;
            std::vector<std::string> keys;
            if (!quant::bnb4_pack(file, name, file_shape, pack_4bit, &p, &keys)) return false;
            used.insert(keys.begin(), keys.end());
            params.set_loaded_packed(idx, std::move(p));
            return true;
        }
    };
    auto try_take = [&](size_t idx, int64_t row_begin, const std::string& name, const Shape& file_shape) {
        if (!take || !params.is_linear(idx)) return false;
        std::vector<std::string> keys;
        if (!take(idx, row_begin, file, name, file_shape, &keys)) return false;
        used.insert(keys.begin(), keys.end());
        return true;
    };
    if (format == "mamba_slm") {
        for (size_t i = 0; i < params.specs().size(); ++i) {
            const ParamSpec& s = params.specs()[i];
            MSLM_CHECK(file.contains(s.name), "{}: missing tensor '{}'", file.name(), s.name);
            if (try_pack(i, s.name, s.shape) || try_take(i, 0, s.name, s.shape)) continue;
            copy_rows(file, s.name, s.shape, params.value(i), used);
        }
    } else {
        HfArch arch = hf_arch_from_model_type(format, config_path(dir).string());
        std::vector<bool> filled(params.specs().size(), false);
        for (const HfTensorMap& m : hf_tensor_map(arch, cfg, params.specs())) {
            MSLM_CHECK(file.contains(m.hf_name), "{}: missing tensor '{}'", file.name(), m.hf_name);
            size_t idx = params.find(m.native_name);
            const ParamSpec& s = params.specs()[idx];
            int64_t row = s.numel / s.shape[0];
            filled[idx] = true;
            if (m.row_begin == 0 && try_pack(idx, m.hf_name, m.hf_shape)) continue;
            if (try_take(idx, m.row_begin, m.hf_name, m.hf_shape)) continue;
            copy_rows(file, m.hf_name, m.hf_shape, params.value(idx) + m.row_begin * row, used);
        }
        for (size_t i = 0; i < filled.size(); ++i)
            MSLM_CHECK(filled[i], "{}: nothing in the file maps to parameter '{}'", file.name(), params.specs()[i].name);
    }
    for (const auto& name : file.names())
        MSLM_CHECK(used.count(name), "{}: unexpected tensor '{}' (not part of a {} model with this config)", file.name(),
                   name, format);
    if (info) *info = {format, config_path(dir).string(), weights.string(), quantization};
    return model;
}

template <typename T>
void save_model(const HybridLM<T>& model, const std::string& dir, DType dtype) {
    MSLM_CHECK(dtype == DType::F32 || dtype == DType::BF16 || dtype == DType::F16,
               "save_model: dtype {} is not a float type", dtype_name(dtype));
    fs::create_directories(dir);
    std::vector<std::pair<std::string, Tensor>> tensors;
    const Parameters<T>& params = model.params();
    for (size_t i = 0; i < params.specs().size(); ++i) {
        const ParamSpec& s = params.specs()[i];
        MSLM_CHECK(!params.released(i), "save_model {}: parameter '{}' has no fp32 values (a frozen 4-bit base "
                   "weight); a QLoRA run saves its adapter, not the model", dir, s.name);
        Tensor t = Tensor::empty(s.shape, dtype_of<T>());
        std::copy(params.value(i), params.value(i) + s.numel, t.data<T>());
        tensors.emplace_back(s.name, t.to(dtype));
    }
    save_safetensors((fs::path(dir) / "model.safetensors").string(), tensors, {{"format", "mamba_slm"}});
    save_config(model.config(), (fs::path(dir) / "config.json").string());
}

template std::unique_ptr<HybridLM<float>> load_model<float>(const std::string&, LoadedModelInfo*,
                                                            ops::WeightFormat, const LinearWeightTaker&);
template std::unique_ptr<HybridLM<double>> load_model<double>(const std::string&, LoadedModelInfo*,
                                                              ops::WeightFormat, const LinearWeightTaker&);
template void save_model<float>(const HybridLM<float>&, const std::string&, DType);
template void save_model<double>(const HybridLM<double>&, const std::string&, DType);

}  // namespace mslm
