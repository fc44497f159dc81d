// Decoding on the GPU (model/cuda_inference.h) against the CPU's HybridCausalLM on the committed
// fixture models: per-step logits within a bf16 bound, and the same greedy tokens.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "core/cuda_device.h"
#include "core/error.h"
#include "generate/generate.h"
#include "model/cuda_inference.h"
#include "model/model_io.h"
#include "test_util.h"

namespace mslm {
namespace {

std::string fixture(const std::string& name) {
    return std::string(MSLM_FIXTURE_DIR) + "/" + name;
}

#define SKIP_WITHOUT_GPU() \
    if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU: " << cuda_device_summary()

constexpr int kNewTokens = 16;

// Tolerance on the logits, relative to the step's largest |CPU logit|. The GPU keeps weights and
// activations in bf16 (unit roundoff 2^-9 each, 2^-8 per rounding taken at its worst) with fp32
// accumulation (n·2^-24, negligible here): a logit is the dot product of the bf16 final-norm output
// with a bf16 LM-head row (two roundings, ~2·2^-8 of Σ|h·w|), and each of the fixtures' ≤ 4 layers
// feeds it roundings of its norm output, projections, mixer output and residual (~8 per layer, each
// ≤ 2^-8 relative, adding up like a random walk: √(4·8 + 2) · 2^-8 ≈ 0.023). The residual stream
// and the logit scale Σ|h·w| are within a small factor of the largest logit on these models, so
// 0.06 (≈ 2.6× the estimate) bounds the difference without being loose enough to hide a wrong
// kernel (a wrong position, state or head changes logits by O(1) of their scale).
constexpr double kRelTol = 0.06;

int32_t argmax(const float* x, int64_t n) {
    return static_cast<int32_t>(std::max_element(x, x + n) - x);
}

// The CPU's gap between its top two logits at a step, relative to the step's largest |logit|: below
// 2·kRelTol the GPU may legitimately pick the other token (each logit may move by kRelTol).
double top2_gap(const std::vector<float>& x) {
    float a = -INFINITY, b = -INFINITY;
    for (float v : x) {
        if (v > a) {
            b = a;
            a = v;
        } else if (v > b) {
            b = v;
        }
    }
    return static_cast<double>(a) - static_cast<double>(b);
}

double max_abs(const std::vector<float>& x) {
    double m = 0;
    for (float v : x) m = std::max(m, std::fabs(static_cast<double>(v)));
    return m;
}

std::vector<int32_t> prompt_for(int64_t V) {
    std::vector<int32_t> p;
    for (int64_t i = 0; i < 7; ++i) p.push_back(static_cast<int32_t>((i * 37 + 5) % V));
    return p;
}

class CudaGenerate : public ::testing::TestWithParam<std::string> {};

// Teacher-forced on the CPU's greedy tokens, so that both models see the same inputs at every step:
// every step's logits agree within kRelTol; the argmax agrees wherever the CPU's top-2 gap leaves no
// room for a bf16 flip (on `trained`: at every step).
TEST_P(CudaGenerate, GreedyLogitsAndTokensMatchCpu) {
    SKIP_WITHOUT_GPU();
    const std::string name = GetParam();
    auto model = load_model<float>(fixture(name));
    std::unique_ptr<CausalLM> gpu;
    try {
        gpu = make_causal_lm(*model, "cuda");
    } catch (const Error& e) {
        if (std::string(e.what()).find("not supported on CUDA yet") != std::string::npos)
            GTEST_SKIP() << name << ": " << e.what();
        throw;
    }
    HybridCausalLM cpu(*model);
    const int64_t V = model->config().vocab_size, D = model->config().d_model;
    const std::vector<int32_t> prompt = prompt_for(V);
    const int64_t max_len = static_cast<int64_t>(prompt.size()) + kNewTokens + 1;
    cpu.start(1, max_len);
    gpu->start(1, max_len);
    std::vector<float> lc(V), lg(V), hc(prompt.size() * D), hg(prompt.size() * D);
    cpu.prefill(0, prompt, lc.data(), hc.data());
    gpu->prefill(0, prompt, lg.data(), hg.data());
    // Final-norm hidden states of the prompt: unit-RMS rows, compared relative to the largest entry.
    {
        double err = 0;
        for (size_t i = 0; i < hc.size(); ++i) err = std::max(err, std::fabs(double(hc[i]) - double(hg[i])));
        EXPECT_LE(err, kRelTol * max_abs(hc)) << name << ": prefill hidden states";
    }
    int first_tie = -1;
    const std::vector<int64_t> slot0{0};
    for (int step = 0; step < kNewTokens; ++step) {
        const double scale = max_abs(lc);
        double err = 0;
        for (int64_t i = 0; i < V; ++i) err = std::max(err, std::fabs(double(lc[i]) - double(lg[i])));
        EXPECT_LE(err, kRelTol * scale)
            << name << " step " << step << ": max |logit diff| " << err << " vs scale " << scale;
        const int32_t want = argmax(lc.data(), V);
        // On `trained` the tokens must agree at every step (the requirement); elsewhere
        // where the gap leaves no room for a bf16 flip.
        const bool tie = top2_gap(lc) < 2 * kRelTol * scale;
        if (tie && first_tie < 0) first_tie = step;
        if (!tie || name == "trained") {
            EXPECT_EQ(argmax(lg.data(), V), want) << name << " step " << step;
        }
        const std::vector<int32_t> tok{want};
        cpu.step(slot0, tok, lc.data(), nullptr);
        gpu->step(slot0, tok, lg.data(), nullptr);
    }
    if (first_tie >= 0)
        std::printf("[ INFO     ] %s: CPU top-2 gap below 2·%.2f of the logit scale from step %d on: %s\n",
                    name.c_str(), kRelTol, first_tie,
                    name == "trained" ? "tokens still required equal"
                                      : "tokens compared only where the gap is larger");
}

// generate() end to end: greedy tokens on the GPU equal the CPU's (16 new tokens), two prompts of
// different lengths in one batch, on the trained fixture. The random-weight fixtures have top-2
// logit gaps below bf16's error from the first step (the teacher-forced test above reports them:
// hybrid's first near-tie is at step 0, and on the H200 its free-running bf16 greedy path did
// leave the CPU's there), so exact tokens are only a fair demand of the trained model.
TEST_P(CudaGenerate, GreedyGenerateEqualsCpu) {
    SKIP_WITHOUT_GPU();
    const std::string name = GetParam();
    if (name != "trained") GTEST_SKIP() << name << ": random weights, near-ties; covered by the teacher-forced test";
    auto model = load_model<float>(fixture(name));
    auto gpu = make_causal_lm(*model, "cuda");
    HybridCausalLM cpu(*model);
    GenerationConfig cfg;
    cfg.max_new_tokens = kNewTokens;
    cfg.min_new_tokens = kNewTokens;
    const int64_t V = model->config().vocab_size;
    std::vector<int32_t> a = prompt_for(V), b = {static_cast<int32_t>(3 % V), static_cast<int32_t>(11 % V)};
    const GenerationResult want = generate(cpu, {a, b}, cfg);
    const GenerationResult got = generate(*gpu, {a, b}, cfg);
    ASSERT_EQ(got.sequences.size(), want.sequences.size());
    for (size_t i = 0; i < want.sequences.size(); ++i) {
        EXPECT_GE(want.sequences[i].tokens.size(), static_cast<size_t>(kNewTokens));
        EXPECT_EQ(got.sequences[i].tokens, want.sequences[i].tokens) << name << " sequence " << i;
    }
}

// generate()'s greedy decoding through the decoder's device-side loop (step_greedy_n, up to
// kGreedyChunk steps a call): on the trained fixture, two prompts, an EOS id that one sequence
// picks part-way (the loop stops after that step; the other sequence goes on alone), 60 new
// tokens (two calls and more). The tokens, scores and stop reasons equal generate() with one step
// a call (MSLM_DECODE_LOOP=0: the same kernels, so the same bits), and over the first 16 tokens
// the CPU's.
TEST(CudaGenerateLoop, DeviceLoopEqualsStepByStep) {
    SKIP_WITHOUT_GPU();
    auto model = load_model<float>(fixture("trained"));
    const int64_t V = model->config().vocab_size;
    const std::vector<int32_t> a = prompt_for(V),
                               b = {static_cast<int32_t>(3 % V), static_cast<int32_t>(11 % V)};
    GenerationConfig cfg;
    cfg.max_new_tokens = 60;
    std::vector<GenerationResult> runs;
    for (const char* loop : {"0", "1"}) {
        const test::ScopedEnv env("MSLM_DECODE_LOOP", std::string(loop));
        auto gpu = make_causal_lm(*model, "cuda");
        if (runs.empty()) {  // the EOS id: what sequence 0 picks at its 10th step without one
            const GenerationResult free = generate(*gpu, {a, b}, cfg);
            ASSERT_GE(free.sequences[0].tokens.size(), 12u);
            cfg.eos_token_id = {free.sequences[0].tokens[10]};
        }
        runs.push_back(generate(*gpu, {a, b}, cfg));
    }
    const GenerationResult &step = runs[0], &loop = runs[1];
    ASSERT_EQ(loop.sequences.size(), step.sequences.size());
    for (size_t i = 0; i < step.sequences.size(); ++i) {
        EXPECT_EQ(loop.sequences[i].tokens, step.sequences[i].tokens) << "sequence " << i;
        EXPECT_EQ(loop.sequences[i].token_scores, step.sequences[i].token_scores) << "sequence " << i;
        EXPECT_EQ(loop.sequences[i].score, step.sequences[i].score) << "sequence " << i;
        EXPECT_EQ(loop.sequences[i].stop_reason, step.sequences[i].stop_reason) << "sequence " << i;
    }
    EXPECT_LE(step.sequences[0].tokens.size(), 11u);  // stopped at the EOS id
    HybridCausalLM cpu(*model);
    GenerationConfig short_cfg = cfg;
    short_cfg.max_new_tokens = kNewTokens;
    const GenerationResult want = generate(cpu, {a, b}, short_cfg);
    auto gpu = make_causal_lm(*model, "cuda");
    const GenerationResult got = generate(*gpu, {a, b}, short_cfg);
    for (size_t i = 0; i < want.sequences.size(); ++i)
        EXPECT_EQ(got.sequences[i].tokens, want.sequences[i].tokens)
            << "sequence " << i << " against the CPU";
}

INSTANTIATE_TEST_SUITE_P(CudaGenerateFixtures, CudaGenerate,
                         ::testing::Values("mamba1", "mamba2", "jamba", "hybrid", "trained"));

// Slot bookkeeping (copy, reorder) gives the same logits as feeding the sequences directly.
TEST(CudaGenerateSlots, CopyAndReorderFollowTheCpu) {
    SKIP_WITHOUT_GPU();
    auto model = load_model<float>(fixture("trained"));
    auto gpu = make_causal_lm(*model, "cuda");
    HybridCausalLM cpu(*model);
    const int64_t V = model->config().vocab_size;
    for (CausalLM* lm : {static_cast<CausalLM*>(&cpu), gpu.get()}) lm->start(3, 32);
    std::vector<float> lc(3 * V), lg(3 * V);
    const std::vector<int32_t> p = prompt_for(V), q = {1, 2, 3};
    cpu.prefill(0, p, lc.data(), nullptr);
    gpu->prefill(0, p, lg.data(), nullptr);
    cpu.prefill(1, q, lc.data(), nullptr);
    gpu->prefill(1, q, lg.data(), nullptr);
    cpu.copy(0, 2);
    gpu->copy(0, 2);
    const std::vector<int64_t> order{1, 0, 0};
    cpu.reorder(order);
    gpu->reorder(order);
    const std::vector<int64_t> slots{0, 1, 2};
    const std::vector<int32_t> toks{4, 5, 6};
    cpu.step(slots, toks, lc.data(), nullptr);
    gpu->step(slots, toks, lg.data(), nullptr);
    for (int64_t s = 0; s < 3; ++s) {
        const std::vector<float> c(lc.begin() + s * V, lc.begin() + (s + 1) * V);
        double err = 0;
        for (int64_t i = 0; i < V; ++i)
            err = std::max(err, std::fabs(double(lc[s * V + i]) - double(lg[s * V + i])));
        EXPECT_LE(err, kRelTol * max_abs(c)) << "slot " << s;
    }
}

// Host-side: the device flag (runs without a GPU).
TEST(CudaGenerateHost, DeviceFlag) {
    EXPECT_EQ(parse_inference_device("cpu"), -1);
    EXPECT_EQ(parse_inference_device("cuda"), 0);
    EXPECT_EQ(parse_inference_device("cuda:3"), 3);
    EXPECT_THROW(parse_inference_device("gpu"), Error);
    EXPECT_THROW(parse_inference_device("cuda:"), Error);
#ifndef MSLM_HAVE_CUDA
    auto model = load_model<float>(fixture("trained"));
    EXPECT_THROW(make_causal_lm(*model, "cuda"), Error);
#endif
}

}  // namespace
}  // namespace mslm
