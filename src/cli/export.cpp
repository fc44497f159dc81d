#include <fmt/format.h>

#include <cstdio>

#include "cli/commands.h"
#include "core/error.h"
#include "export/onnx.h"
#include "model/hf_export.h"

namespace mslm::cli {

namespace {

struct ExportArgs {
    std::string format, model, out, dtype, type = "f32";
    bool force = false;
};

// --format hf: a transformers model directory (model/hf_export.h).
void run_export_hf(const ExportArgs& a) {
    HfExportOptions opts;
    if (a.dtype == "f32") opts.dtype = DType::F32;
    if (a.dtype == "bf16") opts.dtype = DType::BF16;
    if (a.dtype == "f16") opts.dtype = DType::F16;
    opts.overwrite = a.force;
    const HfExportSummary s = export_hf(a.model, a.out, opts);
    std::printf("%s\n", fmt::format("exported {} ({}) as {} to {}: {} tensors ({}); {}; chat template: {}",
                                    a.model, s.source_format, hf_class_name(s.arch), a.out, s.tensors,
                                    s.dtypes, fmt::join(s.files, ", "), s.chat_template_source)
                            .c_str());
}

// --format onnx: a decoding-step graph with explicit state plus genai_config.json (export/onnx.h).
void run_export_onnx(const ExportArgs& a) {
    OnnxExportOptions opts;
    opts.overwrite = a.force;
    MSLM_CHECK(a.type == "f32" || a.type == "int8" || a.type == "q4",
               "export --format onnx: --type {} is not offered (f32, int8, q4 are)", a.type);
    opts.weights = parse_onnx_weights(a.type);
    const OnnxExportSummary s = export_onnx(a.model, a.out, opts);
    std::printf("%s\n",
                fmt::format("exported {} as ONNX (opset {}, {} nodes, {} initializers, {} weights, {} "
                            "matrices quantized) to {}: {}",
                            a.model, s.opset, s.nodes, s.initializers, onnx_weights_name(opts.weights),
                            s.quantized, a.out, fmt::join(s.files, ", "))
                    .c_str());
}

}  // namespace

void register_export(CLI::App& app) {
    auto* cmd = app.add_subcommand("export",
                                   "Export a model for other runtimes (--format hf: a transformers model "
                                   "directory; gguf: a llama.cpp file; onnx: ONNX Runtime graphs)");
    auto a = std::make_shared<ExportArgs>();
    cmd->add_option("--format", a->format,
                    "Target format: hf (transformers), gguf (llama.cpp), onnx (decoding-step and prefill graphs + "
                    "genai_config.json)")
        ->required()
        ->check(CLI::IsMember({"hf", "gguf", "onnx"}));
    cmd->add_option("--model", a->model,
                    "Source model directory (native, or Hugging Face Mamba/Mamba2/Jamba/Bamba)")
        ->required();
    cmd->add_option("--out", a->out,
                    "hf: output directory (created; must be absent or empty unless --force); gguf: output file")
        ->required();
    cmd->add_option("--dtype", a->dtype, "hf: tensor dtype (default: each tensor keeps its source dtype)")
        ->check(CLI::IsMember({"f32", "bf16", "f16"}));
    cmd->add_option(
           "--type", a->type,
           "Type of the matrices (default f32). gguf: f32, f16, q8_0, q4_0; onnx: f32, int8 (per-row int8 + "
           "DequantizeLinear), q4 (4-bit blocks of 32, com.microsoft MatMulNBits)")
        ->check(CLI::IsMember({"f32", "f16", "q8_0", "q4_0", "int8", "q4"}));
    cmd->add_flag("--force", a->force, "Replace an existing output directory");
    cmd->callback([a] {
        if (a->format == "hf") return run_export_hf(*a);
        if (a->format == "gguf") return run_export_gguf(a->model, a->out, a->type);
        if (a->format == "onnx") return run_export_onnx(*a);
        fail("export --format {}: unknown (hf, gguf, onnx)", a->format);
    });
}

}  // namespace mslm::cli
