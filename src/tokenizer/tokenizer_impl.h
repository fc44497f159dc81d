// Internal state of Tokenizer, shared by tokenizer.cpp (encode, decode) and tokenizer_json.cpp
// (tokenizer.json in and out). Immutable once built.
#pragma once
#include <array>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "tokenizer/bpe.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/tokenizer.h"

namespace mslm {

// Leftmost-longest matching of the added tokens' contents (what HF does with aho-corasick's
// LeftmostLongest): the match that starts first wins, and the longest among those.
class AddedTokenMatcher {
public:
    void add(std::string_view pattern, int32_t token_index);
    bool empty() const { return nodes_.size() <= 1; }
    // Finds the first match at or after `pos`; returns the token index (or -1) and its span.
    int32_t find(std::string_view text, size_t pos, size_t* begin, size_t* end) const;

private:
    struct Node {
        std::vector<std::pair<unsigned char, int32_t>> children;  // sorted by byte
        int32_t token = -1;
    };
    int32_t child(int32_t node, unsigned char c) const;
    std::vector<Node> nodes_{Node{}};
    std::array<bool, 256> first_byte_{};
    int only_first_byte_ = -1;  // the first byte of every pattern when they all share one, else -1
};

struct PreTokenizerStep {
    enum class Kind { Split, ByteLevel } kind;
    std::shared_ptr<const RegexSplitter> regex;  // Split's pattern, or ByteLevel's GPT-2 split when use_regex
    bool add_prefix_space = false;
};

struct DecoderStep {
    enum class Kind { ByteLevel, ByteFallback, Fuse, Strip, Replace } kind;
    std::string pattern, content;  // Replace: pattern -> content; Strip: content is the character
    int start = 0, stop = 0;       // Strip
};

struct PostProcessorStep {
    enum class Kind { Template, ByteLevel, Wrap } kind;
    // Template: one entry per item of "single"; an empty `ids` with is_sequence marks $A.
    struct Item {
        bool is_sequence = false;
        std::vector<int32_t> ids;
    };
    std::vector<Item> items;
    std::vector<int32_t> before, after;  // Wrap (Bert, Roberta): cls + ids + sep
};

struct Tokenizer::Impl {
    std::string source;
    std::unique_ptr<BpeModel> model;
    std::vector<AddedToken> added;
    BpeModel::Vocab added_by_content;                 // content -> id
    std::unordered_map<int32_t, size_t> added_by_id;  // id -> index into `added`
    std::unordered_set<std::string> special_contents;
    AddedTokenMatcher raw_matcher, normalized_matcher;  // pattern -> index into `added`
    bool nfc = false;
    std::vector<PreTokenizerStep> pre_tokenizers;
    bool has_decoder = false;
    std::vector<DecoderStep> decoders;
    bool byte_level_decoder = false;  // the decoder is exactly ByteLevel: StreamDecoder works on bytes
    std::vector<PostProcessorStep> post_processors;
    // Parts written back unchanged by to_json (null when absent).
    nlohmann::json truncation, padding, normalizer_json, pre_tokenizer_json, post_processor_json,
        decoder_json;
    int32_t default_eot = -1;
    int64_t vocab_size = 0;
    std::string canonical;  // to_json() without indentation
    std::string sha256;     // of `canonical`

    void encode(std::string_view text, std::vector<int32_t>& out, bool add_special_tokens) const;
    void encode_normalized(std::string_view piece, std::vector<int32_t>& out) const;
    void encode_pre_tokens(std::string_view piece, std::vector<int32_t>& out) const;
    void post_process(std::vector<int32_t>& out, size_t start) const;

    // The token an id decodes from (added tokens first), or nullptr.
    const std::string* token_of(int32_t id) const;
    bool is_special(const std::string& content) const { return special_contents.count(content) != 0; }
    std::string decode(std::span<const int32_t> ids, bool skip_special_tokens) const;
    // The bytes one id contributes under the ByteLevel decoder (before the final lossy UTF-8 step).
    void append_token_bytes(int32_t id, bool skip_special_tokens, std::string& out) const;

    std::string to_json(int indent) const;
};

// Parses and validates; throws mslm::Error naming `source` for anything unsupported or malformed.
std::shared_ptr<Tokenizer::Impl> build_tokenizer(const nlohmann::json& j, const std::string& source);

std::string sha256_hex(std::string_view data);
std::string nfc_normalize(std::string_view s);
// False only when NFC certainly leaves `s` as it is (a quick check that skips most text).
bool nfc_may_change(std::string_view s);

}  // namespace mslm
