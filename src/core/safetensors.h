// safetensors files (https://github.com/huggingface/safetensors): reading by mmap with zero-copy
// tensors, strict validation of untrusted headers, and atomic writing.
//
// Layout: u64 little-endian header length N, N bytes of UTF-8 JSON (an object, padded with
// spaces), then the data buffer. Each JSON entry is {"dtype", "shape", "data_offsets": [begin, end)}
// relative to the buffer; the entries cover the buffer contiguously from 0 with no holes, no
// overlaps and no trailing bytes. An optional "__metadata__" entry maps strings to strings.
//
// Choices where the format leaves room:
// - dtypes F32, F64, BF16, F16, I64, I32, I16, I8, U8, BOOL are read; the other spec dtypes
//   (F8_*, U16, U32, U64, ...) make the whole file fail with "unsupported dtype", since mslm::DType
//   cannot describe them.
// - Tensors of more than kMaxDims dims are valid in the file: they are listed, validated, and their
//   bytes are available through entry() / bytes(); get() and get_f32() refuse them.
// - Names are listed in header order (our writer and the reference writer put the header in data
//   order).
// - Every malformed input throws mslm::Error "<file>: <problem>"; nothing in here trusts the file.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace mslm {

constexpr uint64_t kSafetensorsMaxHeader = 100'000'000;

struct SafetensorsEntry {
    std::string name;
    DType dtype;
    Shape shape;     // may have more than kMaxDims dims
    uint64_t begin;  // byte range [begin, end) in the data buffer
    uint64_t end;
};

struct SafetensorsHeader {
    std::map<std::string, std::string> metadata;
    std::vector<SafetensorsEntry> entries;  // header order
    uint64_t data_start = 0;                // file offset of the data buffer: 8 + header length
};

// Validates the whole file (header and the extents of the data buffer) held in memory.
// `name_for_errors` prefixes every error message, usually the path.
SafetensorsHeader parse_safetensors(const uint8_t* data, size_t size, std::string_view name_for_errors);

class SafetensorsFile {
public:
    // Maps the file read-only (MAP_PRIVATE) and validates it. The mapping lives as long as the
    // file object or any tensor taken from it.
    static SafetensorsFile open(const std::string& path);
    // Bytes already in memory; `bytes` keeps them alive and is shared by the tensors returned.
    static SafetensorsFile from_bytes(std::shared_ptr<Storage> bytes, std::string name);

    const std::string& name() const { return name_; }
    const std::map<std::string, std::string>& metadata() const { return header_.metadata; }
    const std::vector<std::string>& names() const { return names_; }
    const std::vector<SafetensorsEntry>& entries() const { return header_.entries; }
    bool contains(std::string_view name) const;
    const SafetensorsEntry& entry(std::string_view name) const;
    std::span<const uint8_t> bytes(std::string_view name) const;

    // Zero-copy CPU tensor over the file's bytes, in the file's dtype. Read-only: a mapped file is
    // PROT_READ, so writing through it faults; clone() for a writable copy.
    // Alignment: the format puts tensors back to back with no padding, so a tensor is aligned to
    // its element size only if the writer ordered it so (the reference writer sorts by alignment;
    // ours keeps the caller's order). data<T>() on an unaligned tensor is undefined behaviour:
    // check `reinterpret_cast<uintptr_t>(t.raw()) % dtype_size(t.dtype())`, or take clone()
    // (an aligned copy) or get_f32().
    Tensor get(std::string_view name) const;
    // Aligned, owned fp32 copy of an F32, F16, BF16 or F64 tensor; safe for any alignment.
    Tensor get_f32(std::string_view name) const;

private:
    SafetensorsFile(std::shared_ptr<Storage> bytes, std::string name, SafetensorsHeader header);

    std::shared_ptr<Storage> bytes_;
    std::string name_;
    SafetensorsHeader header_;
    std::vector<std::string> names_;
    std::map<std::string, size_t, std::less<>> index_;
};

// Writes tensors (CPU, any strides) in the given order, with `metadata` as "__metadata__" when
// non-empty. The header is compact JSON with keys in the order dtype, shape, data_offsets, padded
// with spaces so the data buffer starts at a multiple of 8. Atomic: the bytes go to path + ".tmp",
// which is fsynced and renamed over `path`; a crash leaves either the old file or the new one.
void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

}  // namespace mslm
