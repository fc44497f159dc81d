// Regex pre-tokenization with PCRE2 (UTF + Unicode properties, JIT). Splits text into the
// pieces BPE merges within, with HF tokenizers' `Split` semantics: behavior "Isolated" keeps each
// match as a piece and each gap between matches as another piece.
#pragma once
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace mslm {

// GPT-2's pattern (ByteLevel pre-tokenizer with use_regex) and Llama-3's (Split, Isolated).
extern const char* const kGpt2Pattern;
extern const char* const kLlama3Pattern;

class RegexSplitter {
public:
    // Throws mslm::Error with PCRE2's message and offset when the pattern does not compile.
    explicit RegexSplitter(const std::string& pattern);
    ~RegexSplitter();
    RegexSplitter(RegexSplitter&&) noexcept;
    RegexSplitter& operator=(RegexSplitter&&) noexcept;

    // Appends the pieces of `text` (valid UTF-8) to `out`, in order; they concatenate to `text`.
    // Thread-safe: match data is per thread.
    void split(std::string_view text, std::vector<std::string_view>& out) const;
    const std::string& pattern() const { return pattern_; }

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
    std::string pattern_;
};

}  // namespace mslm
