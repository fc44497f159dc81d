// GGUF v3 reader and writer (export/gguf.h): round trips of every value type, ggml's Q8_0 / Q4_0
// bit for bit (fixture from the gguf package, tests/parity/make_gguf_fixtures.py), and one test per
// kind of bad file, each expecting one line that names the file and the problem.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/safetensors.h"
#include "export/gguf.h"

namespace mslm {
namespace {

using gguf::TensorType;
using gguf::Value;
using gguf::ValueType;

// ---------------------------------------------------------------------------------------------
// A hand-built file, so that each bad-file test changes exactly one field.

struct Bytes {
    std::vector<uint8_t> b;
    Bytes& u32(uint32_t v) { return raw(&v, 4); }
    Bytes& u64(uint64_t v) { return raw(&v, 8); }
    Bytes& str(const std::string& s) {
        u64(s.size());
        return raw(s.data(), s.size());
    }
    Bytes& raw(const void* p, size_t n) {
        const auto* c = static_cast<const uint8_t*>(p);
        b.insert(b.end(), c, c + n);
        return *this;
    }
};

struct TSpec {
    std::string name;
    std::vector<uint64_t> ne;
    uint32_t type;
    uint64_t offset;
};

// Valid by default: one string KV, an F32 tensor "a" (4 x 2, 32 bytes at 0) and a Q8_0 tensor "b"
// (32 values, 34 bytes at 32); data section of 66 bytes.
struct Spec {
    std::string magic = "GGUF";
    uint32_t version = 3;
    std::optional<uint64_t> n_tensors, n_kv;
    std::vector<std::function<void(Bytes&)>> kvs = {
        [](Bytes& b) { b.str("general.architecture").u32(8).str("test"); }};
    std::vector<TSpec> tensors = {{"a", {4, 2}, 0, 0}, {"b", {32}, 8, 32}};
    uint32_t alignment = 32;
    uint64_t data_bytes = 66;
};

std::vector<uint8_t> build(const Spec& s) {
    Bytes b;
    b.raw(s.magic.data(), 4).u32(s.version);
    b.u64(s.n_tensors.value_or(s.tensors.size())).u64(s.n_kv.value_or(s.kvs.size()));
    for (const auto& kv : s.kvs) kv(b);
    for (const auto& t : s.tensors) {
        b.str(t.name).u32(static_cast<uint32_t>(t.ne.size()));
        for (uint64_t d : t.ne) b.u64(d);
        b.u32(t.type).u64(t.offset);
    }
    b.b.resize((b.b.size() + s.alignment - 1) / s.alignment * s.alignment, 0);
    b.b.resize(b.b.size() + s.data_bytes, 0);
    return b.b;
}

// Parsing must fail with one line "bad.gguf: ..." that contains `needle`.
void expect_rejected(const std::vector<uint8_t>& bytes, const std::string& needle) {
    try {
        gguf::parse(bytes.data(), bytes.size(), "bad.gguf");
        ADD_FAILURE() << "accepted a file that should fail with: " << needle;
    } catch (const Error& e) {
        const std::string m = e.what();
        EXPECT_EQ(m.rfind("bad.gguf: ", 0), 0u) << m;
        EXPECT_NE(m.find(needle), std::string::npos) << m;
        EXPECT_EQ(m.find('\n'), std::string::npos) << m;
    }
}

TEST(GgufReader, AcceptsTheValidBaseFile) {
    const auto bytes = build(Spec{});
    const gguf::Header h = gguf::parse(bytes.data(), bytes.size(), "ok.gguf");
    ASSERT_EQ(h.tensors.size(), 2u);
    EXPECT_EQ(h.tensors[0].ne, (std::vector<int64_t>{4, 2}));
    EXPECT_EQ(h.tensors[0].shape(), (Shape{2, 4}));
    EXPECT_EQ(h.tensors[1].nbytes, 34u);
    EXPECT_EQ(h.data_start % 32, 0u);
    EXPECT_EQ(h.data_start + 66, bytes.size());
}

// Found by fuzz_gguf: a dimension of 0 is valid (ggml accepts it) and reads as no values.
TEST(GgufReader, AcceptsTensorsWithAZeroDimension) {
    Spec s;
    s.tensors[0].ne = {4, 0};
    const auto bytes = build(s);
    auto storage =
        std::make_shared<Storage>(const_cast<uint8_t*>(bytes.data()), bytes.size(), Device::CPU, nullptr);
    const gguf::File f = gguf::File::from_bytes(storage, "zero.gguf");
    EXPECT_EQ(f.tensors()[0].nbytes, 0u);
    EXPECT_TRUE(f.to_f32(f.tensors()[0]).empty());
    EXPECT_TRUE(gguf::encode(TensorType::F32, nullptr, 0, 4).empty());
}

TEST(GgufReader, RejectsEveryTruncation) {
    const auto bytes = build(Spec{});
    for (size_t n = 0; n < bytes.size(); ++n) {
        const std::vector<uint8_t> cut(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(n));
        SCOPED_TRACE(n);
        // Inside the header the reader says "truncated", inside the data section that a tensor ends
        // past the end of the file: either way one line naming the file.
        expect_rejected(cut, "");
    }
    // Header 24 bytes, the KV 44, the two tensor infos 41 + 33: cut inside the last offset.
    const std::vector<uint8_t> header_cut(bytes.begin(), bytes.begin() + 24 + 44 + 41 + 33 - 4);
    expect_rejected(header_cut, "truncated: a tensor offset needs 8 bytes at offset 134");
}

TEST(GgufReader, RejectsBadMagicAndVersion) {
    Spec s;
    s.magic = "GGML";
    expect_rejected(build(s), "not a GGUF file");
    s = Spec{};
    s.version = 2;
    expect_rejected(build(s), "GGUF version 2 is not supported");
}

TEST(GgufReader, RejectsOffsetsPastTheEnd) {
    Spec s;
    s.tensors[1].offset = 64;
    expect_rejected(build(s),
                    "tensor 'b' (Q8_0 [32]: 34 bytes at data offset 64) ends past the end of the file");
}

TEST(GgufReader, RejectsSizesInconsistentWithShapes) {
    // "a" declared 4 x 4 needs 64 bytes, so it runs into "b" at 32.
    Spec s;
    s.tensors[0].ne = {4, 4};
    expect_rejected(build(s), "tensor 'b' at data offset 32 overlaps tensor 'a'");
    // The last tensor's shape asks for more bytes than the file holds.
    s = Spec{};
    s.tensors[1].ne = {64};
    expect_rejected(build(s), "tensor 'b' (Q8_0 [64]: 68 bytes at data offset 32) ends past the end");
}

TEST(GgufReader, RejectsAbsurdDimensionsAndDims) {
    Spec s;
    s.tensors[0].ne = {uint64_t{1} << 63, 1};
    expect_rejected(build(s), "tensor 'a' has an absurd dimension");
    s.tensors[0].ne = {uint64_t{1} << 32, uint64_t{1} << 32};
    expect_rejected(build(s), "tensor 'a' has an absurd dimension 4294967296");
    s.tensors[0].ne = {};
    expect_rejected(build(s), "tensor 'a' has 0 dims");
    s.tensors[0].ne = {1, 1, 1, 1, 8};
    expect_rejected(build(s), "tensor 'a' has 5 dims");
}

TEST(GgufReader, RejectsAbsurdCountsWithoutAllocating) {
    Spec s;
    s.n_tensors = uint64_t{1} << 60;
    expect_rejected(build(s), "header claims 1152921504606846976 tensors");
    s = Spec{};
    s.n_kv = std::numeric_limits<uint64_t>::max();
    expect_rejected(build(s), "key-value pairs, more than the");
    s = Spec{};
    s.kvs = {[](Bytes& b) { b.str("big").u32(9).u32(4).u64(uint64_t{1} << 50); }};
    expect_rejected(build(s), "key 'big': array of 1125899906842624 UINT32 elements cannot fit");
    s.kvs = {[](Bytes& b) { b.str("names").u32(9).u32(8).u64(uint64_t{1} << 40); }};
    expect_rejected(build(s), "key 'names': array of 1099511627776 STRING elements cannot fit");
}

TEST(GgufReader, RejectsAbsurdStringLengths) {
    Spec s;
    s.kvs = {[](Bytes& b) { b.u64(uint64_t{1} << 60).raw("k", 1); }};
    expect_rejected(build(s), "truncated: a key of 1152921504606846976 bytes");
    s.kvs = {[](Bytes& b) { b.str("k").u32(8).u64(std::numeric_limits<uint64_t>::max()); }};
    expect_rejected(build(s), "truncated: a string value of 18446744073709551615 bytes");
    s = Spec{};
    s.tensors[0].name = std::string(65, 'n');
    expect_rejected(build(s), "tensor name of 65 bytes");
}

TEST(GgufReader, RejectsUnknownTypes) {
    Spec s;
    s.kvs = {[](Bytes& b) { b.str("k").u32(13).u32(0); }};
    expect_rejected(build(s), "key 'k': unknown value type 13");
    s.kvs = {[](Bytes& b) { b.str("k").u32(9).u32(99).u64(0); }};
    expect_rejected(build(s), "key 'k': unknown value type 99");
    s.kvs = {[](Bytes& b) { b.str("k").u32(9).u32(9).u64(1); }};
    expect_rejected(build(s), "key 'k': arrays of arrays are not supported");
    s.kvs = {[](Bytes& b) { b.str("flag").u32(7).raw("\x02", 1); }};
    expect_rejected(build(s), "key 'flag': bool byte 2");
    s = Spec{};
    s.tensors[1].type = 12;  // Q4_K: a real ggml type that we do not read
    expect_rejected(build(s), "tensor 'b' has ggml type 12, which is unknown or not supported");
    s.tensors[1].type = 1000;
    expect_rejected(build(s), "tensor 'b' has ggml type 1000");
}

TEST(GgufReader, RejectsMisalignedOffsetsAndBadAlignment) {
    Spec s;
    s.tensors[1].offset = 33;
    expect_rejected(build(s), "tensor 'b' has offset 33, not a multiple of the alignment 32");
    s = Spec{};
    s.kvs.push_back([](Bytes& b) { b.str("general.alignment").u32(4).u32(48); });
    expect_rejected(build(s), "general.alignment 48 is not a power of two");
    s.kvs.back() = [](Bytes& b) { b.str("general.alignment").u32(10).u64(32); };
    expect_rejected(build(s), "general.alignment has type UINT64, expected UINT32");
    // A larger alignment makes offset 32 misaligned.
    s.kvs.back() = [](Bytes& b) { b.str("general.alignment").u32(4).u32(64); };
    s.alignment = 64;
    expect_rejected(build(s), "tensor 'b' has offset 32, not a multiple of the alignment 64");
}

TEST(GgufReader, RejectsBlockRowsThatAreNotWhole) {
    Spec s;
    s.tensors[1].ne = {16, 2};
    expect_rejected(build(s),
                    "tensor 'b' of type Q8_0 has rows of 16 values, not a multiple of the block size 32");
}

TEST(GgufReader, RejectsDuplicates) {
    Spec s;
    s.tensors[1].name = "a";
    expect_rejected(build(s), "duplicate tensor name 'a'");
    s = Spec{};
    s.kvs.push_back(s.kvs[0]);
    expect_rejected(build(s), "duplicate key 'general.architecture'");
}

TEST(GgufReader, OpenNamesTheMissingFile) {
    try {
        gguf::File::open("/nonexistent/model.gguf");
        FAIL();
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("/nonexistent/model.gguf: cannot open"), std::string::npos);
    }
}

// ---------------------------------------------------------------------------------------------

TEST(GgufWriter, RoundTripsEveryValueTypeAndAlignment) {
    gguf::Writer w;
    auto scalar = [](ValueType t, int64_t i) { return Value{t, t, {i}, {}, {}}; };
    w.add("u8", scalar(ValueType::U8, 250));
    w.add("i8", scalar(ValueType::I8, -5));
    w.add("u16", scalar(ValueType::U16, 65000));
    w.add("i16", scalar(ValueType::I16, -32000));
    w.add("u32", Value::u32(4000000000u));
    w.add("i32", Value::i32(-2000000000));
    w.add("u64", Value::u64(std::numeric_limits<uint64_t>::max()));
    w.add("i64", scalar(ValueType::I64, std::numeric_limits<int64_t>::min()));
    w.add("f32", Value::f32(0.1f));
    w.add("f64", Value{ValueType::F64, ValueType::F64, {}, {0.1}, {}});
    w.add("bool", Value::boolean(true));
    w.add("str", Value::string("h\xc3\xa9llo"));
    w.add("arr_i32", Value::i32_array({1, -2, 3}));
    w.add("arr_f32", Value::f32_array({0.5f, -1.5f}));
    w.add("arr_str", Value::string_array({"a", "", "b c"}));
    w.add("arr_empty", Value::string_array({}));
    const std::vector<float> a = {1, 2, 3, 4, 5, 6};
    w.add_tensor("a", {3, 2}, TensorType::F32, gguf::encode(TensorType::F32, a.data(), 6, 3));
    std::vector<float> b(64);
    for (size_t i = 0; i < b.size(); ++i) b[i] = std::sin(static_cast<float>(i));
    w.add_tensor("b", {32, 2}, TensorType::Q4_0, gguf::encode(TensorType::Q4_0, b.data(), 64, 32));
    w.add_tensor("c", {64}, TensorType::F16, gguf::encode(TensorType::F16, b.data(), 64, 64));
    EXPECT_THROW(w.add("u8", Value::u32(1)), Error);
    EXPECT_THROW(w.add_tensor("a", {1}, TensorType::F32, std::vector<uint8_t>(4)), Error);
    EXPECT_THROW(w.add_tensor("d", {2}, TensorType::F32, std::vector<uint8_t>(4)), Error);

    const auto bytes = w.serialize(64);
    auto storage =
        std::make_shared<Storage>(const_cast<uint8_t*>(bytes.data()), bytes.size(), Device::CPU, nullptr);
    const gguf::File f = gguf::File::from_bytes(storage, "rt.gguf");
    EXPECT_EQ(f.header().alignment, 64u);
    EXPECT_EQ(f.get_uint("general.alignment"), 64u);
    EXPECT_EQ(f.get_uint("u8"), 250u);
    EXPECT_EQ(f.find("i8")->ints[0], -5);
    EXPECT_EQ(f.get_uint("u16"), 65000u);
    EXPECT_EQ(f.find("i16")->ints[0], -32000);
    EXPECT_EQ(f.get_uint("u32"), 4000000000u);
    EXPECT_EQ(f.find("i32")->ints[0], -2000000000);
    EXPECT_EQ(f.get_uint("u64"), std::numeric_limits<uint64_t>::max());
    EXPECT_EQ(f.find("i64")->ints[0], std::numeric_limits<int64_t>::min());
    EXPECT_EQ(f.get_float("f32"), static_cast<double>(0.1f));
    EXPECT_EQ(f.get_float("f64"), 0.1);
    EXPECT_TRUE(f.get_bool("bool"));
    EXPECT_EQ(f.get_string("str"), "h\xc3\xa9llo");
    EXPECT_EQ(f.get_array("arr_i32", ValueType::I32).ints, (std::vector<int64_t>{1, -2, 3}));
    EXPECT_EQ(f.get_array("arr_f32", ValueType::F32).floats, (std::vector<double>{0.5, -1.5}));
    EXPECT_EQ(f.get_array("arr_str", ValueType::STRING).strings, (std::vector<std::string>{"a", "", "b c"}));
    EXPECT_EQ(f.get_array("arr_empty", ValueType::STRING).size(), 0u);
    EXPECT_THROW(f.get_string("u8"), Error);
    EXPECT_THROW(f.get_uint("missing"), Error);
    EXPECT_THROW(f.get_uint("i8"), Error);  // negative

    for (const auto& t : f.tensors()) EXPECT_EQ(t.offset % 64, 0u) << t.name;
    EXPECT_EQ(f.to_f32(*f.find_tensor("a")), a);
    const std::vector<float> c = f.to_f32(*f.find_tensor("c"));
    for (size_t i = 0; i < b.size(); ++i)
        EXPECT_NEAR(c[i], b[i], std::ldexp(1.0f, -11)) << i;  // fp16 half-ulp ≤ 2^-12 for |x| ≤ 1
}

// ---------------------------------------------------------------------------------------------

TEST(GgufQuant, MatchesGgmlReferenceQuantizersBitForBit) {
    const SafetensorsFile fx =
        SafetensorsFile::open(std::string(MSLM_FIXTURE_DIR) + "/gguf/quant.safetensors");
    const Tensor x = fx.get_f32("x");
    const int64_t n = x.numel();
    for (auto [type, key] : {std::pair{TensorType::Q8_0, "q8_0"}, std::pair{TensorType::Q4_0, "q4_0"}}) {
        SCOPED_TRACE(key);
        const std::vector<uint8_t> ours = gguf::encode(type, x.data<float>(), n, 32);
        const auto ref = fx.bytes(key);
        ASSERT_EQ(ours.size(), ref.size());
        for (size_t i = 0; i < ours.size(); ++i) ASSERT_EQ(ours[i], ref[i]) << "byte " << i;
    }
}

TEST(GgufQuant, Q4_0ScaleSignAndClamp) {
    // The value of largest magnitude sets d = m / -8: it decodes exactly, its opposite clamps to 7d.
    std::vector<float> x(32, 0.0f);
    x[3] = -8.0f;
    x[7] = 8.0f;  // same magnitude, later: the first one (negative) wins
    x[9] = 2.2f;
    std::vector<float> y(32);
    gguf::decode(TensorType::Q4_0, gguf::encode(TensorType::Q4_0, x.data(), 32, 32).data(), 32, y.data());
    EXPECT_EQ(y[3], -8.0f);
    EXPECT_EQ(y[7], 7.0f);
    EXPECT_EQ(y[9], 2.0f);
    EXPECT_EQ(y[0], 0.0f);
    // Largest magnitude positive: d is negative, the value decodes exactly.
    x[3] = -1.0f;
    gguf::decode(TensorType::Q4_0, gguf::encode(TensorType::Q4_0, x.data(), 32, 32).data(), 32, y.data());
    EXPECT_EQ(y[7], 8.0f);
    EXPECT_EQ(y[3], -1.0f);
}

TEST(GgufQuant, Q8_0RoundsHalfAwayFromZero) {
    std::vector<float> x(32, 0.0f);
    x[0] = 127.0f;  // d = 1
    x[1] = 2.5f;
    x[2] = -2.5f;
    x[3] = 0.49f;
    std::vector<float> y(32);
    gguf::decode(TensorType::Q8_0, gguf::encode(TensorType::Q8_0, x.data(), 32, 32).data(), 32, y.data());
    EXPECT_EQ(y[0], 127.0f);
    EXPECT_EQ(y[1], 3.0f);
    EXPECT_EQ(y[2], -3.0f);
    EXPECT_EQ(y[3], 0.0f);
}

}  // namespace
}  // namespace mslm
