#include "tokenizer/bpe.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <climits>
#include <cstring>

#include "core/error.h"
#include "tokenizer/byte_level.h"
#include "core/utf8.h"

namespace mslm {
namespace {

std::atomic<uint64_t> g_next_serial{1};

constexpr size_t kMaxCachedWordBytes = 256;
constexpr size_t kMaxCacheEntries = 1 << 17;
constexpr size_t kCachesPerThread = 4;
constexpr size_t kLinearMergeMaxSymbols = 64;

uint64_t load_tail(const char* p, size_t n) {  // n < 8 bytes, without reading past them
    uint64_t w = 0;
    if (n >= 4) {
        uint32_t lo, hi;
        std::memcpy(&lo, p, 4);
        std::memcpy(&hi, p + n - 4, 4);
        w = static_cast<uint64_t>(hi) << 32 | lo;
    } else if (n > 0) {
        w = static_cast<uint64_t>(static_cast<unsigned char>(p[0])) << 16 |
            static_cast<uint64_t>(static_cast<unsigned char>(p[n / 2])) << 8 |
            static_cast<unsigned char>(p[n - 1]);
    }
    return w;
}

uint64_t hash_bytes(std::string_view s) {
    uint64_t h = 0x9E3779B97F4A7C15ull ^ s.size();
    const size_t n = s.size();
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        std::memcpy(&w, s.data() + i, 8);
        h = (h ^ w) * 0xBF58476D1CE4E5B9ull;
        h ^= h >> 29;
    }
    uint64_t w;
    if (i == n)
        w = 0;
    else if (n >= 8)
        std::memcpy(&w, s.data() + n - 8, 8);  // the last 8 bytes, overlapping the loop's
    else
        w = load_tail(s.data(), n);
    h = (h ^ w) * 0x94D049BB133111EBull;
    h ^= h >> 32;
    h *= 0xBF58476D1CE4E5B9ull;
    return h ^ (h >> 29);
}

// Per-thread cache of word -> ids, shared by the last few models used on the thread: open
// addressing over one array of 24-byte slots that hold words of up to 8 bytes and up to two ids
// inline (most words of a text), longer ones in two arenas. A hit on a short word touches one
// cache line, which the caller can prefetch (a node-based std::unordered_map spent most of encode
// chasing pointers). The cache is dropped whole when full, which is cheaper than LRU bookkeeping;
// a corpus's frequent words come back within a few thousand lines.
class WordCache {
public:
    uint64_t owner = 0;

    void clear() {
        slots_.assign(1024, Slot{});
        keys_.clear();
        ids_.clear();
        count_ = 0;
    }
    void prefetch(uint64_t h) const {
        if (!slots_.empty()) __builtin_prefetch(&slots_[h & (slots_.size() - 1)]);
    }
    // Appends the cached ids of `word` to `out` and returns true, or returns false.
    bool lookup(std::string_view word, uint64_t h, std::vector<int32_t>& out) const {
        if (slots_.empty()) return false;
        const size_t mask = slots_.size() - 1;
        const auto tag = static_cast<uint32_t>(h >> 32);
        const uint64_t inline_key = word.size() <= 8 ? pack(word) : 0;
        for (size_t i = h & mask;; i = (i + 1) & mask) {
            const Slot& s = slots_[i];
            if (s.key_len == 0) return false;
            if (s.tag != tag || s.key_len != word.size()) continue;
            if (word.size() <= 8 ? s.key != inline_key
                                 : std::memcmp(keys_.data() + s.key, word.data(), word.size()) != 0)
                continue;
            const int32_t* ids = s.ids_len <= 2 ? s.ids : ids_.data() + s.ids[0];
            out.insert(out.end(), ids, ids + s.ids_len);
            return true;
        }
    }
    void insert(std::string_view word, uint64_t h, const int32_t* ids, size_t n) {
        if (count_ >= kMaxCacheEntries || slots_.empty()) clear();
        if (2 * (count_ + 1) > slots_.size()) grow();
        Slot s;
        s.tag = static_cast<uint32_t>(h >> 32);
        s.hash_low = static_cast<uint32_t>(h);
        s.key_len = static_cast<uint16_t>(word.size());
        s.ids_len = static_cast<uint16_t>(n);
        if (word.size() <= 8) {
            s.key = pack(word);
        } else {
            s.key = keys_.size();
            keys_.append(word);
        }
        if (n <= 2) {
            std::copy(ids, ids + n, s.ids);
        } else {
            s.ids[0] = static_cast<int32_t>(ids_.size());
            ids_.insert(ids_.end(), ids, ids + n);
        }
        place(s);
        ++count_;
    }

private:
    struct Slot {
        uint32_t tag = 0, hash_low = 0;
        uint64_t key = 0;  // the word's bytes when it has at most 8, else its offset in keys_
        uint16_t key_len = 0, ids_len = 0;  // key_len 0: empty slot (words are never empty)
        int32_t ids[2] = {0, 0};            // the ids when at most 2, else ids[0] is their offset in ids_
    };
    // The bytes of a word of at most 8 bytes as one little-endian integer. Register loads only:
    // a variable-length memcpy through the stack stalls store-to-load forwarding.
    static uint64_t pack(std::string_view w) {
        const char* p = w.data();
        const size_t n = w.size();
        if (n >= 4) {
            uint32_t lo, hi;
            std::memcpy(&lo, p, 4);
            std::memcpy(&hi, p + n - 4, 4);  // overlaps lo when n < 8; the shared bytes agree
            return lo | static_cast<uint64_t>(hi) << (8 * (n - 4));
        }
        uint64_t k = 0;
        for (size_t i = 0; i < n; ++i)
            k |= static_cast<uint64_t>(static_cast<unsigned char>(p[i])) << (8 * i);
        return k;
    }
    void place(const Slot& s) {
        const size_t mask = slots_.size() - 1;
        size_t i = (static_cast<uint64_t>(s.tag) << 32 | s.hash_low) & mask;
        while (slots_[i].key_len != 0) i = (i + 1) & mask;
        slots_[i] = s;
    }
    void grow() {
        std::vector<Slot> old = std::move(slots_);
        slots_.assign(old.size() * 2, Slot{});
        for (const Slot& s : old)
            if (s.key_len != 0) place(s);
    }
    std::vector<Slot> slots_;
    std::string keys_;
    std::vector<int32_t> ids_;
    size_t count_ = 0;
};

WordCache& cache_for(uint64_t serial) {
    thread_local std::array<WordCache, kCachesPerThread> caches;
    thread_local size_t next_victim = 0;
    for (auto& c : caches)
        if (c.owner == serial) return c;
    WordCache& c = caches[next_victim];
    next_victim = (next_victim + 1) % kCachesPerThread;
    c.clear();
    c.owner = serial;
    return c;
}

}  // namespace

void BpeModel::PairMap::reserve(size_t n) {
    size_t cap = 16;
    while (cap < n * 2) cap <<= 1;
    slots.assign(cap, Slot{});
    mask = cap - 1;
}

void BpeModel::PairMap::insert(int32_t a, int32_t b, int32_t rank, int32_t new_id) {
    uint64_t key = static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32 | static_cast<uint32_t>(b);
    for (uint64_t i = hash(key) & mask;; i = (i + 1) & mask) {
        Slot& s = slots[i];
        if (s.key == key || s.key == ~0ull) {
            s = {key, rank, new_id};  // a pair listed twice keeps its last rank, as in HF
            return;
        }
    }
}

BpeModel::BpeModel(Vocab vocab, Merges merges, BpeOptions options, bool byte_level, std::string source)
    : vocab_(std::move(vocab)),
      merges_(std::move(merges)),
      options_(std::move(options)),
      byte_level_(byte_level),
      source_(std::move(source)),
      serial_(g_next_serial.fetch_add(1)) {
    int32_t max_id = -1;
    for (const auto& [token, id] : vocab_) {
        MSLM_CHECK(id >= 0, "{}: model.vocab: token '{}' has negative id {}", source_, token, id);
        max_id = std::max(max_id, id);
    }
    id_to_token_.resize(static_cast<size_t>(max_id) + 1);
    has_id_.assign(static_cast<size_t>(max_id) + 1, false);
    for (const auto& [token, id] : vocab_) {
        id_to_token_[id] = token;
        has_id_[id] = true;
    }

    size_t prefix_len = options_.continuing_subword_prefix ? options_.continuing_subword_prefix->size() : 0;
    pairs_.reserve(merges_.size());
    for (size_t rank = 0; rank < merges_.size(); ++rank) {
        const auto& [a, b] = merges_[rank];
        int32_t ia = token_to_id(a), ib = token_to_id(b);
        MSLM_CHECK(ia >= 0, "{}: merge {} ('{}' '{}'): '{}' is not in the vocabulary", source_, rank, a, b,
                   a);
        MSLM_CHECK(ib >= 0, "{}: merge {} ('{}' '{}'): '{}' is not in the vocabulary", source_, rank, a, b,
                   b);
        MSLM_CHECK(b.size() >= prefix_len,
                   "{}: merge {} ('{}' '{}'): '{}' is shorter than the subword prefix", source_, rank, a, b,
                   b);
        std::string merged = a + b.substr(prefix_len);
        int32_t im = token_to_id(merged);
        MSLM_CHECK(im >= 0, "{}: merge {} ('{}' '{}'): '{}' is not in the vocabulary", source_, rank, a, b,
                   merged);
        pairs_.insert(ia, ib, static_cast<int32_t>(rank), im);
    }

    if (options_.unk_token) {
        int32_t id = token_to_id(*options_.unk_token);
        unk_id_ = id >= 0 ? id : -2;
    }
    byte_fallback_ids_.assign(256, -1);
    if (options_.byte_fallback)
        for (int b = 0; b < 256; ++b) byte_fallback_ids_[b] = token_to_id(fmt::format("<0x{:02X}>", b));

    if (byte_level_) {
        const std::string prefix = options_.continuing_subword_prefix.value_or("");
        const std::string suffix = options_.end_of_word_suffix.value_or("");
        for (int first = 0; first < 2; ++first)
            for (int last = 0; last < 2; ++last) {
                auto& table = byte_units_[first][last];
                table.resize(256);
                for (int b = 0; b < 256; ++b) {
                    std::string s = (first ? "" : prefix) +
                                    std::string(byte_level::char_of(static_cast<uint8_t>(b))) +
                                    (last ? suffix : "");
                    table[b] = lookup_unit(s);
                }
            }
        if (options_.ignore_merges) {
            for (const auto& [token, id] : vocab_) {
                std::string bytes;
                if (byte_level::decode(token, bytes)) bytes_vocab_.emplace(std::move(bytes), id);
            }
        }
    }
}

int32_t BpeModel::token_to_id(std::string_view token) const {
    auto it = vocab_.find(token);
    return it == vocab_.end() ? -1 : it->second;
}

const std::string* BpeModel::id_to_token(int32_t id) const {
    if (id < 0 || static_cast<size_t>(id) >= has_id_.size() || !has_id_[id]) return nullptr;
    return &id_to_token_[id];
}

int32_t BpeModel::unk_id() const {
    MSLM_CHECK(unk_id_ != -2, "{}: unk_token '{}' is not in the vocabulary", source_, *options_.unk_token);
    return unk_id_;
}

BpeModel::UnitIds BpeModel::lookup_unit(std::string_view s) const {
    UnitIds u;
    u.id = token_to_id(s);
    if (u.id >= 0 || !options_.byte_fallback) return u;
    for (unsigned char b : s) {
        if (byte_fallback_ids_[b] < 0) {
            u.fallback.clear();
            return u;
        }
        u.fallback.push_back(byte_fallback_ids_[b]);
    }
    return u;
}

// One symbol per character. Unknown characters follow HF's order exactly: a pending unk is
// emitted before the next known character, but byte-fallback ids go out without flushing it.
void BpeModel::initial_symbols(std::string_view word, std::vector<int32_t>& syms) const {
    syms.clear();
    bool pending_unk = false;
    auto add = [&](const UnitIds& u) {
        if (u.id >= 0) {
            if (pending_unk) syms.push_back(unk_id_);
            pending_unk = false;
            syms.push_back(u.id);
        } else if (!u.fallback.empty()) {
            syms.insert(syms.end(), u.fallback.begin(), u.fallback.end());
        } else if (options_.unk_token) {
            int32_t unk = unk_id();
            if (pending_unk && !options_.fuse_unk) syms.push_back(unk);
            pending_unk = true;
        }
    };
    const size_t n = word.size();
    if (byte_level_) {
        for (size_t i = 0; i < n; ++i)
            add(byte_units_[i == 0][i + 1 == n][static_cast<unsigned char>(word[i])]);
    } else {
        thread_local std::string s;
        for (size_t i = 0; i < n;) {
            size_t len = utf8::char_length(static_cast<unsigned char>(word[i]));
            bool first = i == 0, last = i + len >= n;
            s.clear();
            if (!first && options_.continuing_subword_prefix) s += *options_.continuing_subword_prefix;
            s.append(word.substr(i, len));
            if (last && options_.end_of_word_suffix) s += *options_.end_of_word_suffix;
            add(lookup_unit(s));
            i += len;
        }
    }
    if (pending_unk) syms.push_back(unk_id_);
}

namespace {
struct MergeScratch {
    std::vector<int32_t> next, prev, rank, new_id;
    void reset(size_t n) {
        next.resize(n);
        prev.resize(n);
        rank.resize(n);
        new_id.resize(n);
        for (size_t i = 0; i < n; ++i) {
            next[i] = i + 1 < n ? static_cast<int32_t>(i + 1) : -1;
            prev[i] = static_cast<int32_t>(i) - 1;
        }
    }
};
}  // namespace

// Repeatedly merges the pair of lowest (rank, position). Quadratic, but for the short words that
// make up almost all text it beats a heap.
void BpeModel::merge_linear(std::vector<int32_t>& syms) const {
    const size_t n = syms.size();
    thread_local MergeScratch m;
    m.reset(n);
    auto update = [&](int32_t i) {
        int32_t j = m.next[i];
        const PairMap::Slot* s = j < 0 ? nullptr : pairs_.find(syms[i], syms[j]);
        m.rank[i] = s ? s->rank : INT_MAX;
        m.new_id[i] = s ? s->new_id : -1;
    };
    for (size_t i = 0; i < n; ++i) update(static_cast<int32_t>(i));
    for (;;) {
        int32_t best = -1, best_rank = INT_MAX;
        for (int32_t i = 0; i >= 0; i = m.next[i])
            if (m.rank[i] < best_rank) best_rank = m.rank[i], best = i;
        if (best < 0) break;
        int32_t j = m.next[best];
        syms[best] = m.new_id[best];
        m.next[best] = m.next[j];
        if (m.next[j] >= 0) m.prev[m.next[j]] = best;
        update(best);
        if (m.prev[best] >= 0) update(m.prev[best]);
    }
    size_t w = 0;
    for (int32_t i = 0; i >= 0; i = m.next[i]) syms[w++] = syms[i];
    syms.resize(w);
}

// The same order of merges with a priority queue of (rank, position); entries whose pair has
// changed since they were pushed are skipped when popped.
void BpeModel::merge_heap(std::vector<int32_t>& syms) const {
    const size_t n = syms.size();
    thread_local MergeScratch m;
    m.reset(n);
    struct Entry {
        int32_t rank, pos;
        // std::push_heap keeps the largest on top: "larger" means lower (rank, position).
        bool operator<(const Entry& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    thread_local std::vector<Entry> heap;
    heap.clear();
    auto update = [&](int32_t i) {
        int32_t j = m.next[i];
        const PairMap::Slot* s = j < 0 ? nullptr : pairs_.find(syms[i], syms[j]);
        m.rank[i] = s ? s->rank : INT_MAX;
        m.new_id[i] = s ? s->new_id : -1;
        if (s) {
            heap.push_back({s->rank, i});
            std::push_heap(heap.begin(), heap.end());
        }
    };
    for (size_t i = 0; i < n; ++i) update(static_cast<int32_t>(i));
    while (!heap.empty()) {
        std::pop_heap(heap.begin(), heap.end());
        Entry e = heap.back();
        heap.pop_back();
        if (m.rank[e.pos] != e.rank) continue;  // stale: the pair at e.pos changed or was merged away
        int32_t j = m.next[e.pos];
        syms[e.pos] = m.new_id[e.pos];
        m.rank[j] = INT_MAX;  // j is gone: no entry of its can match
        m.next[e.pos] = m.next[j];
        if (m.next[j] >= 0) m.prev[m.next[j]] = e.pos;
        update(e.pos);
        if (m.prev[e.pos] >= 0) update(m.prev[e.pos]);
    }
    size_t w = 0;
    for (int32_t i = 0; i >= 0; i = m.next[i]) syms[w++] = syms[i];
    syms.resize(w);
}

void BpeModel::encode_word_uncached(std::string_view word, std::vector<int32_t>& out, MergeLoop loop) const {
    if (word.empty()) return;
    if (options_.ignore_merges) {
        int32_t id = byte_level_ ? [&] {
            auto it = bytes_vocab_.find(word);
            return it == bytes_vocab_.end() ? -1 : it->second;
        }()
                                 : token_to_id(word);
        if (id >= 0) {
            out.push_back(id);
            return;
        }
    }
    thread_local std::vector<int32_t> syms;
    initial_symbols(word, syms);
    if (syms.size() > 1) {
        if (loop == MergeLoop::Auto)
            loop = syms.size() <= kLinearMergeMaxSymbols ? MergeLoop::Linear : MergeLoop::Heap;
        if (loop == MergeLoop::Linear)
            merge_linear(syms);
        else
            merge_heap(syms);
    }
    out.insert(out.end(), syms.begin(), syms.end());
}

void BpeModel::encode_word(std::string_view word, std::vector<int32_t>& out) const {
    encode_words(std::span<const std::string_view>(&word, 1), out);
}

void BpeModel::encode_words(std::span<const std::string_view> words, std::vector<int32_t>& out) const {
    WordCache& cache = cache_for(serial_);
    // Hashes run kAhead words in front of the lookups, so their slots are in cache when needed.
    constexpr size_t kAhead = 8;
    uint64_t hashes[kAhead];
    const size_t n = words.size();
    for (size_t i = 0; i < std::min(n, kAhead); ++i) {
        hashes[i] = hash_bytes(words[i]);
        cache.prefetch(hashes[i]);
    }
    for (size_t i = 0; i < n; ++i) {
        const std::string_view word = words[i];
        const uint64_t h = hashes[i % kAhead];
        if (i + kAhead < n) {
            hashes[i % kAhead] = hash_bytes(words[i + kAhead]);
            cache.prefetch(hashes[i % kAhead]);
        }
        if (word.size() > kMaxCachedWordBytes) {
            encode_word_uncached(word, out);
            continue;
        }
        if (cache.lookup(word, h, out)) continue;
        size_t start = out.size();
        encode_word_uncached(word, out);
        if (out.size() - start <= UINT16_MAX) cache.insert(word, h, out.data() + start, out.size() - start);
    }
}

}  // namespace mslm
