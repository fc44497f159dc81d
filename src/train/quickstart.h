// The main job, start to finish, on the CPU: train a BPE tokenizer on an English corpus (by
// default the fortune cookies of Debian's `fortunes` package), prepare token shards with a held-out
// split, train a small hybrid Mamba-2 + attention model with the full trainer (AdamW, warmup +
// cosine, evaluation, checkpoints, loss curve), then print samples from it. The run directory ends
// with a model directory that `mamba-slm generate` and `mamba-slm chat` load.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace mslm {

inline constexpr const char* kFortunesCorpus = "/usr/share/games/fortunes/*.u8:format=txt,split=fortune";

struct QuickstartOptions {
    // Source specs (see docs/DATA.md). A .txt without split= is read in blank-line blocks.
    std::vector<std::string> data = {kFortunesCorpus};
    std::string out = "runs/quickstart";
    std::string preset = "tiny";
    int64_t vocab_size = 2048;
    int64_t steps = 800;
    int64_t batch = 16;
    int64_t seq_len = 128;
    double lr = 3e-3;
    uint64_t seed = 0;
    int samples = 3;
    int64_t sample_tokens = 64;
};

struct QuickstartResult {
    double unigram_entropy = 0;  // nats per token of the training split
    double first_val_loss = 0, final_val_loss = 0;
    double final_bits_per_byte = 0;
    std::string model_dir;
    std::vector<std::string> samples;
};

QuickstartResult run_quickstart(const QuickstartOptions& opt);

}  // namespace mslm
