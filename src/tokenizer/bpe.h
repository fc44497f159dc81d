// The BPE model of HF tokenizers (model.type "BPE"): a word becomes one symbol per character (or
// per byte, for byte-level tokenizers), then adjacent pairs merge in order of rank (lowest first,
// leftmost first among equal ranks) until no listed pair is left. Unknown characters go to byte
// fallback (<0xNN> tokens), else to unk_token (fused when fuse_unk), else are dropped.
#pragma once
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace mslm {

struct BpeOptions {
    std::optional<std::string> unk_token, continuing_subword_prefix, end_of_word_suffix;
    bool fuse_unk = false;
    bool byte_fallback = false;
    bool ignore_merges = false;  // a word that is itself a token maps to it without merging
};

class BpeModel {
public:
    struct StringHash {
        using is_transparent = void;
        size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
    };
    using Vocab = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;
    using Merges = std::vector<std::pair<std::string, std::string>>;

    // `byte_level`: words arrive as raw bytes and each byte is the character byte_level::char_of(b).
    // `source` names the file in error messages. Throws mslm::Error for merges whose tokens are
    // not in the vocabulary.
    BpeModel(Vocab vocab, Merges merges, BpeOptions options, bool byte_level, std::string source);

    // Appends the ids of one pre-token. Results are cached per thread.
    void encode_word(std::string_view word, std::vector<int32_t>& out) const;
    // The same for consecutive pre-tokens, prefetching their cache slots ahead.
    void encode_words(std::span<const std::string_view> words, std::vector<int32_t>& out) const;

    enum class MergeLoop { Auto, Linear, Heap };
    // Without the cache, with a chosen merge loop: the tests check that both loops agree.
    void encode_word_uncached(std::string_view word, std::vector<int32_t>& out,
                              MergeLoop loop = MergeLoop::Auto) const;

    int32_t token_to_id(std::string_view token) const;
    // nullptr for ids that are not in the vocabulary.
    const std::string* id_to_token(int32_t id) const;
    int64_t id_bound() const { return static_cast<int64_t>(id_to_token_.size()); }

    const Vocab& vocab() const { return vocab_; }
    const Merges& merges() const { return merges_; }
    const BpeOptions& options() const { return options_; }
    bool byte_level() const { return byte_level_; }

private:
    // The ids one character (with prefix/suffix) starts as: a vocabulary token, or its bytes'
    // <0xNN> tokens, or neither (id -1, fallback empty) when it is unknown.
    struct UnitIds {
        int32_t id = -1;
        std::vector<int32_t> fallback;
    };
    UnitIds lookup_unit(std::string_view s) const;
    void initial_symbols(std::string_view word, std::vector<int32_t>& syms) const;
    void merge_linear(std::vector<int32_t>& syms) const;
    void merge_heap(std::vector<int32_t>& syms) const;
    int32_t unk_id() const;

    // Open addressing on (left id, right id) -> (rank, merged id). Written here because the merge
    // loop looks pairs up in its innermost step and std::unordered_map is several times slower.
    struct PairMap {
        struct Slot {
            uint64_t key = ~0ull;
            int32_t rank = 0, new_id = 0;
        };
        std::vector<Slot> slots;
        uint64_t mask = 0;
        void reserve(size_t n);
        void insert(int32_t a, int32_t b, int32_t rank, int32_t new_id);
        const Slot* find(int32_t a, int32_t b) const {
            uint64_t key = static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32 | static_cast<uint32_t>(b);
            for (uint64_t i = hash(key) & mask;; i = (i + 1) & mask) {
                const Slot& s = slots[i];
                if (s.key == key) return &s;
                if (s.key == ~0ull) return nullptr;
            }
        }
        static uint64_t hash(uint64_t key) { return (key * 0x9E3779B97F4A7C15ull) >> 20; }
    };

    Vocab vocab_;
    std::vector<std::string> id_to_token_;
    std::vector<bool> has_id_;
    Merges merges_;
    PairMap pairs_;
    BpeOptions options_;
    bool byte_level_;
    std::string source_;
    int32_t unk_id_ = -1;                     // -2: unk_token names a token that is not in the vocabulary
    std::vector<int32_t> byte_fallback_ids_;  // id of <0xNN> per byte, or -1
    // Byte-level: the start ids of byte b as the [first/last-in-word flags] character of a word.
    std::vector<UnitIds> byte_units_[2][2];
    // Byte-level and ignore_merges: tokens keyed by the bytes they stand for.
    Vocab bytes_vocab_;
    uint64_t serial_;  // identifies this model's entries in the per-thread caches
};

}  // namespace mslm
