// GPT-2's byte-level alphabet: every byte maps to one printable code point so that BPE can work on
// text without spaces or control characters. Bytes '!'..'~', 0xA1..0xAC and 0xAE..0xFF map to
// themselves; the other 68 map to U+0100 + n in ascending byte order (space -> U+0120 'Ġ',
// newline -> U+010A 'Ċ').
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace mslm::byte_level {

uint32_t byte_to_codepoint(uint8_t b);
// The byte that maps to `cp`, or -1 when `cp` is not in the alphabet.
int codepoint_to_byte(uint32_t cp);

// UTF-8 of the code point of byte `b` (one or two bytes).
std::string_view char_of(uint8_t b);

// Maps every byte of `bytes` to its character.
std::string encode(std::string_view bytes);
// Appends the bytes behind `text` to `out` when every character of `text` is in the alphabet
// (returns true); otherwise appends nothing and returns false. `text` must be valid UTF-8.
bool decode(std::string_view text, std::string& out);

}  // namespace mslm::byte_level
