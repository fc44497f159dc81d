// `export --format gguf`: a llama.cpp GGUF v3 file of a model (export/gguf_model.h).
#include <fmt/format.h>

#include <filesystem>
#include <map>
#include <regex>
#include <set>

#include "cli/commands.h"
#include "core/error.h"
#include "export/gguf_model.h"
#include "model/model_io.h"

namespace mslm::cli {

namespace fs = std::filesystem;

void run_export_gguf(const std::string& model_path, const std::string& out, const std::string& type_name) {
    static const std::map<std::string, gguf::TensorType> types = {{"f32", gguf::TensorType::F32},
                                                                  {"f16", gguf::TensorType::F16},
                                                                  {"q8_0", gguf::TensorType::Q8_0},
                                                                  {"q4_0", gguf::TensorType::Q4_0}};
    auto it = types.find(type_name);
    MSLM_CHECK(it != types.end(), "export: --type {} is not offered (f32, f16, q8_0, q4_0 are)", type_name);
    auto model = load_model<float>(model_path);
    GgufExportOptions opt;
    opt.type = it->second;
    const fs::path src = fs::absolute(model_path);
    opt.tokenizer_dir = (fs::is_directory(src) ? src : src.parent_path()).string();
    opt.name = (fs::is_directory(src) ? src : src.parent_path()).filename().string();
    const GgufExportReport r = export_gguf(*model, out, opt);

    // Which tensors got which type, with the layer index folded ("blk.*.ssm_in.weight").
    std::map<std::string, std::set<std::string>> by_type;
    std::map<std::string, int> counts;
    static const std::regex layer(R"(^blk\.\d+\.)");
    for (const auto& [name, t] : r.tensors) {
        const std::string tn(gguf::tensor_type_name(t));
        by_type[tn].insert(std::regex_replace(name, layer, "blk.*."));
        ++counts[tn];
    }
    fmt::print("wrote {}: llama.cpp arch {}, {} tensors, tokenizer {}\n", out, gguf_arch_name(r.arch),
               r.tensors.size(), r.tokenizer ? "included" : "none (no tokenizer.json beside the model)");
    for (const auto& [tn, names] : by_type) {
        std::string list;
        for (const auto& n : names) list += (list.empty() ? "" : ", ") + n;
        fmt::print("  {:<5} {:>4}: {}\n", tn, counts[tn], list);
    }
    for (const auto& note : r.notes) fmt::print("  note: {}\n", note);
}


}  // namespace mslm::cli
