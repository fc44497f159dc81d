#include "data/mixture.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace mslm {

Mixture::Mixture(std::vector<SourceSpec> specs, MixtureOptions opt)
    : specs_(std::move(specs)), opt_(opt), rng_(opt.seed) {
    MSLM_CHECK(!specs_.empty(), "mixture: no sources");
    double total = 0;
    for (const SourceSpec& s : specs_) {
        MSLM_CHECK(std::isfinite(s.weight) && s.weight > 0,
                   "mixture: source '{}' has weight {}; weights must be > 0",
                   s.name.empty() ? s.path : s.name, s.weight);
        if (opt_.round_robin) {
            MSLM_CHECK(s.weight == specs_[0].weight,
                       "mixture: round robin takes no weights, but source '{}' has weight {} and '{}' {}",
                       s.name.empty() ? s.path : s.name, s.weight,
                       specs_[0].name.empty() ? specs_[0].path : specs_[0].name, specs_[0].weight);
        }
        total += s.weight;
    }
    double sum = 0;
    for (const SourceSpec& s : specs_) {
        sum += s.weight;
        cumulative_.push_back(sum / total);
    }
    cumulative_.back() = 1.0;  // no gap above the last bucket from rounding

    const size_t n = specs_.size();
    counts_.assign(n, 0);
    exhausted_once_.assign(n, false);
    ahead_.resize(n);
    for (size_t i = 0; i < n; ++i) {
        readers_.push_back(open_source(specs_[i], opt_.read));
        // A source with no documents throws from next(); false cannot happen, but stay safe.
        MSLM_CHECK(readers_[i]->next(ahead_[i]), "{}: no documents", specs_[i].path);
    }
}

bool Mixture::next(Document& doc, int* source_index) {
    if (done_) return false;
    const size_t n = specs_.size();
    size_t i;
    if (opt_.round_robin) {
        i = static_cast<size_t>(step_ % static_cast<int64_t>(n));
    } else {
        const double u = rng_.uniform();  // [0, 1): the bucket whose cumulative weight first exceeds it
        i = static_cast<size_t>(std::upper_bound(cumulative_.begin(), cumulative_.end(), u) -
                                cumulative_.begin());
    }
    ++step_;
    doc = std::move(ahead_[i]);
    ++counts_[i];
    if (source_index) *source_index = static_cast<int>(i);

    if (!readers_[i]->next(ahead_[i])) {
        // The document just taken was this source's last: HF marks it exhausted here and, unless
        // the strategy stops, restarts it from its beginning.
        exhausted_once_[i] = true;
        const bool all =
            std::all_of(exhausted_once_.begin(), exhausted_once_.end(), [](bool e) { return e; });
        done_ = opt_.stopping == StoppingStrategy::FirstExhausted || all;
        if (!done_) {
            skipped_restarted_ += readers_[i]->skipped();
            readers_[i] = open_source(specs_[i], opt_.read);
            MSLM_CHECK(readers_[i]->next(ahead_[i]), "{}: no documents on restart", specs_[i].path);
        }
    }
    return true;
}

int64_t Mixture::skipped() const {
    int64_t total = skipped_restarted_;
    for (const auto& r : readers_) total += r->skipped();
    return total;
}

}  // namespace mslm
