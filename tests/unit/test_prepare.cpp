#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/rng.h"
#include "core/thread_pool.h"
#include "data/loader.h"
#include "data/manifest.h"
#include "data/prepare.h"
#include "data/shard.h"

using namespace mslm;
namespace fs = std::filesystem;

namespace {

class VectorStream final : public DocumentStream {
public:
    explicit VectorStream(const std::vector<std::string>& docs, int64_t throw_at = -1)
        : docs_(docs), throw_at_(throw_at) {}
    bool next(Document& doc) override {
        ++calls;
        if (static_cast<int64_t>(i_) == throw_at_) fail("doc{}: broken record", i_);
        if (i_ >= docs_.size()) return false;
        doc.text = docs_[i_];
        doc.origin = fmt::format("doc{}", i_);
        ++i_;
        return true;
    }
    nlohmann::json summary() const override { return {{"documents", i_}}; }
    int64_t calls = 0;

private:
    const std::vector<std::string>& docs_;
    int64_t throw_at_;
    size_t i_ = 0;
};

// A byte encoder with a larger vocabulary: uint32 shards.
class WideEncoder final : public TextEncoder {
public:
    void encode_append(std::string_view text, std::vector<int32_t>& out) const override {
        for (unsigned char c : text) out.push_back(70000 + c);
    }
    int64_t vocab_size() const override { return 70300; }
    int32_t eot_id() const override { return 70299; }
    std::string fingerprint() const override { return "wide-v1"; }
};

class NoEotEncoder final : public TextEncoder {
public:
    void encode_append(std::string_view, std::vector<int32_t>&) const override {}
    int64_t vocab_size() const override { return 256; }
    int32_t eot_id() const override { return -1; }
    std::string fingerprint() const override { return "no-eot"; }
};

// Documents of random lengths (some empty, some long) and random bytes.
std::vector<std::string> make_docs(int n, uint64_t seed) {
    Rng rng(seed);
    std::vector<std::string> docs;
    for (int i = 0; i < n; ++i) {
        size_t len = rng.below(10) == 0 ? rng.below(3000) : rng.below(300);
        std::string d(len, '\0');
        for (auto& c : d) c = static_cast<char>(rng.below(256));
        docs.push_back(std::move(d));
    }
    return docs;
}

std::vector<int32_t> read_split(const SplitResult& s) {
    std::vector<int32_t> all;
    for (const auto& path : s.shards) {
        ShardReader r = ShardReader::open(path);
        size_t at = all.size();
        all.resize(at + static_cast<size_t>(r.size()));
        r.read(0, r.size(), all.data() + at);
    }
    return all;
}

std::string read_bytes(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

class PrepareTest : public testing::Test {
protected:
    void SetUp() override {
        const auto* info = testing::UnitTest::GetInstance()->current_test_info();
        dir_ = fs::path(testing::TempDir()) / fmt::format("mslm_prepare_{}_{}", info->name(), getpid());
        fs::remove_all(dir_);
        fs::create_directories(dir_);
        threads_ = num_threads();
    }
    void TearDown() override {
        fs::remove_all(dir_);
        set_num_threads(threads_);
    }

    PrepareOptions options(const std::string& sub) const {
        PrepareOptions opt;
        opt.out_dir = (dir_ / sub).string();
        opt.val_fraction = 0.2;
        opt.shard_tokens = 16384;
        opt.seed = 11;
        opt.progress = false;
        opt.inputs = {{"test", "v1"}};
        return opt;
    }

    fs::path dir_;
    int threads_ = 1;
};

}  // namespace

TEST_F(PrepareTest, ShardsHoldEotThenEachDocumentInOrder) {
    auto docs = make_docs(500, 1);
    VectorStream stream(docs);
    ByteEncoder enc;
    PrepareOptions opt = options("out");
    PrepareResult r = prepare_shards(stream, enc, opt);
    EXPECT_FALSE(r.reused);
    EXPECT_EQ(r.why_rebuilt, "no manifest");

    std::vector<int32_t> want_train, want_val;
    int64_t train_docs = 0, val_bytes = 0;
    for (size_t i = 0; i < docs.size(); ++i) {
        bool val = document_in_val(opt.seed, static_cast<int64_t>(i), opt.val_fraction);
        auto& w = val ? want_val : want_train;
        w.push_back(256);
        for (unsigned char c : docs[i]) w.push_back(c);
        train_docs += !val;
        val_bytes += val ? static_cast<int64_t>(docs[i].size()) : 0;
    }
    ASSERT_GT(want_val.size(), 0u);
    EXPECT_EQ(read_split(r.train), want_train);
    EXPECT_EQ(read_split(r.val), want_val);
    EXPECT_EQ(r.train.documents, train_docs);
    EXPECT_EQ(r.val.documents, 500 - train_docs);
    EXPECT_EQ(r.val.text_bytes, val_bytes);
    EXPECT_EQ(r.train.tokens, static_cast<int64_t>(want_train.size()));

    // Every shard but the last of a split is full; names are numbered in order.
    ASSERT_GT(r.train.shards.size(), 2u);
    for (size_t i = 0; i < r.train.shards.size(); ++i) {
        EXPECT_EQ(fs::path(r.train.shards[i]).filename(), fmt::format("train_{:06d}.bin", i));
        int64_t n = ShardReader::open(r.train.shards[i]).size();
        if (i + 1 < r.train.shards.size()) {
            EXPECT_EQ(n, 16384);
        }
    }

    // The manifest agrees, and the loader reads a split back through it.
    nlohmann::json m = read_manifest(opt.out_dir);
    EXPECT_EQ(m["dtype"], "uint16");
    EXPECT_EQ(m["magic"], kShardMagicU16);
    EXPECT_EQ(m["tokenizer"]["fingerprint"], "bytes-v1");
    EXPECT_EQ(m["tokenizer"]["eot_id"], 256);
    EXPECT_EQ(m["documents"], 500);
    EXPECT_EQ(m["stream"]["documents"], 500);
    EXPECT_EQ(m["tokens"], static_cast<int64_t>(want_train.size() + want_val.size()));
    SplitInfo val = manifest_split(opt.out_dir, "val");
    EXPECT_EQ(val.tokens, static_cast<int64_t>(want_val.size()));
    EXPECT_EQ(val.text_bytes, val_bytes);
    EXPECT_NEAR(val.bytes_per_token(), double(val_bytes) / double(want_val.size()), 1e-12);
    EXPECT_THROW(manifest_split(opt.out_dir, "test"), Error);

    LoaderOptions lo;
    lo.batch_size = 4;
    lo.seq_len = 32;
    lo.shuffle = false;
    DataLoader loader = DataLoader::from_manifest(opt.out_dir, "val", lo);
    Batch b;
    ASSERT_TRUE(loader.next(b));
    EXPECT_EQ(std::vector<int32_t>(b.inputs.begin(), b.inputs.begin() + 33 - 1),
              std::vector<int32_t>(want_val.begin(), want_val.begin() + 32));
    EXPECT_EQ(b.targets[31], want_val[32]);
}

TEST_F(PrepareTest, SplitRuleIsDeterministicAndHitsTheFraction) {
    int64_t n = 200'000, hits = 0;
    for (int64_t i = 0; i < n; ++i) hits += document_in_val(7, i, 0.2);
    // Binomial(200000, 0.2): sd = 179 documents; 5 sd either side.
    EXPECT_NEAR(static_cast<double>(hits), 0.2 * n, 5 * 179.0);
    for (int64_t i = 0; i < 1000; ++i) {
        EXPECT_EQ(document_in_val(7, i, 0.2), document_in_val(7, i, 0.2));
        EXPECT_FALSE(document_in_val(7, i, 0.0));
        EXPECT_TRUE(document_in_val(7, i, 1.0));
    }
    int differ = 0;
    for (int64_t i = 0; i < 1000; ++i) differ += document_in_val(7, i, 0.5) != document_in_val(8, i, 0.5);
    EXPECT_GT(differ, 400);  // another seed, another split
}

TEST_F(PrepareTest, SameShardsForAnyThreadCountAndBatching) {
    auto docs = make_docs(700, 2);
    ByteEncoder enc;
    set_num_threads(1);
    PrepareOptions a = options("one");
    a.batch_documents = 256;
    VectorStream sa(docs);
    PrepareResult ra = prepare_shards(sa, enc, a);
    set_num_threads(3);
    PrepareOptions b = options("three");
    b.batch_documents = 7;
    b.batch_bytes = 3000;
    VectorStream sb(docs);
    PrepareResult rb = prepare_shards(sb, enc, b);

    ASSERT_EQ(ra.train.shards.size(), rb.train.shards.size());
    ASSERT_EQ(ra.val.shards.size(), rb.val.shards.size());
    std::vector<std::string> files;
    for (const auto& p : fs::directory_iterator(a.out_dir)) files.push_back(p.path().filename().string());
    ASSERT_GT(files.size(), 3u);
    for (const auto& f : files) {
        EXPECT_EQ(read_bytes(fs::path(a.out_dir) / f), read_bytes(fs::path(b.out_dir) / f)) << f;
    }
}

TEST_F(PrepareTest, RerunReusesAndChangesInvalidate) {
    auto docs = make_docs(300, 3);
    ByteEncoder enc;
    PrepareOptions opt = options("out");
    {
        VectorStream s(docs);
        ASSERT_FALSE(prepare_shards(s, enc, opt).reused);
    }
    auto stamp = [&] {
        std::map<std::string, fs::file_time_type> t;
        for (const auto& p : fs::directory_iterator(opt.out_dir))
            t[p.path().filename().string()] = p.last_write_time();
        return t;
    };
    auto before = stamp();
    {
        VectorStream s(docs);
        PrepareResult r = prepare_shards(s, enc, opt);
        EXPECT_TRUE(r.reused);
        EXPECT_EQ(s.calls, 0) << "a reused run reads no documents";
        EXPECT_EQ(r.train.shards.size(), before.size() - 1 - (r.val.shards.size()));
        EXPECT_GT(r.train.tokens, 0);
    }
    EXPECT_EQ(stamp(), before) << "a reused run rewrote files";

    // A different mtime alone is not a change; the manifest records the new one.
    opt.inputs = {{"test", "v1"}, {"mtime_ns", 123}};
    {
        VectorStream s(docs);
        EXPECT_TRUE(prepare_shards(s, enc, opt).reused);
        EXPECT_EQ(read_manifest(opt.out_dir)["inputs"]["mtime_ns"], 123);
    }

    auto expect_rebuild = [&](const PrepareOptions& o, const TextEncoder& e, const std::string& why) {
        VectorStream s(docs);
        PrepareResult r = prepare_shards(s, e, o);
        EXPECT_FALSE(r.reused) << why;
        EXPECT_NE(r.why_rebuilt.find(why), std::string::npos) << r.why_rebuilt;
    };
    PrepareOptions changed = opt;
    changed.inputs = {{"test", "v2"}};
    expect_rebuild(changed, enc, "inputs changed");
    expect_rebuild(opt, enc, "inputs changed");  // and back
    changed = opt;
    changed.val_fraction = 0.3;
    expect_rebuild(changed, enc, "options changed");
    expect_rebuild(opt, enc, "options changed");
    changed = opt;
    changed.shard_tokens = 10'000'000;
    expect_rebuild(changed, enc, "options changed");
    // The larger shards replaced the small ones: no stale train_000001.bin is left behind.
    EXPECT_EQ(stamp().size(), 3u);  // manifest.json, train_000000.bin, val_000000.bin
    expect_rebuild(opt, enc, "options changed");
    WideEncoder wide;
    expect_rebuild(opt, wide, "tokenizer changed");
    expect_rebuild(opt, enc, "tokenizer changed");
    fs::remove(fs::path(opt.out_dir) / "train_000001.bin");
    expect_rebuild(opt, enc, "train_000001.bin is missing");
    PrepareOptions forced = opt;
    forced.force = true;
    expect_rebuild(forced, enc, "--force");
    VectorStream s(docs);
    EXPECT_TRUE(prepare_shards(s, enc, opt).reused);
}

TEST_F(PrepareTest, LargeVocabularyWritesUint32Shards) {
    std::vector<std::string> docs = {"ab", "", "c"};
    VectorStream s(docs);
    WideEncoder enc;
    PrepareOptions opt = options("out");
    opt.val_fraction = 0;
    PrepareResult r = prepare_shards(s, enc, opt);
    EXPECT_EQ(r.dtype, "uint32");
    EXPECT_TRUE(r.val.shards.empty());
    EXPECT_EQ(ShardReader::open(r.train.shards[0]).dtype(), ShardDtype::U32);
    std::vector<int32_t> want = {70299, 70000 + 'a', 70000 + 'b', 70299, 70299, 70000 + 'c'};
    EXPECT_EQ(read_split(r.train), want);
    EXPECT_EQ(read_manifest(opt.out_dir)["magic"], kShardMagicU32);
}

TEST_F(PrepareTest, FailedRunLeavesNoManifestNorTmp) {
    auto docs = make_docs(400, 4);
    ByteEncoder enc;
    PrepareOptions opt = options("out");
    {
        VectorStream s(docs);
        prepare_shards(s, enc, opt);  // a complete earlier run
    }
    opt.val_fraction = 0.1;  // so the next run does not reuse it
    VectorStream s(docs, 250);
    try {
        prepare_shards(s, enc, opt);
        ADD_FAILURE() << "no error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("doc250: broken record"), std::string::npos) << e.what();
    }
    EXPECT_FALSE(fs::exists(fs::path(opt.out_dir) / "manifest.json"));
    for (const auto& p : fs::directory_iterator(opt.out_dir)) {
        EXPECT_NE(p.path().extension(), ".tmp") << p.path();
    }
}

TEST_F(PrepareTest, EncoderWithoutEotIsRefused) {
    std::vector<std::string> docs = {"x"};
    VectorStream s(docs);
    NoEotEncoder enc;
    EXPECT_THROW(prepare_shards(s, enc, options("out")), Error);
}

TEST_F(PrepareTest, InputFilesAreHashedOnlyWhenSizeOrMtimeChanged) {
    fs::path file = dir_ / "in.txt";
    std::ofstream(file) << "abc";
    int64_t hashed = -1;
    auto d = describe_input_files({file.string()}, {}, &hashed);
    EXPECT_EQ(hashed, 1);
    EXPECT_EQ(d[0].size, 3);
    EXPECT_EQ(d[0].sha256,
              "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");  // SHA-256("abc")

    // Same path, size and mtime: the recorded hash is trusted (a bogus one proves it was not recomputed).
    InputFile known = d[0];
    known.sha256 = "recorded";
    EXPECT_EQ(describe_input_files({file.string()}, {known}, &hashed)[0].sha256, "recorded");
    EXPECT_EQ(hashed, 0);
    known.mtime_ns -= 1;
    EXPECT_EQ(describe_input_files({file.string()}, {known}, &hashed)[0].sha256, d[0].sha256);
    EXPECT_EQ(hashed, 1);

    std::ofstream(dir_ / "empty.txt").flush();
    EXPECT_EQ(sha256_file((dir_ / "empty.txt").string()),
              "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    EXPECT_THROW(describe_input_files({(dir_ / "missing.txt").string()}, {}), Error);
}

TEST_F(PrepareTest, SameInputsIgnoresOnlyMtimes) {
    nlohmann::json a = {{"files", {{{"path", "x"}, {"size", 1}, {"mtime_ns", 5}, {"sha256", "s"}}}}};
    nlohmann::json b = a;
    b["files"][0]["mtime_ns"] = 6;
    EXPECT_TRUE(same_inputs(a, b));
    b["files"][0]["sha256"] = "t";
    EXPECT_FALSE(same_inputs(a, b));
    b = a;
    b["files"][0].erase("mtime_ns");
    EXPECT_TRUE(same_inputs(a, b));
    b["extra"] = 1;
    EXPECT_FALSE(same_inputs(a, b));
}

TEST_F(PrepareTest, TextEncoderFactory) {
    EXPECT_EQ(load_text_encoder("bytes")->vocab_size(), 257);
    EXPECT_THROW(load_text_encoder("no-such-tokenizer.json"), Error);
    auto gpt2 = load_text_encoder(std::string(MSLM_FIXTURE_DIR) + "/tokenizers/gpt2.json");
    EXPECT_EQ(gpt2->vocab_size(), 4096);
    EXPECT_GE(gpt2->eot_id(), 0);  // <|endoftext|> separates documents
}
