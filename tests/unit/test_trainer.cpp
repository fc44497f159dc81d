#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <stdexcept>

#include "core/error.h"
#include "data/manifest.h"
#include "data/prepare.h"
#include "eval/perplexity.h"
#include "model/config.h"
#include "model/model_io.h"
#include "train/checkpoint.h"
#include "train/loss_curve.h"
#include "train/trainer.h"
#include "train_test_util.h"

using namespace mslm;
namespace fs = std::filesystem;

namespace {

using test::data_dir;

std::string fresh_dir(const std::string& name) {
    std::string dir = testing::TempDir() + "/mslm_trainer_" + name;
    fs::remove_all(dir);
    return dir;
}

// tinyshakespeare as bytes (vocab 257 with EOT), prepared once for the suite; "" when absent.
const std::string& shakespeare_bytes() {
    // one directory per process: ctest -j runs tests side by side
    static const std::string dir =
        test::prepare_shakespeare_bytes(testing::TempDir() + "/mslm_trainer_data_" + std::to_string(getpid()));
    return dir;
}

const std::string& small_model_config() {
    static const std::string path = test::write_small_model_config(
        testing::TempDir() + "/mslm_trainer_model_config_" + std::to_string(getpid()) + ".json");
    return path;
}

TrainConfig base_config(const std::string& run) {
    TrainConfig c;
    c.model_config = small_model_config();
    c.data = shakespeare_bytes();
    c.run_dir = fresh_dir(run);
    c.batch_size = 4;
    c.seq_len = 32;
    c.steps = 6;
    c.lr = 3e-3;
    c.min_lr = 3e-4;
    c.warmup = 2;
    c.eval_every = 3;
    c.eval_batches = 2;
    c.log_every = 1;
    c.checkpoint_every = 3;
    c.keep_last = 10;
    c.seed = 5;
    return c;
}

std::vector<float> weights(const HybridLM<float>& model) {
    std::vector<float> out;
    const Parameters<float>& p = model.params();
    for (size_t i = 0; i < p.specs().size(); ++i)
        out.insert(out.end(), p.value(i), p.value(i) + p.specs()[i].numel);
    return out;
}

std::vector<float> grads(Parameters<float>& p) {
    std::vector<float> out;
    for (size_t i = 0; i < p.specs().size(); ++i) out.insert(out.end(), p.grad(i), p.grad(i) + p.specs()[i].numel);
    return out;
}

std::vector<std::string> checkpoint_dirs(const std::string& run_dir) {
    std::vector<std::string> out;
    if (!fs::exists(run_dir + "/checkpoints")) return out;
    for (const auto& e : fs::directory_iterator(run_dir + "/checkpoints"))
        if (e.is_directory() && e.path().filename().string().rfind("step_", 0) == 0) out.push_back(e.path());
    std::sort(out.begin(), out.end());
    return out;
}

#define NEED_DATA() \
    if (shakespeare_bytes().empty()) GTEST_SKIP() << "no tinyshakespeare.txt at " << data_dir()

struct Crash : std::runtime_error {
    Crash() : std::runtime_error("crash") {}
};

// A run killed after the step-`step` checkpoint (in the middle of the next step).
void run_until_crash(const TrainConfig& cfg, int64_t step) {
    Trainer first(cfg, false);
    first.after_backward = [step](int64_t s, Parameters<float>&) {
        if (s == step) throw Crash();
    };
    EXPECT_THROW(first.run(), Crash);
}

}  // namespace

TEST(TrainerConfig, JsonRoundTripOverridesAndUnknownKeys) {
    TrainConfig c;
    c.model_preset = "tiny";
    c.model_vocab_size = 300;
    c.data = "d";
    c.val_data = "v";
    c.run_dir = "r";
    c.grad_accum = 4;
    c.lr_schedule = "wsd";
    c.decay = 7;
    c.nan_policy = "skip";
    c.seed = 12345678901ull;
    const nlohmann::json j = train_config_to_json(c);
    EXPECT_EQ(train_config_to_json(train_config_from_json(j, "t")), j);

    apply_override(c, "steps=42");
    apply_override(c, "model.preset=30m");
    apply_override(c, "lr=1e-3");
    apply_override(c, "run_dir=123");  // a string field takes a number-looking value as text
    EXPECT_EQ(c.steps, 42);
    EXPECT_EQ(c.model_preset, "30m");
    EXPECT_DOUBLE_EQ(c.lr, 1e-3);
    EXPECT_EQ(c.run_dir, "123");

    EXPECT_THROW(apply_override(c, "stpes=3"), Error);
    EXPECT_THROW(apply_override(c, "model.presett=x"), Error);
    EXPECT_THROW(apply_override(c, "steps=many"), Error);
    EXPECT_THROW(apply_override(c, "steps"), Error);
    try {
        train_config_from_json({{"batchsize", 3}}, "cfg.json");
        FAIL() << "unknown key accepted";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("unknown key \"batchsize\""), std::string::npos) << e.what();
    }
    const std::string path = testing::TempDir() + "/mslm_trainer_cfg_" + std::to_string(getpid()) + ".json";
    std::ofstream(path) << j.dump(2);
    EXPECT_EQ(train_config_to_json(load_train_config(path)), j);
}

TEST(TrainerConfig, ModelAndDataErrorsBeforeTraining) {
    NEED_DATA();
    TrainConfig c = base_config("errors");
    c.seq_len = 128;  // the model's max_seq_len is 64
    try {
        Trainer t(c, false);
        FAIL() << "seq_len > max_seq_len accepted";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("max_seq_len 64"), std::string::npos) << e.what();
    }
    EXPECT_FALSE(fs::exists(c.run_dir));  // nothing written

    c = base_config("errors");
    c.model_vocab_size = 200;  // the bytes need 257
    try {
        Trainer t(c, false);
        FAIL() << "a vocabulary smaller than the data's accepted";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("257 tokens"), std::string::npos) << e.what();
    }

    c = base_config("errors");
    c.model_preset = "tiny";  // with model_config too
    EXPECT_THROW(Trainer(c, false), Error);
    c = base_config("errors");
    c.nan_policy = "ignore";
    EXPECT_THROW(Trainer(c, false), Error);
    c = base_config("errors");
    EXPECT_THROW(Trainer(c, true), Error);  // nothing to resume
}

// A run interrupted after its step-3 checkpoint and resumed must be indistinguishable from a run
// that never stopped: same per-step losses and bitwise the same final weights.
TEST(Trainer, ResumeIsBitwise) {
    NEED_DATA();
    TrainConfig straight_cfg = base_config("straight");
    Trainer straight(straight_cfg, false);
    straight.run();

    TrainConfig cfg = base_config("resumed");
    run_until_crash(cfg, 3);
    Trainer resumed(cfg, true);
    EXPECT_EQ(resumed.step(), 3);
    resumed.run();

    const CurvePoints a = read_metric(straight_cfg.run_dir + "/metrics.jsonl", "train", "loss");
    const CurvePoints b = read_metric(cfg.run_dir + "/metrics.jsonl", "train", "loss");
    ASSERT_EQ(a.size(), 6u);
    EXPECT_EQ(a, b);  // exact: the same floats in the same order
    const std::vector<float> wa = weights(straight.model()), wb = weights(resumed.model());
    ASSERT_EQ(wa.size(), wb.size());
    EXPECT_EQ(std::memcmp(wa.data(), wb.data(), wa.size() * sizeof(float)), 0);
    EXPECT_TRUE(fs::exists(cfg.run_dir + "/loss_curve.svg"));
}

// Resuming with settings that shape the optimisation is refused, naming them; changing only how
// long to go and how memory is spent is allowed, and activation checkpointing changes no bit.
TEST(Trainer, ResumeChecksTheConfig) {
    NEED_DATA();
    TrainConfig straight_cfg = base_config("straight_ck");
    Trainer straight(straight_cfg, false);
    straight.run();

    TrainConfig cfg = base_config("resume_cfg");
    run_until_crash(cfg, 3);
    TrainConfig changed = cfg;
    changed.lr *= 2;
    changed.batch_size += 1;
    try {
        Trainer t(changed, true);
        ADD_FAILURE() << "resume with another lr and batch_size was accepted";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("lr"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("batch_size 4 -> 5"), std::string::npos) << e.what();
    }
    TrainConfig allowed = cfg;
    allowed.activation_checkpointing = true;
    allowed.log_every = 2;
    Trainer resumed(allowed, true);
    EXPECT_TRUE(resumed.model().activation_checkpointing());
    resumed.run();
    const std::vector<float> wa = weights(straight.model()), wb = weights(resumed.model());
    ASSERT_EQ(wa.size(), wb.size());
    EXPECT_EQ(std::memcmp(wa.data(), wb.data(), wa.size() * sizeof(float)), 0);
}

// grad_accum = 2 with batch B sees the same 2B windows as one batch of 2B (the shuffled order does
// not depend on the batch size), so the step's gradient and update must agree.
TEST(Trainer, GradAccumulationMatchesLargerBatch) {
    NEED_DATA();
    auto one_step = [](const std::string& run, int64_t batch, int64_t accum, std::vector<float>& g) {
        TrainConfig c = base_config(run);
        c.batch_size = batch;
        c.grad_accum = accum;
        c.steps = 1;
        c.lr_schedule = "constant";
        c.warmup = 0;
        c.grad_clip = 0;
        c.eps = 1e-4;
        auto t = std::make_unique<Trainer>(c, false);
        t->after_backward = [&](int64_t, Parameters<float>& p) { g = grads(p); };
        t->run();
        return weights(t->model());
    };
    std::vector<float> g_accum, g_big;
    const std::vector<float> w_accum = one_step("accum", 4, 2, g_accum);
    const std::vector<float> w_big = one_step("big", 8, 1, g_big);
    ASSERT_EQ(g_accum.size(), g_big.size());
    // Same terms summed in a different order (two partial means, halved, vs one mean): fp32 rounding
    // of sums over 256 positions, a few ulps of the largest gradient, well inside 1e-5 of it.
    float gmax = 0;
    for (float x : g_big) gmax = std::max(gmax, std::abs(x));
    const float gtol = 1e-5f * gmax;
    for (size_t i = 0; i < g_big.size(); ++i) ASSERT_NEAR(g_accum[i], g_big[i], gtol) << "grad " << i;
    // AdamW's first step moves each weight by lr·g/(|g| + eps) (+ decay, identical in both); its
    // slope in g is at most lr/eps, so weights differ by at most lr·gtol/eps, plus an ulp of rounding.
    const float wtol = static_cast<float>(3e-3 * gtol / 1e-4) + 1e-6f;
    for (size_t i = 0; i < w_big.size(); ++i) ASSERT_NEAR(w_accum[i], w_big[i], wtol) << "weight " << i;
}

TEST(Trainer, LossFallsOnShakespeareBytes) {
    NEED_DATA();
    TrainConfig c = base_config("falls");
    c.steps = 30;
    c.batch_size = 8;
    c.seq_len = 64;
    c.eval_every = 0;
    c.eval_batches = 4;
    c.checkpoint_every = 0;
    Trainer t(c, false);
    const TrainSummary s = t.run();
    const CurvePoints loss = read_metric(c.run_dir + "/metrics.jsonl", "train", "loss");
    ASSERT_EQ(loss.size(), 30u);
    // Uniform over 257 bytes is ln 257 = 5.55 nats; byte unigram statistics alone give ~3.3.
    EXPECT_NEAR(loss.front().second, std::log(257.0), 0.3);
    EXPECT_LT(s.last_loss, loss.front().second - 1.5);
    EXPECT_LT(s.val_loss, loss.front().second - 1.5);
    const CurvePoints bpb = read_metric(c.run_dir + "/metrics.jsonl", "eval", "bpb");
    ASSERT_EQ(bpb.size(), 1u);
    // Bytes per token is a little under 1: the EOT token between documents carries no text.
    const double bytes_per_token = manifest_split(c.data, "val").bytes_per_token();
    EXPECT_GT(bytes_per_token, 0.95);
    EXPECT_LE(bytes_per_token, 1.0);
    EXPECT_NEAR(bpb[0].second, s.val_loss / std::log(2.0) / bytes_per_token, 1e-9 * bpb[0].second);
    EXPECT_EQ(checkpoint_dirs(c.run_dir).size(), 1u);  // the final one
    EXPECT_TRUE(fs::exists(c.run_dir + "/loss_curve.svg"));
}

TEST(Trainer, NanPolicySkipsOrStopsAndNeverCheckpointsNan) {
    NEED_DATA();
    auto poison = [](int64_t step, Parameters<float>& p) {
        if (step == 2) p.grads()[0] = std::numeric_limits<float>::quiet_NaN();
    };
    TrainConfig c = base_config("nan_skip");
    c.nan_policy = "skip";
    c.checkpoint_every = 1;
    {
        Trainer t(c, false);
        t.after_backward = poison;
        const TrainSummary s = t.run();
        EXPECT_EQ(s.skipped_steps, 1);
        EXPECT_EQ(s.step, 6);
    }
    const std::vector<std::string> dirs = checkpoint_dirs(c.run_dir);
    EXPECT_EQ(dirs.size(), 6u);
    for (const std::string& d : dirs) {
        LoadedCheckpoint ck = load_checkpoint(d);
        for (float x : weights(*ck.model)) ASSERT_TRUE(std::isfinite(x)) << d;
    }
    // Step 3 has no train record; later records count the skip.
    const CurvePoints loss = read_metric(c.run_dir + "/metrics.jsonl", "train", "loss");
    ASSERT_EQ(loss.size(), 5u);
    EXPECT_EQ(loss[2].first, 4);
    EXPECT_EQ(read_metric(c.run_dir + "/metrics.jsonl", "train", "skipped_steps").back().second, 1.0);

    c = base_config("nan_stop");
    c.nan_policy = "stop";
    c.checkpoint_every = 1;
    Trainer t(c, false);
    t.after_backward = poison;
    try {
        t.run();
        FAIL() << "a NaN gradient did not stop the run";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("step 3: non-finite gradient norm"), std::string::npos) << e.what();
    }
    EXPECT_EQ(checkpoint_dirs(c.run_dir).size(), 2u);  // steps 1 and 2 only

    // A learning rate that blows the weights up: the loss goes non-finite and the run stops.
    c = base_config("nan_lr");
    c.lr = 1e30;
    c.min_lr = 0;
    c.grad_clip = 0;
    Trainer blow(c, false);
    EXPECT_THROW(blow.run(), Error);
    for (const std::string& d : checkpoint_dirs(c.run_dir)) {
        LoadedCheckpoint ck = load_checkpoint(d);
        for (float x : weights(*ck.model)) ASSERT_TRUE(std::isfinite(x)) << d;
    }
}

// val_data: eval scores another directory's val split (a held-out part prepared on its own), a
// data directory without a val split needs one, and a set from another tokenizer is refused.
TEST(Trainer, ValDataIsWhatEvalScores) {
    NEED_DATA();
    const std::string dir = fresh_dir("val_data");
    fs::create_directories(dir);
    std::string text;
    {
        std::ifstream in(data_dir() + "/tinyshakespeare.txt", std::ios::binary);
        text.assign(std::istreambuf_iterator<char>(in), {});
    }
    std::ofstream(dir + "/head.txt", std::ios::binary) << text.substr(0, 60000);
    std::ofstream(dir + "/tail.txt", std::ios::binary) << text.substr(60000, 20000);
    auto prepare = [&](const std::string& file, const std::string& out, double val_fraction,
                       const std::string& tokenizer) {
        PrepareOptions po;
        po.out_dir = dir + "/" + out;
        po.val_fraction = val_fraction;
        po.progress = false;
        prepare_from_sources({parse_source_spec(dir + "/" + file)}, MixtureOptions{}, *load_text_encoder(tokenizer),
                             po);
        return po.out_dir;
    };
    TrainConfig c = base_config("val_data_run");
    c.data = prepare("head.txt", "train_only", 0.0, "bytes");
    c.steps = 3;
    try {
        Trainer t(c, false);
        FAIL() << "a data directory without val windows accepted";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("val_data"), std::string::npos) << e.what();
    }

    c.val_data = prepare("tail.txt", "held_out", 1.0, "bytes");
    Trainer t(c, false);
    const TrainSummary s = t.run();
    const CurvePoints bpb = read_metric(c.run_dir + "/metrics.jsonl", "eval", "bpb");
    ASSERT_EQ(bpb.size(), 1u);
    const double held_bytes_per_token = manifest_split(c.val_data, "val").bytes_per_token();
    EXPECT_NEAR(bpb[0].second, s.val_loss / std::log(2.0) / held_bytes_per_token, 1e-9 * bpb[0].second);
    DataLoader held = DataLoader::from_manifest(c.val_data, "val", {c.batch_size, c.seq_len, 0, false, 0, 1});
    EXPECT_EQ(evaluate_windows(t.model(), held, c.eval_batches, held_bytes_per_token).loss, s.val_loss);

    c.val_data = prepare("tail.txt", "other_tokenizer", 1.0, std::string(MSLM_FIXTURE_DIR) + "/tokenizers/gpt2.json");
    c.run_dir = fresh_dir("val_data_other");
    try {
        Trainer other(c, false);
        FAIL() << "val_data from another tokenizer accepted";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("another tokenizer"), std::string::npos) << e.what();
    }
}

// The model that --save-init writes is the one a run starts from: training from it with
// model.init_from gives bitwise the same weights as training from the config and seed.
TEST(Trainer, SavedInitialModelStartsTheSameRun) {
    NEED_DATA();
    TrainConfig c = base_config("from_seed");
    c.steps = 3;
    const std::string init = fresh_dir("saved_init");
    save_model(*build_initial_model(c), init);
    Trainer from_seed(c, false);
    from_seed.run();

    c.model_config.clear();
    c.init_from = init;
    c.run_dir = fresh_dir("from_saved");
    Trainer from_saved(c, false);
    from_saved.run();
    const std::vector<float> a = weights(from_seed.model()), b = weights(from_saved.model());
    ASSERT_EQ(a.size(), b.size());
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);
}
