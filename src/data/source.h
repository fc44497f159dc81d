// Document sources: where raw text comes from. A source spec names a path (file, directory, or
// glob with ** for recursion), its format and its weight in the mixture; reading streams one
// document at a time with bounded memory, through .gz and .zst transparently.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace mslm {

enum class SourceFormat { Auto, Txt, Jsonl, Json };  // Auto: from the extension (before .gz/.zst)
// Document per file / blank-line block / line / entry of a fortune(6) file (entries between lines
// holding only "%").
enum class TxtSplit { File, Block, Line, Percent };
enum class Utf8Policy { Replace, Fail };              // invalid UTF-8: U+FFFD (Python's errors="replace"), or an error

struct SourceSpec {
    std::string path;              // file, directory (all files below it), or glob ("data/**/*.jsonl.zst")
    SourceFormat format = SourceFormat::Auto;
    TxtSplit txt_split = TxtSplit::File;
    std::string field = "text";    // JSON field holding the document (jsonl / json)
    double weight = 1.0;           // relative sampling weight in a mixture
    std::string name;              // for messages and the manifest; default: the path
};

// Parses "path[:key=value,...]" as the CLI takes it, keys format, split, field, weight, name,
// e.g. "wiki/**/*.jsonl.gz:field=content,weight=2". Throws naming the spec on a bad key/value.
SourceSpec parse_source_spec(const std::string& text);

struct Document {
    std::string text;    // valid UTF-8
    std::string origin;  // "file:line" (or "file") of where it started, for messages
};

struct ReadOptions {
    Utf8Policy utf8 = Utf8Policy::Replace;
    bool skip_bad = false;  // skip malformed JSON lines / records without the field, counting them
};

// Streams the documents of one source: every file the spec matches, in sorted path order.
class DocumentReader {
public:
    virtual ~DocumentReader() = default;
    // Next document, or false at the end. Throws mslm::Error "file:line: problem" on bad input
    // (unless skip_bad covers it).
    virtual bool next(Document& doc) = 0;
    virtual int64_t skipped() const = 0;          // records skipped under skip_bad
    virtual const std::vector<std::string>& files() const = 0;  // the files the spec resolved to
};

// Resolves the spec's files up front: an unreadable path, a glob that matches nothing, or an
// unknown format is an error here, naming the spec.
std::unique_ptr<DocumentReader> open_source(const SourceSpec& spec, const ReadOptions& opt = {});

}  // namespace mslm
