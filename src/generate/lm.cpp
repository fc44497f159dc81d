#include "generate/lm.h"

#include <algorithm>
#include <vector>

#include "core/error.h"
#include "generate/processors.h"

namespace mslm {

GreedyPick greedy_pick(std::span<const float> logits) {
    GreedyPick p;
    p.token = argmax_token(logits);
    p.logit = logits[static_cast<size_t>(p.token)];
    p.log_prob = log_prob_of(logits, p.token);
    return p;
}

void CausalLM::step_greedy(std::span<const int64_t> slots, std::span<const int32_t> tokens,
                           GreedyPick* picks) {
    const int64_t V = vocab_size();
    greedy_logits_.resize(slots.size() * static_cast<size_t>(V));
    step(slots, tokens, greedy_logits_.data(), nullptr);
    for (size_t i = 0; i < slots.size(); ++i)
        picks[i] = greedy_pick(std::span<const float>(greedy_logits_.data() + i * static_cast<size_t>(V),
                                                      static_cast<size_t>(V)));
}

int64_t CausalLM::step_greedy_n(std::span<const int64_t> slots, std::span<const int32_t> tokens, int64_t n,
                                std::span<const int32_t> stop_ids, GreedyPick* picks) {
    return step_greedy_loop(slots, tokens, std::min<int64_t>(n, 1), stop_ids, picks);
}

int64_t CausalLM::step_greedy_loop(std::span<const int64_t> slots, std::span<const int32_t> tokens, int64_t n,
                                   std::span<const int32_t> stop_ids, GreedyPick* picks) {
    const size_t k = slots.size();
    std::vector<int32_t> fed(tokens.begin(), tokens.end());
    for (int64_t j = 0; j < n; ++j) {
        GreedyPick* row = picks + static_cast<size_t>(j) * k;
        step_greedy(slots, fed, row);
        bool stop = false;
        for (size_t i = 0; i < k; ++i) {
            fed[i] = row[i].token;
            stop = stop || std::find(stop_ids.begin(), stop_ids.end(), row[i].token) != stop_ids.end();
        }
        if (stop) return j + 1;
    }
    return n;
}

void HybridCausalLM::start(int64_t slots, int64_t max_len) {
    if (!state_ || state_->slots() != slots || state_->max_len() != max_len) {
        state_ = std::make_unique<InferenceState<float>>(model_.config(), slots, max_len);
    } else {
        state_->clear();
    }
}

void HybridCausalLM::clear(int64_t slot) {
    MSLM_CHECK(state_ != nullptr, "clear before start");
    state_->clear(slot);
}

void HybridCausalLM::prefill(int64_t slot, std::span<const int32_t> ids, float* logits, float* hidden) {
    MSLM_CHECK(state_, "prefill before start");
    MSLM_CHECK(!ids.empty(), "prefill: empty prompt");
    const auto n = static_cast<int64_t>(ids.size());
    const int64_t V = vocab_size();
    if (!hidden) {
        model_.prefill(*state_, slot, ids.data(), n, logits, nullptr, false);
        return;
    }
    all_logits_.resize(static_cast<size_t>(n * V));
    model_.prefill(*state_, slot, ids.data(), n, all_logits_.data(), hidden, true);
    std::copy_n(all_logits_.data() + (n - 1) * V, V, logits);
}

void HybridCausalLM::step(std::span<const int64_t> slots, std::span<const int32_t> tokens, float* logits,
                          float* hidden) {
    MSLM_CHECK(state_, "step before start");
    MSLM_CHECK(slots.size() == tokens.size(), "step: {} slots but {} tokens", slots.size(), tokens.size());
    model_.decode(*state_, slots.data(), tokens.data(), static_cast<int64_t>(slots.size()), logits, hidden);
}

}  // namespace mslm
