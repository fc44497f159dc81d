// Quantization-aware training (quant/fake_quant.h, train config qat / qat_group): the fake-quantized
// weights are those the real quantizers store, bit for bit; the straight-through gradient is the
// gradient of the quantized model; QAT training resumes bitwise; bad settings are refused.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>

#include "core/dtype.h"
#include "core/rng.h"
#include "gradcheck.h"
#include "model/model_io.h"
#include "quant/bnb.h"
#include "quant/bnb_model.h"
#include "quant/fake_quant.h"
#include "train/trainer.h"
#include "train_test_util.h"

using namespace mslm;
using namespace mslm::quant;
namespace fs = std::filesystem;

namespace {

std::string fresh_dir(const std::string& name) {
    std::string dir = testing::TempDir() + "/mslm_qat_" + name + "_" + std::to_string(getpid());
    fs::remove_all(dir);
    return dir;
}

std::vector<float> random_weights(size_t n, uint64_t seed) {
    Rng rng(seed);
    std::vector<float> w(n);
    for (float& x : w) x = static_cast<float>(rng.normal(0.0, 0.05));
    return w;
}

bool same_bits(std::span<const float> a, std::span<const float> b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// One Mamba-2 and one attention layer with a SwiGLU MLP, widths 32..64 so that int4 groups of 32 and
// NF4 blocks of 64 fall inside and across rows.
ModelConfig small_config() {
    ModelConfig c;
    c.vocab_size = 40;
    c.d_model = 32;
    c.n_layers = 2;
    c.layers = parse_layer_pattern("MA");
    c.mamba.version = 2;
    c.mamba.d_state = 8;
    c.mamba.head_dim = 16;
    c.mamba.chunk_size = 4;
    c.attention.n_heads = 4;
    c.attention.n_kv_heads = 2;
    c.mlp = {MlpKind::SwiGLU, 48, false};
    c.max_seq_len = 16;
    return c;
}

}  // namespace

// int4 on a row worked by hand: absmax 7 gives s = 1, so the codes are the weights rounded half to
// even (3.5 -> 4, 2.5 -> 2, -0.5 -> -0); the second group (absmax 0.7, s = 0.1) is partial (cols 40,
// group 32) and the third row is a zero group.
TEST(Qat, Int4GroupsRoundHalfToEvenPerGroup) {
    std::vector<float> w(3 * 40, 0.0f);
    w[0] = 7.0f, w[1] = 3.5f, w[2] = -2.5f, w[3] = -0.5f, w[4] = -7.0f, w[5] = 1.25f;
    w[32] = 0.7f, w[33] = -0.35f;  // row 0, group 1: s = 0.7f / 7
    w[40] = 1.0f;                  // row 1: s = 1/7
    const Int4Groups q = int4_quantize_groups(w, 3, 40, 32);
    ASSERT_EQ(q.scale.size(), 6u);
    EXPECT_EQ(q.scale[0], 1.0f);
    EXPECT_EQ(q.scale[1], 0.7f / 7.0f);
    EXPECT_EQ(q.scale[4], 0.0f);
    const std::vector<int8_t> row0 = {7, 4, -2, 0, -7, 1};
    for (size_t i = 0; i < row0.size(); ++i) EXPECT_EQ(q.q[i], row0[i]) << i;
    EXPECT_EQ(q.q[32], 7);
    EXPECT_EQ(q.q[33], static_cast<int8_t>(std::nearbyint(-0.35f / (0.7f / 7.0f))));
    EXPECT_EQ(q.q[40], 7);
    for (int8_t v : q.q) EXPECT_TRUE(v >= -7 && v <= 7);
    std::vector<float> back(w.size());
    int4_dequantize_groups(q, 3, 40, 32, back);
    EXPECT_EQ(back[1], 4.0f);
    EXPECT_EQ(back[40], 7.0f * (1.0f / 7.0f));
    EXPECT_EQ(back[80], 0.0f);
}

// fake_quantize is the real quantizers' round trip on the layout each one uses: int8 rows after the
// fp16 cast, int4 groups within rows, NF4 blocks of 64 over the flattened weight (crossing rows).
TEST(Qat, FakeQuantizeIsQuantizeThenDequantizeBitForBit) {
    const int64_t rows = 24, cols = 40;
    const std::vector<float> w = random_weights(static_cast<size_t>(rows * cols), 7);
    std::vector<float> fq(w.size()), ref(w.size());

    fake_quantize(w, rows, cols, QatType::NF4, 0, fq);
    const Bnb4Quantized n = bnb4_quantize(w, Bnb4Type::NF4, 64);
    bnb4_dequantize(n.packed, n.absmax, Bnb4Type::NF4, 64, ref);
    EXPECT_TRUE(same_bits(fq, ref));

    fake_quantize(w, rows, cols, QatType::Int4, 32, fq);
    int4_dequantize_groups(int4_quantize_groups(w, rows, cols, 32), rows, cols, 32, ref);
    EXPECT_TRUE(same_bits(fq, ref));
    int4_dequantize_groups(int4_quantize_groups(w, rows, cols, 8), rows, cols, 8, ref);
    fake_quantize(w, rows, cols, QatType::Int4, 8, fq);
    EXPECT_TRUE(same_bits(fq, ref));

    fake_quantize(w, rows, cols, QatType::Int8, 0, fq);
    std::vector<float> h(w.size());
    for (size_t i = 0; i < w.size(); ++i) h[i] = f16_to_f32(f32_to_f16(w[i]));
    int8_dequantize_rows(int8_quantize_rows(h, rows, cols), rows, cols, ref);
    EXPECT_TRUE(same_bits(fq, ref));
    EXPECT_FALSE(same_bits(fq, w));  // it did quantize
}

// The weights QAT trains on are those `mamba-slm quantize` writes: quantize a saved model to int8 and
// NF4, load the directories back (dequantized), and every tensor is bit for bit the fake quantization
// of the original (for qat_weights) or the original itself (everything else).
TEST(Qat, FakeQuantizedWeightsAreThoseOfAQuantizedModelDirectory) {
    HybridLM<float> model(small_config());
    model.init(5);
    const std::string dir = fresh_dir("ptq_src");
    save_model(model, dir);
    const Parameters<float>& p = model.params();
    const std::vector<size_t> qw = qat_weights(p);
    EXPECT_GT(qw.size(), 4u);
    for (auto [kind, type] : {std::pair{BnbKind::Int8, QatType::Int8}, std::pair{BnbKind::NF4, QatType::NF4}}) {
        const std::string out = fresh_dir(std::string("ptq_") + bnb_kind_name(kind));
        BnbQuantizeOptions opts;
        opts.kind = kind;
        quantize_model_dir(dir, out, opts);
        auto loaded = load_model<float>(out);
        for (size_t i = 0; i < p.specs().size(); ++i) {
            const ParamSpec& s = p.specs()[i];
            const std::span<const float> orig(p.value(i), static_cast<size_t>(s.numel));
            const std::span<const float> got(loaded->params().value(loaded->params().find(s.name)), orig.size());
            std::vector<float> want(orig.begin(), orig.end());
            if (std::find(qw.begin(), qw.end(), i) != qw.end())
                fake_quantize(orig, s.shape[0], s.shape[1], type, 0, want);
            EXPECT_TRUE(same_bits(got, want)) << s.name << " " << bnb_kind_name(kind);
        }
    }
}

// The forward of a model with the quantizer attached is the forward of the model whose weights were
// replaced by their quantize -> dequantize (post-training quantization), bit for bit.
TEST(Qat, ForwardWithTheQuantizerEqualsTheForwardOfTheQuantizedWeights) {
    for (QatType type : {QatType::Int8, QatType::Int4, QatType::NF4}) {
        HybridLM<float> a(small_config()), b(small_config());
        a.init(9);
        std::memcpy(b.params().values(), a.params().values(), sizeof(float) * static_cast<size_t>(a.params().total()));
        FakeQuantizer<float> fq(a.params(), type);
        EXPECT_EQ(fake_quantize_model_weights(b.params(), type), fq.weights());
        Rng rng(3);
        std::vector<int32_t> ids(2 * 16);
        for (auto& x : ids) x = static_cast<int32_t>(rng.below(40));
        const float la = a.forward(ids.data(), ids.data(), 2, 16), lb = b.forward(ids.data(), ids.data(), 2, 16);
        EXPECT_EQ(la, lb) << qat_type_name(type);
    }
}

// Straight-through estimator. A: the double model with the quantizer attached, its analytic gradient.
// B: a copy whose weights are A's fake-quantized weights, held fixed, and no quantizer. The STE says
// dL/dW (A) = dL/dW' (B) for every quantized weight, and every other gradient (norms, conv, the
// embedding, reached through dx of the quantized products) is B's too: checked against B's central
// differences on sampled entries.
TEST(Qat, SteGradientIsTheGradientOfTheQuantizedModel) {
    for (QatType type : {QatType::Int8, QatType::Int4, QatType::NF4}) {
        const ModelConfig cfg = small_config();
        HybridLM<double> a(cfg), b(cfg);
        a.init(11);
        Rng rng(12);
        // Perturb so that norm weights are not all 1, D not 1 etc. (hides gradient mistakes).
        for (int64_t i = 0; i < a.params().total(); ++i) a.params().values()[i] += 0.02 * rng.normal();
        std::memcpy(b.params().values(), a.params().values(), sizeof(double) * static_cast<size_t>(a.params().total()));
        FakeQuantizer<double> fq(a.params(), type);
        for (size_t i : qat_weights(b.params())) {
            const ParamSpec& s = b.params().specs()[i];
            const double* wq = fq.apply(b.params().value(i), s.shape[0], s.shape[1]);
            std::copy(wq, wq + s.numel, b.params().value(i));
        }
        const int64_t B = 2, Tn = 7;
        std::vector<int32_t> ids(B * Tn), targets(B * Tn);
        for (auto& x : ids) x = static_cast<int32_t>(rng.below(40));
        for (auto& x : targets) x = static_cast<int32_t>(rng.below(40));
        a.params().zero_grad();
        const double la = a.forward(ids.data(), targets.data(), B, Tn);
        a.backward();
        EXPECT_EQ(la, b.forward(ids.data(), targets.data(), B, Tn)) << qat_type_name(type);
        for (size_t i = 0; i < a.params().specs().size(); ++i) {
            const ParamSpec& s = a.params().specs()[i];
            double* w = b.params().value(i);
            std::vector<double> analytic, numeric;
            const int64_t stride = std::max<int64_t>(1, s.numel / 12);  // about 12 entries per tensor
            for (int64_t k = 0; k < s.numel; k += stride) {
                const double saved = w[k], h = 1e-5;
                w[k] = saved + h;
                const double lp = b.forward(ids.data(), targets.data(), B, Tn);
                w[k] = saved - h;
                const double lm = b.forward(ids.data(), targets.data(), B, Tn);
                w[k] = saved;
                numeric.push_back((lp - lm) / (2 * h));
                analytic.push_back(a.params().grad(i)[k]);
            }
            // As the model gradcheck (test_model.cpp): the loss (~3.7) carries ~1e-15 relative noise,
            // ~2e-10 absolute on a quotient over 2h = 2e-5, plus O(h²) truncation: 1e-5 relative above
            // a floor of 1e-4. The STE is exact here, not an approximation, since B's weights are A's
            // quantized weights and the rounding is piecewise constant: a wrong STE (a mask, a missing
            // or doubled dx) is off by O(1).
            test::expect_gradient_close(s.name + " " + qat_type_name(type), analytic, numeric, 1e-5, 1e-4);
        }
    }
}

namespace {

const std::string& shakespeare_bytes() {
    static const std::string dir = test::prepare_shakespeare_bytes(fresh_dir("data"));
    return dir;
}

#define NEED_DATA() \
    if (shakespeare_bytes().empty()) GTEST_SKIP() << "no tinyshakespeare.txt at " << test::data_dir()

TrainConfig qat_config(const std::string& run, const std::string& qat) {
    TrainConfig c;
    c.model_preset = "tiny";  // vocab 512 >= the 257 byte tokens
    c.data = shakespeare_bytes();
    c.run_dir = fresh_dir(run);
    c.batch_size = 4;
    c.seq_len = 64;
    c.steps = 8;
    c.lr = 3e-3;
    c.warmup = 2;
    c.eval_every = 0;
    c.eval_batches = 2;
    c.log_every = 1;
    c.checkpoint_every = 4;
    c.seed = 3;
    c.qat = qat;
    return c;
}

std::vector<float> all_values(Parameters<float>& p) { return {p.values(), p.values() + p.total()}; }

}  // namespace

// QAT training through the trainer: it runs, it differs from the same run without QAT (the forward
// really is quantized), it trains the fp32 masters (not snapped to the grid), and a run killed after
// the step-4 checkpoint and resumed ends bit for bit where the straight run ends.
TEST(Qat, TrainingRunsAndResumesBitwise) {
    NEED_DATA();
    for (const std::string qat : {"int4", "nf4", "int8"}) {
        TrainConfig cfg = qat_config("straight_" + qat, qat);
        Trainer straight(cfg, false);
        const TrainSummary s = straight.run();
        EXPECT_TRUE(std::isfinite(s.last_loss));
        EXPECT_EQ(fs::path(s.checkpoint).filename(), "step_00000008") << s.checkpoint;

        // Masters stay fp32: at least one linear weight is off its own quantization grid.
        const Parameters<float>& p = straight.model().params();
        const size_t w = qat_weights(p).front();
        const std::span<const float> master(p.value(w), static_cast<size_t>(p.specs()[w].numel));
        std::vector<float> q(master.size());
        fake_quantize(master, p.specs()[w].shape[0], p.specs()[w].shape[1], parse_qat_type(qat), cfg.qat_group, q);
        EXPECT_FALSE(same_bits(master, q)) << qat;

        TrainConfig plain_cfg = qat_config("plain_" + qat, "");
        const TrainSummary plain = Trainer(plain_cfg, false).run();
        EXPECT_NE(plain.last_loss, s.last_loss) << qat;

        TrainConfig rc = cfg;
        rc.run_dir = fresh_dir("resumed_" + qat);
        {
            Trainer first(rc, false);
            first.after_backward = [](int64_t step, Parameters<float>&) {
                if (step == 6) throw std::runtime_error("crash");
            };
            EXPECT_THROW(first.run(), std::runtime_error);
        }
        Trainer resumed(rc, true);
        EXPECT_EQ(resumed.step(), 4);
        const TrainSummary r = resumed.run();
        EXPECT_EQ(r.last_loss, s.last_loss) << qat;
        EXPECT_TRUE(same_bits(all_values(resumed.model().params()), all_values(straight.model().params()))) << qat;

        TrainConfig other = rc;
        other.qat = qat == "int8" ? "nf4" : "int8";
        EXPECT_THROW(Trainer(other, true), Error);  // the quantization type is part of the run
    }
}

TEST(Qat, ConfigKeysRoundTripAndBadSettingsAreRefusedInOneLine) {
    TrainConfig c;
    c.data = "d";
    c.run_dir = "r";
    c.model_preset = "tiny";
    apply_override(c, "qat=int4");
    apply_override(c, "qat_group=64");
    EXPECT_EQ(c.qat, "int4");
    EXPECT_EQ(c.qat_group, 64);
    c.validate();
    const TrainConfig back = train_config_from_json(train_config_to_json(c), "test");
    EXPECT_EQ(train_config_to_json(back), train_config_to_json(c));
    EXPECT_EQ(back.qat, "int4");
    EXPECT_EQ(back.qat_group, 64);
    EXPECT_EQ(TrainConfig{}.qat, "");  // off by default

    auto expect_error = [&](const std::vector<std::string>& sets, const std::string& needle) {
        TrainConfig bad = c;
        try {
            for (const auto& s : sets) apply_override(bad, s);
            bad.validate();
            ADD_FAILURE() << sets.front() << " accepted";
        } catch (const Error& e) {
            const std::string msg = e.what();
            EXPECT_NE(msg.find(needle), std::string::npos) << msg;
            EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
        }
    };
    expect_error({"qat=int3"}, "unknown quantization type \"int3\" (expected int8, int4 or nf4)");
    expect_error({"qat_group=48"}, "qat_group: 48 is not a power of two in [8, 4096]");
    expect_error({"qat_group=4"}, "qat_group: 4");
    expect_error({"qat_group=8192"}, "qat_group: 8192");
    expect_error({"qat=nf4", "lora.r=4"}, "qat and LoRA");
    expect_error({"qat=nf4", "device=cuda"}, "device");
    EXPECT_THROW(FakeQuantizer<float>(HybridLM<float>(small_config()).params(), QatType::Int4, 12), Error);
}
