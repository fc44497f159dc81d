#include "core/safetensors.h"

#include <fcntl.h>
#include <fmt/ranges.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <numeric>
#include <system_error>
#include <unordered_set>

namespace mslm {

static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian");

namespace {

using nlohmann::json;

// Spec dtypes that mslm::DType cannot hold.
constexpr std::string_view kUnsupportedDtypes[] = {"F8_E4M3", "F8_E5M2", "F8_E8M0", "F6_E2M3", "F6_E3M2",
                                                   "F4",      "U16",     "U32",     "U64",     "C64"};
constexpr uint64_t kMaxSigned = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
// A valid header nests 3 deep (root, entry, shape). The limit (serde_json's, which the reference
// reader uses) keeps recursive code such as json::dump away from adversarial nesting.
constexpr int kMaxNesting = 128;

std::string errno_message(int err) {
    return std::generic_category().message(err);
}

// Index of the first byte of an ill-formed UTF-8 sequence (overlong forms, surrogates and code
// points past U+10FFFF included), or n when all is well formed.
size_t utf8_error_at(const uint8_t* s, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x80) {
            ++i;
            continue;
        }
        size_t len;
        uint32_t cp, min;
        if ((c & 0xe0) == 0xc0) {
            len = 2, cp = c & 0x1fu, min = 0x80;
        } else if ((c & 0xf0) == 0xe0) {
            len = 3, cp = c & 0x0fu, min = 0x800;
        } else if ((c & 0xf8) == 0xf0) {
            len = 4, cp = c & 0x07u, min = 0x10000;
        } else {
            return i;
        }
        if (n - i < len) return i;
        for (size_t k = 1; k < len; ++k) {
            if ((s[i + k] & 0xc0) != 0x80) return i;
            cp = (cp << 6) | (s[i + k] & 0x3fu);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return i;
        i += len;
    }
    return n;
}

void check_length(uint64_t size, std::string_view file) {
    MSLM_CHECK(size >= 8, "{}: file is {} bytes, shorter than the 8-byte header length", file, size);
}

// Parses the header JSON, rejecting duplicate keys at any depth (nlohmann would keep one silently)
// and nesting past kMaxNesting, and recording the top-level keys in file order (nlohmann::json sorts them;
// ordered_json would make each insertion linear, quadratic on a large header).
json parse_header_json(std::string_view text, std::string_view file, std::vector<std::string>* top_keys) {
    std::vector<std::unordered_set<std::string>> open_objects;
    int nesting = 0;
    json::parser_callback_t on_event = [&](int, json::parse_event_t event, json& parsed) {
        switch (event) {
            case json::parse_event_t::object_start:
            case json::parse_event_t::array_start:
                MSLM_CHECK(++nesting <= kMaxNesting, "{}: header nests more than {} levels deep", file,
                           kMaxNesting);
                if (event == json::parse_event_t::object_start) open_objects.emplace_back();
                break;
            case json::parse_event_t::object_end:
                --nesting;
                open_objects.pop_back();
                break;
            case json::parse_event_t::array_end:
                --nesting;
                break;
            case json::parse_event_t::key: {
                const auto& key = parsed.get_ref<const std::string&>();
                if (!open_objects.back().insert(key).second) {
                    if (open_objects.size() == 1) fail("{}: duplicate tensor name '{}'", file, key);
                    fail("{}: duplicate key \"{}\" inside entry '{}'", file, key, top_keys->back());
                }
                if (open_objects.size() == 1) top_keys->push_back(key);
                break;
            }
            default:
                break;
        }
        return true;
    };
    try {
        return json::parse(text.begin(), text.end(), on_event);
    } catch (const json::parse_error& e) {
        fail("{}: header is not valid JSON (parse error at header byte {}): {}", file, e.byte, e.what());
    } catch (const json::exception& e) {
        fail("{}: header is not valid JSON: {}", file, e.what());
    }
}

// A header value for an error message, kept short.
std::string describe(const json& v) {
    switch (v.type()) {
        case json::value_t::object:
            return "an object";
        case json::value_t::array:
            return fmt::format("an array of {}", v.size());
        case json::value_t::string:
            return v.get_ref<const std::string&>().size() <= 40 ? v.dump() : "a long string";
        default:
            return v.dump();  // a number, true, false or null
    }
}

DType parse_dtype(const json& entry, std::string_view file, const std::string& name) {
    auto it = entry.find("dtype");
    MSLM_CHECK(it != entry.end(), "{}: tensor '{}' has no \"dtype\"", file, name);
    MSLM_CHECK(it->is_string(), "{}: tensor '{}': \"dtype\" is not a string", file, name);
    const auto& s = it->get_ref<const std::string&>();
    DType dtype;
    if (dtype_from_name(s, &dtype)) return dtype;
    if (std::find(std::begin(kUnsupportedDtypes), std::end(kUnsupportedDtypes), s) !=
        std::end(kUnsupportedDtypes)) {
        fail(
            "{}: tensor '{}': unsupported dtype {} (mslm reads F32, F64, BF16, F16, I64, I32, I16, I8, U8, "
            "BOOL)",
            file, name, s);
    }
    fail("{}: tensor '{}': unknown dtype \"{}\"", file, name, s);
}

// Shape dims are non-negative integers. The product of the non-zero dims times the element size
// must fit in int64 even for an empty tensor: Tensor computes numel and strides in int64, and
// every partial product of the dims is then bounded by that one.
Shape parse_shape(const json& entry, DType dtype, std::string_view file, const std::string& name) {
    auto it = entry.find("shape");
    MSLM_CHECK(it != entry.end(), "{}: tensor '{}' has no \"shape\"", file, name);
    MSLM_CHECK(it->is_array(), "{}: tensor '{}': \"shape\" is not an array", file, name);
    Shape shape;
    uint64_t bytes = dtype_size(dtype);
    for (size_t i = 0; i < it->size(); ++i) {
        const json& d = (*it)[i];
        MSLM_CHECK(d.is_number_integer(), "{}: tensor '{}': shape dimension {} is not an integer: {}", file,
                   name, i, describe(d));
        MSLM_CHECK(d.is_number_unsigned(), "{}: tensor '{}': shape dimension {} is negative: {}", file, name,
                   i, describe(d));
        uint64_t v = d.get<uint64_t>();
        if (v != 0) {
            MSLM_CHECK(!__builtin_mul_overflow(bytes, v, &bytes) && bytes <= kMaxSigned,
                       "{}: tensor '{}': shape overflows at dimension {} ({}): the size in bytes of {} "
                       "does not fit in 63 bits",
                       file, name, i, v, dtype_name(dtype));
        }
        shape.push_back(static_cast<int64_t>(v));
    }
    return shape;
}

int64_t numel_of(const Shape& shape) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;  // bounded by parse_shape
    return n;
}

SafetensorsEntry parse_entry(const json& entry, uint64_t buffer_size, std::string_view file,
                             const std::string& name) {
    MSLM_CHECK(entry.is_object(), "{}: entry '{}' is not an object: {}", file, name, describe(entry));
    SafetensorsEntry e;
    e.name = name;
    e.dtype = parse_dtype(entry, file, name);
    e.shape = parse_shape(entry, e.dtype, file, name);

    auto it = entry.find("data_offsets");
    MSLM_CHECK(it != entry.end(), "{}: tensor '{}' has no \"data_offsets\"", file, name);
    MSLM_CHECK(
        it->is_array() && it->size() == 2 && (*it)[0].is_number_unsigned() && (*it)[1].is_number_unsigned(),
        "{}: tensor '{}': \"data_offsets\" is not [begin, end] of non-negative integers: {}", file, name,
        describe(*it));
    e.begin = (*it)[0].get<uint64_t>();
    e.end = (*it)[1].get<uint64_t>();
    MSLM_CHECK(e.begin <= e.end, "{}: tensor '{}': data_offsets [{}, {}] has begin > end", file, name,
               e.begin, e.end);
    MSLM_CHECK(e.end <= buffer_size,
               "{}: tensor '{}' ends at byte {}, past the end of the data buffer ({} bytes)", file, name,
               e.end, buffer_size);
    uint64_t need = static_cast<uint64_t>(numel_of(e.shape)) * dtype_size(e.dtype);
    MSLM_CHECK(e.end - e.begin == need,
               "{}: tensor '{}': data_offsets [{}, {}] hold {} bytes but shape {} of {} needs {} bytes", file,
               name, e.begin, e.end, e.end - e.begin, shape_str(e.shape), dtype_name(e.dtype), need);
    return e;
}

std::map<std::string, std::string> parse_metadata(const json& meta, std::string_view file) {
    MSLM_CHECK(meta.is_object(), "{}: __metadata__ is not an object of strings: {}", file, describe(meta));
    std::map<std::string, std::string> out;
    for (const auto& [key, value] : meta.items()) {
        MSLM_CHECK(value.is_string(), "{}: __metadata__ is not an object of strings: value of '{}' is {}",
                   file, key, describe(value));
        out.emplace(key, value.get<std::string>());
    }
    return out;
}

// The spec wants the buffer covered from 0 to its end, tensor after tensor, with nothing shared
// and nothing left over. Empty tensors may sit at any boundary.
void check_coverage(const std::vector<SafetensorsEntry>& entries, uint64_t buffer_size,
                    std::string_view file) {
    std::vector<size_t> order(entries.size());
    std::iota(order.begin(), order.end(), size_t{0});
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
        return std::pair(entries[a].begin, entries[a].end) < std::pair(entries[b].begin, entries[b].end);
    });
    uint64_t pos = 0;
    const SafetensorsEntry* prev = nullptr;
    for (size_t i : order) {
        const SafetensorsEntry& e = entries[i];
        if (e.begin < pos) {
            fail("{}: tensor '{}' at bytes [{}, {}) overlaps tensor '{}' at [{}, {})", file, e.name, e.begin,
                 e.end, prev->name, prev->begin, prev->end);
        }
        MSLM_CHECK(e.begin == pos,
                   "{}: hole in the data buffer: bytes [{}, {}) before tensor '{}' belong to no tensor", file,
                   pos, e.begin, e.name);
        pos = e.end;
        prev = &e;
    }
    MSLM_CHECK(pos == buffer_size,
               "{}: hole in the data buffer: bytes [{}, {}) after the last tensor belong to no tensor", file,
               pos, buffer_size);
}

// write(2) until done; the kernel writes at most about 2 GiB per call.
void write_all(int fd, const void* data, size_t n, const std::string& file) {
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
        ssize_t w = ::write(fd, p, std::min<size_t>(n, size_t{1} << 30));
        if (w < 0 && errno == EINTR) continue;
        MSLM_CHECK(w > 0, "{}: write failed: {}", file, errno_message(w < 0 ? errno : EIO));
        p += w;
        n -= static_cast<size_t>(w);
    }
}

std::string json_string(const std::string& s, std::string_view what, const std::string& file) {
    MSLM_CHECK(utf8_error_at(reinterpret_cast<const uint8_t*>(s.data()), s.size()) == s.size(),
               "{}: {} is not valid UTF-8", file, what);
    return json(s).dump();
}

}  // namespace

SafetensorsHeader parse_safetensors(const uint8_t* data, size_t size, std::string_view file) {
    check_length(size, file);
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | data[i];
    MSLM_CHECK(n <= kSafetensorsMaxHeader, "{}: header length {} exceeds the limit of {} bytes", file, n,
               kSafetensorsMaxHeader);
    MSLM_CHECK(n <= size - 8, "{}: header length {} runs past the end of the file ({} bytes)", file, n, size);
    const uint8_t* text = data + 8;
    size_t bad = utf8_error_at(text, n);
    MSLM_CHECK(bad == n, "{}: header is not valid UTF-8 (ill-formed sequence at header byte {})", file, bad);
    MSLM_CHECK(n > 0 && text[0] == '{', "{}: header is not a JSON object (it must start with '{{')", file);

    SafetensorsHeader header;
    header.data_start = 8 + n;
    uint64_t buffer_size = size - header.data_start;
    std::vector<std::string> keys;
    json root = parse_header_json(std::string_view(reinterpret_cast<const char*>(text), n), file, &keys);
    MSLM_CHECK(root.is_object(), "{}: header is not a JSON object", file);
    for (const std::string& key : keys) {
        const json& value = root.find(key).value();
        if (key == "__metadata__") {
            header.metadata = parse_metadata(value, file);
        } else {
            header.entries.push_back(parse_entry(value, buffer_size, file, key));
        }
    }
    check_coverage(header.entries, buffer_size, file);
    return header;
}

SafetensorsFile::SafetensorsFile(std::shared_ptr<Storage> bytes, std::string name, SafetensorsHeader header)
    : bytes_(std::move(bytes)), name_(std::move(name)), header_(std::move(header)) {
    names_.reserve(header_.entries.size());
    for (size_t i = 0; i < header_.entries.size(); ++i) {
        names_.push_back(header_.entries[i].name);
        index_.emplace(header_.entries[i].name, i);
    }
}

SafetensorsFile SafetensorsFile::from_bytes(std::shared_ptr<Storage> bytes, std::string name) {
    MSLM_CHECK(bytes && bytes->device() == Device::CPU, "{}: safetensors bytes must be in host memory", name);
    SafetensorsHeader header =
        parse_safetensors(static_cast<const uint8_t*>(bytes->data()), bytes->bytes(), name);
    return SafetensorsFile(std::move(bytes), std::move(name), std::move(header));
}

SafetensorsFile SafetensorsFile::open(const std::string& path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    MSLM_CHECK(fd >= 0, "{}: cannot open: {}", path, errno_message(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
        int err = errno;
        ::close(fd);
        fail("{}: cannot stat: {}", path, errno_message(err));
    }
    if (!S_ISREG(st.st_mode)) {
        ::close(fd);
        fail("{}: not a regular file", path);
    }
    auto size = static_cast<uint64_t>(st.st_size);
    if (size < 8) {
        ::close(fd);
        check_length(size, path);
    }
    void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    int err = errno;
    ::close(fd);
    MSLM_CHECK(p != MAP_FAILED, "{}: mmap of {} bytes failed: {}", path, size, errno_message(err));
    auto storage = std::make_shared<Storage>(p, size, Device::CPU, [size](void* q) { ::munmap(q, size); });
    return from_bytes(std::move(storage), path);
}

bool SafetensorsFile::contains(std::string_view name) const {
    return index_.find(name) != index_.end();
}

const SafetensorsEntry& SafetensorsFile::entry(std::string_view name) const {
    auto it = index_.find(name);
    MSLM_CHECK(it != index_.end(), "{}: no tensor named '{}'", name_, name);
    return header_.entries[it->second];
}

std::span<const uint8_t> SafetensorsFile::bytes(std::string_view name) const {
    const SafetensorsEntry& e = entry(name);
    const auto* base = static_cast<const uint8_t*>(bytes_->data()) + header_.data_start;
    return {base + e.begin, static_cast<size_t>(e.end - e.begin)};
}

Tensor SafetensorsFile::get(std::string_view name) const {
    const SafetensorsEntry& e = entry(name);
    MSLM_CHECK(e.shape.size() <= kMaxDims,
               "{}: tensor '{}' has {} dims; mslm tensors hold at most {} (bytes() still reads it)", name_,
               name, e.shape.size(), kMaxDims);
    return Tensor::from_storage(bytes_, header_.data_start + e.begin, e.shape, e.dtype);
}

Tensor SafetensorsFile::get_f32(std::string_view name) const {
    const SafetensorsEntry& e = entry(name);
    MSLM_CHECK(e.shape.size() <= kMaxDims,
               "{}: tensor '{}' has {} dims; mslm tensors hold at most {} (bytes() still reads it)", name_,
               name, e.shape.size(), kMaxDims);
    MSLM_CHECK(
        e.dtype == DType::F32 || e.dtype == DType::F64 || e.dtype == DType::F16 || e.dtype == DType::BF16,
        "{}: get_f32: tensor '{}' is {}; only F32, F64, F16 and BF16 convert to fp32", name_, name,
        dtype_name(e.dtype));
    Tensor out = Tensor::empty(e.shape, DType::F32);
    auto n = static_cast<size_t>(out.numel());
    if (n == 0) return out;
    float* dst = out.data<float>();
    const uint8_t* src = bytes(name).data();
    // memcpy for every load: the source may be unaligned.
    switch (e.dtype) {
        case DType::F32:
            std::memcpy(dst, src, n * sizeof(float));
            break;
        case DType::F64:
            for (size_t i = 0; i < n; ++i) {
                double v;
                std::memcpy(&v, src + i * sizeof v, sizeof v);
                dst[i] = static_cast<float>(v);
            }
            break;
        case DType::F16:
        case DType::BF16:
            for (size_t i = 0; i < n; ++i) {
                uint16_t h;
                std::memcpy(&h, src + i * sizeof h, sizeof h);
                dst[i] = e.dtype == DType::F16 ? f16_to_f32(h) : bf16_to_f32(h);
            }
            break;
        default:
            break;
    }
    return out;
}

void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
    // The header is assembled by hand rather than as a json object: it fixes the key order
    // (header order = data order; dtype, shape, data_offsets) in linear time.
    std::string header = "{";
    if (!metadata.empty()) {
        header += "\"__metadata__\":{";
        bool first = true;
        for (const auto& [key, value] : metadata) {
            if (!first) header += ',';
            first = false;
            header += json_string(key, fmt::format("metadata key '{}'", key), path) + ':' +
                      json_string(value, fmt::format("metadata value of '{}'", key), path);
        }
        header += '}';
    }
    std::unordered_set<std::string_view> seen;
    uint64_t offset = 0;
    for (const auto& [name, t] : tensors) {
        MSLM_CHECK(name != "__metadata__", "{}: '__metadata__' is reserved and cannot name a tensor", path);
        MSLM_CHECK(seen.insert(name).second, "{}: duplicate tensor name '{}'", path, name);
        MSLM_CHECK(t.defined(), "{}: tensor '{}' is undefined", path, name);
        MSLM_CHECK(t.device() == Device::CPU, "{}: tensor '{}' is on {}; only CPU tensors are saved", path,
                   name, device_name(t.device()));
        if (header.size() > 1) header += ',';
        header += fmt::format("{}:{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{},{}]}}",
                              json_string(name, fmt::format("tensor name '{}'", name), path),
                              dtype_name(t.dtype()), fmt::join(t.shape(), ","), offset, offset + t.nbytes());
        offset += t.nbytes();
    }
    header += '}';
    header.append((8 - header.size() % 8) % 8, ' ');
    MSLM_CHECK(header.size() <= kSafetensorsMaxHeader, "{}: header of {} bytes exceeds the limit of {} bytes",
               path, header.size(), kSafetensorsMaxHeader);

    std::string tmp = path + ".tmp";
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    MSLM_CHECK(fd >= 0, "{}: cannot create {}: {}", path, tmp, errno_message(errno));
    try {
        uint8_t len[8];
        for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(header.size() >> (8 * i));
        write_all(fd, len, sizeof len, tmp);
        write_all(fd, header.data(), header.size(), tmp);
        for (const auto& [name, t] : tensors) {
            if (t.numel() == 0) continue;
            Tensor c = t.contiguous();
            write_all(fd, c.raw(), c.nbytes(), tmp);
        }
        MSLM_CHECK(::fsync(fd) == 0, "{}: fsync failed: {}", tmp, errno_message(errno));
        int rc = ::close(fd);
        fd = -1;
        MSLM_CHECK(rc == 0, "{}: close failed: {}", tmp, errno_message(errno));
        MSLM_CHECK(::rename(tmp.c_str(), path.c_str()) == 0, "{}: cannot rename {} over it: {}", path, tmp,
                   errno_message(errno));
    } catch (...) {
        if (fd >= 0) ::close(fd);
        ::unlink(tmp.c_str());
        throw;
    }
    // Make the rename itself durable. Best effort: some file systems refuse fsync on directories.
    std::string dir = std::filesystem::path(path).parent_path().string();
    int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        ::fsync(dfd);
        ::close(dfd);
    }
}

}  // namespace mslm
