// Learning-rate schedules, as functions of the 0-based optimizer step.
//
// Warmup (all kinds): lr·(step+1)/warmup for step < warmup (llm.c's convention: step 0 already
// trains, at lr/warmup; step warmup-1 reaches lr). warmup = 0 means none.
// After warmup:
//   Constant  lr.
//   Cosine    min_lr + (lr - min_lr)·(1 + cos(pi·r))/2, r = (step - warmup)/(total - warmup):
//             lr at step warmup, min_lr at step total and after.
//   WSD       warmup-stable-decay: lr until step total - decay, then a linear decay that reaches
//             min_lr at step total (r = (step - (total - decay))/decay; lr·(1-r) + min_lr·r) and
//             stays there. Linear rather than 1-sqrt: simpler to reason about, and the cooldown
//             length matters more than its shape at our scales.
// `total` is the number of training steps, so the last trained step (total-1) is one decay
// increment above min_lr, as in llm.c.
#pragma once
#include <cstdint>
#include <string_view>

namespace mslm {

struct LrSchedule {
    enum Kind { Constant, Cosine, WSD };
    Kind kind = Cosine;
    double lr = 3e-4;
    double min_lr = 0;
    int64_t warmup = 0;
    int64_t total = 0;  // Cosine, WSD: the step at which min_lr is reached; unused by Constant
    int64_t decay = 0;  // WSD: length of the final decay, in steps

    // Throws mslm::Error naming the bad setting: lr > 0; 0 <= min_lr <= lr; warmup >= 0;
    // Cosine: total > warmup; WSD: decay > 0 and warmup + decay <= total.
    void validate() const;
    double lr_at(int64_t step) const;  // step >= 0; assumes validate() passed

    // "constant", "cosine", "wsd" (case-sensitive); anything else throws, listing the names.
    static Kind parse_kind(std::string_view name);
    static std::string_view kind_name(Kind kind);
};

}  // namespace mslm
