// The stateful GPU decoder (model/cuda_inference.h) against the CPU's HybridCausalLM on small random
// models covering every mixer and position encoding: prefill (in one call and continued over
// several), batched steps of slots at different positions, ring buffers that wrap, copy / reorder,
// prompts longer than one prefill piece, and CUDA graphs giving the eager path's bits.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/cuda_device.h"
#include "core/error.h"
#include "core/rng.h"
#include "cuda_test_util.h"
#include "decoder_test_util.h"
#include "generate/lm.h"
#include "inference_configs.h"
#include "model/config.h"
#include "model/cuda_decoder_kernels.h"
#include "model/cuda_inference.h"
#include "model/hybrid_lm.h"
#include "test_util.h"

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

using test::Case;
using test::base_config;
using test::mamba2_dt_limit;
using test::mamba2_rope_partial;
using test::rope_window;

// Beyond the CPU decoding tests' configurations (inference_configs.h): Mamba-1 + attention without
// positions, LayerNorm and biases everywhere (the fused products' LayerNorm prologue and bias
// epilogues), and a ReLU MLP.
ModelConfig mamba1_attention() {
    ModelConfig c = base_config("MAM");
    c.mamba.version = 1;
    c.mamba.d_state = 5;
    c.mamba.dt_rank = 8;
    c.mamba.proj_bias = true;
    c.attention.position = PositionKind::None;
    c.attention.n_kv_heads = 4;
    c.attention.qkv_bias = true;
    c.attention.out_bias = true;
    c.mlp = {MlpKind::SwiGLU, 24, true};
    c.norm = NormKind::LayerNorm;
    c.tie_embeddings = false;
    return c;
}

ModelConfig mamba2_relu() {
    ModelConfig c = base_config("MM");
    c.mlp = {MlpKind::ReLU, 16, false};
    return c;
}

// Wide enough that the persistent step's products take several 16-byte loads per lane and more
// rows than blocks (d_model 256, d_inner 512, d_ff 1160 > 1024 columns in the down projection),
// with groups, GQA and full RoPE at head dim 64.
ModelConfig mamba2_attention_wide() {
    ModelConfig c = base_config("MAMM");
    c.vocab_size = 1000;
    c.d_model = 256;
    c.mamba.d_state = 32;
    c.mamba.head_dim = 32;
    c.mamba.n_groups = 2;
    c.attention.n_heads = 4;
    c.attention.n_kv_heads = 2;
    c.mlp = {MlpKind::SwiGLU, 1160, false};
    return c;
}

std::vector<Case> decoder_cases() {
    std::vector<Case> cases(std::begin(test::kInferenceCases), std::end(test::kInferenceCases));
    cases.push_back({"Mamba1AttentionLayerNormBiases", mamba1_attention});
    cases.push_back({"Mamba2Relu", mamba2_relu});
    cases.push_back({"Mamba2AttentionWide", mamba2_attention_wide});
    return cases;
}

// A random model, perturbed so that no term is trivially 0 or 1.
using test::random_model;

using test::random_ids;
void expect_rows_close(const std::vector<float>& got, const std::vector<float>& want, int64_t w,
                       const std::string& what) {
    test::expect_rows_close(got, want, w, what, kRelTol);
}

class CudaDecoder : public testing::TestWithParam<Case> {};

// Three slots at different positions: slot 0 prefilled in one call, slot 1 in three (each continuing
// the conv windows, SSM states and KV rings), slot 2 with one token; then batched steps over all of
// them and over a subset, a copy and a beam-style reorder, every logit row against the CPU.
// Run with the fused step products (decode_gemv, the default) and without (MSLM_DECODE_FUSED=0),
// and with the fused products but without the persistent batch-1 step (MSLM_DECODE_PERSISTENT=0).
// MSLM_DECODE_ATTN_FUSED: the one-kernel decode attention (1) or RoPE + split + combine (0);
// attn_warps: MSLM_DECODE_ATTN_WARPS during the steps (read at each launch), or null.
void follow_the_cpu(const ModelConfig& cfg, const char* fused, const char* persistent = "1",
                    const char* attn_fused = "1", const char* attn_warps = nullptr) {
    SCOPED_TRACE(std::string("MSLM_DECODE_FUSED=") + fused + " MSLM_DECODE_PERSISTENT=" + persistent +
                 " MSLM_DECODE_ATTN_FUSED=" + attn_fused +
                 " MSLM_DECODE_ATTN_WARPS=" + (attn_warps ? attn_warps : "(unset)"));
    auto model = random_model(cfg);
    HybridCausalLM cpu(*model);
    setenv("MSLM_DECODE_FUSED", fused, 1);
    setenv("MSLM_DECODE_PERSISTENT", persistent, 1);
    setenv("MSLM_DECODE_ATTN_FUSED", attn_fused, 1);
    CudaCausalLM gpu(*model);
    unsetenv("MSLM_DECODE_FUSED");
    unsetenv("MSLM_DECODE_PERSISTENT");
    unsetenv("MSLM_DECODE_ATTN_FUSED");
    if (attn_warps) setenv("MSLM_DECODE_ATTN_WARPS", attn_warps, 1);
    test::follow_the_cpu_script(gpu, cpu, cfg, kRelTol);
    unsetenv("MSLM_DECODE_ATTN_WARPS");
}

TEST_P(CudaDecoder, FollowsTheCpuDecoder) {
    SKIP_WITHOUT_GPU();
    follow_the_cpu(GetParam().make(), "1");
    follow_the_cpu(GetParam().make(), "1", "0");
    follow_the_cpu(GetParam().make(), "1", "0", "0");
    follow_the_cpu(GetParam().make(), "1", "0", "1", "4");  // the fused attention's 4-warp blocks
    follow_the_cpu(GetParam().make(), "0");
    {  // the 3-row steps' products through ops::cuda::rows_gemm, its norm prologue, every epilogue and
       // Mamba-2's conv in in_proj's
        test::ScopedEnv rows("MSLM_ROWS_GEMM_MIN_ROWS", std::string("3")),
            norm("MSLM_ROWS_GEMM_NORM", std::string("1")),
            epi("MSLM_ROWS_GEMM_EPI", std::string("store,residual,swiglu")),
            conv("MSLM_ROWS_GEMM_CONV", std::string("1"));
        follow_the_cpu(GetParam().make(), "1");
    }
}

// Twenty slots at 1..12-token prompts, then batched steps over all of them and over 9 and 17: more
// rows than the 8 the one-kernel decode attention took before it took every batch, every logit and
// hidden row against the CPU — with that kernel (the default) and with RoPE + split + combine past 8
// rows (MSLM_DECODE_ATTN_FUSED_MAX_ROWS=8). Cases with attention layers.
void many_rows_follow_the_cpu(const ModelConfig& cfg, const char* fused_max_rows) {
    SCOPED_TRACE(std::string("MSLM_DECODE_ATTN_FUSED_MAX_ROWS=") +
                 (fused_max_rows ? fused_max_rows : "(unset)"));
    auto model = random_model(cfg);
    HybridCausalLM cpu(*model);
    std::optional<test::ScopedEnv> limit;
    if (fused_max_rows) limit.emplace("MSLM_DECODE_ATTN_FUSED_MAX_ROWS", std::string(fused_max_rows));
    CudaCausalLM gpu(*model);
    const int64_t V = cfg.vocab_size, slots = 20;
    Rng rng(11);
    cpu.start(slots, cfg.max_seq_len);
    gpu.start(slots, cfg.max_seq_len);
    for (int64_t s = 0; s < slots; ++s) {
        const std::vector<int32_t> ids = random_ids(rng, 1 + s % 12, V);
        std::vector<float> lc(V), lg(V);
        cpu.prefill(s, ids, lc.data(), nullptr);
        gpu.prefill(s, ids, lg.data(), nullptr);
    }
    auto both_step = [&](const std::vector<int64_t>& rows, const std::string& what) {
        test::expect_step_follows(gpu, cpu, cfg, rng, rows, what, kRelTol);
    };
    std::vector<int64_t> all(slots), nine, seventeen;
    for (int64_t s = 0; s < slots; ++s) all[s] = s;
    for (int64_t s = 0; s < 9; ++s) nine.push_back(slots - 1 - 2 * s);
    for (int64_t s = 0; s < 17; ++s) seventeen.push_back((3 * s) % slots);
    for (int t = 0; t < 3; ++t) both_step(all, "20 rows, step " + std::to_string(t));
    both_step(nine, "9 rows");
    both_step(seventeen, "17 rows");
}

TEST(CudaDecoderManyRows, AttentionPastEightRowsFollowsTheCpu) {
    SKIP_WITHOUT_GPU();
    for (const Case& c : decoder_cases()) {
        const ModelConfig cfg = c.make();
        if (cfg.count(LayerKind::Attention) == 0) continue;
        SCOPED_TRACE(c.name);
        many_rows_follow_the_cpu(cfg, nullptr);
        many_rows_follow_the_cpu(cfg, "8");
    }
}

std::string case_name(const testing::TestParamInfo<Case>& info) {
    return info.param.name;
}
INSTANTIATE_TEST_SUITE_P(CudaDecoderMixers, CudaDecoder, testing::ValuesIn(decoder_cases()), case_name);


// decode_gemv, the decode step's fused product, against a double reference over the same bf16
// inputs, for every prologue and epilogue, k = 1..8 rows and widths at and off the 256-wide lane
// stride. Reference: the normalised row as the kernel stores it (bf16 of the exact value), the
// product in double. Tolerance per output: a normalised input may round to the neighbouring bf16
// (the kernel's statistics are fp32 sums in another order), one bf16 step, ≤ 2^-7 of its
// magnitude (8 significant bits): ≤ 2^-7 of Σ|w·x̂|; fp32
// accumulation ≤ I·2^-24 of the same sum; then the output's own roundings (one bf16 rounding of
// the product, 2^-8 of |value|, and for residual / SwiGLU the second rounding of the sum or
// product, 2^-8 of its magnitude). F32 outputs take no rounding.
void check_decode_gemv(cuda_decoder_detail::DecodeNorm norm, cuda_decoder_detail::DecodeEpilogue epi, int64_t k,
                       int64_t I, int64_t O, bool bias, uint64_t seed) {
    using namespace cuda_decoder_detail;
    using test::decode;
    Rng rng(seed);
    const int64_t w_rows = epi == DecodeEpilogue::SwiGLU ? 2 * O : O, ld_x = I + 8, groups = 2;
    const auto x = test::random_values<uint16_t>(rng, k * ld_x, -2, 2);
    const auto W = test::random_values<uint16_t>(rng, w_rows * I);
    const auto b = test::random_values<uint16_t>(rng, w_rows);
    const auto nw = test::random_values<uint16_t>(rng, I, 0.5, 1.5), nb = test::random_values<uint16_t>(rng, I);
    const auto z = test::random_values<uint16_t>(rng, k * ld_x, -3, 3);
    const auto res = test::random_values<uint16_t>(rng, k * O, -4, 4);
    test::DeviceBuffer<uint16_t> dx(x), dW(W), db(b), dnw(nw), dnb(nb), dz(z), dout(res), dxo(k * I);
    test::DeviceBuffer<float> dout32(std::vector<float>(k * O));
    DecodeGemv a;
    a.x = dx.get();
    a.ld_x = ld_x;
    a.W = dW.get();
    a.bias = bias ? db.get() : nullptr;
    a.k = k;
    a.I = I;
    a.O = O;
    a.norm = norm;
    a.norm_w = dnw.get();
    a.norm_b = norm == DecodeNorm::Layer ? dnb.get() : nullptr;
    a.eps = 1e-5f;
    a.z = dz.get();
    a.ld_z = ld_x;
    a.groups = groups;
    a.x_out = norm == DecodeNorm::None ? nullptr : dxo.get();
    a.epi = epi;
    a.out = dout.get();
    a.out32 = dout32.get();
    a.ld_out = O;
    ASSERT_TRUE(decode_gemv_supported(a));
    decode_gemv(a, nullptr);
    cuda_synchronize();

    // Reference.
    std::vector<double> xn(k * I), ref(k * O), tol(k * O);
    // LayerNorm's x − mean cancels: the kernel's fp32 mean (a sum of I values) is off by up to
    // I · 2^-24 · max|x|, an absolute error of the normalised row (times rstd · max|w|) that the
    // relative bound below does not cover where x ≈ mean.
    std::vector<double> x_abs(k, 0.0);
    for (int64_t r = 0; r < k; ++r) {
        const uint16_t* row = x.data() + r * ld_x;
        std::vector<double> v(I);
        for (int64_t i = 0; i < I; ++i) v[i] = decode(row[i]);
        if (norm == DecodeNorm::RMS || norm == DecodeNorm::Layer) {
            double mean = 0;
            if (norm == DecodeNorm::Layer) {
                for (double t : v) mean += t;
                mean /= I;
            }
            double ss = 0;
            for (double t : v) ss += (t - mean) * (t - mean);
            const double rstd = 1 / std::sqrt(ss / I + 1e-5);
            if (norm == DecodeNorm::Layer) {
                double max_x = 0, max_w = 0;
                for (double t : v) max_x = std::max(max_x, std::fabs(t));
                for (uint16_t t : nw) max_w = std::max(max_w, std::fabs(decode(t)));
                x_abs[r] = (I + 2) * test::kU * max_x * rstd * max_w;
            }
            for (int64_t i = 0; i < I; ++i)
                v[i] = (v[i] - mean) * rstd * decode(nw[i]) + (norm == DecodeNorm::Layer ? decode(nb[i]) : 0.0);
        } else if (norm == DecodeNorm::Gated) {
            const int64_t width = I / groups;
            for (int64_t g0 = 0; g0 < I; g0 += width) {
                double ss = 0;
                for (int64_t i = g0; i < g0 + width; ++i) {
                    const double zz = decode(z[r * ld_x + i]);
                    v[i] *= zz / (1 + std::exp(-zz));
                    ss += v[i] * v[i];
                }
                const double rstd = 1 / std::sqrt(ss / width + 1e-5);
                for (int64_t i = g0; i < g0 + width; ++i) v[i] *= rstd * decode(nw[i]);
            }
        }
        if (norm != DecodeNorm::None)
            for (auto& t : v) t = decode(f32_to_bf16(static_cast<float>(t)));
        std::copy(v.begin(), v.end(), xn.begin() + r * I);
        for (int64_t o = 0; o < O; ++o) {
            auto dot = [&](int64_t wr, double& mag) {
                double d = bias ? decode(b[wr]) : 0.0;
                mag = std::fabs(d);
                for (int64_t i = 0; i < I; ++i) {
                    d += decode(W[wr * I + i]) * v[i];
                    mag += std::fabs(decode(W[wr * I + i]) * v[i]);
                }
                return d;
            };
            double mag = 0, mag2 = 0;
            const double g = dot(o, mag);
            const double in_err = (norm == DecodeNorm::None ? 0.0 : 0x1p-7) * mag + I * test::kU * mag;
            double want = g, t = in_err;
            switch (epi) {
                case DecodeEpilogue::Store: t += 0x1p-8 * std::fabs(g); break;
                case DecodeEpilogue::F32: break;
                case DecodeEpilogue::Residual:
                    want = decode(res[r * O + o]) + g;
                    t += 0x1p-8 * std::fabs(g) + 0x1p-8 * std::fabs(want);
                    break;
                case DecodeEpilogue::SwiGLU: {
                    const double u = dot(O + o, mag2);
                    const double sg = g / (1 + std::exp(-g));
                    want = sg * u;
                    // d(silu)/dg ≤ 1.1; each input's error (in_err + one rounding) scales by the other factor
                    t = (in_err + 0x1p-8 * std::fabs(g)) * 1.1 * std::fabs(u) +
                        ((norm == DecodeNorm::None ? 0.0 : 0x1p-7) * mag2 + I * test::kU * mag2 + 0x1p-8 * std::fabs(u)) *
                            std::fabs(sg) +
                        0x1p-8 * std::fabs(want);
                    break;
                }
            }
            ref[r * O + o] = want;
            tol[r * O + o] = 1.01 * t + 1e-30;
        }
    }
    const std::string what = "k=" + std::to_string(k) + " I=" + std::to_string(I) + " O=" + std::to_string(O);
    if (epi == DecodeEpilogue::F32)
        EXPECT_TRUE(test::all_within(dout32.download(), ref, tol)) << what;
    else
        EXPECT_TRUE(test::all_within(dout.download(), ref, tol)) << what;
    if (a.x_out) {  // the normalised rows: within one bf16 step (≤ 2^-7 relative) of the reference's
        std::vector<double> t(k * I);
        for (int64_t i = 0; i < k * I; ++i) t[i] = (0x1p-7 * std::fabs(xn[i]) + x_abs[i / I]) * 1.01 + 1e-30;
        EXPECT_TRUE(test::all_within(dxo.download(), xn, t)) << what << " x_out";
    }
    if (k == 1) {  // the kernel with its weights prefetched (where it takes the shape) gives the other's bits
        const std::vector<uint16_t> got = dout.download(), got_xo = dxo.download();
        const std::vector<float> got32 = dout32.download();
        dout.upload(res);
        // Other bits in x_out first (0xffff: a NaN), so that a kernel leaving it unwritten would show.
        dxo.upload(std::vector<uint16_t>(static_cast<size_t>(k * I), 0xffff));
        setenv("MSLM_DECODE_GEMV_PRE", "0", 1);
        decode_gemv(a, nullptr);
        cuda_synchronize();
        unsetenv("MSLM_DECODE_GEMV_PRE");
        EXPECT_TRUE(dout.download() == got) << what << ": the prefetching and the streaming kernels differ";
        EXPECT_TRUE(dout32.download() == got32)
            << what << ": the prefetching and the streaming kernels differ (F32)";
        if (a.x_out) {
            EXPECT_TRUE(dxo.download() == got_xo)
                << what << ": the prefetching and the streaming kernels differ (x_out)";
        }
    }
    if (k == 2) {  // the 2-row instantiation gives the 8-row one's bits
        const std::vector<uint16_t> got = dout.download();
        const std::vector<float> got32 = dout32.download();
        dout.upload(res);
        setenv("MSLM_DECODE_GEMV_ROWS", "8", 1);
        decode_gemv(a, nullptr);
        cuda_synchronize();
        unsetenv("MSLM_DECODE_GEMV_ROWS");
        EXPECT_TRUE(dout.download() == got) << what << ": the narrow and the 8-row kernels differ";
        EXPECT_TRUE(dout32.download() == got32) << what << ": the narrow and the 8-row kernels differ (F32)";
    }
}

TEST(CudaDecodeGemv, EveryPrologueAndEpilogueMatchesTheReference) {
    SKIP_WITHOUT_GPU();
    using namespace cuda_decoder_detail;
    uint64_t seed = 1;
    for (DecodeNorm norm : {DecodeNorm::None, DecodeNorm::RMS, DecodeNorm::Layer, DecodeNorm::Gated})
        for (DecodeEpilogue epi :
             {DecodeEpilogue::Store, DecodeEpilogue::Residual, DecodeEpilogue::SwiGLU, DecodeEpilogue::F32})
            // k = 1 with several rows a warp (9000 outputs: 3 a warp on 132 SMs, prefetched; 3000 and
            // 700: prefetched, ≤ 8 a warp on ≥ 47 SMs; 30000: 10 a warp on 132 SMs, the prefetching
            // kernel's ring), rows of 2056 and 2048 columns; the bf16 kernel's instantiations for 1,
            // 2 and 8 (k = 3, 5, 8) rows.
            for (auto [k, I, O] :
                 {std::array<int64_t, 3>{1, 768, 37}, std::array<int64_t, 3>{1, 776, 3000},
                  std::array<int64_t, 3>{3, 264, 70}, std::array<int64_t, 3>{8, 1040, 9},
                  std::array<int64_t, 3>{5, 16, 300}, std::array<int64_t, 3>{1, 768, 9000},
                  std::array<int64_t, 3>{1, 2056, 1500}, std::array<int64_t, 3>{2, 520, 45},
                  std::array<int64_t, 3>{1, 2048, 700}, std::array<int64_t, 3>{1, 512, 30000}}) {
                const bool bias = seed % 2 == 0;
                check_decode_gemv(norm, epi, k, I, O, bias, seed);
                ++seed;
            }
}

TEST(CudaDecodeGemv, RefusesShapesItDoesNotTake) {
    using namespace cuda_decoder_detail;
    DecodeGemv a;
    a.k = 1;
    a.I = 12;  // not a multiple of 8
    a.O = 4;
    a.W = reinterpret_cast<const uint16_t*>(uintptr_t(256));
    EXPECT_FALSE(decode_gemv_supported(a));
    a.I = 16;
    EXPECT_TRUE(decode_gemv_supported(a));
    a.k = 9;
    EXPECT_FALSE(decode_gemv_supported(a));
    a.k = 1;
    a.W = reinterpret_cast<const uint16_t*>(uintptr_t(258));  // not 16-byte aligned
    EXPECT_FALSE(decode_gemv_supported(a));
}

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

// The fused attention's grid has a split for every 256 positions the cache holds; the splits past a
// row's keys leave at once and only the active ones combine. A short context in a 700-position cache
// (3 splits, 1 active) takes the same one-split path as in a 64-position cache (1 split): the same
// bits. Then a context that crosses 256 keys in the large cache (1 → 2 active splits of 3) follows
// the CPU decoder.
TEST(CudaDecoderLong, IdleSplitsOfALargeCacheChangeNothing) {
    SKIP_WITHOUT_GPU();
    ModelConfig cfg = mamba2_rope_partial();
    cfg.max_seq_len = 700;
    auto model = random_model(cfg);
    const int64_t V = cfg.vocab_size;
    Rng rng(5);
    const std::vector<int64_t> slot{0};
    {
        CudaCausalLM small(*model), large(*model);
        small.start(1, 64);
        large.start(1, cfg.max_seq_len);
        const std::vector<int32_t> ids = random_ids(rng, 5, V);
        std::vector<float> ls(V), ll(V);
        small.prefill(0, ids, ls.data(), nullptr);
        large.prefill(0, ids, ll.data(), nullptr);
        for (int t = 0; t < 24; ++t) {
            const std::vector<int32_t> tok{static_cast<int32_t>((7 * t + 3) % V)};
            small.step(slot, tok, ls.data(), nullptr);
            large.step(slot, tok, ll.data(), nullptr);
            for (int64_t c = 0; c < V; ++c) ASSERT_EQ(ls[c], ll[c]) << "step " << t << " logit " << c;
        }
    }
    HybridCausalLM cpu(*model);
    CudaCausalLM gpu(*model);
    cpu.start(1, cfg.max_seq_len);
    gpu.start(1, cfg.max_seq_len);
    const std::vector<int32_t> ids = random_ids(rng, 250, V);
    std::vector<float> lc(V), lg(V);
    cpu.prefill(0, ids, lc.data(), nullptr);
    gpu.prefill(0, ids, lg.data(), nullptr);
    for (int t = 0; t < 12; ++t) {  // keys 251 .. 262
        const std::vector<int32_t> tok{static_cast<int32_t>((5 * t + 1) % V)};
        cpu.step(slot, tok, lc.data(), nullptr);
        gpu.step(slot, tok, lg.data(), nullptr);
        expect_rows_close(lg, lc, V, "step " + std::to_string(t) + " across 256 keys");
    }
}

// clear(slot) and a start() of the same shape (which reuses the buffers) leave a slot exactly as a
// fresh decoder's: the same kernels on zeroed state, so the same bits. Slot 1 is untouched by
// clear(0): its next step equals a decoder where slot 0 was never cleared.
TEST(CudaDecoderReuse, ClearAndSameShapeStartEqualAFreshDecoder) {
    SKIP_WITHOUT_GPU();
    for (const ModelConfig& cfg : {mamba2_rope_partial(), mamba1_attention()}) {
        auto model = random_model(cfg);
        const int64_t V = cfg.vocab_size;
        Rng rng(9);
        const std::vector<int32_t> a = random_ids(rng, 37, V), b = random_ids(rng, 23, V);
        const std::vector<int64_t> both{0, 1};
        const std::vector<int32_t> toks{3, 4};
        CudaCausalLM fresh(*model), reused(*model);
        fresh.start(2, cfg.max_seq_len);
        std::vector<float> want(2 * V), got(2 * V), tmp(V);
        fresh.prefill(0, b, tmp.data(), nullptr);
        fresh.prefill(1, a, tmp.data(), nullptr);
        fresh.step(both, toks, want.data(), nullptr);

        reused.start(2, cfg.max_seq_len);
        reused.prefill(0, a, tmp.data(), nullptr);
        reused.step(std::vector<int64_t>{0}, std::vector<int32_t>{1}, tmp.data(), nullptr);
        reused.start(2, cfg.max_seq_len);  // same shape: state zeroed in place
        reused.prefill(0, a, tmp.data(), nullptr);
        reused.prefill(1, a, tmp.data(), nullptr);
        reused.clear(0);
        EXPECT_EQ(reused.position(0), 0);
        reused.prefill(0, b, tmp.data(), nullptr);
        reused.step(both, toks, got.data(), nullptr);
        for (int64_t i = 0; i < 2 * V; ++i) ASSERT_EQ(got[i], want[i]) << "slot " << i / V << " logit " << i % V;
    }
}

// Steps of slots 0 and 1 after short prompts, every step's logits, with the environment `env` set
// to `value` while the decoder is built and run (the switches are read at construction, capture
// or launch).
std::vector<float> logits_with(const HybridLM<float>& model, const char* env, const char* value) {
    const ModelConfig& cfg = model.config();
    const int64_t V = cfg.vocab_size;
    setenv(env, value, 1);
    CudaCausalLM gpu(model);
    gpu.start(2, cfg.max_seq_len);
    std::vector<float> all, l(2 * V);
    const std::vector<int32_t> p{1, 2, 3, 4, 5};
    gpu.prefill(0, p, l.data(), nullptr);
    gpu.prefill(1, std::vector<int32_t>{7}, l.data(), nullptr);
    for (int t = 0; t < 6; ++t) {  // with graphs: steps 0 and 1 are eager (warm-up, capture), the rest replay
        const std::vector<int64_t> slots{0, 1};
        const std::vector<int32_t> toks{static_cast<int32_t>(t % V), static_cast<int32_t>((3 * t + 1) % V)};
        gpu.step(slots, toks, l.data(), nullptr);
        all.insert(all.end(), l.begin(), l.end());
    }
    unsetenv(env);
    return all;
}

// MSLM_DECODE_STATE=bf16 against the fp32 states, on the same GPU decoder otherwise. Prefill runs
// the SSD on an fp32 copy of the (zero) state, so its logits are the same bits; the state held is
// the plan's, smaller. Steps then differ only by the state's roundings: one per Mamba-2 layer and
// step (≤ 2^-9 of the state, ops::cuda::ssd_update_bf16_state; its test checks the rest bit for
// bit), carried by the states from step to step — over the 7 roundings of these runs (prefill's
// and 6 steps') at most √7·2^-9 ≈ 0.005 of a state as a random walk, ≤ 3 Mamba-2 layers adding in
// quadrature ≈ 0.009 of the logits' scale; the bound is 0.02 (measured on the H200: 0.0167 on
// Mamba2AttentionWide, whose d_state 32 states carry the most, below 0.001 on the others). (Against the CPU,
// the bf16 states' logits add this to the f32 decoder's own error: on Mamba2AttentionWide that came to 6.1%
// of a row's scale against kRelTol's 6%, measured 2026-11-29; so that comparison is not claimed.)
TEST(CudaDecoderBf16State, FollowsTheF32StateDecoder) {
    SKIP_WITHOUT_GPU();
    constexpr double kStateTol = 0.02;
    for (const ModelConfig& cfg : {mamba2_attention_wide(), mamba2_rope_partial(), base_config("MM")}) {
        auto model = random_model(cfg);
        const int64_t V = cfg.vocab_size;
        const std::vector<int32_t> prompt{1, 2, 3, 4, 5};
        std::vector<float> pre[2];
        size_t held[2] = {};
        for (int b = 0; b < 2; ++b) {
            setenv("MSLM_DECODE_STATE", b ? "bf16" : "f32", 1);
            CudaCausalLM gpu(*model);
            gpu.start(2, cfg.max_seq_len);
            pre[b].resize(static_cast<size_t>(V));
            gpu.prefill(0, prompt, pre[b].data(), nullptr);
            held[b] = gpu.memory().state;
            EXPECT_EQ(held[b], CudaCausalLM::plan(cfg, 2, cfg.max_seq_len).state);
            unsetenv("MSLM_DECODE_STATE");
        }
        EXPECT_LT(held[1], held[0]);
        for (int64_t i = 0; i < V; ++i) ASSERT_EQ(pre[1][i], pre[0][i]) << "prefill logit " << i;
        const std::vector<float> f32 = logits_with(*model, "MSLM_DECODE_STATE", "f32"),
                                 bf16 = logits_with(*model, "MSLM_DECODE_STATE", "bf16");
        ASSERT_EQ(f32.size(), bf16.size());
        double worst = 0.0;
        for (size_t r = 0; r * V < f32.size(); ++r) {
            double err = 0.0, scale = 0.0;
            for (int64_t i = 0; i < V; ++i) {
                err = std::max(err, double(std::abs(bf16[r * V + i] - f32[r * V + i])));
                scale = std::max(scale, double(std::abs(f32[r * V + i])));
            }
            EXPECT_LE(err, kStateTol * scale) << "row " << r;
            worst = std::max(worst, err / scale);
        }
        std::printf("bf16 states: largest logit change %.4f of the row's scale\n", worst);
    }
}

// The captured CUDA graph replays the eager step's kernels, and programmatic dependent launch only
// overlaps launches: the same bits, step after step.
TEST(CudaDecoderGraphs, GraphStepsAndDependentLaunchesEqualEagerSteps) {
    SKIP_WITHOUT_GPU();
    auto model = random_model(mamba2_rope_partial());
    const std::vector<float> eager = logits_with(*model, "MSLM_CUDA_GRAPHS", "0"),
                             graphed = logits_with(*model, "MSLM_CUDA_GRAPHS", "1"),
                             serial = logits_with(*model, "MSLM_DECODE_PDL", "0");
    ASSERT_EQ(eager.size(), graphed.size());
    for (size_t i = 0; i < eager.size(); ++i) ASSERT_EQ(eager[i], graphed[i]) << "graphs: logit " << i;
    for (size_t i = 0; i < eager.size(); ++i) ASSERT_EQ(serial[i], graphed[i]) << "dependent launch: logit " << i;
}

// step_greedy's device pick against greedy_pick on the host over step()'s logits, the two
// decoders fed the same tokens (graph replays included): the same token and logit bit for bit
// (the same kernels make the logits), the log-softmax to double rounding (another summation order).
TEST(CudaDecoderGreedy, DevicePicksEqualTheHostsOverTheLogits) {
    SKIP_WITHOUT_GPU();
    auto model = random_model(mamba2_rope_partial());
    const int64_t V = model->config().vocab_size;
    CudaCausalLM a(*model), b(*model);
    std::vector<float> l(3 * V);
    for (CudaCausalLM* g : {&a, &b}) {
        g->start(3, model->config().max_seq_len);
        g->prefill(0, std::vector<int32_t>{1, 2, 3}, l.data(), nullptr);
        g->prefill(2, std::vector<int32_t>{4}, l.data(), nullptr);
    }
    for (int t = 0; t < 5; ++t) {
        const std::vector<int64_t> slots = t % 2 ? std::vector<int64_t>{2} : std::vector<int64_t>{0, 2};
        std::vector<int32_t> toks;
        for (size_t i = 0; i < slots.size(); ++i)
            toks.push_back(static_cast<int32_t>((5 * t + 3 * i + 1) % V));
        a.step(slots, toks, l.data(), nullptr);
        std::vector<GreedyPick> got(slots.size());
        b.step_greedy(slots, toks, got.data());
        for (size_t i = 0; i < slots.size(); ++i) {
            const GreedyPick want =
                greedy_pick(std::span<const float>(l.data() + i * V, static_cast<size_t>(V)));
            EXPECT_EQ(got[i].token, want.token) << "step " << t << " row " << i;
            EXPECT_EQ(got[i].logit, want.logit) << "step " << t << " row " << i;
            EXPECT_NEAR(got[i].log_prob, want.log_prob, 1e-12 * (1 + std::abs(want.log_prob)))
                << "step " << t << " row " << i;
        }
    }
    EXPECT_EQ(a.position(0), b.position(0));
    EXPECT_EQ(a.position(2), b.position(2));
}

// step_greedy_n's device loop (a CUDA graph's while node over the step, the pick and its bookkeeping)
// against step_greedy called once a step on a second decoder fed the same tokens: every pick bit for
// bit over 150 steps (three launches of at most kLoopChunk), with three slots and with one; a stop id
// (a token the plain decoder picked at some step) ends the loop after that step; the decoders
// then take the same next step (positions and states advanced alike). Also without graphs
// (MSLM_CUDA_GRAPHS=0: the host loop) and with the loop off (MSLM_DECODE_LOOP=0).
void loop_follows_step_greedy(const ModelConfig& cfg, const char* env, const char* value) {
    SCOPED_TRACE(std::string(env ? env : "(defaults)") + "=" + (value ? value : ""));
    auto model = random_model(cfg);
    const int64_t V = cfg.vocab_size;
    std::optional<test::ScopedEnv> e;
    if (env) e.emplace(env, std::string(value));
    CudaCausalLM a(*model), b(*model);
    std::vector<float> l(V);
    for (CudaCausalLM* g : {&a, &b}) {
        g->start(3, cfg.max_seq_len);
        g->prefill(0, std::vector<int32_t>{1, 2, 3}, l.data(), nullptr);
        g->prefill(1, std::vector<int32_t>{5}, l.data(), nullptr);
        g->prefill(2, std::vector<int32_t>{4, 7}, l.data(), nullptr);
    }
    for (const std::vector<int64_t>& slots : {std::vector<int64_t>{0, 2, 1}, std::vector<int64_t>{1}}) {
        const auto k = static_cast<int64_t>(slots.size());
        std::vector<int32_t> toks(k);
        for (int64_t i = 0; i < k; ++i) toks[i] = static_cast<int32_t>((7 * i + 3) % V);
        const int64_t n = k == 3 ? 150 : 20;
        std::vector<GreedyPick> want(n * k), got(n * k);
        std::vector<int32_t> fed = toks;
        for (int64_t j = 0; j < n; ++j) {
            a.step_greedy(slots, fed, want.data() + j * k);
            for (int64_t i = 0; i < k; ++i) fed[i] = want[j * k + i].token;
        }
        // A stop id: the token row k − 1 picked at step n / 2 (the loop ends at its first pick by any row).
        const int32_t stop = want[(n / 2) * k + k - 1].token;
        int64_t first = n;
        for (int64_t j = 0; j < n && first == n; ++j)
            for (int64_t i = 0; i < k; ++i)
                if (want[j * k + i].token == stop) first = j;
        const int64_t ran = b.step_greedy_n(slots, toks, n, std::vector<int32_t>{stop}, got.data());
        ASSERT_EQ(ran, first + 1) << k << " rows";
        // The rest of the steps without the stop id.
        std::vector<int32_t> next(k);
        for (int64_t i = 0; i < k; ++i) next[i] = got[(ran - 1) * k + i].token;
        ASSERT_EQ(b.step_greedy_n(slots, next, n - ran, {}, got.data() + ran * k), n - ran);
        for (int64_t j = 0; j < n; ++j)
            for (int64_t i = 0; i < k; ++i) {
                const GreedyPick &w = want[j * k + i], &g = got[j * k + i];
                ASSERT_EQ(g.token, w.token) << "step " << j << " row " << i;
                ASSERT_EQ(g.logit, w.logit) << "step " << j << " row " << i;
                ASSERT_EQ(g.log_prob, w.log_prob) << "step " << j << " row " << i;
            }
        for (int64_t s : slots) ASSERT_EQ(a.position(s), b.position(s)) << "slot " << s;
        std::vector<GreedyPick> wa(k), wb(k);
        for (int64_t i = 0; i < k; ++i) fed[i] = want[(n - 1) * k + i].token;
        a.step_greedy(slots, fed, wa.data());
        b.step_greedy(slots, fed, wb.data());
        for (int64_t i = 0; i < k; ++i)
            EXPECT_EQ(wa[i].log_prob, wb[i].log_prob) << "the step after, row " << i;
    }
}

TEST(CudaDecoderLoop, StepsEqualStepGreedy) {
    SKIP_WITHOUT_GPU();
    ModelConfig cfg = mamba2_rope_partial();
    cfg.max_seq_len = 400;
    loop_follows_step_greedy(cfg, nullptr, nullptr);
    loop_follows_step_greedy(cfg, "MSLM_CUDA_GRAPHS", "0");
    loop_follows_step_greedy(cfg, "MSLM_DECODE_LOOP", "0");
    ModelConfig wide = mamba2_attention_wide();
    wide.max_seq_len = 400;
    loop_follows_step_greedy(wide, nullptr, nullptr);
}

// The pick kernel on rows made to hurt: ties within and across its column splits (the first index
// wins, as std::max_element), every logit −inf but one (splits of only −inf), all −inf (index 0,
// log-softmax NaN as on the host), a maximum in the last column.
TEST(CudaDecoderGreedy, PickKernelTakesTheFirstMaximum) {
    SKIP_WITHOUT_GPU();
    const int64_t V = 3001;
    const int64_t k = 5;
    std::vector<float> rows(k * V);
    Rng rng(17);
    for (float& x : rows) x = static_cast<float>(rng.normal());
    auto row = [&](int64_t i) { return rows.data() + i * V; };
    row(0)[1500] = row(0)[2999] = row(0)[7] = 9.0f;  // three-way tie: 7
    std::fill(row(1), row(1) + V, -INFINITY);
    row(1)[2048] = -3.0f;
    std::fill(row(2), row(2) + V, -INFINITY);
    row(3)[V - 1] = 50.0f;
    row(4)[1024] = row(4)[0] = 4.5f;  // a tie across the first thread's columns: 0
    test::DeviceBuffer<float> d(rows);
    test::DeviceBuffer<double> lp(static_cast<size_t>(k));
    test::DeviceBuffer<float> logit(static_cast<size_t>(k));
    test::DeviceBuffer<int32_t> token(static_cast<size_t>(k));
    const int64_t splits = cuda_decoder_detail::greedy_pick_splits(V);
    ASSERT_GT(splits, 1);
    test::DeviceBytes part(sizeof(cuda_decoder_detail::GreedyPart) * static_cast<size_t>(k * splits));
    test::DeviceBuffer<unsigned> done(static_cast<size_t>(k));
    for (int call = 0; call < 2; ++call)  // the counters come back to zero for the next call
        cuda_decoder_detail::greedy_pick(d.get(), k, V,
                                         static_cast<cuda_decoder_detail::GreedyPart*>(part.get()),
                                         done.get(), lp.get(), logit.get(), token.get(), nullptr);
    EXPECT_EQ(done.download(), std::vector<unsigned>(static_cast<size_t>(k), 0u));
    const std::vector<double> glp = lp.download();
    const std::vector<float> glogit = logit.download();
    const std::vector<int32_t> gtok = token.download();
    for (int64_t i = 0; i < k; ++i) {
        const GreedyPick want = greedy_pick(std::span<const float>(row(i), static_cast<size_t>(V)));
        EXPECT_EQ(gtok[i], want.token) << "row " << i;
        EXPECT_EQ(glogit[i], want.logit) << "row " << i;
        if (std::isnan(want.log_prob))
            EXPECT_TRUE(std::isnan(glp[i])) << "row " << i;
        else
            EXPECT_NEAR(glp[i], want.log_prob, 1e-12 * (1 + std::abs(want.log_prob))) << "row " << i;
    }
    EXPECT_EQ(gtok[0], 7);
    EXPECT_EQ(gtok[1], 2048);
    EXPECT_EQ(gtok[2], 0);
    EXPECT_EQ(gtok[3], V - 1);
    EXPECT_EQ(gtok[4], 0);
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
    // MSLM_DECODE_STATE=bf16: the SSM state at 2 bytes a value, the rest as before.
    setenv("MSLM_DECODE_STATE", "bf16", 1);
    const CudaDecoderMemory h = CudaCausalLM::plan(cfg, 3, 40);
    unsetenv("MSLM_DECODE_STATE");
    EXPECT_EQ(h.state,
              conv + al(3 * 2 * cfg.mamba_n_heads() * cfg.mamba.head_dim * cfg.mamba.d_state) + 2 * kv);
    setenv("MSLM_DECODE_STATE", "f16", 1);
    EXPECT_THROW(CudaCausalLM::plan(cfg, 3, 40), Error);
    unsetenv("MSLM_DECODE_STATE");
}

#else  // CudaCausalLM's members exist only in builds with CUDA.

TEST(CudaDecoder, NeedsACudaBuild) {
    GTEST_SKIP() << "built without CUDA: the GPU decoder tests are compiled out";
}

#endif  // MSLM_HAVE_CUDA

}  // namespace
}  // namespace mslm
