#include "generate/processors.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>

#include "core/error.h"

namespace mslm {

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

float max_logit(std::span<const float> logits) {
    float m = kNegInf;
    for (float x : logits) m = std::max(m, x);
    return m;
}

// log Σ exp(x − m) over the unfiltered logits (−inf ones add 0; skipping them keeps the warpers
// after top_k cheap).
double log_sum_exp_shifted(std::span<const float> logits, double m) {
    double sum = 0;
    for (float x : logits) {
        if (x > kNegInf) sum += std::exp(x - m);
    }
    return std::log(sum);
}

// log softmax in double; −inf stays −inf. A row that is all −inf has no distribution: all −inf.
std::vector<double> log_softmax(std::span<const float> logits) {
    const double m = max_logit(logits);
    std::vector<double> out(logits.size(), -std::numeric_limits<double>::infinity());
    if (m == -std::numeric_limits<double>::infinity()) return out;
    const double log_sum = log_sum_exp_shifted(logits, m);
    for (size_t i = 0; i < logits.size(); ++i) {
        if (logits[i] > kNegInf) out[i] = logits[i] - m - log_sum;
    }
    return out;
}

// The k-th largest logit (1-based; k is clamped to [1, size]).
float kth_largest(std::span<const float> logits, int64_t k) {
    k = std::clamp<int64_t>(k, 1, static_cast<int64_t>(logits.size()));
    if (k * 16 <= static_cast<int64_t>(logits.size())) {  // a heap of k: one compare for most logits
        std::vector<float> top(static_cast<size_t>(k));
        std::partial_sort_copy(logits.begin(), logits.end(), top.begin(), top.end(), std::greater<float>());
        return top.back();
    }
    std::vector<float> v(logits.begin(), logits.end());
    std::nth_element(v.begin(), v.begin() + (k - 1), v.end(), std::greater<float>());
    return v[k - 1];
}

// The tokens not yet filtered (finite logit). Filtered tokens have probability 0: they come first
// in transformers' ascending order of top_p and last in typical_p's, and change neither the
// cumulative sums nor the result, so the warpers leave them out.
std::vector<int32_t> unfiltered(std::span<const float> logits) {
    std::vector<int32_t> ids;
    for (size_t i = 0; i < logits.size(); ++i) {
        if (logits[i] > kNegInf) ids.push_back(static_cast<int32_t>(i));
    }
    return ids;
}

// A float's bits as an unsigned integer with the same order (−0 counts as +0).
uint32_t ordered_bits(float x) {
    const uint32_t u = std::bit_cast<uint32_t>(x + 0.0f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Calls visit(j, ids[j]) for j = 0, 1, ... with ids in the order `before` (a strict total order)
// until visit returns false. Only the visited part is sorted, in chunks of doubling size, so a walk
// that stops after m tokens costs O(n log m) rather than a full sort (a chunk of at least half of
// what is left sorts the rest). On return ids holds the visited tokens in order, then the others.
template <typename T, typename Before, typename Visit>
void walk_sorted(std::vector<T>& ids, Before before, Visit visit) {
    for (size_t begin = 0, chunk = 64; begin < ids.size(); begin += chunk, chunk *= 2) {
        if (2 * chunk >= ids.size() - begin) chunk = ids.size() - begin;
        const size_t end = begin + chunk;
        if (end == ids.size()) {
            std::sort(ids.begin() + begin, ids.end(), before);
        } else {
            std::partial_sort(ids.begin() + begin, ids.begin() + end, ids.end(), before);
        }
        for (size_t j = begin; j < end; ++j) {
            if (!visit(j, ids[j])) return;
        }
    }
}

// Epsilon and eta sampling: remove p < cutoff, except the min_tokens_to_keep largest logits (and
// their ties).
void remove_below(std::span<float> logits, const std::vector<double>& p, double cutoff,
                  int64_t min_tokens_to_keep) {
    const float kth = kth_largest(logits, min_tokens_to_keep);
    for (size_t i = 0; i < logits.size(); ++i) {
        if (p[i] < cutoff && logits[i] < kth) logits[i] = kNegInf;
    }
}

}  // namespace

std::vector<double> softmax(std::span<const float> logits) {
    const double m = max_logit(logits);
    std::vector<double> p(logits.size(), 0.0);
    if (m == -std::numeric_limits<double>::infinity()) return p;
    double sum = 0;
    for (size_t i = 0; i < logits.size(); ++i) {
        if (logits[i] > kNegInf) sum += p[i] = std::exp(logits[i] - m);
    }
    for (double& x : p) x /= sum;
    return p;
}

void apply_temperature(std::span<float> logits, double temperature) {
    const float t = static_cast<float>(temperature);  // torch divides by the scalar in float32
    for (float& x : logits) x /= t;
}

void apply_top_k(std::span<float> logits, int64_t top_k, int64_t min_tokens_to_keep) {
    const float kth = kth_largest(logits, std::max(top_k, min_tokens_to_keep));
    for (float& x : logits) {
        if (x < kth) x = kNegInf;
    }
}

void apply_top_p(std::span<float> logits, double top_p, int64_t min_tokens_to_keep) {
    const std::vector<double> p = softmax(logits);
    // transformers removes, in ascending order, the tokens whose cumulative probability is
    // <= 1 − top_p. That cumulative sum is 1 − (the mass of the more likely tokens), so walking in
    // descending order a token stays while the mass before it is < top_p, and every later one
    // goes. Ties: the higher id first, i.e. transformers' order under a stable ascending sort.
    // The walk sorts (logit, id) packed in one integer: no indirection in the comparisons.
    std::vector<uint64_t> keys;
    for (size_t i = 0; i < logits.size(); ++i) {
        if (logits[i] > kNegInf) keys.push_back(uint64_t{ordered_bits(logits[i])} << 32 | i);
    }
    const size_t keep = static_cast<size_t>(std::max<int64_t>(min_tokens_to_keep, 0));
    double before = 0;
    size_t kept = 0;
    walk_sorted(keys, std::greater<uint64_t>(), [&](size_t j, uint64_t key) {
        if (j >= keep && before >= top_p) return false;
        before += p[static_cast<uint32_t>(key)];
        kept = j + 1;
        return true;
    });
    for (size_t j = kept; j < keys.size(); ++j) logits[static_cast<uint32_t>(keys[j])] = kNegInf;
}

void apply_min_p(std::span<float> logits, double min_p, int64_t min_tokens_to_keep) {
    const std::vector<double> p = softmax(logits);
    const double cutoff = min_p * *std::max_element(p.begin(), p.end());
    // The min_tokens_to_keep most likely tokens, taken by logit (ties: lower id first).
    const int64_t keep = std::min<int64_t>(min_tokens_to_keep, static_cast<int64_t>(logits.size()));
    std::vector<int32_t> order(logits.size());
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + keep, order.end(), [&](int32_t a, int32_t b) {
        return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    });
    std::vector<bool> kept(logits.size(), false);
    for (int64_t j = 0; j < keep; ++j) kept[order[j]] = true;
    for (size_t i = 0; i < logits.size(); ++i) {
        if (p[i] < cutoff && !kept[i]) logits[i] = kNegInf;
    }
}

void apply_typical_p(std::span<float> logits, double mass, int64_t min_tokens_to_keep) {
    const std::vector<double> logp = log_softmax(logits);
    double entropy = 0;
    for (double lp : logp) {
        if (lp > -std::numeric_limits<double>::infinity()) entropy -= lp * std::exp(lp);  // 0·log 0 = 0
    }
    std::vector<double> shifted(logits.size());  // |−log p − H|
    for (size_t i = 0; i < logits.size(); ++i) shifted[i] = std::abs(-logp[i] - entropy);
    // Sorted by ascending shifted score, the first position where the cumulative mass reaches
    // `mass` (the last one if it never does) sets the cutoff; the first min_tokens_to_keep stay.
    std::vector<int32_t> ids = unfiltered(logits);
    if (ids.empty()) return;
    const auto more_typical = [&](int32_t a, int32_t b) {
        return shifted[a] < shifted[b] || (shifted[a] == shifted[b] && a < b);
    };
    const size_t keep = static_cast<size_t>(std::max<int64_t>(min_tokens_to_keep, 0));
    size_t last = ids.size() - 1;
    bool reached = false;
    double cum = 0;
    walk_sorted(ids, more_typical, [&](size_t j, int32_t id) {
        cum += std::exp(logp[id]);
        if (!reached && cum >= mass) {
            reached = true;
            last = j;
        }
        return !reached || j + 1 < keep;
    });
    const double cutoff = shifted[ids[last]];
    for (size_t j = keep; j < ids.size(); ++j) {
        if (shifted[ids[j]] > cutoff) logits[ids[j]] = kNegInf;
    }
}

void apply_epsilon_cutoff(std::span<float> logits, double epsilon, int64_t min_tokens_to_keep) {
    remove_below(logits, softmax(logits), epsilon, min_tokens_to_keep);
}

void apply_eta_cutoff(std::span<float> logits, double epsilon, int64_t min_tokens_to_keep) {
    const std::vector<double> logp = log_softmax(logits);
    std::vector<double> p(logp.size());
    double entropy = 0;
    for (size_t i = 0; i < logp.size(); ++i) {
        p[i] = std::exp(logp[i]);
        if (p[i] > 0) entropy -= p[i] * logp[i];
    }
    const double eps = static_cast<float>(epsilon);
    remove_below(logits, p, std::min(eps, std::sqrt(eps) * std::exp(-entropy)), min_tokens_to_keep);
}

void apply_repetition_penalty(std::span<float> logits, std::span<const int32_t> ids, double penalty) {
    const float f = static_cast<float>(penalty);
    std::vector<int32_t> seen(ids.begin(), ids.end());
    std::sort(seen.begin(), seen.end());
    seen.erase(std::unique(seen.begin(), seen.end()), seen.end());
    for (int32_t id : seen) {
        if (id < 0 || id >= static_cast<int64_t>(logits.size())) continue;
        float& x = logits[id];
        x = x < 0 ? x * f : x / f;
    }
}

void apply_frequency_presence_penalty(std::span<float> logits, std::span<const int32_t> generated,
                                      double frequency, double presence) {
    std::vector<int32_t> sorted(generated.begin(), generated.end());
    std::sort(sorted.begin(), sorted.end());
    for (size_t i = 0; i < sorted.size();) {
        size_t j = i;
        while (j < sorted.size() && sorted[j] == sorted[i]) ++j;
        const int32_t id = sorted[i];
        if (id >= 0 && id < static_cast<int64_t>(logits.size())) {
            logits[id] = static_cast<float>(logits[id] - frequency * static_cast<double>(j - i) - presence);
        }
        i = j;
    }
}

void apply_no_repeat_ngram(std::span<float> logits, std::span<const int32_t> ids, int64_t ngram_size) {
    const int64_t len = static_cast<int64_t>(ids.size());
    if (ngram_size <= 0 || len < ngram_size) return;
    const auto prefix = ids.subspan(len - ngram_size + 1);  // the n − 1 ids a new token would extend
    for (int64_t s = 0; s + ngram_size <= len; ++s) {
        if (!std::equal(prefix.begin(), prefix.end(), ids.begin() + s)) continue;
        const int32_t banned = ids[s + ngram_size - 1];
        if (banned >= 0 && banned < static_cast<int64_t>(logits.size())) logits[banned] = kNegInf;
    }
}

void apply_sequence_bias(std::span<float> logits, std::span<const int32_t> ids,
                         std::span<const SequenceBias> biases) {
    const int64_t vocab = static_cast<int64_t>(logits.size());
    for (const SequenceBias& b : biases) {
        MSLM_CHECK(!b.ids.empty(), "sequence_bias: an entry has no token ids");
        for (int32_t id : b.ids) {
            MSLM_CHECK(id >= 0 && id < vocab,
                       "sequence_bias: token id {} is outside the vocabulary (size {})", id, vocab);
        }
    }
    // transformers adds the single-token biases first, then the longer ones grouped by prefix
    // length (groups in order of first appearance); summing in that order gives its float results.
    std::map<int32_t, float> add;
    for (const SequenceBias& b : biases) {
        if (b.ids.size() == 1) add[b.ids[0]] += b.bias;
    }
    std::vector<size_t> prefix_lengths;
    for (const SequenceBias& b : biases) {
        const size_t n = b.ids.size() - 1;
        if (n > 0 && std::find(prefix_lengths.begin(), prefix_lengths.end(), n) == prefix_lengths.end()) {
            prefix_lengths.push_back(n);
        }
    }
    for (size_t n : prefix_lengths) {
        if (n > ids.size()) continue;
        for (const SequenceBias& b : biases) {
            if (b.ids.size() - 1 == n && std::equal(b.ids.begin(), b.ids.end() - 1, ids.end() - n)) {
                add[b.ids.back()] += b.bias;
            }
        }
    }
    for (const auto& [id, bias] : add) logits[id] += bias;
}

std::vector<SequenceBias> bad_words_bias(const std::vector<std::vector<int32_t>>& bad_words_ids,
                                         std::span<const int32_t> eos_token_id) {
    std::vector<SequenceBias> out;
    for (const auto& seq : bad_words_ids) {
        const bool is_eos = seq.size() == 1 &&
                            std::find(eos_token_id.begin(), eos_token_id.end(), seq[0]) != eos_token_id.end();
        if (!is_eos) out.push_back({seq, kNegInf});
    }
    return out;
}

void apply_min_new_tokens(std::span<float> logits, int64_t generated, int64_t min_new_tokens,
                          std::span<const int32_t> eos_token_id) {
    if (generated >= min_new_tokens) return;
    for (int32_t id : eos_token_id) {
        if (id >= 0 && id < static_cast<int64_t>(logits.size())) logits[id] = kNegInf;
    }
}

void apply_log_softmax(std::span<float> logits) {
    const std::vector<double> logp = log_softmax(logits);
    for (size_t i = 0; i < logits.size(); ++i) logits[i] = static_cast<float>(logp[i]);
}

LogitsProcessorChain::LogitsProcessorChain(const GenerationConfig& cfg, int64_t vocab_size)
    : vocab_size_(vocab_size) {
    cfg.validate();
    MSLM_CHECK(vocab_size > 0, "logits processors: vocab_size = {}: must be positive", vocab_size);
    auto check_ids = [&](const std::vector<int32_t>& ids, const char* field) {
        for (int32_t id : ids) {
            MSLM_CHECK(id < vocab_size, "{}: token id {} is outside the vocabulary (size {})", field, id,
                       vocab_size);
        }
    };
    for (const SequenceBias& b : cfg.sequence_bias) check_ids(b.ids, "sequence_bias");
    for (const auto& w : cfg.bad_words_ids) check_ids(w, "bad_words_ids");

    auto add = [&](const char* name, Fn fn) { steps_.push_back({name, std::move(fn)}); };
    if (!cfg.sequence_bias.empty()) {
        add("SequenceBiasLogitsProcessor",
            [b = cfg.sequence_bias](auto logits, auto ids, int64_t) { apply_sequence_bias(logits, ids, b); });
    }
    if (cfg.repetition_penalty != 1.0) {
        add("RepetitionPenaltyLogitsProcessor", [p = cfg.repetition_penalty](auto logits, auto ids, int64_t) {
            apply_repetition_penalty(logits, ids, p);
        });
    }
    if (cfg.frequency_penalty != 0.0 || cfg.presence_penalty != 0.0) {
        add("FrequencyPresencePenalty",
            [f = cfg.frequency_penalty, p = cfg.presence_penalty](auto logits, auto ids, int64_t prompt_len) {
                apply_frequency_presence_penalty(logits, ids.subspan(prompt_len), f, p);
            });
    }
    if (cfg.no_repeat_ngram_size > 0) {
        add("NoRepeatNGramLogitsProcessor", [n = cfg.no_repeat_ngram_size](auto logits, auto ids, int64_t) {
            apply_no_repeat_ngram(logits, ids, n);
        });
    }
    if (auto bad = bad_words_bias(cfg.bad_words_ids, cfg.eos_token_id); !bad.empty()) {
        add("NoBadWordsLogitsProcessor",
            [b = std::move(bad)](auto logits, auto ids, int64_t) { apply_sequence_bias(logits, ids, b); });
    }
    // transformers masks EOS only when an EOS id is set. With min_new_tokens it adds both
    // MinLength (prompt + min_new_tokens) and MinNewTokens, which mask at the same steps.
    const bool min_new = cfg.min_new_tokens.has_value();
    if (!cfg.eos_token_id.empty() && (min_new ? *cfg.min_new_tokens > 0 : cfg.min_length > 0)) {
        add(min_new ? "MinNewTokensLengthLogitsProcessor" : "MinLengthLogitsProcessor",
            [cfg, eos = cfg.eos_token_id](auto logits, auto ids, int64_t prompt_len) {
                const int64_t generated = static_cast<int64_t>(ids.size()) - prompt_len;
                apply_min_new_tokens(logits, generated, cfg.min_new_tokens_for(prompt_len), eos);
            });
    }
    if (cfg.do_sample) {
        const int64_t keep =
            cfg.num_beams > 1
                ? (cfg.eos_token_id.empty() ? 2 : static_cast<int64_t>(cfg.eos_token_id.size()) + 1)
                : 1;
        if (cfg.temperature != 1.0) {
            add("TemperatureLogitsWarper",
                [t = cfg.temperature](auto logits, auto, int64_t) { apply_temperature(logits, t); });
        }
        if (cfg.top_k != 0) {
            add("TopKLogitsWarper",
                [k = cfg.top_k, keep](auto logits, auto, int64_t) { apply_top_k(logits, k, keep); });
        }
        if (cfg.top_p < 1.0) {
            add("TopPLogitsWarper",
                [p = cfg.top_p, keep](auto logits, auto, int64_t) { apply_top_p(logits, p, keep); });
        }
        if (cfg.min_p) {
            add("MinPLogitsWarper",
                [p = *cfg.min_p, keep](auto logits, auto, int64_t) { apply_min_p(logits, p, keep); });
        }
        if (cfg.typical_p < 1.0) {
            add("TypicalLogitsWarper",
                [m = cfg.typical_p, keep](auto logits, auto, int64_t) { apply_typical_p(logits, m, keep); });
        }
        if (cfg.epsilon_cutoff > 0.0) {
            add("EpsilonLogitsWarper", [e = cfg.epsilon_cutoff, keep](auto logits, auto, int64_t) {
                apply_epsilon_cutoff(logits, e, keep);
            });
        }
        if (cfg.eta_cutoff > 0.0) {
            add("EtaLogitsWarper", [e = cfg.eta_cutoff, keep](auto logits, auto, int64_t) {
                apply_eta_cutoff(logits, e, keep);
            });
        }
    }
    if (cfg.renormalize_logits) {
        add("LogitNormalization", [](auto logits, auto, int64_t) { apply_log_softmax(logits); });
    }
}

void LogitsProcessorChain::apply(std::span<float> logits, std::span<const int32_t> ids,
                                 int64_t prompt_len) const {
    MSLM_CHECK(static_cast<int64_t>(logits.size()) == vocab_size_,
               "logits processors: a row of {} logits, expected {}", logits.size(), vocab_size_);
    MSLM_CHECK(prompt_len >= 0 && prompt_len <= static_cast<int64_t>(ids.size()),
               "logits processors: prompt_len {} for a sequence of {} ids", prompt_len, ids.size());
    for (const Step& s : steps_) s.fn(logits, ids, prompt_len);
}

std::vector<std::string> LogitsProcessorChain::names() const {
    std::vector<std::string> out;
    for (const Step& s : steps_) out.push_back(s.name);
    return out;
}

int32_t argmax_token(std::span<const float> logits) {
    MSLM_CHECK(!logits.empty(), "argmax over an empty row");
    return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

double log_prob_of(std::span<const float> logits, int32_t token) {
    float mx = -INFINITY;
    for (float x : logits) mx = std::max(mx, x);
    double sum = 0;
    for (float x : logits) sum += std::exp(static_cast<double>(x) - mx);
    return static_cast<double>(logits[static_cast<size_t>(token)]) - mx - std::log(sum);
}

int32_t sample_token(std::span<const float> logits, Rng& rng) {
    for (float x : logits) {
        MSLM_CHECK(!std::isnan(x) && x != std::numeric_limits<float>::infinity(), "sampling: a logit is {}",
                   x);
    }
    const double m = max_logit(logits);
    MSLM_CHECK(m > -std::numeric_limits<double>::infinity(), "sampling: every token is filtered out");
    // The running sum walks the same exp values in the same order as the total, so it ends exactly
    // at total; tokens with weight 0 are never returned.
    std::vector<double> e(logits.size(), 0.0);
    double total = 0;
    for (size_t i = 0; i < logits.size(); ++i) {
        if (logits[i] > kNegInf) total += e[i] = std::exp(logits[i] - m);
    }
    const double target = rng.uniform() * total;
    double acc = 0;
    int32_t last = 0;
    for (size_t i = 0; i < logits.size(); ++i) {
        if (e[i] == 0) continue;
        acc += e[i];
        last = static_cast<int32_t>(i);
        if (target < acc) return last;
    }
    return last;  // target rounded up to total
}

}  // namespace mslm
