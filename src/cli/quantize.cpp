#include <fmt/format.h>

#include <map>

#include "cli/commands.h"
#include "quant/bnb_model.h"

namespace mslm::cli {

void register_quantize(CLI::App& app) {
    auto* cmd = app.add_subcommand(
        "quantize", "Quantize a model's linear weights to int8, NF4 or FP4 in bitsandbytes' format (loadable by "
                    "transformers + bitsandbytes, and by mamba-slm)");
    struct Args {
        std::string model, out, type, compute_dtype = "float32";
        bool double_quant = false;
        int64_t blocksize = 0;
        std::vector<std::string> skip;
    };
    auto a = std::make_shared<Args>();
    cmd->add_option("--model", a->model, "Model directory to quantize (native or Hugging Face, unquantized)")
        ->required();
    cmd->add_option("--out", a->out, "Output directory (config.json, model.safetensors, the input's other files)")
        ->required();
    cmd->add_option("--type", a->type, "int8 (per-row absmax, LLM.int8 weights), nf4 or fp4 (4-bit blockwise)")
        ->required()
        ->check(CLI::IsMember({"int8", "nf4", "fp4"}));
    cmd->add_flag("--double-quant", a->double_quant,
                  "4-bit: quantize the absmax values too (8-bit, blocks of 256; about 0.37 bits/param less)");
    cmd->add_option("--blocksize", a->blocksize, "4-bit: values per absmax, a power of two in 32..4096 (default 64)");
    cmd->add_option("--skip", a->skip,
                    "Keep modules matching this pattern unquantized (transformers' llm_int8_skip_modules rules: a "
                    "regex from the start of the module name up to a '.', or a suffix); repeatable. Always kept: "
                    "lm_head, dt_proj, and every non-linear tensor")
        ->take_all();
    cmd->add_option("--compute-dtype", a->compute_dtype, "bnb_4bit_compute_dtype written to the config: f32 or bf16")
        ->transform(CLI::CheckedTransformer(std::map<std::string, std::string>{{"f32", "float32"},
                                                                               {"bf16", "bfloat16"}}));
    cmd->callback([a] {
        quant::BnbQuantizeOptions opts;
        opts.kind = quant::parse_bnb_kind(a->type);
        opts.double_quant = a->double_quant;
        opts.blocksize = a->blocksize;
        opts.skip = a->skip;
        opts.compute_dtype = a->compute_dtype;
        const quant::BnbSizeReport r = quant::quantize_model_dir(a->model, a->out, opts);
        fmt::print("quantized {} -> {} ({}{})\n{}", a->model, a->out, a->type,
                   a->double_quant ? ", double quant" : "", r.format());
    });
}

}  // namespace mslm::cli
