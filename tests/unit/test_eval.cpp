#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <numbers>

#include "core/error.h"
#include "core/rng.h"
#include "data/loader.h"
#include "data/shard.h"
#include "eval/perplexity.h"
#include "model/config.h"

using namespace mslm;
namespace fs = std::filesystem;

namespace {

ModelConfig small_config() {
    ModelConfig c;
    c.vocab_size = 50;
    c.d_model = 16;
    c.n_layers = 2;
    c.layers = parse_layer_pattern("MA");
    c.mamba.d_state = 4;
    c.mamba.head_dim = 8;
    c.mamba.chunk_size = 8;
    c.attention.n_heads = 2;
    c.mlp = {MlpKind::SwiGLU, 24, false};
    c.max_seq_len = 32;
    return c;
}

// One shard of n random tokens below 50.
std::string random_shard(int64_t n) {
    const std::string path = testing::TempDir() + "/mslm_eval_" + std::to_string(getpid()) + ".bin";
    Rng rng(3);
    std::vector<int32_t> t(static_cast<size_t>(n));
    for (auto& v : t) v = static_cast<int32_t>(rng.below(50));
    ShardWriter w(path, ShardDtype::U16);
    w.write(t.data(), n);
    w.close();
    return path;
}

}  // namespace

// The result is the mean loss over every target of the windows it covers: the same as scoring
// the windows one by one, for any batch size (the short last batch weighs by its rows), and
// max_batches stops after that many batches.
TEST(Eval, MeanOverWindowsForAnyBatchSize) {
    HybridLM<float> model(small_config());
    model.init(7);
    const std::string shard = random_shard(16 * 11 + 1);  // 11 windows of T = 16
    DataLoader one({shard}, {1, 16, 0, false, 0, 1});
    Batch b;
    double sum = 0;
    int64_t windows = 0;
    while (one.next(b)) {
        sum += model.forward(b.inputs.data(), b.targets.data(), 1, 16);
        ++windows;
    }
    ASSERT_EQ(windows, 11);
    const double bytes_per_token = 2.5;
    for (int64_t batch : {1, 4, 11, 16}) {
        DataLoader loader({shard}, {batch, 16, 0, false, 0, 1});
        const EvalResult r = evaluate_windows(model, loader, 0, bytes_per_token);
        EXPECT_EQ(r.windows, 11);
        EXPECT_EQ(r.tokens, 11 * 16);
        // fp32 per-batch means summed in a different grouping: a few ulps of the loss.
        EXPECT_NEAR(r.loss, sum / 11, 1e-5 * r.loss) << "batch " << batch;
        EXPECT_DOUBLE_EQ(r.ppl, std::exp(r.loss));
        EXPECT_DOUBLE_EQ(r.bpb, r.loss / std::numbers::ln2 / bytes_per_token);
        EXPECT_EQ(evaluate_windows(model, loader, 0, bytes_per_token).loss, r.loss);  // resets the loader
    }
    DataLoader loader({shard}, {4, 16, 0, false, 0, 1});
    const EvalResult first = evaluate_windows(model, loader, 2, 0.0);
    EXPECT_EQ(first.windows, 8);
    EXPECT_EQ(first.bpb, 0.0);  // bytes per token unknown

    DataLoader shuffled({shard}, {4, 16, 0, true, 0, 1});
    EXPECT_THROW(evaluate_windows(model, shuffled, 0, 1.0), Error);
    fs::remove(shard);
}
