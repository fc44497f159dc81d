// The whole model on the GPU (model/cuda_model.h) against the CPU fp32 model: loss and every
// parameter's gradient, for small configs that cover Mamba-1 (with and without the dt/B/C norms),
// Mamba-2, attention (RoPE with GQA, ALiBi with a window), SwiGLU, GELU, GELU tanh and ReLU MLPs,
// RMSNorm and LayerNorm, biases, tied and untied heads.
//
// Tolerances, from the rounding model. The GPU stores weights and activations in bf16 (unit
// roundoff u = 2^-9, relative rounding error uniform in ±u, rms u/√3 ≈ 2^-9.8) and accumulates in
// fp32 (negligible next to it). A layer rounds about k ≈ 10 tensors on the way forward and as many
// on the way back (projection outputs, conv, scan, norm, residual; their gradients). Rounding errors
// are independent, so the relative L2 error of a gradient tensor grows like √(number of roundings
// on its path): through L ≤ 4 layers and the head, √(2·10·4 + 10) · 2^-9.8 ≈ 0.011; the gradient's
// own staging in bf16 (parameters other than matrix weights) adds one more 2^-9.8. We bound it
// by 3e-2 (a factor ~3 of headroom for the non-uniform sensitivity of the SSM recurrences: dt and
// A enter through exponentials), and ask for cosine similarity > 0.999, which a wrong term (a
// missed gradient path, a wrong stride) fails by far. The loss, a mean of N log-softmaxes over
// bf16 logits of magnitude ≲ 1: each logit carries a ~√(10·L)·2^-9.8 relative error, so the loss
// moves by far less than 2e-2 relative.
//
// ReLU is the exception: its gradient jumps at 0, and an fc1 output h that the GPU's rounding
// moves across 0 passes its full gradient on one side and none on the other. Such a flip errs by
// as much as the entry itself, and on the H200 a random ReLU model's fc1 gradient differed by 12–14%
// relative L2 — a measure of how many entries sit within bf16 error of 0, not of the kernels. So
// the ReLU model gets fc1 biases of ±2 (random signs): every pre-activation stays far from 0 (its
// other terms have rms ~0.4: 5σ), both sides of the mask are exercised, no entry can flip, and the
// general 3e-2 bound applies. Its fc2 weights are scaled by 0.1 so that the MLP's output stays at
// the scale the other configs have (ReLU of ±2 passes ~2 where GELU of the unbiased ~0.4-rms
// pre-activations passes ~0.2): unscaled, the residual stream grows tenfold and a Mamba layer's
// dt_bias gradient, a sum with heavy cancellation, measured 6% off on the H200. The kernel's own ReLU (strict x > 0, gradient at 0) is tested exactly in
// test_cuda_elementwise.cpp.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "core/cuda_device.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/rng.h"
#include "model/config.h"
#include "model/cuda_model.h"
#include "model/hybrid_lm.h"
#include "ops/cross_entropy.h"
#include "ops/cuda/conv1d.h"
#include "ops/cuda/linear.h"
#include "ops/cuda/selective_scan.h"

namespace {

using namespace mslm;

class CudaModel : public ::testing::Test {
protected:
    void SetUp() override {
        if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU: " << cuda_device_summary();
    }
};

// Mamba-2 + attention (RoPE, GQA) + SwiGLU, RMSNorm, tied embeddings: the preset family.
ModelConfig mamba2_hybrid() {
    ModelConfig c;
    c.vocab_size = 97;
    c.d_model = 64;
    c.n_layers = 3;
    c.layers = parse_layer_pattern("MMA");
    c.mamba.version = 2;
    c.mamba.d_state = 16;
    c.mamba.head_dim = 16;
    c.mamba.chunk_size = 8;  // T = 33: five chunks, the last partial
    c.attention.n_heads = 4;
    c.attention.n_kv_heads = 2;
    c.mlp = {MlpKind::SwiGLU, 96, false};
    c.max_seq_len = 64;
    return c;
}

// Mamba-1 layers with attention (ALiBi, sliding window), LayerNorm, biases everywhere, untied head.
[[maybe_unused]] ModelConfig mamba1_hybrid() {
    ModelConfig c;
    c.vocab_size = 97;
    c.d_model = 64;
    c.n_layers = 4;
    c.layers = parse_layer_pattern("MAMA");
    c.mamba.version = 1;
    c.mamba.d_state = 8;
    c.mamba.proj_bias = true;
    c.attention.n_heads = 4;
    c.attention.position = PositionKind::ALiBi;
    c.attention.sliding_window = 7;
    c.attention.qkv_bias = true;
    c.attention.out_bias = true;
    c.mlp = {MlpKind::SwiGLU, 80, true};
    c.norm = NormKind::LayerNorm;
    c.tie_embeddings = false;
    c.max_seq_len = 64;
    return c;
}

// Mamba-1 with Jamba's RMSNorms on dt, B and C (dt_rank 5 and d_state 12: the three norms have
// different widths, none a multiple of 8) and a GELU MLP with biases, as Jamba-style checkpoints.
[[maybe_unused]] ModelConfig mamba1_dt_bc_norm() {
    ModelConfig c = mamba1_hybrid();
    c.layers = parse_layer_pattern("MAM");
    c.n_layers = 3;
    c.mamba.d_state = 12;
    c.mamba.dt_rank = 5;
    c.mamba.dt_bc_norm = true;
    c.norm = NormKind::RMSNorm;
    c.mlp = {MlpKind::GELU, 72, true};
    return c;
}

// A plain two-layer MLP (fc1, activation, fc2) of the given kind in a Mamba-2 + attention hybrid;
// d_ff = 75 is odd, so the activations take their one-element paths.
[[maybe_unused]] ModelConfig plain_mlp(MlpKind kind, bool bias) {
    ModelConfig c = mamba2_hybrid();
    c.layers = parse_layer_pattern("MA");
    c.n_layers = 2;
    c.mlp = {kind, 75, bias};
    return c;
}

// Pure Mamba-2 without MLP: two groups of B/C, one norm group, partial rotary unused.
[[maybe_unused]] ModelConfig mamba2_grouped() {
    ModelConfig c = mamba2_hybrid();
    c.layers = parse_layer_pattern("MM");
    c.n_layers = 2;
    c.mamba.n_groups = 2;
    c.mamba.norm_groups = 1;
    c.mamba.chunk_size = 16;
    c.mlp.kind = MlpKind::None;
    c.embed_padding_idx = 5;  // lookups of id 5 give no embedding gradient, as on the CPU
    return c;
}

#ifdef MSLM_HAVE_CUDA

std::vector<int32_t> random_ids(Rng& rng, int64_t n, int64_t vocab) {
    std::vector<int32_t> v(static_cast<size_t>(n));
    for (auto& x : v) x = static_cast<int32_t>(rng.below(static_cast<uint64_t>(vocab)));
    return v;
}

// Moves every parameter off its initial value (norm weights 1, biases 0, D 1 would hide mistakes
// in their gradients).
void perturb(HybridLM<float>& m, Rng& rng, double scale) {
    float* v = m.params().values();
    for (const auto& s : m.params().specs())
        for (int64_t i = 0; i < s.numel; ++i) v[s.offset + i] += static_cast<float>(scale * rng.normal());
}

// rel_tol: the bound on each gradient's relative L2 error (the header: 3e-2); the cosine bound
// follows from it. adjust, when given, edits the CPU model's parameters before the comparison.
void compare_with_cpu(const ModelConfig& cfg, int64_t B, int64_t T, uint64_t seed, double rel_tol = 3e-2,
                      const std::function<void(HybridLM<float>&, Rng&)>& adjust = {}) {
    HybridLM<float> cpu(cfg);
    cpu.init(seed);
    Rng rng(seed + 1);
    perturb(cpu, rng, 0.05);
    if (adjust) adjust(cpu, rng);
    const int64_t N = B * T;
    const auto ids = random_ids(rng, N, cfg.vocab_size);
    auto targets = random_ids(rng, N, cfg.vocab_size);
    for (int64_t i = 0; i < N; i += 5) targets[i] = ops::kIgnoreIndex;  // some rows do not count

    const float cpu_loss = cpu.forward(ids.data(), targets.data(), B, T);
    cpu.params().zero_grad();
    cpu.backward();

    CudaHybridLM gpu(cfg);
    ASSERT_EQ(gpu.params_total(), cpu.params().total());
    gpu.upload(cpu);
    const float loss = gpu.forward(ids.data(), targets.data(), B, T);
    gpu.backward();
    EXPECT_NEAR(loss, cpu_loss, 2e-2 * std::abs(cpu_loss)) << "loss";
    EXPECT_GT(gpu.memory_bytes(), gpu.activation_bytes());
    // info's plan (host arithmetic) is the plan the model allocated: the activations, and all of it
    // but the optimizer state (not uploaded here), the staged gradients' buffer and table included.
    const CudaTrainingMemory plan = CudaHybridLM::training_memory(cfg, B, T);
    EXPECT_EQ(plan.activations, gpu.activation_bytes());
    EXPECT_EQ(plan.total() - plan.optimizer, gpu.memory_bytes());
    EXPECT_GT(gpu.activation_bytes(), static_cast<size_t>(N * cfg.d_model * (cfg.n_layers + 1) * 2));

    std::vector<float> grads;
    gpu.download_grads(grads);
    const float* ref = cpu.params().grads();
    double worst = 0;  // the largest relative L2 error, printed: the headroom left under rel_tol
    std::string worst_name;
    for (const ParamSpec& s : cpu.params().specs()) {
        double diff = 0, norm_ref = 0, norm_got = 0, dot = 0;
        for (int64_t i = 0; i < s.numel; ++i) {
            const double g = grads[s.offset + i], r = ref[s.offset + i];
            diff += (g - r) * (g - r);
            norm_ref += r * r;
            norm_got += g * g;
            dot += g * r;
        }
        ASSERT_GT(norm_ref, 0.0) << s.name << ": the CPU gradient is zero, the comparison would say nothing";
        const double rel = std::sqrt(diff / norm_ref), cosine = dot / std::sqrt(norm_ref * norm_got);
        if (rel > worst) worst = rel, worst_name = s.name;
        EXPECT_LT(rel, rel_tol) << s.name << " (cosine " << cosine << ")";
        EXPECT_GT(cosine, rel_tol > 3e-2 ? 1.0 - rel_tol * rel_tol / 2 : 0.999)
            << s.name << " (relative L2 error " << rel << ")";
    }

    std::printf("  largest gradient relative L2 error %.4f (%s), bound %.4f\n", worst, worst_name.c_str(),
                rel_tol);

    // Determinism: the same step again gives the same bits (no float atomics anywhere) — run with the
    // loss's gradient formed in the forward's pass over the logits (backward_follows, as the trainer
    // runs it), which must give the two-pass bits.
    gpu.zero_grad();
    const float again = gpu.forward(ids.data(), targets.data(), B, T, /*backward_follows=*/true);
    gpu.backward();
    std::vector<float> grads2;
    gpu.download_grads(grads2);
    EXPECT_EQ(std::memcmp(&again, &loss, sizeof(float)), 0) << "loss " << again << " vs " << loss;
    EXPECT_EQ(std::memcmp(grads.data(), grads2.data(), sizeof(float) * grads.size()), 0)
        << "gradients differ";

    // Gradients accumulate: a second backward without zero_grad doubles them, up to the fp32
    // roundings of the additions (cuBLASLt adds the product into the fp32 weight gradient itself).
    gpu.forward(ids.data(), targets.data(), B, T);
    gpu.backward();
    std::vector<float> twice;
    gpu.download_grads(twice);
    for (const ParamSpec& s : cpu.params().specs()) {
        double diff = 0, norm = 0;
        for (int64_t i = 0; i < s.numel; ++i) {
            const double expected = 2.0 * grads[s.offset + i];
            diff += (twice[s.offset + i] - expected) * (twice[s.offset + i] - expected);
            norm += expected * expected;
        }
        EXPECT_LE(std::sqrt(diff), 1e-5 * std::sqrt(norm)) << s.name << ": gradients do not accumulate";
    }
}

#endif  // MSLM_HAVE_CUDA

TEST_F(CudaModel, Mamba2AttentionSwiGLUMatchesCpu) {
#ifdef MSLM_HAVE_CUDA
    compare_with_cpu(mamba2_hybrid(), 2, 33, 11);
#endif
}

TEST_F(CudaModel, Mamba1AlibiLayerNormBiasesMatchesCpu) {
#ifdef MSLM_HAVE_CUDA
    compare_with_cpu(mamba1_hybrid(), 2, 33, 12);
#endif
}

TEST_F(CudaModel, Mamba1DtBcNormGeluMatchesCpu) {
#ifdef MSLM_HAVE_CUDA
    compare_with_cpu(mamba1_dt_bc_norm(), 2, 33, 15);
#endif
}

TEST_F(CudaModel, PlainMlpsMatchCpu) {
#ifdef MSLM_HAVE_CUDA
    struct Case {
        MlpKind kind;
        bool bias;
        const char* name;
    };
    uint64_t seed = 16;
    for (const Case& k :
         {Case{MlpKind::GELU, true, "gelu, bias"}, Case{MlpKind::GELU, false, "gelu"},
          Case{MlpKind::GELUTanh, true, "gelu_tanh, bias"}, Case{MlpKind::GELUTanh, false, "gelu_tanh"},
          Case{MlpKind::ReLU, true, "relu, fc1 bias ±2"}}) {
        SCOPED_TRACE(k.name);
        // ReLU: pre-activations kept away from 0 (the header says why).
        auto margin = [](HybridLM<float>& m, Rng& rng) {
            for (const ParamSpec& s : m.params().specs()) {
                float* v = m.params().values() + s.offset;
                if (s.name.find("mlp.fc1.bias") != std::string::npos)
                    for (int64_t i = 0; i < s.numel; ++i) v[i] = rng.uniform(0, 1) < 0.5 ? -2.0f : 2.0f;
                if (s.name.find("mlp.fc2.weight") != std::string::npos)
                    for (int64_t i = 0; i < s.numel; ++i) v[i] *= 0.1f;
            }
        };
        compare_with_cpu(plain_mlp(k.kind, k.bias), 2, 33, seed++, 3e-2,
                         k.kind == MlpKind::ReLU ? std::function<void(HybridLM<float>&, Rng&)>(margin) : nullptr);
    }
#endif
}

TEST_F(CudaModel, PureMamba2GroupedMatchesCpu) {
#ifdef MSLM_HAVE_CUDA
    compare_with_cpu(mamba2_grouped(), 3, 33, 13);
#endif
}

TEST_F(CudaModel, TinyPresetMatchesCpu) {
#ifdef MSLM_HAVE_CUDA
    ModelConfig c = preset("tiny");
    c.vocab_size = 97;
    compare_with_cpu(c, 2, 40, 14);
#endif
}

// ops::cuda::linear_backward_dW_f32 (added for the model): dW (O, I) += doutᵀ · x from bf16 inputs
// into fp32, against a double reference over the decoded bf16 inputs. Each element is an fp32 sum of
// N products plus the old value: error ≤ (N + 1)·2^-24 of the sum of magnitudes (bf16 products are
// exact in fp32).
TEST_F(CudaModel, LinearBackwardDWF32Accumulates) {
#ifdef MSLM_HAVE_CUDA
    Rng rng(21);
    struct Size {
        int64_t N, I, O;
    };
    for (const Size& z : {Size{1, 3, 5}, Size{33, 17, 40}, Size{66, 64, 296}}) {
        SCOPED_TRACE(testing::Message() << "(N, I, O) = (" << z.N << ", " << z.I << ", " << z.O << ")");
        std::vector<uint16_t> dout(static_cast<size_t>(z.N * z.O)), x(static_cast<size_t>(z.N * z.I));
        for (auto& v : dout) v = f32_to_bf16(static_cast<float>(rng.uniform(-1, 1)));
        for (auto& v : x) v = f32_to_bf16(static_cast<float>(rng.uniform(-1, 1)));
        std::vector<float> dW(static_cast<size_t>(z.O * z.I));
        for (auto& v : dW) v = static_cast<float>(rng.uniform(-1, 1));

        void* d_dout = cuda_malloc(sizeof(uint16_t) * dout.size());
        void* d_x = cuda_malloc(sizeof(uint16_t) * x.size());
        void* d_dW = cuda_malloc(sizeof(float) * dW.size());
        cuda_copy(d_dout, dout.data(), sizeof(uint16_t) * dout.size(), CopyKind::HostToDevice);
        cuda_copy(d_x, x.data(), sizeof(uint16_t) * x.size(), CopyKind::HostToDevice);
        cuda_copy(d_dW, dW.data(), sizeof(float) * dW.size(), CopyKind::HostToDevice);
        ops::cuda::linear_backward_dW_f32(static_cast<float*>(d_dW), static_cast<const uint16_t*>(d_dout),
                                          static_cast<const uint16_t*>(d_x), z.N, z.I, z.O);
        std::vector<float> got(dW.size());
        cuda_copy(got.data(), d_dW, sizeof(float) * got.size(), CopyKind::DeviceToHost);
        cuda_free(d_dout);
        cuda_free(d_x);
        cuda_free(d_dW);

        for (int64_t o = 0; o < z.O; ++o) {
            for (int64_t i = 0; i < z.I; ++i) {
                double ref = dW[o * z.I + i], mag = std::abs(ref);
                for (int64_t n = 0; n < z.N; ++n) {
                    const double p =
                        static_cast<double>(bf16_to_f32(dout[n * z.O + o])) * bf16_to_f32(x[n * z.I + i]);
                    ref += p;
                    mag += std::abs(p);
                }
                ASSERT_NEAR(got[o * z.I + i], ref, (z.N + 1) * 0x1p-24 * mag + 1e-30)
                    << "(o, i) = (" << o << ", " << i << ")";
            }
        }
    }
#endif
}

// The options beyond the CUDA kernels' limits are refused by name, before any GPU memory is touched.
TEST(CudaModelConfig, RejectsUnsupportedOptions) {
#ifdef MSLM_HAVE_CUDA
    ModelConfig wide_state = mamba1_hybrid();
    wide_state.mamba.d_state = ops::cuda::kScanMaxState + 1;
    ModelConfig long_conv = mamba1_hybrid();
    long_conv.mamba.d_conv = ops::cuda::kConv1dBackwardMaxK + 1;
    for (const ModelConfig& c : {wide_state, long_conv}) {
        try {
            CudaHybridLM m(c);
            ADD_FAILURE() << "accepted an unsupported config";
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find("not supported on CUDA yet"), std::string::npos) << e.what();
        }
    }
#else
    GTEST_SKIP() << "built without CUDA";
#endif
}

}  // namespace
