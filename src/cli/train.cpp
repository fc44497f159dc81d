#include <fmt/format.h>

#include <cstdio>

#include "cli/commands.h"
#include "model/model_io.h"
#include "train/trainer.h"

namespace mslm::cli {

namespace {

struct TrainArgs {
    std::string config;
    std::vector<std::string> sets;
    std::string data, run_dir, save_init, device;
    int64_t steps = 0;
    bool resume = false;
    // LoRA: applied only when given (CLI::Option::count), over the config's lora.* keys.
    int64_t lora_r = 0;
    double lora_alpha = 0, lora_dropout = 0;
    std::string lora_targets, lora_init;
    bool rslora = false;
    bool qlora = false, double_quant = true;
    std::string base_quant;
    std::string qat;
    int64_t qat_group = 0;
};

}  // namespace

void register_train(CLI::App& app) {
    auto* cmd = app.add_subcommand("train", "Train a model from a JSON train config (see src/train/trainer.h)");
    auto a = std::make_shared<TrainArgs>();
    cmd->add_option("--config", a->config, "Train config JSON")->required()->check(CLI::ExistingFile);
    cmd->add_option("--set", a->sets, "Override a config field, key=value (model.preset=tiny); repeatable");
    cmd->add_option("--data", a->data, "Same as --set data=DIR");
    cmd->add_option("--run-dir", a->run_dir, "Same as --set run_dir=DIR");
    cmd->add_option("--steps", a->steps, "Same as --set steps=N")->check(CLI::PositiveNumber);
    cmd->add_option("--device", a->device, "Same as --set device=D: cpu, cuda or cuda:N");
    cmd->add_flag("--resume", a->resume, "Continue from the latest checkpoint in run_dir");
    auto* lora_r = cmd->add_option("--lora-r", a->lora_r,
                                   "LoRA rank: train only a PEFT adapter of this rank on the frozen model (lora.r)")
                       ->check(CLI::PositiveNumber);
    auto* lora_alpha = cmd->add_option("--lora-alpha", a->lora_alpha, "LoRA alpha; scaling = alpha / r (lora.alpha)");
    auto* lora_dropout = cmd->add_option("--lora-dropout", a->lora_dropout, "Dropout on the adapters' input "
                                                                            "(lora.dropout)")
                             ->check(CLI::Range(0.0, 0.999));
    auto* lora_targets = cmd->add_option(
        "--lora-targets", a->lora_targets,
        "Modules to adapt, by their Hugging Face names as PEFT matches them: q_proj,v_proj (a path equal to or "
        "ending in .NAME), a regex over the whole path (any of *+?()[]|^$\\ makes it one), or all-linear "
        "(lora.targets)");
    auto* lora_init = cmd->add_option("--lora-init", a->lora_init, "Adapter init (lora.init): default (Kaiming-uniform "
                                                                   "A) or gaussian (A ~ N(0, 1/r²)); B = 0")
                          ->check(CLI::IsMember({"default", "gaussian"}));
    auto* rslora = cmd->add_flag("--rslora", a->rslora, "rsLoRA scaling alpha / sqrt(r) (lora.rslora)");
    auto* qlora = cmd->add_flag("--qlora", a->qlora,
                                "QLoRA: hold the frozen base's linear weights in NF4 with double quantization and "
                                "train the LoRA adapter on them (lora.base_quant=nf4; needs --lora-r)");
    auto* base_quant = cmd->add_option("--base-quant", a->base_quant,
                                       "The frozen base's 4-bit format for QLoRA: nf4 or fp4 (lora.base_quant)")
                           ->check(CLI::IsMember({"nf4", "fp4"}));
    auto* double_quant = cmd->add_flag("--double-quant,!--no-double-quant", a->double_quant,
                                       "QLoRA: double-quantize the base's absmax values (lora.double_quant; on by "
                                       "default)");
    auto* qat = cmd->add_option("--qat", a->qat,
                                "Quantization-aware training: fake-quantize the linear weights as int8 (per row), "
                                "int4 (groupwise) or nf4 (bitsandbytes, blocksize 64) in the forward pass (qat)");
    auto* qat_group = cmd->add_option("--qat-group", a->qat_group, "int4 group size, a power of two in [8, 4096]; "
                                                                   "default 32 (qat_group)");
    cmd->add_option("--save-init", a->save_init,
                    "Write the model the run would start from (model.* and seed) to this directory, and exit")
        ->excludes("--resume");
    cmd->callback([a, lora_r, lora_alpha, lora_dropout, lora_targets, lora_init, rslora, qlora, base_quant,
                   double_quant, qat, qat_group] {
        TrainConfig cfg = load_train_config(a->config);
        for (const std::string& s : a->sets) apply_override(cfg, s);
        if (!a->data.empty()) cfg.data = a->data;
        if (!a->run_dir.empty()) cfg.run_dir = a->run_dir;
        if (a->steps > 0) cfg.steps = a->steps;
        if (!a->device.empty()) cfg.device = a->device;
        if (lora_r->count()) cfg.lora.r = a->lora_r;
        if (lora_alpha->count()) cfg.lora.alpha = a->lora_alpha;
        if (lora_dropout->count()) cfg.lora.dropout = a->lora_dropout;
        if (lora_targets->count()) cfg.lora.targets = a->lora_targets;
        if (lora_init->count()) cfg.lora.init = a->lora_init;
        if (rslora->count()) cfg.lora.rslora = true;
        if (qlora->count() && cfg.lora.base_quant.empty()) cfg.lora.base_quant = "nf4";
        if (base_quant->count()) cfg.lora.base_quant = a->base_quant;
        if (double_quant->count()) cfg.lora.double_quant = a->double_quant;
        if (qat->count()) cfg.qat = a->qat;
        if (qat_group->count()) cfg.qat_group = a->qat_group;
        if (!a->save_init.empty()) {
            cfg.validate();
            save_model(*build_initial_model(cfg), a->save_init);
            std::printf("%s\n", fmt::format("wrote the initial model to {}", a->save_init).c_str());
            return;
        }
        Trainer trainer(cfg, a->resume);
        const TrainSummary s = trainer.run();
        std::printf("%s\n", fmt::format("trained to step {}: loss {:.4f}, val loss {:.4f}, {} skipped steps; "
                                        "checkpoint {}; peak RSS {:.1f} MiB", s.step, s.last_loss, s.val_loss,
                                        s.skipped_steps, s.checkpoint.empty() ? "-" : s.checkpoint,
                                        static_cast<double>(s.peak_rss_bytes) / (1024.0 * 1024.0)).c_str());
    });
}

}  // namespace mslm::cli
