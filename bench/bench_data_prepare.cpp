// Throughput and peak memory of `data prepare`'s core (prepare_shards) with the byte encoder on a
// generated corpus, streamed (never held whole). Prints a markdown row for docs/PERFORMANCE.md.
//   bench_data_prepare [--gb 1] [--out DIR] [--threads 0] [--shard-tokens 100000000] [--keep]
// Anchors measured in the same run: the generator alone (the ceiling set by the document
// source) and a plain sequential write of as many bytes as the shards hold (the disk's ceiling).
// Peak RSS is the process high-water mark (getrusage); run it at two sizes to see it does not grow.
#include <fmt/format.h>
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "core/rng.h"
#include "core/thread_pool.h"
#include "data/prepare.h"

using namespace mslm;
namespace fs = std::filesystem;

namespace {

// English-looking text: documents of 200..8000 bytes cut from an 8 MiB pool of random words.
class GeneratedCorpus final : public DocumentStream {
public:
    explicit GeneratedCorpus(int64_t total_bytes) : left_(total_bytes), rng_(1) {
        const char* words[] = {"the",   "of",    "and",       "to",        "in",    "a",     "is",
                               "that",  "for",   "it",        "as",        "was",   "with",  "be",
                               "by",    "on",    "not",       "he",        "this",  "are",   "or",
                               "his",   "from",  "at",        "which",     "state", "space", "model",
                               "token", "mamba", "selective", "attention", "hybrid"};
        pool_.reserve((8u << 20) + 16);
        while (pool_.size() < (8u << 20)) {
            pool_ += words[rng_.below(std::size(words))];
            pool_ += rng_.below(12) == 0 ? ".\n" : " ";
        }
    }
    bool next(Document& doc) override {
        if (left_ <= 0) return false;
        auto len = static_cast<int64_t>(200 + rng_.below(7801));
        len = std::min(len, left_);
        auto at = static_cast<size_t>(rng_.below(pool_.size() - static_cast<size_t>(len)));
        doc.text.assign(pool_, at, static_cast<size_t>(len));
        doc.origin = "generated";
        left_ -= len;
        return true;
    }

private:
    int64_t left_;
    Rng rng_;
    std::string pool_;
};

double seconds_since(std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

double peak_rss_mb() {
    rusage u{};
    getrusage(RUSAGE_SELF, &u);
    return u.ru_maxrss / 1024.0;  // kB on Linux
}

}  // namespace

int main(int argc, char** argv) {
    double gb = 1.0;
    std::string out = (fs::temp_directory_path() / fmt::format("bench_data_prepare_{}", getpid())).string();
    int threads = 0;
    int64_t shard_tokens = 100'000'000;
    bool keep = false;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        auto value = [&] { return i + 1 < argc ? std::string(argv[++i]) : std::string(); };
        if (a == "--gb") {
            gb = std::stod(value());
        } else if (a == "--out") {
            out = value();
        } else if (a == "--threads") {
            threads = std::stoi(value());
        } else if (a == "--shard-tokens") {
            shard_tokens = std::stoll(value());
        } else if (a == "--keep") {
            keep = true;
        } else {
            std::fprintf(
                stderr,
                "usage: bench_data_prepare [--gb 1] [--out DIR] [--threads 0] [--shard-tokens N] [--keep]\n");
            return 2;
        }
    }
    if (threads > 0) set_num_threads(threads);
    const auto total = static_cast<int64_t>(gb * 1e9);

    // Anchor 1: the generator alone.
    double gen_s;
    {
        GeneratedCorpus corpus(total);
        Document doc;
        auto t = std::chrono::steady_clock::now();
        while (corpus.next(doc)) {
        }
        gen_s = seconds_since(t);
    }
    const double rss_before = peak_rss_mb();

    PrepareOptions opt;
    opt.out_dir = out;
    opt.val_fraction = 0.005;
    opt.shard_tokens = shard_tokens;
    opt.force = true;
    opt.expected_text_bytes = total;
    GeneratedCorpus corpus(total);
    ByteEncoder enc;
    auto t = std::chrono::steady_clock::now();
    PrepareResult r = prepare_shards(corpus, enc, opt);
    const double prep_s = seconds_since(t);
    const double rss_after = peak_rss_mb();
    const int64_t tokens = r.train.tokens + r.val.tokens;
    const int64_t shard_bytes = 2 * tokens;

    // Anchor 2: one plain sequential write of the shards' bytes, synced, as the shards are.
    double write_s;
    {
        std::string path = out + "/anchor.bin";
        std::vector<char> buf(1 << 20, 'x');
        std::FILE* f = std::fopen(path.c_str(), "wb");
        auto t2 = std::chrono::steady_clock::now();
        for (int64_t left = shard_bytes; left > 0; left -= static_cast<int64_t>(buf.size())) {
            std::fwrite(buf.data(), 1, std::min<size_t>(buf.size(), static_cast<size_t>(left)), f);
        }
        std::fflush(f);
        fsync(fileno(f));
        std::fclose(f);
        write_s = seconds_since(t2);
        fs::remove(path);
    }
    if (!keep) fs::remove_all(out);

    const double text_mb = (r.train.text_bytes + r.val.text_bytes) / 1e6;
    fmt::print(
        "| text | documents | threads | prepare MB/s | prepare Mtok/s | generator MB/s | raw write MB/s "
        "(shard bytes) "
        "| peak RSS MB (before prepare → after) |\n");
    fmt::print("|---|---|---|---|---|---|---|---|\n");
    fmt::print("| {:.2f} GB | {} | {} | {:.1f} | {:.2f} | {:.0f} | {:.0f} | {:.0f} → {:.0f} |\n",
               text_mb / 1e3, r.train.documents + r.val.documents, num_threads(), text_mb / prep_s,
               tokens / prep_s / 1e6, text_mb / gen_s, shard_bytes / 1e6 / write_s, rss_before, rss_after);
    return 0;
}
