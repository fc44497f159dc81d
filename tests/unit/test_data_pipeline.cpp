// The whole data pipeline on the real corpora in ../shared/data: sources → mixture → HF-parity
// tokenizer → shards + manifest, then the loader reads the shards back; the token stream must be
// exactly what an independent pass (same mixture, same tokenizer, the documented split rule)
// produces.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>

#include "data/loader.h"
#include "data/manifest.h"
#include "data/mixture.h"
#include "data/prepare.h"
#include "tokenizer/tokenizer.h"

using namespace mslm;

namespace {

std::string data_dir() {
    const char* env = std::getenv("MSLM_DATA_DIR");
    return env ? env : MSLM_DATA_DIR;
}

// Every token of a split in order, read through the loader's sequential windows: window k covers
// tokens [kT, kT + T + 1), so the inputs of all windows followed by the last target give the
// stream up to the last full window.
std::vector<int32_t> read_back(const std::string& dir, const std::string& split, int64_t T) {
    LoaderOptions lo;
    lo.batch_size = 4;
    lo.seq_len = T;
    lo.shuffle = false;
    DataLoader loader = DataLoader::from_manifest(dir, split, lo);
    std::vector<int32_t> out;
    Batch b;
    int32_t last = -1;
    while (loader.next(b)) {
        out.insert(out.end(), b.inputs.begin(), b.inputs.end());
        last = b.targets.back();
    }
    out.push_back(last);
    return out;
}

}  // namespace

TEST(DataPipeline, SharedCorporaRoundTripThroughShardsAndLoader) {
    const std::string dd = data_dir();
    if (!std::filesystem::exists(dd + "/tinyshakespeare.txt")) GTEST_SKIP() << "no corpora at " << dd;
    const std::vector<SourceSpec> specs = {
        parse_source_spec(dd + "/tinyshakespeare.txt:split=block,weight=1"),
        parse_source_spec(dd + "/wikitext2-valid.txt:split=line,weight=2"),
        parse_source_spec(dd + "/wikitext2-test.txt:split=line,weight=2"),
    };
    MixtureOptions mo;
    mo.seed = 7;
    mo.stopping = StoppingStrategy::FirstExhausted;
    Tokenizer tok = Tokenizer::load(std::string(MSLM_FIXTURE_DIR) + "/tokenizers/gpt2.json");
    ASSERT_GE(tok.eot_id(), 0);

    PrepareOptions po;
    po.out_dir = testing::TempDir() + "/mslm_pipeline_shards_" + std::to_string(getpid());  // one per process (ctest -j)
    po.val_fraction = 0.02;
    po.shard_tokens = 50'000;  // several shards, documents spanning shard boundaries
    po.seed = 3;
    po.force = true;
    po.progress = false;
    PrepareResult res = prepare_from_sources(specs, mo, tok, po);
    EXPECT_FALSE(res.reused);
    EXPECT_GT(res.train.shards.size(), 3u);

    // The independent pass.
    Mixture mix(specs, mo);
    std::vector<int32_t> train, val;
    int64_t train_bytes = 0;
    Document doc;
    for (int64_t i = 0; mix.next(doc); ++i) {
        std::vector<int32_t>& dst = document_in_val(po.seed, i, po.val_fraction) ? val : train;
        dst.push_back(tok.eot_id());
        tok.encode_append(doc.text, dst);
        if (&dst == &train) train_bytes += static_cast<int64_t>(doc.text.size());
    }
    ASSERT_EQ(res.train.tokens, static_cast<int64_t>(train.size()));
    ASSERT_EQ(res.val.tokens, static_cast<int64_t>(val.size()));
    EXPECT_EQ(res.train.text_bytes, train_bytes);

    const int64_t T = 127;
    std::vector<int32_t> got = read_back(po.out_dir, "train", T);
    // The loader covers the stream up to its last full window of T + 1 tokens.
    const size_t covered = static_cast<size_t>((static_cast<int64_t>(train.size()) - 1) / T * T + 1);
    ASSERT_EQ(got.size(), covered);
    EXPECT_TRUE(std::equal(got.begin(), got.end(), train.begin())) << "train stream differs";
    std::vector<int32_t> got_val = read_back(po.out_dir, "val", T);
    const size_t covered_val = static_cast<size_t>((static_cast<int64_t>(val.size()) - 1) / T * T + 1);
    ASSERT_EQ(got_val.size(), covered_val);
    EXPECT_TRUE(std::equal(got_val.begin(), got_val.end(), val.begin())) << "val stream differs";

    // A second run with the same inputs reuses the shards.
    po.force = false;
    EXPECT_TRUE(prepare_from_sources(specs, mo, tok, po).reused);
}
