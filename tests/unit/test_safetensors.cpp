#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/safetensors.h"

using namespace mslm;

namespace {

// One file per test and process: ctest runs tests of several worktrees in parallel on one /tmp.
std::string temp_path(const std::string& stem) {
    const auto* info = testing::UnitTest::GetInstance()->current_test_info();
    std::string name =
        fmt::format("mslm_st_{}_{}_{}_{}.safetensors", info->test_suite_name(), info->name(), getpid(), stem);
    for (char& c : name) {
        if (c == '/') c = '_';
    }
    return testing::TempDir() + name;
}

void write_file(const std::string& path, const std::string& bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    ASSERT_TRUE(out.good()) << path;
}

std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

std::string le64(uint64_t v) {
    std::string s(8, '\0');
    for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(v >> (8 * i));
    return s;
}

// A file with this header (unpadded) and data buffer.
std::string st_bytes(const std::string& header, const std::string& data = "") {
    return le64(header.size()) + header + data;
}

// Writes `bytes` to a temp file, opens it, and expects an mslm::Error naming the file and `phrase`.
void expect_open_error(const std::string& bytes, const std::string& phrase) {
    std::string path = temp_path("bad");
    write_file(path, bytes);
    try {
        SafetensorsFile::open(path);
        ADD_FAILURE() << "no error; expected one containing '" << phrase << "'";
    } catch (const Error& e) {
        std::string msg = e.what();
        EXPECT_NE(msg.find(path), std::string::npos) << "message does not name the file: " << msg;
        EXPECT_NE(msg.find(phrase), std::string::npos) << "message lacks '" << phrase << "': " << msg;
    }
    std::filesystem::remove(path);
}

template <typename T>
Tensor tensor_of(std::vector<T> values, const Shape& shape) {
    return Tensor::from_vector<T>(values, shape);
}

Tensor u16_tensor(DType dtype, const std::vector<uint16_t>& words, const Shape& shape) {
    Tensor t = Tensor::empty(shape, dtype);
    if (!words.empty()) std::memcpy(t.raw(), words.data(), words.size() * 2);
    return t;
}

std::string bytes_of(const Tensor& t) {
    Tensor c = t.contiguous();
    return std::string(static_cast<const char*>(c.raw()), c.nbytes());
}

std::string bytes_of(std::span<const uint8_t> s) {
    return std::string(reinterpret_cast<const char*>(s.data()), s.size());
}

}  // namespace

TEST(SafetensorsRoundTrip, AllDtypesScalarsAndEmpty) {
    Tensor boolean = Tensor::empty({4}, DType::BOOL);
    const uint8_t flags[] = {1, 0, 0, 1};
    std::memcpy(boolean.raw(), flags, 4);
    std::vector<std::pair<std::string, Tensor>> tensors = {
        {"f32", tensor_of<float>({1.5f, -2.0f, 3.25f, 0.0f, 1e-30f, -7.0f}, {2, 3})},
        {"f64", tensor_of<double>({1e300, -0.5}, {2})},
        {"bf16", u16_tensor(DType::BF16, {0x3f80, 0xc000, 0x7f80}, {3})},
        {"f16", u16_tensor(DType::F16, {0x3c00, 0x0001, 0xfbff}, {3, 1})},
        {"i64", tensor_of<int64_t>({INT64_MIN, INT64_MAX}, {1, 2})},
        {"i32", tensor_of<int32_t>({-1, 2, 3}, {3})},
        {"i16", tensor_of<int16_t>({-32768, 32767}, {2})},
        {"i8", tensor_of<int8_t>({-128, 127, 0}, {3})},
        {"u8", tensor_of<uint8_t>({0, 255}, {2})},
        {"bool", boolean},
        {"scalar", tensor_of<float>({42.0f}, {})},
        {"empty", Tensor::empty({0, 3}, DType::F32)},
        {"empty_i8", Tensor::empty({2, 0}, DType::I8)},
        {"five_dims", tensor_of<int16_t>({1, 2, 3, 4, 5, 6}, {1, 2, 1, 3, 1})},
        {"transposed", tensor_of<int32_t>({0, 1, 2, 3, 4, 5}, {2, 3}).transpose(0, 1)},
    };
    std::string path = temp_path("rt");
    save_safetensors(path, tensors);
    EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));

    SafetensorsFile file = SafetensorsFile::open(path);
    EXPECT_TRUE(file.metadata().empty());
    ASSERT_EQ(file.names().size(), tensors.size());
    for (size_t i = 0; i < tensors.size(); ++i) {
        const auto& [name, want] = tensors[i];
        SCOPED_TRACE(name);
        EXPECT_EQ(file.names()[i], name);  // header order is the caller's order
        Tensor got = file.get(name);
        EXPECT_EQ(got.dtype(), want.dtype());
        EXPECT_EQ(got.shape(), want.shape());
        EXPECT_TRUE(got.is_contiguous());
        EXPECT_EQ(bytes_of(got), bytes_of(want));
        EXPECT_EQ(bytes_of(file.bytes(name)), bytes_of(want));
    }
    EXPECT_EQ(file.get("scalar").ndim(), 0);
    EXPECT_EQ(file.get("transposed").shape(), (Shape{3, 2}));
    EXPECT_EQ(file.get("transposed").clone().to_float_vector(), (std::vector<float>{0, 3, 1, 4, 2, 5}));
    std::filesystem::remove(path);
}

TEST(SafetensorsRoundTrip, Metadata) {
    std::map<std::string, std::string> meta = {
        {"format", "pt"}, {"quote\"and\\slash", "line\nbreak\ttab"}, {"ünïcödé ☃", "𝔘"}, {"empty", ""}};
    std::string path = temp_path("meta");
    save_safetensors(path, {{"x", tensor_of<float>({1.0f}, {1})}}, meta);
    EXPECT_EQ(SafetensorsFile::open(path).metadata(), meta);

    // No metadata: no __metadata__ key at all.
    save_safetensors(path, {{"x", tensor_of<float>({1.0f}, {1})}});
    EXPECT_EQ(read_file(path).find("__metadata__"), std::string::npos);
    EXPECT_TRUE(SafetensorsFile::open(path).metadata().empty());
    std::filesystem::remove(path);
}

TEST(SafetensorsRoundTrip, NoTensors) {
    std::string path = temp_path("none");
    save_safetensors(path, {}, {{"k", "v"}});
    SafetensorsFile file = SafetensorsFile::open(path);
    EXPECT_TRUE(file.names().empty());
    EXPECT_EQ(file.metadata().at("k"), "v");
    std::filesystem::remove(path);
}

TEST(SafetensorsWrite, ByteExactLayout) {
    std::string path = temp_path("exact");
    save_safetensors(path,
                     {{"w", tensor_of<float>({1.0f, -2.0f}, {1, 2})},
                      {"s", tensor_of<int8_t>({-3}, {})},
                      {"e", Tensor::empty({0}, DType::BF16)}},
                     {{"k", "v"}});
    std::string header =
        R"({"__metadata__":{"k":"v"},"w":{"dtype":"F32","shape":[1,2],"data_offsets":[0,8]},)"
        R"("s":{"dtype":"I8","shape":[],"data_offsets":[8,9]},)"
        R"("e":{"dtype":"BF16","shape":[0],"data_offsets":[9,9]}})";
    ASSERT_EQ(header.size(), 186u);
    header += std::string(6, ' ');  // to 192, a multiple of 8
    std::string data = std::string("\x00\x00\x80\x3f", 4) + std::string("\x00\x00\x00\xc0", 4) + "\xfd";
    std::string expected = le64(192) + header + data;
    EXPECT_EQ(read_file(path), expected);
    std::filesystem::remove(path);
}

TEST(SafetensorsWrite, RejectsBadInputAndKeepsTheOldFile) {
    std::string path = temp_path("w");
    save_safetensors(path, {{"a", tensor_of<float>({1.0f}, {1})}});
    std::string before = read_file(path);
    Tensor one = tensor_of<float>({2.0f}, {1});

    auto expect_save_error = [&](const std::vector<std::pair<std::string, Tensor>>& tensors,
                                 const std::string& phrase) {
        try {
            save_safetensors(path, tensors);
            ADD_FAILURE() << "no error; expected '" << phrase << "'";
        } catch (const Error& e) {
            std::string msg = e.what();
            EXPECT_NE(msg.find(path), std::string::npos) << msg;
            EXPECT_NE(msg.find(phrase), std::string::npos) << msg;
        }
        EXPECT_EQ(read_file(path), before);
        EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
    };
    expect_save_error({{"a", one}, {"b", one}, {"a", one}}, "duplicate tensor name 'a'");
    expect_save_error({{"__metadata__", one}}, "reserved");
    expect_save_error({{"u", Tensor()}}, "undefined");
    expect_save_error({{std::string("bad\xff", 4), one}}, "not valid UTF-8");
    // A tensor that claims to live on the GPU; never dereferenced.
    static float fake[1];
    auto gpu = std::make_shared<Storage>(fake, sizeof fake, Device::CUDA, nullptr);
    expect_save_error({{"g", Tensor::from_storage(gpu, 0, {1}, DType::F32)}}, "only CPU tensors");

    std::string missing_dir = testing::TempDir() + "mslm_st_no_such_dir/x.safetensors";
    EXPECT_THROW(save_safetensors(missing_dir, {{"a", one}}), Error);
    std::filesystem::remove(path);
}

TEST(SafetensorsRead, ZeroCopyTensorsOutliveTheFile) {
    std::string path = temp_path("zc");
    save_safetensors(path,
                     {{"a", tensor_of<float>({1, 2, 3, 4}, {4})}, {"b", tensor_of<float>({5, 6}, {2})}});
    Tensor a, b;
    {
        SafetensorsFile file = SafetensorsFile::open(path);
        a = file.get("a");
        b = file.get("b");
        EXPECT_EQ(a.storage(), b.storage());  // one mapping shared by every tensor
        EXPECT_EQ(static_cast<const uint8_t*>(a.raw()), file.bytes("a").data());
        EXPECT_TRUE(file.contains("a"));
        EXPECT_FALSE(file.contains("c"));
        EXPECT_EQ(file.entry("b").begin, 16u);
        EXPECT_EQ(file.entry("b").end, 24u);
        try {
            file.get("c");
            ADD_FAILURE();
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find("no tensor named 'c'"), std::string::npos) << e.what();
        }
    }
    std::filesystem::remove(path);  // the mapping keeps the inode alive
    EXPECT_EQ(a.to_float_vector(), (std::vector<float>{1, 2, 3, 4}));
    EXPECT_EQ(b.to_float_vector(), (std::vector<float>{5, 6}));
}

TEST(SafetensorsRead, GetF32ConvertsUnalignedTensors) {
    std::string path = temp_path("f32");
    // 3 bytes of U8 first: every later tensor starts at an odd offset.
    save_safetensors(path, {{"pad", tensor_of<uint8_t>({1, 2, 3}, {3})},
                            {"f", tensor_of<float>({1.5f, -2.25f}, {2})},
                            {"h", u16_tensor(DType::F16, {0x3c00, 0xc100, 0x0001}, {3})},
                            {"b", u16_tensor(DType::BF16, {0x3fc0, 0xff80}, {1, 2})},
                            {"d", tensor_of<double>({0.1, -1e40}, {2})},
                            {"z", Tensor::empty({0}, DType::F16)},
                            {"i", tensor_of<int32_t>({1}, {1})}});
    SafetensorsFile file = SafetensorsFile::open(path);
    EXPECT_NE(reinterpret_cast<uintptr_t>(file.get("f").raw()) % 4, 0u);  // documented: may be unaligned

    auto values = [&](const char* name) {
        Tensor t = file.get_f32(name);
        EXPECT_EQ(t.dtype(), DType::F32);
        EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw()) % alignof(float), 0u);
        EXPECT_EQ(t.shape(), file.entry(name).shape);
        return t.to_float_vector();
    };
    EXPECT_EQ(values("f"), (std::vector<float>{1.5f, -2.25f}));
    EXPECT_EQ(values("h"), (std::vector<float>{1.0f, -2.5f, 0x1p-24f}));
    EXPECT_EQ(values("b"), (std::vector<float>{1.5f, -INFINITY}));
    EXPECT_EQ(values("d"), (std::vector<float>{0.1f, -INFINITY}));  // the float conversion of each double
    EXPECT_TRUE(values("z").empty());
    EXPECT_EQ(file.get("f").clone().to_float_vector(), (std::vector<float>{1.5f, -2.25f}));
    try {
        file.get_f32("i");
        ADD_FAILURE();
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("only F32, F64, F16 and BF16"), std::string::npos) << e.what();
    }
    std::filesystem::remove(path);
}

// Valid per the spec, but more dims than mslm::Tensor holds: listed and readable as bytes.
TEST(SafetensorsRead, MoreThanFiveDimsReadAsBytes) {
    std::string data = "abcdefgh";
    std::string header = R"({"six":{"dtype":"U8","shape":[1,2,1,2,1,2],"data_offsets":[0,8]}})";
    std::string path = temp_path("six");
    write_file(path, st_bytes(header, data));
    SafetensorsFile file = SafetensorsFile::open(path);
    EXPECT_EQ(file.names(), (std::vector<std::string>{"six"}));
    EXPECT_EQ(file.entry("six").shape, (Shape{1, 2, 1, 2, 1, 2}));
    EXPECT_EQ(bytes_of(file.bytes("six")), data);
    try {
        file.get("six");
        ADD_FAILURE();
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("at most 5"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    }
    EXPECT_THROW(file.get_f32("six"), Error);
    std::filesystem::remove(path);
}

TEST(SafetensorsRead, AcceptsPaddingAndEmptyTensorsAtBoundaries) {
    // Header padded with spaces; empty tensors at offset 0, in the middle and at the end; header
    // order differs from data order.
    std::string header =
        R"({"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},"e0":{"dtype":"I8","shape":[0],"data_offsets":[0,0]},)"
        R"("a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"e1":{"dtype":"F32","shape":[0,7],"data_offsets":[4,4]},)"
        R"("e2":{"dtype":"BOOL","shape":[3,0],"data_offsets":[8,8]}}     )";
    std::string path = temp_path("pad");
    write_file(path, st_bytes(header, std::string("\x00\x00\x80\x3f\x00\x00\x00\x40", 8)));
    SafetensorsFile file = SafetensorsFile::open(path);
    EXPECT_EQ(file.names(), (std::vector<std::string>{"b", "e0", "a", "e1", "e2"}));
    EXPECT_EQ(file.get_f32("a").to_float_vector(), (std::vector<float>{1.0f}));
    EXPECT_EQ(file.get_f32("b").to_float_vector(), (std::vector<float>{2.0f}));
    EXPECT_EQ(file.get("e1").shape(), (Shape{0, 7}));
    std::filesystem::remove(path);
}

namespace {

struct Malformed {
    const char* name;
    std::string bytes;
    const char* phrase;
};

std::string one(const std::string& entry, const std::string& data = std::string(4, '\0')) {
    return st_bytes(R"({"t":)" + entry + "}", data);
}

const std::string kGood = R"({"dtype":"F32","shape":[1],"data_offsets":[0,4]})";

std::vector<Malformed> malformed_cases() {
    return {
        {"empty_file", "", "shorter than the 8-byte header length"},
        {"seven_bytes", std::string(7, '\0'), "shorter than the 8-byte header length"},
        {"header_past_end", le64(100) + "{}", "runs past the end of the file"},
        {"header_over_limit", le64(100'000'001) + "{}", "exceeds the limit"},
        {"header_huge", le64(UINT64_MAX) + "{}", "exceeds the limit"},
        {"header_bad_utf8", st_bytes("{\"t\xff\":1}"), "not valid UTF-8"},
        {"header_overlong_utf8", st_bytes("{\"\xc0\xaf\":1}"), "not valid UTF-8"},
        {"header_surrogate_utf8", st_bytes("{\"\xed\xa0\x80\":1}"), "not valid UTF-8"},
        {"header_empty", st_bytes(""), "not a JSON object"},
        {"header_array", st_bytes("[1, 2]"), "not a JSON object"},
        {"header_leading_space", st_bytes(" {}"), "not a JSON object"},
        {"json_truncated", st_bytes(R"({"t": {"dtype")"), "parse error at header byte"},
        {"json_trailing_garbage", st_bytes("{} x"), "parse error at header byte"},
        {"json_number_overflow", st_bytes(R"({"t":1e999})"), "not valid JSON"},
        {"json_nesting_too_deep", st_bytes(R"({"t":)" + std::string(200, '[') + std::string(200, ']') + "}"),
         "nests more than 128 levels deep"},
        {"entry_not_object", one("[1,2]"), "entry 't' is not an object"},
        {"dtype_missing", one(R"({"shape":[1],"data_offsets":[0,4]})"), "tensor 't' has no \"dtype\""},
        {"dtype_not_string", one(R"({"dtype":7,"shape":[1],"data_offsets":[0,4]})"),
         "\"dtype\" is not a string"},
        {"dtype_unknown", one(R"({"dtype":"F33","shape":[1],"data_offsets":[0,4]})"),
         "unknown dtype \"F33\""},
        {"dtype_f8", one(R"({"dtype":"F8_E4M3","shape":[4],"data_offsets":[0,4]})"),
         "tensor 't': unsupported dtype F8_E4M3"},
        {"dtype_u16", one(R"({"dtype":"U16","shape":[2],"data_offsets":[0,4]})"),
         "tensor 't': unsupported dtype U16"},
        {"dtype_u32", one(R"({"dtype":"U32","shape":[1],"data_offsets":[0,4]})"),
         "tensor 't': unsupported dtype U32"},
        {"dtype_u64", one(R"({"dtype":"U64","shape":[1],"data_offsets":[0,8]})", std::string(8, '\0')),
         "tensor 't': unsupported dtype U64"},
        {"shape_missing", one(R"({"dtype":"F32","data_offsets":[0,4]})"), "tensor 't' has no \"shape\""},
        {"shape_not_array", one(R"({"dtype":"F32","shape":4,"data_offsets":[0,4]})"),
         "\"shape\" is not an array"},
        {"shape_negative", one(R"({"dtype":"F32","shape":[-1],"data_offsets":[0,4]})"), "is negative"},
        {"shape_fraction", one(R"({"dtype":"F32","shape":[1.5],"data_offsets":[0,4]})"), "is not an integer"},
        {"shape_float_integral", one(R"({"dtype":"F32","shape":[1.0],"data_offsets":[0,4]})"),
         "is not an integer"},
        {"shape_string", one(R"({"dtype":"F32","shape":["1"],"data_offsets":[0,4]})"), "is not an integer"},
        {"shape_numel_overflow",
         one(R"({"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,4]})"), "overflows"},
        {"shape_bytes_overflow", one(R"({"dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,4]})"),
         "overflows"},
        {"shape_past_int64", one(R"({"dtype":"U8","shape":[18446744073709551615],"data_offsets":[0,4]})"),
         "overflows"},
        {"shape_huge_but_empty",
         one(R"({"dtype":"U8","shape":[0,4294967296,4294967296],"data_offsets":[0,0]})", ""), "overflows"},
        {"offsets_missing", one(R"({"dtype":"F32","shape":[1]})"), "tensor 't' has no \"data_offsets\""},
        {"offsets_one_number", one(R"({"dtype":"F32","shape":[1],"data_offsets":[4]})"),
         "is not [begin, end]"},
        {"offsets_three_numbers", one(R"({"dtype":"F32","shape":[1],"data_offsets":[0,4,4]})"),
         "is not [begin, end]"},
        {"offsets_negative", one(R"({"dtype":"F32","shape":[1],"data_offsets":[-4,0]})"),
         "is not [begin, end]"},
        {"offsets_string", one(R"({"dtype":"F32","shape":[1],"data_offsets":[0,"4"]})"),
         "is not [begin, end]"},
        {"offsets_object", one(R"({"dtype":"F32","shape":[1],"data_offsets":{"begin":0}})"),
         "is not [begin, end]"},
        {"offsets_reversed", one(R"({"dtype":"F32","shape":[0],"data_offsets":[4,0]})"), "has begin > end"},
        {"offsets_past_buffer", one(R"({"dtype":"F32","shape":[2],"data_offsets":[0,8]})"),
         "ends at byte 8, past the end of the data buffer (4 bytes)"},
        {"offsets_size_mismatch", one(R"({"dtype":"F32","shape":[2],"data_offsets":[0,4]})"),
         "hold 4 bytes but shape (2,) of F32 needs 8 bytes"},
        {"tensors_overlap",
         st_bytes(
             R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
             std::string(12, '\0')),
         "tensor 'b' at bytes [4, 12) overlaps tensor 'a'"},
        {"tensors_same_range",
         st_bytes(
             R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"I32","shape":[1],"data_offsets":[0,4]}})",
             std::string(4, '\0')),
         "overlaps"},
        {"hole_at_start", one(R"({"dtype":"F32","shape":[1],"data_offsets":[4,8]})", std::string(8, '\0')),
         "hole in the data buffer: bytes [0, 4)"},
        {"hole_between",
         st_bytes(
             R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
             std::string(12, '\0')),
         "hole in the data buffer: bytes [4, 8) before tensor 'b'"},
        {"trailing_bytes", one(kGood, std::string(6, '\0')), "bytes [4, 6) after the last tensor"},
        {"data_without_tensors", st_bytes("{}", "x"), "after the last tensor"},
        {"duplicate_name", st_bytes(R"({"t":)" + kGood + R"(,"t":)" + kGood + "}", std::string(4, '\0')),
         "duplicate tensor name 't'"},
        {"duplicate_key_in_entry", one(R"({"dtype":"F32","dtype":"I32","shape":[1],"data_offsets":[0,4]})"),
         "duplicate key \"dtype\" inside entry 't'"},
        {"metadata_not_object", st_bytes(R"({"__metadata__":["a"]})"),
         "__metadata__ is not an object of strings"},
        {"metadata_null", st_bytes(R"({"__metadata__":null})"), "__metadata__ is not an object of strings"},
        {"metadata_value_number", st_bytes(R"({"__metadata__":{"k":1}})"), "value of 'k' is 1"},
        {"metadata_duplicate_key", st_bytes(R"({"__metadata__":{"k":"a","k":"b"}})"), "duplicate key \"k\""},
    };
}

class SafetensorsMalformed : public testing::TestWithParam<Malformed> {};

}  // namespace

TEST_P(SafetensorsMalformed, IsRejectedWithAClearError) {
    expect_open_error(GetParam().bytes, GetParam().phrase);
}

INSTANTIATE_TEST_SUITE_P(Safetensors, SafetensorsMalformed, testing::ValuesIn(malformed_cases()),
                         [](const testing::TestParamInfo<Malformed>& info) {
                             return std::string(info.param.name);
                         });

TEST(SafetensorsRead, MissingFileAndDirectory) {
    std::string path = temp_path("missing");
    try {
        SafetensorsFile::open(path);
        ADD_FAILURE();
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(path + ": cannot open"), std::string::npos) << e.what();
    }
    try {
        SafetensorsFile::open(testing::TempDir());
        ADD_FAILURE();
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("not a regular file"), std::string::npos) << e.what();
    }
}

TEST(SafetensorsRead, ParseFromMemoryNamesTheSource) {
    std::string bytes = one(R"({"dtype":"F32","shape":[2],"data_offsets":[0,4]})");
    try {
        parse_safetensors(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "in-memory.st");
        ADD_FAILURE();
    } catch (const Error& e) {
        EXPECT_EQ(std::string(e.what()).rfind("in-memory.st: tensor 't'", 0), 0u) << e.what();
    }
    std::string good = one(kGood);
    SafetensorsHeader h =
        parse_safetensors(reinterpret_cast<const uint8_t*>(good.data()), good.size(), "mem");
    ASSERT_EQ(h.entries.size(), 1u);
    EXPECT_EQ(h.data_start, good.size() - 4);
    EXPECT_EQ(h.entries[0].dtype, DType::F32);
}

// Cross-check with the reference implementation when python3 has it. BF16 is left out: numpy has
// no bfloat16, so safetensors.numpy cannot load it.
TEST(SafetensorsPython, CrossCheckWithReferenceImplementation) {
    if (std::system("python3 -c 'import safetensors, numpy' >/dev/null 2>&1") != 0) {
        GTEST_SKIP() << "python3 with the safetensors and numpy packages is not available "
                        "(pip install safetensors numpy) - cross-check skipped";
    }
    std::string ours = temp_path("ours");
    std::string theirs = temp_path("theirs");
    std::string script = temp_path("check") + ".py";
    Tensor boolean = Tensor::empty({3}, DType::BOOL);
    const uint8_t flags[] = {1, 0, 1};
    std::memcpy(boolean.raw(), flags, 3);
    save_safetensors(ours,
                     {{"u8", tensor_of<uint8_t>({1, 2, 3}, {3})},  // makes the next ones unaligned
                      {"f32", tensor_of<float>({0, 1, 2, 3, 4, 5}, {2, 3})},
                      {"f64", tensor_of<double>({0.1, -2}, {2})},
                      {"f16", u16_tensor(DType::F16, {0x3c00, 0xc000}, {2})},
                      {"i64", tensor_of<int64_t>({INT64_MIN, 7}, {2})},
                      {"i32", tensor_of<int32_t>({-5}, {1, 1})},
                      {"i16", tensor_of<int16_t>({-300, 300}, {2})},
                      {"i8", tensor_of<int8_t>({-1}, {1})},
                      {"bool", boolean},
                      {"scalar", tensor_of<float>({9.5f}, {})},
                      {"empty", Tensor::empty({0, 4}, DType::F32)}},
                     {{"format", "np"}, {"note", "from mslm"}});
    write_file(script, R"PY(
import sys, json, numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file
ours, theirs = sys.argv[1], sys.argv[2]
t = load_file(ours)
want = {
    "u8": np.array([1, 2, 3], np.uint8), "f32": np.arange(6, dtype=np.float32).reshape(2, 3),
    "f64": np.array([0.1, -2]), "f16": np.array([1, -2], np.float16),
    "i64": np.array([np.iinfo(np.int64).min, 7], np.int64), "i32": np.array([[-5]], np.int32),
    "i16": np.array([-300, 300], np.int16), "i8": np.array([-1], np.int8),
    "bool": np.array([True, False, True]), "scalar": np.array(9.5, np.float32),
    "empty": np.zeros((0, 4), np.float32)}
assert set(t) == set(want), sorted(t)
for k, v in want.items():
    assert t[k].dtype == v.dtype and t[k].shape == v.shape and np.array_equal(t[k], v), (k, t[k], v)
with safe_open(ours, "np") as f:
    assert f.metadata() == {"format": "np", "note": "from mslm"}, f.metadata()
save_file({"a": np.arange(12, dtype=np.float32).reshape(3, 4), "h": np.array([0.5, 2], np.float16),
           "d": np.array([1.25], np.float64), "q": np.array([-9, 9], np.int64),
           "b": np.array([False, True]), "s": np.array(3, np.int16), "e": np.zeros((2, 0), np.uint8),
           "odd": np.array([1, 2, 3], np.int8)}, theirs, metadata={"who": "python"})
)PY");
    std::string cmd = fmt::format("python3 '{}' '{}' '{}'", script, ours, theirs);
    ASSERT_EQ(std::system(cmd.c_str()), 0) << "the reference implementation rejected our file: " << cmd;

    SafetensorsFile f = SafetensorsFile::open(theirs);
    EXPECT_EQ(f.metadata(), (std::map<std::string, std::string>{{"who", "python"}}));
    EXPECT_EQ(f.names().size(), 8u);
    EXPECT_EQ(f.get("a").shape(), (Shape{3, 4}));
    EXPECT_EQ(f.get_f32("a").to_float_vector(), (std::vector<float>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}));
    EXPECT_EQ(f.get_f32("h").to_float_vector(), (std::vector<float>{0.5f, 2.0f}));
    EXPECT_EQ(f.get_f32("d").to_float_vector(), (std::vector<float>{1.25f}));
    EXPECT_EQ(f.get("q").dtype(), DType::I64);
    EXPECT_EQ(bytes_of(f.bytes("q")), bytes_of(tensor_of<int64_t>({-9, 9}, {2})));
    EXPECT_EQ(f.get("b").dtype(), DType::BOOL);
    EXPECT_EQ(bytes_of(f.bytes("b")), std::string("\x00\x01", 2));
    EXPECT_EQ(f.get("s").ndim(), 0);
    EXPECT_EQ(bytes_of(f.bytes("s")), bytes_of(tensor_of<int16_t>({3}, {})));
    EXPECT_EQ(f.get("e").shape(), (Shape{2, 0}));
    EXPECT_EQ(bytes_of(f.bytes("odd")), std::string("\x01\x02\x03", 3));
    for (const auto& p : {ours, theirs, script}) std::filesystem::remove(p);
}
