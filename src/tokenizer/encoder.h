// The narrow interface the data pipeline needs from a tokenizer: text in, ids out. Tokenizer
// (tokenizer.h, HF tokenizer.json BPE) implements it; ByteEncoder maps each byte to its value,
// for byte-level models and tests.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace mslm {

class TextEncoder {
public:
    virtual ~TextEncoder() = default;
    // Appends the ids of `text` to `out` (no special tokens added). Thread-safe (const).
    virtual void encode_append(std::string_view text, std::vector<int32_t>& out) const = 0;
    virtual int64_t vocab_size() const = 0;
    // Id of the end-of-text token that separates documents in shards, or -1 when there is none.
    virtual int32_t eot_id() const = 0;
    // Identifies the encoder for caches and manifests: changes whenever the encoding would.
    virtual std::string fingerprint() const = 0;
};

// Byte-level: id = byte value (0..255); id 256 is the end-of-text token.
class ByteEncoder final : public TextEncoder {
public:
    void encode_append(std::string_view text, std::vector<int32_t>& out) const override {
        for (unsigned char c : text) out.push_back(c);
    }
    int64_t vocab_size() const override { return 257; }
    int32_t eot_id() const override { return 256; }
    std::string fingerprint() const override { return "bytes-v1"; }
};

}  // namespace mslm
