// What `generate` and `chat` share: loading a model directory (weights, tokenizer,
// generation_config.json) and the decoding flags, each one a GenerationConfig key.
#pragma once
#include <CLI/CLI.hpp>

#include <atomic>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "generate/config.h"
#include "generate/generate.h"
#include "model/hybrid_lm.h"
#include "tokenizer/tokenizer.h"

namespace mslm::cli {

struct GenerationFlags {
    std::map<std::string, std::string> values;  // config key -> flag value, for the flags given
    std::vector<std::string> stop;              // --stop, repeatable
    std::vector<std::string> sets;              // --set key=value
    bool sample = false;
    std::string dtype = "f32";                  // --dtype: weights for inference (f32, bf16, int8)
    std::string device = "cpu";                 // --device: cpu | cuda | cuda:N
};

// Adds --max-new-tokens, --temperature, ..., --num-beams, --stop, --sample, --set, --dtype, --device and
// --state-dtype to cmd.
void add_generation_flags(CLI::App* cmd, GenerationFlags& flags);
// Adds --state-dtype f32|bf16: the Mamba-2 SSM states the decoders keep, set for the whole process
// (MSLM_DECODE_STATE, which the CPU and GPU decoders read when they are built). generate, chat,
// bench and info take it.
void add_state_dtype_flag(CLI::App* cmd);
// Applies the flags that were given to cfg (through GenerationConfig::set), then validates.
void apply_generation_flags(const GenerationFlags& flags, GenerationConfig& cfg);

struct LoadedGenerator {
    std::unique_ptr<HybridLM<float>> model;
    std::optional<Tokenizer> tokenizer;
    GenerationConfig config;  // the model's generation_config.json, or transformers' defaults
    std::string dir;
};

// Loads DIR's model, its tokenizer.json (or tokenizer_path when given) and generation_config.json,
// and packs the weights to `dtype` (f32 | bf16 | int8).
LoadedGenerator load_generator(const std::string& dir, const std::string& tokenizer_path,
                               const std::string& dtype = "f32");

// Ctrl-C while generating: a press sets the flag (the reply stops at the next token) instead of
// ending the program; the handler is installed for the lifetime of the guard.
class InterruptGuard {
public:
    InterruptGuard();
    ~InterruptGuard();
    static bool requested();
    static void reset();
};

}  // namespace mslm::cli
