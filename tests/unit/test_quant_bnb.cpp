// bitsandbytes NF4 / FP4 / double quant / int8 against fixtures made by bitsandbytes itself
// (tests/parity/make_bnb_fixtures.py), bit for bit, plus round-trip bounds and edge cases.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <sstream>

#include "core/error.h"
#include "core/safetensors.h"
#include "quant/bnb.h"

using namespace mslm;
using namespace mslm::quant;

namespace {

const SafetensorsFile& fixture() {
    static const SafetensorsFile f =
        SafetensorsFile::open(std::string(MSLM_FIXTURE_DIR) + "/bnb/bnb.safetensors");
    return f;
}

std::vector<float> floats(const std::string& name) { return fixture().get(name).to_float_vector(); }

template <typename T>
std::vector<T> raw(const std::string& name) {
    Tensor t = fixture().get(name);
    std::vector<T> v(static_cast<size_t>(t.numel()));
    std::memcpy(v.data(), t.data<T>(), v.size() * sizeof(T));
    return v;
}

uint32_t bits(float v) {
    uint32_t b;
    std::memcpy(&b, &v, 4);
    return b;
}

// Bit-for-bit equality, NaN payloads aside, -0 distinct from +0 unless zero_sign_free.
void expect_same_bits(const std::vector<float>& ours, const std::vector<float>& ref, const std::string& what,
                      bool zero_sign_free = false) {
    ASSERT_EQ(ours.size(), ref.size()) << what;
    for (size_t i = 0; i < ours.size(); ++i) {
        if (std::isnan(ref[i])) {
            EXPECT_TRUE(std::isnan(ours[i])) << what << " [" << i << "]";
            continue;
        }
        if (zero_sign_free && ref[i] == 0.0f) {
            EXPECT_EQ(ours[i], 0.0f) << what << " [" << i << "]";
            continue;
        }
        EXPECT_EQ(bits(ours[i]), bits(ref[i])) << what << " [" << i << "]: " << ours[i] << " vs " << ref[i];
    }
}

struct Case {
    std::string name;
    Bnb4Type type;
    int64_t blocksize;
    bool nested;
};

std::vector<Case> cases() {
    std::string meta = fixture().metadata().at("cases");
    meta = meta.substr(0, meta.find(';'));
    std::vector<Case> out;
    std::stringstream ss(meta);
    for (std::string item; std::getline(ss, item, ',');) {
        std::stringstream is(item);
        std::string name, type, bs, nested;
        std::getline(is, name, ':');
        std::getline(is, type, ':');
        std::getline(is, bs, ':');
        std::getline(is, nested, ':');
        out.push_back({name, type == "nf4" ? Bnb4Type::NF4 : Bnb4Type::FP4, std::stoll(bs), nested == "1"});
    }
    return out;
}

}  // namespace

TEST(QuantBnb, CodeBooksMatchBitsandbytes) {
    const auto& nf4 = bnb4_code(Bnb4Type::NF4);
    EXPECT_EQ(nf4[0], -1.0f);
    EXPECT_EQ(nf4[7], 0.0f);
    EXPECT_EQ(nf4[15], 1.0f);
    const auto& fp4 = bnb4_code(Bnb4Type::FP4);
    EXPECT_EQ(fp4[3], 1.0f);       // 12/12
    EXPECT_EQ(fp4[2], 8.0f / 12);  // not OCP E2M1, whose 0b0010 is 1.0
    // bitsandbytes writes code 8 as `-0`, a Python int: +0.0 in the code book it saves as quant_map.
    EXPECT_TRUE(!std::signbit(fp4[8]) && fp4[8] == 0.0f);
    for (int i = 0; i < 8; ++i) EXPECT_EQ(fp4[static_cast<size_t>(i + 8)], -fp4[static_cast<size_t>(i)]);
}

TEST(QuantBnb, DynamicMapMatchesCreateDynamicMap) {
    const std::vector<float> ref = floats("dynamic_map");
    const auto& ours = bnb_dynamic_map();
    expect_same_bits(std::vector<float>(ours.begin(), ours.end()), ref, "dynamic_map");
}

// Every case of the fixture: the packed codes, absmax, the double-quantized absmax (offset, codes,
// nested absmax) and the dequantized values, bit for bit.
TEST(QuantBnb, FourBitParity) {
    const std::vector<Case> all = cases();
    ASSERT_GE(all.size(), 10u);
    for (const Case& c : all) {
        SCOPED_TRACE(c.name);
        const std::vector<float> x = floats("x." + c.name);
        Bnb4Quantized q = bnb4_quantize(x, c.type, c.blocksize);
        EXPECT_EQ(q.packed, raw<uint8_t>("q." + c.name));
        expect_same_bits(q.absmax, floats("absmax." + c.name), "absmax");
        std::vector<float> absmax = q.absmax;
        if (c.nested) {
            DoubleQuantized d = double_quantize_absmax(q.absmax);
            EXPECT_EQ(bits(d.offset), bits(floats("offset." + c.name)[0])) << d.offset;
            EXPECT_EQ(d.q, raw<uint8_t>("nested_q." + c.name));
            expect_same_bits(d.nested_absmax, floats("nested_absmax." + c.name), "nested_absmax");
            absmax = double_dequantize_absmax(d);
        }
        std::vector<float> dq(x.size());
        bnb4_dequantize(q.packed, absmax, c.type, c.blocksize, dq);
        // The sign of a dequantized zero is free: bitsandbytes disagrees with itself on FP4's code 8
        // — the code book it builds and saves as quant_map holds +0 there, while some of its CPU
        // kernels decode the sign bit and return −0 (this fixture's blocksize-128 case) — and no
        // product can tell them apart.
        expect_same_bits(dq, floats("dq." + c.name), "dequantized", true);
    }
}

TEST(QuantBnb, Int8RowsParity) {
    for (const auto& [name, rows, cols] : {std::tuple{"int8_9x33", 9, 33}, std::tuple{"int8_4x256", 4, 256}}) {
        SCOPED_TRACE(name);
        Int8Rows q = int8_quantize_rows(floats(std::string("x.") + name), rows, cols);
        EXPECT_EQ(q.q, raw<int8_t>(std::string("q.") + name));
        expect_same_bits(q.absmax, floats(std::string("absmax.") + name), "absmax");
    }
}

// NF4 and FP4 pick the nearest code value, so |x - dq| <= absmax · (the largest half-gap of the
// sorted code book): NF4 0.1519 (between −1 and −0.6962), FP4 1/6 (between ±2/3 and ±1).
TEST(QuantBnb, RoundTripErrorBound) {
    std::vector<float> x(1001);
    for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.37f * static_cast<float>(i)) * (1.0f + static_cast<float>(i % 7));
    auto half_gap = [](Bnb4Type type) {
        std::array<float, 16> c = bnb4_code(type);
        std::sort(c.begin(), c.end());
        float g = 0;
        for (size_t i = 0; i + 1 < c.size(); ++i) g = std::max(g, (c[i + 1] - c[i]) / 2);
        return g;
    };
    EXPECT_NEAR(half_gap(Bnb4Type::NF4), (1.0f - 0.6961928009986877f) / 2, 1e-7f);
    EXPECT_NEAR(half_gap(Bnb4Type::FP4), 1.0f / 6, 1e-7f);
    for (Bnb4Type type : {Bnb4Type::NF4, Bnb4Type::FP4}) {
        const float gap = half_gap(type);
        for (int64_t bs : {32, 64, 4096}) {
            Bnb4Quantized q = bnb4_quantize(x, type, bs);
            std::vector<float> dq(x.size());
            bnb4_dequantize(q.packed, q.absmax, type, bs, dq);
            for (size_t i = 0; i < x.size(); ++i) {
                const float am = q.absmax[i / static_cast<size_t>(bs)];
                EXPECT_LE(std::fabs(x[i] - dq[i]), am * gap * (1 + 1e-6f)) << i;
            }
        }
    }
}

TEST(QuantBnb, EdgeCases) {
    // All-zero full block: absmax 0 (unclamped), every code is the code of 0, dequant 0.
    std::vector<float> zeros(64, 0.0f);
    zeros[5] = -0.0f;  // -0 quantizes as +0 (bucketize: -0 <= midpoint 0)
    Bnb4Quantized q = bnb4_quantize(zeros, Bnb4Type::NF4);
    EXPECT_EQ(q.absmax[0], 0.0f);
    for (uint8_t b : q.packed) EXPECT_EQ(b, 0x77);
    Bnb4Quantized f = bnb4_quantize(zeros, Bnb4Type::FP4);
    for (uint8_t b : f.packed) EXPECT_EQ(b, 0x00);
    // A partial all-zero block stores the clamp 1e-38, as the reference does.
    Bnb4Quantized p = bnb4_quantize(std::vector<float>(3, 0.0f), Bnb4Type::NF4);
    EXPECT_EQ(p.absmax[0], 1e-38f);
    EXPECT_EQ(p.packed, (std::vector<uint8_t>{0x77, 0x77}));  // odd count: padding is code(0)
    // NaN policy (bitsandbytes'): a NaN makes its block's absmax NaN; every value of that block
    // then takes the top code (NF4 15) and dequantizes to NaN. Other blocks are untouched.
    std::vector<float> x(128, 0.5f);
    x[3] = std::numeric_limits<float>::quiet_NaN();
    Bnb4Quantized n = bnb4_quantize(x, Bnb4Type::NF4);
    EXPECT_TRUE(std::isnan(n.absmax[0]));
    EXPECT_EQ(n.absmax[1], 0.5f);
    EXPECT_EQ(n.packed[0], 0xFF);
    EXPECT_EQ(n.packed[40], 0xFF);  // second block, 0.5/0.5 = 1 -> code 15
    std::vector<float> dq(128);
    bnb4_dequantize(n.packed, n.absmax, Bnb4Type::NF4, 64, dq);
    EXPECT_TRUE(std::isnan(dq[0]));
    EXPECT_EQ(dq[64], 0.5f);
}

TEST(QuantBnb, BlocksizeChecked) {
    std::vector<float> x(100, 1.0f);
    for (int64_t bs : {0, 16, 48, 100, 8192}) EXPECT_THROW(bnb4_quantize(x, Bnb4Type::NF4, bs), Error) << bs;
    for (int64_t bs : {32, 64, 128, 256, 512, 1024, 2048, 4096}) EXPECT_NO_THROW(bnb4_quantize(x, Bnb4Type::NF4, bs));
}

TEST(QuantBnb, Int8EdgeCasesAndRoundTrip) {
    // Row 0 zeros, row 1 a NaN, row 2 ordinary: |x - dq| <= absmax/254 (half a step) plus rounding.
    std::vector<float> x = {0, 0, -0.0f, 0, 1, std::nanf(""), 2, 3, 0.1f, -0.7f, 0.35f, 0.5f};
    Int8Rows q = int8_quantize_rows(x, 3, 4);
    EXPECT_EQ(q.absmax[0], 0.0f);
    EXPECT_TRUE(std::isnan(q.absmax[1]));
    for (int i = 0; i < 8; ++i) EXPECT_EQ(q.q[static_cast<size_t>(i)], 0);
    EXPECT_EQ(q.q[9], -127);
    std::vector<float> dq(12);
    int8_dequantize_rows(q, 3, 4, dq);
    for (size_t i = 8; i < 12; ++i) EXPECT_LE(std::fabs(dq[i] - x[i]), 0.7f / 254 * (1 + 1e-5f)) << i;
}
