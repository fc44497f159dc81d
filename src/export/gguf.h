// GGUF v3 files (ggml's docs/gguf.md): a strict reader of untrusted files and a writer, with the
// tensor types mamba-slm exchanges with llama.cpp.
//
// Layout (little-endian): "GGUF", u32 version (3), u64 tensor count, u64 key-value count; each KV
// is a string key (u64 length + bytes), a u32 value type and the value (an array is u32 element
// type + u64 count + elements); each tensor info is a string name, u32 n_dims, u64 ne[n_dims]
// (ne[0] is the contiguous dimension: PyTorch's shape reversed), u32 ggml type and u64 offset
// into the data section. The data section starts at the next multiple of the alignment
// (`general.alignment`, u32 power of two, default 32) after the infos; every offset is a multiple
// of it.
//
// Tensor types: F32, F16 and BF16 (read only), and ggml's block formats Q8_0 (32 weights = fp16
// scale d + 32 int8, w = d·q) and Q4_0 (32 weights = fp16 scale d + 16 bytes, weight j in the low
// nibble of byte j and weight j + 16 in its high nibble, w = d·(q − 8)). The quantizers reproduce
// ggml's reference quantizers (ggml-quants.c, quantize_row_*_ref) bit for bit:
//   Q8_0: d = absmax / 127, q = roundf(x / d) (half away from zero);
//   Q4_0: m = the value of largest magnitude (the first one on ties), signed; d = m / −8;
//         q = min(15, (int8_t)(x / d + 8.5)), so m itself maps to 0 and its opposite to 15 (clamped).
//
// The reader checks everything before anything is used, and every problem is one mslm::Error
// "<file>: <problem>": bad magic or version, truncation anywhere, counts or string / array lengths
// that cannot fit in the rest of the file (so no header makes it allocate more than the file's own
// size), unknown value or tensor types, nested arrays, duplicate keys or tensor names, more than
// 4 dims, shapes whose element count overflows, rows of a block type that are not a multiple of 32,
// offsets that are misaligned, past the end of the file or overlapping another tensor.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace mslm::gguf {

enum class ValueType : uint32_t {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    BOOL = 7,
    STRING = 8,
    ARRAY = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
};
std::string_view value_type_name(ValueType t);

// ggml type ids of the tensor types we read or write.
enum class TensorType : uint32_t { F32 = 0, F16 = 1, Q4_0 = 2, Q8_0 = 8, BF16 = 30 };
std::string_view tensor_type_name(TensorType t);  // "F32", "Q8_0", ...
bool is_block_type(TensorType t);                 // Q8_0, Q4_0: rows in blocks of kBlock
constexpr int64_t kBlock = 32;
// Bytes of `numel` values (a multiple of kBlock for block types).
uint64_t tensor_bytes(TensorType t, uint64_t numel);

constexpr uint32_t kVersion = 3;
constexpr uint32_t kDefaultAlignment = 32;
constexpr uint32_t kMaxDims = 4;      // GGML_MAX_DIMS
constexpr size_t kMaxNameBytes = 64;  // tensor names, gguf.md

// One value: a scalar or an array of scalars (arrays of arrays are refused, as by ggml).
// Integers and bools live in `ints` (u64 values above INT64_MAX as their bit pattern), F32 and
// F64 in `floats`, strings in `strings`; a scalar is an array of one without the ARRAY tag.
struct Value {
    ValueType type = ValueType::U32;  // ARRAY for arrays
    ValueType elem = ValueType::U32;  // the element type (== type for scalars)
    std::vector<int64_t> ints;
    std::vector<double> floats;
    std::vector<std::string> strings;

    bool is_array() const { return type == ValueType::ARRAY; }
    size_t size() const;

    static Value u32(uint32_t v);
    static Value i32(int32_t v);
    static Value u64(uint64_t v);
    static Value f32(float v);
    static Value boolean(bool v);
    static Value string(std::string v);
    static Value i32_array(const std::vector<int32_t>& v);
    static Value f32_array(const std::vector<float>& v);
    static Value string_array(std::vector<std::string> v);
};

struct TensorInfo {
    std::string name;
    std::vector<int64_t> ne;  // ne[0] contiguous
    TensorType type = TensorType::F32;
    uint64_t offset = 0;  // into the data section
    uint64_t nbytes = 0;
    int64_t numel() const;
    Shape shape() const;  // PyTorch order: ne reversed
};

struct Header {
    uint32_t version = kVersion;
    uint32_t alignment = kDefaultAlignment;
    std::vector<std::pair<std::string, Value>> kv;  // file order
    std::vector<TensorInfo> tensors;                // file order
    uint64_t data_start = 0;                        // file offset of the data section
};

// Validates the whole file held in memory (header, and every tensor's extent in the data section).
Header parse(const uint8_t* data, size_t size, std::string_view name_for_errors);

class File {
public:
    static File open(const std::string& path);  // maps the file read-only
    static File from_bytes(std::shared_ptr<Storage> bytes, std::string name);

    const std::string& name() const { return name_; }
    const Header& header() const { return header_; }
    const std::vector<TensorInfo>& tensors() const { return header_.tensors; }

    const Value* find(std::string_view key) const;
    // Typed lookups; a missing key or a value of another type is an error naming the key.
    uint64_t get_uint(std::string_view key) const;  // any integer type, must be ≥ 0
    double get_float(std::string_view key) const;   // F32 or F64
    bool get_bool(std::string_view key) const;
    std::string get_string(std::string_view key) const;
    const Value& get_array(std::string_view key, ValueType elem) const;

    const TensorInfo* find_tensor(std::string_view name) const;
    std::span<const uint8_t> bytes(const TensorInfo& t) const;
    // The tensor's values as fp32 (dequantized for Q8_0 / Q4_0), ne[0] fastest.
    std::vector<float> to_f32(const TensorInfo& t) const;

private:
    File(std::shared_ptr<Storage> bytes, std::string name, Header header);
    std::shared_ptr<Storage> bytes_;
    std::string name_;
    Header header_;
};

// Encodes `numel` fp32 values (rows of ne[0] = `row`) in `type`: F32, F16 or a block type (then
// `row` must be a multiple of kBlock).
std::vector<uint8_t> encode(TensorType type, const float* x, int64_t numel, int64_t row);
// Decodes `numel` values of `type` from `in`.
void decode(TensorType type, const uint8_t* in, int64_t numel, float* out);

// Builds a file in memory order: KVs and tensors in the order added.
class Writer {
public:
    void add(std::string key, Value v);  // refuses a duplicate key
    void add_tensor(std::string name, std::vector<int64_t> ne, TensorType type, std::vector<uint8_t> data);
    // Atomic: the bytes go to path + ".tmp", which is renamed over `path`. `general.alignment` is
    // written only when it differs from the default.
    void write(const std::string& path, uint32_t alignment = kDefaultAlignment) const;
    // The same bytes, in memory (tests, fuzz seeds).
    std::vector<uint8_t> serialize(uint32_t alignment = kDefaultAlignment) const;

private:
    void emit(uint32_t alignment, const std::function<void(const void*, size_t)>& sink) const;
    struct PendingTensor {
        TensorInfo info;
        std::vector<uint8_t> data;
    };
    std::vector<std::pair<std::string, Value>> kv_;
    std::vector<PendingTensor> tensors_;
};

}  // namespace mslm::gguf
