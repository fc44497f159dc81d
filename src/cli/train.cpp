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
    cmd->add_option("--save-init", a->save_init,
                    "Write the model the run would start from (model.* and seed) to this directory, and exit")
        ->excludes("--resume");
    cmd->callback([a] {
        TrainConfig cfg = load_train_config(a->config);
        for (const std::string& s : a->sets) apply_override(cfg, s);
        if (!a->data.empty()) cfg.data = a->data;
        if (!a->run_dir.empty()) cfg.run_dir = a->run_dir;
        if (a->steps > 0) cfg.steps = a->steps;
        if (!a->device.empty()) cfg.device = a->device;
        if (!a->save_init.empty()) {
            cfg.validate();
            save_model(*build_initial_model(cfg), a->save_init);
            std::printf("%s\n", fmt::format("wrote the initial model to {}", a->save_init).c_str());
            return;
        }
        Trainer trainer(cfg, a->resume);
        const TrainSummary s = trainer.run();
        std::printf("%s\n", fmt::format("trained to step {}: loss {:.4f}, val loss {:.4f}, {} skipped steps; "
                                        "checkpoint {}", s.step, s.last_loss, s.val_loss, s.skipped_steps,
                                        s.checkpoint.empty() ? "-" : s.checkpoint).c_str());
    });
}

}  // namespace mslm::cli
