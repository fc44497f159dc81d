#include "eval/perplexity.h"

#include <cmath>
#include <numbers>

#include "core/error.h"

namespace mslm {

EvalResult evaluate_windows(HybridLM<float>& model, DataLoader& loader, int64_t max_batches,
                            double bytes_per_token) {
    MSLM_CHECK(!loader.options().shuffle, "evaluate: the loader must be sequential (shuffle off)");
    MSLM_CHECK(max_batches >= 0, "evaluate: max_batches must be >= 0 (got {})", max_batches);
    loader.reset();
    Batch batch;
    EvalResult r;
    double sum = 0;
    for (int64_t i = 0; (max_batches == 0 || i < max_batches) && loader.next(batch); ++i) {
        // Weighted by rows: the last batch may be short, and every target counts the same.
        sum += static_cast<double>(
                   model.forward(batch.inputs.data(), batch.targets.data(), batch.rows, batch.seq_len)) *
               static_cast<double>(batch.rows);
        r.windows += batch.rows;
    }
    MSLM_CHECK(r.windows > 0, "evaluate: the split has no window of {} tokens", loader.options().seq_len + 1);
    r.tokens = r.windows * loader.options().seq_len;
    r.loss = sum / static_cast<double>(r.windows);
    r.ppl = std::exp(r.loss);
    r.bpb = bytes_per_token > 0 ? r.loss / std::numbers::ln2 / bytes_per_token : 0.0;
    return r;
}

}  // namespace mslm
