#include "cli/commands.h"
#include "train/quickstart.h"

namespace mslm::cli {

void register_quickstart(CLI::App& app) {
    auto* cmd = app.add_subcommand(
        "quickstart", "Train a tokenizer and a small hybrid model on an English corpus, then print samples");
    auto opt = std::make_shared<QuickstartOptions>();
    auto* data = cmd->add_option("--data", opt->data,
                                 "Source spec(s) to train on (docs/DATA.md; a .txt is read in blank-line blocks). "
                                 "Default: Debian's fortunes");
    data->capture_default_str();
    cmd->add_option("--out", opt->out, "Run directory (tokenizer, shards, checkpoints, model)")->capture_default_str();
    cmd->add_option("--preset", opt->preset, "Model preset")->capture_default_str();
    cmd->add_option("--vocab-size", opt->vocab_size, "Tokenizer vocabulary")->check(CLI::Range(300, 65536))->capture_default_str();
    cmd->add_option("--steps", opt->steps, "Optimizer steps")->check(CLI::PositiveNumber)->capture_default_str();
    cmd->add_option("--batch", opt->batch, "Sequences per step")->check(CLI::PositiveNumber)->capture_default_str();
    cmd->add_option("--seq-len", opt->seq_len, "Tokens per sequence")->check(CLI::PositiveNumber)->capture_default_str();
    cmd->add_option("--lr", opt->lr, "Peak learning rate")->check(CLI::PositiveNumber)->capture_default_str();
    cmd->add_option("--seed", opt->seed, "Seed of the split, initialisation, data order and samples")->capture_default_str();
    cmd->add_option("--samples", opt->samples, "Samples to print")->check(CLI::NonNegativeNumber)->capture_default_str();
    cmd->add_option("--sample-tokens", opt->sample_tokens, "Tokens per sample")->check(CLI::PositiveNumber)->capture_default_str();
    cmd->callback([opt] { run_quickstart(*opt); });
}

}  // namespace mslm::cli
