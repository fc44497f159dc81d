#include "export/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <set>

#include "core/dtype.h"
#include "core/error.h"

namespace mslm::gguf {

static_assert(std::endian::native == std::endian::little, "GGUF I/O assumes a little-endian host");

std::string_view value_type_name(ValueType t) {
    switch (t) {
        case ValueType::U8:
            return "UINT8";
        case ValueType::I8:
            return "INT8";
        case ValueType::U16:
            return "UINT16";
        case ValueType::I16:
            return "INT16";
        case ValueType::U32:
            return "UINT32";
        case ValueType::I32:
            return "INT32";
        case ValueType::F32:
            return "FLOAT32";
        case ValueType::BOOL:
            return "BOOL";
        case ValueType::STRING:
            return "STRING";
        case ValueType::ARRAY:
            return "ARRAY";
        case ValueType::U64:
            return "UINT64";
        case ValueType::I64:
            return "INT64";
        case ValueType::F64:
            return "FLOAT64";
    }
    return "?";
}

std::string_view tensor_type_name(TensorType t) {
    switch (t) {
        case TensorType::F32:
            return "F32";
        case TensorType::F16:
            return "F16";
        case TensorType::Q4_0:
            return "Q4_0";
        case TensorType::Q8_0:
            return "Q8_0";
        case TensorType::BF16:
            return "BF16";
    }
    return "?";
}

bool is_block_type(TensorType t) {
    return t == TensorType::Q8_0 || t == TensorType::Q4_0;
}

uint64_t tensor_bytes(TensorType t, uint64_t numel) {
    switch (t) {
        case TensorType::F32:
            return numel * 4;
        case TensorType::F16:
        case TensorType::BF16:
            return numel * 2;
        case TensorType::Q8_0:
            return numel / kBlock * (2 + 32);
        case TensorType::Q4_0:
            return numel / kBlock * (2 + 16);
    }
    return 0;
}

namespace {

// Fixed size in bytes of a scalar value type; 0 for STRING and ARRAY.
size_t scalar_size(ValueType t) {
    switch (t) {
        case ValueType::U8:
        case ValueType::I8:
        case ValueType::BOOL:
            return 1;
        case ValueType::U16:
        case ValueType::I16:
            return 2;
        case ValueType::U32:
        case ValueType::I32:
        case ValueType::F32:
            return 4;
        case ValueType::U64:
        case ValueType::I64:
        case ValueType::F64:
            return 8;
        case ValueType::STRING:
        case ValueType::ARRAY:
            return 0;
    }
    return 0;
}

bool is_integer(ValueType t) {
    return t == ValueType::U8 || t == ValueType::I8 || t == ValueType::U16 || t == ValueType::I16 ||
           t == ValueType::U32 || t == ValueType::I32 || t == ValueType::U64 || t == ValueType::I64;
}

bool known_tensor_type(uint32_t t) {
    return t == 0 || t == 1 || t == 2 || t == 8 || t == 30;
}

// Bounds-checked little-endian cursor over the file.
class Cursor {
public:
    Cursor(const uint8_t* data, size_t size, std::string_view name) : p_(data), size_(size), name_(name) {}
    size_t pos() const { return pos_; }
    size_t remaining() const { return size_ - pos_; }

    template <typename T>
    T read(const char* what) {
        need(sizeof(T), what);
        T v;
        std::memcpy(&v, p_ + pos_, sizeof(T));
        pos_ += sizeof(T);
        return v;
    }
    std::string string(const char* what) {
        uint64_t n = read<uint64_t>(what);
        MSLM_CHECK(n <= remaining(),
                   "{}: truncated: {} of {} bytes at offset {} (length {}, only {} bytes left)", name_, what,
                   n, pos_ - 8, n, remaining());
        std::string s(reinterpret_cast<const char*>(p_ + pos_), n);
        pos_ += n;
        return s;
    }

private:
    void need(size_t n, const char* what) const {
        MSLM_CHECK(n <= remaining(), "{}: truncated: {} needs {} bytes at offset {}, the file ends at {}",
                   name_, what, n, pos_, size_);
    }
    const uint8_t* p_;
    size_t size_;
    size_t pos_ = 0;
    std::string_view name_;
};

// Reads one element of scalar type `t` into `v`.
void read_scalar(Cursor& c, ValueType t, Value& v, const std::string& key, std::string_view name) {
    switch (t) {
        case ValueType::U8:
            v.ints.push_back(c.read<uint8_t>("a value"));
            break;
        case ValueType::I8:
            v.ints.push_back(c.read<int8_t>("a value"));
            break;
        case ValueType::U16:
            v.ints.push_back(c.read<uint16_t>("a value"));
            break;
        case ValueType::I16:
            v.ints.push_back(c.read<int16_t>("a value"));
            break;
        case ValueType::U32:
            v.ints.push_back(c.read<uint32_t>("a value"));
            break;
        case ValueType::I32:
            v.ints.push_back(c.read<int32_t>("a value"));
            break;
        case ValueType::U64:
            v.ints.push_back(static_cast<int64_t>(c.read<uint64_t>("a value")));
            break;
        case ValueType::I64:
            v.ints.push_back(c.read<int64_t>("a value"));
            break;
        case ValueType::F32:
            v.floats.push_back(c.read<float>("a value"));
            break;
        case ValueType::F64:
            v.floats.push_back(c.read<double>("a value"));
            break;
        case ValueType::BOOL: {
            uint8_t b = c.read<uint8_t>("a value");
            MSLM_CHECK(b <= 1, "{}: key '{}': bool byte {} at offset {} is neither 0 nor 1", name, key, b,
                       c.pos() - 1);
            v.ints.push_back(b);
            break;
        }
        case ValueType::STRING:
            v.strings.push_back(c.string("a string value"));
            break;
        case ValueType::ARRAY:
            fail("{}: key '{}': arrays of arrays are not supported", name, key);
    }
}

ValueType read_value_type(Cursor& c, const std::string& key, std::string_view name) {
    uint32_t t = c.read<uint32_t>("a value type");
    MSLM_CHECK(t <= 12, "{}: key '{}': unknown value type {} at offset {} (0..12 are defined)", name, key, t,
               c.pos() - 4);
    return static_cast<ValueType>(t);
}

std::string shape_of(const std::vector<int64_t>& ne) {
    std::string s = "[";
    for (size_t i = 0; i < ne.size(); ++i) s += (i ? ", " : "") + std::to_string(ne[i]);
    return s + "]";
}

}  // namespace

size_t Value::size() const {
    return ints.size() + floats.size() + strings.size();
}

Value Value::u32(uint32_t v) {
    return {ValueType::U32, ValueType::U32, {v}, {}, {}};
}
Value Value::i32(int32_t v) {
    return {ValueType::I32, ValueType::I32, {v}, {}, {}};
}
Value Value::u64(uint64_t v) {
    return {ValueType::U64, ValueType::U64, {static_cast<int64_t>(v)}, {}, {}};
}
Value Value::f32(float v) {
    return {ValueType::F32, ValueType::F32, {}, {v}, {}};
}
Value Value::boolean(bool v) {
    return {ValueType::BOOL, ValueType::BOOL, {v ? 1 : 0}, {}, {}};
}
Value Value::string(std::string v) {
    return {ValueType::STRING, ValueType::STRING, {}, {}, {std::move(v)}};
}
Value Value::i32_array(const std::vector<int32_t>& v) {
    return {ValueType::ARRAY, ValueType::I32, std::vector<int64_t>(v.begin(), v.end()), {}, {}};
}
Value Value::f32_array(const std::vector<float>& v) {
    return {ValueType::ARRAY, ValueType::F32, {}, std::vector<double>(v.begin(), v.end()), {}};
}
Value Value::string_array(std::vector<std::string> v) {
    return {ValueType::ARRAY, ValueType::STRING, {}, {}, std::move(v)};
}

int64_t TensorInfo::numel() const {
    int64_t n = 1;
    for (int64_t d : ne) n *= d;
    return n;
}

Shape TensorInfo::shape() const {
    return Shape(ne.rbegin(), ne.rend());
}

Header parse(const uint8_t* data, size_t size, std::string_view name) {
    Cursor c(data, size, name);
    MSLM_CHECK(size >= 4 && std::memcmp(data, "GGUF", 4) == 0,
               "{}: not a GGUF file (the first 4 bytes are not \"GGUF\")", name);
    c.read<uint32_t>("the magic");
    Header h;
    h.version = c.read<uint32_t>("the version");
    MSLM_CHECK(h.version == kVersion, "{}: GGUF version {} is not supported (only version 3)", name,
               h.version);
    const uint64_t n_tensors = c.read<uint64_t>("the tensor count");
    const uint64_t n_kv = c.read<uint64_t>("the key-value count");
    // The smallest KV is an empty key, a type and a 1-byte value: 13 bytes; the smallest tensor
    // info an empty name, 1 dim, a type and an offset: 32 bytes. Counts beyond what fits are
    // refused before anything is reserved.
    MSLM_CHECK(n_kv <= c.remaining() / 13,
               "{}: header claims {} key-value pairs, more than the {} bytes left can hold", name, n_kv,
               c.remaining());
    MSLM_CHECK(n_tensors <= c.remaining() / 32,
               "{}: header claims {} tensors, more than the {} bytes left can hold", name, n_tensors,
               c.remaining());

    std::set<std::string, std::less<>> keys;
    h.kv.reserve(n_kv);
    for (uint64_t i = 0; i < n_kv; ++i) {
        std::string key = c.string("a key");
        MSLM_CHECK(keys.insert(key).second, "{}: duplicate key '{}'", name, key);
        Value v;
        v.type = read_value_type(c, key, name);
        if (v.type == ValueType::ARRAY) {
            v.elem = read_value_type(c, key, name);
            MSLM_CHECK(v.elem != ValueType::ARRAY, "{}: key '{}': arrays of arrays are not supported", name,
                       key);
            uint64_t n = c.read<uint64_t>("an array length");
            const size_t min_elem = v.elem == ValueType::STRING ? 8 : scalar_size(v.elem);
            MSLM_CHECK(n <= c.remaining() / min_elem,
                       "{}: key '{}': array of {} {} elements cannot fit in the {} bytes "
                       "left",
                       name, key, n, value_type_name(v.elem), c.remaining());
            if (v.elem == ValueType::STRING)
                v.strings.reserve(n);
            else if (v.elem == ValueType::F32 || v.elem == ValueType::F64)
                v.floats.reserve(n);
            else
                v.ints.reserve(n);
            for (uint64_t j = 0; j < n; ++j) read_scalar(c, v.elem, v, key, name);
        } else {
            v.elem = v.type;
            read_scalar(c, v.type, v, key, name);
        }
        h.kv.emplace_back(std::move(key), std::move(v));
    }
    for (const auto& [key, v] : h.kv) {
        if (key != "general.alignment") continue;
        MSLM_CHECK(v.type == ValueType::U32, "{}: general.alignment has type {}, expected UINT32", name,
                   value_type_name(v.type));
        const auto a = static_cast<uint64_t>(v.ints[0]);
        MSLM_CHECK(a != 0 && (a & (a - 1)) == 0, "{}: general.alignment {} is not a power of two", name, a);
        h.alignment = static_cast<uint32_t>(a);
    }

    std::set<std::string, std::less<>> names;
    h.tensors.reserve(n_tensors);
    for (uint64_t i = 0; i < n_tensors; ++i) {
        TensorInfo t;
        t.name = c.string("a tensor name");
        MSLM_CHECK(t.name.size() <= kMaxNameBytes, "{}: tensor name of {} bytes at tensor {} (at most {})",
                   name, t.name.size(), i, kMaxNameBytes);
        MSLM_CHECK(names.insert(t.name).second, "{}: duplicate tensor name '{}'", name, t.name);
        const uint32_t n_dims = c.read<uint32_t>("a tensor's n_dims");
        MSLM_CHECK(n_dims >= 1 && n_dims <= kMaxDims, "{}: tensor '{}' has {} dims (1..{} are supported)",
                   name, t.name, n_dims, kMaxDims);
        uint64_t numel = 1;
        for (uint32_t d = 0; d < n_dims; ++d) {
            const uint64_t ne = c.read<uint64_t>("a tensor dimension");
            MSLM_CHECK(ne <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) &&
                           (ne == 0 || numel <= (uint64_t{1} << 62) / ne),
                       "{}: tensor '{}' has an absurd dimension {} (element count overflows)", name, t.name,
                       ne);
            numel *= ne;
            t.ne.push_back(static_cast<int64_t>(ne));
        }
        const uint32_t type = c.read<uint32_t>("a tensor type");
        MSLM_CHECK(known_tensor_type(type),
                   "{}: tensor '{}' has ggml type {}, which is unknown or not supported (F32 0, "
                   "F16 1, Q4_0 2, Q8_0 8, BF16 30 are)",
                   name, t.name, type);
        t.type = static_cast<TensorType>(type);
        MSLM_CHECK(!is_block_type(t.type) || t.ne[0] % kBlock == 0,
                   "{}: tensor '{}' of type {} has rows of {} values, "
                   "not a multiple of the block size {}",
                   name, t.name, tensor_type_name(t.type), t.ne[0], kBlock);
        t.nbytes = tensor_bytes(t.type, numel);
        t.offset = c.read<uint64_t>("a tensor offset");
        MSLM_CHECK(t.offset % h.alignment == 0,
                   "{}: tensor '{}' has offset {}, not a multiple of the alignment {}", name, t.name,
                   t.offset, h.alignment);
        h.tensors.push_back(std::move(t));
    }

    const uint64_t end_of_infos = c.pos();
    h.data_start = (end_of_infos + h.alignment - 1) / h.alignment * h.alignment;
    if (h.tensors.empty()) return h;
    MSLM_CHECK(h.data_start <= size,
               "{}: truncated: the data section would start at offset {}, the file ends at {}", name,
               h.data_start, size);
    const uint64_t data_size = size - h.data_start;
    std::vector<const TensorInfo*> by_offset;
    for (const auto& t : h.tensors) {
        MSLM_CHECK(t.offset <= data_size && t.nbytes <= data_size - t.offset,
                   "{}: tensor '{}' ({} {}: {} bytes at data offset {}) ends past the end of the file (data "
                   "section of "
                   "{} bytes)",
                   name, t.name, tensor_type_name(t.type), shape_of(t.ne), t.nbytes, t.offset, data_size);
        by_offset.push_back(&t);
    }
    std::stable_sort(by_offset.begin(), by_offset.end(),
                     [](auto* a, auto* b) { return a->offset < b->offset; });
    for (size_t i = 1; i < by_offset.size(); ++i) {
        const TensorInfo& a = *by_offset[i - 1];
        const TensorInfo& b = *by_offset[i];
        MSLM_CHECK(b.offset >= a.offset + a.nbytes,
                   "{}: tensor '{}' at data offset {} overlaps tensor '{}' ({} {}: {} "
                   "bytes at data offset {})",
                   name, b.name, b.offset, a.name, tensor_type_name(a.type), shape_of(a.ne), a.nbytes,
                   a.offset);
    }
    return h;
}

File::File(std::shared_ptr<Storage> bytes, std::string name, Header header)
    : bytes_(std::move(bytes)), name_(std::move(name)), header_(std::move(header)) {}

File File::from_bytes(std::shared_ptr<Storage> bytes, std::string name) {
    Header h = parse(static_cast<const uint8_t*>(bytes->data()), bytes->bytes(), name);
    return File(std::move(bytes), std::move(name), std::move(h));
}

File File::open(const std::string& path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    MSLM_CHECK(fd >= 0, "{}: cannot open: {}", path, std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        ::close(fd);
        fail("{}: not a regular file", path);
    }
    const auto size = static_cast<size_t>(st.st_size);
    if (size == 0) {
        ::close(fd);
        fail("{}: not a GGUF file (empty)", path);
    }
    void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    const int err = errno;
    ::close(fd);
    MSLM_CHECK(p != MAP_FAILED, "{}: mmap of {} bytes failed: {}", path, size, std::strerror(err));
    auto storage = std::make_shared<Storage>(p, size, Device::CPU, [size](void* q) { ::munmap(q, size); });
    return from_bytes(std::move(storage), path);
}

const Value* File::find(std::string_view key) const {
    for (const auto& [k, v] : header_.kv)
        if (k == key) return &v;
    return nullptr;
}

namespace {
const Value& require(const File& f, std::string_view key) {
    const Value* v = f.find(key);
    MSLM_CHECK(v, "{}: missing key '{}'", f.name(), key);
    return *v;
}
}  // namespace

uint64_t File::get_uint(std::string_view key) const {
    const Value& v = require(*this, key);
    MSLM_CHECK(!v.is_array() && is_integer(v.type), "{}: key '{}' has type {}, expected an integer", name_,
               key, value_type_name(v.type));
    MSLM_CHECK(v.type == ValueType::U64 || v.ints[0] >= 0, "{}: key '{}' is negative ({})", name_, key,
               v.ints[0]);
    return static_cast<uint64_t>(v.ints[0]);
}

double File::get_float(std::string_view key) const {
    const Value& v = require(*this, key);
    MSLM_CHECK(v.type == ValueType::F32 || v.type == ValueType::F64,
               "{}: key '{}' has type {}, expected a float", name_, key, value_type_name(v.type));
    return v.floats[0];
}

bool File::get_bool(std::string_view key) const {
    const Value& v = require(*this, key);
    MSLM_CHECK(v.type == ValueType::BOOL, "{}: key '{}' has type {}, expected BOOL", name_, key,
               value_type_name(v.type));
    return v.ints[0] != 0;
}

std::string File::get_string(std::string_view key) const {
    const Value& v = require(*this, key);
    MSLM_CHECK(v.type == ValueType::STRING, "{}: key '{}' has type {}, expected STRING", name_, key,
               value_type_name(v.type));
    return v.strings[0];
}

const Value& File::get_array(std::string_view key, ValueType elem) const {
    const Value& v = require(*this, key);
    MSLM_CHECK(v.is_array() && v.elem == elem, "{}: key '{}' has type {}{}, expected an array of {}", name_,
               key, value_type_name(v.type),
               v.is_array() ? fmt::format(" of {}", value_type_name(v.elem)) : "", value_type_name(elem));
    return v;
}

const TensorInfo* File::find_tensor(std::string_view name) const {
    for (const auto& t : header_.tensors)
        if (t.name == name) return &t;
    return nullptr;
}

std::span<const uint8_t> File::bytes(const TensorInfo& t) const {
    const auto* base = static_cast<const uint8_t*>(bytes_->data()) + header_.data_start + t.offset;
    return {base, static_cast<size_t>(t.nbytes)};
}

std::vector<float> File::to_f32(const TensorInfo& t) const {
    std::vector<float> out(static_cast<size_t>(t.numel()));
    decode(t.type, bytes(t).data(), t.numel(), out.data());
    return out;
}

namespace {

void put_f16(uint8_t* p, float v) {
    const uint16_t h = f32_to_f16(v);
    std::memcpy(p, &h, 2);
}
float get_f16(const uint8_t* p) {
    uint16_t h;
    std::memcpy(&h, p, 2);
    return f16_to_f32(h);
}

void quantize_q8_0(const float* x, uint8_t* out) {
    float amax = 0;
    for (int j = 0; j < kBlock; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    put_f16(out, d);
    for (int j = 0; j < kBlock; ++j)
        out[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(std::roundf(x[j] * id)));
}

void quantize_q4_0(const float* x, uint8_t* out) {
    float amax = 0, max = 0;
    for (int j = 0; j < kBlock; ++j) {
        if (amax < std::fabs(x[j])) {
            amax = std::fabs(x[j]);
            max = x[j];
        }
    }
    const float d = max / -8;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    put_f16(out, d);
    for (int j = 0; j < kBlock / 2; ++j) {
        // ggml truncates toward zero through int8_t after adding 8.5, i.e. rounds half up from 0..16.
        const auto lo =
            static_cast<uint8_t>(std::min(15, static_cast<int>(static_cast<int8_t>(x[j] * id + 8.5f))));
        const auto hi = static_cast<uint8_t>(
            std::min(15, static_cast<int>(static_cast<int8_t>(x[j + kBlock / 2] * id + 8.5f))));
        out[2 + j] = static_cast<uint8_t>(lo | (hi << 4));
    }
}

}  // namespace

std::vector<uint8_t> encode(TensorType type, const float* x, int64_t numel, int64_t row) {
    std::vector<uint8_t> out(tensor_bytes(type, static_cast<uint64_t>(numel)));
    if (out.empty()) return out;
    switch (type) {
        case TensorType::F32:
            std::memcpy(out.data(), x, out.size());
            break;
        case TensorType::F16:
            for (int64_t i = 0; i < numel; ++i) put_f16(out.data() + 2 * i, x[i]);
            break;
        case TensorType::BF16:
            for (int64_t i = 0; i < numel; ++i) {
                const uint16_t h = f32_to_bf16(x[i]);
                std::memcpy(out.data() + 2 * i, &h, 2);
            }
            break;
        case TensorType::Q8_0:
        case TensorType::Q4_0: {
            MSLM_CHECK(row % kBlock == 0 && numel % kBlock == 0,
                       "gguf: rows of {} values cannot be stored as {} (blocks "
                       "of {})",
                       row, tensor_type_name(type), kBlock);
            const size_t block_bytes = tensor_bytes(type, kBlock);
            for (int64_t b = 0; b < numel / kBlock; ++b) {
                uint8_t* dst = out.data() + static_cast<size_t>(b) * block_bytes;
                if (type == TensorType::Q8_0)
                    quantize_q8_0(x + b * kBlock, dst);
                else
                    quantize_q4_0(x + b * kBlock, dst);
            }
            break;
        }
    }
    return out;
}

void decode(TensorType type, const uint8_t* in, int64_t numel, float* out) {
    if (numel == 0) return;  // a tensor with a zero dimension: no bytes, and maybe no buffers
    switch (type) {
        case TensorType::F32:
            std::memcpy(out, in, static_cast<size_t>(numel) * 4);
            break;
        case TensorType::F16:
            for (int64_t i = 0; i < numel; ++i) out[i] = get_f16(in + 2 * i);
            break;
        case TensorType::BF16:
            for (int64_t i = 0; i < numel; ++i) {
                uint16_t h;
                std::memcpy(&h, in + 2 * i, 2);
                out[i] = bf16_to_f32(h);
            }
            break;
        case TensorType::Q8_0:
            for (int64_t b = 0; b < numel / kBlock; ++b) {
                const uint8_t* blk = in + b * 34;
                const float d = get_f16(blk);
                for (int j = 0; j < kBlock; ++j)
                    out[b * kBlock + j] = d * static_cast<float>(static_cast<int8_t>(blk[2 + j]));
            }
            break;
        case TensorType::Q4_0:
            for (int64_t b = 0; b < numel / kBlock; ++b) {
                const uint8_t* blk = in + b * 18;
                const float d = get_f16(blk);
                for (int j = 0; j < kBlock / 2; ++j) {
                    out[b * kBlock + j] = d * static_cast<float>((blk[2 + j] & 0x0F) - 8);
                    out[b * kBlock + j + kBlock / 2] = d * static_cast<float>((blk[2 + j] >> 4) - 8);
                }
            }
            break;
    }
}

void Writer::add(std::string key, Value v) {
    for (const auto& kv : kv_) MSLM_CHECK(kv.first != key, "gguf writer: duplicate key '{}'", key);
    MSLM_CHECK(v.elem != ValueType::ARRAY, "gguf writer: key '{}': arrays of arrays are not supported", key);
    kv_.emplace_back(std::move(key), std::move(v));
}

void Writer::add_tensor(std::string name, std::vector<int64_t> ne, TensorType type,
                        std::vector<uint8_t> data) {
    for (const auto& t : tensors_)
        MSLM_CHECK(t.info.name != name, "gguf writer: duplicate tensor name '{}'", name);
    MSLM_CHECK(name.size() <= kMaxNameBytes, "gguf writer: tensor name '{}' is longer than {} bytes", name,
               kMaxNameBytes);
    MSLM_CHECK(!ne.empty() && ne.size() <= kMaxDims, "gguf writer: tensor '{}' has {} dims (1..{})", name,
               ne.size(), kMaxDims);
    TensorInfo info{std::move(name), std::move(ne), type, 0, 0};
    info.nbytes = tensor_bytes(type, static_cast<uint64_t>(info.numel()));
    MSLM_CHECK(data.size() == info.nbytes, "gguf writer: tensor '{}' ({} {}) needs {} bytes, got {}",
               info.name, tensor_type_name(type), shape_of(info.ne), info.nbytes, data.size());
    tensors_.push_back({std::move(info), std::move(data)});
}

namespace {

// Emits the file's bytes in order through `sink`.
void emit_bytes(const std::vector<std::pair<std::string, Value>>& kv_in, const std::vector<TensorInfo>& infos,
                const std::vector<const std::vector<uint8_t>*>& datas, uint32_t alignment,
                const std::function<void(const void*, size_t)>& sink) {
    std::vector<uint8_t> head;
    auto raw = [&](const void* p, size_t n) {
        const auto* b = static_cast<const uint8_t*>(p);
        head.insert(head.end(), b, b + n);
    };
    auto u32 = [&](uint32_t v) { raw(&v, 4); };
    auto u64 = [&](uint64_t v) { raw(&v, 8); };
    auto str = [&](const std::string& s) {
        u64(s.size());
        raw(s.data(), s.size());
    };
    auto scalar = [&](ValueType t, const Value& v, size_t i) {
        switch (t) {
            case ValueType::U8:
            case ValueType::I8:
            case ValueType::BOOL: {
                auto b = static_cast<uint8_t>(v.ints[i]);
                raw(&b, 1);
                break;
            }
            case ValueType::U16:
            case ValueType::I16: {
                auto h = static_cast<uint16_t>(v.ints[i]);
                raw(&h, 2);
                break;
            }
            case ValueType::U32:
            case ValueType::I32:
                u32(static_cast<uint32_t>(v.ints[i]));
                break;
            case ValueType::U64:
            case ValueType::I64:
                u64(static_cast<uint64_t>(v.ints[i]));
                break;
            case ValueType::F32: {
                auto f = static_cast<float>(v.floats[i]);
                raw(&f, 4);
                break;
            }
            case ValueType::F64:
                raw(&v.floats[i], 8);
                break;
            case ValueType::STRING:
                str(v.strings[i]);
                break;
            case ValueType::ARRAY:
                break;
        }
    };
    std::vector<std::pair<std::string, Value>> kv = kv_in;
    if (alignment != kDefaultAlignment) kv.insert(kv.begin(), {"general.alignment", Value::u32(alignment)});
    raw("GGUF", 4);
    u32(kVersion);
    u64(infos.size());
    u64(kv.size());
    for (const auto& [key, v] : kv) {
        str(key);
        u32(static_cast<uint32_t>(v.type));
        if (v.is_array()) {
            u32(static_cast<uint32_t>(v.elem));
            u64(v.size());
            for (size_t i = 0; i < v.size(); ++i) scalar(v.elem, v, i);
        } else {
            scalar(v.type, v, 0);
        }
    }
    for (const auto& t : infos) {
        str(t.name);
        u32(static_cast<uint32_t>(t.ne.size()));
        for (int64_t d : t.ne) u64(static_cast<uint64_t>(d));
        u32(static_cast<uint32_t>(t.type));
        u64(t.offset);
    }
    static const uint8_t zeros[256] = {};
    auto pad = [&](uint64_t pos) { return (alignment - pos % alignment) % alignment; };
    head.insert(head.end(), pad(head.size()), 0);
    sink(head.data(), head.size());
    for (size_t i = 0; i < infos.size(); ++i) {
        sink(datas[i]->data(), datas[i]->size());
        uint64_t p = pad(datas[i]->size());
        while (p > 0) {
            const size_t n = std::min<uint64_t>(p, sizeof zeros);
            sink(zeros, n);
            p -= n;
        }
    }
}

}  // namespace

void Writer::emit(uint32_t alignment, const std::function<void(const void*, size_t)>& sink) const {
    MSLM_CHECK(alignment != 0 && (alignment & (alignment - 1)) == 0,
               "gguf writer: alignment {} is not a power of two", alignment);
    std::vector<TensorInfo> infos;
    std::vector<const std::vector<uint8_t>*> datas;
    uint64_t offset = 0;
    for (const auto& t : tensors_) {
        infos.push_back(t.info);
        infos.back().offset = offset;
        offset += (t.info.nbytes + alignment - 1) / alignment * alignment;
        datas.push_back(&t.data);
    }
    emit_bytes(kv_, infos, datas, alignment, sink);
}

std::vector<uint8_t> Writer::serialize(uint32_t alignment) const {
    std::vector<uint8_t> out;
    emit(alignment, [&](const void* p, size_t n) {
        const auto* b = static_cast<const uint8_t*>(p);
        out.insert(out.end(), b, b + n);
    });
    return out;
}

void Writer::write(const std::string& path, uint32_t alignment) const {
    const std::string tmp = path + ".tmp";
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    MSLM_CHECK(fd >= 0, "{}: cannot create {}: {}", path, tmp, std::strerror(errno));
    try {
        emit(alignment, [&](const void* p, size_t n) {
            const auto* b = static_cast<const uint8_t*>(p);
            while (n > 0) {
                const ssize_t w = ::write(fd, b, n);
                if (w < 0 && errno == EINTR) continue;
                MSLM_CHECK(w > 0, "{}: write failed: {}", tmp, std::strerror(errno));
                b += w;
                n -= static_cast<size_t>(w);
            }
        });
        const int rc = ::close(fd);
        fd = -1;
        MSLM_CHECK(rc == 0, "{}: close failed: {}", tmp, std::strerror(errno));
        MSLM_CHECK(::rename(tmp.c_str(), path.c_str()) == 0, "{}: cannot rename {} over it: {}", path, tmp,
                   std::strerror(errno));
    } catch (...) {
        if (fd >= 0) ::close(fd);
        ::unlink(tmp.c_str());
        throw;
    }
}

}  // namespace mslm::gguf
