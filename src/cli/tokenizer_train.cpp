#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <memory>

#include "tokenizer/trainer.h"

namespace mslm::cli {

// `mamba-slm tokenizer train`: added to the `tokenizer` command that tokenizer.cpp creates.
void register_tokenizer_train(CLI::App* tokenizer_cmd) {
    auto* cmd = tokenizer_cmd->add_subcommand("train", "Train a byte-level BPE tokenizer on text files");
    auto opt = std::make_shared<BpeTrainerOptions>();
    auto out = std::make_shared<std::string>("tokenizer.json");
    auto max_memory_mb = std::make_shared<int64_t>(static_cast<int64_t>(opt->max_memory_bytes >> 20));
    auto quiet = std::make_shared<bool>(false);
    auto kind = std::make_shared<std::string>("gpt2");

    cmd->add_option("--input", opt->inputs, "UTF-8 text files (each one document)")->required();
    cmd->add_option("--vocab-size", opt->vocab_size, "Vocabulary size, special tokens included")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
    cmd->add_option("--special-tokens", opt->special_tokens,
                    "Special tokens, given ids 0, 1, ... in this order");
    cmd->add_option("--pretokenizer", *kind, "gpt2 (GPT-2 regex) or llama3 (NFC + Llama-3 regex)")
        ->check(CLI::IsMember({"gpt2", "llama3"}))
        ->capture_default_str();
    cmd->add_option("--out", *out, "Where to write tokenizer.json")->capture_default_str();
    cmd->add_option("--min-frequency", opt->min_frequency, "Stop merging below this pair count")
        ->check(CLI::NonNegativeNumber)
        ->capture_default_str();
    cmd->add_option("--max-memory-mb", *max_memory_mb,
                    "Budget for the pre-token counts; rare ones are pruned past it")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
    cmd->add_flag("--quiet", *quiet, "No progress on stderr");
    cmd->callback([opt, out, kind, max_memory_mb, quiet] {
        opt->pretokenizer = *kind == "llama3" ? BpeTrainerOptions::Pretokenizer::Llama3
                                              : BpeTrainerOptions::Pretokenizer::Gpt2;
        opt->max_memory_bytes = static_cast<size_t>(*max_memory_mb) << 20;
        opt->progress = !*quiet;
        auto start = std::chrono::steady_clock::now();
        BpeTrainerStats stats;
        train_bpe_to_file(*opt, *out, &stats);
        double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        fmt::print(
            "wrote {}: {} tokens, {} merges; {:.1f} MB read, {} pre-tokens ({} distinct{}) in {:.1f} s\n",
            *out, stats.vocab_size, stats.merges, stats.bytes_read / 1e6, stats.pretokens,
            stats.unique_pretokens,
            stats.pruned_pretokens > 0 ? fmt::format(", {} pruned", stats.pruned_pretokens) : "", seconds);
    });
}

}  // namespace mslm::cli
