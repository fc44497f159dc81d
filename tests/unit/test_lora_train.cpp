// LoRA fine-tuning through the trainer (train config lora.*): on the tiny preset, the val loss falls,
// the base weights stay bit-identical, checkpoints hold only the adapter in PEFT's layout (and the
// optimizer state of the adapter alone), resuming is bitwise, and the adapter merges into the base.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>

#include "core/safetensors.h"
#include "lora/lora.h"
#include "lora/merge.h"
#include "model/model_io.h"
#include "train/loss_curve.h"
#include "train/trainer.h"
#include "train_test_util.h"

using namespace mslm;
namespace fs = std::filesystem;

namespace {

const std::string& shakespeare_bytes() {
    static const std::string dir = test::prepare_shakespeare_bytes(
        testing::TempDir() + "/mslm_lora_train_data_" + std::to_string(getpid()));
    return dir;
}

#define NEED_DATA() \
    if (shakespeare_bytes().empty()) GTEST_SKIP() << "no tinyshakespeare.txt at " << test::data_dir()

std::string fresh_dir(const std::string& name) {
    std::string dir = testing::TempDir() + "/mslm_lora_train_" + name + "_" + std::to_string(getpid());
    fs::remove_all(dir);
    return dir;
}

TrainConfig lora_config(const std::string& run) {
    TrainConfig c;
    c.model_preset = "tiny";  // vocab 512 >= the 257 byte tokens
    c.data = shakespeare_bytes();
    c.run_dir = fresh_dir(run);
    c.batch_size = 8;
    c.seq_len = 64;
    c.steps = 40;
    c.lr = 5e-3;
    c.min_lr = 1e-3;
    c.warmup = 2;
    c.eval_every = 0;
    c.eval_batches = 4;
    c.log_every = 1;
    c.checkpoint_every = 20;
    c.keep_last = 5;
    c.seed = 3;
    c.lora.r = 8;
    c.lora.alpha = 16;
    c.lora.targets = "all-linear";
    return c;
}

std::vector<float> all_values(const Parameters<float>& p) {
    std::vector<float> out;
    for (size_t i = 0; i < p.specs().size(); ++i)
        out.insert(out.end(), p.value(i), p.value(i) + p.specs()[i].numel);
    return out;
}

}  // namespace

TEST(LoraTrain, TinyPresetLossFallsAndTheBaseIsBitIdentical) {
    NEED_DATA();
    // The base: the tiny preset trained in full for a few steps (a random base with a frozen random
    // embedding and head leaves the adapters little to work with).
    TrainConfig pre = lora_config("pretrain");
    pre.lora.r = 0;
    pre.lr = 3e-3;
    pre.min_lr = 3e-4;
    pre.steps = 30;
    pre.checkpoint_every = 0;
    const TrainSummary base = Trainer(pre, false).run();

    TrainConfig c = lora_config("falls");
    c.model_preset.clear();
    c.init_from = base.checkpoint;
    const std::vector<float> base_before = all_values(build_initial_model(c)->params());
    Trainer t(c, false);
    EXPECT_TRUE(t.model().params().frozen());  // no gradient buffer for the base at all
    const TrainSummary s = t.run();

    // The adapter lowers the loss on the held-out windows the base was scored on (same eval_batches
    // and seq_len, and the val loader does not shuffle): deterministic numbers, so the margin only
    // has to clear rounding (~1e-5); 0.02 nats is a real fit of the data, not noise.
    ASSERT_EQ(read_metric(c.run_dir + "/metrics.jsonl", "train", "loss").size(), 40u);
    EXPECT_LT(s.val_loss, base.val_loss - 0.02) << "base " << base.val_loss << " adapted " << s.val_loss;
    const std::vector<float> base_after = all_values(t.model().params());
    ASSERT_EQ(base_before.size(), base_after.size());
    EXPECT_EQ(std::memcmp(base_before.data(), base_after.data(), base_before.size() * sizeof(float)), 0);

    // The checkpoint is the adapter in PEFT's layout plus the adapter's optimizer state; no model.
    ASSERT_FALSE(s.checkpoint.empty());
    EXPECT_TRUE(fs::exists(s.checkpoint + "/adapter_config.json"));
    EXPECT_TRUE(fs::exists(s.checkpoint + "/adapter_model.safetensors"));
    EXPECT_FALSE(fs::exists(s.checkpoint + "/model.safetensors"));
    const Parameters<float>& adapter = t.trained_params();
    SafetensorsFile opt = SafetensorsFile::open(s.checkpoint + "/optimizer.safetensors");
    EXPECT_EQ(opt.names().size(), 2 * adapter.specs().size() + 1);  // m and v per adapter tensor, step
    for (const auto& spec : adapter.specs()) EXPECT_TRUE(opt.contains("adamw.m." + spec.name)) << spec.name;
    SafetensorsFile ad = SafetensorsFile::open(s.checkpoint + "/adapter_model.safetensors");
    EXPECT_EQ(ad.names().size(), adapter.specs().size());
    EXPECT_TRUE(ad.contains("base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight"));
}

// Kill after the step-20 checkpoint, resume from the adapter checkpoint: the same losses and the same
// adapter, bit for bit, dropout included (its masks are a function of the step).
TEST(LoraTrain, ResumeFromAnAdapterCheckpointIsBitwise) {
    NEED_DATA();
    TrainConfig straight_cfg = lora_config("straight");
    straight_cfg.steps = 24;
    straight_cfg.lora.dropout = 0.1;
    straight_cfg.lora.targets = "in_proj,q_proj,v_proj,down_proj";
    Trainer straight(straight_cfg, false);
    straight.run();

    TrainConfig cfg = straight_cfg;
    cfg.run_dir = fresh_dir("resumed");
    {
        Trainer first(cfg, false);
        first.after_backward = [](int64_t s, Parameters<float>&) {
            if (s == 20) throw std::runtime_error("crash");
        };
        EXPECT_THROW(first.run(), std::runtime_error);
    }
    Trainer resumed(cfg, true);
    EXPECT_EQ(resumed.step(), 20);
    resumed.run();
    EXPECT_EQ(read_metric(straight_cfg.run_dir + "/metrics.jsonl", "train", "loss"),
              read_metric(cfg.run_dir + "/metrics.jsonl", "train", "loss"));
    const auto a = all_values(straight.trained_params()), b = all_values(resumed.trained_params());
    ASSERT_EQ(a.size(), b.size());
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);

    TrainConfig no_lora = cfg;
    no_lora.lora.r = 0;
    EXPECT_THROW(Trainer(no_lora, true), Error);  // an adapter checkpoint cannot resume a full run
}

// `lora merge` on the trained adapter: the merged model directory computes what base + adapter
// computed. Both sides are fp32 forwards of the same function (B·A added inside or outside the
// product), so logits agree to fp32 rounding of the projections: 1e-5 of the largest.
TEST(LoraTrain, MergedModelDirectoryEqualsBasePlusAdapter) {
    NEED_DATA();
    TrainConfig c = lora_config("merge");
    c.steps = 10;
    c.checkpoint_every = 0;
    const std::string base_dir = fresh_dir("merge_base");
    save_model(*build_initial_model(c), base_dir);
    c.model_preset.clear();
    c.init_from = base_dir;
    Trainer t(c, false);
    const TrainSummary s = t.run();

    std::vector<int32_t> ids(2 * 16);
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>((i * 37 + 11) % 257);
    t.model().forward(ids.data(), nullptr, 2, 16);
    const int64_t V = t.model().config().vocab_size;
    const std::vector<float> want(t.model().logits(), t.model().logits() + 2 * 16 * V);

    LoraMergeOptions o;
    o.model_dir = base_dir;
    o.adapters = {s.checkpoint};
    o.out_dir = fresh_dir("merged");
    EXPECT_EQ(merge_lora_into_model(o), t.trained_params().specs().size() / 2);
    auto merged = load_model<float>(o.out_dir);
    merged->forward(ids.data(), nullptr, 2, 16);
    double scale = 0, worst = 0, moved = 0;
    auto base = load_model<float>(base_dir);
    base->forward(ids.data(), nullptr, 2, 16);
    for (size_t i = 0; i < want.size(); ++i) {
        scale = std::max(scale, static_cast<double>(std::fabs(want[i])));
        worst = std::max(worst, static_cast<double>(std::fabs(merged->logits()[i] - want[i])));
        moved = std::max(moved, static_cast<double>(std::fabs(base->logits()[i] - want[i])));
    }
    EXPECT_LT(worst, 1e-5 * scale);
    EXPECT_GT(moved, 1e-2 * scale) << "training must have moved the adapter";
}

// lora.* are train-config keys like the others: JSON, --set overrides (a names list stays a string),
// validation naming the field.
TEST(LoraTrain, ConfigKeysAndErrors) {
    TrainConfig c = lora_config("config");
    c.data = "prepared_data";  // validate() only checks that it is set
    apply_override(c, "lora.r=4");
    apply_override(c, "lora.targets=q_proj,v_proj");
    apply_override(c, "lora.rslora=true");
    apply_override(c, "lora.init=gaussian");
    EXPECT_EQ(c.lora.r, 4);
    EXPECT_EQ(c.lora.targets, "q_proj,v_proj");
    EXPECT_TRUE(c.lora.rslora);
    const TrainConfig back = train_config_from_json(train_config_to_json(c), "test");
    EXPECT_EQ(train_config_to_json(back), train_config_to_json(c));
    const LoraConfig lc = c.lora_config();
    EXPECT_EQ(lc.target_names, (std::vector<std::string>{"q_proj", "v_proj"}));
    EXPECT_DOUBLE_EQ(lc.scaling(), 16 / 2.0);

    auto expect_error = [&](const std::string& set, const std::string& needle) {
        TrainConfig bad = c;
        try {
            apply_override(bad, set);
            bad.validate();
            ADD_FAILURE() << set << " accepted";
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
        }
    };
    expect_error("lora.init=orthogonal", "init_lora_weights");
    expect_error("lora.dropout=1.5", "lora_dropout");
    expect_error("lora.targets=(q_proj", "regex");
    expect_error("lora.rank=4", "unknown key \"lora.rank\"");
}
