// The prefill kernels of ops/packed_linear (M >= kPackedGemmMinRows rows of x) against
// packed_linear_reference with gemm numerics: the AMX path and the fallbacks (with AVX-512 VNNI
// where the CPU has it, and portable), bf16 and int8, odd
// shapes (partial tiles of W rows, of tokens and of k), with and without bias, zero rows of x and
// of W; the same bits for 1 and 2 threads.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "core/thread_pool.h"
#include "ops/cpu/packed_kernels.h"
#include "ops/packed_linear.h"

// Test hooks defined in src/ops/cpu/packed_gemm.cpp: force a path ("amx" | "fallback" |
// "fallback-portable", nullptr for the environment's choice, MSLM_PACKED_GEMM), and whether this
// machine offers AMX.
namespace mslm::ops::detail {
void packed_gemm_force_path(const char* name);
bool packed_gemm_amx_available();
}  // namespace mslm::ops::detail

using namespace mslm;
using namespace mslm::ops;

namespace {

std::vector<const char*> paths() {
    std::vector<const char*> p = {"fallback", "fallback-portable"};
    if (detail::packed_gemm_amx_available()) p.push_back("amx");
    return p;
}

// Restores the environment's path when a test ends, whatever it forced.
struct ForcedPath {
    explicit ForcedPath(const char* name) { detail::packed_gemm_force_path(name); }
    ~ForcedPath() { detail::packed_gemm_force_path(nullptr); }
};

struct Problem {
    int64_t M, in, out;
    std::vector<float> x, W, b;
};

// Normal activations and weights; row 1 of W (when out > 2) and row 2 of x (when M > 3) are zero,
// which gives int8 scale 0 on both sides.
Problem make_problem(int64_t M, int64_t in, int64_t out, uint64_t seed) {
    Rng rng(seed);
    Problem p{M, in, out, std::vector<float>(M * in), std::vector<float>(out * in), std::vector<float>(out)};
    for (auto& v : p.x) v = static_cast<float>(rng.normal());
    for (auto& v : p.W) v = static_cast<float>(rng.normal(0, 0.05));
    for (auto& v : p.b) v = static_cast<float>(rng.normal());
    if (out > 2) std::fill(p.W.begin() + in, p.W.begin() + 2 * in, 0.0f);
    if (M > 3) std::fill(p.x.begin() + 2 * in, p.x.begin() + 3 * in, 0.0f);
    return p;
}

std::vector<float> run(const char* path, const Problem& p, const PackedWeight& W, bool bias) {
    ForcedPath forced(path);
    std::vector<float> y(p.M * p.out, std::nanf(""));
    detail::packed_gemm_forward(y.data(), p.x.data(), W, bias ? p.b.data() : nullptr, p.M);
    return y;
}

uint32_t bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}

std::string describe(const char* path, const Problem& p, WeightFormat f, bool bias) {
    return std::string(path) + " " + weight_format_name(f) + " M=" + std::to_string(p.M) +
           " in=" + std::to_string(p.in) + " out=" + std::to_string(p.out) + (bias ? " bias" : " no bias");
}

// Checks both paths against the reference for one problem, format and bias.
//
// BF16: x and w are exactly bf16 after rounding (the reference rounds x the same way), so every
// product x_k·w_k (8-bit × 8-bit significands) is exact in fp32; the kernels differ from the
// double-precision reference only in summing `in` products in fp32, in some order (tile order, or
// OpenBLAS's): |err| ≤ (in − 1)·u·Σ_k |x_k w_k| with u = 2^-24. The reference's own rounding to
// fp32 and the rounding of the bias addition on both sides add at most 3u·(Σ_k |x_k w_k| + |b|).
// Bound: 2·(in + 2)·u·(Σ_k |x_k w_k| + |b|), a factor 2 of margin. (AMX reads bf16 denormals as
// zero; these normal inputs have none.)
// INT8: the dot products are exact int32 on every path and the scaling is the same fp32 operations,
// each rounded (no FMA contraction), so the results equal the reference's bit for bit.
void check(const Problem& p, WeightFormat f, bool bias) {
    const PackedWeight W = pack_weight(p.W.data(), p.out, p.in, f);
    std::vector<float> want(p.M * p.out);
    packed_linear_reference(want.data(), p.x.data(), W, bias ? p.b.data() : nullptr, p.M, true);
    // Σ_k |x_k w_k| (+ |b|) for the bf16 bound, from |x| and |w| as the kernels see them.
    std::vector<double> mag;
    if (f == WeightFormat::BF16) {
        std::vector<float> ax(p.M * p.in), aw(p.out * p.in);
        for (int64_t i = 0; i < p.M * p.in; ++i) ax[i] = std::fabs(bf16_to_float(float_to_bf16(p.x[i])));
        for (int64_t n = 0; n < p.out; ++n)
            for (int64_t k = 0; k < p.in; ++k)
                aw[n * p.in + k] = std::fabs(bf16_to_float(W.bf16()[n * W.ld + k]));
        mag.resize(p.M * p.out);
        for (int64_t m = 0; m < p.M; ++m)
            for (int64_t n = 0; n < p.out; ++n) {
                double s = bias ? std::fabs(p.b[n]) : 0.0;
                for (int64_t k = 0; k < p.in; ++k)
                    s += static_cast<double>(ax[m * p.in + k]) * aw[n * p.in + k];
                mag[m * p.out + n] = s;
            }
    }
    const double u = std::ldexp(1.0, -24);
    for (const char* path : paths()) {
        const std::vector<float> got = run(path, p, W, bias);
        for (int64_t i = 0; i < p.M * p.out; ++i) {
            if (f == WeightFormat::Int8) {
                ASSERT_EQ(bits(got[i]), bits(want[i]))
                    << describe(path, p, f, bias) << " at " << i / p.out << "," << i % p.out << ": " << got[i]
                    << " vs " << want[i];
            } else {
                const double bound = 2.0 * static_cast<double>(p.in + 2) * u * mag[i];
                ASSERT_NEAR(got[i], want[i], bound)
                    << describe(path, p, f, bias) << " at " << i / p.out << "," << i % p.out;
            }
        }
    }
}

TEST(PackedGemm, MatchesReferenceOnOddShapes) {
    uint64_t seed = 1;
    for (int64_t M : {16, 17, 31, 33, 100, 512})
        for (int64_t in : {1, 17, 64, 65, 200, 768, 1536})
            for (int64_t out : {1, 15, 17, 33, 100}) {
                const Problem p = make_problem(M, in, out, seed++);
                for (WeightFormat f : {WeightFormat::BF16, WeightFormat::Int8})
                    for (bool bias : {false, true}) check(p, f, bias);
            }
}

// The 130m model's widest product (out = 3352, the in_proj) at a few token counts and widths.
TEST(PackedGemm, MatchesReferenceOnWideProducts) {
    struct Shape {
        int64_t M, in;
        bool bias;
    };
    uint64_t seed = 1000;
    for (const Shape& s :
         {Shape{16, 768, true}, Shape{33, 1536, false}, Shape{100, 65, true}, Shape{512, 768, false}}) {
        const Problem p = make_problem(s.M, s.in, 3352, seed++);
        for (WeightFormat f : {WeightFormat::BF16, WeightFormat::Int8}) check(p, f, s.bias);
    }
}

// Every output element is computed by one thread in a fixed order: the same bits for 1 and 2
// threads, on each path, for a split over rows of W (out = 3352) and one over tokens as well
// (out = 33: two blocks of W rows; 1000 tokens keep the product above the size that AMX runs on
// one thread) — and for a product small enough to run on the calling thread alone.
TEST(PackedGemm, SameBitsForAnyThreadCount) {
    const int saved = num_threads();
    for (auto [M, in, out] : {std::array<int64_t, 3>{300, 200, 3352}, {1000, 200, 33}, {128, 64, 296}}) {
        const Problem p = make_problem(M, in, out, 7);
        for (WeightFormat f : {WeightFormat::BF16, WeightFormat::Int8}) {
            const PackedWeight W = pack_weight(p.W.data(), p.out, p.in, f);
            for (const char* path : paths()) {
                std::vector<std::vector<float>> results;
                for (int threads : {1, 2}) {
                    set_num_threads(threads);
                    results.push_back(run(path, p, W, true));
                }
                EXPECT_EQ(
                    0, std::memcmp(results[0].data(), results[1].data(), results[0].size() * sizeof(float)))
                    << describe(path, p, f, true);
            }
        }
    }
    set_num_threads(saved);
}

// packed_linear_forward sends M >= kPackedGemmMinRows here; no rows writes nothing.
TEST(PackedGemm, DispatchAndEmptyProduct) {
    const Problem p = make_problem(kPackedGemmMinRows, 70, 40, 11);
    for (WeightFormat f : {WeightFormat::BF16, WeightFormat::Int8}) {
        const PackedWeight W = pack_weight(p.W.data(), p.out, p.in, f);
        std::vector<float> direct(p.M * p.out), via(p.M * p.out);
        detail::packed_gemm_forward(direct.data(), p.x.data(), W, p.b.data(), p.M);
        packed_linear_forward(via.data(), p.x.data(), W, p.b.data(), p.M);
        EXPECT_EQ(0, std::memcmp(direct.data(), via.data(), direct.size() * sizeof(float)));
        std::vector<float> y(4, 5.0f);
        detail::packed_gemm_forward(y.data(), p.x.data(), W, nullptr, 0);
        EXPECT_EQ(y, std::vector<float>(4, 5.0f));
    }
}

TEST(PackedGemm, PathNames) {
    EXPECT_THROW(detail::packed_gemm_force_path("tiles"), Error);
    if (!detail::packed_gemm_amx_available()) {
        EXPECT_THROW(detail::packed_gemm_force_path("amx"), Error);
    }
    {
        ForcedPath forced("fallback");
        EXPECT_NE(detail::packed_gemm_description().find("fallback"), std::string::npos);
    }
    {
        ForcedPath forced("fallback-portable");
        EXPECT_NE(detail::packed_gemm_description().find("int32 loops"), std::string::npos);
    }
    if (detail::packed_gemm_amx_available()) {
        ForcedPath forced("amx");
        EXPECT_NE(detail::packed_gemm_description().find("amx"), std::string::npos);
    }
}

}  // namespace
