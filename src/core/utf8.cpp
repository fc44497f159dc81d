#include "core/utf8.h"

#include <utf8proc.h>

namespace mslm::utf8 {
namespace {

constexpr const char kReplacement[] = "\xEF\xBF\xBD";

// For a lead byte: the number of continuation bytes and the allowed range of the first one
// (Table 3-7 of the Unicode standard). need = -1 for bytes that never start a sequence.
struct Lead {
    int need;
    unsigned char lo, hi;
};

inline Lead lead_info(unsigned char c) {
    if (c >= 0xC2 && c <= 0xDF) return {1, 0x80, 0xBF};
    if (c == 0xE0) return {2, 0xA0, 0xBF};
    if (c == 0xED) return {2, 0x80, 0x9F};
    if (c >= 0xE1 && c <= 0xEF) return {2, 0x80, 0xBF};
    if (c == 0xF0) return {3, 0x90, 0xBF};
    if (c >= 0xF1 && c <= 0xF3) return {3, 0x80, 0xBF};
    if (c == 0xF4) return {3, 0x80, 0x8F};
    return {-1, 0, 0};
}

// Length of the well-formed prefix of the sequence starting at s[i] (1 + matched continuation
// bytes), and whether the whole sequence is there. For an invalid lead byte, returns 0.
inline size_t scan_sequence(std::string_view s, size_t i, bool* complete) {
    auto c = static_cast<unsigned char>(s[i]);
    Lead l = lead_info(c);
    *complete = false;
    if (l.need < 0) return 0;
    size_t j = i + 1;
    for (int k = 0; k < l.need; ++k, ++j) {
        if (j >= s.size()) return j - i;
        auto d = static_cast<unsigned char>(s[j]);
        unsigned char lo = k == 0 ? l.lo : 0x80, hi = k == 0 ? l.hi : 0xBF;
        if (d < lo || d > hi) return j - i;
    }
    *complete = true;
    return j - i;
}

}  // namespace

bool is_valid(std::string_view s) { return first_invalid(s) == std::string_view::npos; }

size_t first_invalid(std::string_view s) {
    size_t i = 0, n = s.size();
    while (i < n) {
        // Eight ASCII bytes at a time: the common case.
        while (i + 8 <= n) {
            uint64_t w;
            __builtin_memcpy(&w, s.data() + i, 8);
            if (w & 0x8080808080808080ull) break;
            i += 8;
        }
        if (i >= n) break;
        if (static_cast<unsigned char>(s[i]) < 0x80) {
            ++i;
            continue;
        }
        bool complete;
        size_t len = scan_sequence(s, i, &complete);
        if (!complete) return i;
        i += len;
    }
    return std::string_view::npos;
}

size_t replace_invalid(std::string& s) {
    if (first_invalid(s) == std::string_view::npos) return 0;
    std::string out;
    size_t count = append_lossy(s, out);
    s.swap(out);
    return count;
}

size_t append_lossy(std::string_view s, std::string& out) {
    out.reserve(out.size() + s.size());
    size_t count = 0;
    size_t i = 0, n = s.size(), run = 0;  // [run, i) is valid and not yet copied
    while (i < n) {
        if (static_cast<unsigned char>(s[i]) < 0x80) {
            ++i;
            continue;
        }
        bool complete;
        size_t len = scan_sequence(s, i, &complete);
        if (complete) {
            i += len;
            continue;
        }
        out.append(s.data() + run, i - run);
        out.append(kReplacement);
        ++count;
        i += len == 0 ? 1 : len;
        run = i;
    }
    out.append(s.data() + run, n - run);
    return count;
}

size_t incomplete_suffix(std::string_view s) {
    size_t n = s.size();
    for (size_t back = 1; back <= 3 && back <= n; ++back) {
        auto c = static_cast<unsigned char>(s[n - back]);
        if (c >= 0x80 && c < 0xC0) continue;  // continuation byte: keep looking for the lead
        bool complete;
        size_t len = scan_sequence(s, n - back, &complete);
        return !complete && len == back ? back : 0;
    }
    return 0;
}

void append_codepoint(uint32_t cp, std::string& out) {
    if (cp < 0x80) {
        out.push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
        out.push_back(static_cast<char>(0xC0 | cp >> 6));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
        out.push_back(static_cast<char>(0xE0 | cp >> 12));
        out.push_back(static_cast<char>(0x80 | (cp >> 6 & 0x3F)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
        out.push_back(static_cast<char>(0xF0 | cp >> 18));
        out.push_back(static_cast<char>(0x80 | (cp >> 12 & 0x3F)));
        out.push_back(static_cast<char>(0x80 | (cp >> 6 & 0x3F)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
}

bool is_whitespace(uint32_t cp) {
    return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
           cp == 0x3000;
}

bool is_word_char(uint32_t cp) {
    if (cp < 0x80)
        return (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || cp == '_';
    if (cp == 0x200C || cp == 0x200D) return true;
    switch (utf8proc_category(static_cast<utf8proc_int32_t>(cp))) {
        case UTF8PROC_CATEGORY_LU:
        case UTF8PROC_CATEGORY_LL:
        case UTF8PROC_CATEGORY_LT:
        case UTF8PROC_CATEGORY_LM:
        case UTF8PROC_CATEGORY_LO:
        case UTF8PROC_CATEGORY_NL:
        case UTF8PROC_CATEGORY_MN:
        case UTF8PROC_CATEGORY_MC:
        case UTF8PROC_CATEGORY_ME:
        case UTF8PROC_CATEGORY_ND:
        case UTF8PROC_CATEGORY_PC:
            return true;
        default:
            return false;
    }
}

}  // namespace mslm::utf8
