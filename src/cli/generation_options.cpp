#include "cli/generation_options.h"

#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "model/model_io.h"

namespace mslm::cli {

namespace {

struct FlagSpec {
    const char* flag;
    const char* key;  // GenerationConfig key (transformers' name)
    const char* help;
};

constexpr FlagSpec kFlags[] = {
    {"--max-new-tokens", "max_new_tokens", "Most tokens to generate (default 20, or generation_config.json)"},
    {"--min-new-tokens", "min_new_tokens", "EOS is masked until this many tokens are generated"},
    {"--max-time", "max_time", "Stop after this many seconds"},
    {"--temperature", "temperature", "Sampling temperature"},
    {"--top-k", "top_k", "Keep the k most likely tokens (0: all); contrastive search's candidates"},
    {"--top-p", "top_p", "Nucleus sampling: keep the smallest set with this probability mass"},
    {"--min-p", "min_p", "Drop tokens less likely than min_p times the most likely one"},
    {"--typical-p", "typical_p", "Locally typical sampling mass"},
    {"--epsilon-cutoff", "epsilon_cutoff", "Drop tokens with probability below epsilon"},
    {"--eta-cutoff", "eta_cutoff", "Eta sampling cutoff"},
    {"--repetition-penalty", "repetition_penalty", "CTRL repetition penalty over prompt and output (1: off)"},
    {"--frequency-penalty", "frequency_penalty", "Subtract this times a token's count in the output"},
    {"--presence-penalty", "presence_penalty", "Subtract this from tokens present in the output"},
    {"--no-repeat-ngram-size", "no_repeat_ngram_size", "Never repeat an n-gram of this size"},
    {"--bad-words-ids", "bad_words_ids", "Banned token sequences, JSON: [[12], [5, 7]]"},
    {"--logit-bias", "logit_bias", "Additive biases, JSON: {\"12\": -5.0}"},
    {"--eos-token-id", "eos_token_id", "End-of-sequence id(s): 2 or [2, 7]"},
    {"--num-beams", "num_beams", "Beam search with this many beams"},
    {"--length-penalty", "length_penalty", "Beam score = sum log p / length^penalty"},
    {"--early-stopping", "early_stopping", "Beam search stop rule: true, false or never"},
    {"--num-return-sequences", "num_return_sequences", "Sequences returned per prompt"},
    {"--penalty-alpha", "penalty_alpha", "Contrastive search's degeneration penalty (with --top-k)"},
    {"--seed", "seed", "Sampling seed (same seed, same output)"},
};

std::atomic<bool> g_interrupt{false};
struct sigaction g_previous;

extern "C" void on_sigint(int) { g_interrupt.store(true); }

}  // namespace

void add_generation_flags(CLI::App* cmd, GenerationFlags& flags) {
    for (const FlagSpec& f : kFlags) cmd->add_option(f.flag, flags.values[f.key], f.help)->group("Decoding");
    cmd->add_flag("--sample", flags.sample, "Sample instead of greedy / beam search (do_sample)")->group("Decoding");
    cmd->add_option("--stop", flags.stop, "Stop when the output contains this text (repeatable)")->group("Decoding");
    cmd->add_option("--set", flags.sets, "Any generation_config key: --set key=value")->group("Decoding");
    cmd->add_option(
           "--dtype", flags.dtype,
           "Weights for inference: f32 (exact), bf16 (half the bytes; prefill on AMX tiles where the "
           "CPU has them), int8 = w8a8 (per-row absmax weights, per-token int8 activations), w8a16 "
           "(int8 weights, fp32 activations), nf4 or fp4 (bitsandbytes 4-bit, blocksize 64; a "
           "bitsandbytes 4-bit directory of that type runs on its own codes)")
        ->group("Model")
        ->check(CLI::IsMember({"f32", "fp32", "bf16", "int8", "w8a8", "w8a16", "nf4", "fp4"}))
        ->default_str("f32");
    cmd->add_option("--device", flags.device,
                    "Where to decode: cpu, cuda or cuda:N (the GPU keeps bf16 activations; its weights are bf16 "
                    "for --dtype f32 / bf16, int8 for int8 / w8a16 (weight-only), or nf4 / fp4)")
        ->group("Model")
        ->default_str("cpu");
    add_state_dtype_flag(cmd);
}

void add_state_dtype_flag(CLI::App* cmd) {
    cmd->add_option_function<std::string>(
           "--state-dtype",
           [](const std::string& v) { setenv("MSLM_DECODE_STATE", v == "bf16" ? "bf16" : "f32", 1); },
           "Mamba-2 SSM states kept while decoding: f32 (default) or bf16 — half the bytes a decode step "
           "streams and a sequence holds, as mamba-ssm's and transformers' caches keep them for a bf16 "
           "model; each step rounds the states once (logits within ~2% of the f32 states' on the tests' "
           "models). Sets MSLM_DECODE_STATE.")
        ->check(CLI::IsMember({"f32", "fp32", "bf16"}))
        ->group("Model");
}

void apply_generation_flags(const GenerationFlags& flags, GenerationConfig& cfg) {
    for (const auto& [key, value] : flags.values)
        if (!value.empty()) cfg.set(key, value);
    if (flags.sample) cfg.do_sample = true;
    if (!flags.stop.empty()) cfg.stop_strings = flags.stop;
    for (const std::string& kv : flags.sets) {
        const size_t eq = kv.find('=');
        MSLM_CHECK(eq != std::string::npos && eq > 0, "--set {}: expected key=value", kv);
        cfg.set(kv.substr(0, eq), kv.substr(eq + 1));
    }
    cfg.validate();
}

LoadedGenerator load_generator(const std::string& dir, const std::string& tokenizer_path, const std::string& dtype) {
    namespace fs = std::filesystem;
    LoadedGenerator g;
    g.dir = dir;
    const ops::WeightFormat format = ops::parse_weight_format(dtype);
    g.model = load_model<float>(dir, nullptr, format);
    g.model->pack_weights(format);
    const std::string tok = tokenizer_path.empty() ? dir + "/tokenizer.json" : tokenizer_path;
    if (!tokenizer_path.empty() || fs::exists(tok)) g.tokenizer = Tokenizer::load(tok);
    const std::string gen = dir + "/generation_config.json";
    if (fs::exists(gen)) g.config = GenerationConfig::load(gen);
    if (g.config.eos_token_id.empty() && g.tokenizer && g.tokenizer->eot_id() >= 0)
        g.config.eos_token_id = {g.tokenizer->eot_id()};
    return g;
}

InterruptGuard::InterruptGuard() {
    g_interrupt.store(false);
    // Without SA_RESTART, so that a blocking read() returns EINTR and an interactive prompt sees
    // the Ctrl-C.
    struct sigaction sa = {};
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &g_previous);
}

InterruptGuard::~InterruptGuard() { sigaction(SIGINT, &g_previous, nullptr); }

bool InterruptGuard::requested() { return g_interrupt.load(); }

void InterruptGuard::reset() { g_interrupt.store(false); }

}  // namespace mslm::cli
