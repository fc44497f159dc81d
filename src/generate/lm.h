// What a decoding strategy needs from a language model: a batch of sequence slots that it fills
// with prompts, advances one token per slot, reorders (beam search) and copies (forks). Keeping
// the strategies behind this interface lets tests drive them with small exact models.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "model/hybrid_lm.h"
#include "model/inference.h"

namespace mslm {

// Greedy decoding's choice from one row of logits: the first index of the largest (argmax_token),
// that logit, and its log-softmax (log_prob_of) — all a greedy step without logits processors needs.
struct GreedyPick {
    int32_t token = 0;
    float logit = 0;
    double log_prob = 0;
};
GreedyPick greedy_pick(std::span<const float> logits);

class CausalLM {
public:
    virtual ~CausalLM() = default;
    virtual int64_t vocab_size() const = 0;
    virtual int64_t hidden_size() const = 0;
    virtual int64_t max_seq_len() const = 0;
    // Room for `slots` empty sequences of at most max_len tokens each; earlier state is dropped.
    virtual void start(int64_t slots, int64_t max_len) = 0;
    // Feeds ids to `slot`, continuing its sequence. logits: (V) of the last position. hidden:
    // (n, D) final hidden states of every fed position, or null when not needed.
    virtual void prefill(int64_t slot, std::span<const int32_t> ids, float* logits, float* hidden) = 0;
    // One token for each listed slot. logits (k, V); hidden (k, D) or null.
    virtual void step(std::span<const int64_t> slots, std::span<const int32_t> tokens, float* logits,
                      float* hidden) = 0;
    // step(), then each row's greedy pick instead of its logits. This default picks on the host from
    // step()'s logits; a GPU decoder picks on the device and brings back 16 bytes a row, not V floats
    // (CudaCausalLM: the logits' download was half the batch-64 step on an H200).
    virtual void step_greedy(std::span<const int64_t> slots, std::span<const int32_t> tokens,
                             GreedyPick* picks);
    // Between 1 and n greedy steps in a row (n ≥ 1): step 0 feeds `tokens`, each later step the picks
    // of the step before, as calls of step_greedy would, ending early after a step in which any row
    // picked one of stop_ids. Writes step j's picks at picks[j · k] (k = the slots) and returns the
    // steps run. This default takes one step: a decoder that loops on the host gains nothing from
    // more, and a caller's host-side stop would find its slots stepped past the end. A GPU decoder
    // runs all n as one device-side loop (no host round trip between them).
    virtual int64_t step_greedy_n(std::span<const int64_t> slots, std::span<const int32_t> tokens, int64_t n,
                                  std::span<const int32_t> stop_ids, GreedyPick* picks);
    // Slot i takes what slot src[i] held (src.size() == slots; repeats allowed).
    virtual void reorder(std::span<const int64_t> src) = 0;
    virtual void copy(int64_t src_slot, int64_t dst_slot) = 0;
    // `slot` back to the empty sequence, the other slots untouched: a new prompt in a started
    // model without start()'s reallocation (a server's free slot, chat's /reset, a benchmark).
    virtual void clear(int64_t slot) = 0;

protected:
    // n steps of step_greedy (the host's loop), ending after one that picks a stop id; returns the
    // steps run.
    int64_t step_greedy_loop(std::span<const int64_t> slots, std::span<const int32_t> tokens, int64_t n,
                             std::span<const int32_t> stop_ids, GreedyPick* picks);

private:
    std::vector<float> greedy_logits_;  // step_greedy's (k, V) scratch
};

// CausalLM over a HybridLM<float> and its InferenceState.
class HybridCausalLM : public CausalLM {
public:
    explicit HybridCausalLM(HybridLM<float>& model) : model_(model) {}
    int64_t vocab_size() const override { return model_.config().vocab_size; }
    int64_t hidden_size() const override { return model_.config().d_model; }
    int64_t max_seq_len() const override { return model_.config().max_seq_len; }
    void start(int64_t slots, int64_t max_len) override;
    void prefill(int64_t slot, std::span<const int32_t> ids, float* logits, float* hidden) override;
    void step(std::span<const int64_t> slots, std::span<const int32_t> tokens, float* logits,
              float* hidden) override;
    void reorder(std::span<const int64_t> src) override { state_->reorder(src); }
    void copy(int64_t src_slot, int64_t dst_slot) override { state_->copy(src_slot, dst_slot); }
    void clear(int64_t slot) override;

private:
    HybridLM<float>& model_;
    std::unique_ptr<InferenceState<float>> state_;
    std::vector<float> all_logits_;  // (n, V) scratch when every position's hidden state is asked for
};

}  // namespace mslm
