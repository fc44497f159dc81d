// One register_* per subcommand; each adds its options and a callback that calls the library.
#pragma once
#include <CLI/CLI.hpp>

namespace mslm::cli {

void register_chat(CLI::App& app);      // chat.cpp
void register_data(CLI::App& app);
// `eval --model DIR --data DIR`: loss, perplexity and bits per byte on prepared shards (eval.cpp).
void register_eval(CLI::App& app);
void register_generate(CLI::App& app);  // generate.cpp
// `export --format gguf` (export_gguf.cpp). run_export_gguf is what export.cpp's --format gguf
// branch calls; register_export_gguf is a stand-in `export` until that dispatch exists.
void run_export_gguf(const std::string& model_path, const std::string& out, const std::string& type);
void register_export_gguf(CLI::App& app);
void register_info(CLI::App& app);
void register_plot(CLI::App& app);  // plot.cpp
void register_quickstart(CLI::App& app);
// Adds `tokenizer` with encode/decode, and calls register_tokenizer_train for `tokenizer train`.
void register_tokenizer(CLI::App& app);
// `train --config FILE [--set k=v ...] [--resume]` (train.cpp).
void register_train(CLI::App& app);
// Adds `train` to the `tokenizer` command (tokenizer_train.cpp).
void register_tokenizer_train(CLI::App* tokenizer_cmd);

}  // namespace mslm::cli
