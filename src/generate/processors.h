// Logits processors (DESIGN §6) with the semantics of Hugging Face transformers'
// generation/logits_process.py, and the chain that GenerationMixin._get_logits_processor builds
// from a GenerationConfig, in its order:
//
//   sequence_bias → repetition_penalty → [frequency/presence penalty] → no_repeat_ngram →
//   bad_words → min_length / min_new_tokens →
//   (do_sample only) temperature → top_k → top_p → min_p → typical_p → epsilon → eta →
//   renormalize (log-softmax)
//
// Every function works on one row of logits (the vocabulary, float) in place, given the sequence
// so far where it needs it: `ids` is the prompt followed by the tokens generated so far. They keep
// no state. Filtered tokens are set to −inf (transformers' filter value). Probabilities, sums and
// entropies are computed in double; the values that stay are transformers' float32 results
// (tests/unit/test_generate_processors.cpp holds them to its fixture).
//
// Ties: top_k, epsilon and eta keep every token tied with the k-th largest logit, as transformers
// does. Where transformers' outcome depends on the order torch's unstable sort or topk gives to
// tied values (top_p; min_p's and typical_p's min_tokens_to_keep), ours is that of a stable sort:
// top_p drops the lower of two tied ids first (so its min_tokens_to_keep keeps the higher one);
// min_p's and typical_p's min_tokens_to_keep keep the lower id first.
//
// Cost: a few O(V) passes per processor. top_p and typical_p sort only the unfiltered tokens (k of
// them after top_k), and only as far as they keep them.
#pragma once
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "core/rng.h"
#include "generate/config.h"

namespace mslm {

// Warpers. min_tokens_to_keep: the most likely tokens that are never filtered.
void apply_temperature(std::span<float> logits, double temperature);  // logits / temperature
// Keeps the top_k largest logits and all tokens tied with the smallest of them.
void apply_top_k(std::span<float> logits, int64_t top_k, int64_t min_tokens_to_keep = 1);
// Sorted by ascending logit, removes the tokens whose cumulative probability is <= 1 − top_p.
void apply_top_p(std::span<float> logits, double top_p, int64_t min_tokens_to_keep = 1);
// Removes the tokens with probability < min_p · (largest probability).
void apply_min_p(std::span<float> logits, double min_p, int64_t min_tokens_to_keep = 1);
// Locally typical sampling: sorted by |−log p − H| (H the entropy), keeps the shortest prefix whose
// mass reaches `mass`, and every token as typical as its last one.
void apply_typical_p(std::span<float> logits, double mass, int64_t min_tokens_to_keep = 1);
// Removes the tokens with probability < epsilon.
void apply_epsilon_cutoff(std::span<float> logits, double epsilon, int64_t min_tokens_to_keep = 1);
// Removes the tokens with probability < η = min(ε, √ε · exp(−H)). ε is rounded to float first,
// as transformers keeps it in a float32 tensor.
void apply_eta_cutoff(std::span<float> logits, double epsilon, int64_t min_tokens_to_keep = 1);

// CTRL's repetition penalty over every distinct id in `ids` (prompt included): a logit l becomes
// l · penalty when l < 0, else l / penalty. Ids outside the vocabulary are ignored.
void apply_repetition_penalty(std::span<float> logits, std::span<const int32_t> ids, double penalty);
// OpenAI / vLLM penalties (transformers has none): l −= frequency · c + presence · [c > 0], where c
// counts the token in `generated` — the generated tokens only, not the prompt.
void apply_frequency_presence_penalty(std::span<float> logits, std::span<const int32_t> generated,
                                      double frequency, double presence);
// Bans every token that would repeat an n-gram of `ids` (prompt included): the tokens that followed
// earlier occurrences of the last ngram_size − 1 ids. Nothing while ids has fewer than ngram_size.
void apply_no_repeat_ngram(std::span<float> logits, std::span<const int32_t> ids, int64_t ngram_size);
// Adds each bias whose prefix (ids but the last) ends `ids` to the logit of its last id; the biases
// of one token add up (in transformers' order, so the float sums match). Throws for ids outside
// the vocabulary.
void apply_sequence_bias(std::span<float> logits, std::span<const int32_t> ids,
                         std::span<const SequenceBias> biases);
// bad_words_ids as −inf sequence biases; transformers drops the single-token entries that are an
// EOS id (EOS cannot be banned this way; multi-token entries ending in EOS stay).
std::vector<SequenceBias> bad_words_bias(const std::vector<std::vector<int32_t>>& bad_words_ids,
                                         std::span<const int32_t> eos_token_id);
// Masks the EOS ids while fewer than min_new_tokens tokens have been generated.
void apply_min_new_tokens(std::span<float> logits, int64_t generated, int64_t min_new_tokens,
                          std::span<const int32_t> eos_token_id);
// log(softmax(logits)) (transformers' LogitNormalization); −inf stays −inf.
void apply_log_softmax(std::span<float> logits);

// The processors a GenerationConfig asks for, in transformers' order (see the top of this file).
class LogitsProcessorChain {
public:
    // Validates cfg, and the token ids of sequence_bias and bad_words_ids against vocab_size.
    // With do_sample and num_beams > 1 the warpers keep len(eos_token_id) + 1 tokens (so a beam
    // can always continue past EOS), else 1.
    LogitsProcessorChain(const GenerationConfig& cfg, int64_t vocab_size);

    // logits: one row (vocab_size). ids: the prompt (its first prompt_len ids) and the tokens
    // generated so far.
    void apply(std::span<float> logits, std::span<const int32_t> ids, int64_t prompt_len) const;

    // Each step's transformers class name ("TopPLogitsWarper"), or ours for the frequency/presence
    // penalty ("FrequencyPresencePenalty"). The EOS mask for min_new_tokens / min_length is one
    // step where transformers may list two that mask the same ids at the same steps.
    std::vector<std::string> names() const;
    int64_t vocab_size() const { return vocab_size_; }

private:
    using Fn = std::function<void(std::span<float>, std::span<const int32_t>, int64_t)>;
    struct Step {
        std::string name;
        Fn fn;
    };
    int64_t vocab_size_;
    std::vector<Step> steps_;
};

// Sampling. Reproducible in mamba-slm (the same logits and Rng state give the same token on every
// machine), but not token-identical to torch.multinomial, whose random stream differs.

// The first index of the largest logit (torch.argmax's choice); greedy decoding.
int32_t argmax_token(std::span<const float> logits);
// log-softmax of logits at token (max-shifted, the sum of exponentials in double), logits unchanged.
double log_prob_of(std::span<const float> logits, int32_t token);
// Draws a token from softmax(logits) with one rng.uniform(); −inf logits are never drawn. Throws
// when no token is left (every logit −inf) or a logit is NaN.
int32_t sample_token(std::span<const float> logits, Rng& rng);
// softmax(logits) in double, with −inf → 0.
std::vector<double> softmax(std::span<const float> logits);

}  // namespace mslm
