// Loss, perplexity and bits per byte of a model over the token windows of a prepared split. The
// windows are DataLoader's (disjoint T-token inputs, each scored on its T next tokens, windows in
// stream order), so every target token of the covered windows counts once. The trainer's periodic
// eval and `mamba-slm eval` both call this, so their numbers mean the same thing.
#pragma once
#include <cstdint>

#include "data/loader.h"
#include "model/hybrid_lm.h"

namespace mslm {

struct EvalResult {
    double loss = 0;  // mean next-token cross-entropy over the scored targets, in nats
    double ppl = 0;   // exp(loss)
    double bpb = 0;   // bits per byte of text: loss / ln 2 / bytes_per_token; 0 when that is unknown
    int64_t windows = 0;
    int64_t tokens = 0;  // targets scored
};

// Resets `loader` (which must be sequential) and scores its first max_batches batches (0: all
// of them). bytes_per_token is the split's (SplitInfo::bytes_per_token).
EvalResult evaluate_windows(HybridLM<float>& model, DataLoader& loader, int64_t max_batches,
                            double bytes_per_token);

}  // namespace mslm
