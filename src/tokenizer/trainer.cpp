#include "tokenizer/trainer.h"

#include <unistd.h>
#include <utf8proc.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "core/error.h"
#include "core/thread_pool.h"
#include "core/utf8.h"
#include "tokenizer/pretokenizer.h"

namespace mslm {
namespace {

// ---- byte-level alphabet ---------------------------------------------------------------------

uint32_t byte_level_code_point(unsigned char b) {
    if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE) return b;
    uint32_t n = 0;  // rank of b among the 68 bytes that do not stand for themselves
    for (unsigned c = 0; c < b; ++c) {
        if (!((c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || c >= 0xAE)) ++n;
    }
    return 0x100 + n;
}

std::string utf8_of(uint32_t cp) {
    std::string s;
    if (cp < 0x80) {
        s += static_cast<char>(cp);
    } else if (cp < 0x800) {
        s += static_cast<char>(0xC0 | (cp >> 6));
        s += static_cast<char>(0x80 | (cp & 0x3F));
    } else {  // the byte-level alphabet stops at U+0143
        s += static_cast<char>(0xE0 | (cp >> 12));
        s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        s += static_cast<char>(0x80 | (cp & 0x3F));
    }
    return s;
}

const std::vector<std::string>& byte_level_symbols() {
    static const std::vector<std::string> table = [] {
        std::vector<std::string> t(256);
        for (int b = 0; b < 256; ++b) t[b] = utf8_of(byte_level_code_point(static_cast<unsigned char>(b)));
        return t;
    }();
    return table;
}

// ---- reading --------------------------------------------------------------------------------

bool is_ascii_space(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

// A chunk may end at c when text[c] is a space and text[c-1] an ASCII character that is not
// whitespace. No piece of either pattern contains "non-space, space" (a space only ever starts a
// piece or sits in a whitespace run), and no alternative tried at or before c-1 behaves
// differently on seeing a space or the end of the text: letters, digits, punctuation runs and
// [\r\n]* all stop at both, and no whitespace run can reach c from before it. NFC never composes
// across a space either. So pre-tokenizing the two sides apart gives the whole text's pieces.
bool is_safe_cut(const std::string& text, size_t c) {
    return c > 0 && c < text.size() && text[c] == ' ' && static_cast<unsigned char>(text[c - 1]) < 0x80 &&
           !is_ascii_space(text[c - 1]);
}

// Streams one file as chunks of valid UTF-8 of about chunk_bytes, cut at safe points.
class ChunkReader {
public:
    ChunkReader(const std::string& path, size_t chunk_bytes, const std::vector<std::string>& specials)
        : path_(path), chunk_bytes_(chunk_bytes) {
        // A cut is before a space, so only a special token holding one can straddle it.
        for (const std::string& s : specials) {
            if (s.find(' ') != std::string::npos) spaced_specials_.push_back(s);
        }
        file_ = std::fopen(path.c_str(), "rb");
        MSLM_CHECK(file_, "{}: cannot open: {}", path, std::strerror(errno));
        block_.resize(chunk_bytes_);
    }
    ~ChunkReader() {
        if (file_) std::fclose(file_);
    }
    ChunkReader(const ChunkReader&) = delete;
    ChunkReader& operator=(const ChunkReader&) = delete;

    // The next chunk, or false at the end of the file.
    bool next(std::string& chunk) {
        while (!eof_ && text_.size() < chunk_bytes_) read_block();
        if (text_.empty()) return false;
        size_t cut = find_cut();
        chunk.assign(text_, 0, cut);
        text_.erase(0, cut);
        return true;
    }
    int64_t bytes_read() const { return bytes_read_; }

private:
    void read_block() {
        size_t got = std::fread(block_.data(), 1, block_.size(), file_);
        MSLM_CHECK(!std::ferror(file_), "{}: read error: {}", path_, std::strerror(errno));
        bytes_read_ += static_cast<int64_t>(got);
        eof_ = got < block_.size();
        pending_.append(block_.data(), got);
        size_t used = append_utf8_replacing(pending_, eof_, text_);
        pending_.erase(0, used);
    }

    // Where the next chunk ends: the last safe cut before chunk_bytes, else the first one after
    // it. Text with no safe cut in 16 chunks (no ASCII spaces at all) is cut at a character
    // boundary instead, the one place where chunking can change a piece.
    size_t find_cut() {
        if (eof_ && text_.size() <= chunk_bytes_) return text_.size();
        for (size_t c = std::min(chunk_bytes_, text_.size() - 1); c > 0; --c) {
            if (is_cut(c)) return c;
        }
        size_t from = chunk_bytes_;
        for (;;) {
            for (size_t c = from; c < text_.size(); ++c) {
                if (is_cut(c)) return c;
            }
            if (eof_) return text_.size();
            if (text_.size() >= 16 * chunk_bytes_) {
                size_t c = chunk_bytes_;
                while (c > 0 && (static_cast<unsigned char>(text_[c]) & 0xC0) == 0x80) --c;
                return c > 0 ? c : text_.size();
            }
            from = std::max(from, text_.size());
            read_block();
        }
    }

    bool is_cut(size_t c) const {
        if (!is_safe_cut(text_, c)) return false;
        for (const std::string& s : spaced_specials_) {
            for (size_t start = c >= s.size() ? c - s.size() + 1 : 0; start < c; ++start) {
                // Text not read yet may complete an occurrence that starts here.
                std::string_view have = std::string_view(text_).substr(start, s.size());
                if (have == std::string_view(s).substr(0, eof_ ? s.size() : have.size())) return false;
            }
        }
        return true;
    }

    std::string path_;
    size_t chunk_bytes_;
    std::vector<std::string> spaced_specials_;
    std::FILE* file_ = nullptr;
    std::string block_;    // raw read buffer
    std::string pending_;  // raw bytes of an incomplete UTF-8 sequence at the end of the last block
    std::string text_;     // decoded text not yet returned
    bool eof_ = false;
    int64_t bytes_read_ = 0;
};

std::string nfc(std::string_view text) {
    utf8proc_uint8_t* out = nullptr;
    utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()),
                                      static_cast<utf8proc_ssize_t>(text.size()), &out,
                                      static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
    MSLM_CHECK(n >= 0, "NFC normalisation failed: {}", utf8proc_errmsg(n));
    std::string result(reinterpret_cast<const char*>(out), static_cast<size_t>(n));
    std::free(out);
    return result;
}

// ---- progress -------------------------------------------------------------------------------

// A bar redrawn in place on a terminal, a plain line every 10 s otherwise, nothing when disabled.
class Progress {
public:
    explicit Progress(bool enabled) : enabled_(enabled), tty_(enabled && isatty(STDERR_FILENO)) {}

    void update(std::string_view phase, int64_t done, int64_t total, bool megabytes, bool final = false) {
        if (!enabled_) return;
        auto now = std::chrono::steady_clock::now();
        auto interval = tty_ ? std::chrono::milliseconds(100) : std::chrono::milliseconds(10000);
        if (!final && phase == last_phase_ && now - last_ < interval) return;
        last_ = now;
        last_phase_ = phase;
        double frac = total > 0 ? std::min(1.0, static_cast<double>(done) / static_cast<double>(total)) : 1.0;
        std::string amount = megabytes ? fmt::format("{:.1f}/{:.1f} MB", done / 1e6, total / 1e6)
                                       : fmt::format("{}/{}", done, total);
        if (tty_) {
            constexpr int kWidth = 30;
            int filled = static_cast<int>(frac * kWidth);
            std::string bar = std::string(filled, '#') + std::string(kWidth - filled, '.');
            fmt::print(stderr, "\r{:<8} [{}] {:3d}% {}\033[K", phase, bar, static_cast<int>(frac * 100),
                       amount);
            if (final) std::fputc('\n', stderr);
        } else {
            fmt::print(stderr, "{}: {}% {}\n", phase, static_cast<int>(frac * 100), amount);
        }
        std::fflush(stderr);
    }

private:
    bool enabled_, tty_;
    std::chrono::steady_clock::time_point last_{};
    std::string_view last_phase_;
};

// ---- counting pre-tokens --------------------------------------------------------------------

struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using CountTable = std::unordered_map<std::string, int64_t, StringHash, std::equal_to<>>;

// What one table entry is taken to cost: key bytes plus node, hash, bucket and string overhead.
size_t entry_bytes(const std::string& key) {
    return key.size() + 64;
}

// Chunks counted per batch, a constant so that the table is pruned at the same points for any
// thread count.
constexpr size_t kChunksPerBatch = 32;

class PretokenCounter {
public:
    PretokenCounter(const BpeTrainerOptions& opts)
        : splitter_(opts.pretokenizer == BpeTrainerOptions::Pretokenizer::Llama3 ? kLlama3Pattern
                                                                                 : kGpt2Pattern),
          normalize_(opts.pretokenizer == BpeTrainerOptions::Pretokenizer::Llama3),
          specials_(opts.special_tokens),
          max_bytes_(opts.max_memory_bytes) {}

    // Counts the pre-tokens of the chunks (each chunk pre-tokenized on its own) in parallel.
    void add_batch(std::vector<std::string>& chunks) {
        std::mutex mu;
        parallel_for(static_cast<int64_t>(chunks.size()), [&](int64_t begin, int64_t end) {
            std::unordered_map<std::string_view, int64_t> local;
            std::deque<std::string> normalized;  // NFC text the pieces point into (stable addresses)
            std::vector<std::string_view> pieces;
            int64_t n_pieces = 0;
            for (int64_t i = begin; i < end; ++i) {
                pieces.clear();
                for (std::string_view segment : split_specials(chunks[i])) {
                    if (normalize_) segment = normalized.emplace_back(nfc(segment));
                    splitter_.split(segment, pieces);
                }
                n_pieces += static_cast<int64_t>(pieces.size());
                for (std::string_view p : pieces) ++local[p];
            }
            std::lock_guard<std::mutex> lock(mu);
            pretokens_ += n_pieces;
            for (const auto& [piece, count] : local) {
                auto it = table_.find(piece);
                if (it != table_.end()) {
                    it->second += count;
                } else {
                    auto [ins, ok] = table_.emplace(std::string(piece), count);
                    table_bytes_ += entry_bytes(ins->first);
                }
            }
        });
        if (table_bytes_ > max_bytes_) prune();
    }

    CountTable& table() { return table_; }
    int64_t pretokens() const { return pretokens_; }
    int64_t pruned() const { return pruned_; }

private:
    // The text between occurrences of special tokens (leftmost first, the longest on a tie), as
    // the tokenizer splits them out before normalizing and pre-tokenizing: their text is never
    // counted, and the text around them is pre-tokenized apart.
    std::vector<std::string_view> split_specials(std::string_view text) const {
        constexpr size_t npos = std::string_view::npos;
        std::vector<std::string_view> segments;
        std::vector<size_t> next;  // next occurrence of each special token at or after `pos`
        for (const std::string& special : specials_) next.push_back(text.find(special));
        size_t pos = 0;
        for (;;) {
            size_t start = npos, len = 0;
            for (size_t k = 0; k < specials_.size(); ++k) {
                if (next[k] < pos) next[k] = text.find(specials_[k], pos);
                if (next[k] == npos) continue;
                if (next[k] < start || (next[k] == start && specials_[k].size() > len)) {
                    start = next[k];
                    len = specials_[k].size();
                }
            }
            if (start == npos) {
                if (pos < text.size()) segments.push_back(text.substr(pos));
                return segments;
            }
            if (start > pos) segments.push_back(text.substr(pos, start - pos));
            pos = start + len;
        }
    }

    // Drops the entries with the smallest counts until the table fits in half the budget, so
    // that pruning happens rarely and its cut depends only on the table's contents.
    void prune() {
        std::map<int64_t, size_t> bytes_by_count;
        for (const auto& [key, count] : table_) bytes_by_count[count] += entry_bytes(key);
        size_t remaining = table_bytes_;
        int64_t threshold = 0;
        for (const auto& [count, bytes] : bytes_by_count) {
            if (remaining <= max_bytes_ / 2) break;
            remaining -= bytes;
            threshold = count;
        }
        pruned_ += static_cast<int64_t>(
            std::erase_if(table_, [&](const auto& entry) { return entry.second <= threshold; }));
        table_bytes_ = remaining;
    }

    RegexSplitter splitter_;
    bool normalize_;
    std::vector<std::string> specials_;
    size_t max_bytes_;
    CountTable table_;
    size_t table_bytes_ = 0;
    int64_t pretokens_ = 0;
    int64_t pruned_ = 0;
};

// ---- merge learning -------------------------------------------------------------------------

using Pair = uint64_t;  // (left id << 32) | right id: comparing keys compares (left, right)
Pair make_pair_key(int32_t a, int32_t b) {
    return static_cast<uint64_t>(a) << 32 | static_cast<uint32_t>(b);
}
int32_t pair_left(Pair p) {
    return static_cast<int32_t>(p >> 32);
}
int32_t pair_right(Pair p) {
    return static_cast<int32_t>(p & 0xffffffffu);
}

struct Word {
    std::vector<int32_t> symbols;
    int64_t count;
};

struct PairStats {
    int64_t count = 0;            // occurrences in the corpus (overlapping ones counted, as in "aaa")
    std::vector<uint32_t> words;  // words that may hold the pair; may be stale, never incomplete
};

// Max-heap entry with lazy updates: an entry whose count no longer matches the pair's is
// refreshed when it surfaces, and a pair whose count rises gets a fresh entry.
struct HeapEntry {
    int64_t count;
    Pair pair;
};
// Orders the heap: higher count first, then the smaller (left id, right id), as HF's BpeTrainer.
bool lower_priority(const HeapEntry& x, const HeapEntry& y) {
    return x.count != y.count ? x.count < y.count : x.pair > y.pair;
}

class MergeLearner {
public:
    MergeLearner(const BpeTrainerOptions& opts, Progress& progress) : opts_(opts), progress_(progress) {
        for (const std::string& s : opts.special_tokens) add_token(s);
        // The 256 byte-level symbols in code point order, as HF's trainer sorts its alphabet.
        std::vector<std::string> alphabet = byte_level_symbols();
        std::sort(alphabet.begin(), alphabet.end(),
                  [](const std::string& x, const std::string& y) { return code_point(x) < code_point(y); });
        for (const std::string& s : alphabet) add_token(s);
        for (int b = 0; b < 256; ++b) byte_id_[b] = token_id_.at(byte_level_symbols()[b]);
    }

    // Takes the pre-token counts (the table is emptied as it goes, to hold one copy at a time).
    // Word order does not matter: pair counts are sums and ties are broken by ids.
    void set_words(CountTable& table) {
        words_.reserve(table.size());
        for (auto it = table.begin(); it != table.end(); it = table.erase(it)) {
            Word w{{}, it->second};
            w.symbols.reserve(it->first.size());
            for (unsigned char b : it->first) w.symbols.push_back(byte_id_[b]);
            words_.push_back(std::move(w));
        }
    }

    void learn() {
        for (uint32_t w = 0; w < words_.size(); ++w) {
            const Word& word = words_[w];
            for (size_t i = 0; i + 1 < word.symbols.size(); ++i) {
                PairStats& ps = pairs_[make_pair_key(word.symbols[i], word.symbols[i + 1])];
                ps.count += word.count;
                if (ps.words.empty() || ps.words.back() != w) ps.words.push_back(w);
            }
        }
        for (const auto& [pair, ps] : pairs_) heap_.push_back({ps.count, pair});
        std::make_heap(heap_.begin(), heap_.end(), lower_priority);

        const int64_t target = opts_.vocab_size - static_cast<int64_t>(tokens_.size());
        while (static_cast<int64_t>(tokens_.size()) < opts_.vocab_size && !heap_.empty()) {
            std::pop_heap(heap_.begin(), heap_.end(), lower_priority);
            HeapEntry top = heap_.back();
            heap_.pop_back();
            auto it = pairs_.find(top.pair);
            if (it == pairs_.end()) continue;  // merged already
            if (it->second.count != top.count) {
                push(top.pair, it->second.count);
                continue;
            }
            if (top.count < 1 || top.count < opts_.min_frequency) break;
            merge(it);
            progress_.update("merging", static_cast<int64_t>(merges_.size()), target, false);
        }
        progress_.update("merging", static_cast<int64_t>(merges_.size()), target, false, true);
    }

    const std::vector<std::string>& tokens() const { return tokens_; }
    const std::vector<std::pair<int32_t, int32_t>>& merges() const { return merges_; }
    int64_t n_words() const { return static_cast<int64_t>(words_.size()); }

private:
    static uint32_t code_point(const std::string& s) {
        utf8proc_int32_t cp = 0;
        utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(s.data()),
                         static_cast<utf8proc_ssize_t>(s.size()), &cp);
        return static_cast<uint32_t>(cp);
    }

    // Id of `s`, added to the vocabulary when new (two merges can spell the same string, e.g.
    // "ab"+"c" and "a"+"bc"; they share the id, as in HF's trainer).
    int32_t add_token(const std::string& s) {
        auto [it, inserted] = token_id_.emplace(s, static_cast<int32_t>(tokens_.size()));
        if (inserted) tokens_.push_back(s);
        return it->second;
    }

    void push(Pair pair, int64_t count) {
        if (count <= 0) return;
        heap_.push_back({count, pair});
        std::push_heap(heap_.begin(), heap_.end(), lower_priority);
    }

    void change(int32_t a, int32_t b, int64_t delta, uint32_t w) {
        PairStats& ps = pairs_[make_pair_key(a, b)];
        ps.count += delta;
        if (delta > 0) {
            if (ps.words.empty() || ps.words.back() != w) ps.words.push_back(w);
            increased_.push_back(make_pair_key(a, b));
        }
    }

    // Merges every occurrence of the pair, left to right without overlap ("aaa" -> "aa a"), and
    // updates the counts of the neighbouring pairs.
    void merge(std::unordered_map<Pair, PairStats>::iterator it) {
        const int32_t a = pair_left(it->first), b = pair_right(it->first);
        const int32_t x = add_token(tokens_[a] + tokens_[b]);
        merges_.emplace_back(a, b);
        std::vector<uint32_t> where = std::move(it->second.words);
        std::sort(where.begin(), where.end());
        where.erase(std::unique(where.begin(), where.end()), where.end());
        increased_.clear();
        for (uint32_t w : where) {
            std::vector<int32_t>& s = words_[w].symbols;
            const int64_t count = words_[w].count;
            size_t out = 0;
            for (size_t i = 0; i < s.size();) {
                if (i + 1 < s.size() && s[i] == a && s[i + 1] == b) {
                    if (out > 0) {
                        change(s[out - 1], a, -count, w);
                        change(s[out - 1], x, count, w);
                    }
                    if (i + 2 < s.size()) {
                        change(b, s[i + 2], -count, w);
                        change(x, s[i + 2], count, w);
                    }
                    s[out++] = x;
                    i += 2;
                } else {
                    s[out++] = s[i++];
                }
            }
            s.resize(out);
        }
        pairs_.erase(make_pair_key(a, b));  // after the loop: "aaa" decrements (a, a) on the way
        std::sort(increased_.begin(), increased_.end());
        increased_.erase(std::unique(increased_.begin(), increased_.end()), increased_.end());
        for (Pair p : increased_) push(p, pairs_[p].count);
    }

    const BpeTrainerOptions& opts_;
    Progress& progress_;
    std::vector<std::string> tokens_;  // id -> token
    std::unordered_map<std::string, int32_t> token_id_;
    int32_t byte_id_[256] = {};
    std::vector<Word> words_;
    std::unordered_map<Pair, PairStats> pairs_;
    std::vector<HeapEntry> heap_;
    std::vector<std::pair<int32_t, int32_t>> merges_;
    std::vector<Pair> increased_;
};

// ---- output ---------------------------------------------------------------------------------

nlohmann::ordered_json byte_level_json(bool add_prefix_space, bool use_regex) {
    return {{"type", "ByteLevel"},
            {"add_prefix_space", add_prefix_space},
            {"trim_offsets", true},
            {"use_regex", use_regex}};
}

nlohmann::ordered_json tokenizer_json(const BpeTrainerOptions& opts, const MergeLearner& learner) {
    using ojson = nlohmann::ordered_json;
    const bool llama3 = opts.pretokenizer == BpeTrainerOptions::Pretokenizer::Llama3;
    ojson doc;
    doc["version"] = "1.0";
    doc["truncation"] = nullptr;
    doc["padding"] = nullptr;
    doc["added_tokens"] = ojson::array();
    for (size_t i = 0; i < opts.special_tokens.size(); ++i) {
        doc["added_tokens"].push_back({{"id", i},
                                       {"content", opts.special_tokens[i]},
                                       {"single_word", false},
                                       {"lstrip", false},
                                       {"rstrip", false},
                                       {"normalized", false},
                                       {"special", true}});
    }
    if (llama3) {
        doc["normalizer"] = {{"type", "NFC"}};
        ojson split = {{"type", "Split"},
                       {"pattern", {{"Regex", kLlama3Pattern}}},
                       {"behavior", "Isolated"},
                       {"invert", false}};
        doc["pre_tokenizer"] = {{"type", "Sequence"},
                                {"pretokenizers", ojson::array({split, byte_level_json(false, false)})}};
    } else {
        doc["normalizer"] = nullptr;
        doc["pre_tokenizer"] = byte_level_json(false, true);
    }
    // HF's defaults for the ByteLevel post-processor and decoder, as GPT-2's and Llama-3's files.
    doc["post_processor"] = byte_level_json(true, true);
    doc["decoder"] = byte_level_json(true, true);

    ojson model;
    model["type"] = "BPE";
    model["dropout"] = nullptr;
    model["unk_token"] = nullptr;
    model["continuing_subword_prefix"] = nullptr;
    model["end_of_word_suffix"] = nullptr;
    model["fuse_unk"] = false;
    model["byte_fallback"] = false;
    model["ignore_merges"] = false;
    // Appended to the ordered map's vector directly: its operator[] searches linearly, which is
    // quadratic over a vocabulary, and the tokens are distinct.
    ojson vocab = ojson::object();
    auto& entries = vocab.get_ref<ojson::object_t&>();
    const auto& tokens = learner.tokens();
    entries.reserve(tokens.size());
    for (size_t id = 0; id < tokens.size(); ++id)
        entries.std::vector<ojson::object_t::value_type>::emplace_back(tokens[id], id);
    model["vocab"] = std::move(vocab);
    ojson merges = ojson::array();
    for (const auto& [a, b] : learner.merges()) merges.push_back({tokens[a], tokens[b]});
    model["merges"] = std::move(merges);
    doc["model"] = std::move(model);
    return doc;
}

bool valid_utf8(const std::string& s) {
    std::string out;
    append_utf8_replacing(s, true, out);
    return out == s;
}

void check_options(const BpeTrainerOptions& opts) {
    MSLM_CHECK(!opts.inputs.empty(), "no input files");
    for (const std::string& path : opts.inputs) {
        std::error_code ec;
        auto status = std::filesystem::status(path, ec);
        MSLM_CHECK(std::filesystem::exists(status), "{}: cannot open: No such file or directory", path);
        MSLM_CHECK(!std::filesystem::is_directory(status), "{}: is a directory, expected a text file", path);
        std::FILE* f = std::fopen(path.c_str(), "rb");
        MSLM_CHECK(f, "{}: cannot open: {}", path, std::strerror(errno));
        std::fclose(f);
    }
    std::unordered_set<std::string> specials;
    for (const std::string& s : opts.special_tokens) {
        MSLM_CHECK(!s.empty(), "special tokens: empty token");
        MSLM_CHECK(valid_utf8(s), "special token \"{}\": not valid UTF-8", s);
        MSLM_CHECK(specials.insert(s).second, "special token \"{}\" given twice", s);
    }
    const auto k = static_cast<int64_t>(opts.special_tokens.size());
    MSLM_CHECK(opts.vocab_size >= 256 + k,
               "vocab size {} is below the 256 byte symbols plus {} special token{} ({})", opts.vocab_size, k,
               k == 1 ? "" : "s", 256 + k);
    MSLM_CHECK(opts.chunk_bytes >= 16, "chunk size {} bytes: expected at least 16", opts.chunk_bytes);
}

}  // namespace

std::string byte_level_encode(std::string_view bytes) {
    const auto& symbols = byte_level_symbols();
    std::string out;
    out.reserve(bytes.size() * 2);
    for (unsigned char b : bytes) out += symbols[b];
    return out;
}

size_t append_utf8_replacing(std::string_view in, bool at_end, std::string& out) {
    // Hold back a trailing sequence that the next block may complete; repair the rest.
    const size_t keep = at_end ? in.size() : in.size() - utf8::incomplete_suffix(in);
    utf8::append_lossy(in.substr(0, keep), out);
    return keep;
}

nlohmann::ordered_json train_bpe(const BpeTrainerOptions& opts, BpeTrainerStats* stats) {
    check_options(opts);
    Progress progress(opts.progress);

    int64_t total_bytes = 0;
    for (const std::string& path : opts.inputs) {
        std::error_code ec;  // a pipe has no size: the progress then under-counts
        auto size = std::filesystem::file_size(path, ec);
        if (!ec) total_bytes += static_cast<int64_t>(size);
    }
    PretokenCounter counter(opts);
    std::vector<std::string> batch;
    int64_t bytes_read = 0;
    for (const std::string& path : opts.inputs) {
        ChunkReader reader(path, opts.chunk_bytes, opts.special_tokens);
        int64_t before = bytes_read;
        for (;;) {
            batch.emplace_back();
            bool more = reader.next(batch.back());
            if (!more) batch.pop_back();
            if (batch.size() == kChunksPerBatch || (!more && &path == &opts.inputs.back())) {
                counter.add_batch(batch);
                batch.clear();
            }
            bytes_read = before + reader.bytes_read();
            progress.update("reading", bytes_read, total_bytes, true);
            if (!more) break;
        }
    }
    progress.update("reading", bytes_read, total_bytes, true, true);

    MergeLearner learner(opts, progress);
    const int64_t pretokens = counter.pretokens(), pruned = counter.pruned();
    learner.set_words(counter.table());
    const int64_t unique = learner.n_words();
    learner.learn();
    if (stats) {
        stats->bytes_read = bytes_read;
        stats->pretokens = pretokens;
        stats->unique_pretokens = unique;
        stats->pruned_pretokens = pruned;
        stats->merges = static_cast<int64_t>(learner.merges().size());
        stats->vocab_size = static_cast<int64_t>(learner.tokens().size());
    }
    return tokenizer_json(opts, learner);
}

void train_bpe_to_file(const BpeTrainerOptions& opts, const std::string& out_path, BpeTrainerStats* stats) {
    const std::string tmp = fmt::format("{}.tmp.{}", out_path, static_cast<long>(getpid()));
    std::FILE* f = std::fopen(tmp.c_str(), "wb");
    MSLM_CHECK(f, "{}: cannot write: {}", out_path, std::strerror(errno));
    try {
        const std::string text = train_bpe(opts, stats).dump(2);
        bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size();
        ok = std::fflush(f) == 0 && ok;
        ok = fsync(fileno(f)) == 0 && ok;
        const int err = errno;
        std::fclose(f);
        f = nullptr;
        MSLM_CHECK(ok, "{}: cannot write: {}", out_path, std::strerror(err));
        std::error_code ec;
        std::filesystem::rename(tmp, out_path, ec);
        MSLM_CHECK(!ec, "{}: cannot write: {}", out_path, ec.message());
    } catch (...) {
        if (f) std::fclose(f);
        std::remove(tmp.c_str());
        throw;
    }
}

}  // namespace mslm
