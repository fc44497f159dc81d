#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/rng.h"
#include "data/shard.h"

using namespace mslm;
namespace fs = std::filesystem;

namespace {

// One directory per test and process: tests of several worktrees share /tmp.
class ShardTest : public testing::Test {
protected:
    void SetUp() override {
        const auto* info = testing::UnitTest::GetInstance()->current_test_info();
        dir_ = fs::path(testing::TempDir()) / fmt::format("mslm_shard_{}_{}", info->name(), getpid());
        fs::remove_all(dir_);
        fs::create_directories(dir_);
    }
    void TearDown() override { fs::remove_all(dir_); }
    std::string path(const std::string& name) const { return (dir_ / name).string(); }

    fs::path dir_;
};

std::string read_bytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

void write_bytes(const std::string& path, const std::string& bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string le32(int32_t v) {
    std::string s(4, '\0');
    for (int i = 0; i < 4; ++i) s[i] = static_cast<char>(static_cast<uint32_t>(v) >> (8 * i));
    return s;
}

// A shard file from raw parts: header words (rest zero) and payload.
std::string shard_bytes(int32_t magic, int32_t version, int32_t count, const std::string& payload) {
    std::string h = le32(magic) + le32(version) + le32(count);
    h.resize(1024, '\0');
    return h + payload;
}

void expect_open_error(const std::string& path, const std::string& phrase) {
    try {
        ShardReader::open(path);
        ADD_FAILURE() << "no error; expected one containing '" << phrase << "'";
    } catch (const Error& e) {
        std::string msg = e.what();
        EXPECT_NE(msg.find(path), std::string::npos) << msg;
        EXPECT_NE(msg.find(phrase), std::string::npos) << msg;
    }
}

std::vector<int32_t> write_and_read(const std::string& path, ShardDtype dtype,
                                    const std::vector<int32_t>& tokens) {
    ShardWriter w(path, dtype);
    // In two pieces: write() appends.
    size_t half = tokens.size() / 2;
    w.write(tokens.data(), static_cast<int64_t>(half));
    w.write(tokens.data() + half, static_cast<int64_t>(tokens.size() - half));
    EXPECT_EQ(w.tokens(), static_cast<int64_t>(tokens.size()));
    w.close();
    ShardReader r = ShardReader::open(path);
    EXPECT_EQ(r.dtype(), dtype);
    std::vector<int32_t> back(static_cast<size_t>(r.size()));
    r.read(0, r.size(), back.data());
    return back;
}

}  // namespace

TEST_F(ShardTest, DtypeFollowsVocabulary) {
    EXPECT_EQ(shard_dtype_for_vocab(257), ShardDtype::U16);
    EXPECT_EQ(shard_dtype_for_vocab(65536), ShardDtype::U16);  // ids 0..65535
    EXPECT_EQ(shard_dtype_for_vocab(65537), ShardDtype::U32);
    EXPECT_EQ(shard_dtype_from_name(shard_dtype_name(ShardDtype::U32)), ShardDtype::U32);
}

TEST_F(ShardTest, RoundTripUint16) {
    Rng rng(1);
    std::vector<int32_t> tokens = {0, 1, 255, 256, 65535};
    // Past the writer's 1 MiB buffer, so the flush path runs.
    for (int i = 0; i < 700'000; ++i) tokens.push_back(static_cast<int32_t>(rng.below(65536)));
    EXPECT_EQ(write_and_read(path("a.bin"), ShardDtype::U16, tokens), tokens);
    EXPECT_EQ(fs::file_size(path("a.bin")), 1024 + 2 * tokens.size());
}

TEST_F(ShardTest, RoundTripUint32) {
    Rng rng(2);
    std::vector<int32_t> tokens = {0, 65535, 65536, 100'000, INT32_MAX};
    for (int i = 0; i < 300'000; ++i) tokens.push_back(static_cast<int32_t>(rng.below(1u << 31)));
    EXPECT_EQ(write_and_read(path("a.bin"), ShardDtype::U32, tokens), tokens);
    EXPECT_EQ(fs::file_size(path("a.bin")), 1024 + 4 * tokens.size());
}

TEST_F(ShardTest, EmptyShardRoundTrips) {
    EXPECT_TRUE(write_and_read(path("a.bin"), ShardDtype::U16, {}).empty());
    EXPECT_EQ(fs::file_size(path("a.bin")), 1024u);
}

// Header bytes checked by hand: 20240520 = 0x0134D888, 20240801 = 0x0134D9A1, little-endian.
TEST_F(ShardTest, HeaderBytesExact) {
    {
        ShardWriter w(path("u16.bin"), ShardDtype::U16);
        std::vector<int32_t> t = {1, 2, 0xABCD};
        w.write(t.data(), 3);
        w.close();
    }
    std::string expected(
        "\x88\xd8\x34\x01"   // magic 20240520
        "\x01\x00\x00\x00"   // version 1
        "\x03\x00\x00\x00",  // 3 tokens
        12);
    expected.resize(1024, '\0');
    expected += std::string("\x01\x00\x02\x00\xcd\xab", 6);
    EXPECT_EQ(read_bytes(path("u16.bin")), expected);

    {
        ShardWriter w(path("u32.bin"), ShardDtype::U32);
        std::vector<int32_t> t = {0x01020304, 70000};
        w.write(t.data(), 2);
        w.close();
    }
    expected = std::string(
        "\xa1\xd9\x34\x01"   // magic 20240801
        "\x07\x00\x00\x00"   // version 7
        "\x02\x00\x00\x00",  // 2 tokens
        12);
    expected.resize(1024, '\0');
    expected += std::string("\x04\x03\x02\x01\x70\x11\x01\x00", 8);  // 70000 = 0x00011170
    EXPECT_EQ(read_bytes(path("u32.bin")), expected);
}

TEST_F(ShardTest, ReaderRejectsBadFiles) {
    std::string two_tokens("\x01\x00\x02\x00", 4);

    write_bytes(path("short.bin"), std::string(1000, '\0'));
    expect_open_error(path("short.bin"), "too short");

    write_bytes(path("magic.bin"), shard_bytes(12345, 1, 2, two_tokens));
    expect_open_error(path("magic.bin"), "not a token shard (magic 12345");

    write_bytes(path("version.bin"), shard_bytes(kShardMagicU16, 7, 2, two_tokens));
    expect_open_error(path("version.bin"), "goes with version 1, file has 7");

    write_bytes(path("count.bin"), shard_bytes(kShardMagicU16, 1, 5, two_tokens));
    expect_open_error(path("count.bin"), "expected 5 tokens, file holds 2");

    write_bytes(path("odd.bin"), shard_bytes(kShardMagicU16, 1, 2, two_tokens + "x"));
    expect_open_error(path("odd.bin"), "expected 2 tokens, file holds 2 and 1 stray bytes");

    write_bytes(path("negative.bin"), shard_bytes(kShardMagicU32, 7, -1, ""));
    expect_open_error(path("negative.bin"), "negative token count");

    expect_open_error(path("missing.bin"), "cannot open");
}

TEST_F(ShardTest, TruncatedShardIsAnError) {
    std::vector<int32_t> tokens(1000, 7);
    write_and_read(path("t.bin"), ShardDtype::U16, tokens);
    fs::resize_file(path("t.bin"), 1024 + 2 * 999);
    expect_open_error(path("t.bin"), "expected 1000 tokens, file holds 999");
    fs::resize_file(path("t.bin"), 1024 + 2 * 999 + 1);
    expect_open_error(path("t.bin"), "expected 1000 tokens, file holds 999 and 1 stray bytes");
}

TEST_F(ShardTest, WriterStagesInTmpUntilClose) {
    std::vector<int32_t> t = {1, 2, 3};
    ShardWriter w(path("s.bin"), ShardDtype::U16);
    w.write(t.data(), 3);
    EXPECT_TRUE(fs::exists(path("s.bin.tmp")));
    EXPECT_FALSE(fs::exists(path("s.bin")));
    w.close();
    EXPECT_FALSE(fs::exists(path("s.bin.tmp")));
    EXPECT_TRUE(fs::exists(path("s.bin")));
}

// A writer that throws midway (an id that does not fit) leaves neither the shard nor its .tmp.
TEST_F(ShardTest, WriterThrowingMidwayLeavesNoShard) {
    std::vector<int32_t> good(5000, 42);
    std::vector<int32_t> bad = {1, 2, 70000};
    try {
        ShardWriter w(path("s.bin"), ShardDtype::U16);
        w.write(good.data(), static_cast<int64_t>(good.size()));
        w.write(bad.data(), static_cast<int64_t>(bad.size()));
        w.close();
        ADD_FAILURE() << "no error for id 70000 in a uint16 shard";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("token id 70000 does not fit uint16"), std::string::npos)
            << e.what();
    }
    EXPECT_FALSE(fs::exists(path("s.bin")));
    EXPECT_FALSE(fs::exists(path("s.bin.tmp")));

    try {
        ShardWriter w(path("n.bin"), ShardDtype::U32);
        int32_t neg = -1;
        w.write(&neg, 1);
        ADD_FAILURE() << "no error for a negative id";
    } catch (const Error&) {
    }
    EXPECT_TRUE(fs::is_empty(dir_));
}

TEST_F(ShardTest, WriterRefusesMoreThanInt32Tokens) {
    ShardWriter w(path("big.bin"), ShardDtype::U16);
    int32_t t = 0;
    w.write(&t, 1);
    try {
        // The count is checked before any token is read, so the pointer is never used past [0].
        w.write(&t, kShardMaxTokens);
        ADD_FAILURE() << "no error past INT32_MAX tokens";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("at most 2147483647 tokens"), std::string::npos) << e.what();
    }
}

TEST_F(ShardTest, ReadOutsideTheShardIsAnError) {
    write_and_read(path("r.bin"), ShardDtype::U16, {1, 2, 3});
    ShardReader r = ShardReader::open(path("r.bin"));
    EXPECT_EQ(r[2], 3);
    int32_t out[4];
    EXPECT_THROW(r.read(1, 3, out), Error);
}
