// Incremental decoding (DESIGN §5): prefill in the parallel form and recurrent decode steps must
// give the logits of the full-sequence forward at every position, for every mixer and position
// encoding, from any split of the sequence into prefill pieces and steps, for batches of slots at
// different positions, and after reorder / copy of slots.
//
// Tolerances, relative to the largest logit (or hidden value) of the reference. Both sides compute
// the same function with different algorithms: the forward runs the chunked SSD, the selective
// scan over the whole sequence and tiled attention with an online softmax; decoding runs one
// recurrent step per token and a two-pass softmax over the cache, and a continued prefill splits
// the scans and the conv at the piece boundary. Only the order of summation differs. Each value
// of these models sums at most ~100 terms through a handful of layers, so with unit roundoff u
// the disagreement is bounded by ~100·u: 1e-14 in double, 6e-6 in float. We allow 1e-12 and 1e-5
// (measured: 1.4e-15 and 6.8e-7). The double bound is the sharp one: deliberate slips moved the
// logits by 1e-5 (conv window handed on shifted by one row) to 1e-3 (ALiBi distances scaled by
// 1.1), seven orders above it.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <type_traits>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "inference_configs.h"
#include "model/config.h"
#include "model/hybrid_lm.h"
#include "model/inference.h"
#include "model/info.h"
#include "model/model_io.h"
#include "ops/ssd.h"

using namespace mslm;

namespace {

template <typename T>
constexpr double kTol = std::is_same_v<T, double> ? 1e-12 : 1e-5;

using namespace mslm::test;
const auto& kCases = kInferenceCases;

constexpr int64_t kLen = 15;  // tokens per test sequence: several chunks, beyond every window

std::vector<int32_t> random_ids(Rng& rng, int64_t n, int64_t vocab) {
    std::vector<int32_t> v(static_cast<size_t>(n));
    for (auto& x : v) x = static_cast<int32_t>(rng.below(static_cast<uint64_t>(vocab)));
    return v;
}

// A randomly initialised model, perturbed so that no term is trivially 0 or 1 (norm weights, D,
// biases), and a way to get the full-sequence forward logits of any sequence.
template <typename T>
struct Fixture {
    ModelConfig cfg;
    HybridLM<T> model;
    explicit Fixture(const ModelConfig& c) : cfg(c), model(c) {
        model.init(11);
        Rng rng(12);
        T* v = model.params().values();
        for (const auto& s : model.params().specs())
            for (int64_t i = 0; i < s.numel; ++i) v[s.offset + i] += static_cast<T>(0.1 * rng.normal());
    }
    int64_t V() const { return cfg.vocab_size; }
    // (n, V) logits and (n, D) final hidden states of the training forward.
    std::vector<T> reference(const std::vector<int32_t>& ids, std::vector<T>* hidden = nullptr) {
        const int64_t n = static_cast<int64_t>(ids.size());
        model.forward(ids.data(), nullptr, 1, n);
        if (hidden) hidden->assign(model.final_hidden(), model.final_hidden() + n * cfg.d_model);
        return std::vector<T>(model.logits(), model.logits() + n * V());
    }
};

// max |got − want| / max |want| over n values.
template <typename T>
double scaled_error(const T* got, const T* want, int64_t n) {
    double diff = 0, scale = 0;
    for (int64_t i = 0; i < n; ++i) {
        diff = std::max(diff, std::fabs(static_cast<double>(got[i]) - static_cast<double>(want[i])));
        scale = std::max(scale, std::fabs(static_cast<double>(want[i])));
    }
    return diff / scale;
}

template <typename T>
void expect_rows_close(const T* got, const std::vector<T>& want, int64_t row0, int64_t rows, int64_t width,
                       const std::string& what) {
    double err = scaled_error(got, want.data() + row0 * width, rows * width);
    EXPECT_LT(err, kTol<T>) << what << " (rows " << row0 << ".." << row0 + rows << "): scaled error " << err;
}

void expect_error(const std::function<void()>& fn, const std::string& phrase) {
    try {
        fn();
        ADD_FAILURE() << "no error; expected one containing: " << phrase;
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(phrase), std::string::npos) << e.what();
    }
}

class Inference : public testing::TestWithParam<Case> {};

std::string case_name(const testing::TestParamInfo<Case>& info) {
    return info.param.name;
}

// (a) One prefill of the whole sequence, all positions and the last one alone.
template <typename T>
void check_prefill_all(const ModelConfig& cfg) {
    Fixture<T> f(cfg);
    Rng rng(1);
    auto ids = random_ids(rng, kLen, cfg.vocab_size);
    std::vector<T> ref_hidden;
    auto ref = f.reference(ids, &ref_hidden);
    InferenceState<T> st(cfg, 2, cfg.max_seq_len);
    std::vector<T> logits(kLen * f.V()), hidden(kLen * cfg.d_model);
    f.model.prefill(st, 1, ids.data(), kLen, logits.data(), hidden.data(), true);
    expect_rows_close(logits.data(), ref, 0, kLen, f.V(), "prefill logits");
    expect_rows_close(hidden.data(), ref_hidden, 0, kLen, cfg.d_model, "prefill hidden");
    EXPECT_EQ(st.position(1), kLen);
    EXPECT_EQ(st.position(0), 0);

    std::vector<T> last(f.V()), last_hidden(cfg.d_model);
    f.model.prefill(st, 0, ids.data(), kLen, last.data(), last_hidden.data());
    expect_rows_close(last.data(), ref, kLen - 1, 1, f.V(), "prefill last logits");
    expect_rows_close(last_hidden.data(), ref_hidden, kLen - 1, 1, cfg.d_model, "prefill last hidden");
}

// (b) A prompt of `prefix` tokens (0: none), then one decode step per token.
template <typename T>
void check_decode(const ModelConfig& cfg, int64_t prefix) {
    Fixture<T> f(cfg);
    Rng rng(2);
    auto ids = random_ids(rng, kLen, cfg.vocab_size);
    auto ref = f.reference(ids);
    InferenceState<T> st(cfg, 1, kLen);
    std::vector<T> logits(f.V());
    const int64_t slot = 0;
    if (prefix > 0) {
        f.model.prefill(st, slot, ids.data(), prefix, logits.data(), nullptr);
        expect_rows_close(logits.data(), ref, prefix - 1, 1, f.V(), "prompt logits");
    }
    for (int64_t t = prefix; t < kLen; ++t) {
        f.model.decode(st, &slot, &ids[t], 1, logits.data(), nullptr);
        expect_rows_close(logits.data(), ref, t, 1, f.V(), "decode logits, prompt " + std::to_string(prefix));
    }
    EXPECT_EQ(st.position(slot), kLen);
}

// (c) The sequence in several prefill pieces, each continuing from the last.
template <typename T>
void check_prefill_pieces(const ModelConfig& cfg, const std::vector<int64_t>& pieces) {
    Fixture<T> f(cfg);
    Rng rng(3);
    auto ids = random_ids(rng, kLen, cfg.vocab_size);
    auto ref = f.reference(ids);
    InferenceState<T> st(cfg, 1, kLen);
    std::vector<T> logits(kLen * f.V());
    int64_t pos = 0;
    for (int64_t n : pieces) {
        f.model.prefill(st, 0, ids.data() + pos, n, logits.data(), nullptr, true);
        expect_rows_close(logits.data(), ref, pos, n, f.V(), "continued prefill");
        pos += n;
    }
    ASSERT_EQ(pos, kLen);
}

// (d) Three sequences with prompts of different lengths in scattered slots, decoded together,
// then a subset of them in another order.
template <typename T>
void check_batch(const ModelConfig& cfg) {
    Fixture<T> f(cfg);
    Rng rng(4);
    const int64_t prompt[3] = {2, 7, 5}, slot_of[3] = {3, 0, 2};
    std::vector<std::vector<int32_t>> ids;
    std::vector<std::vector<T>> ref;
    for (int i = 0; i < 3; ++i) {
        ids.push_back(random_ids(rng, kLen, cfg.vocab_size));
        ref.push_back(f.reference(ids.back()));
    }
    InferenceState<T> st(cfg, 4, kLen);
    std::vector<T> logits(3 * f.V());
    for (int i = 0; i < 3; ++i) f.model.prefill(st, slot_of[i], ids[i].data(), prompt[i], nullptr, nullptr);
    auto step = [&](const std::vector<int>& seqs) {
        std::vector<int64_t> slots;
        std::vector<int32_t> tokens;
        std::vector<int64_t> pos;
        for (int i : seqs) {
            slots.push_back(slot_of[i]);
            pos.push_back(st.position(slot_of[i]));
            tokens.push_back(ids[i][pos.back()]);
        }
        const int64_t k = static_cast<int64_t>(seqs.size());
        f.model.decode(st, slots.data(), tokens.data(), k, logits.data(), nullptr);
        for (int64_t j = 0; j < k; ++j)
            expect_rows_close(logits.data() + j * f.V(), ref[seqs[j]], pos[j], 1, f.V(),
                              "batched decode, sequence " + std::to_string(seqs[j]));
    };
    for (int s = 0; s < 6; ++s) step({0, 1, 2});
    for (int s = 0; s < 2; ++s) step({2, 0});
    step({0});
    EXPECT_EQ(st.position(slot_of[0]), 2 + 6 + 2 + 1);
    EXPECT_EQ(st.position(slot_of[1]), 7 + 6);
    EXPECT_EQ(st.position(slot_of[2]), 5 + 6 + 2);
    EXPECT_EQ(st.position(1), 0);  // the unused slot
}

// (e) Beam-style forks: reorder with repeated indices, then copy, then continue decoding; every
// slot must give the logits of the sequence it now holds.
template <typename T>
void check_reorder_copy(const ModelConfig& cfg) {
    Fixture<T> f(cfg);
    Rng rng(5);
    // A and B are the two prompts; A2 / B2 share their prefix and continue differently.
    const int64_t la = 5, lb = 8;
    auto A = random_ids(rng, kLen, cfg.vocab_size), B = random_ids(rng, kLen, cfg.vocab_size);
    auto A2 = random_ids(rng, kLen, cfg.vocab_size), B2 = random_ids(rng, kLen, cfg.vocab_size);
    std::copy_n(A.begin(), la, A2.begin());
    std::copy_n(B.begin(), lb, B2.begin());
    const std::vector<T> ref_A = f.reference(A), ref_B = f.reference(B), ref_A2 = f.reference(A2),
                         ref_B2 = f.reference(B2);

    InferenceState<T> st(cfg, 4, kLen);
    f.model.prefill(st, 0, A.data(), la, nullptr, nullptr);
    f.model.prefill(st, 1, B.data(), lb, nullptr, nullptr);
    const int64_t src[4] = {1, 0, 0, 1};  // slot 0 ← B, 1 ← A, 2 ← A, 3 ← B
    st.reorder(src);
    EXPECT_EQ(st.position(0), lb);
    EXPECT_EQ(st.position(2), la);

    // Slot i now continues holds[i].
    std::vector<const std::vector<int32_t>*> holds = {&B, &A, &A2, &B2};
    std::vector<const std::vector<T>*> refs = {&ref_B, &ref_A, &ref_A2, &ref_B2};
    std::vector<T> logits(4 * f.V());
    auto step = [&](const std::vector<int64_t>& slots) {
        std::vector<int32_t> tokens;
        std::vector<int64_t> pos;
        for (int64_t s : slots) {
            pos.push_back(st.position(s));
            tokens.push_back((*holds[s])[pos.back()]);
        }
        f.model.decode(st, slots.data(), tokens.data(), static_cast<int64_t>(slots.size()), logits.data(),
                       nullptr);
        for (size_t j = 0; j < slots.size(); ++j)
            expect_rows_close(logits.data() + j * f.V(), *refs[slots[j]], pos[j], 1, f.V(),
                              "after reorder, slot " + std::to_string(slots[j]));
    };
    for (int s = 0; s < 3; ++s) step({0, 1, 2, 3});
    // Slot 1 takes over slot 2's sequence (A2 at position la + 3).
    st.copy(2, 1);
    holds[1] = &A2;
    refs[1] = &ref_A2;
    EXPECT_EQ(st.position(1), la + 3);
    for (int s = 0; s < 3; ++s) step({1, 2, 3});
    // A permutation with a self-source and a swap: slot 0 ← 3, 3 ← 0, 1 and 2 stay.
    const int64_t swap[4] = {3, 1, 2, 0};
    st.reorder(swap);
    std::swap(holds[0], holds[3]);
    std::swap(refs[0], refs[3]);
    step({3, 0, 1});
}

// The HF fixtures (tests/parity/fixtures, see test_hf_parity.cpp): decoding both sequences of
// each fixture together, after a short prompt, reproduces HF's full-sequence logits. Bounds are
// those of the HF parity test (our double model agrees with HF's fp32 to ~7e-7, fp32 adds its own
// rounding): 1e-5 in double, 3e-5 in float, relative to the largest logit.
template <typename T>
void check_hf_decode(const std::string& name, double tol) {
    const std::string dir = std::string(MSLM_FIXTURE_DIR) + "/" + name;
    SafetensorsFile expected = SafetensorsFile::open(dir + "/expected.safetensors");
    Tensor ids_t = expected.get("input_ids").clone();
    const int64_t B = ids_t.size(0), Tn = ids_t.size(1);
    const int32_t* ids = ids_t.data<int32_t>();
    std::vector<float> want = expected.get_f32("logits").to_float_vector();  // (B, T, V)
    auto model = load_model<T>(dir);
    const int64_t V = model->config().vocab_size;
    double scale = 0;
    for (float x : want) scale = std::max(scale, static_cast<double>(std::fabs(x)));

    auto check_row = [&](const T* got, int64_t b, int64_t t, const std::string& what) {
        double worst = 0;
        for (int64_t v = 0; v < V; ++v)
            worst = std::max(worst, std::fabs(static_cast<double>(got[v]) - want[(b * Tn + t) * V + v]));
        EXPECT_LT(worst, tol * scale) << name << " " << what << " b=" << b << " t=" << t;
    };
    InferenceState<T> st(model->config(), B, Tn);
    std::vector<T> logits(B * V);
    // Sequence b in slot B − 1 − b, with prompts of different lengths.
    std::vector<int64_t> slots(B);
    for (int64_t b = 0; b < B; ++b) {
        slots[b] = B - 1 - b;
        const int64_t prompt = 1 + b * 3;
        model->prefill(st, slots[b], ids + b * Tn, prompt, logits.data(), nullptr);
        check_row(logits.data(), b, prompt - 1, "prefill");
    }
    for (;;) {
        std::vector<int64_t> active;
        std::vector<int32_t> tokens;
        std::vector<int64_t> seq;
        for (int64_t b = 0; b < B; ++b) {
            if (st.position(slots[b]) == Tn) continue;
            active.push_back(slots[b]);
            tokens.push_back(ids[b * Tn + st.position(slots[b])]);
            seq.push_back(b);
        }
        if (active.empty()) break;
        std::vector<int64_t> pos;
        for (int64_t s : active) pos.push_back(st.position(s));
        model->decode(st, active.data(), tokens.data(), static_cast<int64_t>(active.size()), logits.data(),
                      nullptr);
        for (size_t j = 0; j < active.size(); ++j) check_row(logits.data() + j * V, seq[j], pos[j], "decode");
    }
}

}  // namespace

TEST_P(Inference, PrefillAllPositionsMatchesForward) {
    check_prefill_all<double>(GetParam().make());
    check_prefill_all<float>(GetParam().make());
}

TEST_P(Inference, DecodeEveryTokenMatchesForward) {
    for (int64_t prefix : {0, 1, 6}) {
        check_decode<double>(GetParam().make(), prefix);
        check_decode<float>(GetParam().make(), prefix);
    }
}

TEST_P(Inference, ContinuedPrefillMatchesForward) {
    // Pieces of 1 token, pieces crossing chunk (4) and window (3, 5) boundaries.
    for (const std::vector<int64_t>& pieces :
         {std::vector<int64_t>{4, 1, 7, 3}, std::vector<int64_t>{2, 9, 4}}) {
        check_prefill_pieces<double>(GetParam().make(), pieces);
        check_prefill_pieces<float>(GetParam().make(), pieces);
    }
}

TEST_P(Inference, BatchOfDifferentLengthsMatchesEachAlone) {
    check_batch<double>(GetParam().make());
    check_batch<float>(GetParam().make());
}

TEST_P(Inference, ReorderAndCopyThenDecodeMatchForward) {
    check_reorder_copy<double>(GetParam().make());
    check_reorder_copy<float>(GetParam().make());
}

INSTANTIATE_TEST_SUITE_P(Mixers, Inference, testing::ValuesIn(kCases), case_name);

TEST(InferenceState, SizesFollowTheConfig) {
    ModelConfig cfg = mamba2_rope_partial();  // M A M, d_inner 32, 2 groups, d_state 4, d_conv 4
    InferenceState<float> st(cfg, 3, 20);
    EXPECT_EQ(st.cache_len(), 20);  // no window: the whole max_len
    const int64_t conv_channels = 32 + 2 * 2 * 4;
    EXPECT_EQ(st.layer(0).conv.size(), size_t(3 * 3 * conv_channels));
    EXPECT_EQ(st.layer(0).ssm.size(), size_t(3 * 8 * 4 * 4));  // (slots, H, P, N)
    EXPECT_TRUE(st.layer(0).k.empty());
    EXPECT_EQ(st.layer(1).k.size(), size_t(3 * 20 * 2 * 4));  // (slots, L, Hkv, Dh)
    EXPECT_TRUE(st.layer(1).conv.empty());
    const size_t elements = 2 * (st.layer(0).conv.size() + st.layer(0).ssm.size()) + 2 * st.layer(1).k.size();
    EXPECT_EQ(st.bytes(), elements * sizeof(float));

    ModelConfig m1 = mamba1_plain();  // Mamba-1: conv channels = d_inner, state (d_inner, d_state)
    InferenceState<double> s1(m1, 2, 10);
    EXPECT_EQ(s1.layer(1).conv.size(), size_t(2 * 3 * 32));
    EXPECT_EQ(s1.layer(1).ssm.size(), size_t(2 * 32 * 4));

    ModelConfig w = rope_window();  // window 5
    EXPECT_EQ(InferenceState<float>(w, 1, 30).cache_len(), 5);
    EXPECT_EQ(InferenceState<float>(w, 1, 4).cache_len(), 4);  // max_len below the window
}

// MSLM_DECODE_STATE=bf16: Mamba-2 states in bf16 (d_state 16 here: the bf16 kernel needs a
// multiple of 8), the rest as before. Prefill runs the recurrence on an fp32 copy of the (zero)
// state, so its logits are the fp32 states' bits; every step then differs only by the states'
// roundings (≤ 2^-9 of a state each, ops::ssd_update_bf16_state, whose test checks the rest bit for
// bit), carried from step to step: over the 7 roundings here (prefill's and 6 steps') at most √7·2^-9
// ≈ 0.005 of a state as a random walk, 2 Mamba-2 layers adding in quadrature ≈ 0.008 of the logits'
// scale; the bound is 0.02. A copied slot decodes the same bits as its source.
TEST(InferenceState, Bf16StatesFollowTheF32States) {
    ModelConfig cfg = mamba2_rope_partial();
    cfg.mamba.d_state = 16;
    if (!ops::ssd_update_bf16_state_supported(16)) GTEST_SKIP() << "no AVX2: the bf16-state kernel needs it";
    Fixture<float> f(cfg);
    Rng rng(9);
    const auto ids = random_ids(rng, 5, cfg.vocab_size);
    setenv("MSLM_DECODE_STATE", "bf16", 1);
    EXPECT_TRUE(cpu_bf16_ssm_state(cfg));
    InferenceState<float> s16(cfg, 2, 20);
    const MemoryEstimate est16 = estimate_memory(cfg, 1, 20);
    unsetenv("MSLM_DECODE_STATE");
    InferenceState<float> s32(cfg, 2, 20);
    ASSERT_TRUE(s16.layer(0).ssm.empty());
    ASSERT_EQ(s16.layer(0).ssm16.size(), s32.layer(0).ssm.size());
    EXPECT_EQ(s32.bytes() - s16.bytes(), 2 * (s16.layer(0).ssm16.size() + s16.layer(2).ssm16.size()));
    EXPECT_EQ(2 * static_cast<size_t>(est16.state_per_sequence), s16.bytes());
    EXPECT_EQ(2 * static_cast<size_t>(estimate_memory(cfg, 1, 20).state_per_sequence), s32.bytes());

    const int64_t V = f.V();
    std::vector<float> p16(V), p32(V);
    f.model.prefill(s16, 0, ids.data(), 5, p16.data(), nullptr);
    f.model.prefill(s32, 0, ids.data(), 5, p32.data(), nullptr);
    EXPECT_EQ(p16, p32) << "prefill";
    s16.copy(0, 1);
    s32.copy(0, 1);
    double worst = 0.0;
    for (int t = 0; t < 6; ++t) {
        const int64_t slots[2] = {0, 1};
        const int32_t toks[2] = {static_cast<int32_t>((3 * t + 1) % V),
                                 static_cast<int32_t>((3 * t + 1) % V)};
        std::vector<float> l16(2 * V), l32(2 * V);
        f.model.decode(s16, slots, toks, 2, l16.data(), nullptr);
        f.model.decode(s32, slots, toks, 2, l32.data(), nullptr);
        EXPECT_TRUE(std::equal(l16.begin(), l16.begin() + V, l16.begin() + V))
            << "the copied slot, step " << t;
        const double err = scaled_error(l16.data(), l32.data(), V);
        EXPECT_LE(err, 0.02) << "step " << t;
        worst = std::max(worst, err);
    }
    std::printf("bf16 states: largest logit change %.3g of the row's scale\n", worst);
    setenv("MSLM_DECODE_STATE", "f16", 1);
    EXPECT_THROW(cpu_bf16_ssm_state(cfg), Error);
    unsetenv("MSLM_DECODE_STATE");
}

TEST(InferenceState, ShortMaxLenBelowTheWindowDecodes) {
    ModelConfig cfg = rope_window();
    cfg.attention.sliding_window = 9;  // longer than the state's max_len: no wrap, every key kept
    Fixture<float> f(cfg);
    Rng rng(6);
    auto ids = random_ids(rng, 7, cfg.vocab_size);
    auto ref = f.reference(ids);
    InferenceState<float> st(cfg, 1, 7);
    std::vector<float> logits(f.V());
    const int64_t slot = 0;
    f.model.prefill(st, slot, ids.data(), 3, nullptr, nullptr);
    for (int64_t t = 3; t < 7; ++t) {
        f.model.decode(st, &slot, &ids[t], 1, logits.data(), nullptr);
        expect_rows_close(logits.data(), ref, t, 1, f.V(), "decode");
    }
}

TEST(InferenceState, ClearedSlotStartsOver) {
    ModelConfig cfg = mamba2_rope_partial();
    Fixture<double> f(cfg);
    Rng rng(7);
    auto ids = random_ids(rng, 9, cfg.vocab_size), other = random_ids(rng, 6, cfg.vocab_size);
    auto ref = f.reference(ids);
    InferenceState<double> st(cfg, 2, 20);
    f.model.prefill(st, 1, other.data(), 6, nullptr, nullptr);
    st.clear(1);
    EXPECT_EQ(st.position(1), 0);
    std::vector<double> logits(9 * f.V());
    f.model.prefill(st, 1, ids.data(), 9, logits.data(), nullptr, true);
    expect_rows_close(logits.data(), ref, 0, 9, f.V(), "after clear(slot)");
    st.clear();
    EXPECT_EQ(st.position(1), 0);
    f.model.prefill(st, 1, ids.data(), 9, logits.data(), nullptr, true);
    expect_rows_close(logits.data(), ref, 0, 9, f.V(), "after clear()");
}

// Inference between a forward and its backward leaves the saved activations alone: the gradients
// are bit for bit those without it.
TEST(Inference, TrainingForwardBackwardUnaffected) {
    for (const Case& c : kCases) {
        ModelConfig cfg = c.make();
        Fixture<double> f(cfg);
        Rng rng(8);
        auto ids = random_ids(rng, 2 * 6, cfg.vocab_size), targets = random_ids(rng, 2 * 6, cfg.vocab_size);
        auto prompt = random_ids(rng, 9, cfg.vocab_size);
        const size_t n = static_cast<size_t>(f.model.params().total());
        f.model.params().zero_grad();
        f.model.forward(ids.data(), targets.data(), 2, 6);
        f.model.backward();
        std::vector<double> want(f.model.params().grads(), f.model.params().grads() + n);

        f.model.params().zero_grad();
        f.model.forward(ids.data(), targets.data(), 2, 6);
        InferenceState<double> st(cfg, 2, 12);
        std::vector<double> logits(2 * f.V());
        f.model.prefill(st, 0, prompt.data(), 9, logits.data(), nullptr, false);
        const int64_t slots[2] = {1, 0};
        f.model.decode(st, slots, prompt.data(), 2, logits.data(), nullptr);
        f.model.backward();
        std::vector<double> got(f.model.params().grads(), f.model.params().grads() + n);
        EXPECT_EQ(got, want) << c.name;
    }
}

TEST(Inference, ErrorsAreClear) {
    ModelConfig cfg = mamba2_rope_partial();
    Fixture<float> f(cfg);
    expect_error([&] { InferenceState<float>(cfg, 2, cfg.max_seq_len + 1); },
                 "above the model's max_seq_len");
    expect_error([&] { InferenceState<float>(cfg, 0, 8); }, "slots");
    expect_error([&] { InferenceState<float>(cfg, 1, 0); }, "max_len");

    InferenceState<float> st(cfg, 2, 6);
    std::vector<int32_t> ids = {1, 2, 3, 4, 5, 6, 7};
    f.model.prefill(st, 0, ids.data(), 4, nullptr, nullptr);
    expect_error([&] { f.model.prefill(st, 0, ids.data(), 3, nullptr, nullptr); },
                 "exceed the state's max_len 6");
    EXPECT_EQ(st.position(0), 4);  // the failed call consumed nothing
    expect_error([&] { f.model.prefill(st, 2, ids.data(), 1, nullptr, nullptr); }, "slot 2 out of range");
    expect_error([&] { f.model.prefill(st, 1, ids.data(), 0, nullptr, nullptr); }, "no tokens");
    std::vector<int32_t> bad = {static_cast<int32_t>(cfg.vocab_size)};
    expect_error([&] { f.model.prefill(st, 1, bad.data(), 1, nullptr, nullptr); }, "outside the vocabulary");
    EXPECT_EQ(st.position(1), 0);

    const int64_t slot0 = 0;
    f.model.decode(st, &slot0, ids.data(), 1, nullptr, nullptr);
    f.model.decode(st, &slot0, ids.data(), 1, nullptr, nullptr);
    expect_error([&] { f.model.decode(st, &slot0, ids.data(), 1, nullptr, nullptr); },
                 "slot 0 is full (max_len 6)");
    const int64_t twice[2] = {1, 1}, out_of_range[1] = {-1};
    expect_error([&] { f.model.decode(st, twice, ids.data(), 2, nullptr, nullptr); }, "slot 1 given twice");
    expect_error([&] { f.model.decode(st, out_of_range, ids.data(), 1, nullptr, nullptr); },
                 "slot -1 out of range");

    const int64_t short_src[1] = {0}, bad_src[2] = {0, 2};
    expect_error([&] { st.reorder(short_src); }, "reorder with 1 indices for 2 slots");
    expect_error([&] { st.reorder(bad_src); }, "reorder index 2 out of range");
    expect_error([&] { st.copy(0, 2); }, "out of range");
    expect_error([&] { st.clear(5); }, "slot 5 out of range");
}

TEST(InferenceHfFixtures, Mamba1) {
    check_hf_decode<double>("mamba1", 1e-5);
    check_hf_decode<float>("mamba1", 3e-5);
}
TEST(InferenceHfFixtures, Mamba2) {
    check_hf_decode<double>("mamba2", 1e-5);
    check_hf_decode<float>("mamba2", 3e-5);
}
TEST(InferenceHfFixtures, Jamba) {
    check_hf_decode<double>("jamba", 1e-5);
    check_hf_decode<float>("jamba", 3e-5);
}
TEST(InferenceHfFixtures, BambaHybrid) {
    check_hf_decode<double>("hybrid", 1e-5);
    check_hf_decode<float>("hybrid", 3e-5);
}
