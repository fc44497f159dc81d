// QLoRA on the CPU (quant/qlora.h): the frozen base holds its linear weights only in bitsandbytes'
// 4-bit layout and releases their fp32 values; the forward is a LoRA forward over the dequantized
// weights; the adapters' gradients through the 4-bit base pass a finite-difference check; a model
// directory (fp32, or bitsandbytes NF4 as transformers saves it) loads straight into 4 bits; and a
// short fine-tune on the tiny preset lowers the held-out loss of the quantized base.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>

#include "core/error.h"
#include "core/rng.h"
#include "data/loader.h"
#include "data/manifest.h"
#include "eval/perplexity.h"
#include "gradcheck.h"
#include "lora/lora.h"
#include "model/hybrid_lm.h"
#include "model/model_io.h"
#include "quant/bnb_model.h"
#include "quant/fake_quant.h"
#include "quant/qlora.h"
#include "train/trainer.h"
#include "lora_test_util.h"
#include "train_test_util.h"

using namespace mslm;
using namespace mslm::quant;
namespace fs = std::filesystem;

namespace {

// d_model 16 so that rows hold whole and partial blocks of 64 alike across the weights.
ModelConfig hybrid_config() {
    return test::lora_hybrid_config(16, 8, 24);
}

ModelConfig jamba_config() {
    return test::lora_jamba_config(hybrid_config());
}

using test::lora_config;
using test::make_batch;
using test::make_model;
using test::randomise;
using test::TokenBatch;

std::vector<float> values(const Parameters<float>& p, size_t i) {
    return std::vector<float>(p.value(i), p.value(i) + p.specs()[i].numel);
}

std::string fresh_dir(const std::string& name) {
    std::string dir = testing::TempDir() + "/mslm_qlora_" + name + "_" + std::to_string(getpid());
    fs::remove_all(dir);
    return dir;
}

}  // namespace

// The base holds exactly bitsandbytes' NF4 + double quantization of each target weight (the
// quantizers are bit-exact, quant/bnb.h, so equality is exact), at ~4.13 bits per parameter, and
// every target's fp32 values read zero; the other parameters are untouched.
TEST(QloraBase, HoldsBitsandbytesNf4AndReleasesTheFp32Values) {
    auto model = make_model<float>(hybrid_config(), 3);
    Parameters<float>& p = model->params();
    std::vector<std::vector<float>> before;
    for (size_t i = 0; i < p.specs().size(); ++i) before.push_back(values(p, i));
    QloraBase<float> base(p, QloraOptions{});
    const std::vector<size_t> targets = qat_weights(p);
    ASSERT_EQ(base.weights(), targets.size());
    ASSERT_GT(targets.size(), 4u);  // in_proj, out_proj, qkv_proj, o_proj, gate_up_proj, down_proj ...
    int64_t numel = 0;
    for (size_t i = 0; i < p.specs().size(); ++i) {
        const ParamSpec& s = p.specs()[i];
        const bool target = std::find(targets.begin(), targets.end(), i) != targets.end();
        EXPECT_EQ(p.released(i), target) << s.name;
        if (!target) {
            EXPECT_EQ(values(p, i), before[i]) << s.name;
            continue;
        }
        numel += s.numel;
        for (float v : values(p, i)) ASSERT_EQ(v, 0.0f) << s.name;
        Bnb4Tensor ref = bnb4_tensor_quantize(before[i], Bnb4Type::NF4, 64, true);
        std::vector<float> want(static_cast<size_t>(s.numel)), got(want.size());
        bnb4_tensor_dequantize(ref, want);
        base.dequantize(i, got.data());
        EXPECT_EQ(got, want) << s.name;
    }
    EXPECT_EQ(base.numel(), numel);
    // Codes 4 bits, the 8-bit absmax of each block of 64 (0.125 bit), a nested fp32 absmax per 256
    // blocks and an offset per weight: 4.127 bits, plus what the weights' partial blocks round up.
    const double bits = 8.0 * static_cast<double>(base.bytes()) / static_cast<double>(numel);
    EXPECT_GT(bits, 4.12);
    EXPECT_LT(bits, 4.5);
    EXPECT_THROW(save_model(*model, fresh_dir("save")), Error);  // no fp32 values to write
}

// With the same adapter, the QLoRA model computes what LoRA computes on a model whose weights are the
// dequantized ones: the same fp32 values go through the same products (only the buffer holding W
// differs), so logits, loss and the adapters' gradients agree to the last bit.
TEST(QloraBase, ForwardAndBackwardEqualLoraOverTheDequantizedWeights) {
    for (const auto& [mc, arch] :
         {std::pair{hybrid_config(), HfArch::Bamba}, {jamba_config(), HfArch::Jamba}}) {
        auto qmodel = make_model<float>(mc, 5);
        auto dmodel = make_model<float>(mc, 5);
        QloraBase<float> base(qmodel->params(), QloraOptions{});
        for (size_t i : qat_weights(dmodel->params())) base.dequantize(i, dmodel->params().value(i));

        LoraModel<float> ql(*qmodel, arch), dl(*dmodel, arch);
        LoraAdapter<float>& qa = ql.add_adapter("default", lora_config("all-linear", 3, 6), 7);
        LoraAdapter<float>& da = dl.add_adapter("default", lora_config("all-linear", 3, 6), 7);
        randomise(qa, 8);
        randomise(da, 8);
        ql.freeze_base();
        dl.freeze_base();
        const TokenBatch b = make_batch(mc.vocab_size, 9);
        const float qloss = qmodel->forward(b.ids.data(), b.targets.data(), b.B, b.T);
        const float dloss = dmodel->forward(b.ids.data(), b.targets.data(), b.B, b.T);
        EXPECT_EQ(qloss, dloss);
        const int64_t n = b.B * b.T * mc.vocab_size;
        EXPECT_TRUE(std::equal(qmodel->logits(), qmodel->logits() + n, dmodel->logits()));
        qmodel->backward();
        dmodel->backward();
        const Parameters<float>&qp = qa.params(), &dp = da.params();
        for (size_t i = 0; i < qp.specs().size(); ++i)
            EXPECT_TRUE(std::equal(qp.grad(i), qp.grad(i) + qp.specs()[i].numel, dp.grad(i)))
                << qp.specs()[i].name;
        // The 4-bit base is not the fp32 model: the comparison above is not vacuous.
        auto fmodel = make_model<float>(mc, 5);
        EXPECT_NE(fmodel->forward(b.ids.data(), b.targets.data(), b.B, b.T), qloss);
    }
}

// d loss / d (every adapter parameter) through the 4-bit base, analytic against central differences
// in double (the base's dequantized values are exact in double). Budget as test_lora.cpp's check:
// relative 1e-5 above a floor of 1e-4, about 5x the difference quotient's noise on a loss of ~3.
TEST(QloraGrad, AdaptersThroughTheNf4Base) {
    for (const auto& [mc, arch, targets] :
         {std::tuple{hybrid_config(), HfArch::Bamba, std::string("all-linear")},
          std::tuple{jamba_config(), HfArch::Jamba,
                     std::string("in_proj,x_proj,out_proj,q_proj,down_proj")}}) {
        auto model = make_model<double>(mc, 3);
        QloraBase<double> base(model->params(), QloraOptions{});
        LoraModel<double> lora(*model, arch);
        LoraConfig lc = lora_config(targets, 2, 4);
        lc.dropout = 0.2;
        LoraAdapter<double>& a = lora.add_adapter("default", lc, 5);
        randomise(a, 6);
        lora.freeze_base();
        lora.set_training(true);
        lora.set_step(4);
        const TokenBatch b = make_batch(mc.vocab_size, 7);
        auto loss = [&] { return model->forward(b.ids.data(), b.targets.data(), b.B, b.T); };
        Parameters<double>& p = a.params();
        p.zero_grad();
        loss();
        model->backward();
        for (size_t i = 0; i < p.specs().size(); ++i) {
            const ParamSpec& s = p.specs()[i];
            std::vector<double> x(p.value(i), p.value(i) + s.numel);
            std::vector<double> analytic(p.grad(i), p.grad(i) + s.numel);
            auto numeric = test::numeric_gradient(x, [&] {
                std::copy(x.begin(), x.end(), p.value(i));
                return loss();
            });
            std::copy(x.begin(), x.end(), p.value(i));
            test::expect_gradient_close(s.name, analytic, numeric, 1e-5, 1e-4);
        }
        EXPECT_TRUE(model->params().frozen());
    }
}

// A native fp32 directory loads straight into 4 bits: the same blocks as quantizing the loaded fp32
// weights (exact), and nothing else of the model changes.
TEST(QloraLoad, NativeDirectoryEqualsQuantizingTheLoadedWeights) {
    const std::string dir = fresh_dir("native");
    save_model(*make_model<float>(jamba_config(), 4), dir);
    auto full = load_model<float>(dir);
    QloraLoaded<float> loaded = load_qlora_base<float>(dir, QloraOptions{Bnb4Type::NF4, false});
    auto& model = loaded.model;
    auto& base = loaded.base;
    QloraBase<float> ref(full->params(), QloraOptions{Bnb4Type::NF4, false});
    ASSERT_EQ(base->weights(), ref.weights());
    EXPECT_EQ(base->bytes(), ref.bytes());
    const Parameters<float>& p = model->params();
    for (size_t i = 0; i < p.specs().size(); ++i) {
        EXPECT_EQ(p.released(i), full->params().released(i)) << p.specs()[i].name;
        if (!p.released(i)) {
            EXPECT_EQ(values(p, i), values(full->params(), i)) << p.specs()[i].name;
            continue;
        }
        std::vector<float> a(static_cast<size_t>(p.specs()[i].numel)), b(a.size());
        base->dequantize(i, a.data());
        ref.dequantize(i, b.data());
        EXPECT_EQ(a, b) << p.specs()[i].name;
    }
}

// transformers' NF4 + double-quant Bamba directory: q/k/v and gate/up are separate bitsandbytes
// tensors that the native model fuses; the base keeps each one's codes and double-quantized absmax as
// stored (its bytes are the file's), and dequantizes to exactly what the loader's fp32 path reads.
TEST(QloraLoad, TransformersNf4DirectoryKeepsItsCodes) {
    const std::string dir = std::string(MSLM_FIXTURE_DIR) + "/bnb_models/hybrid_nf4_dq";
    auto full = load_model<float>(dir);
    QloraLoaded<float> loaded = load_qlora_base<float>(dir, QloraOptions{});
    auto& model = loaded.model;
    auto& base = loaded.base;
    SafetensorsFile file = SafetensorsFile::open(dir + "/model.safetensors");
    size_t file_bytes = 0;
    for (const std::string& key : file.names()) {
        const std::string suffix = ".weight";
        if (key.size() > suffix.size() &&
            key.compare(key.size() - suffix.size(), suffix.size(), suffix) == 0 && bnb4_is_stored(file, key))
            for (const char* part : {"", ".absmax", ".nested_absmax"})
                file_bytes += file.bytes(key + part).size();
    }
    // Each stored tensor adds its fp32 nested offset (in the quant-state JSON in the file).
    const Parameters<float>& p = model->params();
    ASSERT_GT(base->weights(), 0u);
    size_t pieces = 0;
    for (const auto& key : file.names())
        if (key.find(".quant_state.bitsandbytes__nf4") != std::string::npos) ++pieces;
    EXPECT_EQ(base->bytes(), file_bytes + 4 * pieces);
    for (size_t i = 0; i < p.specs().size(); ++i) {
        if (!p.released(i)) continue;
        std::vector<float> got(static_cast<size_t>(p.specs()[i].numel));
        base->dequantize(i, got.data());
        EXPECT_EQ(got, values(full->params(), i)) << p.specs()[i].name;
    }
    try {
        load_qlora_base<float>(dir, QloraOptions{Bnb4Type::FP4, true});
        ADD_FAILURE() << "an NF4 file loaded as an FP4 base";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("is stored as nf4"), std::string::npos) << e.what();
    }
}

TEST(QloraConfig, KeysRoundTripAndAreChecked) {
    TrainConfig c;
    c.model_preset = "tiny";
    c.data = "d";
    c.run_dir = "r";
    c.lora.base_quant = "nf4";
    EXPECT_THROW(c.validate(), Error);  // lora.r = 0
    c.lora.r = 4;
    c.lora.double_quant = false;
    c.validate();
    const TrainConfig back = train_config_from_json(train_config_to_json(c), "test");
    EXPECT_EQ(back.lora.base_quant, "nf4");
    EXPECT_FALSE(back.lora.double_quant);
    c.lora.base_quant = "int4";
    EXPECT_THROW(c.validate(), Error);
}

// The fine-tune of the issue: the tiny preset pretrained for a few steps, saved, then QLoRA on its NF4
// base. The adapter starts as a no-op (B = 0), so the quantized base's own held-out loss is the
// starting point; after 40 steps the adapter must have lowered it. Deterministic numbers (fixed seeds,
// the val loader does not shuffle), so the margin only has to clear rounding; 0.02 nats is a real fit.
TEST(QloraTrain, TinyPresetHeldOutLossImproves) {
    const std::string data = test::prepare_shakespeare_bytes(fresh_dir("data"));
    if (data.empty()) GTEST_SKIP() << "no tinyshakespeare.txt at " << test::data_dir();
    TrainConfig pre;
    pre.model_preset = "tiny";
    pre.data = data;
    pre.run_dir = fresh_dir("pretrain");
    pre.batch_size = 8;
    pre.seq_len = 64;
    pre.steps = 30;
    pre.lr = 3e-3;
    pre.min_lr = 3e-4;
    pre.warmup = 2;
    pre.eval_every = 0;
    pre.eval_batches = 4;
    pre.log_every = 10;
    pre.checkpoint_every = 0;
    pre.seed = 3;
    const TrainSummary base_run = Trainer(pre, false).run();

    TrainConfig c = pre;
    c.model_preset.clear();
    c.init_from = base_run.checkpoint;
    c.run_dir = fresh_dir("qlora");
    c.steps = 40;
    c.lr = 5e-3;
    c.min_lr = 1e-3;
    c.checkpoint_every = 0;
    c.lora.r = 8;
    c.lora.alpha = 16;
    c.lora.base_quant = "nf4";
    Trainer t(c, false);
    ASSERT_NE(t.qlora(), nullptr);
    EXPECT_TRUE(t.model().params().frozen());
    // The quantized base's held-out loss on the windows the run's final eval scores.
    LoaderOptions lo{c.batch_size, c.seq_len, c.seed, false, 0, 1};
    DataLoader val = DataLoader::from_manifest(data, "val", lo);
    const double start = evaluate_windows(t.model(), val, c.eval_batches, 1.0).loss;
    const TrainSummary s = t.run();
    std::printf("QLoRA tiny: held-out loss fp32 base %.4f, NF4 base %.4f, NF4 base + adapter %.4f; %s\n",
                base_run.val_loss, start, s.val_loss, t.qlora()->summary().c_str());
    EXPECT_LT(s.val_loss, start - 0.02) << "NF4 base " << start << " adapted " << s.val_loss;
    // The checkpoint is the PEFT adapter; the 4-bit base stays out of it.
    EXPECT_TRUE(fs::exists(s.checkpoint + "/adapter_model.safetensors"));
    EXPECT_FALSE(fs::exists(s.checkpoint + "/model.safetensors"));
}
