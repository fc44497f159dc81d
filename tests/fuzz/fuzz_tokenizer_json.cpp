// libFuzzer target for the tokenizer.json loader: arbitrary bytes are parsed as a tokenizer;
// anything that loads must encode and decode a fixed text without crashing. Only mslm::Error
// (a clean, named refusal) is an acceptable failure.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::string_view text(reinterpret_cast<const char*>(data), size);
    try {
        mslm::Tokenizer tok = mslm::Tokenizer::from_json(text, "fuzz.json");
        auto ids = tok.encode("Hello, world! 123 \xF0\x9F\x99\x82 <|endoftext|>\n\xFF", true);
        (void)tok.decode(ids);
    } catch (const mslm::Error&) {
    }
    return 0;
}
