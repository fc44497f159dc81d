#include "cli/commands.h"
#include "train/quickstart.h"

namespace mslm::cli {

void register_quickstart(CLI::App& app) {
    auto* cmd = app.add_subcommand("quickstart", "Train a small byte-level model on a text file and show the loss fall");
    auto opt = std::make_shared<QuickstartOptions>();
    opt->data = "../shared/data/tinyshakespeare.txt";
    cmd->add_option("--data", opt->data, "Text file to train on")->capture_default_str();
    cmd->add_option("--preset", opt->preset, "Model preset")->capture_default_str();
    cmd->add_option("--steps", opt->steps, "SGD steps")->check(CLI::PositiveNumber)->capture_default_str();
    cmd->add_option("--batch", opt->batch, "Sequences per step")->check(CLI::PositiveNumber)->capture_default_str();
    cmd->add_option("--seq-len", opt->seq_len, "Tokens (bytes) per sequence")->check(CLI::PositiveNumber)->capture_default_str();
    cmd->add_option("--lr", opt->lr, "Learning rate")->check(CLI::PositiveNumber)->capture_default_str();
    cmd->add_option("--seed", opt->seed, "Random seed")->capture_default_str();
    cmd->callback([opt] { run_quickstart(*opt); });
}

}  // namespace mslm::cli
