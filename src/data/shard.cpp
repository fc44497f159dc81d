#include "data/shard.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>

#include "core/error.h"

namespace mslm {

// Shards are little-endian on disk and the tokens are copied as they lie in memory.
static_assert(std::endian::native == std::endian::little, "shard io assumes a little-endian host");

namespace {

constexpr int64_t kWriteBufferTokens = 1 << 19;

std::string errno_text(int err) {
    return std::strerror(err);
}

}  // namespace

ShardDtype shard_dtype_for_vocab(int64_t vocab_size) {
    MSLM_CHECK(vocab_size > 0, "vocabulary size {} is not positive", vocab_size);
    return vocab_size <= 65536 ? ShardDtype::U16 : ShardDtype::U32;
}

int64_t shard_token_bytes(ShardDtype dtype) {
    return dtype == ShardDtype::U16 ? 2 : 4;
}

std::string_view shard_dtype_name(ShardDtype dtype) {
    return dtype == ShardDtype::U16 ? "uint16" : "uint32";
}

ShardDtype shard_dtype_from_name(std::string_view name) {
    if (name == "uint16") return ShardDtype::U16;
    if (name == "uint32") return ShardDtype::U32;
    fail("unknown shard dtype '{}' (expected uint16 or uint32)", name);
}

// ---------------------------------------------------------------------------------------------
// Writer

ShardWriter::ShardWriter(std::string path, ShardDtype dtype) : path_(std::move(path)), dtype_(dtype) {
    if (dtype_ == ShardDtype::U16) {
        buffer16_.reset(new uint16_t[kWriteBufferTokens]);
    } else {
        buffer32_.reset(new uint32_t[kWriteBufferTokens]);
    }
    std::string tmp = tmp_path();
    file_ = std::fopen(tmp.c_str(), "wb");
    MSLM_CHECK(file_ != nullptr, "{}: cannot create: {}", tmp, errno_text(errno));
    // A zero header until close(): a .tmp left by a crash claims no tokens.
    int32_t header[kShardHeaderInts] = {};
    if (std::fwrite(header, sizeof(header), 1, file_) != 1) {
        int err = errno;
        std::fclose(file_);
        file_ = nullptr;
        std::remove(tmp.c_str());
        fail("{}: write failed: {}", tmp, errno_text(err));
    }
}

ShardWriter::~ShardWriter() {
    if (file_ != nullptr) {
        std::fclose(file_);
        std::remove(tmp_path().c_str());
    }
}

void ShardWriter::write(const int32_t* tokens, int64_t n) {
    MSLM_CHECK(file_ != nullptr, "{}: write after close", path_);
    MSLM_CHECK(n <= kShardMaxTokens - count_,
               "{}: a shard holds at most {} tokens (int32 count); {} + {} is too many", path_,
               kShardMaxTokens, count_, n);
    const uint32_t limit = dtype_ == ShardDtype::U16 ? 0xFFFFu : 0x7FFFFFFFu;
    for (int64_t done = 0; done < n;) {
        if (buffered_ == kWriteBufferTokens) flush_buffer();
        const int64_t take = std::min(n - done, kWriteBufferTokens - buffered_);
        const int32_t* src = tokens + done;
        // Range check and conversion as separate branch-free loops, so both vectorise. The limit
        // is 2^k - 1, so an id is out of range exactly when it has a bit of ~limit set.
        uint32_t bits = 0;
        for (int64_t i = 0; i < take; ++i) bits |= static_cast<uint32_t>(src[i]);
        if ((bits & ~limit) != 0) {
            for (int64_t i = 0; i < take; ++i) {
                MSLM_CHECK(static_cast<uint32_t>(src[i]) <= limit, "{}: token id {} does not fit {}", path_,
                           src[i], shard_dtype_name(dtype_));
            }
        }
        if (dtype_ == ShardDtype::U16) {
            uint16_t* dst = buffer16_.get() + buffered_;
            for (int64_t i = 0; i < take; ++i) dst[i] = static_cast<uint16_t>(src[i]);
        } else {
            std::memcpy(buffer32_.get() + buffered_, src, static_cast<size_t>(take) * 4);
        }
        buffered_ += take;
        count_ += take;
        done += take;
    }
}

void ShardWriter::flush_buffer() {
    if (buffered_ == 0) return;
    const void* data =
        dtype_ == ShardDtype::U16 ? static_cast<const void*>(buffer16_.get()) : buffer32_.get();
    const auto bytes = static_cast<size_t>(buffered_ * shard_token_bytes(dtype_));
    if (std::fwrite(data, 1, bytes, file_) != bytes)
        fail("{}: write failed: {}", tmp_path(), errno_text(errno));
    buffered_ = 0;
}

void ShardWriter::close() {
    MSLM_CHECK(file_ != nullptr, "{}: closed twice", path_);
    std::string tmp = tmp_path();
    flush_buffer();
    int32_t header[kShardHeaderInts] = {};
    header[0] = dtype_ == ShardDtype::U16 ? kShardMagicU16 : kShardMagicU32;
    header[1] = dtype_ == ShardDtype::U16 ? kShardVersionU16 : kShardVersionU32;
    header[2] = static_cast<int32_t>(count_);
    bool ok = std::fflush(file_) == 0 && std::fseek(file_, 0, SEEK_SET) == 0 &&
              std::fwrite(header, sizeof(header), 1, file_) == 1 && std::fflush(file_) == 0 &&
              ::fsync(fileno(file_)) == 0;
    int err = errno;
    ok = (std::fclose(file_) == 0) && ok;
    file_ = nullptr;
    if (!ok) {
        std::remove(tmp.c_str());
        fail("{}: write failed: {}", tmp, errno_text(err));
    }
    if (std::rename(tmp.c_str(), path_.c_str()) != 0) {
        err = errno;
        std::remove(tmp.c_str());
        fail("{}: cannot rename to {}: {}", tmp, path_, errno_text(err));
    }
}

// ---------------------------------------------------------------------------------------------
// Reader

struct ShardReader::Mapping {
    void* data = nullptr;
    size_t size = 0;
    ~Mapping() {
        if (data != nullptr) ::munmap(data, size);
    }
};

ShardReader ShardReader::open(const std::string& path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    MSLM_CHECK(fd >= 0, "{}: cannot open: {}", path, errno_text(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
        int err = errno;
        ::close(fd);
        fail("{}: cannot stat: {}", path, errno_text(err));
    }
    const int64_t file_size = st.st_size;
    if (file_size < kShardHeaderBytes) {
        ::close(fd);
        fail("{}: {} bytes, too short for a token shard (the header alone is {} bytes)", path, file_size,
             kShardHeaderBytes);
    }
    auto map = std::make_shared<Mapping>();
    map->size = static_cast<size_t>(file_size);
    void* p = ::mmap(nullptr, map->size, PROT_READ, MAP_PRIVATE, fd, 0);
    int err = errno;
    ::close(fd);
    MSLM_CHECK(p != MAP_FAILED, "{}: mmap of {} bytes failed: {}", path, file_size, errno_text(err));
    map->data = p;

    int32_t header[3];
    std::memcpy(header, p, sizeof(header));
    ShardDtype dtype;
    if (header[0] == kShardMagicU16) {
        dtype = ShardDtype::U16;
        MSLM_CHECK(header[1] == kShardVersionU16,
                   "{}: magic {} (uint16 tokens) goes with version {}, file has {}", path, header[0],
                   kShardVersionU16, header[1]);
    } else if (header[0] == kShardMagicU32) {
        dtype = ShardDtype::U32;
        MSLM_CHECK(header[1] == kShardVersionU32,
                   "{}: magic {} (uint32 tokens) goes with version {}, file has {}", path, header[0],
                   kShardVersionU32, header[1]);
    } else {
        fail("{}: not a token shard (magic {}; expected {} or {})", path, header[0], kShardMagicU16,
             kShardMagicU32);
    }
    const int64_t count = header[2];
    MSLM_CHECK(count >= 0, "{}: negative token count {} in the header", path, count);
    const int64_t width = shard_token_bytes(dtype);
    const int64_t payload = file_size - kShardHeaderBytes;
    if (payload != count * width) {
        if (payload % width == 0) {
            fail("{}: expected {} tokens, file holds {}", path, count, payload / width);
        }
        fail("{}: expected {} tokens, file holds {} and {} stray bytes", path, count, payload / width,
             payload % width);
    }

    ShardReader r;
    r.path_ = path;
    r.dtype_ = dtype;
    r.count_ = count;
    r.tokens_ = static_cast<const unsigned char*>(p) + kShardHeaderBytes;
    r.map_ = std::move(map);
    return r;
}

int32_t ShardReader::operator[](int64_t i) const {
    int32_t v;
    read(i, 1, &v);
    return v;
}

void ShardReader::read(int64_t begin, int64_t n, int32_t* out) const {
    MSLM_CHECK(begin >= 0 && n >= 0 && begin + n <= count_, "{}: tokens [{}, {}) outside the shard's {}",
               path_, begin, begin + n, count_);
    if (dtype_ == ShardDtype::U16) {
        const unsigned char* src = tokens_ + begin * 2;
        for (int64_t i = 0; i < n; ++i) {
            uint16_t v;
            std::memcpy(&v, src + 2 * i, 2);
            out[i] = v;
        }
    } else {
        std::memcpy(out, tokens_ + begin * 4, static_cast<size_t>(n) * 4);
        uint32_t bits = 0;
        for (int64_t i = 0; i < n; ++i) bits |= static_cast<uint32_t>(out[i]);
        if ((bits >> 31) != 0) {
            for (int64_t i = 0; i < n; ++i) {
                MSLM_CHECK(out[i] >= 0, "{}: token {} has id {}, past int32", path_, begin + i,
                           uint32_t(out[i]));
            }
        }
    }
}

}  // namespace mslm
