// Reading a file's bytes through gzip or zstd decompression, in chunks, with bounded memory.
// Compression is told by the magic bytes (gzip 1f 8b, zstd 28 b5 2f fd); a .gz/.zst name whose
// bytes do not match is an error, so a mislabelled file is never read as text.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace mslm {

enum class Compression { None, Gzip, Zstd };

// From the name: ".gz" -> Gzip, ".zst"/".zstd" -> Zstd, else None.
Compression compression_from_name(std::string_view path);
// The name without a compression suffix: "a.jsonl.gz" -> "a.jsonl".
std::string_view strip_compression_suffix(std::string_view path);

// The decompressed bytes of one file. Errors (open, read, corrupt or truncated data) throw
// mslm::Error naming the file.
class CompressedReader {
public:
    explicit CompressedReader(std::string path);
    ~CompressedReader();
    CompressedReader(const CompressedReader&) = delete;
    CompressedReader& operator=(const CompressedReader&) = delete;

    // Up to n decompressed bytes into out; 0 only at the end of the data.
    size_t read(char* out, size_t n);
    Compression compression() const { return compression_; }
    const std::string& path() const { return path_; }

private:
    bool fill_input();  // refills in_ when it is used up; false at the end of the file
    size_t read_gzip(char* out, size_t n);
    size_t read_zstd(char* out, size_t n);

    struct Codec;
    std::string path_;
    std::FILE* file_ = nullptr;
    Compression compression_ = Compression::None;
    std::vector<char> in_;
    size_t in_pos_ = 0, in_len_ = 0;
    bool in_eof_ = false;
    std::unique_ptr<Codec> codec_;
};

// Buffered text input over a CompressedReader: whole lines or single bytes, tracking the 1-based
// line number and the byte offset in the decompressed data. A UTF-8 byte order mark at the start
// is dropped (it still counts in offsets).
class TextInput {
public:
    explicit TextInput(std::string path);

    // Next line without its '\n' (a '\r' before it is kept); false at the end. The last line
    // need not end in '\n'.
    bool read_line(std::string& line);
    // Next byte (0..255) or -1 at the end; peek leaves it unread.
    int get() {
        if (pos_ == len_ && !refill()) return -1;
        const auto c = static_cast<unsigned char>(buf_[pos_++]);
        ++offset_;
        if (c == '\n') ++line_;
        return c;
    }
    int peek() {
        if (pos_ == len_ && !refill()) return -1;
        return static_cast<unsigned char>(buf_[pos_]);
    }
    // Everything left, appended to out.
    void read_rest(std::string& out);

    int64_t line() const { return line_; }      // line of the next unread byte
    int64_t offset() const { return offset_; }  // bytes consumed so far
    const std::string& path() const { return in_.path(); }

private:
    bool refill();

    CompressedReader in_;
    std::vector<char> buf_;
    size_t pos_ = 0, len_ = 0;
    int64_t line_ = 1, offset_ = 0;
};

}  // namespace mslm
