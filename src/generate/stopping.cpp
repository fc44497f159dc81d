#include "generate/stopping.h"

#include <algorithm>

#include "core/error.h"

namespace mslm {

const char* stop_reason_name(StopReason reason) {
    switch (reason) {
        case StopReason::None:
            return "none";
        case StopReason::Eos:
            return "eos";
        case StopReason::StopString:
            return "stop_string";
        case StopReason::MaxNewTokens:
            return "max_new_tokens";
        case StopReason::MaxTime:
            return "max_time";
    }
    return "?";
}

StopStringMatcher::StopStringMatcher(std::vector<std::string> stop_strings, std::string_view context)
    : stops_(std::move(stop_strings)) {
    for (const std::string& s : stops_) {
        MSLM_CHECK(!s.empty(), "stop strings: the empty string would match anywhere");
        keep_ = std::max(keep_, s.size() - 1);
    }
    tail_ = context.substr(context.size() - std::min(keep_, context.size()));
    tail_start_ = -static_cast<int64_t>(tail_.size());
}

bool StopStringMatcher::push(std::string_view text) {
    const size_t before = tail_.size();
    tail_ += text;
    size_t best = std::string::npos;
    for (const std::string& s : stops_) {
        // Occurrences starting here or later end past `before`, i.e. inside the new text.
        const size_t from = before >= s.size() ? before - s.size() + 1 : 0;
        best = std::min(best, tail_.find(s, from));
    }
    if (best != std::string::npos) {
        match_offset_ = static_cast<size_t>(std::max<int64_t>(0, tail_start_ + static_cast<int64_t>(best)));
    }
    if (tail_.size() > keep_) {
        const size_t drop = tail_.size() - keep_;
        tail_.erase(0, drop);
        tail_start_ += static_cast<int64_t>(drop);
    }
    return best != std::string::npos;
}

StoppingCriteria::StoppingCriteria(const GenerationConfig& cfg, int64_t prompt_len,
                                   std::string_view prompt_text)
    : eos_(cfg.eos_token_id),
      max_new_tokens_(cfg.max_new_tokens_for(prompt_len)),
      max_time_(cfg.max_time),
      start_(std::chrono::steady_clock::now()) {
    if (!cfg.stop_strings.empty()) stops_.emplace(cfg.stop_strings, prompt_text);
}

StopReason StoppingCriteria::update(int32_t id, std::string_view text) {
    ++generated_;
    const bool stop_string = stops_ && stops_->push(text);
    if (std::find(eos_.begin(), eos_.end(), id) != eos_.end()) return StopReason::Eos;
    if (stop_string) return StopReason::StopString;
    if (generated_ >= max_new_tokens_) return StopReason::MaxNewTokens;
    if (max_time_) {
        const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start_;
        if (elapsed.count() > *max_time_) return StopReason::MaxTime;
    }
    return StopReason::None;
}

}  // namespace mslm
