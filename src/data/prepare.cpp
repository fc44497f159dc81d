#include "data/prepare.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <exception>
#include <filesystem>
#include <mutex>
#include <optional>
#include <regex>
#include <thread>
#include <unordered_map>

#include "core/error.h"
#include "core/thread_pool.h"
#include "data/manifest.h"
#include "data/shard.h"
#include "tokenizer/tokenizer.h"

namespace mslm {

namespace fs = std::filesystem;

namespace {

// The identifiers of the rules in prepare.h; changing a rule changes its name, which makes old
// manifests' options differ and their shards rebuild.
constexpr const char* kSplitRule = "splitmix64-per-document-v1";
constexpr const char* kEotRule = "prepended";

uint64_t splitmix64_at(uint64_t seed, uint64_t index) {
    uint64_t z = seed + (index + 1) * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// ---------------------------------------------------------------------------------------------
// Progress on stderr: a line redrawn in place on a terminal, plain lines every 10 s otherwise.

std::string human(double v, const char* unit) {
    const char* prefixes[] = {"", "k", "M", "G", "T", "P"};
    int p = 0;
    while (std::abs(v) >= 1000.0 && p < 5) {
        v /= 1000.0;
        ++p;
    }
    if (p == 0) return fmt::format("{:.0f} {}", v, unit);
    return fmt::format("{:.2f} {}{}", v, prefixes[p], unit);
}

std::string human_duration(double s) {
    auto t = static_cast<int64_t>(s + 0.5);
    if (t >= 3600) return fmt::format("{}h{:02d}m", t / 3600, (t / 60) % 60);
    if (t >= 60) return fmt::format("{}m{:02d}s", t / 60, t % 60);
    return fmt::format("{}s", t);
}

class Progress {
public:
    Progress(bool enabled, int64_t expected_bytes)
        : enabled_(enabled), tty_(::isatty(STDERR_FILENO) == 1), expected_(expected_bytes) {}

    void update(int64_t bytes, int64_t tokens, int64_t docs, bool final = false) {
        if (!enabled_) return;
        auto now = std::chrono::steady_clock::now();
        double since_last = std::chrono::duration<double>(now - last_).count();
        if (!final && since_last < (tty_ ? 0.5 : 10.0)) return;
        last_ = now;
        double elapsed = std::max(1e-9, std::chrono::duration<double>(now - start_).count());
        std::string line =
            fmt::format("prepare: {} text, {}/s, {} tokens, {}/s, {} documents, {}",
                        human(double(bytes), "B"), human(bytes / elapsed, "B"), human(double(tokens), ""),
                        human(tokens / elapsed, "tok"), human(double(docs), ""), human_duration(elapsed));
        if (!final && expected_ > 0 && bytes > 0) {
            // Text bytes against input file sizes: an estimate (markup, compression), hence "~".
            double left = std::max(0.0, double(expected_ - bytes)) / (bytes / elapsed);
            line += fmt::format(", ~{:.0f}%, ETA ~{}", std::min(100.0, 100.0 * bytes / expected_),
                                human_duration(left));
        }
        if (tty_) {
            std::fprintf(stderr, "\r%-*s%s", static_cast<int>(width_), line.c_str(), final ? "\n" : "");
            width_ = std::max(width_, line.size());
        } else {
            std::fprintf(stderr, "%s\n", line.c_str());
        }
        std::fflush(stderr);
    }

private:
    bool enabled_, tty_;
    int64_t expected_;
    std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now(), last_ = start_;
    size_t width_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Reads document batches on a thread of its own, a bounded queue ahead of the encoder.

struct DocBatch {
    std::vector<Document> docs;
    int64_t text_bytes = 0;
};

class BatchReader {
public:
    BatchReader(DocumentStream& stream, int64_t max_docs, int64_t max_bytes)
        : stream_(stream),
          max_docs_(std::max<int64_t>(1, max_docs)),
          max_bytes_(max_bytes),
          thread_([this] { run(); }) {}

    ~BatchReader() {
        {
            std::lock_guard<std::mutex> lock(mu_);
            stop_ = true;
        }
        cv_.notify_all();
        thread_.join();
    }

    // The next batch, or false at the end; rethrows what the stream threw.
    bool next(DocBatch& out) {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return !ready_.empty() || done_; });
        if (ready_.empty()) {
            if (error_) std::rethrow_exception(error_);
            return false;
        }
        out = std::move(ready_.front());
        ready_.pop_front();
        cv_.notify_all();
        return true;
    }

private:
    static constexpr size_t kQueued = 2;

    void run() {
        try {
            for (;;) {
                DocBatch batch;
                Document doc;
                while (static_cast<int64_t>(batch.docs.size()) < max_docs_ && batch.text_bytes < max_bytes_ &&
                       stream_.next(doc)) {
                    batch.text_bytes += static_cast<int64_t>(doc.text.size());
                    batch.docs.push_back(std::move(doc));
                }
                bool last =
                    static_cast<int64_t>(batch.docs.size()) < max_docs_ && batch.text_bytes < max_bytes_;
                std::unique_lock<std::mutex> lock(mu_);
                cv_.wait(lock, [&] { return ready_.size() < kQueued || stop_; });
                if (stop_) return;
                if (!batch.docs.empty()) ready_.push_back(std::move(batch));
                if (last) {
                    done_ = true;
                    cv_.notify_all();
                    return;
                }
                cv_.notify_all();
            }
        } catch (...) {
            std::lock_guard<std::mutex> lock(mu_);
            error_ = std::current_exception();
            done_ = true;
            cv_.notify_all();
        }
    }

    DocumentStream& stream_;
    int64_t max_docs_, max_bytes_;
    std::mutex mu_;
    std::condition_variable cv_;
    std::deque<DocBatch> ready_;
    bool done_ = false, stop_ = false;
    std::exception_ptr error_;
    std::thread thread_;  // last: starts once everything above exists
};

// ---------------------------------------------------------------------------------------------
// One split's shards: {dir}/{name}_000000.bin, ..., each filled to shard_tokens.

class SplitWriter {
public:
    SplitWriter(fs::path dir, std::string name, ShardDtype dtype, int64_t shard_tokens)
        : dir_(std::move(dir)), name_(std::move(name)), dtype_(dtype), shard_tokens_(shard_tokens) {}

    void write(const int32_t* tokens, int64_t n) {
        while (n > 0) {
            if (!current_) {
                std::string file = fmt::format("{}_{:06d}.bin", name_, files_.size());
                current_ = std::make_unique<ShardWriter>((dir_ / file).string(), dtype_);
                files_.push_back(file);
            }
            int64_t take = std::min(n, shard_tokens_ - current_->tokens());
            current_->write(tokens, take);
            tokens += take;
            n -= take;
            if (current_->tokens() == shard_tokens_) close_current();
        }
    }

    void finish() {
        if (current_) close_current();
    }

    nlohmann::json shards_json() const {
        nlohmann::json a = nlohmann::json::array();
        for (size_t i = 0; i < files_.size(); ++i) a.push_back({{"file", files_[i]}, {"tokens", counts_[i]}});
        return a;
    }

    std::vector<std::string> paths() const {
        std::vector<std::string> p;
        for (const auto& f : files_) p.push_back((dir_ / f).string());
        return p;
    }

    SplitResult stats;

private:
    void close_current() {
        current_->close();
        counts_.push_back(current_->tokens());
        current_.reset();
    }

    fs::path dir_;
    std::string name_;
    ShardDtype dtype_;
    int64_t shard_tokens_;
    std::unique_ptr<ShardWriter> current_;
    std::vector<std::string> files_;
    std::vector<int64_t> counts_;
};

bool is_our_output(const std::string& name) {
    static const std::regex pattern(R"(((train|val)_[0-9]{6}\.bin|manifest\.json)(\.tmp)?)");
    return std::regex_match(name, pattern);
}

// Why the manifest in `dir` cannot stand for this run, or "" when it can.
std::string reuse_mismatch(const nlohmann::json& m, const nlohmann::json& inputs,
                           const nlohmann::json& tokenizer, const nlohmann::json& options,
                           const fs::path& dir) {
    if (!same_inputs(m.value("inputs", nlohmann::json()), inputs)) return "inputs changed";
    if (m.value("tokenizer", nlohmann::json()) != tokenizer) return "tokenizer changed";
    if (m.value("options", nlohmann::json()) != options) return "options changed";
    try {
        const int64_t width = shard_token_bytes(shard_dtype_from_name(m.at("dtype").get<std::string>()));
        for (const auto& [name, split] : m.at("splits").items()) {
            for (const auto& shard : split.at("shards")) {
                fs::path p = dir / shard.at("file").get<std::string>();
                std::error_code ec;
                auto size = static_cast<int64_t>(fs::file_size(p, ec));
                if (ec) return fmt::format("{} is missing", p.string());
                if (size != kShardHeaderBytes + width * shard.at("tokens").get<int64_t>()) {
                    return fmt::format("{} has the wrong size", p.string());
                }
            }
        }
    } catch (const std::exception& e) {
        return fmt::format("manifest unreadable: {}", e.what());
    }
    return "";
}

SplitResult split_from_manifest(const nlohmann::json& m, const std::string& name, const fs::path& dir) {
    SplitResult r;
    const auto& s = m.at("splits").at(name);
    r.documents = s.at("documents").get<int64_t>();
    r.tokens = s.at("tokens").get<int64_t>();
    r.text_bytes = s.at("text_bytes").get<int64_t>();
    for (const auto& shard : s.at("shards"))
        r.shards.push_back((dir / shard.at("file").get<std::string>()).string());
    return r;
}

nlohmann::json split_json(const SplitWriter& w) {
    const auto& s = w.stats;
    return {{"documents", s.documents},
            {"tokens", s.tokens},
            {"text_bytes", s.text_bytes},
            {"bytes_per_token", s.tokens > 0 ? double(s.text_bytes) / double(s.tokens) : 0.0},
            {"shards", w.shards_json()}};
}

}  // namespace

bool document_in_val(uint64_t seed, int64_t index, double val_fraction) {
    double u = static_cast<double>(splitmix64_at(seed, static_cast<uint64_t>(index)) >> 11) * 0x1.0p-53;
    return u < val_fraction;
}

bool same_inputs(const nlohmann::json& a, const nlohmann::json& b) {
    if (a.is_object() && b.is_object()) {
        auto counted = [](const nlohmann::json& o) {
            size_t n = 0;
            for (const auto& [k, _] : o.items()) n += k != "mtime_ns";
            return n;
        };
        if (counted(a) != counted(b)) return false;
        for (const auto& [k, v] : a.items()) {
            if (k == "mtime_ns") continue;
            auto it = b.find(k);
            if (it == b.end() || !same_inputs(v, *it)) return false;
        }
        return true;
    }
    if (a.is_array() && b.is_array()) {
        if (a.size() != b.size()) return false;
        for (size_t i = 0; i < a.size(); ++i) {
            if (!same_inputs(a[i], b[i])) return false;
        }
        return true;
    }
    return a == b;
}

std::string sha256_file(const std::string& path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    MSLM_CHECK(fd >= 0, "{}: cannot open: {}", path, std::strerror(errno));
    std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
    bool ok = ctx && EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) == 1;
    std::vector<unsigned char> buf(1 << 20);
    int err = 0;
    while (ok) {
        ssize_t n = ::read(fd, buf.data(), buf.size());
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) err = errno;
        if (n <= 0) break;
        ok = EVP_DigestUpdate(ctx.get(), buf.data(), static_cast<size_t>(n)) == 1;
    }
    ::close(fd);
    MSLM_CHECK(err == 0, "{}: read failed: {}", path, std::strerror(err));
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    ok = ok && EVP_DigestFinal_ex(ctx.get(), digest, &len) == 1;
    MSLM_CHECK(ok, "{}: SHA-256 failed (OpenSSL)", path);
    std::string hex;
    for (unsigned int i = 0; i < len; ++i) hex += fmt::format("{:02x}", digest[i]);
    return hex;
}

std::vector<InputFile> describe_input_files(const std::vector<std::string>& paths,
                                            const std::vector<InputFile>& known, int64_t* hashed) {
    std::unordered_map<std::string, const InputFile*> by_path;
    for (const auto& k : known) by_path[k.path] = &k;
    std::vector<InputFile> out(paths.size());
    std::vector<size_t> to_hash;
    for (size_t i = 0; i < paths.size(); ++i) {
        struct stat st {};
        MSLM_CHECK(::stat(paths[i].c_str(), &st) == 0, "{}: cannot stat: {}", paths[i], std::strerror(errno));
        InputFile& f = out[i];
        f.path = paths[i];
        f.size = st.st_size;
        f.mtime_ns = int64_t{st.st_mtim.tv_sec} * 1'000'000'000 + st.st_mtim.tv_nsec;
        auto it = by_path.find(f.path);
        if (it != by_path.end() && it->second->size == f.size && it->second->mtime_ns == f.mtime_ns) {
            f.sha256 = it->second->sha256;
        }
        if (f.sha256.empty()) to_hash.push_back(i);
    }
    // Files are hashed whole, one per thread; a claim counter balances files of unequal sizes.
    std::atomic<size_t> next{0};
    parallel_for(std::min<int64_t>(num_threads(), static_cast<int64_t>(to_hash.size())), [&](int64_t, int64_t) {
        for (size_t j; (j = next.fetch_add(1)) < to_hash.size();) {
            out[to_hash[j]].sha256 = sha256_file(out[to_hash[j]].path);
        }
    });
    if (hashed) *hashed = static_cast<int64_t>(to_hash.size());
    return out;
}

nlohmann::json input_file_json(const InputFile& f) {
    return {{"path", f.path}, {"size", f.size}, {"mtime_ns", f.mtime_ns}, {"sha256", f.sha256}};
}

std::unique_ptr<TextEncoder> load_text_encoder(const std::string& spec) {
    if (spec == "bytes") return std::make_unique<ByteEncoder>();
    return std::make_unique<Tokenizer>(Tokenizer::load(spec));
}

PrepareResult prepare_shards(DocumentStream& docs, const TextEncoder& encoder, const PrepareOptions& opt) {
    const auto t0 = std::chrono::steady_clock::now();
    MSLM_CHECK(!opt.out_dir.empty(), "data prepare: no output directory");
    MSLM_CHECK(opt.val_fraction >= 0.0 && opt.val_fraction <= 1.0,
               "data prepare: val fraction {} outside [0, 1]", opt.val_fraction);
    MSLM_CHECK(opt.shard_tokens > 0 && opt.shard_tokens <= kShardMaxTokens,
               "data prepare: shard size {} tokens outside [1, {}] (llm.c's int32 count)", opt.shard_tokens,
               kShardMaxTokens);
    const int64_t vocab = encoder.vocab_size();
    const int32_t eot = encoder.eot_id();
    MSLM_CHECK(eot >= 0 && eot < vocab,
               "data prepare: the tokenizer has no end-of-text token (id {}); shards need one "
               "to separate documents",
               eot);
    const ShardDtype dtype = shard_dtype_for_vocab(vocab);

    const fs::path dir(opt.out_dir);
    const std::string manifest_file = (dir / "manifest.json").string();
    const nlohmann::json tokenizer = {
        {"fingerprint", encoder.fingerprint()}, {"vocab_size", vocab}, {"eot_id", eot}};
    const nlohmann::json options = {{"val_fraction", opt.val_fraction},
                                    {"shard_tokens", opt.shard_tokens},
                                    {"seed", opt.seed},
                                    {"split_rule", kSplitRule},
                                    {"eot", kEotRule}};

    PrepareResult result;
    result.manifest_path = manifest_file;
    result.dtype = std::string(shard_dtype_name(dtype));

    std::error_code ec;
    if (opt.force) {
        result.why_rebuilt = "--force";
    } else if (!fs::exists(manifest_file, ec)) {
        result.why_rebuilt = "no manifest";
    } else {
        std::optional<nlohmann::json> old;
        try {
            old = read_manifest(manifest_file);
        } catch (const Error& e) {
            result.why_rebuilt = e.what();
        }
        if (old) result.why_rebuilt = reuse_mismatch(*old, opt.inputs, tokenizer, options, dir);
        if (old && result.why_rebuilt.empty()) {
            if (old->at("inputs") != opt.inputs) {  // same content, newer mtimes: record them
                (*old)["inputs"] = opt.inputs;
                write_json_atomic(manifest_file, *old);
            }
            result.reused = true;
            result.train = split_from_manifest(*old, "train", dir);
            result.val = split_from_manifest(*old, "val", dir);
            result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            return result;
        }
    }

    // Out with the old output, manifest first: a directory without a manifest is incomplete.
    fs::create_directories(dir, ec);
    MSLM_CHECK(!ec, "{}: cannot create the directory: {}", dir.string(), ec.message());
    fs::remove(manifest_file, ec);
    for (const auto& entry : fs::directory_iterator(dir)) {
        if (entry.is_regular_file() && is_our_output(entry.path().filename().string()))
            fs::remove(entry.path());
    }

    SplitWriter train(dir, "train", dtype, opt.shard_tokens), val(dir, "val", dtype, opt.shard_tokens);
    Progress progress(opt.progress, opt.expected_text_bytes);
    int64_t doc_index = 0, total_bytes = 0, total_tokens = 0;
    std::vector<std::vector<int32_t>> ids;
    {
        BatchReader reader(docs, opt.batch_documents, opt.batch_bytes);
        DocBatch batch;
        while (reader.next(batch)) {
            const auto n = static_cast<int64_t>(batch.docs.size());
            if (static_cast<int64_t>(ids.size()) < n) ids.resize(static_cast<size_t>(n));
            // Documents are claimed one at a time: their sizes vary too much for fixed ranges.
            std::atomic<int64_t> next{0};
            parallel_for(std::min<int64_t>(num_threads(), n), [&](int64_t, int64_t) {
                for (int64_t i; (i = next.fetch_add(1)) < n;) {
                    auto& v = ids[static_cast<size_t>(i)];
                    v.clear();
                    v.push_back(eot);
                    encoder.encode_append(batch.docs[static_cast<size_t>(i)].text, v);
                }
            });
            for (int64_t i = 0; i < n; ++i, ++doc_index) {
                auto& v = ids[static_cast<size_t>(i)];
                SplitWriter& w = document_in_val(opt.seed, doc_index, opt.val_fraction) ? val : train;
                w.write(v.data(), static_cast<int64_t>(v.size()));
                const auto bytes = static_cast<int64_t>(batch.docs[static_cast<size_t>(i)].text.size());
                w.stats.documents += 1;
                w.stats.tokens += static_cast<int64_t>(v.size());
                w.stats.text_bytes += bytes;
                total_bytes += bytes;
                total_tokens += static_cast<int64_t>(v.size());
                if (v.capacity() > (size_t{1} << 22)) std::vector<int32_t>().swap(v);  // one huge document
            }
            progress.update(total_bytes, total_tokens, doc_index);
        }
    }
    train.finish();
    val.finish();
    progress.update(total_bytes, total_tokens, doc_index, true);

    nlohmann::json manifest = {{"format", kManifestFormat},
                               {"format_version", kManifestVersion},
                               {"inputs", opt.inputs},
                               {"tokenizer", tokenizer},
                               {"options", options},
                               {"dtype", shard_dtype_name(dtype)},
                               {"magic", dtype == ShardDtype::U16 ? kShardMagicU16 : kShardMagicU32},
                               {"version", dtype == ShardDtype::U16 ? kShardVersionU16 : kShardVersionU32},
                               {"eot", kEotRule},
                               {"stream", docs.summary()},
                               {"splits", {{"train", split_json(train)}, {"val", split_json(val)}}},
                               {"documents", doc_index},
                               {"tokens", total_tokens},
                               {"text_bytes", total_bytes}};
    write_json_atomic(manifest_file, manifest);

    result.train = train.stats;
    result.train.shards = train.paths();
    result.val = val.stats;
    result.val.shards = val.paths();
    result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return result;
}

}  // namespace mslm
