#include "tokenizer/byte_level.h"

#include <array>

#include "core/utf8.h"

namespace mslm::byte_level {
namespace {

struct Tables {
    std::array<uint32_t, 256> cp{};
    std::array<int16_t, 0x144> byte{};  // every mapped code point is below U+0144
    std::array<std::string, 256> utf8;
    Tables() {
        byte.fill(-1);
        uint32_t next = 0x100;
        for (int b = 0; b < 256; ++b) {
            bool self = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            cp[b] = self ? static_cast<uint32_t>(b) : next++;
            byte[cp[b]] = static_cast<int16_t>(b);
            utf8::append_codepoint(cp[b], utf8[b]);
        }
    }
};

const Tables& tables() {
    static const Tables t;
    return t;
}

}  // namespace

uint32_t byte_to_codepoint(uint8_t b) {
    return tables().cp[b];
}

int codepoint_to_byte(uint32_t cp) {
    return cp < 0x144 ? tables().byte[cp] : -1;
}

std::string_view char_of(uint8_t b) {
    return tables().utf8[b];
}

std::string encode(std::string_view bytes) {
    std::string out;
    out.reserve(bytes.size() * 2);
    for (unsigned char b : bytes) out += tables().utf8[b];
    return out;
}

bool decode(std::string_view text, std::string& out) {
    size_t start = out.size();
    for (size_t i = 0; i < text.size();) {
        uint32_t cp;
        i += utf8::decode(text, i, &cp);
        int b = codepoint_to_byte(cp);
        if (b < 0) {
            out.resize(start);
            return false;
        }
        out.push_back(static_cast<char>(b));
    }
    return true;
}

}  // namespace mslm::byte_level
