// Decoding strategies against transformers' generate() (fixtures from
// tests/parity/make_generate_fixtures.py) and their own contracts: batching, seeding, streaming,
// interruption and errors.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "core/error.h"
#include "generate/generate.h"
#include "core/utf8.h"
#include "model/model_io.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/trainer.h"

namespace mslm {
namespace {

std::string fixture(const std::string& name) { return std::string(MSLM_FIXTURE_DIR) + "/" + name; }

nlohmann::json read_json(const std::string& path) {
    std::ifstream in(path);
    EXPECT_TRUE(in.good()) << path;
    return nlohmann::json::parse(in);
}

// The fixture's generate() keyword arguments as a GenerationConfig. transformers starts from the
// model's generation_config.json, but every case names eos_token_id and pad_token_id, and the
// other keys it sets have their transformers defaults in ours.
GenerationConfig config_for(const nlohmann::json& params) {
    nlohmann::json j = params;
    if (j.contains("eos_token_id") && j["eos_token_id"].is_null()) j.erase("eos_token_id");
    return GenerationConfig::from_json(j, "fixture params");
}

class GenerateParity : public ::testing::TestWithParam<std::string> {};

// Token-identical sequences, and scores within float rounding. Scores are sums of up to 48
// float32 log-probabilities (|each| < 10) whose logits come from our recurrent decode rather
// than transformers' full forward pass: the logits agree to ~1e-5 relative (the forward parity
// fixtures), so a summed score can move by ~48 · 1e-5 · 10; 5e-3 absolute is above that and far
// below the gap between different hypotheses' scores. Per-token scores get 1e-4.
TEST_P(GenerateParity, MatchesTransformers) {
    const std::string name = GetParam();
    auto model = load_model<float>(fixture(name));
    HybridCausalLM lm(*model);
    const nlohmann::json doc = read_json(fixture(name) + "/generate.json");
    int checked = 0;
    for (const auto& c : doc["cases"]) {
        SCOPED_TRACE(name + "/" + c["name"].get<std::string>());
        const GenerationConfig cfg = config_for(c["params"]);
        const std::vector<int32_t> prompt = c["prompt"].get<std::vector<int32_t>>();
        const std::string strategy = c["strategy"];
        const Strategy expected = strategy == "greedy" ? Strategy::Greedy
                                  : strategy == "beam" ? Strategy::BeamSearch
                                                       : Strategy::Contrastive;
        EXPECT_EQ(strategy_for(cfg), expected);
        GenerationResult res = generate(lm, {prompt}, cfg);
        const auto& want = c["sequences"];
        ASSERT_EQ(res.sequences.size(), want.size());
        for (size_t i = 0; i < want.size(); ++i) {
            EXPECT_EQ(res.sequences[i].tokens, want[i].get<std::vector<int32_t>>()) << "sequence " << i;
            if (c.contains("sequence_scores")) {
                EXPECT_NEAR(res.sequences[i].score, c["sequence_scores"][i].get<double>(), 5e-3) << "sequence " << i;
            }
            if (c.contains("step_scores")) {
                const auto ws = c["step_scores"][i].get<std::vector<double>>();
                ASSERT_EQ(res.sequences[i].token_scores.size(), ws.size());
                for (size_t t = 0; t < ws.size(); ++t)
                    EXPECT_NEAR(res.sequences[i].token_scores[t], ws[t], 1e-4 * std::max(1.0, std::abs(ws[t])))
                        << "token " << t;
            }
        }
        ++checked;
    }
    EXPECT_GE(checked, 20);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GenerateParity, ::testing::Values("mamba1", "mamba2", "jamba", "hybrid", "trained"));

// ---------------------------------------------------------------------------------------------

class GenerateContract : public ::testing::Test {
protected:
    void SetUp() override {
        model_ = load_model<float>(fixture("hybrid"));
        lm_ = std::make_unique<HybridCausalLM>(*model_);
    }
    std::unique_ptr<HybridLM<float>> model_;
    std::unique_ptr<HybridCausalLM> lm_;
    std::vector<int32_t> a_{5, 17, 33, 8, 61}, b_{44, 12, 90, 3, 27, 71, 9, 15, 66};
};

TEST_F(GenerateContract, BatchOfDifferentLengthsEqualsEachAlone) {
    for (bool sample : {false, true}) {
        GenerationConfig cfg;
        cfg.max_new_tokens = 12;
        cfg.do_sample = sample;
        cfg.seed = 7;
        cfg.num_return_sequences = sample ? 2 : 1;
        GenerationResult both = generate(*lm_, {a_, b_}, cfg);
        ASSERT_EQ(both.sequences.size(), sample ? 4u : 2u);
        // Each sequence draws from its own generator, seeded by its index in the batch.
        GenerationResult alone_a = generate(*lm_, {a_}, cfg);
        EXPECT_EQ(both.sequences[0].tokens, alone_a.sequences[0].tokens);
        if (!sample) {
            GenerationResult alone_b = generate(*lm_, {b_}, cfg);
            EXPECT_EQ(both.sequences[1].tokens, alone_b.sequences[0].tokens);
            EXPECT_EQ(both.sequences[1].prompt_index, 1);
        }
    }
}

// clear(slot) empties one slot: its next prompt gives the logits of a fresh model, bit for bit,
// and the other slot carries on as if nothing happened.
TEST_F(GenerateContract, ClearEmptiesOneSlot) {
    const int64_t V = lm_->vocab_size();
    std::vector<float> want(2 * V), got(2 * V), tmp(V);
    const std::vector<int64_t> both{0, 1};
    const std::vector<int32_t> toks{3, 4};
    lm_->start(2, 64);
    lm_->prefill(0, b_, tmp.data(), nullptr);
    lm_->prefill(1, a_, tmp.data(), nullptr);
    lm_->step(both, toks, want.data(), nullptr);
    lm_->start(2, 64);
    lm_->prefill(0, a_, tmp.data(), nullptr);
    lm_->prefill(1, a_, tmp.data(), nullptr);
    lm_->clear(0);
    lm_->prefill(0, b_, tmp.data(), nullptr);
    lm_->step(both, toks, got.data(), nullptr);
    EXPECT_EQ(got, want);
    HybridCausalLM unstarted(*model_);
    EXPECT_THROW(unstarted.clear(0), Error);
}

// A conversation's next turn through a SlotCache prefills only its new tokens and gives what a
// fresh generate() over the whole prompt gives (the same tokens; scores to fp32 rounding, as the
// held tokens went through the step path instead of one prefill); a prompt that does not extend the
// held tokens, one that needs a longer start, and beam search all start afresh.
TEST_F(GenerateContract, SlotCacheContinuesAConversation) {
    GenerationConfig cfg;
    cfg.max_new_tokens = 6;
    SlotCache cache;
    GenerateHooks hooks;
    hooks.cache = &cache;
    const GenerationResult r1 = generate(*lm_, {a_}, cfg, hooks);
    ASSERT_TRUE(cache.valid);
    const std::vector<int32_t>& t1 = r1.sequences[0].tokens;
    ASSERT_FALSE(t1.empty());
    std::vector<int32_t> held = a_;
    held.insert(held.end(), t1.begin(), t1.end() - 1);  // the last token was chosen, not fed
    EXPECT_EQ(cache.tokens, held);
    EXPECT_EQ(r1.prompt_tokens, static_cast<int64_t>(a_.size()));
    EXPECT_EQ(r1.reused_prompt_tokens, 0);

    std::vector<int32_t> p2 = a_;
    p2.insert(p2.end(), t1.begin(), t1.end());
    p2.insert(p2.end(), {7, 8, 9});
    const GenerationResult r2 = generate(*lm_, {p2}, cfg, hooks);
    EXPECT_EQ(r2.reused_prompt_tokens, static_cast<int64_t>(held.size()));
    EXPECT_EQ(r2.prompt_tokens, static_cast<int64_t>(p2.size() - held.size()));
    const GenerationResult fresh = generate(*lm_, {p2}, cfg);
    EXPECT_EQ(r2.sequences[0].tokens, fresh.sequences[0].tokens);
    ASSERT_EQ(r2.sequences[0].token_scores.size(), fresh.sequences[0].token_scores.size());
    for (size_t i = 0; i < fresh.sequences[0].token_scores.size(); ++i)
        EXPECT_NEAR(r2.sequences[0].token_scores[i], fresh.sequences[0].token_scores[i],
                    1e-4 * (1.0 + std::fabs(fresh.sequences[0].token_scores[i])));
    EXPECT_TRUE(cache.valid);

    // Not an extension of what slot 0 holds: a fresh start, the same as without the cache.
    const GenerationResult r3 = generate(*lm_, {b_}, cfg, hooks);
    EXPECT_EQ(r3.reused_prompt_tokens, 0);
    EXPECT_EQ(r3.sequences[0].tokens, generate(*lm_, {b_}, cfg).sequences[0].tokens);
    // A fresh start with a cache is for the model's whole length; an extension that needs more
    // room than the slot was started with (as if it had been started shorter) starts afresh.
    EXPECT_EQ(cache.capacity, lm_->max_seq_len());
    std::vector<int32_t> p4 = cache.tokens;
    p4.push_back(11);
    cache.capacity = static_cast<int64_t>(p4.size());
    const GenerationResult r4 = generate(*lm_, {p4}, cfg, hooks);
    EXPECT_EQ(r4.reused_prompt_tokens, 0);
    EXPECT_EQ(r4.sequences[0].tokens, generate(*lm_, {p4}, cfg).sequences[0].tokens);
    // Beam search restarts the slots: the cache is no longer valid.
    GenerationConfig beams = cfg;
    beams.num_beams = 2;
    generate(*lm_, {a_}, beams, hooks);
    EXPECT_FALSE(cache.valid);
}

// A CausalLM that forwards to another and counts its calls.
class CountingLM : public CausalLM {
public:
    explicit CountingLM(CausalLM& lm) : lm_(lm) {}
    int64_t vocab_size() const override { return lm_.vocab_size(); }
    int64_t hidden_size() const override { return lm_.hidden_size(); }
    int64_t max_seq_len() const override { return lm_.max_seq_len(); }
    void start(int64_t slots, int64_t max_len) override { lm_.start(slots, max_len); }
    void prefill(int64_t slot, std::span<const int32_t> ids, float* logits, float* hidden) override {
        lm_.prefill(slot, ids, logits, hidden);
    }
    void step(std::span<const int64_t> slots, std::span<const int32_t> tokens, float* logits,
              float* hidden) override {
        ++steps;
        lm_.step(slots, tokens, logits, hidden);
    }
    void step_greedy(std::span<const int64_t> slots, std::span<const int32_t> tokens,
                     GreedyPick* picks) override {
        ++greedy_steps;
        CausalLM::step_greedy(slots, tokens, picks);  // counts its step() too
    }
    void reorder(std::span<const int64_t> src) override { lm_.reorder(src); }
    void copy(int64_t src_slot, int64_t dst_slot) override { lm_.copy(src_slot, dst_slot); }
    void clear(int64_t slot) override { lm_.clear(slot); }
    int steps = 0, greedy_steps = 0;

private:
    CausalLM& lm_;
};

// Greedy decoding without logits processors asks the model for picks (step_greedy), with a
// processor for logits (step); a pick is the row's first maximum, its logit and log-softmax.
TEST_F(GenerateContract, GreedyAsksForPicksOnlyWithoutProcessors) {
    GenerationConfig cfg;
    cfg.max_new_tokens = 6;
    cfg.eos_token_id.clear();  // every sequence runs its 6 tokens
    CountingLM picks(*lm_);
    const GenerationResult r = generate(picks, {a_, b_}, cfg);
    EXPECT_EQ(picks.greedy_steps, 5);  // the first token comes from the prefill's logits
    EXPECT_EQ(picks.steps, 5);         // the default step_greedy steps for its logits

    GenerationConfig penalised = cfg;
    penalised.repetition_penalty = 1.3;
    CountingLM logits(*lm_);
    generate(logits, {a_, b_}, penalised);
    EXPECT_EQ(logits.greedy_steps, 0);
    EXPECT_EQ(logits.steps, 5);

    // The picks path against greedy_pick over the logits of the same batched steps, by hand.
    const int64_t V = lm_->vocab_size();
    std::vector<float> l(static_cast<size_t>(2 * V));
    lm_->start(2, static_cast<int64_t>(b_.size()) + 6);
    lm_->prefill(0, a_, l.data(), nullptr);
    lm_->prefill(1, b_, l.data() + V, nullptr);
    double score[2] = {0, 0};
    for (size_t t = 0; t < 6; ++t) {
        std::vector<int32_t> next;
        for (size_t s = 0; s < 2; ++s) {
            const GreedyPick p =
                greedy_pick(std::span<const float>(l.data() + s * V, static_cast<size_t>(V)));
            EXPECT_EQ(r.sequences[s].tokens[t], p.token) << "sequence " << s << " token " << t;
            EXPECT_EQ(r.sequences[s].token_scores[t], p.logit) << "sequence " << s << " token " << t;
            score[s] += p.log_prob;
            next.push_back(p.token);
        }
        if (t + 1 < 6) lm_->step(std::vector<int64_t>{0, 1}, next, l.data(), nullptr);
    }
    EXPECT_DOUBLE_EQ(r.sequences[0].score, score[0]);
    EXPECT_DOUBLE_EQ(r.sequences[1].score, score[1]);

    const std::vector<float> row{1.0f, 3.0f, -INFINITY, 3.0f, 2.0f};
    const GreedyPick p = greedy_pick(row);
    EXPECT_EQ(p.token, 1);
    EXPECT_EQ(p.logit, 3.0f);
    double sum = 0;
    for (float x : row) sum += std::exp(static_cast<double>(x) - 3.0);
    EXPECT_DOUBLE_EQ(p.log_prob, -std::log(sum));
}

TEST_F(GenerateContract, SeededSamplingIsReproducible) {
    GenerationConfig cfg;
    cfg.max_new_tokens = 20;
    cfg.do_sample = true;
    cfg.temperature = 1.5;  // flatter: different seeds then differ with near certainty
    cfg.top_k = 0;
    cfg.seed = 1234;
    auto first = generate(*lm_, {a_}, cfg).sequences[0].tokens;
    EXPECT_EQ(generate(*lm_, {a_}, cfg).sequences[0].tokens, first);
    cfg.seed = 4321;
    EXPECT_NE(generate(*lm_, {a_}, cfg).sequences[0].tokens, first);
}

TEST_F(GenerateContract, BeamSampleIsReproducibleAndReturnsSortedHypotheses) {
    GenerationConfig cfg;
    cfg.max_new_tokens = 8;
    cfg.num_beams = 3;
    cfg.num_return_sequences = 3;
    cfg.do_sample = true;
    cfg.seed = 99;
    auto r1 = generate(*lm_, {b_}, cfg);
    auto r2 = generate(*lm_, {b_}, cfg);
    ASSERT_EQ(r1.strategy, Strategy::BeamSample);
    ASSERT_EQ(r1.sequences.size(), 3u);
    for (size_t i = 0; i < 3; ++i) EXPECT_EQ(r1.sequences[i].tokens, r2.sequences[i].tokens);
    EXPECT_GE(r1.sequences[0].score, r1.sequences[1].score);
    EXPECT_GE(r1.sequences[1].score, r1.sequences[2].score);
}

TEST_F(GenerateContract, OnTokenStreamsAndCanInterrupt) {
    GenerationConfig cfg;
    cfg.max_new_tokens = 10;
    std::vector<int32_t> seen;
    GenerateHooks hooks;
    hooks.on_token = [&](int64_t seq, int32_t tok, std::string_view) {
        EXPECT_EQ(seq, 0);
        seen.push_back(tok);
        return seen.size() < 4;  // stop after the fourth token, as Ctrl-C would
    };
    GenerationResult res = generate(*lm_, {a_}, cfg, hooks);
    EXPECT_TRUE(res.interrupted);
    EXPECT_EQ(seen.size(), 4u);
    EXPECT_EQ(res.sequences[0].tokens, seen);
}

TEST_F(GenerateContract, ContrastiveWithAlphaZeroIsGreedy) {
    // (1 − 0)·p − 0·sim picks the most probable candidate: greedy's choice.
    GenerationConfig greedy;
    greedy.max_new_tokens = 12;
    GenerationConfig contrastive = greedy;
    contrastive.penalty_alpha = 1e-30;  // > 0 selects contrastive search; its penalty vanishes
    contrastive.top_k = 4;
    ASSERT_EQ(strategy_for(contrastive), Strategy::Contrastive);
    EXPECT_EQ(generate(*lm_, {b_}, contrastive).sequences[0].tokens, generate(*lm_, {b_}, greedy).sequences[0].tokens);
}

TEST_F(GenerateContract, Errors) {
    GenerationConfig cfg;
    cfg.max_new_tokens = 4;
    EXPECT_THROW(generate(*lm_, {}, cfg), Error);
    EXPECT_THROW(generate(*lm_, {{}}, cfg), Error);
    EXPECT_THROW(generate(*lm_, {{1, 2, 100000}}, cfg), Error);
    cfg.max_new_tokens = model_->config().max_seq_len;
    EXPECT_THROW(generate(*lm_, {a_}, cfg), Error);
    cfg.max_new_tokens = 4;
    cfg.num_return_sequences = 2;  // greedy has one answer
    EXPECT_THROW(generate(*lm_, {a_}, cfg), Error);
}

}  // namespace
}  // namespace mslm

namespace mslm {
namespace {

// A CausalLM that always predicts the next token of a script: greedy decoding replays it.
class ScriptedLM : public CausalLM {
public:
    ScriptedLM(std::vector<int32_t> script, int64_t vocab) : script_(std::move(script)), vocab_(vocab) {}
    int64_t vocab_size() const override { return vocab_; }
    int64_t hidden_size() const override { return 1; }
    int64_t max_seq_len() const override { return 1 << 20; }
    void start(int64_t slots, int64_t) override { pos_.assign(static_cast<size_t>(slots), 0); }
    void prefill(int64_t slot, std::span<const int32_t> ids, float* logits, float* hidden) override {
        pos_[slot] += static_cast<int64_t>(ids.size());
        emit(slot, logits, hidden);
    }
    void step(std::span<const int64_t> slots, std::span<const int32_t>, float* logits, float* hidden) override {
        for (size_t i = 0; i < slots.size(); ++i) {
            pos_[slots[i]] += 1;
            emit(slots[i], logits + i * vocab_, hidden ? hidden + i : nullptr);
        }
    }
    void reorder(std::span<const int64_t> src) override {
        std::vector<int64_t> old = pos_;
        for (size_t i = 0; i < src.size(); ++i) pos_[i] = old[src[i]];
    }
    void copy(int64_t src, int64_t dst) override { pos_[dst] = pos_[src]; }
    void clear(int64_t slot) override { pos_[slot] = 0; }

private:
    void emit(int64_t slot, float* logits, float* hidden) {
        std::fill_n(logits, vocab_, 0.0f);
        const auto next = static_cast<size_t>(pos_[slot] - 1);  // the prompt is one token
        logits[script_[next % script_.size()]] = 10.0f;
        if (hidden) hidden[0] = 1.0f;
    }
    std::vector<int32_t> script_;
    int64_t vocab_;
    std::vector<int64_t> pos_;
};

// Streaming hands out text deltas that never end inside a UTF-8 character, even when every byte
// of a multi-byte character is its own token, and that add up to the decoded output.
TEST(GenerateStreaming, DeltasAreWholeCharacters) {
    const Tokenizer tok = Tokenizer::load(fixture("tokenizers/gpt2.json"));
    const std::string text = "h\xC3\xA9llo \xE4\xB8\x96\xE7\x95\x8C \xF0\x9F\x98\x80!";  // "héllo 世界 😀!"
    std::vector<int32_t> script;
    for (unsigned char c : text) {
        const int32_t id = tok.token_to_id(byte_level_encode(std::string(1, static_cast<char>(c))));
        ASSERT_GE(id, 0);
        script.push_back(id);
    }
    ScriptedLM lm(script, tok.vocab_size());
    GenerationConfig cfg;
    cfg.max_new_tokens = static_cast<int64_t>(script.size());
    GenerateHooks hooks;
    hooks.tokenizer = &tok;
    std::string streamed;
    int deltas = 0;
    hooks.on_token = [&](int64_t, int32_t, std::string_view delta) {
        EXPECT_TRUE(utf8::is_valid(delta)) << "delta " << deltas;
        streamed += delta;
        ++deltas;
        return true;
    };
    GenerationResult res = generate(lm, {{script.back()}}, cfg, hooks);
    EXPECT_EQ(res.sequences[0].tokens, script);
    EXPECT_EQ(streamed, text);
    EXPECT_EQ(streamed, tok.decode(res.sequences[0].tokens));
}

}  // namespace
}  // namespace mslm
