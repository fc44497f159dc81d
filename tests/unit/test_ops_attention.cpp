// Tests of ops/attention.h: tiled attention against a naive full-softmax reference, gradients by
// finite differences, float against double, rotary embeddings and ALiBi slopes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <tuple>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "core/thread_pool.h"
#include "gradcheck.h"
#include "ops/attention.h"

using namespace mslm;
using namespace mslm::ops;
using mslm::test::dot;
using mslm::test::expect_gradient_close;
using mslm::test::numeric_gradient;
using mslm::test::random_vector;

namespace {

struct Config {
    int64_t B, T, Hq, Hkv, Dh;
    int64_t window = 0;
    bool alibi = false;
    int64_t pad = 0;  // extra entries at the end of each q, k, v row, so the row strides exceed H · Dh

    int64_t ld_q() const { return Hq * Dh + pad; }
    int64_t ld_kv() const { return Hkv * Dh + pad; }
    AttentionDims dims() const { return {B, T, Hq, Hkv, Dh}; }
    std::string name() const {
        return "B" + std::to_string(B) + " T" + std::to_string(T) + " Hq" + std::to_string(Hq) + " Hkv" +
               std::to_string(Hkv) + " Dh" + std::to_string(Dh) + " window" + std::to_string(window) +
               (alibi ? " alibi" : "") + " pad" + std::to_string(pad);
    }
};

template <typename T>
AttentionOptions<T> options(const Config& c, double scale) {
    AttentionOptions<T> opt{static_cast<T>(scale)};
    opt.window = c.window;
    opt.alibi = c.alibi;
    return opt;
}

// q (B, T, Hq, Dh), k and v (B, T, Hkv, Dh), each row padded by c.pad entries.
struct Qkv {
    std::vector<double> q, k, v;
};

Qkv random_qkv(const Config& c, Rng& rng) {
    return {random_vector(rng, static_cast<size_t>(c.B * c.T * c.ld_q())),
            random_vector(rng, static_cast<size_t>(c.B * c.T * c.ld_kv())),
            random_vector(rng, static_cast<size_t>(c.B * c.T * c.ld_kv()))};
}

template <typename T>
std::vector<T> cast(const std::vector<double>& x) {
    return std::vector<T>(x.begin(), x.end());
}

template <typename T>
std::vector<double> to_double(const std::vector<T>& x) {
    return std::vector<double>(x.begin(), x.end());
}

// Output and lse of attention_forward in precision T.
template <typename T>
struct Result {
    std::vector<T> out, lse;
};

template <typename T>
Result<T> run_forward(const Config& c, const Qkv& x, double scale) {
    std::vector<T> q = cast<T>(x.q), k = cast<T>(x.k), v = cast<T>(x.v);
    Result<T> r{std::vector<T>(static_cast<size_t>(c.B * c.T * c.Hq * c.Dh)),
                std::vector<T>(static_cast<size_t>(c.B * c.Hq * c.T))};
    attention_forward(r.out.data(), r.lse.data(), q.data(), c.ld_q(), k.data(), c.ld_kv(), v.data(),
                      c.ld_kv(), c.dims(), options<T>(c, scale));
    return r;
}

template <typename T>
struct Grads {
    std::vector<T> dq, dk, dv;
};

template <typename T>
Grads<T> run_backward(const Config& c, const Qkv& x, const std::vector<double>& dout, double scale) {
    std::vector<T> q = cast<T>(x.q), k = cast<T>(x.k), v = cast<T>(x.v), g = cast<T>(dout);
    Result<T> f = run_forward<T>(c, x, scale);
    Grads<T> d{std::vector<T>(q.size()), std::vector<T>(k.size()), std::vector<T>(v.size())};
    attention_backward(d.dq.data(), d.dk.data(), d.dv.data(), g.data(), f.out.data(), f.lse.data(), q.data(),
                       c.ld_q(), k.data(), c.ld_kv(), v.data(), c.ld_kv(), c.dims(), options<T>(c, scale));
    return d;
}

// Naive reference: the whole row of scores, one softmax, in double.
Result<double> naive_attention(const Config& c, const Qkv& x, double scale) {
    Result<double> r{std::vector<double>(static_cast<size_t>(c.B * c.T * c.Hq * c.Dh)),
                     std::vector<double>(static_cast<size_t>(c.B * c.Hq * c.T))};
    std::vector<double> slopes = c.alibi ? alibi_slopes(c.Hq) : std::vector<double>(c.Hq, 0.0);
    std::vector<double> s(static_cast<size_t>(c.T));
    const int64_t group = c.Hq / c.Hkv;
    for (int64_t b = 0; b < c.B; ++b) {
        for (int64_t h = 0; h < c.Hq; ++h) {
            for (int64_t i = 0; i < c.T; ++i) {
                const double* qi = &x.q[(b * c.T + i) * c.ld_q() + h * c.Dh];
                double m = -INFINITY;
                for (int64_t j = 0; j < c.T; ++j) {
                    bool visible = j <= i && (c.window == 0 || i - j < c.window);
                    if (!visible) {
                        s[j] = -INFINITY;
                        continue;
                    }
                    const double* kj = &x.k[(b * c.T + j) * c.ld_kv() + (h / group) * c.Dh];
                    double d = 0;
                    for (int64_t e = 0; e < c.Dh; ++e) d += qi[e] * kj[e];
                    s[j] = scale * d - slopes[h] * static_cast<double>(i - j);
                    m = std::max(m, s[j]);
                }
                double sum = 0;
                for (int64_t j = 0; j < c.T; ++j) sum += std::exp(s[j] - m);
                double* o = &r.out[((b * c.T + i) * c.Hq + h) * c.Dh];
                for (int64_t j = 0; j < c.T; ++j) {
                    const double p = std::exp(s[j] - m) / sum;
                    const double* vj = &x.v[(b * c.T + j) * c.ld_kv() + (h / group) * c.Dh];
                    for (int64_t e = 0; e < c.Dh; ++e) o[e] += p * vj[e];
                }
                r.lse[(b * c.Hq + h) * c.T + i] = m + std::log(sum);
            }
        }
    }
    return r;
}

double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
    double worst = 0;
    for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::fabs(a[i] - b[i]));
    return worst;
}

double max_abs(const std::vector<double>& a) {
    double m = 0;
    for (double x : a) m = std::max(m, std::fabs(x));
    return m;
}

// Shapes every forward test runs: MHA, GQA and MQA, ALiBi, windows of 1, 3, more than one tile and
// ≥ T, and lengths around the 64-row tile (1, 7, 64, 70, 130). pad > 0 gives strided rows.
std::vector<Config> forward_configs() {
    return {
        {2, 70, 4, 4, 16},
        {1, 1, 4, 4, 16},
        {2, 7, 4, 4, 16, 0, false, 3},
        {1, 64, 2, 2, 8},
        {1, 130, 6, 2, 16},
        {2, 130, 6, 1, 16, 0, false, 5},
        {1, 130, 6, 2, 16, 0, true},
        {1, 70, 8, 8, 8, 0, true},
        {1, 130, 4, 2, 8, 1},
        {1, 130, 4, 2, 8, 3, true},
        {1, 130, 4, 2, 8, 70},
        {1, 70, 4, 2, 8, 70, false, 2},
        {1, 70, 4, 2, 8, 1000, true},
        {1, 7, 6, 1, 8, 3},
    };
}

// Head dims past 64 narrow the query tile so each tile GEMM stays single-threaded in OpenBLAS
// (Dh = 96: 42 query rows, Dh = 128: 32): tiles that do not divide 64 or T.
std::vector<Config> wide_head_configs() {
    return {
        {2, 70, 3, 1, 96},
        {1, 130, 4, 2, 128, 40, true},
        {1, 100, 2, 2, 128, 0, false, 4},
    };
}

}  // namespace

// In double the tiled result differs from the naive one only by summation order and the online
// rescaling: O((T + Dh) · ε) ≲ 260 · 1.1e-16 relative to outputs and lse of order 1–10, so 1e-12
// absolute leaves two orders of margin and still catches any wrong weight (errors of order 1e-2+).
TEST(Attention, ForwardMatchesNaiveInDouble) {
    Rng rng(1);
    double worst = 0;
    std::vector<Config> configs = forward_configs();
    for (const Config& c : wide_head_configs()) configs.push_back(c);
    for (const Config& c : configs) {
        Qkv x = random_qkv(c, rng);
        const double scale = 1.0 / std::sqrt(static_cast<double>(c.Dh));
        Result<double> ref = naive_attention(c, x, scale);
        Result<double> got = run_forward<double>(c, x, scale);
        EXPECT_LT(max_abs_diff(got.out, ref.out), 1e-12) << c.name();
        EXPECT_LT(max_abs_diff(got.lse, ref.lse), 1e-12) << c.name();
        worst = std::max({worst, max_abs_diff(got.out, ref.out), max_abs_diff(got.lse, ref.lse)});
    }
    std::printf("double tiled vs naive: max abs error %.3g\n", worst);
}

// fp32 (unit roundoff u = 2^-24 ≈ 6e-8), inputs N(0, 1), Dh ≤ 16, T ≤ 130. A score is a length-Dh
// dot product plus the ALiBi term slope·(i − j) ≤ 0.5 · 130: its absolute error is at most
// ~(Dh · scale · Σ|q_d k_d| + 65) · u ≈ (16 · 2.5 + 65) · 6e-8 ≈ 6e-6, which perturbs each softmax
// weight by that much relatively (the vectorised exp adds 1 ulp, 6e-8, to it), moving the output by
// ≤ 2 · 6e-6 · max|v| ≈ 5e-5 (max|v| ≈ 4).
// The length-T accumulation of p·v and of the row sum adds ≤ 2 · T · u · max|v| ≈ 6e-5. The lse
// carries the score error plus T · u from the sum. These are worst-case bounds; 2e-4 on out and
// 1e-5 + T · u on lse hold them with a small margin; real errors are ~1e-6.
TEST(Attention, FloatForwardAgreesWithDouble) {
    Rng rng(2);
    double worst_out = 0, worst_lse = 0;
    for (const Config& c : forward_configs()) {
        Qkv x = random_qkv(c, rng);
        const double scale = 1.0 / std::sqrt(static_cast<double>(c.Dh));
        Result<double> ref = run_forward<double>(c, x, scale);
        Result<float> got = run_forward<float>(c, x, scale);
        const double e_out = max_abs_diff(to_double(got.out), ref.out);
        const double e_lse = max_abs_diff(to_double(got.lse), ref.lse);
        EXPECT_LT(e_out, 2e-4) << c.name();
        EXPECT_LT(e_lse, 1e-5 + static_cast<double>(c.T) * 6e-8) << c.name();
        worst_out = std::max(worst_out, e_out);
        worst_lse = std::max(worst_lse, e_lse);
    }
    std::printf("float vs double forward: out %.3g, lse %.3g\n", worst_out, worst_lse);
}

// A fused QKV projection's output (B, T, (Hq + 2 Hkv) · Dh) read through three pointers with one
// stride gives the numbers of three separate contiguous buffers, and the gradients land in the
// matching slices of a fused gradient buffer. The arithmetic is the same; only a BLAS kernel that
// picked a different path for another leading dimension could change a summation order, so
// 1e-14 on values of order 1.
TEST(Attention, FusedQkvBufferMatchesSeparateBuffers) {
    const Config c{2, 70, 6, 2, 8, 0, true};
    const int64_t ld = (c.Hq + 2 * c.Hkv) * c.Dh;
    Rng rng(3);
    std::vector<double> qkv = random_vector(rng, static_cast<size_t>(c.B * c.T * ld));
    Qkv x;
    for (int64_t r = 0; r < c.B * c.T; ++r) {
        const double* row = &qkv[r * ld];
        x.q.insert(x.q.end(), row, row + c.Hq * c.Dh);
        x.k.insert(x.k.end(), row + c.Hq * c.Dh, row + (c.Hq + c.Hkv) * c.Dh);
        x.v.insert(x.v.end(), row + (c.Hq + c.Hkv) * c.Dh, row + ld);
    }
    const double scale = 0.3;
    std::vector<double> dout = random_vector(rng, static_cast<size_t>(c.B * c.T * c.Hq * c.Dh));
    Result<double> ref = run_forward<double>(c, x, scale);
    Grads<double> ref_grad = run_backward<double>(c, x, dout, scale);

    const double* q = qkv.data();
    const double* k = q + c.Hq * c.Dh;
    const double* v = k + c.Hkv * c.Dh;
    Result<double> got{std::vector<double>(ref.out.size()), std::vector<double>(ref.lse.size())};
    const AttentionOptions<double> opt = options<double>(c, scale);
    attention_forward(got.out.data(), got.lse.data(), q, ld, k, ld, v, ld, c.dims(), opt);
    EXPECT_LT(max_abs_diff(got.out, ref.out), 1e-14);
    EXPECT_LT(max_abs_diff(got.lse, ref.lse), 1e-14);

    std::vector<double> dqkv(qkv.size(), 0.0);
    double* dq = dqkv.data();
    attention_backward(dq, dq + c.Hq * c.Dh, dq + (c.Hq + c.Hkv) * c.Dh, dout.data(), got.out.data(),
                       got.lse.data(), q, ld, k, ld, v, ld, c.dims(), opt);
    Grads<double> split;
    for (int64_t r = 0; r < c.B * c.T; ++r) {
        const double* row = &dqkv[r * ld];
        split.dq.insert(split.dq.end(), row, row + c.Hq * c.Dh);
        split.dk.insert(split.dk.end(), row + c.Hq * c.Dh, row + (c.Hq + c.Hkv) * c.Dh);
        split.dv.insert(split.dv.end(), row + (c.Hq + c.Hkv) * c.Dh, row + ld);
    }
    EXPECT_LT(max_abs_diff(split.dq, ref_grad.dq), 1e-14);
    EXPECT_LT(max_abs_diff(split.dk, ref_grad.dk), 1e-14);
    EXPECT_LT(max_abs_diff(split.dv, ref_grad.dv), 1e-14);
}

// window = 1: each query sees only itself, its single weight is exp(0) = 1, so out is v bit for bit
// and lse is the query's own score (with ALiBi's term 0 at distance 0). In the backward p = 1 and
// ds = dout·v − dout·out = 0 up to the order of two length-Dh sums, so dq and dk vanish (to fp32
// rounding of a dot product of N(0, 1) entries: Dh · u · Σ|·| ≲ 1e-5) and dv is dout exactly.
TEST(Attention, WindowOneCopiesValues) {
    const Config c{2, 70, 4, 2, 8, 1, true};
    Rng rng(4);
    Qkv x = random_qkv(c, rng);
    const double scale = 0.35;
    Result<float> r = run_forward<float>(c, x, scale);
    std::vector<float> v = cast<float>(x.v), q = cast<float>(x.q), k = cast<float>(x.k);
    for (int64_t b = 0; b < c.B; ++b) {
        for (int64_t t = 0; t < c.T; ++t) {
            for (int64_t h = 0; h < c.Hq; ++h) {
                const int64_t hk = h / (c.Hq / c.Hkv);
                const float* qi = &q[(b * c.T + t) * c.ld_q() + h * c.Dh];
                const float* ki = &k[(b * c.T + t) * c.ld_kv() + hk * c.Dh];
                const float* vi = &v[(b * c.T + t) * c.ld_kv() + hk * c.Dh];
                const float* oi = &r.out[((b * c.T + t) * c.Hq + h) * c.Dh];
                double s = 0;
                for (int64_t d = 0; d < c.Dh; ++d) {
                    ASSERT_EQ(oi[d], vi[d]);
                    s += static_cast<double>(qi[d]) * ki[d];
                }
                EXPECT_NEAR(r.lse[(b * c.Hq + h) * c.T + t], scale * s, 1e-5);
            }
        }
    }
    std::vector<double> dout = random_vector(rng, r.out.size());
    Grads<float> g = run_backward<float>(c, x, dout, scale);
    EXPECT_LT(max_abs(to_double(g.dq)), 1e-5);
    EXPECT_LT(max_abs(to_double(g.dk)), 1e-5);
    // Each kv row receives dout of its group's query heads, each with weight 1.
    for (int64_t row = 0; row < c.B * c.T; ++row) {
        for (int64_t hk = 0; hk < c.Hkv; ++hk) {
            for (int64_t d = 0; d < c.Dh; ++d) {
                float expect = 0;
                for (int64_t member = 0; member < c.Hq / c.Hkv; ++member)
                    expect +=
                        static_cast<float>(dout[(row * c.Hq + hk * (c.Hq / c.Hkv) + member) * c.Dh + d]);
                EXPECT_EQ(g.dv[row * c.ld_kv() + hk * c.Dh + d], expect);
            }
        }
    }
}

namespace {

// Finite differences of loss = dot(out, probe) against dq, dk and dv. Gradient entries here are
// of order 0.1–1 and the central difference's absolute error is ~1e-9 (h² · f''' ≈ 1e-10 · O(10);
// ε · |L| / h ≈ 2e-11 · |L| with |L| ≲ 50). The relative tolerance 1e-6 therefore needs an absolute
// floor: entries under 1e-2 (some are exactly 0, e.g. dq of query 0, whose softmax has one entry)
// are held to 1e-8 absolute, still ten times the noise and far below any formula error.
// When every query sees a single key (window 1, or T = 1) the softmax is constant, so dq and dk
// are exactly zero and only dv can be checked by differences; the test then asserts the zeros
// (to the rounding of dout·v − dout·out, ~1e-15).
void check_gradients(const Config& c, uint64_t seed) {
    SCOPED_TRACE(c.name());
    Rng rng(seed);
    Qkv x = random_qkv(c, rng);
    const double scale = 0.7 / std::sqrt(static_cast<double>(c.Dh));
    std::vector<double> probe = random_vector(rng, static_cast<size_t>(c.B * c.T * c.Hq * c.Dh));
    Grads<double> g = run_backward<double>(c, x, probe, scale);
    auto loss = [&] { return dot(run_forward<double>(c, x, scale).out, probe); };
    auto check = [&](const char* name, const std::vector<double>& analytic, std::vector<double>& input) {
        std::vector<double> numeric = numeric_gradient(input, loss);
        expect_gradient_close(name, analytic, numeric, 1e-6, 1e-2);
        std::printf("  %s: max relative error %.3g (floor 1e-2)\n", name,
                    mslm::test::max_relative_error(analytic, numeric, 1e-2));
    };
    if (c.window == 1 || c.T == 1) {
        EXPECT_LT(max_abs(g.dq), 1e-14);
        EXPECT_LT(max_abs(g.dk), 1e-14);
    } else {
        check("dq", g.dq, x.q);
        check("dk", g.dk, x.k);
    }
    check("dv", g.dv, x.v);
}

}  // namespace

TEST(Attention, GradientMha) {
    check_gradients({2, 70, 2, 2, 4}, 10);
}
TEST(Attention, GradientGqa) {
    check_gradients({1, 70, 6, 2, 4}, 11);
}
TEST(Attention, GradientMqa) {
    check_gradients({1, 70, 6, 1, 4}, 12);
}
TEST(Attention, GradientAlibi) {
    check_gradients({1, 70, 4, 2, 4, 0, true}, 13);
}
TEST(Attention, GradientWindowOne) {
    check_gradients({1, 70, 2, 1, 4, 1}, 14);
}
TEST(Attention, GradientWindowThree) {
    check_gradients({1, 70, 2, 1, 4, 3, true}, 15);
}
TEST(Attention, GradientWindowAcrossTiles) {
    check_gradients({1, 130, 2, 1, 4, 70}, 16);
}
TEST(Attention, GradientWindowBeyondLength) {
    check_gradients({1, 70, 2, 1, 4, 500}, 17);
}
TEST(Attention, GradientStridedShortSequences) {
    check_gradients({2, 7, 4, 2, 4, 0, false, 3}, 18);
    check_gradients({3, 1, 2, 1, 4, 0, true, 1}, 19);
}

// For the wide heads full finite differences would take minutes; instead the derivative of the loss
// along one random direction u (in q, k or v) by central differences against <grad, u>. A wrong
// gradient entry shows in the projection with probability 1. The projection is a sum of ~10^4
// terms of size ~0.1, about 10 in magnitude, against a difference error of ~1e-8 (|L| ≈ 250):
// 1e-7 relative.
TEST(Attention, GradientWideHeadsAlongRandomDirections) {
    Rng rng(40);
    for (const Config& c : wide_head_configs()) {
        SCOPED_TRACE(c.name());
        Qkv x = random_qkv(c, rng);
        const double scale = 1.0 / std::sqrt(static_cast<double>(c.Dh));
        std::vector<double> probe = random_vector(rng, static_cast<size_t>(c.B * c.T * c.Hq * c.Dh));
        Grads<double> g = run_backward<double>(c, x, probe, scale);
        for (auto [name, input, grad] :
             {std::tuple{"dq", &x.q, &g.dq}, std::tuple{"dk", &x.k, &g.dk}, std::tuple{"dv", &x.v, &g.dv}}) {
            const std::vector<double> base = *input;
            const std::vector<double> u = random_vector(rng, base.size());
            std::vector<double> eps{0.0};
            auto loss = [&] {
                for (size_t i = 0; i < base.size(); ++i) (*input)[i] = base[i] + eps[0] * u[i];
                return dot(run_forward<double>(c, x, scale).out, probe);
            };
            const double numeric = numeric_gradient(eps, loss)[0];
            *input = base;
            const double analytic = dot(*grad, u);
            EXPECT_NEAR(analytic, numeric, 1e-7 * std::fabs(numeric)) << name;
            std::printf("  %s along u: %.4g, relative error %.3g\n", name, numeric,
                        std::fabs(analytic - numeric) / std::fabs(numeric));
            EXPECT_GT(std::fabs(numeric), 1.0) << name;
        }
    }
}

// The backward adds into dq, dk and dv and leaves the padding between rows alone.
TEST(Attention, BackwardAccumulates) {
    const Config c{1, 70, 4, 2, 8, 0, true, 2};
    Rng rng(20);
    Qkv x = random_qkv(c, rng);
    std::vector<double> dout = random_vector(rng, static_cast<size_t>(c.B * c.T * c.Hq * c.Dh));
    Grads<double> fresh = run_backward<double>(c, x, dout, 0.4);
    Grads<double> acc{random_vector(rng, x.q.size()), random_vector(rng, x.k.size()),
                      random_vector(rng, x.v.size())};
    const Grads<double> before = acc;
    Result<double> f = run_forward<double>(c, x, 0.4);
    attention_backward(acc.dq.data(), acc.dk.data(), acc.dv.data(), dout.data(), f.out.data(), f.lse.data(),
                       x.q.data(), c.ld_q(), x.k.data(), c.ld_kv(), x.v.data(), c.ld_kv(), c.dims(),
                       options<double>(c, 0.4));
    auto expect_sum = [](const std::vector<double>& got, const std::vector<double>& base,
                         const std::vector<double>& add) {
        for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], base[i] + add[i], 1e-12) << i;
    };
    expect_sum(acc.dq, before.dq, fresh.dq);
    expect_sum(acc.dk, before.dk, fresh.dk);
    expect_sum(acc.dv, before.dv, fresh.dv);
    for (int64_t r = 0; r < c.B * c.T; ++r)
        for (int64_t p = 0; p < c.pad; ++p)
            EXPECT_EQ(acc.dq[r * c.ld_q() + c.Hq * c.Dh + p], before.dq[r * c.ld_q() + c.Hq * c.Dh + p]);

    // Null gradient pointers are skipped.
    std::vector<double> dv_only(x.v.size(), 0.0);
    attention_backward<double>(nullptr, nullptr, dv_only.data(), dout.data(), f.out.data(), f.lse.data(),
                               x.q.data(), c.ld_q(), x.k.data(), c.ld_kv(), x.v.data(), c.ld_kv(), c.dims(),
                               options<double>(c, 0.4));
    EXPECT_EQ(dv_only, fresh.dv);
}

// accumulate = false writes the gradients over whatever the slices held (the same values as += onto
// zeros), and still leaves the padding between rows alone.
TEST(Attention, BackwardWritesWithoutAccumulate) {
    const Config c{2, 37, 4, 2, 8, 0, true, 3};
    Rng rng(21);
    Qkv x = random_qkv(c, rng);
    std::vector<double> dout = random_vector(rng, static_cast<size_t>(c.B * c.T * c.Hq * c.Dh));
    const Grads<double> fresh = run_backward<double>(c, x, dout, 0.4);
    Grads<double> got{random_vector(rng, x.q.size()), random_vector(rng, x.k.size()),
                      random_vector(rng, x.v.size())};
    const Grads<double> before = got;
    Result<double> f = run_forward<double>(c, x, 0.4);
    ops::AttentionOptions<double> opt = options<double>(c, 0.4);
    opt.accumulate = false;
    attention_backward(got.dq.data(), got.dk.data(), got.dv.data(), dout.data(), f.out.data(), f.lse.data(),
                       x.q.data(), c.ld_q(), x.k.data(), c.ld_kv(), x.v.data(), c.ld_kv(), c.dims(), opt);
    // Per row: the heads' columns are the fresh gradient's bits, the pad the old values.
    auto expect_written = [&](const std::vector<double>& g, const std::vector<double>& old,
                              const std::vector<double>& want, int64_t ld, int64_t width) {
        for (size_t i = 0; i < g.size(); ++i) {
            if (int64_t(i) % ld < width)
                ASSERT_EQ(g[i], want[i]) << i;
            else
                ASSERT_EQ(g[i], old[i]) << "pad " << i;
        }
    };
    expect_written(got.dq, before.dq, fresh.dq, c.ld_q(), c.Hq * c.Dh);
    expect_written(got.dk, before.dk, fresh.dk, c.ld_kv(), c.Hkv * c.Dh);
    expect_written(got.dv, before.dv, fresh.dv, c.ld_kv(), c.Hkv * c.Dh);
}

// fp32 gradients against double ones. Each gradient is a sum over up to T = 130 terms of products
// built from length-Dh dot products (s, dp, D) and exp(s − lse); every term carries a relative
// error ≲ (3 · Dh + 10) · u and the sum adds T · u, so relative to Σ|terms| the error is
// ≲ (3 · 16 + 10 + 130) · 6e-8 ≈ 1.1e-5. ds = p (dp − D) cancels, making Σ|terms| up to ~10× the
// largest gradient entry: 2e-4 relative to max(max|g|, 1) is the resulting bound. (Gradients
// that vanish in exact arithmetic, dq and dk when each query sees one key, are pure rounding
// residue of order Dh · u, measured against 1.)
TEST(Attention, FloatGradientsAgreeWithDouble) {
    Rng rng(21);
    double worst = 0;
    for (const Config& c : forward_configs()) {
        Qkv x = random_qkv(c, rng);
        const double scale = 1.0 / std::sqrt(static_cast<double>(c.Dh));
        std::vector<double> dout = random_vector(rng, static_cast<size_t>(c.B * c.T * c.Hq * c.Dh));
        Grads<double> ref = run_backward<double>(c, x, dout, scale);
        Grads<float> got = run_backward<float>(c, x, dout, scale);
        for (auto [name, a, b] : {std::tuple{"dq", &got.dq, &ref.dq}, std::tuple{"dk", &got.dk, &ref.dk},
                                  std::tuple{"dv", &got.dv, &ref.dv}}) {
            const double rel = max_abs_diff(to_double(*a), *b) / std::max(max_abs(*b), 1.0);
            EXPECT_LT(rel, 2e-4) << c.name() << " " << name;
            worst = std::max(worst, rel);
        }
    }
    std::printf("float vs double gradients: max error / max|g| %.3g\n", worst);
}

// Every task owns the rows it writes and sums in a fixed order, and with Dh = 16 each tile GEMM
// (64 × 64 × 16) is below OpenBLAS's threading threshold: results are bitwise the same for any
// thread count.
TEST(Attention, DeterministicAcrossThreadCounts) {
    const Config c{2, 130, 6, 2, 16, 70, true};
    Rng rng(22);
    Qkv x = random_qkv(c, rng);
    std::vector<double> dout = random_vector(rng, static_cast<size_t>(c.B * c.T * c.Hq * c.Dh));
    const int before = num_threads();
    set_num_threads(1);
    Result<float> f1 = run_forward<float>(c, x, 0.25);
    Grads<float> g1 = run_backward<float>(c, x, dout, 0.25);
    set_num_threads(3);
    Result<float> f3 = run_forward<float>(c, x, 0.25);
    Grads<float> g3 = run_backward<float>(c, x, dout, 0.25);
    set_num_threads(before);
    EXPECT_EQ(f1.out, f3.out);
    EXPECT_EQ(f1.lse, f3.lse);
    EXPECT_EQ(g1.dq, g3.dq);
    EXPECT_EQ(g1.dk, g3.dk);
    EXPECT_EQ(g1.dv, g3.dv);
}

TEST(Attention, RejectsBadShapes) {
    std::vector<float> buf(64);
    AttentionOptions<float> opt{1.0f};
    EXPECT_THROW(attention_forward(buf.data(), buf.data(), buf.data(), 12, buf.data(), 8, buf.data(), 8,
                                   AttentionDims{1, 1, 3, 2, 4}, opt),
                 Error);
    EXPECT_THROW(attention_forward(buf.data(), buf.data(), buf.data(), 7, buf.data(), 4, buf.data(), 4,
                                   AttentionDims{1, 1, 2, 1, 4}, opt),
                 Error);
    opt.window = -1;
    EXPECT_THROW(attention_forward(buf.data(), buf.data(), buf.data(), 8, buf.data(), 4, buf.data(), 4,
                                   AttentionDims{1, 1, 2, 1, 4}, opt),
                 Error);
}

// ---- Inference: a query offset (prefill after a cached prefix) and decoding from a ring cache ----

// Rows [t0, t0 + n) of each sequence of a (B, T, width) buffer with row stride ld, made contiguous
// with the same stride.
std::vector<double> rows_of(const std::vector<double>& x, int64_t B, int64_t T, int64_t ld, int64_t t0,
                            int64_t n) {
    std::vector<double> out;
    for (int64_t b = 0; b < B; ++b)
        out.insert(out.end(), x.begin() + (b * T + t0) * ld, x.begin() + (b * T + t0 + n) * ld);
    return out;
}

// Queries m.. against all T keys with q_offset = m give rows m.. of the full forward: the same
// tiles over the same keys, so in double the results agree to rounding (1e-12 as above).
TEST(Attention, QueryOffsetMatchesLaterRowsOfFullSequence) {
    Rng rng(40);
    const Config configs[] = {{2, 70, 4, 2, 8},
                              {1, 130, 6, 2, 16, 5, true},
                              {2, 20, 3, 1, 8, 70, false, 2},
                              {1, 9, 4, 4, 8, 3, true, 1}};
    for (const Config& c : configs) {
        Qkv x = random_qkv(c, rng);
        const double scale = 0.4;
        Result<double> full = run_forward<double>(c, x, scale);
        for (int64_t m : {int64_t(1), c.T / 2, c.T - 1}) {
            const int64_t n = c.T - m;
            std::vector<double> q = rows_of(x.q, c.B, c.T, c.ld_q(), m, n);
            std::vector<double> out(c.B * n * c.Hq * c.Dh), lse(c.B * c.Hq * n);
            AttentionOptions<double> opt = options<double>(c, scale);
            opt.q_offset = m;
            attention_forward(out.data(), lse.data(), q.data(), c.ld_q(), x.k.data(), c.ld_kv(), x.v.data(),
                              c.ld_kv(), AttentionDims{c.B, n, c.Hq, c.Hkv, c.Dh}, opt);
            EXPECT_LT(max_abs_diff(out, rows_of(full.out, c.B, c.T, c.Hq * c.Dh, m, n)), 1e-12)
                << c.name() << " m" << m;
            for (int64_t b = 0; b < c.B; ++b)
                for (int64_t h = 0; h < c.Hq; ++h)
                    for (int64_t i = 0; i < n; ++i)
                        EXPECT_NEAR(lse[(b * c.Hq + h) * n + i], full.lse[(b * c.Hq + h) * c.T + m + i],
                                    1e-12);
        }
    }
    std::vector<float> buf(64);
    AttentionOptions<float> opt{1.0f};
    opt.q_offset = 1;
    EXPECT_THROW(
        attention_backward(buf.data(), buf.data(), buf.data(), buf.data(), buf.data(), buf.data(), buf.data(),
                           4, buf.data(), 4, buf.data(), 4, AttentionDims{1, 2, 1, 1, 4}, opt),
        Error);
}

// Decoding token t of every sequence (its key and value written at ring row t % L of its slot
// first) gives row t of the forward: windows shorter than, equal to and longer than the ring,
// rings that wrap, GQA / MQA, ALiBi. A two-pass softmax against the online one: rounding only.
TEST(Attention, DecodeFromRingCacheMatchesForward) {
    Rng rng(41);
    struct DecodeCase {
        Config c;
        int64_t L;  // ring length: ≥ the window when there is one, else ≥ T
    };
    const DecodeCase cases[] = {{{2, 20, 4, 2, 8}, 20},
                                {{2, 20, 4, 2, 8, 5, true}, 5},
                                {{1, 30, 6, 1, 8, 3, false, 2}, 7},
                                {{3, 12, 3, 3, 4, 0, true}, 16},
                                {{1, 25, 8, 2, 16, 9, true}, 9}};
    for (const auto& [c, L] : cases) {
        Qkv x = random_qkv(c, rng);
        const double scale = 0.4;
        Result<double> full = run_forward<double>(c, x, scale);
        const int64_t S = 2 * c.B + 1, row = c.Hkv * c.Dh;
        std::vector<double> kc(S * L * row), vc(S * L * row), scores(c.B * c.Hq * L), out(c.B * c.Hq * c.Dh),
            q(c.B * c.ld_q());
        std::vector<int64_t> slots(c.B), pos(c.B);
        for (int64_t b = 0; b < c.B; ++b) slots[b] = S - 1 - 2 * b;
        for (int64_t t = 0; t < c.T; ++t) {
            for (int64_t b = 0; b < c.B; ++b) {
                pos[b] = t;
                const int64_t src = (b * c.T + t) * c.ld_kv(), dst = (slots[b] * L + t % L) * row;
                std::copy_n(x.k.begin() + src, row, kc.begin() + dst);
                std::copy_n(x.v.begin() + src, row, vc.begin() + dst);
                std::copy_n(x.q.begin() + (b * c.T + t) * c.ld_q(), c.ld_q(), q.begin() + b * c.ld_q());
            }
            attention_decode(out.data(), scores.data(), q.data(), c.ld_q(), kc.data(), vc.data(),
                             slots.data(), pos.data(), AttentionDims{c.B, L, c.Hq, c.Hkv, c.Dh},
                             options<double>(c, scale));
            EXPECT_LT(max_abs_diff(out, rows_of(full.out, c.B, c.T, c.Hq * c.Dh, t, 1)), 1e-12)
                << c.name() << " L" << L << " t" << t;
        }
    }
}

// rope_apply_at with explicit positions is rope_apply row by row, bit for bit.
TEST(Rope, AtPositionsMatchesBlockForm) {
    const int64_t N = 5, H = 3, Dh = 8, rd = 6, ld = H * Dh + 2;
    Rng rng(42);
    std::vector<double> x = random_vector(rng, static_cast<size_t>(N * ld));
    const int64_t pos[N] = {0, 17, 3, 3, 4000};
    std::vector<double> got = x;
    rope_apply_at(got.data(), ld, N, H, Dh, rd, 500.0, pos, false);
    for (int64_t r = 0; r < N; ++r) {
        std::vector<double> row(x.begin() + r * ld, x.begin() + (r + 1) * ld);
        rope_apply(row.data(), ld, 1, 1, H, Dh, rd, 500.0, pos[r], false);
        for (int64_t i = 0; i < ld; ++i) EXPECT_EQ(got[r * ld + i], row[i]);
    }
}

// ---- ALiBi slopes --------------------------------------------------------------------------------

TEST(Alibi, PowerOfTwoSlopesAreExact) {
    // 2^(−8 (i+1) / 8) = 2^−(i+1): exp2 of an integer is exact.
    std::vector<double> s = alibi_slopes(8);
    ASSERT_EQ(s.size(), 8u);
    for (int i = 0; i < 8; ++i) EXPECT_EQ(s[i], std::ldexp(1.0, -(i + 1))) << i;
    EXPECT_EQ(alibi_slopes(1), std::vector<double>{1.0 / 256});
    EXPECT_TRUE(alibi_slopes(0).empty());
}

TEST(Alibi, NonPowerOfTwoInterleaves) {
    // transformers' BLOOM build_alibi_tensor for 12 heads: the 8-head slopes, then 2^(−0.5 − k)
    // for k = 0..3 (every other slope of the 16-head sequence).
    const std::vector<double> expect = {0.5,
                                        0.25,
                                        0.125,
                                        0.0625,
                                        0.03125,
                                        0.015625,
                                        0.0078125,
                                        0.00390625,
                                        0.7071067811865476,
                                        0.35355339059327373,
                                        0.17677669529663687,
                                        0.08838834764831843};
    std::vector<double> s = alibi_slopes(12);
    ASSERT_EQ(s.size(), expect.size());
    // The reference values are printed to 17 significant digits: equal within a couple of ulps.
    for (size_t i = 0; i < s.size(); ++i) EXPECT_NEAR(s[i], expect[i], 4e-16 * expect[i]) << i;

    const std::vector<double> six = {0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125};
    std::vector<double> s6 = alibi_slopes(6);
    ASSERT_EQ(s6.size(), six.size());
    for (size_t i = 0; i < six.size(); ++i) EXPECT_EQ(s6[i], six[i]) << i;
}

// ---- Rotary embeddings ---------------------------------------------------------------------------

namespace {

template <typename T>
std::vector<T> rope_copy(std::vector<T> x, int64_t ld, int64_t B, int64_t Tn, int64_t H, int64_t Dh,
                         int64_t rd, double theta, int64_t pos0, bool inverse) {
    rope_apply(x.data(), ld, B, Tn, H, Dh, rd, theta, pos0, inverse);
    return x;
}

}  // namespace

// A rotation followed by its inverse: in double the error is a few ulps of |x| (c² + s² = 1 to
// 2ε, plus the rounding of two products and a sum per step); 1e-14 absolute for |x| ≲ 5.
// In fp32 the same argument gives a few u · |x| ≈ 1e-6.
TEST(Rope, InverseUndoesApply) {
    const int64_t B = 2, Tn = 37, H = 3, Dh = 16, ld = H * Dh + 5;
    Rng rng(30);
    std::vector<double> x = random_vector(rng, static_cast<size_t>(B * Tn * ld));
    std::vector<double> y = rope_copy(rope_copy(x, ld, B, Tn, H, Dh, 16, 10000.0, 11, false), ld, B, Tn, H,
                                      Dh, 16, 10000.0, 11, true);
    EXPECT_LT(max_abs_diff(x, y), 1e-14);
    std::vector<float> xf = cast<float>(x);
    std::vector<float> yf = rope_copy(rope_copy(xf, ld, B, Tn, H, Dh, 16, 10000.0, 11, false), ld, B, Tn, H,
                                      Dh, 16, 10000.0, 11, true);
    EXPECT_LT(max_abs_diff(to_double(xf), to_double(yf)), 2e-6);
    // The rotation changes the data (a vacuous identity would also pass the round trip).
    EXPECT_GT(max_abs_diff(x, rope_copy(x, ld, B, Tn, H, Dh, 16, 10000.0, 11, false)), 0.1);
}

// Each (i, i + r/2) pair keeps its length; in double to a few ulps of |pair|².
TEST(Rope, PreservesNorm) {
    const int64_t Tn = 50, H = 2, Dh = 8, rd = 8;
    Rng rng(31);
    std::vector<double> x = random_vector(rng, static_cast<size_t>(Tn * H * Dh));
    std::vector<double> y = rope_copy(x, H * Dh, 1, Tn, H, Dh, rd, 500.0, 3, false);
    for (int64_t r = 0; r < Tn * H; ++r) {
        for (int64_t i = 0; i < rd / 2; ++i) {
            const double* a = &x[r * Dh];
            const double* b = &y[r * Dh];
            const double n0 = a[i] * a[i] + a[i + rd / 2] * a[i + rd / 2];
            const double n1 = b[i] * b[i] + b[i + rd / 2] * b[i + rd / 2];
            EXPECT_NEAR(n0, n1, 1e-14 * std::max(1.0, n0));
        }
    }
}

// Partial rotary (rotary_dim < Dh) against the formula written out, HF rotate_half layout; the
// channels past rotary_dim and the row padding are untouched. Same operations in the same order,
// so agreement is to an ulp; 1e-13 allows for contraction into fused multiply-adds.
TEST(Rope, PartialRotaryMatchesFormula) {
    const int64_t B = 2, Tn = 9, H = 3, Dh = 10, rd = 6, ld = H * Dh + 2, pos0 = 1000;
    const double theta = 10000.0;
    Rng rng(32);
    std::vector<double> x = random_vector(rng, static_cast<size_t>(B * Tn * ld));
    std::vector<double> y = rope_copy(x, ld, B, Tn, H, Dh, rd, theta, pos0, false);
    for (int64_t b = 0; b < B; ++b) {
        for (int64_t t = 0; t < Tn; ++t) {
            const int64_t row = (b * Tn + t) * ld;
            for (int64_t h = 0; h < H; ++h) {
                const double* xi = &x[row + h * Dh];
                const double* yi = &y[row + h * Dh];
                for (int64_t i = 0; i < rd / 2; ++i) {
                    const double angle = static_cast<double>(pos0 + t) * std::pow(theta, -2.0 * i / rd);
                    const double c = std::cos(angle), s = std::sin(angle);
                    EXPECT_NEAR(yi[i], xi[i] * c - xi[i + rd / 2] * s, 1e-13);
                    EXPECT_NEAR(yi[i + rd / 2], xi[i + rd / 2] * c + xi[i] * s, 1e-13);
                }
                for (int64_t i = rd; i < Dh; ++i) EXPECT_EQ(yi[i], xi[i]);
            }
            for (int64_t p = H * Dh; p < ld; ++p) EXPECT_EQ(y[row + p], x[row + p]);
        }
    }
}

// The point of RoPE: after rotation, q_m · k_n depends only on m − n. Shifting both positions by
// the same amount (up to 4096) leaves the dot product unchanged to the rounding of angles of size
// ≤ 5000 in double (≈ 5000 · ε ≈ 1e-12 rad) times |q||k| ≈ 16.
TEST(Rope, DotProductDependsOnlyOnRelativePosition) {
    const int64_t Dh = 16;
    Rng rng(33);
    std::vector<double> q = random_vector(rng, Dh), k = random_vector(rng, Dh);
    auto rotated_dot = [&](int64_t m, int64_t n) {
        return dot(rope_copy(q, Dh, 1, 1, 1, Dh, Dh, 10000.0, m, false),
                   rope_copy(k, Dh, 1, 1, 1, Dh, Dh, 10000.0, n, false));
    };
    for (int64_t delta : {0, 1, 5, 100}) {
        const double base = rotated_dot(delta, 0);
        for (int64_t shift : {1, 17, 300, 4096}) EXPECT_NEAR(rotated_dot(shift + delta, shift), base, 1e-10);
    }
    // And it does depend on the difference.
    EXPECT_GT(std::fabs(rotated_dot(1, 0) - rotated_dot(0, 0)), 1e-3);
}

// inverse is the transpose, hence the backward: <apply(x), y> = <x, inverse(y)> to rounding.
TEST(Rope, InverseIsTranspose) {
    const int64_t B = 1, Tn = 20, H = 2, Dh = 12, rd = 8;
    Rng rng(34);
    std::vector<double> x = random_vector(rng, static_cast<size_t>(B * Tn * H * Dh));
    std::vector<double> y = random_vector(rng, x.size());
    const double lhs = dot(rope_copy(x, H * Dh, B, Tn, H, Dh, rd, 10000.0, 7, false), y);
    const double rhs = dot(x, rope_copy(y, H * Dh, B, Tn, H, Dh, rd, 10000.0, 7, true));
    EXPECT_NEAR(lhs, rhs, 1e-12);
}

// Angles are formed in double, so at position ~4000 fp32 rope is still accurate to the rounding
// of cos, sin, two products and a sum, ≲ 3 u (|x_i| + |x_j|) ≈ 1e-6 for |x| ≲ 4; an fp32 angle
// would already be off by 4000 · u ≈ 2.4e-4 rad.
TEST(Rope, FloatAgreesWithDoubleAtLargePositions) {
    const int64_t Tn = 8, H = 2, Dh = 16;
    Rng rng(35);
    std::vector<double> x = random_vector(rng, static_cast<size_t>(Tn * H * Dh));
    std::vector<double> yd = rope_copy(x, H * Dh, 1, Tn, H, Dh, Dh, 10000.0, 4000, false);
    std::vector<float> yf = rope_copy(cast<float>(x), H * Dh, 1, Tn, H, Dh, Dh, 10000.0, 4000, false);
    EXPECT_LT(max_abs_diff(to_double(yf), yd), 3e-6);
}

TEST(Rope, RejectsBadRotaryDim) {
    std::vector<float> x(16);
    EXPECT_THROW(rope_apply(x.data(), 8, 1, 2, 1, 8, 7, 10000.0, 0, false), Error);
    EXPECT_THROW(rope_apply(x.data(), 8, 1, 2, 1, 8, 10, 10000.0, 0, false), Error);
    EXPECT_THROW(rope_apply(x.data(), 7, 1, 2, 1, 8, 8, 10000.0, 0, false), Error);
}
