// UTF-8 helpers with the exact replacement rules the tokenizer and the data sources need to match
// Python and Rust:
// an ill-formed sequence is replaced by one U+FFFD per maximal subpart (Unicode's recommended
// practice, what bytes.decode('utf-8', errors='replace') and String::from_utf8_lossy do).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace mslm::utf8 {

bool is_valid(std::string_view s);

// Offset of the first byte of the first ill-formed sequence, or std::string_view::npos.
size_t first_invalid(std::string_view s);

// Appends `s` to `out` with every maximal ill-formed subpart replaced by U+FFFD; returns the
// number of replacements.
size_t append_lossy(std::string_view s, std::string& out);

// In place: replaces every maximal ill-formed subpart of `s` by U+FFFD; returns the count.
size_t replace_invalid(std::string& s);

// Length of the tail of `s` that starts a well-formed sequence but stops before its end (0 when
// `s` ends on a character boundary or with ill-formed bytes). A streaming decoder holds it back.
size_t incomplete_suffix(std::string_view s);

void append_codepoint(uint32_t cp, std::string& out);

// Decodes the character that starts at s[i] (s must be valid UTF-8); returns its byte length.
inline int decode(std::string_view s, size_t i, uint32_t* cp) {
    auto b = [&](size_t k) { return static_cast<uint32_t>(static_cast<unsigned char>(s[i + k])); };
    uint32_t c = b(0);
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if (c < 0xE0) {
        *cp = (c & 0x1F) << 6 | (b(1) & 0x3F);
        return 2;
    }
    if (c < 0xF0) {
        *cp = (c & 0x0F) << 12 | (b(1) & 0x3F) << 6 | (b(2) & 0x3F);
        return 3;
    }
    *cp = (c & 0x07) << 18 | (b(1) & 0x3F) << 12 | (b(2) & 0x3F) << 6 | (b(3) & 0x3F);
    return 4;
}

// Byte length of the character whose lead byte is `lead` (valid UTF-8 assumed).
inline int char_length(unsigned char lead) {
    return lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
}

// Unicode White_Space (what Rust's char::is_whitespace and regex \s match).
bool is_whitespace(uint32_t cp);
// Rust regex \w: alphabetic, marks, decimal digits, connector punctuation, join controls.
bool is_word_char(uint32_t cp);

}  // namespace mslm::utf8
