// The GPU decoder (model/cuda_inference.h) on quantized weights — a model packed to nf4, fp4, int8
// or w8a16, as `generate --dtype X --device cuda` packs it — against the CPU decoder on the same
// packed weights (ops/packed_linear.h): prefill in one call and in pieces, batched steps of slots at
// different positions, copy and reorder, a prompt long enough for prefill's dequantize + GEMM path,
// more slots than the GEMV's row tile, and bitsandbytes directories as transformers saves them.
// Skips without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "core/cuda_device.h"
#include "core/rng.h"
#include "decoder_test_util.h"
#include "generate/lm.h"
#include "inference_configs.h"
#include "model/config.h"
#include "model/cuda_inference.h"
#include "model/hybrid_lm.h"
#include "model/model_io.h"
#include "ops/packed_linear.h"
#include "test_util.h"

namespace mslm {
namespace {

#define SKIP_WITHOUT_GPU() \
    if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU: " << cuda_device_summary()

const std::string kFixtures = MSLM_FIXTURE_DIR;

// Relative to the largest |CPU logit| of the row, the bound of test_cuda_decoder.cpp: both decoders
// multiply by the same quantized weights (the GPU's are the CPU's packed copies, bit for bit: see
// CudaQuantLayout.FromPackedIsTheCpuWeight), so what differs is the GPU's bf16 activations — about 8
// roundings of ≤ 2^-8 per layer adding like a random walk, plus the LM head's: √(3·8 + 2)·2^-8 ≈
// 0.02 over ≤ 3 layers, bounded by 0.06. A wrong code, block scale, row or epilogue moves logits by
// O(1) of their scale.
constexpr double kRelTol = 0.06;

// The GPU's 4-bit products by default round x and the code book to int8 for dp4a
// (MSLM_DECODE_GEMV_DP4A at batch 1, MSLM_QUANT_GEMV_DP4A for more rows): not the CPU's arithmetic, which the
// bound above assumes (with it, one product moves by ~1% rms, about 3× a bf16 rounding, and the wide case
// below exceeds 0.06 at ~0.075). Those products are pinned to their exact int8 model in
// test_cuda_quant_gemv.cpp, and their effect on a trained model's perplexity is measured by
// bench_cuda_score (docs/PERFORMANCE.md); here the GPU keeps the CPU's code book.
struct ExactCodeBook {
    test::ScopedEnv batch1{"MSLM_DECODE_GEMV_DP4A", std::string("0")};
    test::ScopedEnv rows{"MSLM_QUANT_GEMV_DP4A", std::string("0")};
};

#ifdef MSLM_HAVE_CUDA
struct Format {
    ops::WeightFormat gpu, cpu;  // int8 runs weight-only on the GPU: the CPU's w8a16 is its reference
    const char* name;
};
constexpr Format kFormats[] = {{ops::WeightFormat::NF4, ops::WeightFormat::NF4, "nf4"},
                               {ops::WeightFormat::FP4, ops::WeightFormat::FP4, "fp4"},
                               {ops::WeightFormat::Int8, ops::WeightFormat::W8A16, "int8"},
                               {ops::WeightFormat::W8A16, ops::WeightFormat::W8A16, "w8a16"}};

using test::random_model;

using test::random_ids;
void expect_rows_close(const std::vector<float>& got, const std::vector<float>& want, int64_t w,
                       const std::string& what) {
    test::expect_rows_close(got, want, w, what, kRelTol);
}

// The GPU decoder on model packed to f.gpu, the CPU decoder on it packed to f.cpu (the packs run in
// that order: the GPU copies its weights at construction, the CPU reads the model's at each call).
struct Pair {
    std::unique_ptr<CudaCausalLM> gpu;
    std::unique_ptr<HybridCausalLM> cpu;
};
Pair make_pair(HybridLM<float>& model, const Format& f) {
    Pair p;
    model.pack_weights(f.gpu);
    p.gpu = std::make_unique<CudaCausalLM>(model);
    if (f.cpu != f.gpu) model.pack_weights(f.cpu);
    p.cpu = std::make_unique<HybridCausalLM>(model);
    return p;
}

// The shared script (decoder_test_util.h): prefills, steps, copy, reorder, every row against the CPU.
void follow_the_cpu(CudaCausalLM& gpu, CausalLM& cpu, const ModelConfig& cfg) {
    test::follow_the_cpu_script(gpu, cpu, cfg, kRelTol);
}

// Widths where the products take several loads per lane, warps share rows, and blocks are 64 wide.
ModelConfig mamba2_attention_wide() {
    ModelConfig c = test::base_config("MAMM");
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

#endif  // MSLM_HAVE_CUDA

std::vector<test::Case> cases() {
    std::vector<test::Case> v(std::begin(test::kInferenceCases), std::end(test::kInferenceCases));
#ifdef MSLM_HAVE_CUDA
    v.push_back({"Mamba2AttentionWide", mamba2_attention_wide});
#endif
    return v;
}

class CudaQuantDecoder : public testing::TestWithParam<test::Case> {};

TEST_P(CudaQuantDecoder, FollowsTheCpuOnTheSameWeights) {
    SKIP_WITHOUT_GPU();
    const ExactCodeBook exact;
#ifdef MSLM_HAVE_CUDA
    const ModelConfig cfg = GetParam().make();
    for (const Format& f : kFormats) {
        SCOPED_TRACE(f.name);
        auto model = random_model(cfg);
        Pair p = make_pair(*model, f);
        follow_the_cpu(*p.gpu, *p.cpu, cfg);
    }
#endif
}

std::string case_name(const testing::TestParamInfo<test::Case>& info) {
    return info.param.name;
}
INSTANTIATE_TEST_SUITE_P(CudaQuantDecoderMixers, CudaQuantDecoder, testing::ValuesIn(cases()), case_name);

// A 100-token prompt (more rows than the quantized GEMV takes: the weights are expanded to bf16 for
// cuBLASLt) and a step of 70 slots (several GEMV tiles per product; the expanded weights again for
// all but the LM head).
TEST(CudaQuantDecoderLong, LongPromptAndManySlots) {
    SKIP_WITHOUT_GPU();
    const ExactCodeBook exact;
#ifdef MSLM_HAVE_CUDA
    ModelConfig cfg = test::mamba2_rope_partial();
    cfg.max_seq_len = 128;
    for (const Format& f : {kFormats[0], kFormats[2]}) {
        SCOPED_TRACE(f.name);
        auto model = random_model(cfg);
        Pair p = make_pair(*model, f);
        const int64_t V = cfg.vocab_size, slots = 70;
        Rng rng(9);
        p.cpu->start(slots, cfg.max_seq_len);
        p.gpu->start(slots, cfg.max_seq_len);
        std::vector<float> lc(slots * V), lg(slots * V);
        const std::vector<int32_t> prompt = random_ids(rng, 100, V);
        p.cpu->prefill(0, prompt, lc.data(), nullptr);
        p.gpu->prefill(0, prompt, lg.data(), nullptr);
        expect_rows_close(std::vector<float>(lg.begin(), lg.begin() + V),
                          std::vector<float>(lc.begin(), lc.begin() + V), V, "100-token prefill");
        for (int64_t s = 1; s < slots; ++s) {
            const std::vector<int32_t> ids = random_ids(rng, 1 + s % 5, V);
            p.cpu->prefill(s, ids, lc.data(), nullptr);
            p.gpu->prefill(s, ids, lg.data(), nullptr);
        }
        std::vector<int64_t> all(static_cast<size_t>(slots));
        for (int64_t s = 0; s < slots; ++s) all[s] = s;
        for (int t = 0; t < 3; ++t) {
            const std::vector<int32_t> toks = random_ids(rng, slots, V);
            p.cpu->step(all, toks, lc.data(), nullptr);
            p.gpu->step(all, toks, lg.data(), nullptr);
            expect_rows_close(lg, lc, V, "70-slot step " + std::to_string(t));
        }
    }
#endif
}

TEST(CudaQuantDecoderLong, HoldsFewerWeightBytes) {
    SKIP_WITHOUT_GPU();
#ifdef MSLM_HAVE_CUDA
    const ModelConfig cfg = mamba2_attention_wide();
    auto plain = random_model(cfg);
    const size_t bf16 = CudaCausalLM(*plain).memory().weights;
    for (const Format& f : kFormats) {
        auto model = random_model(cfg);
        model->pack_weights(f.gpu);
        const size_t q = CudaCausalLM(*model).memory().weights;
        // Linear weights are ~95% of this model: 4-bit ≈ 0.28 of bf16's bytes, int8 ≈ 0.53 (a bf16 copy
        // of every weight, as before, would be ≥ 1).
        EXPECT_LT(double(q), (ops::is_4bit_format(f.gpu) ? 0.4 : 0.65) * double(bf16)) << f.name;
    }
#endif
}

// bitsandbytes directories as transformers + bitsandbytes save them (tests/parity/fixtures/bnb_models):
// 4-bit weights packed straight from the file's codes, double-quantized absmax included.
TEST(CudaQuantDecoderLong, BitsandbytesDirectories) {
    SKIP_WITHOUT_GPU();
    const ExactCodeBook exact;
#ifdef MSLM_HAVE_CUDA
    struct Dir {
        const char* name;
        Format f;
    };
    for (const Dir& d : {Dir{"hybrid_nf4_dq", kFormats[0]}, Dir{"mamba2_fp4", kFormats[1]},
                         Dir{"jamba_fp4_dq", kFormats[1]}, Dir{"hybrid_int8", kFormats[2]}}) {
        SCOPED_TRACE(d.name);
        auto model = load_model<float>(kFixtures + "/bnb_models/" + d.name, nullptr, d.f.gpu);
        Pair p = make_pair(*model, d.f);
        ModelConfig cfg = model->config();
        cfg.max_seq_len = std::min<int64_t>(cfg.max_seq_len, 64);
        follow_the_cpu(*p.gpu, *p.cpu, cfg);
    }
#endif
}

}  // namespace
}  // namespace mslm
