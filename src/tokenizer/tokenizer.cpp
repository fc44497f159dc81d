#include "tokenizer/tokenizer.h"

#include <utf8proc.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/thread_pool.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/tokenizer_impl.h"
#include "core/utf8.h"

namespace mslm {

// ---- added tokens ---------------------------------------------------------------------------

int32_t AddedTokenMatcher::child(int32_t node, unsigned char c) const {
    const auto& ch = nodes_[node].children;
    auto it =
        std::lower_bound(ch.begin(), ch.end(), c, [](const auto& p, unsigned char v) { return p.first < v; });
    return it != ch.end() && it->first == c ? it->second : -1;
}

void AddedTokenMatcher::add(std::string_view pattern, int32_t token_index) {
    if (pattern.empty()) return;
    auto first = static_cast<unsigned char>(pattern[0]);
    only_first_byte_ = empty() || only_first_byte_ == first ? first : -1;
    first_byte_[first] = true;
    int32_t node = 0;
    for (unsigned char c : pattern) {
        int32_t next = child(node, c);
        if (next < 0) {
            next = static_cast<int32_t>(nodes_.size());
            nodes_.emplace_back();
            auto& ch = nodes_[node].children;
            auto it = std::lower_bound(ch.begin(), ch.end(), c,
                                       [](const auto& p, unsigned char v) { return p.first < v; });
            ch.insert(it, {c, next});
        }
        node = next;
    }
    if (nodes_[node].token < 0) nodes_[node].token = token_index;  // the first token with this content wins
}

int32_t AddedTokenMatcher::find(std::string_view text, size_t pos, size_t* begin, size_t* end) const {
    for (size_t i = pos; i < text.size(); ++i) {
        if (only_first_byte_ >= 0) {  // usually '<': memchr skips to the candidates
            const void* p = std::memchr(text.data() + i, only_first_byte_, text.size() - i);
            if (!p) return -1;
            i = static_cast<size_t>(static_cast<const char*>(p) - text.data());
        } else if (!first_byte_[static_cast<unsigned char>(text[i])]) {
            continue;
        }
        int32_t node = 0, found = -1;
        size_t found_end = 0;
        for (size_t k = i; k < text.size(); ++k) {
            node = child(node, static_cast<unsigned char>(text[k]));
            if (node < 0) break;
            if (nodes_[node].token >= 0) found = nodes_[node].token, found_end = k + 1;
        }
        if (found >= 0) {
            *begin = i;
            *end = found_end;
            return found;
        }
    }
    return -1;
}

namespace {

uint32_t last_char(std::string_view s) {
    size_t i = s.size() - 1;
    while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
    uint32_t cp;
    utf8::decode(s, i, &cp);
    return cp;
}

// Splits `text` around the added tokens that `matcher` finds, as HF's AddedVocabulary does:
// single_word matches inside a word are skipped, lstrip/rstrip widen a match over the whitespace
// next to it. Calls emit(piece, -1) for text between matches and emit({}, id) for each token.
template <typename Emit>
void split_added_tokens(const Tokenizer::Impl& t, const AddedTokenMatcher& matcher, std::string_view text,
                        Emit&& emit) {
    if (matcher.empty()) {
        emit(text, -1);
        return;
    }
    size_t start_offset = 0, pos = 0, begin, end;
    int32_t index;
    while ((index = matcher.find(text, pos, &begin, &end)) >= 0) {
        pos = end;  // the next search starts after the raw match, whatever stripping does
        const AddedToken& tok = t.added[index];
        size_t start = begin, stop = end;
        if (tok.single_word) {
            bool word_before = start > 0 && utf8::is_word_char(last_char(text.substr(0, start)));
            uint32_t next_cp = 0;
            bool word_after =
                stop < text.size() && (utf8::decode(text, stop, &next_cp), utf8::is_word_char(next_cp));
            if (word_before || word_after) continue;
        }
        if (tok.lstrip) {
            size_t s = start;
            while (s > 0) {
                size_t k = s - 1;
                while (k > 0 && (static_cast<unsigned char>(text[k]) & 0xC0) == 0x80) --k;
                uint32_t cp;
                utf8::decode(text, k, &cp);
                if (!utf8::is_whitespace(cp)) break;
                s = k;
            }
            start = std::max(s, start_offset);
        }
        if (tok.rstrip) {
            while (stop < text.size()) {
                uint32_t cp;
                int len = utf8::decode(text, stop, &cp);
                if (!utf8::is_whitespace(cp)) break;
                stop += len;
            }
        }
        if (start_offset < start) emit(text.substr(start_offset, start - start_offset), -1);
        emit(std::string_view{}, tok.id);
        start_offset = stop;
    }
    if (start_offset < text.size()) emit(text.substr(start_offset), -1);
}

}  // namespace

// True when NFC may change `s`. Code points below U+0300 never change under NFC nor combine with
// a neighbour, and their lead bytes are below 0xCC. Above, a character is stable when it is not a
// mark, has combining class 0, no canonical decomposition and is not a Hangul jamo (the jamo and
// the marks are the only characters that compose with what precedes them).
bool nfc_may_change(std::string_view s) {
    for (size_t i = 0; i < s.size();) {
        if (static_cast<unsigned char>(s[i]) < 0xCC) {
            ++i;
            continue;
        }
        uint32_t cp;
        i += utf8::decode(s, i, &cp);
        const utf8proc_property_t* p = utf8proc_get_property(static_cast<utf8proc_int32_t>(cp));
        if (p->category == UTF8PROC_CATEGORY_MN || p->category == UTF8PROC_CATEGORY_MC ||
            p->category == UTF8PROC_CATEGORY_ME || p->combining_class != 0 ||
            (p->decomp_type == 0 && p->decomp_seqindex != UINT16_MAX) || (cp >= 0x1100 && cp <= 0x11FF))
            return true;
    }
    return false;
}

std::string nfc_normalize(std::string_view s) {
    utf8proc_uint8_t* dst = nullptr;
    utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()),
                                      static_cast<utf8proc_ssize_t>(s.size()), &dst,
                                      static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
    MSLM_CHECK(n >= 0, "NFC normalization failed: {}", utf8proc_errmsg(n));
    std::string out(reinterpret_cast<const char*>(dst), static_cast<size_t>(n));
    std::free(dst);
    return out;
}

// ---- encode ---------------------------------------------------------------------------------

void Tokenizer::Impl::encode(std::string_view text, std::vector<int32_t>& out,
                             bool add_special_tokens) const {
    std::string repaired;
    if (!utf8::is_valid(text)) {
        utf8::append_lossy(text, repaired);
        text = repaired;
    }
    const size_t start = out.size();
    split_added_tokens(*this, raw_matcher, text, [&](std::string_view piece, int32_t id) {
        if (id >= 0)
            out.push_back(id);
        else
            encode_normalized(piece, out);
    });
    if (add_special_tokens) post_process(out, start);
}

void Tokenizer::Impl::encode_normalized(std::string_view piece, std::vector<int32_t>& out) const {
    std::string normalized;
    if (nfc && nfc_may_change(piece)) {
        normalized = nfc_normalize(piece);
        piece = normalized;
    }
    split_added_tokens(*this, normalized_matcher, piece, [&](std::string_view p, int32_t id) {
        if (id >= 0)
            out.push_back(id);
        else
            encode_pre_tokens(p, out);
    });
}

void Tokenizer::Impl::encode_pre_tokens(std::string_view piece, std::vector<int32_t>& out) const {
    if (piece.empty()) return;
    if (pre_tokenizers.empty()) {
        model->encode_word(piece, out);
        return;
    }
    thread_local std::vector<std::string_view> cur, next;
    thread_local std::deque<std::string> prefixed;  // pieces with ByteLevel's added space
    cur.assign(1, piece);
    prefixed.clear();
    for (const PreTokenizerStep& step : pre_tokenizers) {
        next.clear();
        for (std::string_view p : cur) {
            if (step.kind == PreTokenizerStep::Kind::ByteLevel && step.add_prefix_space && p[0] != ' ') {
                std::string& q = prefixed.emplace_back(1, ' ');
                q.append(p);
                p = q;
            }
            if (step.regex)
                step.regex->split(p, next);
            else
                next.push_back(p);
        }
        std::swap(cur, next);
    }
    model->encode_words(cur, out);
}

void Tokenizer::Impl::post_process(std::vector<int32_t>& out, size_t start) const {
    for (const PostProcessorStep& step : post_processors) {
        if (step.kind == PostProcessorStep::Kind::ByteLevel) continue;
        std::vector<int32_t> seq(out.begin() + static_cast<ptrdiff_t>(start), out.end());
        out.resize(start);
        if (step.kind == PostProcessorStep::Kind::Wrap) {
            out.insert(out.end(), step.before.begin(), step.before.end());
            out.insert(out.end(), seq.begin(), seq.end());
            out.insert(out.end(), step.after.begin(), step.after.end());
            continue;
        }
        for (const auto& item : step.items) {
            if (item.is_sequence)
                out.insert(out.end(), seq.begin(), seq.end());
            else
                out.insert(out.end(), item.ids.begin(), item.ids.end());
        }
    }
}

// ---- decode ---------------------------------------------------------------------------------

const std::string* Tokenizer::Impl::token_of(int32_t id) const {
    auto it = added_by_id.find(id);
    if (it != added_by_id.end()) return &added[it->second].content;
    return model->id_to_token(id);
}

void Tokenizer::Impl::append_token_bytes(int32_t id, bool skip_special_tokens, std::string& out) const {
    const std::string* tok = token_of(id);
    if (!tok || (skip_special_tokens && is_special(*tok))) return;
    if (!byte_level::decode(*tok, out)) out += *tok;
}

namespace {

bool parse_byte_token(const std::string& t, unsigned char* byte) {
    if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return false;
    auto hex = [](char c) -> int {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        if (c >= 'A' && c <= 'F') return c - 'A' + 10;
        return -1;
    };
    int hi = hex(t[3]), lo = hex(t[4]);
    if (hi < 0 || lo < 0) return false;
    *byte = static_cast<unsigned char>(hi * 16 + lo);
    return true;
}

void apply_decoder(const DecoderStep& d, std::vector<std::string>& tokens) {
    using Kind = DecoderStep::Kind;
    switch (d.kind) {
        case Kind::ByteLevel: {
            std::string bytes;
            for (const auto& t : tokens)
                if (!byte_level::decode(t, bytes)) bytes += t;
            std::string text;
            utf8::append_lossy(bytes, text);
            tokens.assign(1, std::move(text));
            break;
        }
        case Kind::ByteFallback: {
            // Runs of <0xNN> tokens become their UTF-8 text, or one U+FFFD per byte when invalid.
            std::vector<std::string> outs;
            std::string run;
            size_t run_len = 0;
            auto flush = [&] {
                if (run_len == 0) return;
                if (utf8::is_valid(run)) {
                    outs.push_back(run);
                } else {
                    for (size_t i = 0; i < run_len; ++i) outs.emplace_back("\xEF\xBF\xBD");
                }
                run.clear();
                run_len = 0;
            };
            for (auto& t : tokens) {
                unsigned char b;
                if (parse_byte_token(t, &b)) {
                    run.push_back(static_cast<char>(b));
                    ++run_len;
                } else {
                    flush();
                    outs.push_back(std::move(t));
                }
            }
            flush();
            tokens = std::move(outs);
            break;
        }
        case Kind::Fuse: {
            std::string all;
            for (const auto& t : tokens) all += t;
            tokens.assign(1, std::move(all));
            break;
        }
        case Kind::Strip: {
            // Removes up to `start` leading and `stop` trailing copies of one character, counted
            // in characters.
            for (auto& t : tokens) {
                std::vector<size_t> bounds;  // start offset of each character, then t.size()
                for (size_t i = 0; i < t.size(); i += utf8::char_length(static_cast<unsigned char>(t[i])))
                    bounds.push_back(i);
                bounds.push_back(t.size());
                size_t nchars = bounds.size() - 1, lo = 0, hi = nchars;
                auto char_at = [&](size_t k) {
                    return std::string_view(t).substr(bounds[k], bounds[k + 1] - bounds[k]);
                };
                for (size_t k = 0; k < static_cast<size_t>(d.start) && k < nchars && char_at(k) == d.content;
                     ++k)
                    lo = k + 1;
                for (size_t k = 0;
                     k < static_cast<size_t>(d.stop) && k < nchars && char_at(nchars - 1 - k) == d.content;
                     ++k)
                    hi = nchars - 1 - k;
                t = lo < hi ? t.substr(bounds[lo], bounds[hi] - bounds[lo]) : std::string();
            }
            break;
        }
        case Kind::Replace: {
            for (auto& t : tokens) {
                std::string r;
                size_t i = 0, k;
                while ((k = t.find(d.pattern, i)) != std::string::npos) {
                    r.append(t, i, k - i);
                    r += d.content;
                    i = k + d.pattern.size();
                }
                r.append(t, i);
                t = std::move(r);
            }
            break;
        }
    }
}

}  // namespace

std::string Tokenizer::Impl::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
    if (byte_level_decoder) {
        std::string bytes, text;
        for (int32_t id : ids) append_token_bytes(id, skip_special_tokens, bytes);
        utf8::append_lossy(bytes, text);
        return text;
    }
    std::vector<std::string> tokens;
    tokens.reserve(ids.size());
    for (int32_t id : ids) {
        const std::string* tok = token_of(id);
        if (tok && !(skip_special_tokens && is_special(*tok))) tokens.push_back(*tok);
    }
    std::string out;
    if (!has_decoder) {
        for (size_t i = 0; i < tokens.size(); ++i) {
            if (i) out += ' ';
            out += tokens[i];
        }
        return out;
    }
    for (const DecoderStep& d : decoders) apply_decoder(d, tokens);
    for (const auto& t : tokens) out += t;
    return out;
}

// ---- Tokenizer ------------------------------------------------------------------------------

Tokenizer::Tokenizer(std::shared_ptr<const Impl> impl)
    : impl_(std::move(impl)), eot_id_(impl_->default_eot) {}

Tokenizer Tokenizer::load(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    MSLM_CHECK(f, "{}: cannot open tokenizer file", path);
    std::stringstream ss;
    ss << f.rdbuf();
    MSLM_CHECK(!f.bad(), "{}: read error", path);
    return from_json(ss.str(), path);
}

Tokenizer Tokenizer::from_json(std::string_view json_text, const std::string& source_name) {
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(json_text);
    } catch (const nlohmann::json::exception& e) {
        fail("{}: malformed JSON: {}", source_name, e.what());
    }
    return Tokenizer(build_tokenizer(j, source_name));
}

void Tokenizer::save(const std::string& path) const {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    MSLM_CHECK(f, "{}: cannot open for writing", path);
    f << impl_->to_json(2) << '\n';
    f.close();
    MSLM_CHECK(f, "{}: write error", path);
}

std::string Tokenizer::to_json(int indent) const {
    return indent < 0 ? impl_->canonical : impl_->to_json(indent);
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
    std::vector<int32_t> out;
    impl_->encode(text, out, add_special_tokens);
    return out;
}

void Tokenizer::encode_append(std::string_view text, std::vector<int32_t>& out) const {
    impl_->encode(text, out, false);
}

void Tokenizer::encode_append(std::string_view text, std::vector<int32_t>& out,
                              bool add_special_tokens) const {
    impl_->encode(text, out, add_special_tokens);
}

std::vector<std::vector<int32_t>> Tokenizer::encode_batch(const std::vector<std::string_view>& texts,
                                                          bool add_special_tokens) const {
    std::vector<std::vector<int32_t>> out(texts.size());
    // Texts differ in length, so each thread pulls the next text from a shared counter instead of
    // taking a fixed contiguous share.
    std::atomic<size_t> next{0};
    const Impl& impl = *impl_;
    parallel_for(
        std::min<int64_t>(num_threads(), static_cast<int64_t>(texts.size())),
        [&](int64_t, int64_t) {
            for (size_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < texts.size();)
                impl.encode(texts[i], out[i], add_special_tokens);
        },
        1);
    return out;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
    return impl_->decode(ids, skip_special_tokens);
}

int32_t Tokenizer::token_to_id(std::string_view token) const {
    auto it = impl_->added_by_content.find(token);
    if (it != impl_->added_by_content.end()) return it->second;
    return impl_->model->token_to_id(token);
}

std::optional<std::string_view> Tokenizer::id_to_token(int32_t id) const {
    const std::string* t = impl_->token_of(id);
    if (!t) return std::nullopt;
    return std::string_view(*t);
}

int64_t Tokenizer::vocab_size() const {
    return impl_->vocab_size;
}

void Tokenizer::set_eot_id(int32_t id) {
    MSLM_CHECK(id >= -1 && id < vocab_size(), "{}: eot id {} is outside the vocabulary (size {})",
               impl_->source, id, vocab_size());
    eot_id_ = id;
    eot_overridden_ = id != impl_->default_eot;
}

std::string Tokenizer::fingerprint() const {
    if (!eot_overridden_) return impl_->sha256;
    return sha256_hex(impl_->canonical + "\neot_id=" + std::to_string(eot_id_));
}

const std::vector<AddedToken>& Tokenizer::added_tokens() const {
    return impl_->added;
}

const std::string& Tokenizer::source_name() const {
    return impl_->source;
}

// ---- StreamDecoder --------------------------------------------------------------------------

StreamDecoder::StreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens)
    : impl_(tokenizer.impl_), skip_special_(skip_special_tokens) {}

std::string StreamDecoder::push(int32_t id) {
    std::string out;
    if (impl_->byte_level_decoder) {
        impl_->append_token_bytes(id, skip_special_, pending_);
        size_t hold = utf8::incomplete_suffix(pending_);
        utf8::append_lossy(std::string_view(pending_).substr(0, pending_.size() - hold), out);
        pending_.erase(0, pending_.size() - hold);
        return out;
    }
    // Any other decoder: re-decode a window of ids and return what grew, unless the text ends in
    // U+FFFD (a character that the next ids may complete). The window keeps the ids of the last
    // returned step as context, for decoders whose output depends on the neighbouring tokens.
    ids_.push_back(id);
    std::string text = impl_->decode(ids_, skip_special_);
    static constexpr std::string_view kReplacement = "\xEF\xBF\xBD";
    bool ends_replaced = text.size() >= 3 && std::string_view(text).substr(text.size() - 3) == kReplacement;
    if (text.size() <= prefix_.size() || ends_replaced) return out;
    size_t common = 0;
    while (common < prefix_.size() && text[common] == prefix_[common]) ++common;
    out = text.substr(common);
    ids_.erase(ids_.begin(), ids_.begin() + static_cast<ptrdiff_t>(prefix_index_));
    prefix_index_ = ids_.size();
    prefix_ = impl_->decode(ids_, skip_special_);
    return out;
}

std::string StreamDecoder::flush() {
    std::string out;
    if (impl_->byte_level_decoder) {
        utf8::append_lossy(pending_, out);
        pending_.clear();
        return out;
    }
    std::string text = impl_->decode(ids_, skip_special_);
    size_t common = 0;
    while (common < prefix_.size() && common < text.size() && text[common] == prefix_[common]) ++common;
    out = text.substr(common);
    ids_.clear();
    prefix_.clear();
    prefix_index_ = 0;
    return out;
}

}  // namespace mslm
