// Logits processors against transformers' own classes (fixture by
// tests/parity/make_processor_fixtures.py), and our own tests of the frequency/presence penalty,
// min_new_tokens, stop strings, stopping criteria, the seeded sampler and generation_config.json.
#include <gtest/gtest.h>

#include <cfloat>
#include <chrono>
#include <cmath>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <numeric>
#include <set>
#include <thread>

#include "core/error.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "generate/config.h"
#include "generate/processors.h"
#include "generate/stopping.h"

using namespace mslm;
using nlohmann::json;

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

std::string fixture_path(const std::string& name) {
    return std::string(MSLM_FIXTURE_DIR) + "/" + name;
}

template <typename T>
std::vector<T> values(const SafetensorsFile& f, const std::string& name) {
    Tensor t = f.get(name).clone();  // clone: file tensors may be unaligned
    return std::vector<T>(t.data<T>(), t.data<T>() + t.numel());
}

struct Fixture {
    json cases;
    int64_t vocab = 0;
    int64_t max_len = 0;
    std::vector<float> logits;  // (R, V)
    std::vector<int32_t> ids;   // (R, L)
    std::vector<int32_t> lengths, prompt_lens;
    std::map<std::string, std::vector<float>> out;  // per case: (rows, V)
};

const Fixture& fixture() {
    static const Fixture fx = [] {
        Fixture f;
        std::ifstream in(fixture_path("processors/processors.json"));
        f.cases = json::parse(in);
        f.vocab = f.cases["vocab_size"].get<int64_t>();
        SafetensorsFile st = SafetensorsFile::open(fixture_path("processors/processors.safetensors"));
        f.logits = st.get_f32("logits").to_float_vector();
        f.ids = values<int32_t>(st, "ids");
        f.lengths = values<int32_t>(st, "lengths");
        f.prompt_lens = values<int32_t>(st, "prompt_lens");
        f.max_len = static_cast<int64_t>(f.ids.size() / f.lengths.size());
        for (const json& c : f.cases["cases"]) {
            const std::string name = c["name"];
            f.out[name] = st.get_f32("out." + name).to_float_vector();
        }
        return f;
    }();
    return fx;
}

// Runs our counterpart of one fixture case on one row, in place.
void run_case(const json& c, std::span<float> row, std::span<const int32_t> ids, int64_t prompt_len,
              int64_t vocab) {
    const std::string proc = c["processor"];
    if (proc == "chain") {
        LogitsProcessorChain(GenerationConfig::from_json(c["config"]), vocab).apply(row, ids, prompt_len);
        return;
    }
    const json& p = c["params"];
    const int64_t keep = p.value("min_tokens_to_keep", int64_t{1});
    const auto eos = p.value("eos_token_id", std::vector<int32_t>{});
    if (proc == "TemperatureLogitsWarper") {
        apply_temperature(row, p["temperature"]);
    } else if (proc == "TopKLogitsWarper") {
        apply_top_k(row, p["top_k"], keep);
    } else if (proc == "TopPLogitsWarper") {
        apply_top_p(row, p["top_p"], keep);
    } else if (proc == "MinPLogitsWarper") {
        apply_min_p(row, p["min_p"], keep);
    } else if (proc == "TypicalLogitsWarper") {
        apply_typical_p(row, p["mass"], keep);
    } else if (proc == "EpsilonLogitsWarper") {
        apply_epsilon_cutoff(row, p["epsilon"], keep);
    } else if (proc == "EtaLogitsWarper") {
        apply_eta_cutoff(row, p["epsilon"], keep);
    } else if (proc == "RepetitionPenaltyLogitsProcessor") {
        apply_repetition_penalty(row, ids, p["penalty"]);
    } else if (proc == "NoRepeatNGramLogitsProcessor") {
        apply_no_repeat_ngram(row, ids, p["ngram_size"]);
    } else if (proc == "MinNewTokensLengthLogitsProcessor") {
        apply_min_new_tokens(row, static_cast<int64_t>(ids.size()) - prompt_len, p["min_new_tokens"], eos);
    } else if (proc == "MinLengthLogitsProcessor") {  // counts the whole sequence
        apply_min_new_tokens(row, static_cast<int64_t>(ids.size()), p["min_length"], eos);
    } else if (proc == "SequenceBiasLogitsProcessor") {
        const auto biases =
            GenerationConfig::from_json({{"sequence_bias", p["sequence_bias"]}}).sequence_bias;
        apply_sequence_bias(row, ids, biases);
    } else if (proc == "NoBadWordsLogitsProcessor") {
        apply_sequence_bias(row, ids,
                            bad_words_bias(p["bad_words_ids"].get<std::vector<std::vector<int32_t>>>(), eos));
    } else if (proc == "LogitNormalization") {
        apply_log_softmax(row);
    } else {
        FAIL() << "no counterpart for " << proc;
    }
}

// The units in the last place of float32 between a and b (finite, same sign or near zero).
double ulps(float a, float b) {
    const double spacing = std::max(std::abs(static_cast<double>(b)), static_cast<double>(FLT_MIN)) *
                           std::numeric_limits<float>::epsilon();
    return std::abs(static_cast<double>(a) - b) / spacing;
}

}  // namespace

// Every case of the fixture: the same set of −inf outputs, and the kept values
// - bit-identical where both sides do the same float32 operations: warpers only filter (or divide
//   once by the temperature), the penalties multiply or divide once, the biases add in the same
//   order; transformers computes them in float32 and so do we;
// - for the log-softmax (LogitNormalization, and chains ending with it) within the error of
//   torch's float32 evaluation x − m − log Σ exp(x − m): the subtraction and the log carry
//   u·(|x − m| + |out|), the float sum of V terms at most V·u relative, which becomes an absolute
//   error in its log (u = 2^−24; ours is the double result rounded once).
// The masks are exact because the fixture script checked that no kept/removed decision moves when
// transformers runs in float64, which is what our double arithmetic matches.
TEST(GenerateProcessors, MatchTransformersFixture) {
    const Fixture& fx = fixture();
    const double u = std::ldexp(1.0, -24);
    std::set<std::string> seen;
    size_t rows_checked = 0, removed = 0;
    for (const json& c : fx.cases["cases"]) {
        const std::string name = c["name"];
        const std::string proc = c["processor"];
        seen.insert(proc);
        const bool log_softmax = proc == "LogitNormalization" ||
                                 c.value("config", json::object()).value("renormalize_logits", false);
        const std::vector<float>& expected = fx.out.at(name);
        const std::vector<int64_t> rows = c["rows"];
        ASSERT_EQ(expected.size(), rows.size() * fx.vocab) << name;
        for (size_t k = 0; k < rows.size(); ++k) {
            const int64_t r = rows[k];
            std::vector<float> row(fx.logits.begin() + r * fx.vocab, fx.logits.begin() + (r + 1) * fx.vocab);
            const std::span<const int32_t> ids(fx.ids.data() + r * fx.max_len, fx.lengths[r]);
            run_case(c, row, ids, fx.prompt_lens[r], fx.vocab);
            float m = -kInf;
            for (int64_t i = 0; i < fx.vocab; ++i) m = std::max(m, fx.logits[r * fx.vocab + i]);
            for (int64_t i = 0; i < fx.vocab; ++i) {
                const float want = expected[k * fx.vocab + i];
                const float got = row[i];
                ASSERT_EQ(std::isinf(want) && want < 0, std::isinf(got) && got < 0)
                    << name << " row " << r << " token " << i << ": ours " << got << ", transformers "
                    << want;
                removed += std::isinf(want);
                if (std::isinf(want)) continue;
                if (log_softmax) {
                    const double x = fx.logits[r * fx.vocab + i];
                    const double tol = u * (std::abs(x - m) + std::abs(want) + static_cast<double>(fx.vocab));
                    ASSERT_LE(std::abs(static_cast<double>(got) - want), tol)
                        << name << " row " << r << " token " << i;
                } else {
                    ASSERT_EQ(got, want)
                        << name << " row " << r << " token " << i << " (" << ulps(got, want) << " ulps)";
                }
            }
            ++rows_checked;
        }
        if (proc == "chain") {
            // transformers lists MinLength (prompt + min_new_tokens) before MinNewTokens; we keep one.
            std::vector<std::string> hf = c["hf_processors"];
            for (size_t i = 0; i + 1 < hf.size(); ++i) {
                if (hf[i] == "MinLengthLogitsProcessor" && hf[i + 1] == "MinNewTokensLengthLogitsProcessor") {
                    hf.erase(hf.begin() + static_cast<std::ptrdiff_t>(i));
                }
            }
            EXPECT_EQ(LogitsProcessorChain(GenerationConfig::from_json(c["config"]), fx.vocab).names(), hf)
                << name;
        }
    }
    const std::set<std::string> all = {"TemperatureLogitsWarper",
                                       "TopKLogitsWarper",
                                       "TopPLogitsWarper",
                                       "MinPLogitsWarper",
                                       "TypicalLogitsWarper",
                                       "EpsilonLogitsWarper",
                                       "EtaLogitsWarper",
                                       "RepetitionPenaltyLogitsProcessor",
                                       "NoRepeatNGramLogitsProcessor",
                                       "MinNewTokensLengthLogitsProcessor",
                                       "MinLengthLogitsProcessor",
                                       "SequenceBiasLogitsProcessor",
                                       "NoBadWordsLogitsProcessor",
                                       "LogitNormalization",
                                       "chain"};
    EXPECT_EQ(seen, all);
    EXPECT_GT(rows_checked, 200u);
    EXPECT_GT(removed, 5000u);  // the masks are not trivially empty
}

// top_p and typical_p sort only as far as they walk (walk_sorted in processors.cpp); the fixture's
// 96 tokens always take the full-sort path. Here large rows take the partial one, against the
// transformers formulation with one full stable sort. The two sum the same probabilities in
// different orders (~1e-13 apart at most); seeded rows put no decision that close to a threshold.
TEST(GenerateProcessors, PartialSortsMatchAFullSort) {
    auto ref_top_p = [](std::vector<float> x, double top_p, int64_t keep) {
        const std::vector<double> p = softmax(x);
        std::vector<int32_t> order(x.size());
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return x[a] < x[b]; });
        double cum = 0;
        for (size_t j = 0; j + keep < order.size(); ++j) {
            cum += p[order[j]];
            if (cum <= 1 - top_p) x[order[j]] = -kInf;
        }
        return x;
    };
    auto ref_typical = [](std::vector<float> x, double mass, int64_t keep) {
        const std::vector<double> p = softmax(x);
        double h = 0;
        for (double q : p) h -= q > 0 ? q * std::log(q) : 0;
        std::vector<double> shifted(x.size());
        for (size_t i = 0; i < x.size(); ++i) shifted[i] = std::abs(-std::log(p[i]) - h);
        std::vector<int32_t> order(x.size());
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(),
                         [&](int32_t a, int32_t b) { return shifted[a] < shifted[b]; });
        size_t last = 0;
        double cum = 0;
        for (int32_t i : order) last += (cum += p[i]) < mass;
        const double cutoff = shifted[order[std::min(last, order.size() - 1)]];
        for (size_t j = keep; j < order.size(); ++j) {
            if (shifted[order[j]] > cutoff) x[order[j]] = -kInf;
        }
        return x;
    };
    Rng rng(7);
    size_t kept_total = 0;
    for (double scale : {0.5, 2.0, 6.0}) {
        std::vector<float> x(5000);
        for (float& v : x) v = static_cast<float>(rng.normal() * scale);
        x[17] = -kInf;  // an already filtered token
        for (double q : {0.3, 0.9, 0.99}) {
            for (int64_t keep : {1, 300}) {
                std::vector<float> ours = x;
                apply_top_p(ours, q, keep);
                EXPECT_EQ(ours, ref_top_p(x, q, keep))
                    << "top_p " << q << " scale " << scale << " keep " << keep;
                std::vector<float> typical = x;
                apply_typical_p(typical, q, keep);
                EXPECT_EQ(typical, ref_typical(x, q, keep))
                    << "typical " << q << " scale " << scale << " keep " << keep;
                kept_total += std::count_if(ours.begin(), ours.end(), [](float v) { return v > -kInf; });
            }
        }
    }
    EXPECT_GT(kept_total, 10000u);  // the walks went past the first chunks
}

// Ties at the top-p boundary: torch's order is unspecified; ours drops the lower id first.
TEST(GenerateProcessors, TopPTiesDropLowerIdsFirst) {
    std::vector<float> row(4, 0.0f);
    apply_top_p(row, 0.5);  // cumulative 0.25, 0.5 <= 1 − 0.5: ids 0 and 1 go
    EXPECT_EQ(row, (std::vector<float>{-kInf, -kInf, 0, 0}));
    std::vector<float> keep3(4, 0.0f);
    apply_top_p(keep3, 0.1, 3);
    EXPECT_EQ(keep3, (std::vector<float>{-kInf, 0, 0, 0}));
}

TEST(GenerateProcessors, FrequencyAndPresencePenaltyCountGeneratedTokensOnly) {
    GenerationConfig cfg;
    cfg.frequency_penalty = 0.5;
    cfg.presence_penalty = 0.25;
    LogitsProcessorChain chain(cfg, 6);
    EXPECT_EQ(chain.names(), std::vector<std::string>{"FrequencyPresencePenalty"});
    const std::vector<int32_t> ids = {1, 1, 2, /* generated: */ 2, 3, 3, 3, 5};
    std::vector<float> row = {1, 1, 1, 1, 1, -kInf};
    chain.apply(row, ids, 3);
    // 1 is only in the prompt; 2 once, 3 three times; 5 was already removed.
    EXPECT_EQ(row, (std::vector<float>{1, 1, 1 - 0.5f - 0.25f, 1 - 1.5f - 0.25f, 1, -kInf}));
    // The same ids with the whole sequence as prompt: nothing generated, nothing penalized.
    std::vector<float> none = {1, 1, 1, 1, 1, 1};
    chain.apply(none, ids, static_cast<int64_t>(ids.size()));
    EXPECT_EQ(none, std::vector<float>(6, 1));
    // Negative penalties reward repetition.
    std::vector<float> reward = {0, 0, 0, 0, 0, 0};
    apply_frequency_presence_penalty(reward, std::vector<int32_t>{4, 4}, -1.0, -0.5);
    EXPECT_EQ(reward[4], 2.5f);
}

TEST(GenerateProcessors, MinNewTokensBlocksEosUntilReached) {
    GenerationConfig cfg;
    cfg.eos_token_id = {2, 5};
    cfg.min_new_tokens = 3;
    LogitsProcessorChain chain(cfg, 8);
    const std::vector<int32_t> seq = {7, 7, 7, 7, 1, 1, 1, 1};  // a prompt of 4, then generated ids
    for (int64_t generated = 0; generated <= 4; ++generated) {
        std::vector<float> row(8, 1.0f);
        chain.apply(row, std::span(seq).first(4 + generated), 4);
        const bool blocked = generated < 3;
        EXPECT_EQ(std::isinf(row[2]), blocked) << generated;
        EXPECT_EQ(std::isinf(row[5]), blocked) << generated;
        EXPECT_EQ(row[1], 1.0f);
    }
    // min_length counts the prompt: with a prompt of 4 and min_length 6, two new tokens.
    GenerationConfig total;
    total.eos_token_id = {2};
    total.min_length = 6;
    LogitsProcessorChain by_length(total, 8);
    std::vector<float> one(8, 1.0f), two(8, 1.0f);
    by_length.apply(one, std::span(seq).first(5), 4);
    by_length.apply(two, std::span(seq).first(6), 4);
    EXPECT_TRUE(std::isinf(one[2]));
    EXPECT_FALSE(std::isinf(two[2]));
    // Without an EOS id there is nothing to block (transformers adds no processor).
    GenerationConfig no_eos;
    no_eos.min_new_tokens = 3;
    EXPECT_TRUE(LogitsProcessorChain(no_eos, 8).names().empty());
}

TEST(GenerateProcessors, GreedyLeavesOutTheWarpers) {
    GenerationConfig cfg;
    cfg.temperature = 0.5;
    cfg.top_p = 0.9;
    EXPECT_TRUE(LogitsProcessorChain(cfg, 10).names().empty());
    cfg.do_sample = true;
    EXPECT_EQ(LogitsProcessorChain(cfg, 10).names(),
              (std::vector<std::string>{"TemperatureLogitsWarper", "TopKLogitsWarper", "TopPLogitsWarper"}));
    cfg.top_k = 0;
    cfg.temperature = 1.0;
    EXPECT_EQ(LogitsProcessorChain(cfg, 10).names(), std::vector<std::string>{"TopPLogitsWarper"});
}

TEST(GenerateProcessors, ChainChecksIdsAndShapes) {
    GenerationConfig cfg;
    cfg.bad_words_ids = {{3}, {4, 12}};
    EXPECT_THROW(LogitsProcessorChain(cfg, 10), Error);
    cfg.bad_words_ids = {{3}};
    LogitsProcessorChain chain(cfg, 10);
    std::vector<float> row(9);
    const std::vector<int32_t> ids = {1, 2};
    EXPECT_THROW(chain.apply(row, ids, 0), Error);
    row.resize(10);
    EXPECT_THROW(chain.apply(row, ids, 3), Error);
    chain.apply(row, ids, 2);
    EXPECT_TRUE(std::isinf(row[3]));
}

TEST(GenerateSampling, ArgmaxTakesTheFirstMaximum) {
    EXPECT_EQ(argmax_token(std::vector<float>{1, 3, -kInf, 3, 2}), 1);
    EXPECT_EQ(argmax_token(std::vector<float>{-kInf, -kInf, 0}), 2);
}

TEST(GenerateSampling, SeededDrawsAreReproducible) {
    const std::vector<float> logits = {0.5f, 1.0f, -kInf, 2.0f, 0.0f, 1.5f};
    auto draws = [&](uint64_t seed) {
        Rng rng(seed);
        std::vector<int32_t> out;
        for (int i = 0; i < 1000; ++i) out.push_back(sample_token(logits, rng));
        return out;
    };
    EXPECT_EQ(draws(42), draws(42));
    EXPECT_NE(draws(42), draws(43));
}

// Pearson's chi-square over the 7 tokens with p > 0 (6 degrees of freedom). For a correct sampler
// the statistic is chi-square(6) distributed: P(X > 27.86) = 1e-4. The draws come from a fixed
// seed, so the test is deterministic; the bound says how unlikely a pass would be by luck for a
// sampler off by a few percent in one token (at N = 200000 an error of 2% of p = 0.05 adds about
// 8 to the statistic, and systematic biases of the size of a wrong cumulative sum far more).
TEST(GenerateSampling, EmpiricalDistributionMatchesSoftmax) {
    const std::vector<float> logits = {1.0f, -0.5f, 2.0f, -kInf, 0.0f, 0.3f, -2.0f, 1.7f};
    const std::vector<double> p = softmax(logits);
    Rng rng(1234);
    const int n = 200000;
    std::vector<int> counts(logits.size(), 0);
    for (int i = 0; i < n; ++i) ++counts[sample_token(logits, rng)];
    EXPECT_EQ(counts[3], 0);  // filtered tokens are never drawn
    double chi2 = 0;
    for (size_t i = 0; i < logits.size(); ++i) {
        if (p[i] == 0) continue;
        const double e = n * p[i];
        chi2 += (counts[i] - e) * (counts[i] - e) / e;
    }
    EXPECT_LT(chi2, 27.86);
}

TEST(GenerateSampling, RefusesRowsWithoutTokens) {
    Rng rng(1);
    EXPECT_THROW(sample_token(std::vector<float>{-kInf, -kInf}, rng), Error);
    EXPECT_THROW(sample_token(std::vector<float>{0.0f, std::nanf("")}, rng), Error);
    EXPECT_EQ(sample_token(std::vector<float>{-kInf, 3.0f, -kInf}, rng), 1);
}

TEST(GenerateStopping, StopStringsEndingInTheNewestToken) {
    // transformers' examples for stop "stop": these token splits stop at their last token ...
    for (const std::vector<std::string>& pieces : std::vector<std::vector<std::string>>{
             {"st", "op"}, {"stop"}, {"st", "opera"}, {"sto", "pper"}, {"s", "to", "pped"}}) {
        StopStringMatcher m({"stop"});
        for (size_t i = 0; i < pieces.size(); ++i)
            EXPECT_EQ(m.push(pieces[i]), i + 1 == pieces.size()) << pieces[i];
        EXPECT_EQ(m.match_offset(), 0u);
    }
    // ... and ["stop", "at"] stops at "stop", not again at "at".
    StopStringMatcher again({"stop"});
    EXPECT_TRUE(again.push("stop"));
    EXPECT_FALSE(again.push("at"));
    // A match may begin in the prompt ("las" + "topper").
    StopStringMatcher context({"stop"}, "the las");
    EXPECT_TRUE(context.push("topper"));
    EXPECT_EQ(context.match_offset(), 0u);
    // Offsets count the whole generated text, across many pushes and the trimmed tail.
    StopStringMatcher far({"\n\nUser:", "###"});
    std::string text;
    for (int i = 0; i < 50; ++i) {
        EXPECT_FALSE(far.push("word "));
        text += "word ";
    }
    EXPECT_FALSE(far.push("end\n"));
    text += "end\n";
    EXPECT_FALSE(far.push("\nUs"));
    EXPECT_TRUE(far.push("er: ##"));
    EXPECT_EQ(far.match_offset(), text.size() - 1);  // at the newline that ends "end\n"
    // The earliest starting of two stop strings completed by the same token.
    StopStringMatcher two({"bc", "abcd"});
    EXPECT_TRUE(two.push("xabcde"));
    EXPECT_EQ(two.match_offset(), 1u);
    EXPECT_THROW(StopStringMatcher({"a", ""}), Error);
}

TEST(GenerateStopping, Criteria) {
    GenerationConfig cfg;
    cfg.eos_token_id = {2, 5};
    cfg.max_new_tokens = 3;
    StoppingCriteria length(cfg, 10);
    EXPECT_EQ(length.update(7), StopReason::None);
    EXPECT_EQ(length.update(8), StopReason::None);
    EXPECT_EQ(length.update(9), StopReason::MaxNewTokens);
    StoppingCriteria eos(cfg, 10);
    EXPECT_EQ(eos.update(5), StopReason::Eos);
    EXPECT_STREQ(stop_reason_name(StopReason::Eos), "eos");

    // max_length counts the prompt; neither set: 20 new tokens.
    GenerationConfig total;
    total.max_length = 12;
    EXPECT_EQ(StoppingCriteria(total, 10).max_new_tokens(), 2);
    EXPECT_THROW(StoppingCriteria(total, 12), Error);
    EXPECT_EQ(StoppingCriteria(GenerationConfig{}, 100).max_new_tokens(), 20);

    GenerationConfig stops;
    stops.stop_strings = {"\n\n"};
    StoppingCriteria s(stops, 3, "Q: hi\n");
    EXPECT_EQ(s.update(11, "\nA"), StopReason::StopString);  // begins in the prompt
    EXPECT_EQ(s.stop_string_offset(), 0u);

    GenerationConfig timed;
    timed.max_time = 0.001;
    StoppingCriteria t(timed, 1);
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    EXPECT_EQ(t.update(1), StopReason::MaxTime);
    timed.max_time = 3600;
    EXPECT_EQ(StoppingCriteria(timed, 1).update(1), StopReason::None);
}

TEST(GenerationConfig, ReadsTheParityModelsGenerationConfigs) {
    for (const char* model : {"mamba1", "mamba2", "jamba", "hybrid"}) {
        const std::string path = fixture_path(std::string(model) + "/generation_config.json");
        const GenerationConfig c = GenerationConfig::load(path);
        std::ifstream in(path);
        const json j = json::parse(in);
        EXPECT_EQ(c.eos_token_id, std::vector<int32_t>{j["eos_token_id"].get<int32_t>()}) << model;
        EXPECT_EQ(c.bos_token_id, j["bos_token_id"].get<int32_t>()) << model;
        EXPECT_EQ(c.pad_token_id, j["pad_token_id"].get<int32_t>()) << model;
        // Everything else keeps transformers' defaults; keys such as use_cache are ignored.
        GenerationConfig defaults;
        defaults.eos_token_id = c.eos_token_id;
        defaults.bos_token_id = c.bos_token_id;
        defaults.pad_token_id = c.pad_token_id;
        EXPECT_EQ(c, defaults) << model;
    }
    const GenerationConfig d;
    EXPECT_FALSE(d.do_sample);
    EXPECT_EQ(d.top_k, 50);
    EXPECT_EQ(d.temperature, 1.0);
    EXPECT_EQ(d.top_p, 1.0);
    EXPECT_EQ(d.num_beams, 1);
    EXPECT_EQ(d.early_stopping, EarlyStopping::Heuristic);
}

TEST(GenerationConfig, ReadsEveryField) {
    const json j = json::parse(R"({
        "max_new_tokens": 64, "min_new_tokens": 2, "max_time": 1.5, "stop_strings": "###",
        "do_sample": true, "num_beams": 4, "num_return_sequences": 2, "length_penalty": 0.8,
        "early_stopping": "never", "penalty_alpha": 0.6, "seed": 18446744073709551615,
        "temperature": 0.7, "top_k": 0, "top_p": 0.9, "min_p": 0.05, "typical_p": 0.95,
        "epsilon_cutoff": 0.0003, "eta_cutoff": 0.001, "repetition_penalty": 1.3,
        "frequency_penalty": 0.1, "presence_penalty": -0.2, "no_repeat_ngram_size": 3,
        "bad_words_ids": [[5], [6, 7]], "sequence_bias": [[[1], 2.0], [[3, 4], -1], [[1], 0.5]],
        "renormalize_logits": true, "eos_token_id": [2, 9], "pad_token_id": 0, "bos_token_id": null,
        "min_p_unknown_key": 1, "use_cache": true})");
    const GenerationConfig c = GenerationConfig::from_json(j);
    EXPECT_EQ(c.max_new_tokens, 64);
    EXPECT_EQ(c.stop_strings, std::vector<std::string>{"###"});
    EXPECT_EQ(c.early_stopping, EarlyStopping::Never);
    EXPECT_EQ(c.seed, UINT64_MAX);
    EXPECT_EQ(c.top_k, 0);
    EXPECT_EQ(c.min_p, 0.05);
    // A repeated sequence replaces the earlier bias in its place (transformers builds a dict).
    EXPECT_EQ(c.sequence_bias, (std::vector<SequenceBias>{{{1}, 0.5f}, {{3, 4}, -1.0f}}));
    EXPECT_EQ(c.eos_token_id, (std::vector<int32_t>{2, 9}));
    EXPECT_FALSE(c.bos_token_id.has_value());
    EXPECT_EQ(GenerationConfig::from_json(c.to_json()), c);
    EXPECT_EQ(GenerationConfig::from_json({{"early_stopping", true}}).early_stopping,
              EarlyStopping::NumBeamsDone);
    EXPECT_EQ(GenerationConfig::from_json(GenerationConfig{}.to_json()), GenerationConfig{});
}

TEST(GenerationConfig, ErrorsNameTheKey) {
    auto message = [](const json& j) {
        try {
            GenerationConfig::from_json(j, "gen.json");
        } catch (const Error& e) {
            return std::string(e.what());
        }
        return std::string("no error");
    };
    EXPECT_EQ(message({{"top_k", "50"}}), "gen.json: 'top_k' must be an integer, got \"50\"");
    EXPECT_EQ(message({{"top_k", 50.0}}), "gen.json: 'top_k' must be an integer, got 50.0");
    EXPECT_EQ(message({{"temperature", "hot"}}), "gen.json: 'temperature' must be a number, got \"hot\"");
    EXPECT_EQ(message({{"do_sample", 1}}), "gen.json: 'do_sample' must be true or false, got 1");
    auto names_key = [&](const char* text, const std::string& key) {
        return message(json::parse(text)).find("'" + key + "' must be") != std::string::npos;
    };
    EXPECT_EQ(message(json::parse(R"({"eos_token_id": [2, -1]})")),
              "gen.json: eos_token_id: token ids must be >= 0");
    EXPECT_TRUE(names_key(R"({"early_stopping": "sometimes"})", "early_stopping"));
    EXPECT_TRUE(names_key(R"({"bad_words_ids": [1, 2]})", "bad_words_ids"));
    EXPECT_TRUE(names_key(R"({"sequence_bias": [[[1], "x"]]})", "sequence_bias"));
    EXPECT_TRUE(names_key(R"({"stop_strings": ["a", 1]})", "stop_strings"));
    EXPECT_TRUE(names_key(R"({"seed": -1})", "seed"));
    EXPECT_TRUE(names_key(R"({"pad_token_id": 3000000000})", "pad_token_id"));
    EXPECT_TRUE(names_key(R"({"logit_bias": {"x": 1}})", "logit_bias"));
    EXPECT_EQ(GenerationConfig::from_json(json::parse(R"({"pad_token_id": -1})")).pad_token_id,
              -1);  // as transformers
    EXPECT_EQ(message({{"top_p", 1.5}}), "gen.json: top_p = 1.5: must be in [0, 1]");
    EXPECT_NE(message({{"do_sample", true}, {"temperature", 0}}).find("do_sample = false"),
              std::string::npos);
    EXPECT_NE(message({{"num_return_sequences", 2}}).find("num_return_sequences"), std::string::npos);
    EXPECT_NE(message({{"bad_words_ids", json::array({json::array()})}}).find("bad_words_ids"),
              std::string::npos);
    EXPECT_EQ(message(json::array()), "gen.json: expected a JSON object, got array");
    EXPECT_THROW(GenerationConfig::load(fixture_path("processors/missing.json")), Error);
}

TEST(GenerationConfig, ListsTransformersParametersItIgnores) {
    std::vector<std::string> ignored;
    const json j = {{"top_h", 0.5},
                    {"suppress_tokens", {1, 2}},
                    {"remove_invalid_values", false},
                    {"guidance_scale", 1.0},
                    {"num_beam_groups", 1},
                    {"forced_eos_token_id", nullptr},
                    {"diversity_penalty", 0.5}};
    GenerationConfig::from_json(j, "gen.json", &ignored);
    EXPECT_EQ(ignored, (std::vector<std::string>{"top_h", "suppress_tokens", "diversity_penalty"}));
}

TEST(GenerationConfig, SetFromText) {
    GenerationConfig c;
    c.set("do_sample", "true");
    c.set("temperature", "0.7");
    c.set("top_k", "0");
    c.set("early_stopping", "never");  // a bare word
    c.set("eos_token_id", "[2, 5]");
    c.set("eos_token_id", "3");
    c.set("stop_strings", "</s>");
    EXPECT_EQ(c.stop_strings, std::vector<std::string>{"</s>"});
    c.set("stop_strings", R"(["\n\n", "###"])");
    c.set("sequence_bias", "[[[13], -5.0]]");
    c.set("max_new_tokens", "128");
    EXPECT_TRUE(c.do_sample);
    EXPECT_EQ(c.temperature, 0.7);
    EXPECT_EQ(c.top_k, 0);
    EXPECT_EQ(c.early_stopping, EarlyStopping::Never);
    EXPECT_EQ(c.eos_token_id, std::vector<int32_t>{3});
    EXPECT_EQ(c.stop_strings, (std::vector<std::string>{"\n\n", "###"}));
    EXPECT_EQ(c.sequence_bias, (std::vector<SequenceBias>{{{13}, -5.0f}}));
    // logit_bias (OpenAI's form) sets single-token sequence_bias entries.
    c.set("logit_bias", R"({"13": -100, "7": 2.5})");
    EXPECT_EQ(c.sequence_bias, (std::vector<SequenceBias>{{{13}, -100.0f}, {{7}, 2.5f}}));
    c.set("logit_bias", "null");
    EXPECT_TRUE(c.sequence_bias.empty());
    c.set("top_k", "null");  // back to the default
    EXPECT_EQ(c.top_k, 50);

    const GenerationConfig before = c;
    EXPECT_THROW(c.set("temperature", "0"), Error);  // invalid while sampling
    EXPECT_THROW(c.set("max_new_tokens", "many"), Error);
    EXPECT_THROW(c.set("top_p", "2"), Error);
    EXPECT_EQ(c, before);  // failed sets change nothing
    try {
        c.set("topk", "5");
        FAIL();
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("unknown generation parameter 'topk'"), std::string::npos);
    }
    try {
        c.set("top_h", "0.5");
        FAIL();
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("does not implement"), std::string::npos);
    }
}
