// `mamba-slm bench` and the training profile: the analytic FLOP and byte counts of model/flops.h
// against hand counts for a tiny config, the option parsers, the table formatting, a CPU run of
// every table on the tiny preset, and on a GPU the stage timer's bookkeeping (skipped visibly
// without one).
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench/model_bench.h"
#include "bench/train_profile.h"
#include "core/cuda_device.h"
#include "core/error.h"
#include "model/config.h"
#include "model/flops.h"
#include "model/hybrid_lm.h"
#include "model/info.h"

#ifdef MSLM_HAVE_CUDA
#include "core/rng.h"
#include "model/cuda_model.h"
#include "train/optimizer.h"
#endif

using namespace mslm;

namespace {

// d 8, vocab 16, "MA": one Mamba-2 layer (d_inner 16, 2 heads of 8, 1 group, state 4, chunk 4,
// conv 4) and one attention layer (2 query heads of 4, 1 KV head, RoPE), SwiGLU MLPs of 12.
ModelConfig tiny_config() {
    ModelConfig c;
    c.vocab_size = 16;
    c.d_model = 8;
    c.n_layers = 2;
    c.layers = parse_layer_pattern("MA");
    c.mamba.d_state = 4;
    c.mamba.expand = 2;
    c.mamba.head_dim = 8;
    c.mamba.chunk_size = 4;
    c.attention.n_heads = 2;
    c.attention.n_kv_heads = 1;
    c.mlp.d_ff = 12;
    c.max_seq_len = 64;
    c.validate();
    return c;
}

double family(const StepCosts& c, KernelFamily f, bool bytes) {
    return bytes ? c[static_cast<size_t>(f)].bytes : c[static_cast<size_t>(f)].flops;
}

}  // namespace

// The projections of tiny_config, by hand: Mamba in_proj 8 → 2·16 + 2·4 + 2 = 42, out_proj 16 → 8;
// attention qkv 8 → (2 + 2·1)·4 = 16, o 8 → 8; two SwiGLU MLPs 8 → 24 and 12 → 8; LM head 8 → 16.
TEST(BenchFlops, MatmulParamsMatchHandCountAndThePackedWeights) {
    const ModelConfig c = tiny_config();
    const int64_t hand = 8 * 42 + 16 * 8 + 8 * 16 + 8 * 8 + 2 * (8 * 24 + 12 * 8) + 8 * 16;
    EXPECT_EQ(matmul_params(c), hand);
    // The model's own set of matrix weights: what pack_weights gives a packed copy (the tied
    // embedding included, as the LM head).
    HybridLM<float> model(c);
    model.pack_weights(ops::WeightFormat::BF16);
    EXPECT_EQ(matmul_params(c), model.params().packed_numel());
    // And for the presets the benches report.
    for (const char* name : {"tiny", "30m", "mamba-130m"}) {
        HybridLM<float> m(preset(name));
        m.pack_weights(ops::WeightFormat::BF16);
        EXPECT_EQ(matmul_params(preset(name)), m.params().packed_numel()) << name;
    }
}

TEST(BenchFlops, FamilyFlopsMatchHandCounts) {
    const ModelConfig c = tiny_config();
    const int64_t B = 2, T = 6;  // N = 12 rows; chunk Q = 4, two chunks
    const StepCosts k = training_step_costs(c, B, T);
    const double N = 12;
    // GEMM: 6·N·Σ I·O.
    EXPECT_DOUBLE_EQ(family(k, KernelFamily::Gemm, false), 6 * N * 1360);
    // SSD: 3·N·(2·Q·Ns·G + H·(2·Q·P + 4·P·Ns)) = 3·12·(2·4·4 + 2·(2·4·8 + 4·8·4)).
    EXPECT_DOUBLE_EQ(family(k, KernelFamily::Ssd, false), 3 * N * (32 + 2 * (64 + 128)));
    // Attention: 6·2·(T/2)·Hq·Dh per token.
    EXPECT_DOUBLE_EQ(family(k, KernelFamily::Attention, false), 6 * 2 * 3 * 2 * 4 * N);
    // Conv: 6·K per element of the C = 16 + 2·4 = 24 conv channels.
    EXPECT_DOUBLE_EQ(family(k, KernelFamily::Conv, false), 6 * 4 * N * 24);
    for (KernelFamily f : {KernelFamily::Norm, KernelFamily::Elementwise, KernelFamily::EmbedLoss,
                           KernelFamily::Optimizer, KernelFamily::Other})
        EXPECT_EQ(family(k, f, false), 0) << kernel_family_name(f);
    // Model FLOPs per token: GEMM + SSD + attention over the step's tokens.
    EXPECT_DOUBLE_EQ(training_flops_per_token(c, T), (6 * N * 1360 + 3 * N * 416 + 12 * 3 * 8 * N) / N);
    // A sliding window w < T attends w·(1 − w/2T) keys on average; w = T is the causal T/2.
    ModelConfig w = c;
    w.attention.sliding_window = 2;
    EXPECT_DOUBLE_EQ(family(training_step_costs(w, B, T), KernelFamily::Attention, false),
                     6 * 2 * (2 * (1 - 2.0 / 12)) * 2 * 4 * N);
    w.attention.sliding_window = T;
    EXPECT_DOUBLE_EQ(family(training_step_costs(w, B, T), KernelFamily::Attention, false),
                     family(k, KernelFamily::Attention, false));
}

TEST(BenchFlops, FamilyBytesMatchHandCounts) {
    const ModelConfig c = tiny_config();
    const StepCosts k = training_step_costs(c, 2, 6);
    const double N = 12;
    // GEMM, per projection 2·(3·N·I + 3·N·O + 2·I·O) + 8·I·O (bf16 in and out, fp32 dW read-write).
    double gemm = 0;
    for (auto [i, o] : std::vector<std::pair<double, double>>{
             {8, 42}, {16, 8}, {8, 16}, {8, 8}, {8, 24}, {12, 8}, {8, 24}, {12, 8}, {8, 16}})
        gemm += 2 * (3 * N * i + 3 * N * o + 2 * i * o) + 8 * i * o;
    EXPECT_DOUBLE_EQ(family(k, KernelFamily::Gemm, true), gemm);
    // SSD: x, B, C, dt are N·(16 + 8 + 2) = 312 elements, y and dy N·16 = 192 each; forward reads
    // the inputs and writes y, backward reads inputs and dy and read-writes the four gradients;
    // the fp32 chunk states (B · 2 chunks · H · P · Ns) are written and read once.
    EXPECT_DOUBLE_EQ(family(k, KernelFamily::Ssd, true),
                     2 * (312 + 192 + 312 + 192 + 2 * 312) + 2 * 4 * (2 * 2 * 2 * 8 * 4));
    // Attention: q, k, v rows of 16, o rows of 8; forward reads qkv, writes o; backward reads qkv,
    // o, do and read-writes dq, dk, dv; the fp32 lse (2 heads per row) written and read.
    EXPECT_DOUBLE_EQ(family(k, KernelFamily::Attention, true),
                     2 * (N * 16 + N * 8 + N * 16 + 2 * N * 8 + 2 * N * 16) + 2 * 4 * N * 2);
    // Conv over 24 channels: forward in + out, backward dy, x in, dx read-write.
    EXPECT_DOUBLE_EQ(family(k, KernelFamily::Conv, true), 2 * 6 * N * 24);
    // Norms: five (N, 8) RMSNorms (two per layer, the final one), each 2·(2 + 4)·N·8 + 2·4·N, and
    // the gated norm over d_inner 16: 2·10·N·16 + 2·4·N (one group).
    // The four residual adds (each layer's mixer and MLP) ride on the next RMSNorm: 2 more (N, 8)
    // bf16 passes each.
    EXPECT_DOUBLE_EQ(family(k, KernelFamily::Norm, true),
                     5 * (2 * 6 * N * 8 + 8 * N) + (2 * 10 * N * 16 + 8 * N) + 4 * 2 * 2 * N * 8);
    // Optimizer: 39 bytes per parameter (zero_grad 4, the norm 4, AdamW 31).
    const double P = static_cast<double>(count_parameters(c).total());
    EXPECT_DOUBLE_EQ(family(k, KernelFamily::Optimizer, true), 39 * P);
    EXPECT_EQ(family(training_step_costs(c, 2, 6, false), KernelFamily::Optimizer, true), 0);
    // Embedding + CE: lookup 4N + 2·2·N·D; CE forward 2·N·V + 12N; backward 2·2·N·V + 8N; scatter
    // 2·N·D + 4N + 2·2·min(N, V)·D.
    EXPECT_DOUBLE_EQ(family(k, KernelFamily::EmbedLoss, true), (4 * N + 4 * N * 8) + (2 * N * 16 + 12 * N) +
                                                                   (4 * N * 16 + 8 * N) +
                                                                   (2 * N * 8 + 4 * N + 4 * 12 * 8));
}

TEST(BenchOptions, ParsesTablesAndLists) {
    EXPECT_EQ(bench::parse_tables("train,decode,train"), (std::vector<std::string>{"train", "decode"}));
    EXPECT_THROW(bench::parse_tables("train,speed"), Error);
    EXPECT_THROW(bench::parse_tables(""), Error);
    EXPECT_EQ(bench::parse_positive_list("1,8,64", "--decode-batch"), (std::vector<int64_t>{1, 8, 64}));
    for (const char* bad : {"0", "1,,2", "a", "-1", "", "1.5", "99999999999"})
        EXPECT_THROW(bench::parse_positive_list(bad, "--decode-batch"), Error) << bad;
    try {
        bench::parse_positive_list("1,x", "--decode-batch");
        FAIL() << "no error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("--decode-batch: \"x\""), std::string::npos) << e.what();
    }
}

// A hand-made profile: two steps of 3 and 4 ms where SSD takes 1.5 and 2.5 ms (mean 2 of 3.5);
// its 158 GFLOP in 2 ms are 79 TFLOP/s = 10% of 790, its 1.72 GB 860 GB/s = 20% of 4.3 TB/s.
TEST(BenchProfile, FormatsTheSplitCeilingsAndBottleneck) {
    bench::ProfileReport r;
    r.model = "preset test";
    r.device_desc = "a GPU";
    r.batch = 2;
    r.seq = 8;
    r.peak_tflops = 790;
    r.peak_tbs = 4.3;
    bench::FamilyTimes a{}, b{};
    a[static_cast<size_t>(KernelFamily::Gemm)] = 1.0;
    a[static_cast<size_t>(KernelFamily::Ssd)] = 1.5;
    a[static_cast<size_t>(KernelFamily::Optimizer)] = 0.5;
    b = a;
    b[static_cast<size_t>(KernelFamily::Ssd)] = 2.5;  // mean 2.0
    r.steps = {a, b};
    r.costs[static_cast<size_t>(KernelFamily::Ssd)] = {158e9, 1.72e9};
    r.costs[static_cast<size_t>(KernelFamily::Gemm)] = {395e9, 1e6};  // 395 TFLOP/s in 1 ms: 50%
    r.step_ms = 3.5;                                                  // the families sum to 3.5 ms
    r.profiled_step_ms = 3.6;
    r.stages = {{"mamba ssd fwd", 0.5}, {"mamba ssd bwd", 1.5}};

    const bench::Bottleneck n = bench::next_bottleneck(r);
    EXPECT_EQ(n.family, KernelFamily::Ssd);
    EXPECT_NEAR(n.share, 2.0 / 3.5, 1e-12);
    EXPECT_NEAR(n.flops_fraction, 0.10, 1e-12);
    EXPECT_NEAR(n.bytes_fraction, 0.20, 1e-12);

    const std::string s = bench::format_profile(r);
    for (int f = 0; f < kKernelFamilies; ++f)
        EXPECT_NE(s.find(std::string("| ") + kernel_family_name(static_cast<KernelFamily>(f)) + " |"),
                  std::string::npos)
            << kernel_family_name(static_cast<KernelFamily>(f));
    EXPECT_NE(s.find("| 1 | 1.000 | 1.500 |"), std::string::npos) << s;  // step 1: GEMM, SSD
    EXPECT_NE(s.find("| 2 | 1.000 | 2.500 |"), std::string::npos) << s;
    // SSD row: 2 ms, 57.1% of 3.5, 158 GFLOP → 79.0 TFLOP/s = 10.0%, 1.72 GB → 860 GB/s = 20.0%.
    EXPECT_NE(s.find("| SSD/scan | 2.000 | 57.1% | 158.0 | 79.0 | 10.0% | 1.720 | 860 | 20.0% |"),
              std::string::npos)
        << s;
    EXPECT_NE(s.find("| GEMM | 1.000 | 28.6% | 395.0 | 395.0 | 50.0% |"), std::string::npos) << s;
    EXPECT_NE(s.find("the families sum to 3.500 ms (+0.0%)"), std::string::npos) << s;
    EXPECT_EQ(s.find("warning"), std::string::npos) << s;
    EXPECT_NE(s.find("next bottleneck: SSD/scan — 57.1% of the step (2.000 ms), at 10.0% of 790 TFLOP/s and "
                     "20.0% of 4.3 TB/s"),
              std::string::npos)
        << s;
    r.step_ms = 3.0;  // 16.7% away: the events would have cost time
    EXPECT_NE(bench::format_profile(r).find("warning: the families' sum is more than 5% away"),
              std::string::npos);
}

TEST(BenchTables, FormatsAHandMadeReport) {
    bench::BenchReport r;
    r.model = "preset x";
    r.device = "cuda:0";
    r.device_desc = "a GPU";
    r.params = 1000;
    r.prompt = 16;
    r.peak_tflops = 790;
    r.train = bench::TrainResult{8, 2048, 50.0, 327680.0, 1e9, 327.68, 327.68 / 790};
    r.prefill = bench::PrefillResult{2048, 2.0, 1024000.0};
    r.decode = {{1, 0.5, 2000.0}, {64, 1.0, 64000.0}};
    r.memory = {{"activations (8 x 2048)", 1024.0 * 1024, 2048.0 * 1024},
                {"device memory in use", std::nullopt, 3.0 * 1024}};
    const std::string s = bench::format_bench_markdown(r);
    EXPECT_NE(s.find("| 8x2048 | 327680 | 50.00 | 1 | 327.7 | 41.5% |"), std::string::npos) << s;
    EXPECT_NE(s.find("| 2048 | 1024000 | 2.00 |"), std::string::npos) << s;
    EXPECT_NE(s.find("| 64 | 64000 | 1.000 |"), std::string::npos) << s;
    EXPECT_NE(s.find("| activations (8 x 2048) | 1.00 MiB | 2.00 MiB |"), std::string::npos) << s;
    EXPECT_NE(s.find("| device memory in use | — | 3.00 KiB |"), std::string::npos) << s;
    EXPECT_NE(s.find("model FLOPs/token = 6·P_matmul"), std::string::npos) << s;
    const nlohmann::json j = bench::bench_report_json(r);
    EXPECT_DOUBLE_EQ(j.at("train").at("mfu").get<double>(), 327.68 / 790);
    EXPECT_TRUE(j.at("memory").at(1).at("planned_bytes").is_null());
}

// Every table on the CPU for the tiny preset, a few steps: the structure a user reads and numbers
// that are positive; the JSON parses back. The decoder's state for one sequence is counted the
// same way by the plan (model/info.h) and by the InferenceState it builds, so they agree exactly.
TEST(BenchRun, CpuTinyEveryTable) {
    bench::BenchOptions o;
    o.batch = 2;
    o.seq = 32;
    o.steps = 1;
    o.warmup = 0;
    o.decode_batches = {1, 3};
    o.decode_tokens = 2;
    std::vector<std::string> lines;
    const bench::BenchReport r =
        bench::run_bench(preset("tiny"), "preset tiny", o, [&](const std::string& l) { lines.push_back(l); });
    EXPECT_GE(lines.size(), 4u);  // one per phase: train, prefill, each decode batch
    ASSERT_TRUE(r.train && r.prefill);
    EXPECT_GT(r.train->tokens_per_s, 0);
    EXPECT_GT(r.train->step_ms, 0);
    EXPECT_DOUBLE_EQ(r.train->flops_per_token, training_flops_per_token(preset("tiny"), 32));
    EXPECT_FALSE(r.train->mfu);  // no MFU on a CPU
    EXPECT_EQ(r.prefill->tokens, 32);
    EXPECT_GT(r.prefill->tokens_per_s, 0);
    ASSERT_EQ(r.decode.size(), 2u);
    EXPECT_EQ(r.decode[1].batch, 3);
    for (const auto& d : r.decode) EXPECT_GT(d.tokens_per_s, 0);
    bool state_row = false;
    for (const auto& m : r.memory) {
        EXPECT_TRUE(m.planned || m.measured) << m.category;
        if (m.measured) {
            EXPECT_GT(*m.measured, 0) << m.category;
        }
        if (m.category.rfind("inference state", 0) == 0) {
            state_row = true;
            ASSERT_TRUE(m.planned && m.measured);
            EXPECT_EQ(*m.planned, *m.measured);
        }
    }
    EXPECT_TRUE(state_row);
    const std::string md = bench::format_bench_markdown(r);
    for (const char* h : {"## train", "## prefill", "## decode", "## memory"})
        EXPECT_NE(md.find(h), std::string::npos) << h;
    const nlohmann::json j = nlohmann::json::parse(bench::bench_report_json(r).dump());
    EXPECT_GT(j.at("train").at("tokens_per_s").get<double>(), 0);
    EXPECT_EQ(j.at("decode").at("rows").size(), 2u);
    EXPECT_TRUE(j.at("train").at("mfu").is_null());

    o.tables = {"decode"};  // only what is asked
    o.decode_batches = {1};
    const bench::BenchReport d = bench::run_bench(preset("tiny"), "preset tiny", o, nullptr);
    EXPECT_FALSE(d.train || d.prefill);
    EXPECT_TRUE(d.memory.empty());
    EXPECT_EQ(d.decode.size(), 1u);
}

TEST(BenchRun, CudaWithoutAGpuIsOneClearError) {
    if (cuda_available()) GTEST_SKIP() << "a GPU is present: BenchCuda covers the CUDA path";
    bench::BenchOptions o;
    o.device = "cuda";
    try {
        bench::run_bench(preset("tiny"), "preset tiny", o, nullptr);
        FAIL() << "no error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("--device cuda"), std::string::npos) << e.what();
    }
    EXPECT_THROW(bench::run_training_profile(preset("tiny"), "tiny", bench::ProfileOptions{}, nullptr),
                 Error);
}

// On a GPU: the stage timer books every interval of a step to a stage and a family, its totals add
// up, it books nothing when off, and turning it on changes no result (the events only observe).
TEST(BenchCuda, StageTimerBooksEveryFamilyAndChangesNothing) {
    if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU: " << cuda_device_summary();
#ifdef MSLM_HAVE_CUDA
    const ModelConfig c =
        preset("tiny");  // Mamba-2, attention, SwiGLU: every family; shapes the CUDA tests use
    HybridLM<float> cpu(c);
    cpu.init(3);
    Rng rng(2);
    std::vector<int32_t> ids(2 * 16), targets(ids.size());
    for (auto& x : ids) x = static_cast<int32_t>(rng.below(static_cast<uint64_t>(c.vocab_size)));
    for (auto& x : targets) x = static_cast<int32_t>(rng.below(static_cast<uint64_t>(c.vocab_size)));
    auto run = [&](bool timed, CudaStageTimes* times) {
        CudaHybridLM g(c);
        g.upload(cpu);
        g.upload_optimizer_state(AdamW<float>(cpu.params()));
        g.set_stage_timing(timed);
        g.zero_grad();
        g.forward(ids.data(), targets.data(), 2, 16);
        g.backward();
        g.clip_grad_norm(1.0);
        g.optimizer_step(1e-3f);
        *times = g.take_stage_times();
        HybridLM<float> out(c);
        g.download_params(out);
        return std::vector<float>(out.params().values(), out.params().values() + out.params().total());
    };
    CudaStageTimes on, off;
    const std::vector<float> with = run(true, &on), without = run(false, &off);
    EXPECT_EQ(with, without);  // bitwise: the same kernels on the same data
    EXPECT_EQ(off.records, 0);
    EXPECT_EQ(off.total_ms, 0);
    EXPECT_EQ(on.records, 2);  // zero_grad + forward + backward; clip + AdamW
    double families = 0, stages = 0;
    for (double ms : on.family_ms) families += ms;
    for (const auto& s : on.stages) stages += s.second;
    EXPECT_NEAR(families, on.total_ms, 1e-9 * on.total_ms);
    EXPECT_NEAR(stages, on.total_ms, 1e-9 * on.total_ms);
    for (KernelFamily f :
         {KernelFamily::Gemm, KernelFamily::Ssd, KernelFamily::Attention, KernelFamily::Norm,
          KernelFamily::Conv, KernelFamily::Elementwise, KernelFamily::EmbedLoss, KernelFamily::Optimizer})
        EXPECT_GT(on.family_ms[static_cast<size_t>(f)], 0) << kernel_family_name(f);

    bench::ProfileOptions o;
    o.batch = 2;
    o.seq = 16;
    o.steps = 2;
    o.warmup = 1;
    const bench::ProfileReport r = bench::run_training_profile(c, "preset tiny", o, nullptr);
    ASSERT_EQ(r.steps.size(), 2u);
    EXPECT_GT(r.step_ms, 0);
    EXPECT_NE(bench::format_profile(r).find("next bottleneck: "), std::string::npos);
#endif
}
