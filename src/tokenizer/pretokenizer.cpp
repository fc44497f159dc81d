#include "tokenizer/pretokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "core/error.h"

namespace mslm {

const char* const kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
const char* const kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

struct RegexSplitter::Impl {
    pcre2_code* code = nullptr;
    bool jit = false;
    ~Impl() {
        if (code) pcre2_code_free(code);
    }
};

RegexSplitter::RegexSplitter(const std::string& pattern) : impl_(std::make_unique<Impl>()), pattern_(pattern) {
    int err = 0;
    PCRE2_SIZE offset = 0;
    impl_->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK, &err, &offset, nullptr);
    if (!impl_->code) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        fail("regex /{}/: {} at offset {}", pattern, reinterpret_cast<const char*>(msg), offset);
    }
    // Falls back to the interpreter if JIT is unavailable.
    impl_->jit = pcre2_jit_compile(impl_->code, PCRE2_JIT_COMPLETE) == 0;
}

RegexSplitter::~RegexSplitter() = default;
RegexSplitter::RegexSplitter(RegexSplitter&&) noexcept = default;
RegexSplitter& RegexSplitter::operator=(RegexSplitter&&) noexcept = default;

namespace {
struct MatchData {
    pcre2_match_data* data = nullptr;
    const pcre2_code* owner = nullptr;
    ~MatchData() {
        if (data) pcre2_match_data_free(data);
    }
};
}  // namespace

void RegexSplitter::split(std::string_view text, std::vector<std::string_view>& out) const {
    thread_local MatchData md;
    if (md.owner != impl_->code) {
        if (md.data) pcre2_match_data_free(md.data);
        md.data = pcre2_match_data_create_from_pattern(impl_->code, nullptr);
        md.owner = impl_->code;
    }
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    size_t pos = 0, gap_start = 0;
    while (pos <= text.size()) {
        // pcre2_jit_match skips pcre2_match's per-call checks: a tenth of encode time on short pieces.
        int rc = impl_->jit ? pcre2_jit_match(impl_->code, subject, text.size(), pos, PCRE2_NO_UTF_CHECK, md.data, nullptr)
                            : pcre2_match(impl_->code, subject, text.size(), pos, PCRE2_NO_UTF_CHECK, md.data, nullptr);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        MSLM_CHECK(rc >= 0, "regex /{}/: match error {}", pattern_, rc);
        PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.data);
        size_t begin = ov[0], end = ov[1];
        if (begin > gap_start) out.push_back(text.substr(gap_start, begin - gap_start));
        if (end > begin) {
            out.push_back(text.substr(begin, end - begin));
            pos = end;
        } else {
            // Empty match: it splits the text there (HF drops the empty piece); step over one
            // UTF-8 character so the scan always advances.
            pos = end + 1;
            while (pos < text.size() && (static_cast<unsigned char>(text[pos]) & 0xC0) == 0x80) ++pos;
        }
        gap_start = end;
    }
    if (gap_start < text.size()) out.push_back(text.substr(gap_start));
}

}  // namespace mslm
