// Document sources: spec parsing, path resolution (file, directory, glob), and one streaming
// reader per format. Every reader holds at most one document, one line and two 1 MiB buffers.
#include "data/source.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string_view>
#include <system_error>

#include "core/error.h"
#include "data/compressed_reader.h"
#include "core/utf8.h"

namespace fs = std::filesystem;

namespace mslm {

namespace {

std::string display_name(const SourceSpec& spec) {
    return spec.name.empty() ? spec.path : spec.name;
}

// ---------------------------------------------------------------------------------------------
// Spec parsing

bool is_key(std::string_view k) {
    if (k.empty()) return false;
    return std::all_of(k.begin(), k.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
    });
}

// "k=v,k=v" (or "") as key/value pairs; false when the text is not of that shape.
bool split_options(std::string_view s, std::vector<std::pair<std::string, std::string>>& out) {
    out.clear();
    if (s.empty()) return true;
    for (;;) {
        const size_t comma = s.find(',');
        const std::string_view item = s.substr(0, comma);
        const size_t eq = item.find('=');
        if (eq == std::string_view::npos || !is_key(item.substr(0, eq))) return false;
        out.emplace_back(std::string(item.substr(0, eq)), std::string(item.substr(eq + 1)));
        if (comma == std::string_view::npos) return true;
        s.remove_prefix(comma + 1);
    }
}

// ---------------------------------------------------------------------------------------------
// Path resolution

bool has_glob_chars(std::string_view s) {
    return s.find_first_of("*?[") != std::string_view::npos;
}
bool is_hidden(std::string_view name) {
    return !name.empty() && name[0] == '.';
}

// Index after the UTF-8 character that starts at s[i].
size_t next_char(std::string_view s, size_t i) {
    ++i;
    while (i < s.size() && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) ++i;
    return i;
}

// Matches s[si] against the class that opens at p[pi] == '['. Returns -1 when p has no closing
// ']' (the '[' is then a literal), else 1 / 0 for match / no match with *end just past the ']'.
// Members are bytes: ranges and names compare ASCII.
int match_class(std::string_view p, size_t pi, std::string_view s, size_t si, size_t* end) {
    size_t i = pi + 1;
    const bool negate = i < p.size() && (p[i] == '!' || p[i] == '^');
    if (negate) ++i;
    const size_t first = i;
    bool hit = false;
    const auto c = static_cast<unsigned char>(s[si]);
    for (; i < p.size(); ++i) {
        if (p[i] == ']' && i > first) {
            *end = i + 1;
            return hit != negate ? 1 : 0;
        }
        auto lo = static_cast<unsigned char>(p[i]), hi = lo;
        if (i + 2 < p.size() && p[i + 1] == '-' && p[i + 2] != ']') {
            hi = static_cast<unsigned char>(p[i + 2]);
            i += 2;
        }
        if (c >= lo && c <= hi) hit = true;
    }
    return -1;
}

// One path component against one pattern component: '*' any run, '?' one character, '[...]'
// a class. A name starting with '.' needs a pattern starting with '.' (as in the shell).
bool match_component(std::string_view p, std::string_view s) {
    if (is_hidden(s) && !is_hidden(p)) return false;
    size_t pi = 0, si = 0;
    size_t star_p = std::string_view::npos, star_s = 0;
    while (si < s.size()) {
        if (pi < p.size()) {
            if (p[pi] == '*') {
                star_p = pi++;
                star_s = si;
                continue;
            }
            if (p[pi] == '?') {
                ++pi;
                si = next_char(s, si);
                continue;
            }
            size_t end = 0;
            const int cls = p[pi] == '[' ? match_class(p, pi, s, si, &end) : -1;
            if (cls == 1) {
                pi = end;
                si = next_char(s, si);
                continue;
            }
            if (cls == -1 && p[pi] == s[si]) {
                ++pi;
                ++si;
                continue;
            }
        }
        if (star_p == std::string_view::npos) return false;
        pi = star_p + 1;  // let the last '*' swallow one more character
        star_s = next_char(s, star_s);
        si = star_s;
    }
    while (pi < p.size() && p[pi] == '*') ++pi;
    return pi == p.size();
}

// Pattern components against path components; "**" matches zero or more non-hidden components.
bool match_path(const std::vector<std::string>& pat, size_t i, const std::vector<std::string>& parts,
                size_t j) {
    if (i == pat.size()) return j == parts.size();
    if (pat[i] == "**") {
        for (size_t k = j;; ++k) {
            if (match_path(pat, i + 1, parts, k)) return true;
            if (k == parts.size() || is_hidden(parts[k])) return false;
        }
    }
    return j < parts.size() && match_component(pat[i], parts[j]) && match_path(pat, i + 1, parts, j + 1);
}

std::vector<std::string> split_path(std::string_view s) {
    std::vector<std::string> parts;
    size_t start = 0;
    while (start <= s.size()) {
        const size_t slash = std::min(s.find('/', start), s.size());
        if (slash > start) parts.emplace_back(s.substr(start, slash - start));
        start = slash + 1;
    }
    return parts;
}

std::vector<std::string> resolve_glob(const std::string& pattern) {
    std::vector<std::string> comps = split_path(pattern);
    // The literal leading components are the directory to walk.
    std::string base = pattern.starts_with('/') ? "/" : "";
    size_t lit = 0;
    while (lit + 1 < comps.size() && !has_glob_chars(comps[lit])) {
        if (!base.empty() && base.back() != '/') base += '/';
        base += comps[lit++];
    }
    const std::vector<std::string> rest(comps.begin() + static_cast<std::ptrdiff_t>(lit), comps.end());
    const bool deep = std::find(rest.begin(), rest.end(), "**") != rest.end();
    const bool wants_hidden =
        std::any_of(rest.begin(), rest.end(), [](const auto& c) { return is_hidden(c); });
    const fs::path root = base.empty() ? fs::path(".") : fs::path(base);

    std::vector<std::string> files;
    std::error_code ec;
    if (!fs::is_directory(root, ec)) return files;
    auto it = fs::recursive_directory_iterator(root, fs::directory_options::skip_permission_denied, ec);
    for (; !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
        const fs::directory_entry& e = *it;
        const std::string name = e.path().filename().string();
        if (e.is_directory(ec)) {
            // Prune what no component can reach: hidden trees, and depth past the pattern's.
            const bool too_deep = !deep && static_cast<size_t>(it.depth()) + 2 > rest.size();
            if (too_deep || (is_hidden(name) && !wants_hidden)) it.disable_recursion_pending();
            continue;
        }
        if (!e.is_regular_file(ec)) continue;
        const std::string rel = e.path().lexically_relative(root).generic_string();
        if (match_path(rest, 0, split_path(rel), 0)) {
            files.push_back(base.empty() ? rel : (fs::path(base) / rel).generic_string());
        }
    }
    return files;
}

std::vector<std::string> resolve_directory(const std::string& dir) {
    std::vector<std::string> files;
    std::error_code ec;
    auto it = fs::recursive_directory_iterator(dir, fs::directory_options::skip_permission_denied, ec);
    if (ec) fail("{}: cannot list directory: {}", dir, ec.message());
    for (; !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
        const fs::directory_entry& e = *it;
        if (is_hidden(e.path().filename().string())) {
            if (e.is_directory(ec)) it.disable_recursion_pending();
            continue;
        }
        if (e.is_regular_file(ec)) files.push_back(e.path().generic_string());
    }
    if (ec) fail("{}: cannot list directory: {}", dir, ec.message());
    return files;
}

std::vector<std::string> resolve_files(const SourceSpec& spec) {
    const std::string& path = spec.path;
    std::error_code ec;
    const fs::file_status st = fs::status(path, ec);
    std::vector<std::string> files;
    if (fs::exists(st)) {
        if (fs::is_regular_file(st)) {
            files.push_back(path);
        } else if (fs::is_directory(st)) {
            files = resolve_directory(path);
            MSLM_CHECK(!files.empty(), "{}: directory has no files", path);
        } else {
            fail("{}: not a regular file or directory", path);
        }
    } else if (has_glob_chars(path)) {
        files = resolve_glob(path);
        MSLM_CHECK(!files.empty(), "{}: no files match", path);
    } else {
        fail("{}: no such file or directory", path);
    }
    std::sort(files.begin(), files.end());
    for (const std::string& f : files) {
        if (::access(f.c_str(), R_OK) != 0) fail("{}: cannot read: {}", f, std::strerror(errno));
    }
    return files;
}

SourceFormat format_from_name(std::string_view file) {
    std::string ext = fs::path(std::string(strip_compression_suffix(file))).extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
    if (ext == ".txt" || ext == ".text" || ext == ".md") return SourceFormat::Txt;
    if (ext == ".jsonl" || ext == ".ndjson") return SourceFormat::Jsonl;
    if (ext == ".json") return SourceFormat::Json;
    return SourceFormat::Auto;
}

// ---------------------------------------------------------------------------------------------
// Helpers shared by the readers

bool is_blank(std::string_view s) {
    return std::all_of(s.begin(), s.end(), [](char c) {
        return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
    });
}

// "file:line", reusing the string's storage: line mode calls this once per line.
void set_origin(Document& doc, const std::string& path, int64_t line) {
    doc.origin.clear();
    fmt::format_to(std::back_inserter(doc.origin), "{}:{}", path, line);
}

void strip_cr(std::string& line) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
}

// Applies the policy to `text`, whose first byte is at (line, offset) of the decompressed file.
void apply_utf8(std::string& text, Utf8Policy policy, const std::string& path, int64_t line, int64_t offset) {
    const size_t bad = utf8::first_invalid(text);
    if (bad == std::string::npos) return;
    if (policy == Utf8Policy::Fail) {
        const auto newlines = std::count(text.begin(), text.begin() + static_cast<std::ptrdiff_t>(bad), '\n');
        fail("{}:{}: invalid UTF-8 at byte offset {}", path, line + newlines,
             offset + static_cast<int64_t>(bad));
    }
    utf8::replace_invalid(text);
}

// SAX handler that keeps only the string at a dotted field path ("meta.text") of a top-level
// object, so a record's other fields are never built into a DOM.
class FieldExtractor {
public:
    using json = nlohmann::json;
    enum class Found { None, String, NotString };

    explicit FieldExtractor(std::vector<std::string> path) : path_(std::move(path)) {}

    // Parses one complete JSON text; false on malformed JSON (error() says why).
    bool parse(std::string_view text) {
        depth_ = on_track_ = 0;
        key_matches_ = false;
        found_ = Found::None;
        error_.clear();
        return json::sax_parse(text.data(), text.data() + text.size(), this);
    }
    Found found() const { return found_; }
    std::string& value() { return value_; }
    const std::string& error() const { return error_; }

    // nlohmann SAX interface.
    bool null() { return scalar(); }
    bool boolean(bool) { return scalar(); }
    bool number_integer(json::number_integer_t) { return scalar(); }
    bool number_unsigned(json::number_unsigned_t) { return scalar(); }
    bool number_float(json::number_float_t, const std::string&) { return scalar(); }
    bool binary(json::binary_t&) { return scalar(); }
    bool string(std::string& s) {
        if (at_target()) {
            value_ = std::move(s);
            found_ = Found::String;
        }
        key_matches_ = false;
        return true;
    }
    bool start_object(size_t) {
        const bool track = depth_ == 0 || at_prefix();
        if (at_target()) found_ = Found::NotString;
        ++depth_;
        if (track) on_track_ = depth_;
        key_matches_ = false;
        return true;
    }
    bool key(std::string& k) {
        key_matches_ = depth_ == on_track_ && depth_ <= path_.size() && k == path_[depth_ - 1];
        return true;
    }
    bool end_object() { return end_container(); }
    bool start_array(size_t) {
        if (at_target()) found_ = Found::NotString;
        ++depth_;
        key_matches_ = false;
        return true;
    }
    bool end_array() { return end_container(); }
    bool parse_error(size_t, const std::string&, const nlohmann::detail::exception& e) {
        error_ = e.what();
        return false;
    }

private:
    // The value that follows is the one at the key path (at_target) or on the way to it.
    bool at_target() const { return key_matches_ && depth_ == on_track_ && depth_ == path_.size(); }
    bool at_prefix() const { return key_matches_ && depth_ == on_track_ && depth_ < path_.size(); }
    bool scalar() {
        if (at_target()) found_ = Found::NotString;
        key_matches_ = false;
        return true;
    }
    bool end_container() {
        if (on_track_ == depth_) --on_track_;
        --depth_;
        key_matches_ = false;
        return true;
    }

    std::vector<std::string> path_;
    size_t depth_ = 0;     // open containers
    size_t on_track_ = 0;  // containers 1..on_track_ are objects along the key path
    bool key_matches_ = false;
    Found found_ = Found::None;
    std::string value_;
    std::string error_;
};

// nlohmann's "[json.exception.parse_error.101] parse error at line 2, column 5: msg" as
// (2, 5, "msg"); line and column 0 when the message has no position.
struct JsonError {
    int64_t line = 0, column = 0;
    std::string message;
};

JsonError split_json_error(std::string_view what) {
    JsonError e;
    if (what.starts_with("[json.exception.")) what.remove_prefix(std::min(what.find("] ") + 2, what.size()));
    constexpr std::string_view kAt = "parse error at line ";
    if (what.starts_with(kAt)) {
        std::string_view rest = what.substr(kAt.size());
        auto r = std::from_chars(rest.data(), rest.data() + rest.size(), e.line);
        rest = rest.substr(static_cast<size_t>(r.ptr - rest.data()));
        if (rest.starts_with(", column ")) {
            rest.remove_prefix(9);
            r = std::from_chars(rest.data(), rest.data() + rest.size(), e.column);
            rest = rest.substr(static_cast<size_t>(r.ptr - rest.data()));
        }
        if (rest.starts_with(": ")) rest.remove_prefix(2);
        what = rest;
    } else if (what.starts_with("parse error: ")) {
        what.remove_prefix(13);
    }
    e.message = std::string(what);
    return e;
}

// ---------------------------------------------------------------------------------------------
// Readers, one per file

class FileReader {
public:
    virtual ~FileReader() = default;
    virtual bool next(Document& doc) = 0;
    int64_t skipped = 0;
};

class TxtReader final : public FileReader {
public:
    TxtReader(const std::string& path, TxtSplit split, Utf8Policy utf8)
        : in_(path), split_(split), utf8_(utf8) {}

    bool next(Document& doc) override {
        switch (split_) {
            case TxtSplit::File:
                return next_file(doc);
            case TxtSplit::Line:
                return next_line(doc);
            case TxtSplit::Block:
                return next_block(doc);
            case TxtSplit::Percent:
                return next_entry(doc);
        }
        return false;
    }

private:
    bool next_file(Document& doc) {
        if (done_) return false;
        done_ = true;
        const int64_t offset = in_.offset();
        doc.text.clear();
        in_.read_rest(doc.text);
        if (is_blank(doc.text)) return false;
        apply_utf8(doc.text, utf8_, in_.path(), 1, offset);
        doc.origin = in_.path();
        return true;
    }

    bool next_line(Document& doc) {
        for (;;) {
            const int64_t line = in_.line(), offset = in_.offset();
            if (!in_.read_line(doc.text)) return false;
            strip_cr(doc.text);
            if (is_blank(doc.text)) continue;
            apply_utf8(doc.text, utf8_, in_.path(), line, offset);
            set_origin(doc, in_.path(), line);
            return true;
        }
    }

    // Lines up to the next blank line, joined by '\n'.
    bool next_block(Document& doc) {
        doc.text.clear();
        int64_t start_line = 0;
        for (;;) {
            const int64_t line = in_.line(), offset = in_.offset();
            if (!in_.read_line(line_)) break;
            strip_cr(line_);
            if (is_blank(line_)) {
                if (start_line > 0) break;
                continue;
            }
            apply_utf8(line_, utf8_, in_.path(), line, offset);
            if (start_line > 0) {
                doc.text += '\n';
            } else {
                start_line = line;
            }
            doc.text += line_;
        }
        if (start_line == 0) return false;
        set_origin(doc, in_.path(), start_line);
        return true;
    }

    // Lines up to the next line that is only "%" (fortune's strfile format), joined by '\n'. Blank
    // lines inside an entry belong to it; leading and trailing blank lines do not.
    bool next_entry(Document& doc) {
        doc.text.clear();
        int64_t start_line = 0;
        size_t pending_blank = 0;  // blank lines seen since the last text line of this entry
        for (;;) {
            const int64_t line = in_.line(), offset = in_.offset();
            if (!in_.read_line(line_)) break;
            strip_cr(line_);
            if (line_ == "%") {
                if (start_line > 0) break;
                continue;
            }
            if (is_blank(line_)) {
                if (start_line > 0) ++pending_blank;
                continue;
            }
            apply_utf8(line_, utf8_, in_.path(), line, offset);
            if (start_line > 0) {
                doc.text.append(pending_blank + 1, '\n');
            } else {
                start_line = line;
            }
            pending_blank = 0;
            doc.text += line_;
        }
        if (start_line == 0) return false;
        set_origin(doc, in_.path(), start_line);
        return true;
    }

    TextInput in_;
    TxtSplit split_;
    Utf8Policy utf8_;
    std::string line_;
    bool done_ = false;
};

// Shared by JSONL and JSON: a record's text (already UTF-8 checked) to a document, or an error
// / a skip. `line` is where the record starts; returns false when skipped.
class RecordParser {
public:
    RecordParser(const std::vector<std::string>& field_path, std::string field, bool skip_bad)
        : extract_(field_path), field_(std::move(field)), skip_bad_(skip_bad) {}

    bool parse(std::string_view record, const std::string& path, int64_t line, bool multiline, Document& doc,
               int64_t& skipped) {
        if (!extract_.parse(record)) {
            if (skip_bad_) {
                ++skipped;
                return false;
            }
            const JsonError e = split_json_error(extract_.error());
            if (!multiline) {
                fail("{}:{}: malformed JSON: {}{}", path, line,
                     e.column > 0 ? fmt::format("column {}: ", e.column) : "", e.message);
            }
            // A record that spans lines: report the line of the error itself.
            const int64_t at = e.line > 0 ? line + e.line - 1 : line;
            fail("{}:{}: malformed JSON: {}{}", path, at,
                 e.line > 1 ? fmt::format("column {}: ", e.column) : "", e.message);
        }
        if (extract_.found() != FieldExtractor::Found::String) {
            if (skip_bad_) {
                ++skipped;
                return false;
            }
            fail("{}:{}: no string field '{}'", path, line, field_);
        }
        doc.text.swap(extract_.value());
        set_origin(doc, path, line);
        return true;
    }

private:
    FieldExtractor extract_;
    std::string field_;
    bool skip_bad_;
};

class JsonlReader final : public FileReader {
public:
    JsonlReader(const std::string& path, const std::vector<std::string>& field_path, const SourceSpec& spec,
                const ReadOptions& opt)
        : in_(path), records_(field_path, spec.field, opt.skip_bad), utf8_(opt.utf8) {}

    bool next(Document& doc) override {
        for (;;) {
            const int64_t line = in_.line(), offset = in_.offset();
            if (!in_.read_line(line_)) return false;
            if (is_blank(line_)) continue;
            apply_utf8(line_, utf8_, in_.path(), line, offset);
            if (records_.parse(line_, in_.path(), line, false, doc, skipped)) return true;
        }
    }

private:
    TextInput in_;
    RecordParser records_;
    Utf8Policy utf8_;
    std::string line_;
};

// A .json file: a top-level array of records, or an object with exactly one array member (other
// members are checked and ignored). The structure is scanned byte by byte and each element is
// handed to the parser alone, so memory holds one element, not the file.
class JsonReader final : public FileReader {
public:
    JsonReader(const std::string& path, const std::vector<std::string>& field_path, const SourceSpec& spec,
               const ReadOptions& opt)
        : in_(path), records_(field_path, spec.field, opt.skip_bad), utf8_(opt.utf8) {
        skip_ws();
        const int c = in_.get();
        if (c == '[') {
            in_object_ = false;
        } else if (c == '{') {
            in_object_ = true;
            if (!to_next_array_member(true)) structure_error("an object without an array member");
        } else {
            structure_error("expected a JSON array or an object with one array member");
        }
    }

    bool next(Document& doc) override {
        for (;;) {
            if (done_) return false;
            skip_ws();
            if (elements_ > 0 || in_.peek() == ']') {
                const int c = in_.get();
                if (c == ']') {
                    finish_array();
                    continue;
                }
                if (c != ',') structure_error("expected ',' or ']' after an array element");
                skip_ws();
            }
            const int64_t line = in_.line(), offset = in_.offset();
            read_value(element_);
            ++elements_;
            apply_utf8(element_, utf8_, in_.path(), line, offset);
            if (records_.parse(element_, in_.path(), line, true, doc, skipped)) return true;
        }
    }

private:
    [[noreturn]] void structure_error(std::string_view what) {
        fail("{}:{}: malformed JSON: {}", in_.path(), in_.line(), what);
    }

    void skip_ws() {
        for (int c = in_.peek(); c == ' ' || c == '\t' || c == '\n' || c == '\r'; c = in_.peek()) in_.get();
    }

    void expect_end() {
        skip_ws();
        if (in_.peek() != -1) structure_error("unexpected data after the top-level value");
        done_ = true;
    }

    void finish_array() {
        if (!in_object_) return expect_end();
        if (to_next_array_member(false)) structure_error("an object with more than one array member");
        expect_end();
    }

    // Inside the top-level object: reads members up to the value of the next array member (true,
    // just past its '[') or to the object's '}' (false). Other values must be valid JSON.
    bool to_next_array_member(bool first) {
        for (;;) {
            skip_ws();
            int c = in_.get();
            if (c == '}' && first) return false;
            if (!first) {
                if (c == '}') return false;
                if (c != ',') structure_error("expected ',' or '}' after an object member");
                skip_ws();
                c = in_.get();
            }
            first = false;
            if (c != '"') structure_error("expected an object key");
            skip_string_rest();
            skip_ws();
            if (in_.get() != ':') structure_error("expected ':' after an object key");
            skip_ws();
            if (in_.peek() == '[') {
                in_.get();
                return true;
            }
            const int64_t line = in_.line();
            read_value(element_);
            if (!nlohmann::json::accept(element_)) {
                fail("{}:{}: malformed JSON: invalid value of a top-level member", in_.path(), line);
            }
        }
    }

    void skip_string_rest() {
        for (int c = in_.get();; c = in_.get()) {
            if (c == -1) structure_error("unexpected end of file in a string");
            if (c == '\\') {
                in_.get();
            } else if (c == '"') {
                return;
            }
        }
    }

    // The bytes of one JSON value: a string, a balanced {...} / [...] (strings inside respected),
    // or a scalar up to the next delimiter. Validity is the parser's job.
    void read_value(std::string& out) {
        out.clear();
        int c = in_.peek();
        if (c == -1) structure_error("unexpected end of file");
        if (c == '{' || c == '[' || c == '"') {
            int depth = 0;
            do {
                c = in_.get();
                if (c == -1) structure_error("unexpected end of file inside a value");
                out += static_cast<char>(c);
                if (c == '"') {
                    for (c = in_.get(); c != '"'; c = in_.get()) {
                        if (c == -1) structure_error("unexpected end of file in a string");
                        out += static_cast<char>(c);
                        if (c == '\\') {
                            c = in_.get();
                            if (c == -1) structure_error("unexpected end of file in a string");
                            out += static_cast<char>(c);
                        }
                    }
                    out += '"';
                } else if (c == '{' || c == '[') {
                    ++depth;
                } else if (c == '}' || c == ']') {
                    --depth;
                }
            } while (depth > 0);
            return;
        }
        for (; c != -1 && c != ',' && c != ']' && c != '}' && c != ' ' && c != '\t' && c != '\n' && c != '\r';
             c = in_.peek()) {
            out += static_cast<char>(in_.get());
        }
        if (out.empty()) structure_error(fmt::format("unexpected '{}'", static_cast<char>(c)));
    }

    TextInput in_;
    RecordParser records_;
    Utf8Policy utf8_;
    std::string element_;
    bool in_object_ = false;
    bool done_ = false;
    int64_t elements_ = 0;
};

// All files of one spec, in order.
class SourceReader final : public DocumentReader {
public:
    SourceReader(SourceSpec spec, ReadOptions opt, std::vector<std::string> files,
                 std::vector<SourceFormat> formats, std::vector<std::string> field_path)
        : spec_(std::move(spec)),
          opt_(opt),
          files_(std::move(files)),
          formats_(std::move(formats)),
          field_path_(std::move(field_path)) {}

    bool next(Document& doc) override {
        for (;;) {
            if (!current_) {
                if (index_ == files_.size()) {
                    if (documents_ == 0) {
                        fail("{}: no documents in {} file{}{}", display_name(spec_), files_.size(),
                             files_.size() == 1 ? "" : "s",
                             skipped_ > 0 ? fmt::format(" ({} records skipped)", skipped_) : "");
                    }
                    return false;
                }
                current_ = open_file(index_);
            }
            if (current_->next(doc)) {
                ++documents_;
                return true;
            }
            skipped_ += current_->skipped;
            current_.reset();
            ++index_;
        }
    }

    int64_t skipped() const override { return skipped_ + (current_ ? current_->skipped : 0); }
    const std::vector<std::string>& files() const override { return files_; }

private:
    std::unique_ptr<FileReader> open_file(size_t i) {
        const std::string& path = files_[i];
        switch (formats_[i]) {
            case SourceFormat::Txt:
                return std::make_unique<TxtReader>(path, spec_.txt_split, opt_.utf8);
            case SourceFormat::Jsonl:
                return std::make_unique<JsonlReader>(path, field_path_, spec_, opt_);
            case SourceFormat::Json:
                return std::make_unique<JsonReader>(path, field_path_, spec_, opt_);
            case SourceFormat::Auto:
                break;
        }
        fail("{}: no format", path);
    }

    SourceSpec spec_;
    ReadOptions opt_;
    std::vector<std::string> files_;
    std::vector<SourceFormat> formats_;
    std::vector<std::string> field_path_;
    std::unique_ptr<FileReader> current_;
    size_t index_ = 0;
    int64_t documents_ = 0;
    int64_t skipped_ = 0;  // in finished files
};

}  // namespace

SourceSpec parse_source_spec(const std::string& text) {
    // Options follow the last ':' whose suffix reads as "key=value,..." (or is empty), so paths
    // with ':' in them still work; a trailing ':' ends a path that would otherwise look like options.
    std::vector<std::pair<std::string, std::string>> options;
    size_t cut = std::string::npos;
    for (size_t i = text.rfind(':'); i != std::string::npos;
         i = i == 0 ? std::string::npos : text.rfind(':', i - 1)) {
        if (split_options(std::string_view(text).substr(i + 1), options)) {
            cut = i;
            break;
        }
    }
    if (cut == std::string::npos) options.clear();
    SourceSpec spec;
    spec.path = text.substr(0, cut);
    MSLM_CHECK(!spec.path.empty(), "source spec '{}': empty path", text);

    std::vector<std::string> seen;
    for (const auto& option : options) {
        const std::string& key = option.first;  // not a structured binding: lambdas capture it below
        const std::string& value = option.second;
        MSLM_CHECK(std::find(seen.begin(), seen.end(), key) == seen.end(),
                   "source spec '{}': key '{}' given twice", text, key);
        seen.push_back(key);
        const auto bad_value = [&](std::string_view allowed) {
            fail("source spec '{}': bad {} '{}' (expected {})", text, key, value, allowed);
        };
        if (key == "format") {
            if (value == "txt") {
                spec.format = SourceFormat::Txt;
            } else if (value == "jsonl") {
                spec.format = SourceFormat::Jsonl;
            } else if (value == "json") {
                spec.format = SourceFormat::Json;
            } else if (value == "auto") {
                spec.format = SourceFormat::Auto;
            } else {
                bad_value("txt, jsonl, json or auto");
            }
        } else if (key == "split") {
            if (value == "file") {
                spec.txt_split = TxtSplit::File;
            } else if (value == "block") {
                spec.txt_split = TxtSplit::Block;
            } else if (value == "line") {
                spec.txt_split = TxtSplit::Line;
            } else if (value == "fortune") {
                spec.txt_split = TxtSplit::Percent;
            } else {
                bad_value("file, block, line or fortune");
            }
        } else if (key == "field") {
            if (value.empty()) bad_value("a field name or dotted path");
            spec.field = value;
        } else if (key == "weight") {
            double w = 0;
            const auto r = std::from_chars(value.data(), value.data() + value.size(), w);
            if (r.ec != std::errc() || r.ptr != value.data() + value.size() || !std::isfinite(w) || w <= 0) {
                bad_value("a number > 0");
            }
            spec.weight = w;
        } else if (key == "name") {
            if (value.empty()) bad_value("a non-empty name");
            spec.name = value;
        } else {
            fail("source spec '{}': unknown key '{}' (keys: format, split, field, weight, name)", text, key);
        }
    }
    return spec;
}

std::unique_ptr<DocumentReader> open_source(const SourceSpec& spec, const ReadOptions& opt) {
    MSLM_CHECK(!spec.path.empty(), "source '{}': empty path", display_name(spec));
    std::vector<std::string> field_path;
    for (size_t start = 0;;) {
        const size_t dot = spec.field.find('.', start);
        field_path.push_back(spec.field.substr(start, dot - start));
        MSLM_CHECK(!field_path.back().empty(), "{}: bad field '{}'", display_name(spec), spec.field);
        if (dot == std::string::npos) break;
        start = dot + 1;
    }
    std::vector<std::string> files = resolve_files(spec);
    std::vector<SourceFormat> formats;
    for (const std::string& f : files) {
        const SourceFormat format = spec.format == SourceFormat::Auto ? format_from_name(f) : spec.format;
        MSLM_CHECK(format != SourceFormat::Auto,
                   "{}: cannot tell the format of '{}' from its name (.txt, .jsonl, .json, each optionally "
                   ".gz/.zst); give format=txt|jsonl|json",
                   display_name(spec), f);
        formats.push_back(format);
    }
    return std::make_unique<SourceReader>(spec, opt, std::move(files), std::move(formats),
                                          std::move(field_path));
}

}  // namespace mslm
