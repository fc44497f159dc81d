// ops/packed_linear's decoding kernels (src/ops/cpu/packed_gemv.cpp, M < 16 rows of x) against
// packed_linear_reference on every path this CPU runs (AVX-512, AVX2, scalar), both formats, odd
// shapes, with and without bias; results independent of the thread count; and pack_weight itself
// (bf16 rounding, int8 scales, row sums and padding).
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "core/thread_pool.h"
#include "ops/cpu/packed_kernels.h"
#include "ops/packed_linear.h"
#include "packed_path_util.h"

namespace mslm::ops::detail {
// Test hook in packed_gemv.cpp: forces a kernel path ("scalar", "avx2", "avx512") as
// MSLM_PACKED_KERNEL does, throwing for one the CPU lacks; "" restores the configured choice.
void force_packed_gemv_kernel(const std::string& name);
}  // namespace mslm::ops::detail

using namespace mslm;
using namespace mslm::ops;

namespace {

std::vector<std::string> supported_paths() {
    return test::supported_packed_paths(detail::force_packed_gemv_kernel);
}

struct ForcedPath : test::ForcedPackedPath {
    explicit ForcedPath(const std::string& name) : test::ForcedPackedPath(detail::force_packed_gemv_kernel, name) {}
};

// n floats that end exactly at a page boundary, the next page inaccessible: a kernel reading past
// the end of a row of x (or writing past the end of y) faults instead of passing by luck.
class GuardedFloats {
public:
    explicit GuardedFloats(size_t n) : n_(n) {
        const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
        data_bytes_ = (n * sizeof(float) + page - 1) / page * page;
        map_bytes_ = data_bytes_ + page;
        void* p = mmap(nullptr, map_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        EXPECT_NE(p, MAP_FAILED);
        base_ = static_cast<char*>(p);
        EXPECT_EQ(mprotect(base_ + data_bytes_, page, PROT_NONE), 0);
    }
    ~GuardedFloats() { munmap(base_, map_bytes_); }
    GuardedFloats(const GuardedFloats&) = delete;
    GuardedFloats& operator=(const GuardedFloats&) = delete;

    float* data() { return reinterpret_cast<float*>(base_ + data_bytes_) - n_; }
    float& operator[](size_t i) { return data()[i]; }

private:
    size_t n_, data_bytes_, map_bytes_;
    char* base_;
};

std::vector<float> random_normal(size_t n, Rng& rng) {
    std::vector<float> v(n);
    for (auto& x : v) x = static_cast<float>(rng.normal());
    return v;
}

std::string describe(const std::string& path, const PackedWeight& W, int64_t M, bool bias) {
    return fmt::format("path {} {} out={} in={} M={} bias={}", path, weight_format_name(W.format), W.out,
                       W.in, M, bias);
}

// Runs the kernel of `path` and the reference on the same x (M, in) and checks every output:
//   INT8: bit for bit. Both quantize x the same way and the dot product is exact in int32, so both
//   evaluate the same float expression s_w · s_x · acc + b on the same values.
//   BF16: within an error bound. The kernels accumulate in fp32 with FMAs (each product exact inside
//   the FMA): a lane runs a chain of ceil(in / L) FMAs (L = 16 lanes on AVX-512, 8 on AVX2), the
//   lanes meet in log2(L) <= 3 (AVX2) or 4 (AVX-512) additions, and the bias in one more, so a term
//   passes through at most in/8 + 5 roundings (AVX2 counts more than AVX-512 for in >= 16), and
//   summation obeys |err| <= γ_k · Σ|terms| with γ_k = k·u / (1 − k·u), u = 2^-24, the terms being
//   the products and the bias. The reference sums in double (error <= in · 2^-53 · Σ, negligible)
//   and then rounds twice (to float, and adding the bias). In all:
//     |kernel − reference| <= 1.01 · (in/8 + 7) · u · (Σ_k |x_k w_k| + |b_n|),
//   i.e. c = 1/8 + 7/in in the form c · in · u · Σ|x_k w_k|: far below the effect of a wrong or
//   missing term (about Σ/in), which this test has to catch.
void check_against_reference(const std::string& path, const PackedWeight& W, const std::vector<float>& x_rows,
                             const float* b, int64_t M) {
    const size_t x_count = static_cast<size_t>(M * W.in), y_count = static_cast<size_t>(M * W.out);
    GuardedFloats x(x_count), y(y_count);
    std::memcpy(x.data(), x_rows.data(), x_count * sizeof(float));
    for (size_t i = 0; i < y_count; ++i) y[i] = std::numeric_limits<float>::quiet_NaN();
    std::vector<float> want(y_count);
    packed_linear_reference(want.data(), x.data(), W, b, M, false);
    {
        ForcedPath forced(path);
        packed_linear_forward(y.data(), x.data(), W, b, M);
    }
    const std::string what = describe(path, W, M, b != nullptr);
    const double u = std::ldexp(1.0, -24);
    for (int64_t m = 0; m < M; ++m) {
        for (int64_t n = 0; n < W.out; ++n) {
            const float got = y[m * W.out + n], ref = want[m * W.out + n];
            if (W.format == WeightFormat::Int8) {
                uint32_t got_bits, ref_bits;
                std::memcpy(&got_bits, &got, 4);
                std::memcpy(&ref_bits, &ref, 4);
                ASSERT_EQ(got_bits, ref_bits)
                    << what << " at " << m << "," << n << ": " << got << " vs " << ref;
                continue;
            }
            double mag = b ? std::fabs(b[n]) : 0.0;
            for (int64_t k = 0; k < W.in; ++k)
                mag +=
                    std::fabs(static_cast<double>(x[m * W.in + k]) * bf16_to_float(W.bf16()[n * W.ld + k]));
            const double bound = 1.01 * (static_cast<double>(W.in) / 8 + 7) * u * mag;
            ASSERT_NEAR(got, ref, bound) << what << " at " << m << "," << n;
        }
    }
}

TEST(PackedGemv, MatchesReferenceOnEveryPath) {
    const auto paths = supported_paths();
    Rng rng(7);
    for (int64_t in : {1, 17, 63, 64, 65, 200, 768, 1536})
        for (int64_t out : {1, 15, 17, 33, 100}) {
            const auto w = random_normal(static_cast<size_t>(out * in), rng);
            const auto bias = random_normal(static_cast<size_t>(out), rng);
            for (WeightFormat format : {WeightFormat::BF16, WeightFormat::Int8}) {
                const PackedWeight W = pack_weight(w.data(), out, in, format);
                for (int64_t M : {1, 2, 3, 7, 15}) {
                    const auto x = random_normal(static_cast<size_t>(M * in), rng);
                    for (const auto& path : paths)
                        for (const float* b : {static_cast<const float*>(nullptr), bias.data()}) {
                            check_against_reference(path, W, x, b, M);
                            if (HasFatalFailure()) return;
                        }
                }
            }
        }
}

// Every row count has its own instantiation (and block height) on each vector path.
TEST(PackedGemv, EveryRowCount) {
    const auto paths = supported_paths();
    Rng rng(8);
    const int64_t out = 37, in = 90;
    const auto w = random_normal(static_cast<size_t>(out * in), rng);
    const auto bias = random_normal(static_cast<size_t>(out), rng);
    for (WeightFormat format : {WeightFormat::BF16, WeightFormat::Int8}) {
        const PackedWeight W = pack_weight(w.data(), out, in, format);
        for (int64_t M = 1; M < kPackedGemmMinRows; ++M) {
            const auto x = random_normal(static_cast<size_t>(M * in), rng);
            for (const auto& path : paths) {
                check_against_reference(path, W, x, bias.data(), M);
                if (HasFatalFailure()) return;
            }
        }
    }
}

// A zero weight row (int8 scale 0) and a zero row of x (int8 activation scale 0): the output is
// exactly the bias there, on every path.
TEST(PackedGemv, ZeroWeightRowAndZeroInputRow) {
    const auto paths = supported_paths();
    Rng rng(9);
    const int64_t out = 21, in = 77, M = 3, zero_n = 5, zero_m = 1;
    auto w = random_normal(static_cast<size_t>(out * in), rng);
    std::fill(w.begin() + zero_n * in, w.begin() + (zero_n + 1) * in, 0.0f);
    auto x = random_normal(static_cast<size_t>(M * in), rng);
    std::fill(x.begin() + zero_m * in, x.begin() + (zero_m + 1) * in, 0.0f);
    const auto bias = random_normal(static_cast<size_t>(out), rng);
    for (WeightFormat format : {WeightFormat::BF16, WeightFormat::Int8}) {
        const PackedWeight W = pack_weight(w.data(), out, in, format);
        for (const auto& path : paths) {
            check_against_reference(path, W, x, bias.data(), M);
            std::vector<float> y(static_cast<size_t>(M * out));
            ForcedPath forced(path);
            packed_linear_forward(y.data(), x.data(), W, bias.data(), M);
            for (int64_t m = 0; m < M; ++m)
                EXPECT_EQ(y[m * out + zero_n], bias[zero_n]) << path << " m=" << m;
            for (int64_t n = 0; n < out; ++n) EXPECT_EQ(y[zero_m * out + n], bias[n]) << path << " n=" << n;
        }
    }
}

// x at a tie of the activation quantization: with absmax 127 the scale is exactly 1 and x / s = x,
// so halves must round to even like std::nearbyint (the vectorised quantization against
// quantize_rows_int8). W = 127 · I has scale 1 and q = 127 · I, so y = 127 · q_x exactly.
TEST(PackedGemv, Int8ActivationsRoundHalfToEven) {
    const std::vector<float> x = {127.0f, 0.5f, 1.5f,  2.5f,   -0.5f, -1.5f, -2.5f, 3.49f, -126.5f,
                                  125.5f, 0.0f, 64.5f, -63.5f, 7.0f,  0.25f, 0.75f, 100.5f};
    const std::vector<float> want = {127, 0, 2, 2, 0, -2, -2, 3, -126, 126, 0, 64, -64, 7, 0, 1, 100};
    const int64_t in = static_cast<int64_t>(x.size());
    std::vector<float> eye(static_cast<size_t>(in * in), 0.0f);
    for (int64_t i = 0; i < in; ++i) eye[i * in + i] = 127.0f;
    const PackedWeight W = pack_weight(eye.data(), in, in, WeightFormat::Int8);
    std::vector<int8_t> q(static_cast<size_t>(W.ld));
    float sx = 0;
    detail::quantize_rows_int8(q.data(), &sx, x.data(), 1, in, W.ld);
    ASSERT_EQ(sx, 1.0f);
    for (const auto& path : supported_paths()) {
        std::vector<float> y(static_cast<size_t>(in));
        ForcedPath forced(path);
        packed_linear_forward(y.data(), x.data(), W, nullptr, 1);
        for (int64_t i = 0; i < in; ++i) {
            EXPECT_EQ(y[i], 127 * want[i]) << path << " x=" << x[i];
            EXPECT_EQ(q[i], want[i]) << "quantize_rows_int8, x=" << x[i];
        }
    }
}

// The kernels quantize x with their own vector code; against quantize_rows_int8 column by column:
// with W = 127 · I (scale exactly 1, q = 127 · I) every output is s_x · (127 · q_x), exact, so
// y = s_x · 127 · q_x holds only if both the scale and each quantized value are the same.
TEST(PackedGemv, Int8QuantizationMatchesQuantizeRowsInt8) {
    Rng rng(12);
    const int64_t M = 3;
    for (int64_t in : {1, 17, 77, 200}) {
        std::vector<float> eye(static_cast<size_t>(in * in), 0.0f);
        for (int64_t i = 0; i < in; ++i) eye[i * in + i] = 127.0f;
        const PackedWeight W = pack_weight(eye.data(), in, in, WeightFormat::Int8);
        auto x = random_normal(static_cast<size_t>(M * in), rng);
        for (int64_t i = 0; i < in; ++i) {  // rows of very different magnitudes
            x[in + i] *= 1e-3f;
            x[2 * in + i] *= 1e3f;
        }
        std::vector<int8_t> q(static_cast<size_t>(M * W.ld));
        std::vector<float> sx(M);
        detail::quantize_rows_int8(q.data(), sx.data(), x.data(), M, in, W.ld);
        for (const auto& path : supported_paths()) {
            std::vector<float> y(static_cast<size_t>(M * in));
            ForcedPath forced(path);
            packed_linear_forward(y.data(), x.data(), W, nullptr, M);
            for (int64_t m = 0; m < M; ++m)
                for (int64_t i = 0; i < in; ++i)
                    ASSERT_EQ(y[m * in + i], sx[m] * static_cast<float>(127 * q[m * W.ld + i]))
                        << path << " in=" << in << " m=" << m << " i=" << i;
        }
    }
}

// Large enough to be split over the pool: the same bits for 1 and 2 threads on every path.
TEST(PackedGemv, SameBitsForAnyThreadCount) {
    const int saved = num_threads();
    Rng rng(10);
    const int64_t out = 1001, in = 777;
    const auto w = random_normal(static_cast<size_t>(out * in), rng);
    const auto bias = random_normal(static_cast<size_t>(out), rng);
    for (WeightFormat format : {WeightFormat::BF16, WeightFormat::Int8}) {
        const PackedWeight W = pack_weight(w.data(), out, in, format);
        for (int64_t M : {1, 4, 15}) {
            const auto x = random_normal(static_cast<size_t>(M * in), rng);
            for (const auto& path : supported_paths()) {
                ForcedPath forced(path);
                std::vector<std::vector<float>> results;
                for (int threads : {1, 2}) {
                    set_num_threads(threads);
                    std::vector<float> y(static_cast<size_t>(M * out));
                    packed_linear_forward(y.data(), x.data(), W, bias.data(), M);
                    results.push_back(y);
                }
                EXPECT_EQ(
                    std::memcmp(results[0].data(), results[1].data(), results[0].size() * sizeof(float)), 0)
                    << describe(path, W, M, true);
            }
        }
    }
    set_num_threads(saved);
}

// A row of x gives the same bits alone as in a batch of any size, on each path: batched decoding
// reproduces single-sequence decoding exactly.
TEST(PackedGemv, SameBitsForAnyBatchSize) {
    Rng rng(11);
    const int64_t out = 45, in = 333;
    const auto w = random_normal(static_cast<size_t>(out * in), rng);
    const auto bias = random_normal(static_cast<size_t>(out), rng);
    const auto x = random_normal(static_cast<size_t>(15 * in), rng);
    for (WeightFormat format : {WeightFormat::BF16, WeightFormat::Int8}) {
        const PackedWeight W = pack_weight(w.data(), out, in, format);
        for (const auto& path : supported_paths()) {
            ForcedPath forced(path);
            std::vector<float> alone(static_cast<size_t>(15 * out));
            for (int64_t m = 0; m < 15; ++m)
                packed_linear_forward(alone.data() + m * out, x.data() + m * in, W, bias.data(), 1);
            for (int64_t M = 2; M < kPackedGemmMinRows; ++M) {
                std::vector<float> batch(static_cast<size_t>(M * out));
                packed_linear_forward(batch.data(), x.data(), W, bias.data(), M);
                EXPECT_EQ(std::memcmp(batch.data(), alone.data(), batch.size() * sizeof(float)), 0)
                    << describe(path, W, M, true);
            }
        }
    }
}

TEST(PackedGemv, RefusesUnknownKernel) {
    EXPECT_THROW(detail::force_packed_gemv_kernel("avx1024"), Error);
    EXPECT_FALSE(detail::packed_gemv_description().empty());
}

// Round to nearest even at 8 significant bits, ties included; NaN stays NaN, overflow goes to ±inf;
// the row tails up to ld and the rows up to out_padded are zero.
TEST(PackedGemv, PackBf16RoundsToNearestEven) {
    auto f = [](uint32_t bits) {
        float v;
        std::memcpy(&v, &bits, 4);
        return v;
    };
    struct Case {
        float value;
        uint16_t bits;
    };
    const std::vector<Case> cases = {
        {1.0f, 0x3f80},
        {f(0x3f808000), 0x3f80},  // 1 + 2^-8: a tie, down to the even 1.0
        {f(0x3f818000), 0x3f82},  // 1 + 3·2^-8: a tie, up to the even 1 + 2^-6
        {f(0x3f808001), 0x3f81},  // just above the tie
        {f(0x3f817fff), 0x3f81},  // just below the tie
        {f(0xbf808000), 0xbf80},  // -(1 + 2^-8): ties to even on the negative side too
        {f(0xbf818000), 0xbf82},
        {-0.0f, 0x8000},
        {f(0x7f7fffff), 0x7f80},  // the largest float rounds to +inf
        {std::numeric_limits<float>::infinity(), 0x7f80},
        {f(0x00018000), 0x0002},  // subnormal tie, up to even
    };
    const int64_t in = static_cast<int64_t>(cases.size()) + 2, out = 2;
    std::vector<float> w(static_cast<size_t>(out * in), 0.0f);
    for (size_t i = 0; i < cases.size(); ++i) w[i] = cases[i].value;
    w[cases.size()] = std::numeric_limits<float>::quiet_NaN();
    w[cases.size() + 1] = f(0x7f800001);  // a signalling NaN whose payload sits below bf16's bits
    for (int64_t c = 0; c < in; ++c) w[in + c] = static_cast<float>(c) + 0.5f;
    const PackedWeight W = pack_weight(w.data(), out, in, WeightFormat::BF16);
    ASSERT_EQ(W.ld, 64);
    ASSERT_EQ(W.out_padded, 16);
    EXPECT_EQ(W.bytes(), static_cast<size_t>(out * in * 2));
    EXPECT_EQ(reinterpret_cast<uintptr_t>(W.bf16()) % 64, 0u);
    for (size_t i = 0; i < cases.size(); ++i)
        EXPECT_EQ(W.bf16()[i], cases[i].bits) << "value " << cases[i].value << " (case " << i << ")";
    EXPECT_TRUE(std::isnan(bf16_to_float(W.bf16()[cases.size()])));
    EXPECT_TRUE(std::isnan(bf16_to_float(W.bf16()[cases.size() + 1])));
    for (int64_t c = 0; c < in; ++c)
        EXPECT_EQ(bf16_to_float(W.bf16()[W.ld + c]), static_cast<float>(c) + 0.5f);
    for (int64_t r = 0; r < W.out_padded; ++r)
        for (int64_t c = r < out ? in : 0; c < W.ld; ++c)
            ASSERT_EQ(W.bf16()[r * W.ld + c], 0) << r << "," << c;
}

// Per-row absmax scales, round-half-even quantization, row sums, a zero row, and zero padding.
TEST(PackedGemv, PackInt8ScalesRowSumsAndPadding) {
    const int64_t out = 3, in = 70;
    std::vector<float> w(static_cast<size_t>(out * in), 0.0f);
    // Row 0: absmax 1, so w / s = 127 · w: 0.5 → 63.5 → 64 (the even neighbour), 0.25 → 31.75 → 32.
    w[0] = 0.5f;
    w[1] = -1.0f;
    w[2] = 0.25f;
    w[69] = -0.5f;  // -63.5 → -64
    // Row 1 stays zero. Row 2: absmax 2, w / s = 63.5 · w.
    w[2 * in + 0] = 2.0f;
    w[2 * in + 1] = 1.0f;           // 63.5 → 64
    w[2 * in + 2] = -3.0f / 63.5f;  // about -3
    const PackedWeight W = pack_weight(w.data(), out, in, WeightFormat::Int8);
    ASSERT_EQ(W.ld, 128);
    ASSERT_EQ(W.out_padded, 16);
    EXPECT_EQ(W.bytes(), static_cast<size_t>(out * in + out * 8));
    const int8_t* q = W.int8();
    EXPECT_EQ(W.scale.get()[0], 1.0f / 127.0f);
    EXPECT_EQ(q[0], 64);
    EXPECT_EQ(q[1], -127);
    EXPECT_EQ(q[2], 32);
    EXPECT_EQ(q[69], -64);
    EXPECT_EQ(W.row_sum.get()[0], 64 - 127 + 32 - 64);
    EXPECT_EQ(W.scale.get()[1], 0.0f);
    EXPECT_EQ(W.row_sum.get()[1], 0);
    EXPECT_EQ(W.scale.get()[2], 2.0f / 127.0f);
    EXPECT_EQ(q[2 * W.ld + 0], 127);
    EXPECT_EQ(q[2 * W.ld + 1], 64);
    EXPECT_EQ(q[2 * W.ld + 2], -3);
    EXPECT_EQ(W.row_sum.get()[2], 127 + 64 - 3);
    for (int64_t r = 0; r < W.out_padded; ++r) {
        if (r >= out) {
            EXPECT_EQ(W.scale.get()[r], 0.0f);
            EXPECT_EQ(W.row_sum.get()[r], 0);
        }
        for (int64_t c = r < out && r != 1 ? in : 0; c < W.ld; ++c)
            ASSERT_EQ(q[r * W.ld + c], 0) << r << "," << c;
    }
    for (int64_t c = 3; c < 69; ++c) EXPECT_EQ(q[c], 0);
}

}  // namespace
