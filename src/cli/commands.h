// One register_* per subcommand; each adds its options and a callback that calls the library.
#pragma once
#include <CLI/CLI.hpp>

namespace mslm::cli {

// `bench`: train / prefill / decode / memory tables, or --profile of a CUDA training step (bench.cpp).
void register_bench(CLI::App& app);
void register_chat(CLI::App& app);      // chat.cpp
void register_data(CLI::App& app);
// `export --format hf --model DIR --out DIR` (export.cpp).
void register_export(CLI::App& app);
// `eval --model DIR --data DIR`: loss, perplexity and bits per byte on prepared shards (eval.cpp).
void register_eval(CLI::App& app);
void register_generate(CLI::App& app);  // generate.cpp
// `export --format gguf` (export_gguf.cpp), called by export.cpp's --format gguf branch.
void run_export_gguf(const std::string& model_path, const std::string& out, const std::string& type);
void register_info(CLI::App& app);
// `lora merge|combine`: PEFT adapters merged into a model or combined (lora.cpp).
void register_lora(CLI::App& app);
void register_plot(CLI::App& app);  // plot.cpp
void register_quickstart(CLI::App& app);
// `quantize --model DIR --out DIR --type int8|nf4|fp4 ...`: bitsandbytes-format directories (quantize.cpp).
void register_quantize(CLI::App& app);
// Adds `tokenizer` with encode/decode, and calls register_tokenizer_train for `tokenizer train`.
void register_tokenizer(CLI::App& app);
// `train --config FILE [--set k=v ...] [--resume]` (train.cpp).
void register_train(CLI::App& app);
// Adds `train` to the `tokenizer` command (tokenizer_train.cpp).
void register_tokenizer_train(CLI::App* tokenizer_cmd);

}  // namespace mslm::cli
