#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "core/error.h"
#include "core/safetensors.h"
#include "gradcheck.h"
#include "model/config.h"
#include "model/hybrid_lm.h"
#include "model/info.h"
#include "model/model_io.h"
#include "test_util.h"

using namespace mslm;

namespace {

// Small configs that together cover every module option the model has.
ModelConfig small_hybrid_mamba2() {
    ModelConfig c;
    c.vocab_size = 23;
    c.d_model = 12;
    c.n_layers = 3;
    c.layers = parse_layer_pattern("MAM");
    c.mamba.version = 2;
    c.mamba.d_state = 4;
    c.mamba.head_dim = 4;
    c.mamba.n_groups = 2;
    c.mamba.chunk_size = 4;
    c.attention.n_heads = 4;
    c.attention.n_kv_heads = 2;
    c.attention.rotary_dim = 2;  // partial rotary
    c.mlp = {MlpKind::SwiGLU, 10, false};
    c.max_seq_len = 64;
    return c;
}

ModelConfig small_mamba1_jamba_like() {
    ModelConfig c;
    c.vocab_size = 19;
    c.d_model = 10;
    c.n_layers = 2;
    c.layers = parse_layer_pattern("AM");
    c.mamba.version = 1;
    c.mamba.d_state = 3;
    c.mamba.dt_rank = 2;
    c.mamba.dt_bc_norm = true;
    c.mamba.proj_bias = true;
    c.attention.n_heads = 2;
    c.attention.position = PositionKind::None;
    c.attention.qkv_bias = true;
    c.attention.out_bias = true;
    c.mlp = {MlpKind::GELU, 7, true};
    c.norm = NormKind::LayerNorm;
    c.tie_embeddings = false;
    c.max_seq_len = 64;
    return c;
}

ModelConfig small_alibi_window() {
    ModelConfig c = small_hybrid_mamba2();
    c.layers = parse_layer_pattern("AMA");
    c.attention.position = PositionKind::ALiBi;
    c.attention.sliding_window = 3;
    c.mlp = {MlpKind::GELUTanh, 9, false};
    return c;
}

ModelConfig small_pure_mamba2() {
    ModelConfig c = small_hybrid_mamba2();
    c.layers = parse_layer_pattern("MM");
    c.n_layers = 2;
    c.mlp.kind = MlpKind::None;
    c.mamba.norm_groups = 1;
    c.mamba.dt_limit_max = 0.05;  // clamps part of the dt values (init draws them in [0.001, 0.1])
    return c;
}

std::vector<int32_t> random_ids(Rng& rng, int64_t n, int64_t vocab) {
    std::vector<int32_t> v(static_cast<size_t>(n));
    for (auto& x : v) x = static_cast<int32_t>(rng.below(static_cast<uint64_t>(vocab)));
    return v;
}

// Perturbs every parameter a little so that no term of the model is trivially zero or one
// (norm weights 1, biases 0, D 1 would hide mistakes in their gradients).
template <typename T>
void perturb(HybridLM<T>& m, Rng& rng, double scale) {
    T* v = m.params().values();
    for (const auto& s : m.params().specs())
        for (int64_t i = 0; i < s.numel; ++i) v[s.offset + i] += static_cast<T>(scale * rng.normal());
}

void check_model_gradients(const ModelConfig& cfg, int64_t B, int64_t Tn) {
    HybridLM<double> model(cfg);
    model.init(1);
    Rng rng(2);
    perturb(model, rng, 0.05);
    auto ids = random_ids(rng, B * Tn, cfg.vocab_size);
    auto targets = random_ids(rng, B * Tn, cfg.vocab_size);
    targets[1] = -100;  // an ignored position
    model.params().zero_grad();
    model.forward(ids.data(), targets.data(), B, Tn);
    model.backward();
    for (const auto& spec : model.params().specs()) {
        const double* g = model.params().grads() + spec.offset;
        std::vector<double> analytic(g, g + spec.numel);
        double* w = model.params().values() + spec.offset;
        std::vector<double> numeric(static_cast<size_t>(spec.numel));
        const double h = 1e-5;
        for (int64_t i = 0; i < spec.numel; ++i) {
            double saved = w[i];
            w[i] = saved + h;
            double lp = model.forward(ids.data(), targets.data(), B, Tn);
            w[i] = saved - h;
            double lm = model.forward(ids.data(), targets.data(), B, Tn);
            w[i] = saved;
            numeric[i] = (lp - lm) / (2 * h);
        }
        // Error budget of the difference quotient: the loss (~3) is a sum over thousands of
        // double operations, each rounding at 2^-53 relative, so it carries ~1e-15 relative noise
        // (~3e-15 absolute); divided by 2h = 2e-5 that is ~2e-10 absolute noise on every numeric
        // entry, plus O(h^2) = 1e-10 truncation. Entries are compared relatively (1e-5) above a
        // floor of 1e-4, i.e. absolutely to 1e-9 below it: 5x the noise, and 1e4x smaller than
        // the typical entry, so a wrong formula cannot hide.
        test::expect_gradient_close(spec.name, analytic, numeric, 1e-5, 1e-4);
    }
}

}  // namespace

TEST(ModelGradcheck, HybridMamba2RopeGqaSwiglu) { check_model_gradients(small_hybrid_mamba2(), 2, 7); }
TEST(ModelGradcheck, Mamba1BcNormLayerNormGeluUntied) { check_model_gradients(small_mamba1_jamba_like(), 2, 5); }
TEST(ModelGradcheck, AlibiSlidingWindowGeluTanh) { check_model_gradients(small_alibi_window(), 1, 9); }
TEST(ModelGradcheck, PureMamba2NoMlp) { check_model_gradients(small_pure_mamba2(), 2, 6); }

TEST(Model, ParameterCountFormulaMatchesRegisteredParameters) {
    for (const ModelConfig& cfg : {small_hybrid_mamba2(), small_mamba1_jamba_like(), small_alibi_window(),
                                   small_pure_mamba2(), preset("tiny"), preset("30m")}) {
        HybridLM<float> model(cfg);
        EXPECT_EQ(count_parameters(cfg).total(), model.num_params()) << cfg.layer_pattern();
    }
}

TEST(Model, PresetSizesAreWhatTheirNamesSay) {
    // The names promise an order of magnitude; check each lands within ±30% of it.
    const std::pair<const char*, double> expected[] = {{"30m", 30e6},   {"130m", 130e6},        {"370m", 370e6},
                                                       {"1b", 1e9},     {"mamba-130m", 130e6}, {"mamba2-130m", 130e6}};
    for (auto [name, n] : expected) {
        double got = static_cast<double>(count_parameters(preset(name)).total());
        EXPECT_GT(got, 0.7 * n) << name;
        EXPECT_LT(got, 1.3 * n) << name;
    }
}

TEST(Model, InitialLossIsNearUniform) {
    // With 0.02-std weights the logits are tiny, so the loss starts near log(V); allow 0.1 nats.
    ModelConfig cfg = preset("tiny");
    HybridLM<float> model(cfg);
    model.init(0);
    Rng rng(3);
    auto ids = random_ids(rng, 2 * 32, cfg.vocab_size);
    auto targets = random_ids(rng, 2 * 32, cfg.vocab_size);
    float loss = model.forward(ids.data(), targets.data(), 2, 32);
    EXPECT_NEAR(loss, std::log(static_cast<double>(cfg.vocab_size)), 0.1);
}

TEST(Model, FloatMatchesDouble) {
    ModelConfig cfg = small_hybrid_mamba2();
    HybridLM<double> md(cfg);
    HybridLM<float> mf(cfg);
    md.init(5);
    Rng rng(6);
    perturb(md, rng, 0.05);
    for (size_t p = 0; p < md.params().specs().size(); ++p)
        for (int64_t i = 0; i < md.params().specs()[p].numel; ++i)
            mf.params().value(p)[i] = static_cast<float>(md.params().value(p)[i]);
    auto ids = random_ids(rng, 2 * 11, cfg.vocab_size);
    auto targets = random_ids(rng, 2 * 11, cfg.vocab_size);
    double ld = md.forward(ids.data(), targets.data(), 2, 11);
    float lf = mf.forward(ids.data(), targets.data(), 2, 11);
    // fp32 carries ~7 digits; a few layers of O(1) activations lose at most a few more bits.
    EXPECT_NEAR(lf, ld, 1e-5 * std::fabs(ld));
    double worst = 0;
    for (int64_t i = 0; i < 2 * 11 * cfg.vocab_size; ++i)
        worst = std::max(worst, std::fabs(mf.logits()[i] - md.logits()[i]));
    EXPECT_LT(worst, 1e-5);
}

TEST(Model, RejectsBadInput) {
    ModelConfig cfg = preset("tiny");
    HybridLM<float> model(cfg);
    model.init(0);
    std::vector<int32_t> ids(cfg.max_seq_len + 1, 1);
    EXPECT_THROW(model.forward(ids.data(), nullptr, 1, cfg.max_seq_len + 1), Error);
    ids[0] = static_cast<int32_t>(cfg.vocab_size);
    EXPECT_THROW(model.forward(ids.data(), nullptr, 1, 4), Error);
}

TEST(Config, JsonRoundTripAndErrors) {
    for (const auto& name : preset_names()) {
        ModelConfig c = preset(name);
        ModelConfig back = config_from_json(config_to_json(c), name);
        EXPECT_EQ(config_to_json(back), config_to_json(c)) << name;
    }
    ModelConfig c2 = small_mamba1_jamba_like();
    EXPECT_EQ(config_to_json(config_from_json(config_to_json(c2), "x")), config_to_json(c2));

    nlohmann::json j = config_to_json(preset("tiny"));
    j["d_modle"] = 5;
    try {
        config_from_json(j, "cfg.json");
        FAIL() << "typo accepted";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("unknown field \"d_modle\""), std::string::npos) << e.what();
    }
    j = config_to_json(preset("tiny"));
    j["layers"] = "MMXA";
    EXPECT_THROW(config_from_json(j, "cfg.json"), Error);
    j = config_to_json(preset("tiny"));
    j["n_layers"] = 5;
    EXPECT_THROW(config_from_json(j, "cfg.json"), Error);
    j = config_to_json(preset("tiny"));
    j["attention"]["n_kv_heads"] = 3;
    EXPECT_THROW(config_from_json(j, "cfg.json"), Error);
    EXPECT_THROW(preset("nope"), Error);
}

TEST(Config, CudaTrainingSsdChunkCapsTheConfigsAndTakesTheEnvironment) {
    test::ScopedEnv unset("MSLM_SSD_CHUNK", std::nullopt);
    EXPECT_EQ(preset("130m").mamba.chunk_size, 256);
    EXPECT_EQ(cuda_training_ssd_chunk(preset("130m")), kCudaTrainingSsdChunk);
    EXPECT_EQ(cuda_training_ssd_chunk(preset("tiny")), preset("tiny").mamba.chunk_size);  // 32: below the cap
    const ModelConfig c = with_cuda_training_chunk(preset("130m"));
    EXPECT_EQ(c.mamba.chunk_size, kCudaTrainingSsdChunk);
    EXPECT_EQ(c.d_model, preset("130m").d_model);
    {
        test::ScopedEnv env("MSLM_SSD_CHUNK", std::string("256"));
        EXPECT_EQ(cuda_training_ssd_chunk(preset("130m")), 256);
        EXPECT_EQ(cuda_training_ssd_chunk(preset("tiny")), 256);
    }
    for (const char* bad : {"0", "-4", "12x"}) {
        test::ScopedEnv env("MSLM_SSD_CHUNK", std::string(bad));
        try {
            cuda_training_ssd_chunk(preset("130m"));
            FAIL() << bad << " accepted";
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find("MSLM_SSD_CHUNK"), std::string::npos) << e.what();
        }
    }
}

TEST(ModelIo, NativeDirectoryRoundTrip) {
    const std::string dir = testing::TempDir() + "/mslm_model_io";
    ModelConfig cfg = small_mamba1_jamba_like();
    HybridLM<float> model(cfg);
    model.init(9);
    save_model(model, dir);
    LoadedModelInfo info;
    auto back = load_model<float>(dir, &info);
    EXPECT_EQ(info.format, "mamba_slm");
    EXPECT_EQ(config_to_json(back->config()), config_to_json(cfg));
    ASSERT_EQ(back->params().specs().size(), model.params().specs().size());
    for (size_t p = 0; p < model.params().specs().size(); ++p)
        for (int64_t i = 0; i < model.params().specs()[p].numel; ++i)
            ASSERT_EQ(back->params().value(p)[i], model.params().value(p)[i]) << model.params().specs()[p].name;

    // bf16 storage: 8 significant bits, so rounding to nearest moves a value by at most half an
    // ulp = 2^-8 of the bottom of its binade, i.e. at most 2^-8 relative.
    save_model(model, dir, DType::BF16);
    auto half = load_model<float>(dir);
    for (size_t p = 0; p < model.params().specs().size(); ++p)
        for (int64_t i = 0; i < model.params().specs()[p].numel; ++i) {
            float want = model.params().value(p)[i];
            ASSERT_NEAR(half->params().value(p)[i], want, std::fabs(want) * 0x1.0p-8f);
        }
}

TEST(ModelIo, LoadRejectsMissingExtraAndMisshapenTensors) {
    const std::string dir = testing::TempDir() + "/mslm_model_io_bad";
    ModelConfig cfg = small_pure_mamba2();
    HybridLM<float> model(cfg);
    model.init(1);
    save_model(model, dir);
    // Rewrite the weights with one tensor dropped, one added, or one with the wrong shape.
    auto rewrite = [&](const std::string& drop, const std::string& add, const std::string& reshape) {
        std::vector<std::pair<std::string, Tensor>> ts;
        for (size_t p = 0; p < model.params().specs().size(); ++p) {
            const ParamSpec& s = model.params().specs()[p];
            if (s.name == drop) continue;
            Shape shape = s.name == reshape ? Shape{s.numel} : s.shape;
            if (s.name == reshape && s.shape.size() == 1) shape = {1, s.numel};
            Tensor t = Tensor::zeros(shape, DType::F32);
            ts.emplace_back(s.name, t);
        }
        if (!add.empty()) ts.emplace_back(add, Tensor::zeros({2}, DType::F32));
        save_safetensors(dir + "/model.safetensors", ts);
    };
    auto expect_error = [&](const std::string& phrase) {
        try {
            load_model<float>(dir);
            ADD_FAILURE() << "loaded a bad model; expected an error with: " << phrase;
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find(phrase), std::string::npos) << e.what();
        }
    };
    rewrite("layers.0.mixer.A_log", "", "");
    expect_error("missing tensor 'layers.0.mixer.A_log'");
    rewrite("", "extra.weight", "");
    expect_error("unexpected tensor 'extra.weight'");
    rewrite("", "", "layers.1.mixer.in_proj.weight");
    expect_error("'layers.1.mixer.in_proj.weight' has shape");
}

// Activation checkpointing recomputes each layer's forward inside backward: the loss and every
// gradient are bitwise those of the plain pass, and the activations held at the end of forward
// shrink to the residual stream plus one layer's worth.
TEST(HybridLM, ActivationCheckpointingSameGradientsLessMemory) {
    ModelConfig cfg = preset("tiny");
    cfg.n_layers = 8;
    cfg.layers.assign(8, LayerKind::Mamba);
    cfg.layers[3] = cfg.layers[7] = LayerKind::Attention;
    const int64_t B = 2, Tn = 64;
    Rng rng(3);
    std::vector<int32_t> ids(B * Tn), targets(B * Tn);
    for (auto& v : ids) v = static_cast<int32_t>(rng.below(static_cast<uint64_t>(cfg.vocab_size)));
    for (auto& v : targets) v = static_cast<int32_t>(rng.below(static_cast<uint64_t>(cfg.vocab_size)));

    HybridLM<float> plain(cfg), ckpt(cfg);
    plain.init(1);
    ckpt.init(1);
    ckpt.set_activation_checkpointing(true);
    plain.params().zero_grad();
    ckpt.params().zero_grad();
    const float loss_plain = plain.forward(ids.data(), targets.data(), B, Tn);
    const size_t bytes_plain = plain.activation_bytes();
    const float loss_ckpt = ckpt.forward(ids.data(), targets.data(), B, Tn);
    const size_t bytes_ckpt = ckpt.activation_bytes();
    EXPECT_EQ(loss_plain, loss_ckpt);
    // Measured 0.13 of the plain pass for these 8 layers (the residual stream and logits remain).
    EXPECT_LT(static_cast<double>(bytes_ckpt), 0.5 * static_cast<double>(bytes_plain))
        << bytes_ckpt << " vs " << bytes_plain;
    plain.backward();
    ckpt.backward();
    auto& p = plain.params();
    ASSERT_EQ(p.total(), ckpt.params().total());
    EXPECT_EQ(std::memcmp(p.grads(), ckpt.params().grads(), static_cast<size_t>(p.total()) * sizeof(float)), 0);
    // A second step works the same way (buffers are rebuilt after release).
    ckpt.params().zero_grad();
    EXPECT_EQ(ckpt.forward(ids.data(), targets.data(), B, Tn), loss_ckpt);
    ckpt.backward();
    EXPECT_EQ(std::memcmp(p.grads(), ckpt.params().grads(), static_cast<size_t>(p.total()) * sizeof(float)), 0);
}
