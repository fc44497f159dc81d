// Weighted mixture of document sources with the semantics of Hugging Face `interleave_datasets`
// on streaming (iterable) datasets: at each step a source is drawn with probability proportional
// to its weight (seeded RNG), and its next document is taken.
//   first_exhausted: stop right after the document that was some source's last (the default, as
//                    in HF): that document is emitted, nothing after it.
//   all_exhausted:   keep going until every source has run out at least once; a source that
//                    runs out restarts from its beginning (oversampling), as HF does.
// With probabilities=None HF alternates sources in order rather than sampling; we do the same
// when `round_robin` is set (the weights must then all be equal). docs/DATA.md has the details.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/rng.h"
#include "data/source.h"

namespace mslm {

enum class StoppingStrategy { FirstExhausted, AllExhausted };

struct MixtureOptions {
    uint64_t seed = 0;
    StoppingStrategy stopping = StoppingStrategy::FirstExhausted;
    bool round_robin = false;  // alternate sources in order (HF with probabilities=None)
    ReadOptions read;
};

class Mixture {
public:
    // Opens every source and reads its first document, so a missing, empty or broken source
    // fails here rather than mid-run.
    Mixture(std::vector<SourceSpec> specs, MixtureOptions opt);
    // Next document and the index of the source it came from; false when the strategy stops.
    bool next(Document& doc, int* source_index = nullptr);
    const std::vector<SourceSpec>& specs() const { return specs_; }
    int64_t documents_from(int source) const { return counts_[static_cast<size_t>(source)]; }
    int64_t skipped() const;  // over all sources

private:
    std::vector<SourceSpec> specs_;
    MixtureOptions opt_;
    std::vector<std::unique_ptr<DocumentReader>> readers_;
    std::vector<int64_t> counts_;
    std::vector<bool> exhausted_once_;
    std::vector<double> cumulative_;  // normalised cumulative weights
    std::vector<Document> ahead_;     // each source's next document: one look-ahead, as HF keeps,
                                      // tells that a source is exhausted when its last is taken
    int64_t skipped_restarted_ = 0;   // skips counted by readers replaced on a restart
    Rng rng_;
    int64_t step_ = 0;
    bool done_ = false;
};

}  // namespace mslm
