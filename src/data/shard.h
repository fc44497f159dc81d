// Token shards in llm.c's layout (dev/data/data_common.py): a header of 256 little-endian int32,
//   [0] magic, [1] version, [2] number of tokens, the rest zero,
// then the tokens, little-endian:
//   magic 20240520, version 1: uint16 tokens (vocabularies of at most 65536 ids);
//   magic 20240801, version 7: uint32 tokens.
// The count is an int32 as in llm.c, so a shard holds at most INT32_MAX tokens.
#pragma once
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <string_view>

namespace mslm {

enum class ShardDtype { U16, U32 };

inline constexpr int32_t kShardMagicU16 = 20240520;
inline constexpr int32_t kShardVersionU16 = 1;
inline constexpr int32_t kShardMagicU32 = 20240801;
inline constexpr int32_t kShardVersionU32 = 7;
inline constexpr int64_t kShardHeaderInts = 256;
inline constexpr int64_t kShardHeaderBytes = kShardHeaderInts * 4;
inline constexpr int64_t kShardMaxTokens = INT32_MAX;

// uint16 when every id fits (vocab_size <= 65536), else uint32.
ShardDtype shard_dtype_for_vocab(int64_t vocab_size);
int64_t shard_token_bytes(ShardDtype dtype);
std::string_view shard_dtype_name(ShardDtype dtype);  // "uint16" / "uint32"
ShardDtype shard_dtype_from_name(std::string_view name);

// Streams tokens into one shard. Everything goes to `path + ".tmp"`; close() writes the final
// header, syncs and renames the file to `path`, so a crash or an exception never leaves a
// complete-looking shard behind. A writer destroyed without close() deletes its .tmp file.
class ShardWriter {
public:
    ShardWriter(std::string path, ShardDtype dtype);
    ~ShardWriter();
    ShardWriter(const ShardWriter&) = delete;
    ShardWriter& operator=(const ShardWriter&) = delete;

    // Appends tokens; throws if an id does not fit the dtype or the shard would pass INT32_MAX.
    void write(const int32_t* tokens, int64_t n);
    void close();

    int64_t tokens() const { return count_; }
    const std::string& path() const { return path_; }
    std::string tmp_path() const { return path_ + ".tmp"; }

private:
    void flush_buffer();

    std::string path_;
    ShardDtype dtype_;
    std::FILE* file_ = nullptr;
    int64_t count_ = 0;
    // Tokens converted to the file's dtype (one of the two, by dtype_), awaiting fwrite.
    std::unique_ptr<uint16_t[]> buffer16_;
    std::unique_ptr<uint32_t[]> buffer32_;
    int64_t buffered_ = 0;  // tokens in the buffer
};

// A shard mapped read-only. Opening validates the header against the file size, with errors that
// name the file ("train_000000.bin: expected 1000 tokens, file holds 999").
class ShardReader {
public:
    static ShardReader open(const std::string& path);

    int64_t size() const { return count_; }  // tokens
    ShardDtype dtype() const { return dtype_; }
    const std::string& path() const { return path_; }

    int32_t operator[](int64_t i) const;
    // Copies tokens [begin, begin + n) into out; the range must lie inside the shard.
    void read(int64_t begin, int64_t n, int32_t* out) const;

private:
    struct Mapping;
    std::string path_;
    ShardDtype dtype_ = ShardDtype::U16;
    int64_t count_ = 0;
    std::shared_ptr<Mapping> map_;
    const unsigned char* tokens_ = nullptr;  // first token byte, inside the mapping
};

}  // namespace mslm
