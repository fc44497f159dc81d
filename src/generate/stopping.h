// When to stop generating one sequence, as transformers' stopping criteria (generation/
// stopping_criteria.py): max new tokens, an EOS id, a stop string, max time. A StoppingCriteria
// is a value per sequence: copy it when a beam forks.
#pragma once
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "generate/config.h"

namespace mslm {

// When several criteria hold at the same token, the first in this order is reported.
enum class StopReason { None, Eos, StopString, MaxNewTokens, MaxTime };
// "none", "eos", "stop_string", "max_new_tokens", "max_time".
const char* stop_reason_name(StopReason reason);

// Finds stop strings in generated text fed one token's text at a time (a StreamDecoder's deltas).
// transformers stops when a stop string "is at the end" of the sequence, which allows the token
// that completes it to run past its end (stop "stop": tokens "st" + "opper" stop): so a match is
// an occurrence of a stop string in the text that ends inside the newest token's text. Only the
// last (longest stop string − 1) bytes are kept between pushes.
class StopStringMatcher {
public:
    // context: the text before the generated text (the prompt, or its tail); a stop string may
    // begin in it, as transformers matches over the whole sequence of tokens.
    explicit StopStringMatcher(std::vector<std::string> stop_strings, std::string_view context = {});
    // Appends one token's text; true when a stop string ends inside it.
    bool push(std::string_view text);
    // After push() returned true: where the (earliest starting) matched stop string begins, as an
    // offset into the generated text (all pushes); 0 when it began in the context. The text before
    // it is what a caller keeps.
    size_t match_offset() const { return match_offset_; }

private:
    std::vector<std::string> stops_;
    size_t keep_ = 0;         // longest stop string − 1: the most of a match that can precede a push
    std::string tail_;        // the last keep_ bytes of context + generated text
    int64_t tail_start_ = 0;  // offset of tail_[0] in the generated text (< 0: in the context)
    size_t match_offset_ = 0;
};

class StoppingCriteria {
public:
    // Starts the max_time clock. prompt_text is the context for stop strings (see above).
    StoppingCriteria(const GenerationConfig& cfg, int64_t prompt_len, std::string_view prompt_text = {});

    // Call after each generated token with its id and its text (only read when stop strings are
    // set). Returns why to stop, or StopReason::None.
    StopReason update(int32_t id, std::string_view text = {});

    int64_t generated() const { return generated_; }
    int64_t max_new_tokens() const { return max_new_tokens_; }
    // After StopReason::StopString: StopStringMatcher::match_offset().
    size_t stop_string_offset() const { return stops_ ? stops_->match_offset() : 0; }

private:
    std::vector<int32_t> eos_;
    int64_t max_new_tokens_;
    int64_t generated_ = 0;
    std::optional<double> max_time_;
    std::chrono::steady_clock::time_point start_;
    std::optional<StopStringMatcher> stops_;
};

}  // namespace mslm
