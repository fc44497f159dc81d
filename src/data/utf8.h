// UTF-8 validation and repair for raw document bytes. Repair follows the Unicode "maximal subpart"
// practice that Python's bytes.decode("utf-8", "replace") implements: each maximal invalid
// subsequence (a lead byte and the continuation bytes that still fit it, or one stray byte)
// becomes one U+FFFD.
#pragma once
#include <cstddef>
#include <string>
#include <string_view>

namespace mslm {

// Offset of the first byte of the first invalid sequence, or std::string_view::npos.
size_t utf8_first_invalid(std::string_view s);

// Appends `s` to `out` with every maximal invalid subsequence replaced by U+FFFD; returns the
// number of replacements.
size_t utf8_append_replacing(std::string_view s, std::string& out);

// In place: replaces invalid subsequences of `s` by U+FFFD; returns the number of replacements.
size_t utf8_replace_invalid(std::string& s);

}  // namespace mslm
