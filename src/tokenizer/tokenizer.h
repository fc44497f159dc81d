// A byte-level BPE tokenizer that reads Hugging Face tokenizer.json files and encodes and decodes
// exactly as the `tokenizers` library does (checked against it by tests/unit/test_tokenizer.cpp).
//
// Pipeline of encode: invalid UTF-8 -> U+FFFD (Python's errors='replace') -> added tokens split
// out (leftmost-longest, with lstrip/rstrip/single_word) -> normalizer -> added tokens with
// normalized=true split out -> pre-tokenizers -> BPE per pre-token -> post-processor (only with
// add_special_tokens).
//
// Supported tokenizer.json content:
//   model          BPE (vocab; merges as ["a","b"] pairs or legacy "a b" strings; unk_token,
//                  fuse_unk, byte_fallback, continuing_subword_prefix, end_of_word_suffix,
//                  ignore_merges; dropout null or 0)
//   normalizer     null, NFC, Sequence of NFC
//   pre_tokenizer  null, ByteLevel (add_prefix_space, use_regex = GPT-2 split; must come last),
//                  Split (pattern Regex or String, behavior Isolated, invert false), Sequence
//   post_processor null, TemplateProcessing (single), ByteLevel, BertProcessing,
//                  RobertaProcessing, Sequence; applied only when add_special_tokens is set
//   decoder        null, ByteLevel, ByteFallback, Fuse, Strip, Replace (String pattern), Sequence
// Anything else fails to load with an mslm::Error naming the file and the unsupported part.
// truncation and padding are kept on save but not applied: they shape batches, not tokens.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/encoder.h"

namespace mslm {

struct AddedToken {
    int32_t id = 0;
    std::string content;
    bool single_word = false;  // only matches when not inside a word (\w on either side)
    bool lstrip = false;       // swallows the whitespace on its left
    bool rstrip = false;       // swallows the whitespace on its right
    bool normalized = true;    // matched in the normalized text instead of the raw text
    bool special = false;      // dropped by decode(skip_special_tokens)
};

class Tokenizer final : public TextEncoder {
public:
    // Reads a tokenizer.json. Throws mslm::Error naming `path` for I/O errors, malformed JSON and
    // unsupported content.
    static Tokenizer load(const std::string& path);
    // `source_name` is the name used in error messages (a path, or "<string>").
    static Tokenizer from_json(std::string_view json_text, const std::string& source_name = "<string>");

    // Writes the canonical tokenizer.json (see to_json), which HF tokenizers loads.
    void save(const std::string& path) const;
    // The canonical serialization: HF's layout, merges as pairs, vocab in id order.
    std::string to_json(int indent = -1) const;

    std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = false) const;
    void encode_append(std::string_view text, std::vector<int32_t>& out) const override;
    void encode_append(std::string_view text, std::vector<int32_t>& out, bool add_special_tokens) const;
    // Encodes each text on the thread pool (mslm::parallel_for); results in input order.
    std::vector<std::vector<int32_t>> encode_batch(const std::vector<std::string_view>& texts,
                                                   bool add_special_tokens = false) const;

    // HF's decode: ids that name no token are skipped; invalid UTF-8 produced by byte tokens comes
    // out as U+FFFD per maximal ill-formed subpart.
    std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;

    // -1 when absent. Added tokens take precedence over the model's vocabulary, as in HF.
    int32_t token_to_id(std::string_view token) const;
    // std::nullopt for ids that name no token. The view lives as long as the tokenizer.
    std::optional<std::string_view> id_to_token(int32_t id) const;
    // One past the largest id (model vocabulary and added tokens): the embedding table size.
    int64_t vocab_size() const override;
    // "<|endoftext|>", "<|end_of_text|>", "</s>" or "<eos>" (the first present as a special
    // added token), or -1; set_eot_id overrides it.
    int32_t eot_id() const override { return eot_id_; }
    void set_eot_id(int32_t id);
    // SHA-256 (hex) of to_json(); an overridden eot id is appended to the hashed text.
    std::string fingerprint() const override;

    const std::vector<AddedToken>& added_tokens() const;
    const std::string& source_name() const;

    struct Impl;

private:
    explicit Tokenizer(std::shared_ptr<const Impl> impl);
    friend class StreamDecoder;

    std::shared_ptr<const Impl> impl_;
    int32_t eot_id_ = -1;
    bool eot_overridden_ = false;
};

// Decodes ids one at a time for streaming generation. Never returns a string that ends inside a
// UTF-8 character: an incomplete trailing sequence is held back until the next id completes it
// (or flush() gives it up as U+FFFD). The concatenation of all push() results and flush() equals
// Tokenizer::decode of all the ids.
class StreamDecoder {
public:
    explicit StreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens = false);
    std::string push(int32_t id);
    std::string flush();

private:
    std::shared_ptr<const Tokenizer::Impl> impl_;
    bool skip_special_;
    std::string pending_;       // byte-level path: bytes not yet returned
    std::vector<int32_t> ids_;  // general path: window of ids re-decoded on each push
    size_t prefix_index_ = 0;   // general path: ids_[0, prefix_index_) only give context
    std::string prefix_;        // general path: decode of ids_[0, prefix_index_), already returned
};

}  // namespace mslm
