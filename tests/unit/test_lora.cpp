// LoRA (src/lora): gradients by finite differences in double, the fused-row mapping, merging,
// weighted combination, PEFT file round trips and config rules. Parity with PEFT itself is in
// test_lora_parity.cpp.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "gradcheck.h"
#include "lora/lora.h"
#include "model/hybrid_lm.h"
#include "lora_test_util.h"
#include "test_util.h"

using namespace mslm;

namespace {

// Bamba-named and Jamba-named adapters (lora_test_util.h) at d_model 8.
ModelConfig hybrid_config() {
    return test::lora_hybrid_config(8, 4, 6);
}

ModelConfig jamba_config() {
    return test::lora_jamba_config(hybrid_config());
}

using test::lora_config;
using test::make_batch;
using test::make_model;
using test::randomise;
using Batch = test::TokenBatch;

// The budget of test_model.cpp's whole-model check, for the same reason: the loss (~3) is a sum
// over thousands of double operations (~3e-15 absolute noise), which the difference quotient with
// h = 1e-5 turns into ~2e-10 absolute noise on every numeric entry, plus O(h²) = 1e-10 truncation.
// Relative 1e-5 above a floor of 1e-4 (1e-9 absolute below it) is 5x that noise and 1e4x below a
// typical entry, so a wrong formula cannot pass.
constexpr double kGradTol = 1e-5, kGradFloor = 1e-4;

// d loss / d (every adapter parameter), analytic against central differences, with the base frozen
// and dropout active (its mask is a function of the step, so the loss is a deterministic function
// of the parameters).
void check_adapter_gradients(const ModelConfig& mc, HfArch arch, LoraConfig lc) {
    auto model = make_model<double>(mc, 3);
    std::vector<std::vector<double>> base;
    for (size_t i = 0; i < model->params().specs().size(); ++i)
        base.emplace_back(model->params().value(i),
                          model->params().value(i) + model->params().specs()[i].numel);
    LoraModel<double> lora(*model, arch);
    LoraAdapter<double>& a = lora.add_adapter("default", lc, 5);
    randomise(a, 6);
    lora.freeze_base();
    lora.set_training(true);
    lora.set_step(11);
    const Batch b = make_batch(mc.vocab_size, 7);
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
        test::expect_gradient_close(s.name, analytic, numeric, kGradTol, kGradFloor);
    }
    // The base was frozen: no gradient buffer, and not one bit of a weight changed.
    EXPECT_TRUE(model->params().frozen());
    for (size_t i = 0; i < base.size(); ++i) {
        EXPECT_EQ(model->params().grad(i), nullptr);
        EXPECT_TRUE(std::equal(base[i].begin(), base[i].end(), model->params().value(i)))
            << model->params().specs()[i].name;
    }
}

}  // namespace

TEST(LoraTargets, NamesFollowTheHfClassAndFusedRows) {
    auto model = make_model<float>(hybrid_config(), 1);
    const auto targets = lora_targets(*model, lora_naming_arch(model->config(), "mamba_slm"));
    const ModelConfig& c = model->config();
    const int64_t q = c.attention.n_heads * c.attn_head_dim(), kv = c.attn_kv_heads() * c.attn_head_dim();
    std::map<std::string, LoraTarget> by;
    for (const auto& t : targets) by[t.module] = t;
    ASSERT_EQ(targets.size(), 2u + 4u + 2u * 3u);  // in/out_proj, q/k/v/o, gate/up/down in both layers
    const LoraTarget& k = by.at("model.layers.1.self_attn.k_proj");
    EXPECT_EQ(k.native, "layers.1.mixer.qkv_proj.weight");
    EXPECT_EQ(k.row_begin, q);
    EXPECT_EQ(k.rows, kv);
    EXPECT_EQ(k.out_rows, q + 2 * kv);
    const LoraTarget& up = by.at("model.layers.0.feed_forward.up_proj");
    EXPECT_EQ(up.native, "layers.0.mlp.gate_up_proj.weight");
    EXPECT_EQ(up.row_begin, c.mlp.d_ff);
    EXPECT_EQ(up.rows, c.mlp.d_ff);
    EXPECT_TRUE(by.count("model.layers.0.mamba.in_proj"));
    EXPECT_FALSE(by.count("lm_head"));

    auto jamba = make_model<float>(jamba_config(), 1);
    std::set<std::string> names;
    for (const auto& t : lora_targets(*jamba, lora_naming_arch(jamba->config(), "mamba_slm")))
        names.insert(t.module);
    for (const char* m :
         {"model.layers.1.mamba.in_proj", "model.layers.1.mamba.x_proj", "model.layers.1.mamba.dt_proj",
          "model.layers.1.mamba.out_proj", "model.layers.0.self_attn.o_proj"})
        EXPECT_TRUE(names.count(m)) << m;
}

TEST(LoraTargets, PeftMatchingRules) {
    LoraConfig c = lora_config("q_proj,self_attn.v_proj", 2, 2);
    EXPECT_TRUE(c.matches("model.layers.3.self_attn.q_proj"));
    EXPECT_TRUE(c.matches("q_proj"));
    EXPECT_TRUE(c.matches("model.layers.3.self_attn.v_proj"));
    EXPECT_FALSE(c.matches("model.layers.3.self_attn.xq_proj"));  // a suffix must start at a dot
    EXPECT_FALSE(c.matches("model.layers.3.self_attn.k_proj"));
    c = lora_config(R"(.*\.(q|v)_proj)", 2, 2);
    ASSERT_FALSE(c.target_regex.empty());
    EXPECT_TRUE(c.matches("model.layers.3.self_attn.q_proj"));
    EXPECT_FALSE(c.matches("model.layers.3.self_attn.q_proj.x"));  // fullmatch, not search
    EXPECT_THROW(lora_config("(unclosed", 2, 2).validate(), Error);

    auto model = make_model<float>(hybrid_config(), 1);
    LoraModel<float> lora(*model, HfArch::Bamba);
    LoraConfig all = lora.resolved(lora_config("all-linear", 2, 2));
    EXPECT_EQ(all.target_names,
              (std::vector<std::string>{"down_proj", "gate_proj", "in_proj", "k_proj", "o_proj", "out_proj",
                                        "q_proj", "up_proj", "v_proj"}));
    try {
        lora.add_adapter("x", lora_config("conv1d", 2, 2), 0);
        FAIL() << "conv1d is not a linear module";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("matches no linear module"), std::string::npos) << e.what();
    }
}

TEST(LoraGrad, HybridMamba2AllLinearWithDropout) {
    LoraConfig lc = lora_config("all-linear", 2, 3);
    lc.dropout = 0.25;
    check_adapter_gradients(hybrid_config(), HfArch::Bamba, lc);
}

TEST(LoraGrad, JambaMamba1RsLoraGaussian) {
    LoraConfig lc =
        lora_config("in_proj,x_proj,dt_proj,out_proj,q_proj,v_proj,o_proj,gate_proj,down_proj", 3, 5);
    lc.use_rslora = true;
    lc.init = "gaussian";
    check_adapter_gradients(jamba_config(), HfArch::Jamba, lc);
}

// Two adapters active at once, one frozen (loaded) and one trained: the frozen one's output counts
// in the loss and passes gradient to inputs, but it accumulates no gradient of its own.
TEST(LoraGrad, FrozenAdapterPassesGradientOnly) {
    auto model = make_model<double>(hybrid_config(), 3);
    LoraModel<double> lora(*model, HfArch::Bamba);
    LoraAdapter<double>& frozen = lora.add_adapter("a", lora_config("in_proj,o_proj", 2, 2), 1);
    LoraAdapter<double>& trained = lora.add_adapter("b", lora_config("q_proj,up_proj,in_proj", 2, 4), 2);
    randomise(frozen, 3);
    randomise(trained, 4);
    frozen.params().freeze_grads();
    lora.set_active({"a", "b"});
    lora.freeze_base();
    const Batch b = make_batch(17, 8);
    auto loss = [&] { return model->forward(b.ids.data(), b.targets.data(), b.B, b.T); };
    Parameters<double>& p = trained.params();
    loss();
    model->backward();
    for (size_t i = 0; i < p.specs().size(); ++i) {
        std::vector<double> x(p.value(i), p.value(i) + p.specs()[i].numel);
        std::vector<double> analytic(p.grad(i), p.grad(i) + p.specs()[i].numel);
        auto numeric = test::numeric_gradient(x, [&] {
            std::copy(x.begin(), x.end(), p.value(i));
            return loss();
        });
        std::copy(x.begin(), x.end(), p.value(i));
        test::expect_gradient_close(p.specs()[i].name, analytic, numeric, kGradTol, kGradFloor);
    }
    EXPECT_FALSE(frozen.trainable());
    EXPECT_EQ(frozen.params().grad(0), nullptr);
}

// The adapter's output equals the merged weight's: on fused rows (q of qkv_proj, up of gate_up_proj)
// and everywhere else. In double both sides are the same sums in another order: 1e-12 relative.
TEST(LoraMerge, UnmergedEqualsMergedInDouble) {
    for (const auto& [mc, arch] :
         {std::pair{hybrid_config(), HfArch::Bamba}, std::pair{jamba_config(), HfArch::Jamba}}) {
        auto model = make_model<double>(mc, 2);
        LoraModel<double> lora(*model, arch);
        randomise(lora.add_adapter("a", lora_config("all-linear", 2, 3), 1), 2);
        LoraConfig second = lora_config("q_proj,up_proj,dt_proj,in_proj", 3, 2);
        second.use_rslora = true;
        randomise(lora.add_adapter("b", second, 3), 4);
        lora.set_active({"a", "b"});
        const Batch b = make_batch(mc.vocab_size, 9);
        const size_t n = static_cast<size_t>(b.B * b.T * mc.vocab_size);
        model->forward(b.ids.data(), nullptr, b.B, b.T);
        std::vector<double> unmerged(model->logits(), model->logits() + n);
        lora.merge();
        model->forward(b.ids.data(), nullptr, b.B, b.T);
        std::vector<double> merged(model->logits(), model->logits() + n);
        lora.unmerge();
        lora.set_active({});
        model->forward(b.ids.data(), nullptr, b.B, b.T);
        std::vector<double> base(model->logits(), model->logits() + n);
        double scale = 0, diff = 0, effect = 0;
        for (size_t i = 0; i < n; ++i) {
            scale = std::max(scale, std::fabs(merged[i]));
            diff = std::max(diff, std::fabs(merged[i] - unmerged[i]));
            effect = std::max(effect, std::fabs(merged[i] - base[i]));
        }
        EXPECT_LT(diff, 1e-12 * scale);
        EXPECT_GT(effect, 1e-3 * scale)
            << "the adapters must change the logits for the comparison to mean anything";
    }
}

// merge then unmerge in fp32: each weight becomes fl(fl(W + d) − d). Each of the two roundings is at
// most half an ulp of its result, so |W' − W| ≤ 2^-24 · (|W + d| + |W|) ≤ 2^-23 · (|W| + |d|).
TEST(LoraMerge, MergeUnmergeRestoresTheBaseWithinRounding) {
    auto model = make_model<float>(hybrid_config(), 2);
    std::vector<float> before(model->params().values(), model->params().values() + model->params().total());
    LoraModel<float> lora(*model, HfArch::Bamba);
    randomise(lora.add_adapter("a", lora_config("all-linear", 4, 8), 1), 2, 1.0);
    lora.merge();
    std::vector<float> merged(model->params().values(), model->params().values() + model->params().total());
    lora.unmerge();
    const float* after = model->params().values();
    int64_t changed = 0;
    for (int64_t i = 0; i < model->params().total(); ++i) {
        const double d = std::fabs(static_cast<double>(merged[i]) - before[i]);
        changed += merged[i] != before[i];
        EXPECT_LE(std::fabs(static_cast<double>(after[i]) - before[i]),
                  0x1.0p-23 * (std::fabs(before[i]) + d))
            << i;
    }
    EXPECT_GT(changed, 100) << "the merge must have moved the weights";
    EXPECT_THROW(lora.unmerge(), Error);
}

// cat is exact: the combined adapter (scaling 1) has B·A = Σ wᵢ·sᵢ·Bᵢ·Aᵢ, on the union of modules.
TEST(LoraCombine, CatSumsTheWeightedDeltas) {
    auto model = make_model<double>(hybrid_config(), 2);
    LoraModel<double> lora(*model, HfArch::Bamba);
    auto& a = lora.add_adapter("a", lora_config("q_proj,in_proj", 2, 3), 1);
    auto& b = lora.add_adapter("b", lora_config("q_proj,down_proj", 3, 2), 2);
    randomise(a, 3);
    randomise(b, 4);
    auto& c = lora.add_weighted_adapter({"a", "b"}, {0.7, -1.3}, "c", "cat");
    EXPECT_EQ(c.config().r, 5);
    EXPECT_EQ(c.config().alpha, 5.0);
    EXPECT_DOUBLE_EQ(c.scaling(), 1.0);
    EXPECT_EQ(c.config().target_names, (std::vector<std::string>{"down_proj", "in_proj", "q_proj"}));
    EXPECT_FALSE(c.trainable());
    auto delta = [&](const LoraAdapter<double>& ad, size_t t) {
        const LoraTarget& tg = lora.targets()[t];
        std::vector<double> d(static_cast<size_t>(tg.rows * tg.in), 0.0);
        const auto* m = ad.module_on(t);
        if (!m) return d;
        const int64_t r = ad.config().r;
        for (int64_t o = 0; o < tg.rows; ++o)
            for (int64_t i = 0; i < tg.in; ++i)
                for (int64_t k = 0; k < r; ++k)
                    d[o * tg.in + i] +=
                        ad.params().value(m->B)[o * r + k] * ad.params().value(m->A)[k * tg.in + i];
        for (double& v : d) v *= ad.scaling();
        return d;
    };
    for (const auto& m : c.modules()) {
        auto dc = delta(c, m.target), da = delta(a, m.target), db = delta(b, m.target);
        for (size_t i = 0; i < dc.size(); ++i) EXPECT_NEAR(dc[i], 0.7 * da[i] - 1.3 * db[i], 1e-12) << i;
    }
    EXPECT_THROW(lora.add_weighted_adapter({"a", "b"}, {1, 1}, "d", "linear"), Error);  // ranks 2 and 3
}

// linear with one adapter is exact too: sqrt|w·s| on each side gives w·s·B·A.
TEST(LoraCombine, LinearOfOneAdapterScalesIt) {
    auto model = make_model<double>(hybrid_config(), 2);
    LoraModel<double> lora(*model, HfArch::Bamba);
    auto& a = lora.add_adapter("a", lora_config("k_proj,gate_proj", 2, 3), 1);
    randomise(a, 3);
    lora.add_weighted_adapter({"a"}, {-0.4}, "c", "cat");  // one adapter: PEFT switches to linear
    const Batch b = make_batch(17, 9);
    const size_t n = static_cast<size_t>(b.B * b.T * 17);
    lora.set_active({"c"});
    model->forward(b.ids.data(), nullptr, b.B, b.T);
    std::vector<double> combined(model->logits(), model->logits() + n);
    // The same as adapter a with its B scaled by −0.4.
    for (const auto& m : a.modules())
        for (int64_t k = 0; k < a.params().specs()[m.B].numel; ++k) a.params().value(m.B)[k] *= -0.4;
    lora.set_active({"a"});
    model->forward(b.ids.data(), nullptr, b.B, b.T);
    for (size_t i = 0; i < n; ++i) EXPECT_NEAR(combined[i], model->logits()[i], 1e-12) << i;
    EXPECT_EQ(lora.adapter("c").config().r, 2);
}

TEST(LoraFiles, SaveLoadRoundTripInPeftLayout) {
    const std::string dir = test::fresh_test_dir("lora_io");
    auto model = make_model<float>(hybrid_config(), 2);
    LoraModel<float> lora(*model, HfArch::Bamba);
    LoraConfig lc = lora_config("q_proj,in_proj", 2, 16);
    lc.use_rslora = true;
    lc.dropout = 0.05;
    lc.init = "gaussian";
    lc.base_model_name_or_path = "some/base";
    auto& a = lora.add_adapter("a", lc, 1);
    randomise(a, 3);
    lora.save_adapter("a", dir);

    SafetensorsFile f = SafetensorsFile::open(dir + "/adapter_model.safetensors");
    EXPECT_EQ(f.names(),
              (std::vector<std::string>{"base_model.model.model.layers.0.mamba.in_proj.lora_A.weight",
                                        "base_model.model.model.layers.0.mamba.in_proj.lora_B.weight",
                                        "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight",
                                        "base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight"}));
    EXPECT_EQ(f.entry("base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight").shape, (Shape{8, 2}));
    EXPECT_EQ(f.metadata().at("format"), "pt");
    std::ifstream in(dir + "/adapter_config.json");
    const auto j = nlohmann::json::parse(in);
    EXPECT_EQ(j.at("peft_type"), "LORA");
    EXPECT_EQ(j.at("task_type"), "CAUSAL_LM");
    EXPECT_EQ(j.at("r"), 2);
    EXPECT_EQ(j.at("lora_alpha"), 16);
    EXPECT_EQ(j.at("use_rslora"), true);
    EXPECT_EQ(j.at("init_lora_weights"), "gaussian");
    EXPECT_EQ(j.at("target_modules"), (nlohmann::json{"q_proj", "in_proj"}));
    EXPECT_EQ(j.at("bias"), "none");

    auto& b = lora.load_adapter(dir, "b");
    EXPECT_FALSE(b.trainable());
    EXPECT_EQ(b.config().r, 2);
    EXPECT_DOUBLE_EQ(b.scaling(), 16 / std::sqrt(2.0));
    EXPECT_EQ(b.config().base_model_name_or_path, "some/base");
    for (size_t i = 0; i < a.params().specs().size(); ++i)
        EXPECT_TRUE(std::equal(a.params().value(i), a.params().value(i) + a.params().specs()[i].numel,
                               b.params().value(i)));
}

TEST(LoraFiles, UnsupportedOrInconsistentAdaptersAreRefused) {
    const std::string dir = test::fresh_test_dir("lora_bad");
    auto model = make_model<float>(hybrid_config(), 2);
    LoraModel<float> lora(*model, HfArch::Bamba);
    lora.add_adapter("a", lora_config("q_proj", 2, 2), 1);
    lora.save_adapter("a", dir);
    auto edit = [&](const std::function<void(nlohmann::json&)>& fn) {
        std::ifstream in(dir + "/adapter_config.json");
        auto j = nlohmann::json::parse(in);
        fn(j);
        std::ofstream(dir + "/adapter_config.json") << j.dump();
    };
    auto expect_error = [&](const std::string& needle) {
        try {
            lora.load_adapter(dir, "x");
            FAIL() << "expected an error containing " << needle;
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
        }
        EXPECT_FALSE(lora.has_adapter("x"));
    };
    edit([](auto& j) { j["use_dora"] = true; });
    expect_error("use_dora");
    edit([](auto& j) { j["use_dora"] = false, j["r"] = 4; });
    expect_error("expected (4, 8)");
    edit([](auto& j) { j["r"] = 2, j["target_modules"] = {"q_proj", "k_proj"}; });
    expect_error("missing tensor 'base_model.model.model.layers.1.self_attn.k_proj.lora_A.weight'");
    edit([](auto& j) { j["target_modules"] = "nothing"; });
    expect_error("matches no linear module");
}
