#include <fmt/format.h>

#include "cli/commands.h"
#include "lora/merge.h"

namespace mslm::cli {

namespace {

void add_common(CLI::App* cmd, LoraMergeOptions& o, bool weights_required) {
    cmd->add_option("--model", o.model_dir, "The base model directory (native or Hugging Face)")->required();
    cmd->add_option(
           "--adapter", o.adapters,
           "A PEFT adapter directory (adapter_config.json + adapter_model.safetensors); repeat for several")
        ->required();
    auto* w =
        cmd->add_option("--weights", o.weights,
                        "One weight per --adapter, comma-separated (e.g. 0.7,-0.3): combine the adapters "
                        "with PEFT's add_weighted_adapter first")
            ->delimiter(',');
    if (weights_required) w->required();
    cmd->add_option("--combination", o.combination,
                    "How weighted adapters combine: cat (rank Σ rᵢ, exactly Σ wᵢ·scalingᵢ·Bᵢ·Aᵢ) or linear "
                    "(PEFT's rank-preserving approximation; all ranks equal)")
        ->check(CLI::IsMember({"cat", "linear"}))
        ->capture_default_str();
    cmd->add_option("--out", o.out_dir, "Output directory")->required();
}

}  // namespace

void register_lora(CLI::App& app) {
    auto* cmd = app.add_subcommand("lora", "LoRA adapters in PEFT's layout: merge into a model, combine");
    cmd->require_subcommand(1);
    cmd->footer(
        "Adapters are PEFT directories, with module names of the model's Hugging Face class; train one with "
        "`mamba-slm train --lora-r R ...`.");

    auto merge = std::make_shared<LoraMergeOptions>();
    auto* m = cmd->add_subcommand("merge",
                                  "Merge adapters into the base weights and write a merged model directory "
                                  "(native format, fp32)");
    add_common(m, *merge, false);
    m->footer("Without --weights every adapter is merged as it is (their updates add up).");
    m->callback([merge] {
        const size_t modules = merge_lora_into_model(*merge);
        fmt::print("merged {} adapter(s) ({} module updates) into {} -> {}\n", merge->adapters.size(),
                   modules, merge->model_dir, merge->out_dir);
    });

    auto combine = std::make_shared<LoraMergeOptions>();
    auto* c = cmd->add_subcommand("combine",
                                  "Combine weighted adapters into one adapter (PEFT's "
                                  "add_weighted_adapter), written in PEFT's layout");
    add_common(c, *combine, true);
    c->callback([combine] {
        combine_lora_adapters(*combine);
        fmt::print("combined {} adapter(s) ({}) -> {}\n", combine->adapters.size(), combine->combination,
                   combine->out_dir);
    });
}

}  // namespace mslm::cli
