#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "data/loader.h"
#include "data/shard.h"

using namespace mslm;
namespace fs = std::filesystem;

namespace {

// Token i of the stream has id i % 65000, so any window's content says where it came from.
int32_t token_at(int64_t i) {
    return static_cast<int32_t>(i % 65000);
}

class LoaderTest : public testing::Test {
protected:
    void SetUp() override {
        const auto* info = testing::UnitTest::GetInstance()->current_test_info();
        dir_ = fs::path(testing::TempDir()) / fmt::format("mslm_loader_{}_{}", info->name(), getpid());
        fs::remove_all(dir_);
        fs::create_directories(dir_);
    }
    void TearDown() override { fs::remove_all(dir_); }

    // Shards of these sizes holding one stream; an empty one in the middle on purpose.
    std::vector<std::string> make_shards(const std::vector<int64_t>& sizes,
                                         ShardDtype dtype = ShardDtype::U16) {
        std::vector<std::string> paths;
        int64_t next = 0;
        for (size_t s = 0; s < sizes.size(); ++s) {
            paths.push_back((dir_ / fmt::format("s_{}.bin", s)).string());
            ShardWriter w(paths.back(), dtype);
            std::vector<int32_t> t;
            for (int64_t i = 0; i < sizes[s]; ++i) t.push_back(token_at(next++));
            w.write(t.data(), static_cast<int64_t>(t.size()));
            w.close();
        }
        return paths;
    }

    fs::path dir_;
};

void expect_window_content(const Batch& b, int64_t T, int64_t N) {
    for (int64_t r = 0; r < b.rows; ++r) {
        int64_t k = b.windows[static_cast<size_t>(r)];
        ASSERT_LE(k * T + T + 1, N) << "window " << k << " crosses the end";
        for (int64_t t = 0; t < T; ++t) {
            ASSERT_EQ(b.inputs[static_cast<size_t>(r * T + t)], token_at(k * T + t));
            ASSERT_EQ(b.targets[static_cast<size_t>(r * T + t)], token_at(k * T + t + 1));
        }
    }
}

std::vector<int64_t> take_windows(DataLoader& loader, int64_t count) {
    std::vector<int64_t> out;
    Batch b;
    while (static_cast<int64_t>(out.size()) < count && loader.next(b)) {
        out.insert(out.end(), b.windows.begin(), b.windows.end());
    }
    out.resize(std::min<size_t>(out.size(), static_cast<size_t>(count)));
    return out;
}

}  // namespace

TEST_F(LoaderTest, SequentialWalksTheStreamInOrder) {
    auto shards = make_shards({1000, 0, 537, 2000});  // N = 3537
    LoaderOptions opt;
    opt.batch_size = 4;
    opt.seq_len = 16;
    opt.shuffle = false;
    DataLoader loader(shards, opt);
    const int64_t N = 3537, T = 16;
    ASSERT_EQ(loader.total_tokens(), N);
    ASSERT_EQ(loader.total_windows(), (N - 1) / T);  // 221
    Batch b;
    int64_t expected = 0;
    while (loader.next(b)) {
        EXPECT_LE(b.rows, 4);
        for (int64_t k : b.windows) EXPECT_EQ(k, expected++);
        expect_window_content(b, T, N);
    }
    EXPECT_EQ(expected, 221);
    EXPECT_EQ(b.rows, 221 % 4);  // the last batch is short
    EXPECT_FALSE(loader.next(b));
}

TEST_F(LoaderTest, ShuffledEpochVisitsEveryWindowOnce) {
    auto shards = make_shards({700, 1301});
    LoaderOptions opt;
    opt.batch_size = 3;
    opt.seq_len = 8;
    opt.seed = 5;
    DataLoader loader(shards, opt);
    const int64_t W = loader.total_windows();  // 2000 / 8 = 250
    ASSERT_EQ(W, 250);
    // Batches run across the epoch boundary: 2W = 500 windows end one into the third epoch.
    std::vector<int64_t> both = take_windows(loader, 2 * W);
    EXPECT_EQ(loader.state().epoch, 2);
    std::vector<int64_t> epoch0(both.begin(), both.begin() + W), epoch1(both.begin() + W, both.end());
    std::set<int64_t> seen(epoch0.begin(), epoch0.end());
    EXPECT_EQ(static_cast<int64_t>(seen.size()), W);
    EXPECT_EQ(*seen.rbegin(), W - 1);
    std::vector<int64_t> sorted(epoch0.begin(), epoch0.end());
    std::sort(sorted.begin(), sorted.end());
    EXPECT_NE(epoch0, sorted) << "not shuffled";
    EXPECT_EQ(std::set<int64_t>(epoch1.begin(), epoch1.end()).size(), static_cast<size_t>(W));
    EXPECT_NE(epoch0, epoch1) << "the next epoch is another permutation";
}

TEST_F(LoaderTest, SameSeedSameBatchesAcrossEpochs) {
    auto shards = make_shards({2001});
    LoaderOptions opt;
    opt.batch_size = 7;
    opt.seq_len = 10;
    opt.seed = 42;
    DataLoader a(shards, opt), b(shards, opt);
    opt.seed = 43;
    DataLoader c(shards, opt);
    Batch ba, bb, bc;
    bool differs = false;
    for (int i = 0; i < 100; ++i) {  // 200 windows an epoch: 3.5 epochs
        ASSERT_TRUE(a.next(ba));
        ASSERT_TRUE(b.next(bb));
        ASSERT_TRUE(c.next(bc));
        ASSERT_EQ(ba.windows, bb.windows);
        ASSERT_EQ(ba.inputs, bb.inputs);
        ASSERT_EQ(ba.targets, bb.targets);
        differs = differs || ba.windows != bc.windows;
        expect_window_content(ba, 10, 2001);
    }
    EXPECT_TRUE(differs);
}

TEST_F(LoaderTest, ResumeGivesTheSameFollowingBatches) {
    auto shards = make_shards({900, 1100});
    LoaderOptions opt;
    opt.batch_size = 6;
    opt.seq_len = 12;
    opt.seed = 9;
    for (int k : {0, 1, 13, 27, 28, 60}) {  // 166 windows an epoch: 27 and 28 straddle the boundary
        DataLoader original(shards, opt);
        Batch b;
        for (int i = 0; i < k; ++i) original.next(b);
        // Through JSON text, as a checkpoint stores it.
        std::string saved = original.state().to_json().dump();
        DataLoader resumed(shards, opt);
        resumed.next(b);  // a loader that has moved on is overwritten by set_state
        resumed.set_state(LoaderState::from_json(nlohmann::json::parse(saved)));
        Batch x, y;
        for (int i = 0; i < 40; ++i) {
            ASSERT_TRUE(original.next(x));
            ASSERT_TRUE(resumed.next(y));
            ASSERT_EQ(x.windows, y.windows) << "after " << k << " batches, batch " << i;
            ASSERT_EQ(x.inputs, y.inputs);
        }
        EXPECT_EQ(original.state().to_json(), resumed.state().to_json());
    }
}

TEST_F(LoaderTest, SequentialResume) {
    auto shards = make_shards({1000});
    LoaderOptions opt;
    opt.batch_size = 5;
    opt.seq_len = 9;
    opt.shuffle = false;
    DataLoader original(shards, opt), resumed(shards, opt);
    Batch b;
    for (int i = 0; i < 7; ++i) original.next(b);
    resumed.set_state(original.state());
    EXPECT_EQ(take_windows(original, 1000), take_windows(resumed, 1000));
}

TEST_F(LoaderTest, StateFromOtherDataIsRefused) {
    LoaderOptions opt;
    opt.seq_len = 8;
    DataLoader a(make_shards({1000}), opt);
    LoaderState s = a.state();
    s.windows += 1;
    try {
        a.set_state(s);
        ADD_FAILURE() << "no error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("windows an epoch"), std::string::npos) << e.what();
    }
    EXPECT_THROW(
        LoaderState::from_json(nlohmann::json::parse(R"({"epoch":0,"position":0,"windows":1,"rng":["zz"]})")),
        Error);
}

TEST_F(LoaderTest, RanksTakeDisjointSharesThatCoverTheWindows) {
    auto shards = make_shards({1201});  // T = 4: W = 300, divisible by 3 and 4, not by 7
    for (bool shuffle : {true, false}) {
        for (int n : {1, 3, 4, 7}) {
            std::vector<std::set<int64_t>> per_rank;
            int64_t W = 0;
            for (int r = 0; r < n; ++r) {
                LoaderOptions opt;
                opt.batch_size = 8;
                opt.seq_len = 4;
                opt.seed = 3;
                opt.shuffle = shuffle;
                opt.rank = r;
                opt.world_size = n;
                DataLoader loader(shards, opt);
                W = loader.total_windows();
                auto w = take_windows(loader, loader.rank_windows());  // one epoch of this rank
                per_rank.emplace_back(w.begin(), w.end());
                EXPECT_EQ(per_rank.back().size(), w.size()) << "a rank repeats a window";
            }
            std::set<int64_t> all;
            size_t sum = 0;
            for (const auto& s : per_rank) {
                all.insert(s.begin(), s.end());
                sum += s.size();
            }
            EXPECT_EQ(all.size(), sum) << "ranks overlap (shuffle " << shuffle << ", n " << n << ")";
            // Shuffled: every rank takes floor(W / n); sequential: all W.
            size_t want = shuffle ? static_cast<size_t>(W / n * n) : static_cast<size_t>(W);
            EXPECT_EQ(all.size(), want) << "shuffle " << shuffle << ", n " << n;
            if (W % n == 0) {
                EXPECT_EQ(all.size(), static_cast<size_t>(W));
            }
        }
    }
}

TEST_F(LoaderTest, Uint32ShardsAndWindowsSpanningShards) {
    auto shards = make_shards({5, 5, 5, 5, 5, 6}, ShardDtype::U32);  // windows of 9 cross several shards
    LoaderOptions opt;
    opt.batch_size = 2;
    opt.seq_len = 8;
    opt.shuffle = false;
    DataLoader loader(shards, opt);
    Batch b;
    int64_t windows = 0;
    while (loader.next(b)) {
        expect_window_content(b, 8, 31);
        windows += b.rows;
    }
    EXPECT_EQ(windows, 3);  // (31 - 1) / 8
}

TEST_F(LoaderTest, TooFewTokensIsAnError) {
    auto shards = make_shards({8});
    LoaderOptions opt;
    opt.seq_len = 8;
    try {
        DataLoader loader(shards, opt);
        ADD_FAILURE() << "no error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("fewer than one window of 9"), std::string::npos) << e.what();
    }
    opt.seq_len = 7;
    opt.world_size = 2;
    EXPECT_THROW(DataLoader(shards, opt), Error);  // one window cannot feed two ranks
}
