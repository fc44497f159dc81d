#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <thread>

#include "core/error.h"
#include "model/config.h"
#include "model/hybrid_lm.h"
#include "train/checkpoint.h"

using namespace mslm;
namespace fs = std::filesystem;

namespace {

ModelConfig small_config() {
    ModelConfig c;
    c.vocab_size = 23;
    c.d_model = 12;
    c.n_layers = 2;
    c.layers = parse_layer_pattern("MA");
    c.mamba.version = 2;
    c.mamba.d_state = 4;
    c.mamba.head_dim = 4;
    c.mamba.chunk_size = 4;
    c.attention.n_heads = 4;
    c.attention.n_kv_heads = 2;
    c.attention.rotary_dim = 2;
    c.mlp = {MlpKind::SwiGLU, 10, false};
    c.max_seq_len = 32;
    return c;
}

std::string fresh_dir(const std::string& name) {
    std::string dir = testing::TempDir() + "/mslm_ckpt_" + name;
    fs::remove_all(dir);
    return dir;
}

std::vector<float> snapshot(const HybridLM<float>& model) {
    std::vector<float> out;
    const Parameters<float>& p = model.params();
    for (size_t i = 0; i < p.specs().size(); ++i)
        out.insert(out.end(), p.value(i), p.value(i) + p.specs()[i].numel);
    return out;
}

// Bitwise: a checkpoint must resume exactly, so no tolerance.
bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

std::vector<std::pair<std::string, Tensor>> optimizer_state(int64_t n, float scale) {
    std::vector<float> m(static_cast<size_t>(n)), v(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
        m[static_cast<size_t>(i)] = scale * std::sin(static_cast<float>(i));
        v[static_cast<size_t>(i)] = scale * static_cast<float>(i % 7) + 0.5f;
    }
    return {{"adamw.m", Tensor::from_vector(m, {n})},
            {"adamw.v", Tensor::from_vector(v, {n})},
            {"adamw.count", Tensor::from_vector(std::vector<int64_t>{42}, {1})}};
}

void expect_optimizer_equal(const SafetensorsFile& file,
                            const std::vector<std::pair<std::string, Tensor>>& want) {
    ASSERT_EQ(file.names().size(), want.size());
    for (const auto& [name, t] : want) {
        ASSERT_TRUE(file.contains(name)) << name;
        Tensor got = file.get(name);
        EXPECT_EQ(got.dtype(), t.dtype()) << name;
        EXPECT_EQ(got.shape(), t.shape()) << name;
        auto bytes = file.bytes(name);
        ASSERT_EQ(bytes.size(), t.nbytes()) << name;
        EXPECT_EQ(std::memcmp(bytes.data(), t.raw(), t.nbytes()), 0) << name;
    }
}

nlohmann::json trainer_state(int64_t step) {
    return {{"rng", {{"seed", 7}, {"offset", step * 3}}},
            {"loader", {{"shard", 2}, {"position", 123456789012LL}}},
            {"metrics", {{"loss", 2.5 - 0.001 * static_cast<double>(step)}}}};
}

}  // namespace

TEST(Checkpoint, RoundTripIsBitwise) {
    const std::string run = fresh_dir("roundtrip");
    HybridLM<float> model(small_config());
    model.init(3);
    CheckpointContents c{&model, optimizer_state(50, 0.25f), trainer_state(120)};
    std::string dir = save_checkpoint(run, 120, c, 3);
    EXPECT_EQ(dir, run + "/checkpoints/step_00000120");
    for (const char* f : {"config.json", "model.safetensors", "optimizer.safetensors", "trainer_state.json"})
        EXPECT_TRUE(fs::is_regular_file(fs::path(dir) / f)) << f;
    EXPECT_FALSE(fs::exists(dir + ".tmp"));

    LoadedCheckpoint back = load_checkpoint(dir);
    EXPECT_EQ(back.step, 120);
    EXPECT_TRUE(same_bits(snapshot(*back.model), snapshot(model)));
    expect_optimizer_equal(back.optimizer, c.optimizer);
    nlohmann::json want = trainer_state(120);
    want["step"] = 120;
    EXPECT_EQ(back.trainer_state, want);
    EXPECT_EQ(latest_checkpoint(run), dir);
}

TEST(Checkpoint, SavingTheSameStepAgainReplacesIt) {
    const std::string run = fresh_dir("resave");
    HybridLM<float> model(small_config());
    model.init(1);
    save_checkpoint(run, 5, {&model, optimizer_state(8, 1.0f), trainer_state(5)}, 2);
    model.init(2);
    std::string dir = save_checkpoint(run, 5, {&model, optimizer_state(8, 2.0f), trainer_state(5)}, 2);
    LoadedCheckpoint back = load_checkpoint(dir);
    EXPECT_TRUE(same_bits(snapshot(*back.model), snapshot(model)));
    expect_optimizer_equal(back.optimizer, optimizer_state(8, 2.0f));
    EXPECT_EQ(std::distance(fs::directory_iterator(run + "/checkpoints"), fs::directory_iterator()), 1);
}

TEST(Checkpoint, KeepLastDeletesTheOldest) {
    const std::string run = fresh_dir("keep_last");
    HybridLM<float> model(small_config());
    model.init(4);
    fs::create_directories(run + "/checkpoints/step_00000001.tmp");  // a crash leftover: not ours to delete
    for (int64_t step : {100, 200, 300, 400})
        save_checkpoint(run, step, {&model, {}, trainer_state(step)}, 2);
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(run + "/checkpoints"))
        names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    EXPECT_EQ(names, (std::vector<std::string>{"step_00000001.tmp", "step_00000300", "step_00000400"}));

    // The one just written survives even when older-numbered ones are more recent on disk.
    save_checkpoint(run, 50, {&model, {}, trainer_state(50)}, 1);
    EXPECT_TRUE(fs::exists(run + "/checkpoints/step_00000050"));
    EXPECT_FALSE(fs::exists(run + "/checkpoints/step_00000300"));
    EXPECT_FALSE(fs::exists(run + "/checkpoints/step_00000400"));
}

TEST(Checkpoint, LatestSkipsTmpAndIncompleteDirectories) {
    const std::string run = fresh_dir("latest");
    EXPECT_EQ(latest_checkpoint(run), std::nullopt);
    HybridLM<float> model(small_config());
    model.init(5);
    std::string good = save_checkpoint(run, 20, {&model, {}, trainer_state(20)}, 5);
    save_checkpoint(run, 10, {&model, {}, trainer_state(10)}, 5);

    // A crash during the write of step 40 and a directory that lost a file.
    fs::copy(good, run + "/checkpoints/step_00000040.tmp");
    fs::copy(good, run + "/checkpoints/step_00000030");
    fs::remove(run + "/checkpoints/step_00000030/optimizer.safetensors");
    fs::create_directories(run + "/checkpoints/notes");

    std::vector<std::string> skipped;
    EXPECT_EQ(latest_checkpoint(run, &skipped), good);
    std::sort(skipped.begin(), skipped.end());
    EXPECT_EQ(skipped, (std::vector<std::string>{run + "/checkpoints/step_00000030",
                                                 run + "/checkpoints/step_00000040.tmp"}));
    EXPECT_TRUE(fs::exists(run + "/checkpoints/step_00000040.tmp"));  // reported, not deleted
}

TEST(Checkpoint, RefusesNonFiniteValuesAndKeepsThePreviousOne) {
    const std::string run = fresh_dir("nan");
    HybridLM<float> model(small_config());
    model.init(6);
    std::string prev = save_checkpoint(run, 1, {&model, optimizer_state(16, 1.0f), trainer_state(1)}, 1);
    std::vector<float> saved = snapshot(model);

    const std::string name = model.params().specs()[1].name;
    model.params().value(1)[3] = std::numeric_limits<float>::quiet_NaN();
    try {
        save_checkpoint(run, 2, {&model, optimizer_state(16, 1.0f), trainer_state(2)}, 1);
        FAIL() << "a NaN parameter was saved";
    } catch (const Error& e) {
        EXPECT_EQ(std::string(e.what()), "checkpoint at step 2: parameter '" + name + "' holds NaN");
    }
    model.params().value(1)[3] = 0.0f;

    auto opt = optimizer_state(16, 1.0f);
    opt[1].second.data<float>()[5] = -std::numeric_limits<float>::infinity();
    try {
        save_checkpoint(run, 2, {&model, opt, trainer_state(2)}, 1);
        FAIL() << "an infinite optimizer value was saved";
    } catch (const Error& e) {
        EXPECT_EQ(std::string(e.what()), "checkpoint at step 2: optimizer tensor 'adamw.v' holds inf");
    }

    EXPECT_FALSE(fs::exists(run + "/checkpoints/step_00000002"));
    EXPECT_FALSE(fs::exists(run + "/checkpoints/step_00000002.tmp"));
    EXPECT_EQ(latest_checkpoint(run), prev);
    LoadedCheckpoint back = load_checkpoint(prev);
    EXPECT_TRUE(same_bits(snapshot(*back.model), saved));
    expect_optimizer_equal(back.optimizer, optimizer_state(16, 1.0f));
}

TEST(Checkpoint, LoadNamesTheMissingOrCorruptFile) {
    const std::string run = fresh_dir("corrupt");
    HybridLM<float> model(small_config());
    model.init(7);
    std::string dir = save_checkpoint(run, 3, {&model, optimizer_state(4, 1.0f), trainer_state(3)}, 1);
    auto expect_error = [&](const std::string& file) {
        try {
            load_checkpoint(dir);
            FAIL() << "loaded with a broken " << file;
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find(file), std::string::npos) << e.what();
        }
    };
    const std::string copy = run + "/backup";
    fs::copy(dir, copy);
    auto restore = [&] {
        fs::remove_all(dir);
        fs::copy(copy, dir);
    };

    fs::remove(dir + "/optimizer.safetensors");
    expect_error("optimizer.safetensors");
    restore();
    std::ofstream(dir + "/trainer_state.json") << "{\"step\": 3,";
    expect_error("trainer_state.json");
    restore();
    std::ofstream(dir + "/trainer_state.json") << "{\"step\": 4}";
    expect_error("trainer_state.json");
    restore();
    fs::resize_file(dir + "/model.safetensors", fs::file_size(dir + "/model.safetensors") - 4);
    expect_error("model.safetensors");
    restore();
    fs::resize_file(dir + "/optimizer.safetensors", 3);
    expect_error("optimizer.safetensors");
    restore();
    EXPECT_NO_THROW(load_checkpoint(dir));
}

// kill -9 at several moments of a large write: the previous checkpoint must stay the latest
// complete one and load exactly; a checkpoint the child did finish must load exactly too.
TEST(Checkpoint, KillDuringWriteNeverLeavesAWrongCheckpoint) {
    const std::string run = fresh_dir("kill");
    HybridLM<float> model(preset("30m"));
    model.init(1);
    const auto opt1 = optimizer_state(1 << 20, 1.0f);
    const std::string prev = save_checkpoint(run, 1, {&model, opt1, trainer_state(1)}, 3);
    const std::vector<float> saved1 = snapshot(model);

    model.init(2);  // what the children write as step 2
    const auto opt2 = optimizer_state(1 << 20, 2.0f);
    const std::vector<float> saved2 = snapshot(model);

    // Runs save_checkpoint(step 2) in a child; kills it after `delay_ms` (never if negative).
    // Returns the wait status.
    auto write_in_child = [&](const std::string& dir, double delay_ms) {
        pid_t pid = fork();
        if (pid == 0) {
            try {
                save_checkpoint(dir, 2, {&model, opt2, trainer_state(2)}, 3);
            } catch (...) {
                _exit(1);
            }
            _exit(0);
        }
        EXPECT_GT(pid, 0);
        if (delay_ms >= 0) {
            std::this_thread::sleep_for(std::chrono::microseconds(static_cast<int64_t>(delay_ms * 1000)));
            kill(pid, SIGKILL);
        }
        int status = 0;
        waitpid(pid, &status, 0);
        return status;
    };

    // How long a child takes for the whole write, in a separate run directory.
    const std::string calib = fresh_dir("kill_calibration");
    auto t0 = std::chrono::steady_clock::now();
    int status = write_in_child(calib, -1);
    double write_ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "the child could not write a checkpoint";
    fs::remove_all(calib);
    EXPECT_GE(write_ms, 50.0) << "the write is too quick for the kills to land inside it";

    int killed_mid_write = 0;
    for (double delay : {0.0, 5.0, 20.0, 50.0, 0.3 * write_ms, 0.6 * write_ms, 0.9 * write_ms}) {
        status = write_in_child(run, delay);
        bool killed = WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
        ASSERT_TRUE(killed || (WIFEXITED(status) && WEXITSTATUS(status) == 0)) << "delay " << delay;
        std::optional<std::string> latest = latest_checkpoint(run);
        ASSERT_TRUE(latest.has_value());
        LoadedCheckpoint back = load_checkpoint(*latest);
        if (back.step == 1) {
            EXPECT_EQ(*latest, prev);
            EXPECT_TRUE(same_bits(snapshot(*back.model), saved1)) << "delay " << delay;
            expect_optimizer_equal(back.optimizer, opt1);
            ++killed_mid_write;
        } else {
            // The kill came after the rename: the new checkpoint is complete and must be exact.
            ASSERT_EQ(back.step, 2);
            EXPECT_TRUE(same_bits(snapshot(*back.model), saved2)) << "delay " << delay;
            expect_optimizer_equal(back.optimizer, opt2);
            fs::remove_all(*latest);
        }
    }
    EXPECT_GE(killed_mid_write, 4) << "write took " << write_ms << " ms";
    RecordProperty("write_ms", static_cast<int>(write_ms));
    RecordProperty("killed_mid_write", killed_mid_write);
}
