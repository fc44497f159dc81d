// The trainer on device cuda (train/trainer.h, model/cuda_model.h) against the CPU trainer: the same
// run from the same initial weights and data stream, a bitwise resume on the GPU, the NaN policy,
// and the device key's errors (those run in every build).
//
// Tolerance of the GPU-vs-CPU losses (relative 3e-2 per step). At equal weights, the GPU's loss
// differs from the CPU's by the bf16 rounding of weights and activations: test_cuda_model.cpp argues
// ≲ 1e-2 relative for models of this size (√(rounding count)·2^-9.8 per logit). The two runs then
// drift apart: each AdamW update is lr·m̂/(√v̂ + eps), a bounded step whose direction the gradients'
// ~1e-2 relative error (same argument, gradients) tilts by about as much, so after 20 steps the
// weights differ by ≲ 20·lr·1e-2 per element — orders of magnitude below the weights' own change
// (20·lr), which moves the loss by ~40% here; 1e-2 of that change is ~4e-3 of the loss. Summing
// both, the losses agree to ~1.5e-2 relative; we bound by 3e-2. A wrong update (a missed clip, a
// wrong step count, a dropped micro-batch) moves the loss by far more within a few steps.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/cuda_device.h"
#include "core/error.h"
#include "data/prepare.h"
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

std::string tmp(const std::string& name) {
    return testing::TempDir() + "/mslm_cuda_train_" + name + "_" + std::to_string(getpid());
}

std::string fresh_dir(const std::string& name) {
    const std::string dir = tmp(name);
    fs::remove_all(dir);
    return dir;
}

// tinyshakespeare as bytes (vocab 257 with EOT), prepared once per process; "" when absent.
const std::string& shakespeare_bytes() {
    // one directory per process: ctest -j runs tests side by side
    static const std::string dir = test::prepare_shakespeare_bytes(tmp("data"));
    return dir;
}

const std::string& small_model_config() {
    static const std::string path = test::write_small_model_config(tmp("model_config") + ".json");
    return path;
}

TrainConfig base_config(const std::string& run, const std::string& device) {
    TrainConfig c;
    c.model_config = small_model_config();
    c.data = shakespeare_bytes();
    c.run_dir = fresh_dir(run);
    c.device = device;
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

double mean_loss(const CurvePoints& c, size_t begin, size_t end) {
    double s = 0;
    for (size_t i = begin; i < end; ++i) s += c[i].second;
    return s / static_cast<double>(end - begin);
}

struct Crash : std::runtime_error {
    Crash() : std::runtime_error("crash") {}
};

class CudaTrain : public ::testing::Test {
protected:
    void SetUp() override {
        if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU: " << cuda_device_summary();
        if (shakespeare_bytes().empty()) GTEST_SKIP() << "no tinyshakespeare.txt at " << data_dir();
    }
};

}  // namespace

// 20 steps with gradient accumulation and clipping, on the GPU and on the CPU from the same init.
TEST_F(CudaTrain, LossesMatchTheCpuTrainer) {
    auto config = [](const std::string& device) {
        TrainConfig c = base_config("match_" + device, device);
        c.steps = 20;
        c.grad_accum = 2;
        c.eval_every = 0;
        c.checkpoint_every = 0;
        return c;
    };
    const TrainConfig cpu_cfg = config("cpu"), gpu_cfg = config("cuda");
    Trainer cpu(cpu_cfg, false);
    const TrainSummary cs = cpu.run();
    Trainer gpu(gpu_cfg, false);
    const TrainSummary gs = gpu.run();
    EXPECT_EQ(gs.step, 20);
    EXPECT_EQ(gs.skipped_steps, 0);

    const CurvePoints a = read_metric(cpu_cfg.run_dir + "/metrics.jsonl", "train", "loss");
    const CurvePoints b = read_metric(gpu_cfg.run_dir + "/metrics.jsonl", "train", "loss");
    ASSERT_EQ(a.size(), 20u);
    ASSERT_EQ(b.size(), 20u);
    for (size_t i = 0; i < a.size(); ++i) {
        EXPECT_EQ(a[i].first, b[i].first);
        EXPECT_NEAR(b[i].second, a[i].second, 3e-2 * a[i].second) << "step " << a[i].first;
    }
    // Both learn: the byte model leaves the uniform ln 257 ≈ 5.55 fast at lr 3e-3.
    EXPECT_LT(mean_loss(a, 15, 20), 0.9 * mean_loss(a, 0, 5));
    EXPECT_LT(mean_loss(b, 15, 20), 0.9 * mean_loss(b, 0, 5));
    // The final eval ran on the downloaded weights: it scores like the CPU run's.
    EXPECT_NEAR(gs.val_loss, cs.val_loss, 3e-2 * cs.val_loss);
    EXPECT_TRUE(fs::exists(gpu_cfg.run_dir + "/checkpoints"));
}

// Every kernel adds in a fixed order, so a GPU run is a function of its inputs: 6 straight steps
// and 3 + resume (from the checkpoint's fp32 weights and AdamW state) + 3 agree bit for bit.
TEST_F(CudaTrain, ResumeIsExact) {
    const TrainConfig straight_cfg = base_config("straight", "cuda");
    Trainer straight(straight_cfg, false);
    straight.run();

    const TrainConfig cfg = base_config("resumed", "cuda");
    {
        Trainer first(cfg, false);
        first.after_backward = [](int64_t s, Parameters<float>&) {
            if (s == 3) throw Crash();  // killed in step 4, after the step-3 checkpoint
        };
        EXPECT_THROW(first.run(), Crash);
    }
    Trainer resumed(cfg, true);
    EXPECT_EQ(resumed.step(), 3);
    resumed.run();

    const CurvePoints a = read_metric(straight_cfg.run_dir + "/metrics.jsonl", "train", "loss");
    const CurvePoints b = read_metric(cfg.run_dir + "/metrics.jsonl", "train", "loss");
    ASSERT_EQ(a.size(), 6u);
    EXPECT_EQ(a, b);
    const std::vector<float> wa = weights(straight.model()), wb = weights(resumed.model());
    ASSERT_EQ(wa.size(), wb.size());
    EXPECT_EQ(std::memcmp(wa.data(), wb.data(), wa.size() * sizeof(float)), 0);
    // The GPU's optimizer state reaches the checkpoint in the CPU trainer's format.
    LoadedCheckpoint ck = load_checkpoint(cfg.run_dir + "/checkpoints/step_00000006");
    EXPECT_EQ(ck.optimizer.get("adamw.step").data<int64_t>()[0], 6);
}

// A NaN gradient (poisoned on the host between backward and clipping) is skipped or stops the run.
TEST_F(CudaTrain, NanPolicy) {
    auto poison = [](int64_t step, Parameters<float>& p) {
        if (step == 2) p.grads()[0] = std::numeric_limits<float>::quiet_NaN();
    };
    TrainConfig c = base_config("nan_skip", "cuda");
    c.nan_policy = "skip";
    {
        Trainer t(c, false);
        t.after_backward = poison;
        const TrainSummary s = t.run();
        EXPECT_EQ(s.skipped_steps, 1);
        EXPECT_EQ(s.step, 6);
        for (float x : weights(t.model())) ASSERT_TRUE(std::isfinite(x));
    }
    c = base_config("nan_stop", "cuda");
    c.nan_policy = "stop";
    Trainer t(c, false);
    t.after_backward = poison;
    try {
        t.run();
        FAIL() << "a NaN gradient did not stop the run";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("step 3: non-finite gradient norm"), std::string::npos) << e.what();
    }
}

// Runs in every build: the device key's spelling, and device cuda where there is no CUDA build or
// no GPU fails before any work with the reason.
TEST(CudaTrainConfig, DeviceErrorsNameTheReason) {
    TrainConfig c;
    c.model_preset = "tiny";
    c.data = "unused";
    c.run_dir = fresh_dir("config");
    for (const char* bad : {"gpu", "cuda:", "cuda:x", "cuda0", "CUDA"}) {
        c.device = bad;
        EXPECT_THROW(c.validate(), Error) << bad;
    }
    c.device = "cuda";
#ifndef MSLM_HAVE_CUDA
    try {
        c.validate();
        FAIL() << "device cuda accepted by a build without CUDA";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("no CUDA support"), std::string::npos) << e.what();
    }
#else
    EXPECT_NO_THROW(c.validate());
    c.device = "cuda:1";
    EXPECT_NO_THROW(c.validate());
    c.device = "cuda";
    if (!cuda_available()) {
        try {
            Trainer t(c, false);
            FAIL() << "device cuda accepted on a machine without a GPU";
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find("no CUDA device"), std::string::npos) << e.what();
        }
    } else {
        c.device = "cuda:999";
        try {
            Trainer t(c, false);
            FAIL() << "device cuda:999 accepted";
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find("does not exist"), std::string::npos) << e.what();
        }
    }
#endif
}
