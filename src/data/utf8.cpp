#include "data/utf8.h"

#include <cstdint>
#include <cstring>

namespace mslm {

namespace {

// Length of the valid sequence at p[0..n), or 0 with *bad set to the length of its maximal
// invalid subpart (at least 1). Ranges from the Unicode standard, table 3-7 (well-formed byte
// sequences): the second byte's range depends on the lead to exclude overlongs, surrogates and
// code points above U+10FFFF.
inline size_t sequence_length(const uint8_t* p, size_t n, size_t* bad) {
    const uint8_t b0 = p[0];
    if (b0 < 0x80) return 1;
    size_t len;
    uint8_t lo = 0x80, hi = 0xBF;  // range of the second byte
    if (b0 >= 0xC2 && b0 <= 0xDF) {
        len = 2;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
        len = 3;
        if (b0 == 0xE0) lo = 0xA0;
        if (b0 == 0xED) hi = 0x9F;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
        len = 4;
        if (b0 == 0xF0) lo = 0x90;
        if (b0 == 0xF4) hi = 0x8F;
    } else {
        *bad = 1;  // continuation byte without a lead, C0, C1, F5..FF
        return 0;
    }
    for (size_t i = 1; i < len; ++i) {
        const bool fits = i < n && p[i] >= (i == 1 ? lo : 0x80) && p[i] <= (i == 1 ? hi : 0xBF);
        if (!fits) {
            *bad = i;
            return 0;
        }
    }
    return len;
}

// Bytes of the ASCII run at the start of [p, p+n), eight at a time.
inline size_t ascii_prefix(const uint8_t* p, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        std::memcpy(&w, p + i, 8);
        if (w & 0x8080808080808080ull) break;
    }
    while (i < n && p[i] < 0x80) ++i;
    return i;
}

}  // namespace

size_t utf8_first_invalid(std::string_view s) {
    const auto* p = reinterpret_cast<const uint8_t*>(s.data());
    const size_t n = s.size();
    size_t i = 0;
    while (i < n) {
        i += ascii_prefix(p + i, n - i);
        if (i == n) break;
        size_t bad = 0;
        const size_t len = sequence_length(p + i, n - i, &bad);
        if (len == 0) return i;
        i += len;
    }
    return std::string_view::npos;
}

size_t utf8_append_replacing(std::string_view s, std::string& out) {
    static constexpr char kReplacement[] = "\xEF\xBF\xBD";
    const auto* p = reinterpret_cast<const uint8_t*>(s.data());
    const size_t n = s.size();
    size_t i = 0, replaced = 0;
    while (i < n) {
        size_t start = i;
        size_t bad = 0;
        while (i < n) {
            i += ascii_prefix(p + i, n - i);
            if (i == n) break;
            const size_t len = sequence_length(p + i, n - i, &bad);
            if (len == 0) break;
            i += len;
        }
        out.append(s.data() + start, i - start);
        if (i < n) {
            out.append(kReplacement, 3);
            ++replaced;
            i += bad;
        }
    }
    return replaced;
}

size_t utf8_replace_invalid(std::string& s) {
    if (utf8_first_invalid(s) == std::string::npos) return 0;
    std::string out;
    out.reserve(s.size() + 16);
    const size_t replaced = utf8_append_replacing(s, out);
    s.swap(out);
    return replaced;
}

}  // namespace mslm
