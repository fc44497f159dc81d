// The generation parameters (DESIGN §6), named and defaulted as in Hugging Face transformers'
// GenerationConfig (v5: unset fields take GenerationConfig._get_default_generation_params()), read
// from a generation_config.json or set one at a time (the CLI's `/set param value`).
//
// Not transformers': frequency_penalty and presence_penalty, defined as in OpenAI's API and vLLM
// (see apply_frequency_presence_penalty); seed (transformers seeds torch globally); and the key
// logit_bias, OpenAI's {"token id": bias}, which sets single-token sequence_bias entries.
#pragma once
#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace mslm {

// Beam search's stopping rule: transformers' early_stopping = false, true, "never".
enum class EarlyStopping {
    Heuristic,     // false: stop when the best running beam can no longer beat the worst finished one
    NumBeamsDone,  // true: stop as soon as num_beams hypotheses are finished
    Never,         // "never": the canonical rule, with the best possible length of a running beam
};

// An additive bias on the last token of `ids`, applied when the sequence so far ends with the
// other tokens of `ids` (a single id: always). transformers' sequence_bias entry [ids, bias].
struct SequenceBias {
    std::vector<int32_t> ids;
    float bias = 0;
    bool operator==(const SequenceBias&) const = default;
};

struct GenerationConfig {
    // Length. max_new_tokens wins over max_length (which counts the prompt); with neither set,
    // 20 new tokens (transformers' default max_length of 20 is added to the prompt length).
    std::optional<int64_t> max_new_tokens;
    std::optional<int64_t> max_length;
    std::optional<int64_t> min_new_tokens;  // wins over min_length; EOS is masked until reached
    int64_t min_length = 0;                 // counts the prompt
    std::optional<double> max_time;         // seconds, from the start of generation
    std::vector<std::string> stop_strings;

    // Strategy: greedy (do_sample false, num_beams 1), sample, beam search (num_beams > 1), beam
    // sample, contrastive search (penalty_alpha > 0 and top_k > 1 without sampling).
    bool do_sample = false;
    int64_t num_beams = 1;
    int64_t num_return_sequences = 1;
    double length_penalty = 1.0;
    EarlyStopping early_stopping = EarlyStopping::Heuristic;
    std::optional<double> penalty_alpha;
    std::optional<uint64_t> seed;  // unset: the caller picks one

    // Warpers: applied only when do_sample is true (greedy and beam search ignore them).
    double temperature = 1.0;
    int64_t top_k = 50;  // 0 disables
    double top_p = 1.0;
    std::optional<double> min_p;
    double typical_p = 1.0;
    double epsilon_cutoff = 0.0;
    double eta_cutoff = 0.0;

    // Processors: applied with every strategy.
    double repetition_penalty = 1.0;
    double frequency_penalty = 0.0;
    double presence_penalty = 0.0;
    int64_t no_repeat_ngram_size = 0;
    std::vector<std::vector<int32_t>> bad_words_ids;  // single ids are banned tokens
    std::vector<SequenceBias> sequence_bias;          // single ids are a logit bias (key logit_bias)
    bool renormalize_logits = false;                  // log-softmax after all processors

    std::vector<int32_t> eos_token_id;
    std::optional<int32_t> pad_token_id;
    std::optional<int32_t> bos_token_id;

    // Reads a transformers generation_config.json object. Keys we do not know are ignored; null
    // leaves the default. A wrong type or value throws mslm::Error naming `source` and the key.
    // `ignored` (when given) receives the transformers keys that would change the output but that
    // mamba-slm does not implement (top_h, suppress_tokens, forced_eos_token_id, ...), when set to
    // anything but their no-op value.
    static GenerationConfig from_json(const nlohmann::json& j,
                                      const std::string& source = "generation config",
                                      std::vector<std::string>* ignored = nullptr);
    static GenerationConfig load(const std::string& path);  // a generation_config.json file
    // Every field, with null for unset optionals; from_json(to_json()) gives back the same config.
    nlohmann::json to_json() const;

    // Sets one field from text, for `/set key value`: the value is read as JSON when it parses
    // (0.7, true, [2, 5], "never", null to restore the default), else as a bare string
    // (never, </s>). Unknown keys and invalid results throw mslm::Error; the config is then
    // unchanged.
    void set(const std::string& key, const std::string& value);

    // Throws mslm::Error for values transformers rejects (temperature <= 0 when sampling, top_p
    // outside [0, 1], num_return_sequences > num_beams, ...), and for epsilon_cutoff or eta_cutoff
    // outside [0, 1), which transformers silently ignores.
    void validate() const;

    // The number of tokens to generate at most / to generate before EOS may be, for a prompt of
    // prompt_len tokens (see the length fields above). Throws when max_length leaves no room.
    int64_t max_new_tokens_for(int64_t prompt_len) const;
    int64_t min_new_tokens_for(int64_t prompt_len) const;

    bool operator==(const GenerationConfig&) const = default;
};

}  // namespace mslm
