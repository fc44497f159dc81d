#include "generate/generate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <deque>
#include <numeric>
#include <optional>

#include "core/error.h"
#include "core/rng.h"
#include "generate/processors.h"
#include "tokenizer/tokenizer.h"

namespace mslm {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// log_softmax of one row as torch computes it in float32: x − max − log Σ exp(x − max).
void log_softmax_row(std::span<float> row) {
    float mx = -INFINITY;
    for (float x : row) mx = std::max(mx, x);
    if (mx == -INFINITY) return;
    double sum = 0;
    for (float x : row) sum += std::exp(static_cast<double>(x - mx));
    const auto log_sum = static_cast<float>(std::log(sum));
    for (float& x : row) x = x - mx - log_sum;
}

// Indices of the k largest values, largest first; ties go to the lower index.
std::vector<int64_t> top_k_indices(std::span<const float> values, int64_t k) {
    std::vector<int64_t> idx(values.size());
    std::iota(idx.begin(), idx.end(), 0);
    auto better = [&](int64_t a, int64_t b) { return values[a] > values[b] || (values[a] == values[b] && a < b); };
    k = std::min<int64_t>(k, static_cast<int64_t>(idx.size()));
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), better);
    idx.resize(k);
    return idx;
}

// The text side of one sequence: stream deltas for callbacks and stop strings.
struct SequenceText {
    std::optional<StreamDecoder> decoder;
    std::string push(int32_t id) { return decoder ? decoder->push(id) : std::string(); }
};

SequenceText make_text(const GenerateHooks& hooks) {
    SequenceText t;
    if (hooks.tokenizer) t.decoder.emplace(*hooks.tokenizer, true);
    return t;
}

std::string prompt_text(const GenerateHooks& hooks, const std::vector<int32_t>& prompt) {
    return hooks.tokenizer ? hooks.tokenizer->decode(prompt) : std::string();
}

void check_prompts(const CausalLM& lm, const std::vector<std::vector<int32_t>>& prompts) {
    MSLM_CHECK(!prompts.empty(), "generate: no prompt");
    for (size_t p = 0; p < prompts.size(); ++p) {
        MSLM_CHECK(!prompts[p].empty(), "generate: prompt {} is empty", p);
        for (int32_t id : prompts[p])
            MSLM_CHECK(id >= 0 && id < lm.vocab_size(), "generate: prompt {} has token id {} outside the vocabulary of {}",
                       p, id, lm.vocab_size());
    }
}

// Room for prompt + new tokens, checked against the model.
int64_t sequence_capacity(const CausalLM& lm, int64_t prompt_len, int64_t max_new) {
    const int64_t need = prompt_len + max_new;
    MSLM_CHECK(need <= lm.max_seq_len(),
               "generate: a prompt of {} tokens plus {} new tokens exceeds the model's max_seq_len {}", prompt_len,
               max_new, lm.max_seq_len());
    return need;
}

// ---------------------------------------------------------------------------------------------
// Greedy and sampling: every sequence in its own slot, all active slots stepped together.
GenerationResult run_greedy_or_sample(CausalLM& lm, const std::vector<std::vector<int32_t>>& prompts,
                                      const GenerationConfig& cfg, const GenerateHooks& hooks, bool sample) {
    const int64_t V = lm.vocab_size();
    const int64_t nrs = cfg.num_return_sequences;
    const auto n_seq = static_cast<int64_t>(prompts.size()) * nrs;
    LogitsProcessorChain chain(cfg, V);
    int64_t capacity = 0;
    for (const auto& p : prompts) {
        auto n = static_cast<int64_t>(p.size());
        capacity = std::max(capacity, sequence_capacity(lm, n, cfg.max_new_tokens_for(n)));
    }

    GenerationResult res;
    res.strategy = sample ? Strategy::Sample : Strategy::Greedy;
    res.sequences.resize(n_seq);
    struct Live {
        std::vector<int32_t> ids;  // prompt + generated
        int64_t prompt_len;
        StoppingCriteria stop;
        SequenceText text;
        Rng rng;
        bool active = true;
    };
    std::vector<Live> live;
    live.reserve(n_seq);
    const uint64_t seed = cfg.seed.value_or(hooks.default_seed);
    for (int64_t s = 0; s < n_seq; ++s) {
        const auto& prompt = prompts[s / nrs];
        const auto plen = static_cast<int64_t>(prompt.size());
        // One generator per sequence: the output of a sequence does not depend on its batch.
        live.push_back(Live{prompt, plen, StoppingCriteria(cfg, plen, prompt_text(hooks, prompt)), make_text(hooks),
                            Rng(seed + 0x9E3779B97F4A7C15ull * static_cast<uint64_t>(s))});
        res.sequences[s].prompt_index = s / nrs;
    }

    std::vector<float> logits(static_cast<size_t>(n_seq * V)), stepped;
    auto t0 = Clock::now();
    // A conversation's next turn: slot 0 already holds a prefix of the prompt.
    SlotCache* cache = n_seq == 1 ? hooks.cache : nullptr;
    if (hooks.cache && !cache) hooks.cache->valid = false;
    const bool reuse = cache && cache->valid && capacity <= cache->capacity &&
                       cache->tokens.size() < prompts[0].size() &&
                       std::equal(cache->tokens.begin(), cache->tokens.end(), prompts[0].begin());
    if (cache) cache->valid = false;  // until this call returns normally
    if (reuse) {
        const auto held = static_cast<int64_t>(cache->tokens.size());
        const std::span<const int32_t> rest(prompts[0].data() + held, prompts[0].size() - static_cast<size_t>(held));
        lm.prefill(0, rest, logits.data(), nullptr);
        res.prompt_tokens = static_cast<int64_t>(rest.size());
        res.reused_prompt_tokens = held;
        capacity = cache->capacity;
    } else {
        // With a cache, room for the whole conversation: the model's max_seq_len, so that later
        // turns fit the slot as started.
        if (cache) capacity = std::max(capacity, lm.max_seq_len());
        lm.start(n_seq, capacity);
        for (size_t p = 0; p < prompts.size(); ++p) {
            const int64_t first = static_cast<int64_t>(p) * nrs;
            lm.prefill(first, prompts[p], logits.data() + first * V, nullptr);
            res.prompt_tokens += static_cast<int64_t>(prompts[p].size());
            for (int64_t r = 1; r < nrs; ++r) {
                lm.copy(first, first + r);
                std::copy_n(logits.data() + first * V, V, logits.data() + (first + r) * V);
            }
        }
    }
    res.prefill_seconds = seconds_since(t0);

    auto t1 = Clock::now();
    std::vector<int64_t> slots;
    std::vector<int32_t> tokens;
    // Greedy without logits processors needs only each row's pick: the model makes it
    // (CausalLM::step_greedy; on a GPU, on the device) and the logits stay where they are. It takes
    // up to kGreedyChunk steps at once (CausalLM::step_greedy_n: on a GPU one device-side loop),
    // stopping early at an EOS token; the picks wait in `queued` and are taken a step at a time as
    // below. A sequence that stops on the host (a stop string, max_time, the hook) with picks still
    // queued was stepped past its end: its slot no longer matches its tokens (`overshot`).
    const bool picks_only = !sample && chain.names().empty();
    std::vector<GreedyPick> stepped_picks;
    std::vector<std::deque<GreedyPick>> queued(static_cast<size_t>(n_seq));
    bool overshot = false;
    bool picked = false;  // queued holds the rows of the last steps (else: the logits)
    while (true) {
        slots.clear();
        tokens.clear();
        bool more = false;  // the active sequences have picks queued: no step this time
        for (int64_t s = 0; s < n_seq; ++s) {
            Live& q = live[s];
            if (!q.active) continue;
            GreedyPick pick;
            auto& mine = queued[static_cast<size_t>(s)];
            if (picked) {
                pick = mine.front();
                mine.pop_front();
            } else {
                std::span<float> row(logits.data() + s * V, static_cast<size_t>(V));
                chain.apply(row, q.ids, q.prompt_len);
                pick.token = sample ? sample_token(row, q.rng) : argmax_token(row);
                pick.logit = row[pick.token];
                pick.log_prob = log_prob_of(row, pick.token);
            }
            const int32_t tok = pick.token;
            GeneratedSequence& out = res.sequences[s];
            out.tokens.push_back(tok);
            out.token_scores.push_back(pick.logit);
            out.score += pick.log_prob;
            q.ids.push_back(tok);
            std::string delta = q.text.push(tok);
            const StopReason why = q.stop.update(tok, delta);
            if (hooks.on_token && !hooks.on_token(s, tok, delta)) {
                res.interrupted = true;
                overshot = overshot || !mine.empty();
                break;
            }
            if (why != StopReason::None) {
                out.stop_reason = why;
                q.active = false;
                overshot = overshot || !mine.empty();
                mine.clear();
                continue;
            }
            if (!mine.empty()) {
                more = true;
                continue;
            }
            slots.push_back(s);
            tokens.push_back(tok);
        }
        if (res.interrupted) break;
        if (more) continue;
        if (slots.empty()) break;
        const auto k = static_cast<int64_t>(slots.size());
        if (picks_only) {
            // As many steps as every listed sequence may still take (max_new_tokens), one a call with
            // max_time (its clock is read a token at a time).
            int64_t n = cfg.max_time ? 1 : kGreedyChunk;
            for (int64_t s : slots) {
                const StoppingCriteria& st = live[static_cast<size_t>(s)].stop;
                n = std::min(n, std::max<int64_t>(1, st.max_new_tokens() - st.generated()));
            }
            stepped_picks.resize(static_cast<size_t>(n * k));
            const int64_t ran = lm.step_greedy_n(slots, tokens, n, cfg.eos_token_id, stepped_picks.data());
            for (int64_t j = 0; j < ran; ++j)
                for (int64_t i = 0; i < k; ++i)
                    queued[static_cast<size_t>(slots[i])].push_back(
                        stepped_picks[static_cast<size_t>(j * k + i)]);
            res.generated_tokens += (ran - 1) * k;
            picked = true;
        } else {
            stepped.resize(static_cast<size_t>(k * V));
            lm.step(slots, tokens, stepped.data(), nullptr);
            for (int64_t i = 0; i < k; ++i)
                std::copy_n(stepped.data() + i * V, V, logits.data() + slots[i] * V);
        }
        res.generated_tokens += k;
    }
    res.decode_seconds = seconds_since(t1);
    if (cache && !overshot) {  // slot 0 was fed the prompt and every generated token but the last
        cache->tokens.assign(live[0].ids.begin(), live[0].ids.end() - (res.sequences[0].tokens.empty() ? 0 : 1));
        cache->capacity = capacity;
        cache->valid = true;
    }
    return res;
}

// ---------------------------------------------------------------------------------------------
// Beam search as transformers (v5) runs it, for one prompt. Scores stay float32 and the −1e9
// markers are added the way transformers adds them, so sequences and their scores match.
constexpr float kMasked = -1.0e9f;

struct Beam {
    std::vector<int32_t> tokens;  // new tokens
    float score = 0;              // sum of processed log-probabilities
    StoppingCriteria stop;
    SequenceText text;
    StopReason last_stop = StopReason::None;
};

struct Finished {
    std::vector<int32_t> tokens;
    float score = kMasked;
    bool done = false;
    StopReason reason = StopReason::None;
};

void run_beam_search(CausalLM& lm, const std::vector<int32_t>& prompt, int64_t prompt_index,
                     const GenerationConfig& cfg, const GenerateHooks& hooks, LogitsProcessorChain& chain, Rng& rng,
                     GenerationResult& res) {
    const int64_t V = lm.vocab_size();
    const int64_t nb = cfg.num_beams;
    const auto plen = static_cast<int64_t>(prompt.size());
    const int64_t max_new = cfg.max_new_tokens_for(plen);
    const int64_t max_length = sequence_capacity(lm, plen, max_new);
    const auto n_eos = static_cast<int64_t>(cfg.eos_token_id.size());
    const int64_t K = std::max<int64_t>(2, 1 + n_eos) * nb;  // candidates kept per step
    MSLM_CHECK(K <= nb * V, "beam search: {} beams need a vocabulary of at least {} tokens", nb, K / nb);
    const bool sample = cfg.do_sample;

    auto t0 = Clock::now();
    lm.start(nb, max_length);
    std::vector<float> logits(static_cast<size_t>(nb * V));
    lm.prefill(0, prompt, logits.data(), nullptr);
    res.prompt_tokens += plen;
    for (int64_t b = 1; b < nb; ++b) {
        lm.copy(0, b);
        std::copy_n(logits.data(), V, logits.data() + b * V);
    }
    res.prefill_seconds += seconds_since(t0);
    auto t1 = Clock::now();

    const std::string context = prompt_text(hooks, prompt);
    std::vector<Beam> running;
    for (int64_t b = 0; b < nb; ++b)
        running.push_back(Beam{{}, b == 0 ? 0.0f : kMasked, StoppingCriteria(cfg, plen, context), make_text(hooks)});
    std::vector<Finished> finished(static_cast<size_t>(nb));
    bool improvable = true;  // transformers' is_early_stop_heuristic_unsatisfied
    int64_t cur_len = plen;

    std::vector<float> acc(static_cast<size_t>(nb * V));
    std::vector<int32_t> ids;
    struct Candidate {
        int64_t beam;
        int32_t token;
        float log_prob;
        bool hits;
        Beam next;
    };
    std::vector<Candidate> cand;
    while (true) {
        // Accumulated log-probabilities of every (beam, token) continuation.
        for (int64_t b = 0; b < nb; ++b) {
            std::span<float> row(logits.data() + b * V, static_cast<size_t>(V));
            log_softmax_row(row);
            ids.assign(prompt.begin(), prompt.end());
            ids.insert(ids.end(), running[b].tokens.begin(), running[b].tokens.end());
            chain.apply(row, ids, plen);
            for (int64_t v = 0; v < V; ++v) acc[b * V + v] = row[v] + running[b].score;
        }
        std::vector<int64_t> top;
        if (sample) {
            // K draws without replacement from softmax(acc), then ordered by score.
            std::vector<float> pool = acc;
            for (int64_t i = 0; i < K; ++i) {
                const int32_t pick = sample_token(pool, rng);
                top.push_back(pick);
                pool[pick] = -INFINITY;
            }
            std::stable_sort(top.begin(), top.end(), [&](int64_t a, int64_t b) { return acc[a] > acc[b]; });
        } else {
            top = top_k_indices(acc, K);
        }

        cand.clear();
        for (int64_t idx : top) {
            Candidate c{idx / V, static_cast<int32_t>(idx % V), acc[idx], false, running[idx / V]};
            c.next.tokens.push_back(c.token);
            std::string delta = c.next.text.push(c.token);
            c.next.last_stop = c.next.stop.update(c.token, delta);
            c.hits = c.next.last_stop != StopReason::None;
            cand.push_back(std::move(c));
        }

        // The best num_beams continuations that did not stop keep running.
        std::vector<float> running_scores(static_cast<size_t>(K));
        for (int64_t i = 0; i < K; ++i) running_scores[i] = cand[i].log_prob + (cand[i].hits ? kMasked : -0.0f);
        std::vector<int64_t> keep = top_k_indices(running_scores, nb);

        // Stopped continuations among the top num_beams enter the finished list if they beat it.
        const float denom = static_cast<float>(std::pow(static_cast<double>(cur_len + 1 - plen), cfg.length_penalty));
        const bool full = std::all_of(finished.begin(), finished.end(), [](const Finished& f) { return f.done; }) &&
                          cfg.early_stopping == EarlyStopping::NumBeamsDone;
        std::vector<float> merged(static_cast<size_t>(nb + K));
        for (int64_t j = 0; j < nb; ++j) merged[j] = finished[j].score;
        for (int64_t i = 0; i < K; ++i) {
            float s = cand[i].log_prob / denom;
            if (full) s += kMasked;
            if (!improvable) s += kMasked;
            if (!(cand[i].hits && i < nb)) s += kMasked;
            merged[nb + i] = s;
        }
        std::vector<int64_t> best = top_k_indices(merged, nb);
        std::vector<Finished> next_finished;
        for (int64_t m : best) {
            if (m < nb) {
                next_finished.push_back(finished[m]);
            } else {
                const Candidate& c = cand[m - nb];
                next_finished.push_back(Finished{c.next.tokens, merged[m], c.hits && (m - nb) < nb, c.next.last_stop});
            }
        }
        finished = std::move(next_finished);

        std::vector<Beam> next_running;
        std::vector<int64_t> src;
        for (int64_t i : keep) {
            next_running.push_back(cand[i].next);
            next_running.back().score = running_scores[i];
            src.push_back(cand[i].beam);
        }
        running = std::move(next_running);
        lm.reorder(src);
        cur_len += 1;

        // Can a running beam still beat the worst finished hypothesis?
        const int64_t best_len =
            cfg.early_stopping == EarlyStopping::Never && cfg.length_penalty > 0 ? max_length - plen : cur_len - plen;
        const float best_possible =
            running[0].score / static_cast<float>(std::pow(static_cast<double>(best_len), cfg.length_penalty));
        float worst = finished[0].score;
        for (const auto& f : finished) worst = std::min(worst, f.score);
        bool any_better = false;
        for (const auto& f : finished) any_better = any_better || best_possible > (f.done ? worst : kMasked);
        improvable = improvable && any_better;
        const bool all_done = std::all_of(finished.begin(), finished.end(), [](const Finished& f) { return f.done; });
        const bool open_beam = !(all_done && cfg.early_stopping == EarlyStopping::NumBeamsDone);
        const bool can_continue = !std::all_of(cand.begin(), cand.end(), [](const Candidate& c) { return c.hits; });
        if (!(improvable && open_beam && can_continue)) break;

        std::vector<int64_t> slots(static_cast<size_t>(nb));
        std::iota(slots.begin(), slots.end(), 0);
        std::vector<int32_t> last(static_cast<size_t>(nb));
        for (int64_t b = 0; b < nb; ++b) last[b] = running[b].tokens.back();
        lm.step(slots, last, logits.data(), nullptr);
        res.generated_tokens += nb;
    }
    for (int64_t r = 0; r < cfg.num_return_sequences; ++r) {
        GeneratedSequence out;
        out.prompt_index = prompt_index;
        out.tokens = finished[r].tokens;
        out.score = finished[r].score;
        out.stop_reason = finished[r].reason;
        res.sequences.push_back(std::move(out));
    }
    res.decode_seconds += seconds_since(t1);
}

// ---------------------------------------------------------------------------------------------
// Contrastive search (SimCTG): slot 0 holds the sequence, slots 1..k the candidates of a step.
void run_contrastive(CausalLM& lm, const std::vector<int32_t>& prompt, int64_t prompt_index,
                     const GenerationConfig& cfg, const GenerateHooks& hooks, LogitsProcessorChain& chain,
                     GenerationResult& res) {
    const int64_t V = lm.vocab_size(), D = lm.hidden_size();
    const int64_t k = cfg.top_k;
    const double alpha = cfg.penalty_alpha.value_or(0.0);
    const auto plen = static_cast<int64_t>(prompt.size());
    const int64_t max_new = cfg.max_new_tokens_for(plen);
    const int64_t capacity = sequence_capacity(lm, plen, max_new);

    auto normalize = [D](float* h) {
        double sq = 0;
        for (int64_t d = 0; d < D; ++d) sq += static_cast<double>(h[d]) * h[d];
        // F.normalize's eps: a zero vector stays zero.
        const double inv = 1.0 / std::max(std::sqrt(sq), 1e-12);
        for (int64_t d = 0; d < D; ++d) h[d] = static_cast<float>(h[d] * inv);
    };

    auto t0 = Clock::now();
    lm.start(1 + k, capacity);
    std::vector<float> logits(static_cast<size_t>(V));
    std::vector<float> context(static_cast<size_t>(capacity * D));  // normalised hidden states, (L, D)
    lm.prefill(0, prompt, logits.data(), context.data());
    for (int64_t t = 0; t < plen; ++t) normalize(context.data() + t * D);
    int64_t ctx_len = plen;
    res.prompt_tokens += plen;
    res.prefill_seconds += seconds_since(t0);
    auto t1 = Clock::now();

    GeneratedSequence out;
    out.prompt_index = prompt_index;
    std::vector<int32_t> ids = prompt;
    StoppingCriteria stop(cfg, plen, prompt_text(hooks, prompt));
    SequenceText text = make_text(hooks);
    std::vector<float> cand_logits(static_cast<size_t>(k * V)), cand_hidden(static_cast<size_t>(k * D));
    std::vector<int64_t> slots(static_cast<size_t>(k));
    std::iota(slots.begin(), slots.end(), 1);
    const int64_t sequence_index = static_cast<int64_t>(res.sequences.size());
    while (true) {
        chain.apply(logits, ids, plen);
        std::vector<double> probs = softmax(logits);
        std::vector<float> pf(probs.begin(), probs.end());  // torch's softmax is float32
        std::vector<int64_t> top = top_k_indices(pf, k);
        std::vector<int32_t> cand(top.begin(), top.end());
        for (int64_t c = 0; c < k; ++c) lm.copy(0, 1 + c);
        lm.step(slots, cand, cand_logits.data(), cand_hidden.data());
        res.generated_tokens += k;

        int64_t best = 0;
        double best_score = -INFINITY;
        for (int64_t c = 0; c < k; ++c) {
            float* h = cand_hidden.data() + c * D;
            normalize(h);
            double max_sim = -INFINITY;
            for (int64_t j = 0; j < ctx_len; ++j) {
                const float* g = context.data() + j * D;
                double dot = 0;
                for (int64_t d = 0; d < D; ++d) dot += static_cast<double>(h[d]) * g[d];
                max_sim = std::max(max_sim, dot);
            }
            const double score = (1.0 - alpha) * pf[top[c]] - alpha * max_sim;
            if (score > best_score) {
                best_score = score;
                best = c;
            }
        }
        const int32_t tok = cand[best];
        lm.copy(1 + best, 0);
        std::copy_n(cand_hidden.data() + best * D, D, context.data() + ctx_len * D);
        ++ctx_len;
        out.tokens.push_back(tok);
        out.token_scores.push_back(static_cast<float>(best_score));
        out.score += log_prob_of(logits, tok);
        ids.push_back(tok);
        std::copy_n(cand_logits.data() + best * V, V, logits.data());
        std::string delta = text.push(tok);
        const StopReason why = stop.update(tok, delta);
        if (hooks.on_token && !hooks.on_token(sequence_index, tok, delta)) {
            res.interrupted = true;
            break;
        }
        if (why != StopReason::None) {
            out.stop_reason = why;
            break;
        }
    }
    res.sequences.push_back(std::move(out));
    res.decode_seconds += seconds_since(t1);
}

}  // namespace

Strategy strategy_for(const GenerationConfig& cfg) {
    if (cfg.num_beams > 1) return cfg.do_sample ? Strategy::BeamSample : Strategy::BeamSearch;
    if (!cfg.do_sample && cfg.penalty_alpha.value_or(0.0) > 0 && cfg.top_k > 1) return Strategy::Contrastive;
    return cfg.do_sample ? Strategy::Sample : Strategy::Greedy;
}

const char* strategy_name(Strategy s) {
    switch (s) {
        case Strategy::Greedy: return "greedy";
        case Strategy::Sample: return "sample";
        case Strategy::BeamSearch: return "beam search";
        case Strategy::BeamSample: return "beam sample";
        case Strategy::Contrastive: return "contrastive search";
    }
    return "?";
}

GenerationResult generate(CausalLM& lm, const std::vector<std::vector<int32_t>>& prompts,
                          const GenerationConfig& cfg, const GenerateHooks& hooks) {
    cfg.validate();
    check_prompts(lm, prompts);
    const Strategy strategy = strategy_for(cfg);
    if (strategy == Strategy::Greedy || strategy == Strategy::Sample) {
        MSLM_CHECK(strategy == Strategy::Sample || cfg.num_return_sequences == 1,
                   "generate: num_return_sequences {} needs sampling or beam search (greedy gives one answer)",
                   cfg.num_return_sequences);
        return run_greedy_or_sample(lm, prompts, cfg, hooks, strategy == Strategy::Sample);
    }
    if (hooks.cache) hooks.cache->valid = false;  // beam and contrastive search restart the slots
    GenerationResult res;
    res.strategy = strategy;
    LogitsProcessorChain chain(cfg, lm.vocab_size());
    Rng rng(cfg.seed.value_or(hooks.default_seed));
    for (size_t p = 0; p < prompts.size() && !res.interrupted; ++p) {
        if (strategy == Strategy::Contrastive) {
            MSLM_CHECK(cfg.num_return_sequences == 1, "generate: contrastive search returns one sequence per prompt");
            run_contrastive(lm, prompts[p], static_cast<int64_t>(p), cfg, hooks, chain, res);
        } else {
            run_beam_search(lm, prompts[p], static_cast<int64_t>(p), cfg, hooks, chain, rng, res);
        }
    }
    return res;
}

}  // namespace mslm
