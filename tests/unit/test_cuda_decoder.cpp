// The stateful GPU decoder (model/cuda_inference.h) against the CPU's HybridCausalLM on small random
// models covering every mixer and position encoding: prefill (in one call and continued over
// several), batched steps of slots at different positions, ring buffers that wrap, copy / reorder,
// prompts longer than one prefill piece, and CUDA graphs giving the eager path's bits.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "core/cuda_device.h"
#include "core/error.h"
#include "core/rng.h"
#include "generate/lm.h"
#include "model/config.h"
#include "model/cuda_inference.h"
#include "model/hybrid_lm.h"

namespace mslm {
namespace {

#ifdef MSLM_HAVE_CUDA

#define SKIP_WITHOUT_GPU() \
    if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU: " << cuda_device_summary()

// Relative to the largest |CPU logit| of the row: the argument of test_cuda_generate.cpp's kRelTol
// (bf16 weights and activations, ~8 roundings of ≤ 2^-8 per layer adding like a random walk, plus
// the LM head's; ≤ 3 layers here: √(3·8 + 2)·2^-8 ≈ 0.02), with the same 0.06 bound. The logits
// themselves are fp32 on the GPU (no rounding of their own). A wrong state, position, slot or
// head moves logits by O(1) of their scale.
constexpr double kRelTol = 0.06;

ModelConfig base_config(const std::string& layers) {
    ModelConfig c;
    c.vocab_size = 29;
    c.d_model = 32;
    c.layers = parse_layer_pattern(layers);
    c.n_layers = static_cast<int64_t>(c.layers.size());
    c.mamba.version = 2;
    c.mamba.d_state = 8;
    c.mamba.head_dim = 8;
    c.mamba.chunk_size = 4;  // prompts span several chunks
    c.attention.n_heads = 4;
    c.attention.n_kv_heads = 2;
    c.mlp = {MlpKind::SwiGLU, 24, false};
    c.max_seq_len = 64;
    return c;
}

ModelConfig mamba1_plain() {
    ModelConfig c = base_config("MM");
    c.mamba.version = 1;
    c.mamba.dt_rank = 3;
    c.mlp.kind = MlpKind::None;
    return c;
}

// Mamba-1 + attention without positions, LayerNorm, biases everywhere, an untied head.
ModelConfig mamba1_attention() {
    ModelConfig c = base_config("MAM");
    c.mamba.version = 1;
    c.mamba.d_state = 5;
    c.mamba.dt_rank = 2;
    c.mamba.proj_bias = true;
    c.attention.position = PositionKind::None;
    c.attention.n_kv_heads = 4;
    c.attention.qkv_bias = true;
    c.attention.out_bias = true;
    c.mlp.bias = true;
    c.norm = NormKind::LayerNorm;
    c.tie_embeddings = false;
    return c;
}

// Mamba-2 with two groups + attention with partial RoPE and GQA.
ModelConfig mamba2_rope_partial() {
    ModelConfig c = base_config("MAM");
    c.mamba.n_groups = 2;
    c.attention.rotary_dim = 4;
    c.attention.rope_theta = 100;
    return c;
}

// Pure Mamba-2 with dt clamped, one norm group, d_conv 3.
ModelConfig mamba2_dt_limit() {
    ModelConfig c = base_config("MM");
    c.mamba.n_groups = 2;
    c.mamba.norm_groups = 1;
    c.mamba.d_conv = 3;
    c.mamba.dt_limit_max = 0.05;
    c.mlp.kind = MlpKind::None;
    return c;
}

// ALiBi with 3 heads, one KV head, head_dim 5 (padded by the kernels), a window of 3: the rings wrap.
ModelConfig alibi_window() {
    ModelConfig c = base_config("AMA");
    c.attention.position = PositionKind::ALiBi;
    c.attention.n_heads = 3;
    c.attention.n_kv_heads = 1;
    c.attention.head_dim = 5;
    c.attention.sliding_window = 3;
    return c;
}

// Full RoPE with a window of 5 and GQA.
ModelConfig rope_window() {
    ModelConfig c = base_config("MA");
    c.attention.rope_theta = 100;
    c.attention.sliding_window = 5;
    return c;
}

struct Case {
    const char* name;
    ModelConfig (*make)();
};

const Case kCases[] = {{"Mamba1", mamba1_plain},
                       {"Mamba1AttentionLayerNormBiases", mamba1_attention},
                       {"Mamba2RopePartialGqa", mamba2_rope_partial},
                       {"Mamba2DtLimit", mamba2_dt_limit},
                       {"AlibiWindowMqa", alibi_window},
                       {"RopeWindowGqa", rope_window}};

void PrintTo(const Case& c, std::ostream* os) {
    *os << c.name;
}

// A random model, perturbed so that no term is trivially 0 or 1.
std::unique_ptr<HybridLM<float>> random_model(const ModelConfig& cfg) {
    auto model = std::make_unique<HybridLM<float>>(cfg);
    model->init(11);
    Rng rng(12);
    float* v = model->params().values();
    for (const auto& s : model->params().specs())
        for (int64_t i = 0; i < s.numel; ++i) v[s.offset + i] += static_cast<float>(0.1 * rng.normal());
    return model;
}

std::vector<int32_t> random_ids(Rng& rng, int64_t n, int64_t vocab) {
    std::vector<int32_t> v(static_cast<size_t>(n));
    for (auto& x : v) x = static_cast<int32_t>(rng.below(static_cast<uint64_t>(vocab)));
    return v;
}

// max |got − want| over each row of width w, against kRelTol · max |want| of that row.
void expect_rows_close(const std::vector<float>& got, const std::vector<float>& want, int64_t w,
                       const std::string& what) {
    ASSERT_EQ(got.size(), want.size()) << what;
    for (size_t r = 0; r < want.size() / w; ++r) {
        double err = 0, scale = 0;
        for (int64_t i = 0; i < w; ++i) {
            err = std::max(err, std::fabs(double(got[r * w + i]) - double(want[r * w + i])));
            scale = std::max(scale, std::fabs(double(want[r * w + i])));
        }
        EXPECT_LE(err, kRelTol * scale) << what << " row " << r << ": max diff " << err << ", scale " << scale;
    }
}

class CudaDecoder : public testing::TestWithParam<Case> {};

// Three slots at different positions: slot 0 prefilled in one call, slot 1 in three (each continuing
// the conv windows, SSM states and KV rings), slot 2 with one token; then batched steps over all of
// them and over a subset, a copy and a beam-style reorder, every logit row against the CPU.
TEST_P(CudaDecoder, FollowsTheCpuDecoder) {
    SKIP_WITHOUT_GPU();
    const ModelConfig cfg = GetParam().make();
    auto model = random_model(cfg);
    HybridCausalLM cpu(*model);
    CudaCausalLM gpu(*model);
    const int64_t V = cfg.vocab_size, D = cfg.d_model;
    Rng rng(7);
    cpu.start(3, cfg.max_seq_len);
    gpu.start(3, cfg.max_seq_len);
    auto both_prefill = [&](int64_t slot, const std::vector<int32_t>& ids, const std::string& what) {
        std::vector<float> lc(V), lg(V), hc(ids.size() * D), hg(ids.size() * D);
        cpu.prefill(slot, ids, lc.data(), hc.data());
        gpu.prefill(slot, ids, lg.data(), hg.data());
        expect_rows_close(lg, lc, V, what + " logits");
        expect_rows_close(hg, hc, D, what + " hidden");
    };
    both_prefill(0, random_ids(rng, 9, V), "slot 0 prefill");
    both_prefill(1, random_ids(rng, 4, V), "slot 1 prefill a");
    both_prefill(1, random_ids(rng, 2, V), "slot 1 prefill b");
    both_prefill(1, random_ids(rng, 7, V), "slot 1 prefill c");
    both_prefill(2, random_ids(rng, 1, V), "slot 2 prefill");
    auto both_step = [&](const std::vector<int64_t>& slots, const std::string& what) {
        const auto k = static_cast<int64_t>(slots.size());
        const std::vector<int32_t> toks = random_ids(rng, k, V);
        std::vector<float> lc(k * V), lg(k * V), hc(k * D), hg(k * D);
        cpu.step(slots, toks, lc.data(), hc.data());
        gpu.step(slots, toks, lg.data(), hg.data());
        expect_rows_close(lg, lc, V, what + " logits");
        expect_rows_close(hg, hc, D, what + " hidden");
    };
    for (int t = 0; t < 8; ++t) both_step({0, 1, 2}, "step " + std::to_string(t));
    for (int t = 0; t < 3; ++t) both_step({2, 0}, "subset step " + std::to_string(t));
    cpu.copy(1, 2);
    gpu.copy(1, 2);
    both_step({2, 1}, "after copy");
    const std::vector<int64_t> order{2, 2, 0};
    cpu.reorder(order);
    gpu.reorder(order);
    EXPECT_EQ(gpu.position(0), gpu.position(1));
    for (int t = 0; t < 4; ++t) both_step({0, 1, 2}, "after reorder " + std::to_string(t));
    both_prefill(2, random_ids(rng, 6, V), "prefill after steps");
    both_step({2}, "step after the late prefill");
}

std::string case_name(const testing::TestParamInfo<Case>& info) {
    return info.param.name;
}
INSTANTIATE_TEST_SUITE_P(CudaDecoderMixers, CudaDecoder, testing::ValuesIn(kCases), case_name);

// A prompt longer than one prefill piece (kPrefillChunk) runs in pieces that carry the state.
TEST(CudaDecoderLong, PromptLongerThanAPrefillPiece) {
    SKIP_WITHOUT_GPU();
    ModelConfig cfg = mamba2_rope_partial();
    cfg.mamba.chunk_size = 64;
    cfg.max_seq_len = CudaCausalLM::kPrefillChunk + 300;
    auto model = random_model(cfg);
    HybridCausalLM cpu(*model);
    CudaCausalLM gpu(*model);
    const int64_t V = cfg.vocab_size;
    Rng rng(3);
    const std::vector<int32_t> ids = random_ids(rng, CudaCausalLM::kPrefillChunk + 100, V);
    cpu.start(1, cfg.max_seq_len);
    gpu.start(1, cfg.max_seq_len);
    std::vector<float> lc(V), lg(V);
    cpu.prefill(0, ids, lc.data(), nullptr);
    gpu.prefill(0, ids, lg.data(), nullptr);
    expect_rows_close(lg, lc, V, "last prompt position");
    EXPECT_EQ(gpu.position(0), static_cast<int64_t>(ids.size()));
    const std::vector<int64_t> slot{0};
    const std::vector<int32_t> tok{5};
    cpu.step(slot, tok, lc.data(), nullptr);
    gpu.step(slot, tok, lg.data(), nullptr);
    expect_rows_close(lg, lc, V, "step after the long prompt");
}

// The captured CUDA graph replays the eager step's kernels: the same bits, step after step.
TEST(CudaDecoderGraphs, GraphStepsEqualEagerSteps) {
    SKIP_WITHOUT_GPU();
    const ModelConfig cfg = mamba2_rope_partial();
    auto model = random_model(cfg);
    const int64_t V = cfg.vocab_size;
    auto run = [&](const char* graphs) {
        setenv("MSLM_CUDA_GRAPHS", graphs, 1);
        CudaCausalLM gpu(*model);
        unsetenv("MSLM_CUDA_GRAPHS");
        gpu.start(2, cfg.max_seq_len);
        std::vector<float> all, l(2 * V);
        const std::vector<int32_t> p{1, 2, 3, 4, 5};
        gpu.prefill(0, p, l.data(), nullptr);
        gpu.prefill(1, std::vector<int32_t>{7}, l.data(), nullptr);
        for (int t = 0; t < 6; ++t) {  // steps 0 and 1 are eager (warm-up, capture); the rest replay
            const std::vector<int64_t> slots{0, 1};
            const std::vector<int32_t> toks{static_cast<int32_t>(t % V), static_cast<int32_t>((3 * t + 1) % V)};
            gpu.step(slots, toks, l.data(), nullptr);
            all.insert(all.end(), l.begin(), l.end());
        }
        return all;
    };
    const std::vector<float> eager = run("0"), graphed = run("1");
    ASSERT_EQ(eager.size(), graphed.size());
    for (size_t i = 0; i < eager.size(); ++i) ASSERT_EQ(eager[i], graphed[i]) << "logit " << i;
}

TEST(CudaDecoderErrors, BadInputsAreRefused) {
    SKIP_WITHOUT_GPU();
    const ModelConfig cfg = mamba2_dt_limit();
    auto model = random_model(cfg);
    CudaCausalLM gpu(*model);
    std::vector<float> l(2 * cfg.vocab_size);
    EXPECT_THROW(gpu.prefill(0, std::vector<int32_t>{1}, l.data(), nullptr), Error);  // before start
    gpu.start(2, 8);
    EXPECT_THROW(gpu.prefill(0, std::vector<int32_t>{static_cast<int32_t>(cfg.vocab_size)}, l.data(), nullptr),
                 Error);
    EXPECT_THROW(gpu.prefill(2, std::vector<int32_t>{1}, l.data(), nullptr), Error);
    EXPECT_THROW(gpu.prefill(0, std::vector<int32_t>(9, 1), l.data(), nullptr), Error);  // past max_len
    const std::vector<int64_t> twice{1, 1};
    EXPECT_THROW(gpu.step(twice, std::vector<int32_t>{1, 2}, l.data(), nullptr), Error);
    EXPECT_THROW(gpu.reorder(std::vector<int64_t>{0}), Error);
}

// The memory plan is arithmetic: weights 2 bytes per parameter, state as the layouts say.
TEST(CudaDecoderPlan, StateBytesFollowTheLayout) {
    const ModelConfig cfg = rope_window();  // "MA": one Mamba-2 layer, one attention layer, window 5
    const CudaDecoderMemory m = CudaCausalLM::plan(cfg, 3, 40);
    HybridLM<float> layout(cfg);
    EXPECT_EQ(m.weights, 2 * static_cast<size_t>(layout.params().total()));
    const int64_t Din = cfg.mamba_d_inner(), C = Din + 2 * cfg.mamba.n_groups * cfg.mamba.d_state;
    auto al = [](size_t n) { return (n + 255) / 256 * 256; };
    const size_t conv = al(3 * 2 * (cfg.mamba.d_conv - 1) * C);
    const size_t ssm = al(3 * 4 * cfg.mamba_n_heads() * cfg.mamba.head_dim * cfg.mamba.d_state);
    const size_t kv = al(3 * 2 * 5 * cfg.attn_kv_heads() * cfg.attn_head_dim());  // ring of the window, 5 rows
    EXPECT_EQ(m.state, conv + ssm + 2 * kv);
    EXPECT_GT(m.scratch, 0u);
}

#else  // CudaCausalLM's members exist only in builds with CUDA.

TEST(CudaDecoder, NeedsACudaBuild) {
    GTEST_SKIP() << "built without CUDA: the GPU decoder tests are compiled out";
}

#endif  // MSLM_HAVE_CUDA

}  // namespace
}  // namespace mslm
