// Decoding strategies over a CausalLM, with transformers' generate() semantics (DESIGN §6):
// greedy, seeded sampling, beam search (and beam sampling) and contrastive search, each driven by
// a GenerationConfig and its logits-processor chain and stopping criteria.
//
// Prompts of different lengths decode together: each sequence has its own slot in the model's
// state, so no padding enters the computation. Beam search and contrastive search run one prompt
// at a time (their slots are that prompt's beams or candidates).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "generate/config.h"
#include "generate/lm.h"
#include "generate/stopping.h"

namespace mslm {

class Tokenizer;

enum class Strategy { Greedy, Sample, BeamSearch, BeamSample, Contrastive };
// transformers' choice from the config: num_beams > 1 → beam search (beam sample with do_sample);
// penalty_alpha > 0 with top_k > 1 and no sampling → contrastive; else greedy or sample.
Strategy strategy_for(const GenerationConfig& cfg);
const char* strategy_name(Strategy s);

struct GeneratedSequence {
    int64_t prompt_index = 0;
    std::vector<int32_t> tokens;  // the new tokens, EOS included
    // Greedy / sample: the processed score of each chosen token (transformers' output_scores).
    // Contrastive: the contrastive score of each chosen token. Beam search: empty.
    std::vector<float> token_scores;
    // Beam search: transformers' sequences_scores (sum of log-probabilities / length^penalty).
    // Other strategies: the sum of log-softmax of the processed scores of the chosen tokens.
    double score = 0;
    StopReason stop_reason = StopReason::None;
};

// Greedy decoding without logits processors asks the model for up to this many steps at once
// (CausalLM::step_greedy_n; on a GPU one device-side loop): tokens reach the hooks in groups of at
// most this many (~10 ms of decoding on an H200 at 130m).
constexpr int64_t kGreedyChunk = 32;

struct GenerationResult {
    Strategy strategy = Strategy::Greedy;
    // num_return_sequences per prompt, prompt by prompt (beam search: best first).
    std::vector<GeneratedSequence> sequences;
    int64_t prompt_tokens = 0;     // summed over prompts: the tokens prefilled
    int64_t reused_prompt_tokens = 0;  // prompt tokens a SlotCache already held (not prefilled again)
    int64_t generated_tokens = 0;  // tokens the model was stepped on, all slots
    double prefill_seconds = 0, decode_seconds = 0;
    bool interrupted = false;      // on_token asked to stop
};

// What slot 0 of a CausalLM holds between generate() calls, for a conversation's next turn (chat):
// the tokens fed to it and the length it was started for. A recurrent state cannot be rewound, so
// it is reused only when the next prompt extends `tokens` exactly.
struct SlotCache {
    std::vector<int32_t> tokens;
    int64_t capacity = 0;
    bool valid = false;
};

struct GenerateHooks {
    // Gives text to stop strings and streaming (StreamDecoder deltas: never half a character).
    const Tokenizer* tokenizer = nullptr;
    // Called for each token as it is chosen (not with beam search, whose beams change until the
    // end): the sequence's index in GenerationResult::sequences, the token and its text delta
    // (empty without a tokenizer). Returning false stops the whole generation (Ctrl-C).
    std::function<bool(int64_t sequence, int32_t token, std::string_view text)> on_token;
    // Seed for sampling when cfg.seed is unset.
    uint64_t default_seed = 0;
    // Greedy or sampling with one prompt and one sequence: when the prompt extends what `cache`
    // says slot 0 holds and fits the length it was started for, only the new tokens are prefilled
    // (a turn of a conversation costs its own tokens, not the whole history). A fresh start with a
    // cache is for the model's max_seq_len. Updated on return to what slot 0 then holds; made
    // invalid for other strategies, shapes or an error.
    SlotCache* cache = nullptr;
};

GenerationResult generate(CausalLM& lm, const std::vector<std::vector<int32_t>>& prompts,
                          const GenerationConfig& cfg, const GenerateHooks& hooks = {});

}  // namespace mslm
