#include "data/compressed_reader.h"

#include <zlib.h>
#include <zstd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "core/error.h"

namespace mslm {

namespace {

constexpr size_t kChunk = size_t{1} << 20;  // input and output buffers: 1 MiB each

bool ends_with(std::string_view s, std::string_view suffix) {
    return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

}  // namespace

Compression compression_from_name(std::string_view path) {
    if (ends_with(path, ".gz")) return Compression::Gzip;
    if (ends_with(path, ".zst") || ends_with(path, ".zstd")) return Compression::Zstd;
    return Compression::None;
}

std::string_view strip_compression_suffix(std::string_view path) {
    for (std::string_view suffix : {".gz", ".zst", ".zstd"}) {
        if (ends_with(path, suffix)) return path.substr(0, path.size() - suffix.size());
    }
    return path;
}

struct CompressedReader::Codec {
    z_stream z{};
    bool z_ready = false;
    bool member_done = false;  // the current gzip member ended; another may follow
    ZSTD_DStream* zstd = nullptr;
    size_t zstd_hint = 0;  // last result of a call that made progress; 0 = frame complete

    ~Codec() {
        if (z_ready) inflateEnd(&z);
        if (zstd) ZSTD_freeDStream(zstd);
    }
};

CompressedReader::CompressedReader(std::string path) : path_(std::move(path)), in_(kChunk) {
    file_ = std::fopen(path_.c_str(), "rb");
    if (!file_) fail("{}: cannot open: {}", path_, std::strerror(errno));
    fill_input();
    const auto* b = reinterpret_cast<const unsigned char*>(in_.data());
    const bool gzip_magic = in_len_ >= 2 && b[0] == 0x1f && b[1] == 0x8b;
    const bool zstd_magic = in_len_ >= 4 && b[0] == 0x28 && b[1] == 0xb5 && b[2] == 0x2f && b[3] == 0xfd;
    compression_ = gzip_magic ? Compression::Gzip : zstd_magic ? Compression::Zstd : Compression::None;
    const Compression named = compression_from_name(path_);
    if (named == Compression::Gzip && !gzip_magic) fail("{}: not gzip data (no 1f 8b magic)", path_);
    if (named == Compression::Zstd && !zstd_magic) fail("{}: not zstd data (no 28 b5 2f fd magic)", path_);

    codec_ = std::make_unique<Codec>();
    if (compression_ == Compression::Gzip) {
        // 15 + 32: largest window, gzip or zlib header detected automatically.
        if (inflateInit2(&codec_->z, 15 + 32) != Z_OK) fail("{}: cannot start gzip decoder", path_);
        codec_->z_ready = true;
    } else if (compression_ == Compression::Zstd) {
        codec_->zstd = ZSTD_createDStream();
        if (!codec_->zstd) fail("{}: cannot start zstd decoder", path_);
        ZSTD_initDStream(codec_->zstd);
    }
}

CompressedReader::~CompressedReader() {
    if (file_) std::fclose(file_);
}

bool CompressedReader::fill_input() {
    if (in_pos_ < in_len_) return true;
    if (in_eof_) return false;
    in_pos_ = 0;
    in_len_ = std::fread(in_.data(), 1, in_.size(), file_);
    if (in_len_ == 0) {
        if (std::ferror(file_)) fail("{}: read error: {}", path_, std::strerror(errno));
        in_eof_ = true;
        return false;
    }
    return true;
}

size_t CompressedReader::read(char* out, size_t n) {
    if (n == 0) return 0;
    switch (compression_) {
        case Compression::Gzip:
            return read_gzip(out, n);
        case Compression::Zstd:
            return read_zstd(out, n);
        case Compression::None:
            break;
    }
    if (!fill_input()) return 0;
    const size_t k = std::min(n, in_len_ - in_pos_);
    std::memcpy(out, in_.data() + in_pos_, k);
    in_pos_ += k;
    return k;
}

size_t CompressedReader::read_gzip(char* out, size_t n) {
    z_stream& z = codec_->z;
    for (;;) {
        const bool more_input = fill_input();
        if (codec_->member_done) {
            if (!more_input) return 0;
            // Concatenated members (as `cat a.gz b.gz` makes) decode as one stream.
            inflateReset(&z);
            codec_->member_done = false;
        }
        z.next_in = reinterpret_cast<Bytef*>(in_.data() + in_pos_);
        z.avail_in = static_cast<uInt>(in_len_ - in_pos_);
        z.next_out = reinterpret_cast<Bytef*>(out);
        z.avail_out = static_cast<uInt>(std::min<size_t>(n, UINT32_MAX));
        const uInt before_out = z.avail_out;
        const int ret = inflate(&z, Z_NO_FLUSH);
        in_pos_ = in_len_ - z.avail_in;
        if (ret == Z_STREAM_END) {
            codec_->member_done = true;
        } else if (ret != Z_OK && ret != Z_BUF_ERROR) {
            fail("{}: corrupt gzip data: {}", path_, z.msg ? z.msg : zError(ret));
        }
        const size_t produced = before_out - z.avail_out;
        if (produced > 0) return produced;
        if (!more_input && !codec_->member_done) {
            fail("{}: truncated gzip data (unexpected end of file)", path_);
        }
    }
}

size_t CompressedReader::read_zstd(char* out, size_t n) {
    ZSTD_outBuffer ob{out, n, 0};
    for (;;) {
        const bool more_input = fill_input();
        ZSTD_inBuffer ib{in_.data() + in_pos_, in_len_ - in_pos_, 0};
        const size_t ret = ZSTD_decompressStream(codec_->zstd, &ob, &ib);
        if (ZSTD_isError(ret)) fail("{}: corrupt zstd data: {}", path_, ZSTD_getErrorName(ret));
        in_pos_ += ib.pos;
        const bool progress = ib.pos > 0 || ob.pos > 0;
        if (progress) codec_->zstd_hint = ret;
        if (ob.pos > 0) return ob.pos;
        if (!more_input && !progress) {
            if (codec_->zstd_hint != 0) fail("{}: truncated zstd data (unexpected end of file)", path_);
            return 0;
        }
    }
}

TextInput::TextInput(std::string path) : in_(std::move(path)), buf_(kChunk) {
    if (refill() && len_ >= 3 && std::memcmp(buf_.data(), "\xEF\xBB\xBF", 3) == 0) {
        pos_ = 3;
        offset_ = 3;
    }
}

bool TextInput::refill() {
    pos_ = 0;
    len_ = in_.read(buf_.data(), buf_.size());
    return len_ > 0;
}

bool TextInput::read_line(std::string& line) {
    line.clear();
    if (pos_ == len_ && !refill()) return false;
    for (;;) {
        const char* start = buf_.data() + pos_;
        const auto* nl = static_cast<const char*>(std::memchr(start, '\n', len_ - pos_));
        if (nl) {
            const auto k = static_cast<size_t>(nl - start);
            line.append(start, k);
            pos_ += k + 1;
            offset_ += static_cast<int64_t>(k + 1);
            ++line_;
            return true;
        }
        line.append(start, len_ - pos_);
        offset_ += static_cast<int64_t>(len_ - pos_);
        pos_ = len_;
        if (!refill()) return true;  // last line without '\n'
    }
}

void TextInput::read_rest(std::string& out) {
    do {
        for (size_t i = pos_; i < len_; ++i) line_ += buf_[i] == '\n';
        out.append(buf_.data() + pos_, len_ - pos_);
        offset_ += static_cast<int64_t>(len_ - pos_);
        pos_ = len_;
    } while (refill());
}

}  // namespace mslm
