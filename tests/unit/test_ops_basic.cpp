// Tests of the basic CPU ops: embedding, linear, the norms, the activations, SwiGLU and the fused
// cross-entropy. For every op: the forward against a naive formula written out here, every
// gradient against central differences in double (gradcheck.h, loss = dot(out, probe)), the fp32
// instantiation against the fp64 one, and the accumulate (+=) contract of the backward. Suites are
// named Basic* so that --gtest_filter='*Basic*' selects them all.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <numbers>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "core/thread_pool.h"
#include "gradcheck.h"
#include "ops/activation.h"
#include "ops/cross_entropy.h"
#include "ops/embedding.h"
#include "ops/linear.h"
#include "ops/norm.h"

using namespace mslm;
using namespace mslm::ops;

namespace {

using Vec = std::vector<double>;
using Outputs = std::vector<std::pair<std::string, Vec>>;  // named results of one run of an op

constexpr double kU = 0x1p-24;  // fp32 unit roundoff

// Gradient checks use gradcheck.h's 1e-6 relative tolerance. The numeric gradient carries an
// absolute rounding noise of about ε·|L|/h ≈ 2e-16 · 50 / 1e-5 = 1e-9 (|L| ≲ 50 at these sizes),
// so an entry near zero cannot meet 1e-6 relative to itself; with a floor of 1e-3, entries below
// 1e-3 are held to 1e-9 absolute instead, which still exposes any wrong term larger than that.
constexpr double kGradTol = 1e-6;
constexpr double kGradFloor = 1e-3;

// Naive formulas and the kernels compute the same fp64 values in different orders; they agree to
// a few ulps of the largest intermediate, far inside 1e-12 of the output scale.
constexpr double kNaiveTol = 1e-12;

// The accumulate tests compare base + fresh with a backward run on base: one extra fp64 rounding
// per entry (a few more where BLAS folds beta = 1 into its sums), so 1e-12 of the scale.
constexpr double kAccumulateTol = 1e-12;

// Inputs are drawn in fp64 and rounded to fp32, so the fp32-vs-fp64 comparisons feed both
// instantiations identical values and measure only the kernels' own arithmetic.
Vec randn(Rng& rng, size_t n, double scale = 1.0) {
    Vec v = test::random_vector(rng, n, scale);
    for (double& x : v) x = static_cast<float>(x);
    return v;
}

template <typename T>
std::vector<T> cast(const Vec& v) {
    return std::vector<T>(v.begin(), v.end());
}

template <typename T>
Vec widen(const std::vector<T>& v) {
    return Vec(v.begin(), v.end());
}

Vec add(const Vec& a, const Vec& b) {
    Vec s(a.size());
    for (size_t i = 0; i < a.size(); ++i) s[i] = a[i] + b[i];
    return s;
}

// Normwise comparison: max_i |got_i − want_i| ≤ tol · max_i |want_i|.
void expect_close(const std::string& name, const Vec& got, const Vec& want, double tol) {
    ASSERT_EQ(got.size(), want.size()) << name;
    double scale = 0, worst = 0;
    for (double v : want) scale = std::max(scale, std::fabs(v));
    for (size_t i = 0; i < want.size(); ++i) worst = std::max(worst, std::fabs(got[i] - want[i]));
    EXPECT_LE(worst, tol * scale) << name << ": max error " << worst << " against a scale of " << scale;
}

void expect_all_close(const Outputs& got, const Outputs& want, double tol) {
    ASSERT_EQ(got.size(), want.size());
    for (size_t k = 0; k < got.size(); ++k) expect_close(got[k].first, got[k].second, want[k].second, tol);
}

// d dot(forward(), probe) / d input by central differences, against the analytic gradient.
void check_gradient(const std::string& name, Vec& input, const Vec& analytic,
                    const std::function<Vec()>& forward, const Vec& probe) {
    Vec numeric = test::numeric_gradient(input, [&] { return test::dot(forward(), probe); });
    test::expect_gradient_close(name, analytic, numeric, kGradTol, kGradFloor);
}

// Runs `run` with 1 thread and with 3 threads and expects bitwise identical results: the kernels
// promise results independent of the thread count (GEMMs aside).
void expect_thread_count_invariant(const std::function<Outputs()>& run) {
    const int before = num_threads();
    set_num_threads(1);
    Outputs serial = run();
    set_num_threads(3);
    Outputs threaded = run();
    set_num_threads(before);
    ASSERT_EQ(serial.size(), threaded.size());
    for (size_t k = 0; k < serial.size(); ++k)
        EXPECT_TRUE(serial[k].second == threaded[k].second)
            << serial[k].first << " depends on the thread count";
}

// ---------------------------------------------------------------------------------------------
// Embedding

template <typename T>
Outputs run_embedding(const std::vector<int32_t>& ids, const Vec& table, const Vec& dout, int64_t V,
                      int64_t D) {
    const int64_t N = int64_t(ids.size());
    std::vector<T> t = cast<T>(table), g = cast<T>(dout), out(N * D), dtable(V * D, T(0));
    embedding_forward(out.data(), ids.data(), t.data(), N, V, D);
    embedding_backward(dtable.data(), g.data(), ids.data(), N, V, D);
    return {{"out", widen(out)}, {"dtable", widen(dtable)}};
}

TEST(BasicEmbedding, ForwardGathersRows) {
    Rng rng(1);
    const int64_t V = 11, D = 37;
    const std::vector<int32_t> ids = {3, 7, 3, 0, 10};
    Vec table = randn(rng, V * D), out(ids.size() * D);
    embedding_forward(out.data(), ids.data(), table.data(), int64_t(ids.size()), V, D);
    for (size_t n = 0; n < ids.size(); ++n)
        for (int64_t d = 0; d < D; ++d) EXPECT_EQ(out[n * D + d], table[ids[n] * D + d]);
}

TEST(BasicEmbedding, GradientMatchesFiniteDifferences) {
    Rng rng(2);
    const int64_t V = 11, D = 37, N = 5;
    const std::vector<int32_t> ids = {3, 7, 3, 0, 10};  // a repeated id exercises the scatter-add
    Vec table = randn(rng, V * D), probe = randn(rng, N * D), dtable(V * D, 0.0);
    auto forward = [&] {
        Vec out(N * D);
        embedding_forward(out.data(), ids.data(), table.data(), N, V, D);
        return out;
    };
    embedding_backward(dtable.data(), probe.data(), ids.data(), N, V, D);
    check_gradient("embedding dtable", table, dtable, forward, probe);
}

// The forward copies exactly. A dtable entry sums at most two fp32 values (id 3 occurs twice),
// which fp64 adds exactly and fp32 rounds once: relative error ≤ u per entry.
TEST(BasicEmbedding, FloatAgreesWithDouble) {
    Rng rng(3);
    const int64_t V = 11, D = 37;
    const std::vector<int32_t> ids = {3, 7, 3, 0, 10};
    Vec table = randn(rng, V * D), dout = randn(rng, ids.size() * D);
    expect_all_close(run_embedding<float>(ids, table, dout, V, D),
                     run_embedding<double>(ids, table, dout, V, D), kU);
}

TEST(BasicEmbedding, BackwardAccumulates) {
    Rng rng(4);
    const int64_t V = 11, D = 37, N = 5;
    const std::vector<int32_t> ids = {3, 7, 3, 0, 10};
    Vec dout = randn(rng, N * D), base = randn(rng, V * D), fresh(V * D, 0.0), acc = base;
    embedding_backward(fresh.data(), dout.data(), ids.data(), N, V, D);
    embedding_backward(acc.data(), dout.data(), ids.data(), N, V, D);
    expect_close("embedding dtable", acc, add(base, fresh), kAccumulateTol);
}

TEST(BasicEmbedding, BadIdThrows) {
    const int64_t V = 11, D = 37;
    Vec table(V * D, 1.0), out(2 * D), dtable(V * D, 0.0);
    for (int32_t bad : {-1, int32_t(V)}) {
        const std::vector<int32_t> ids = {2, bad};
        EXPECT_THROW(embedding_forward(out.data(), ids.data(), table.data(), 2, V, D), Error) << bad;
        EXPECT_THROW(embedding_backward(dtable.data(), out.data(), ids.data(), 2, V, D), Error) << bad;
    }
}

// ---------------------------------------------------------------------------------------------
// Linear

template <typename T>
Outputs run_linear(const Vec& x, const Vec& W, const Vec& b, const Vec& dout, int64_t N, int64_t I,
                   int64_t O) {
    std::vector<T> xt = cast<T>(x), Wt = cast<T>(W), bt = cast<T>(b), g = cast<T>(dout);
    std::vector<T> out(N * O), dx(N * I, T(0)), dW(O * I, T(0)), db(O, T(0));
    linear_forward(out.data(), xt.data(), Wt.data(), bt.data(), N, I, O);
    linear_backward(dx.data(), dW.data(), db.data(), g.data(), xt.data(), Wt.data(), N, I, O);
    return {{"out", widen(out)}, {"dx", widen(dx)}, {"dW", widen(dW)}, {"db", widen(db)}};
}

TEST(BasicLinear, ForwardMatchesNaiveFormula) {
    Rng rng(10);
    const int64_t N = 5, I = 13, O = 7;
    Vec x = randn(rng, N * I), W = randn(rng, O * I), b = randn(rng, O);
    Vec out(N * O), out_nobias(N * O), want(N * O), want_nobias(N * O);
    linear_forward(out.data(), x.data(), W.data(), b.data(), N, I, O);
    linear_forward(out_nobias.data(), x.data(), W.data(), static_cast<const double*>(nullptr), N, I, O);
    for (int64_t n = 0; n < N; ++n)
        for (int64_t o = 0; o < O; ++o) {
            double s = 0;
            for (int64_t i = 0; i < I; ++i) s += x[n * I + i] * W[o * I + i];
            want_nobias[n * O + o] = s;
            want[n * O + o] = s + b[o];
        }
    expect_close("linear out", out, want, kNaiveTol);
    expect_close("linear out without bias", out_nobias, want_nobias, kNaiveTol);
}

TEST(BasicLinear, GradientsMatchFiniteDifferences) {
    Rng rng(11);
    const int64_t N = 5, I = 13, O = 7;
    Vec x = randn(rng, N * I), W = randn(rng, O * I), b = randn(rng, O), probe = randn(rng, N * O);
    auto forward = [&] {
        Vec out(N * O);
        linear_forward(out.data(), x.data(), W.data(), b.data(), N, I, O);
        return out;
    };
    Vec dx(N * I, 0.0), dW(O * I, 0.0), db(O, 0.0);
    linear_backward(dx.data(), dW.data(), db.data(), probe.data(), x.data(), W.data(), N, I, O);
    check_gradient("linear dx", x, dx, forward, probe);
    check_gradient("linear dW", W, dW, forward, probe);
    check_gradient("linear db", b, db, forward, probe);
}

// Per entry, the textbook bound for a length-K dot product (plus one addition for the bias or the
// accumulation into zero): |fp32 − exact| ≤ γ_{K+1} · Σ|terms|, γ_k = k·u / (1 − k·u). BLAS
// blocking and FMAs only reorder or drop roundings, so the bound holds for OpenBLAS as well.
TEST(BasicLinear, FloatAgreesWithDouble) {
    Rng rng(12);
    const int64_t N = 5, I = 13, O = 7;
    Vec x = randn(rng, N * I), W = randn(rng, O * I), b = randn(rng, O), dout = randn(rng, N * O);
    Outputs f = run_linear<float>(x, W, b, dout, N, I, O), d = run_linear<double>(x, W, b, dout, N, I, O);
    auto gamma = [](int64_t k) { return k * kU / (1 - k * kU); };
    auto expect_within = [&](int which, int64_t rows, int64_t cols, int64_t K, auto abs_terms) {
        for (int64_t r = 0; r < rows; ++r)
            for (int64_t c = 0; c < cols; ++c) {
                double bound = gamma(K + 1) * abs_terms(r, c);
                EXPECT_LE(std::fabs(f[which].second[r * cols + c] - d[which].second[r * cols + c]), bound)
                    << f[which].first << " at (" << r << ", " << c << ")";
            }
    };
    expect_within(0, N, O, I, [&](int64_t n, int64_t o) {
        double s = std::fabs(b[o]);
        for (int64_t i = 0; i < I; ++i) s += std::fabs(x[n * I + i] * W[o * I + i]);
        return s;
    });
    expect_within(1, N, I, O, [&](int64_t n, int64_t i) {
        double s = 0;
        for (int64_t o = 0; o < O; ++o) s += std::fabs(dout[n * O + o] * W[o * I + i]);
        return s;
    });
    expect_within(2, O, I, N, [&](int64_t o, int64_t i) {
        double s = 0;
        for (int64_t n = 0; n < N; ++n) s += std::fabs(dout[n * O + o] * x[n * I + i]);
        return s;
    });
    expect_within(3, 1, O, N, [&](int64_t, int64_t o) {
        double s = 0;
        for (int64_t n = 0; n < N; ++n) s += std::fabs(dout[n * O + o]);
        return s;
    });
}

TEST(BasicLinear, BackwardAccumulatesAndSkipsNullGradients) {
    Rng rng(13);
    const int64_t N = 5, I = 13, O = 7;
    Vec x = randn(rng, N * I), W = randn(rng, O * I), dout = randn(rng, N * O);
    Vec dx0(N * I, 0.0), dW0(O * I, 0.0), db0(O, 0.0);
    linear_backward(dx0.data(), dW0.data(), db0.data(), dout.data(), x.data(), W.data(), N, I, O);
    Vec bx = randn(rng, N * I), bW = randn(rng, O * I), bb = randn(rng, O);
    Vec dx = bx, dW = bW, db = bb;
    linear_backward(dx.data(), dW.data(), db.data(), dout.data(), x.data(), W.data(), N, I, O);
    expect_close("linear dx", dx, add(bx, dx0), kAccumulateTol);
    expect_close("linear dW", dW, add(bW, dW0), kAccumulateTol);
    expect_close("linear db", db, add(bb, db0), kAccumulateTol);

    Vec only_db(O, 0.0);
    linear_backward(static_cast<double*>(nullptr), static_cast<double*>(nullptr), only_db.data(), dout.data(),
                    x.data(), W.data(), N, I, O);
    EXPECT_EQ(only_db, db0);
}

// ---------------------------------------------------------------------------------------------
// Norms
//
// fp32 tolerance for the norms, normwise. A row reduction of length D has relative error ≤ γ_D
// ≈ D·u on its sum of |terms|; about eight further roundings (mean, eps, sqrt, division, the
// products with w and rstd, the subtraction in the backward) add ~8u. The backward subtracts
// terms a few times larger than its result (g − x̂·mean(g·x̂)), so allow a factor 4:
// 4·(D + 8)·u, ≈ 1.1e-5 at D = 37. A wrong index or formula is off by O(1e-2) or more.
double norm_tol(int64_t D) {
    return 4.0 * double(D + 8) * kU;
}

const float kEpsF = 1e-5f;
const double kEps = kEpsF;  // the same value in both precisions

template <typename T>
Outputs run_rmsnorm(const Vec& x, const Vec& w, const Vec& dout, int64_t N, int64_t D) {
    std::vector<T> xt = cast<T>(x), wt = cast<T>(w), g = cast<T>(dout);
    std::vector<T> out(N * D), rstd(N), dx(N * D, T(0)), dw(D, T(0));
    rmsnorm_forward(out.data(), rstd.data(), xt.data(), wt.data(), N, D, T(kEps));
    rmsnorm_backward(dx.data(), dw.data(), g.data(), xt.data(), wt.data(), rstd.data(), N, D);
    return {{"out", widen(out)}, {"rstd", widen(rstd)}, {"dx", widen(dx)}, {"dw", widen(dw)}};
}

template <typename T>
Outputs run_layernorm(const Vec& x, const Vec& w, const Vec& b, const Vec& dout, int64_t N, int64_t D) {
    std::vector<T> xt = cast<T>(x), wt = cast<T>(w), bt = cast<T>(b), g = cast<T>(dout);
    std::vector<T> out(N * D), mean(N), rstd(N), dx(N * D, T(0)), dw(D, T(0)), db(D, T(0));
    layernorm_forward(out.data(), mean.data(), rstd.data(), xt.data(), wt.data(), bt.data(), N, D, T(kEps));
    layernorm_backward(dx.data(), dw.data(), db.data(), g.data(), xt.data(), wt.data(), mean.data(),
                       rstd.data(), N, D);
    return {{"out", widen(out)}, {"mean", widen(mean)}, {"rstd", widen(rstd)},
            {"dx", widen(dx)},   {"dw", widen(dw)},     {"db", widen(db)}};
}

template <typename T>
Outputs run_gated(const Vec& x, const Vec& z, const Vec& w, const Vec& dout, int64_t N, int64_t D,
                  int64_t G) {
    std::vector<T> xt = cast<T>(x), zt = cast<T>(z), wt = cast<T>(w), g = cast<T>(dout);
    std::vector<T> out(N * D), rstd(N * G), dx(N * D, T(0)), dz(N * D, T(0)), dw(D, T(0));
    gated_rmsnorm_forward(out.data(), rstd.data(), xt.data(), zt.data(), wt.data(), N, D, G, T(kEps));
    gated_rmsnorm_backward(dx.data(), dz.data(), dw.data(), g.data(), xt.data(), zt.data(), wt.data(),
                           rstd.data(), N, D, G);
    return {
        {"out", widen(out)}, {"rstd", widen(rstd)}, {"dx", widen(dx)}, {"dz", widen(dz)}, {"dw", widen(dw)}};
}

TEST(BasicNorm, RmsNormForwardMatchesNaiveFormula) {
    Rng rng(20);
    const int64_t N = 5, D = 37;
    Vec x = randn(rng, N * D), w = randn(rng, D), out(N * D), rstd(N), want(N * D), want_rstd(N);
    rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, D, kEps);
    for (int64_t n = 0; n < N; ++n) {
        double ss = 0;
        for (int64_t i = 0; i < D; ++i) ss += x[n * D + i] * x[n * D + i];
        want_rstd[n] = 1 / std::sqrt(ss / D + kEps);
        for (int64_t i = 0; i < D; ++i) want[n * D + i] = x[n * D + i] * want_rstd[n] * w[i];
    }
    expect_close("rmsnorm out", out, want, kNaiveTol);
    expect_close("rmsnorm rstd", rstd, want_rstd, kNaiveTol);
}

TEST(BasicNorm, RmsNormGradientsMatchFiniteDifferences) {
    Rng rng(21);
    const int64_t N = 5, D = 37;
    Vec x = randn(rng, N * D), w = randn(rng, D), probe = randn(rng, N * D);
    auto forward = [&] {
        Vec out(N * D), rstd(N);
        rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, D, kEps);
        return out;
    };
    Vec out(N * D), rstd(N), dx(N * D, 0.0), dw(D, 0.0);
    rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, D, kEps);
    rmsnorm_backward(dx.data(), dw.data(), probe.data(), x.data(), w.data(), rstd.data(), N, D);
    check_gradient("rmsnorm dx", x, dx, forward, probe);
    check_gradient("rmsnorm dw", w, dw, forward, probe);
}

TEST(BasicNorm, RmsNormFloatAgreesWithDouble) {
    Rng rng(22);
    const int64_t N = 5, D = 37;
    Vec x = randn(rng, N * D), w = randn(rng, D), dout = randn(rng, N * D);
    expect_all_close(run_rmsnorm<float>(x, w, dout, N, D), run_rmsnorm<double>(x, w, dout, N, D),
                     norm_tol(D));
}

TEST(BasicNorm, RmsNormBackwardAccumulates) {
    Rng rng(23);
    const int64_t N = 5, D = 37;
    Vec x = randn(rng, N * D), w = randn(rng, D), dout = randn(rng, N * D), out(N * D), rstd(N);
    rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, D, kEps);
    Vec dx0(N * D, 0.0), dw0(D, 0.0);
    rmsnorm_backward(dx0.data(), dw0.data(), dout.data(), x.data(), w.data(), rstd.data(), N, D);
    Vec bx = randn(rng, N * D), bw = randn(rng, D), dx = bx, dw = bw;
    rmsnorm_backward(dx.data(), dw.data(), dout.data(), x.data(), w.data(), rstd.data(), N, D);
    expect_close("rmsnorm dx", dx, add(bx, dx0), kAccumulateTol);
    expect_close("rmsnorm dw", dw, add(bw, dw0), kAccumulateTol);
}

TEST(BasicNorm, LayerNormForwardMatchesNaiveFormula) {
    Rng rng(30);
    const int64_t N = 5, D = 37;
    Vec x = randn(rng, N * D), w = randn(rng, D), b = randn(rng, D);
    Vec out(N * D), out_nobias(N * D), mean(N), rstd(N), want(N * D), want_nobias(N * D), want_mean(N),
        want_rstd(N);
    layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, D, kEps);
    layernorm_forward(out_nobias.data(), mean.data(), rstd.data(), x.data(), w.data(),
                      static_cast<const double*>(nullptr), N, D, kEps);
    for (int64_t n = 0; n < N; ++n) {
        double s = 0, ss = 0;
        for (int64_t i = 0; i < D; ++i) s += x[n * D + i];
        want_mean[n] = s / D;
        for (int64_t i = 0; i < D; ++i) ss += (x[n * D + i] - want_mean[n]) * (x[n * D + i] - want_mean[n]);
        want_rstd[n] = 1 / std::sqrt(ss / D + kEps);
        for (int64_t i = 0; i < D; ++i) {
            want_nobias[n * D + i] = (x[n * D + i] - want_mean[n]) * want_rstd[n] * w[i];
            want[n * D + i] = want_nobias[n * D + i] + b[i];
        }
    }
    expect_close("layernorm out", out, want, kNaiveTol);
    expect_close("layernorm out without bias", out_nobias, want_nobias, kNaiveTol);
    expect_close("layernorm mean", mean, want_mean, kNaiveTol);
    expect_close("layernorm rstd", rstd, want_rstd, kNaiveTol);
}

TEST(BasicNorm, LayerNormGradientsMatchFiniteDifferences) {
    Rng rng(31);
    const int64_t N = 5, D = 37;
    Vec x = randn(rng, N * D), w = randn(rng, D), b = randn(rng, D), probe = randn(rng, N * D);
    auto forward = [&] {
        Vec out(N * D), mean(N), rstd(N);
        layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, D, kEps);
        return out;
    };
    Vec out(N * D), mean(N), rstd(N), dx(N * D, 0.0), dw(D, 0.0), db(D, 0.0);
    layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, D, kEps);
    layernorm_backward(dx.data(), dw.data(), db.data(), probe.data(), x.data(), w.data(), mean.data(),
                       rstd.data(), N, D);
    check_gradient("layernorm dx", x, dx, forward, probe);
    check_gradient("layernorm dw", w, dw, forward, probe);
    check_gradient("layernorm db", b, db, forward, probe);
}

TEST(BasicNorm, LayerNormFloatAgreesWithDouble) {
    Rng rng(32);
    const int64_t N = 5, D = 37;
    Vec x = randn(rng, N * D), w = randn(rng, D), b = randn(rng, D), dout = randn(rng, N * D);
    expect_all_close(run_layernorm<float>(x, w, b, dout, N, D), run_layernorm<double>(x, w, b, dout, N, D),
                     norm_tol(D));
}

TEST(BasicNorm, LayerNormBackwardAccumulates) {
    Rng rng(33);
    const int64_t N = 5, D = 37;
    Vec x = randn(rng, N * D), w = randn(rng, D), b = randn(rng, D), dout = randn(rng, N * D);
    Vec out(N * D), mean(N), rstd(N);
    layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, D, kEps);
    Vec dx0(N * D, 0.0), dw0(D, 0.0), db0(D, 0.0);
    layernorm_backward(dx0.data(), dw0.data(), db0.data(), dout.data(), x.data(), w.data(), mean.data(),
                       rstd.data(), N, D);
    Vec bx = randn(rng, N * D), bw = randn(rng, D), bb = randn(rng, D), dx = bx, dw = bw, db = bb;
    layernorm_backward(dx.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(), mean.data(),
                       rstd.data(), N, D);
    expect_close("layernorm dx", dx, add(bx, dx0), kAccumulateTol);
    expect_close("layernorm dw", dw, add(bw, dw0), kAccumulateTol);
    expect_close("layernorm db", db, add(bb, db0), kAccumulateTol);
}

// G = 3 groups of 13 channels: a group boundary falls inside the column blocks of the dw sum.
TEST(BasicNorm, GatedRmsNormForwardMatchesNaiveFormula) {
    Rng rng(40);
    const int64_t N = 5, D = 39, G = 3, Dg = D / G;
    Vec x = randn(rng, N * D), z = randn(rng, N * D, 2.0), w = randn(rng, D);
    Vec out(N * D), rstd(N * G), want(N * D), want_rstd(N * G);
    gated_rmsnorm_forward(out.data(), rstd.data(), x.data(), z.data(), w.data(), N, D, G, kEps);
    for (int64_t n = 0; n < N; ++n)
        for (int64_t k = 0; k < G; ++k) {
            Vec g(Dg);
            double ss = 0;
            for (int64_t i = 0; i < Dg; ++i) {
                const int64_t j = n * D + k * Dg + i;
                g[i] = x[j] * z[j] / (1 + std::exp(-z[j]));
                ss += g[i] * g[i];
            }
            want_rstd[n * G + k] = 1 / std::sqrt(ss / Dg + kEps);
            for (int64_t i = 0; i < Dg; ++i)
                want[n * D + k * Dg + i] = g[i] * want_rstd[n * G + k] * w[k * Dg + i];
        }
    expect_close("gated rmsnorm out", out, want, kNaiveTol);
    expect_close("gated rmsnorm rstd", rstd, want_rstd, kNaiveTol);
}

TEST(BasicNorm, GatedRmsNormGradientsMatchFiniteDifferences) {
    Rng rng(41);
    const int64_t N = 5, D = 39, G = 3;
    Vec x = randn(rng, N * D), z = randn(rng, N * D, 2.0), w = randn(rng, D), probe = randn(rng, N * D);
    auto forward = [&] {
        Vec out(N * D), rstd(N * G);
        gated_rmsnorm_forward(out.data(), rstd.data(), x.data(), z.data(), w.data(), N, D, G, kEps);
        return out;
    };
    Vec out(N * D), rstd(N * G), dx(N * D, 0.0), dz(N * D, 0.0), dw(D, 0.0);
    gated_rmsnorm_forward(out.data(), rstd.data(), x.data(), z.data(), w.data(), N, D, G, kEps);
    gated_rmsnorm_backward(dx.data(), dz.data(), dw.data(), probe.data(), x.data(), z.data(), w.data(),
                           rstd.data(), N, D, G);
    check_gradient("gated rmsnorm dx", x, dx, forward, probe);
    check_gradient("gated rmsnorm dz", z, dz, forward, probe);
    check_gradient("gated rmsnorm dw", w, dw, forward, probe);
}

TEST(BasicNorm, GatedRmsNormFloatAgreesWithDouble) {
    Rng rng(42);
    const int64_t N = 5, D = 39, G = 3;
    Vec x = randn(rng, N * D), z = randn(rng, N * D, 2.0), w = randn(rng, D), dout = randn(rng, N * D);
    // The reductions run over D/G = 13 channels; silu adds an expf and two roundings, inside the
    // eight already allowed for.
    expect_all_close(run_gated<float>(x, z, w, dout, N, D, G), run_gated<double>(x, z, w, dout, N, D, G),
                     norm_tol(D / G));
}

TEST(BasicNorm, GatedRmsNormBackwardAccumulatesAndSkipsNullGradients) {
    Rng rng(43);
    const int64_t N = 5, D = 39, G = 3;
    Vec x = randn(rng, N * D), z = randn(rng, N * D, 2.0), w = randn(rng, D), dout = randn(rng, N * D);
    Vec out(N * D), rstd(N * G);
    gated_rmsnorm_forward(out.data(), rstd.data(), x.data(), z.data(), w.data(), N, D, G, kEps);
    Vec dx0(N * D, 0.0), dz0(N * D, 0.0), dw0(D, 0.0);
    gated_rmsnorm_backward(dx0.data(), dz0.data(), dw0.data(), dout.data(), x.data(), z.data(), w.data(),
                           rstd.data(), N, D, G);
    Vec bx = randn(rng, N * D), bz = randn(rng, N * D), bw = randn(rng, D), dx = bx, dz = bz, dw = bw;
    gated_rmsnorm_backward(dx.data(), dz.data(), dw.data(), dout.data(), x.data(), z.data(), w.data(),
                           rstd.data(), N, D, G);
    expect_close("gated rmsnorm dx", dx, add(bx, dx0), kAccumulateTol);
    expect_close("gated rmsnorm dz", dz, add(bz, dz0), kAccumulateTol);
    expect_close("gated rmsnorm dw", dw, add(bw, dw0), kAccumulateTol);

    Vec only_dz(N * D, 0.0);
    gated_rmsnorm_backward(static_cast<double*>(nullptr), only_dz.data(), static_cast<double*>(nullptr),
                           dout.data(), x.data(), z.data(), w.data(), rstd.data(), N, D, G);
    EXPECT_EQ(only_dz, dz0);
}

TEST(BasicNorm, GatedRmsNormRejectsUnevenGroups) {
    Vec x(10, 1.0), out(10), rstd(6);
    EXPECT_THROW(gated_rmsnorm_forward(out.data(), rstd.data(), x.data(), x.data(), x.data(), 2, 5, 3, kEps),
                 Error);
}

// ---------------------------------------------------------------------------------------------
// Activations

struct Activation {
    const char* name;
    void (*forward)(double*, const double*, int64_t);
    void (*backward)(double*, const double*, const double*, int64_t);
    void (*forward_f)(float*, const float*, int64_t);
    void (*backward_f)(float*, const float*, const float*, int64_t);
    double (*naive)(double);
};

const Activation kActivations[] = {
    {"silu", silu_forward<double>, silu_backward<double>, silu_forward<float>, silu_backward<float>,
     [](double x) { return x / (1 + std::exp(-x)); }},
    {"gelu", gelu_forward<double>, gelu_backward<double>, gelu_forward<float>, gelu_backward<float>,
     [](double x) { return 0.5 * x * std::erfc(-x / std::sqrt(2.0)); }},
    {"gelu_tanh", gelu_tanh_forward<double>, gelu_tanh_backward<double>, gelu_tanh_forward<float>,
     gelu_tanh_backward<float>,
     [](double x) {
         return 0.5 * x * (1 + std::tanh(std::sqrt(2 / std::numbers::pi) * (x + 0.044715 * x * x * x)));
     }},
    {"softplus", softplus_forward<double>, softplus_backward<double>, softplus_forward<float>,
     softplus_backward<float>, [](double x) { return x > 20 ? x : std::log(1 + std::exp(x)); }},
};

template <typename T>
Outputs run_activation(const Activation& a, const Vec& x, const Vec& dout) {
    std::vector<T> xt = cast<T>(x), g = cast<T>(dout), out(x.size()), dx(x.size(), T(0));
    const int64_t n = int64_t(x.size());
    if constexpr (std::is_same_v<T, float>) {
        a.forward_f(out.data(), xt.data(), n);
        a.backward_f(dx.data(), g.data(), xt.data(), n);
    } else {
        a.forward(out.data(), xt.data(), n);
        a.backward(dx.data(), g.data(), xt.data(), n);
    }
    return {{std::string(a.name) + " out", widen(out)}, {std::string(a.name) + " dx", widen(dx)}};
}

// Inputs spread to ±8 (scale 3) so both tails and the bend are covered; the softplus threshold
// at 20 is out of reach here and has its own test.
constexpr double kActivationScale = 3.0;

TEST(BasicActivation, ForwardMatchesNaiveFormula) {
    Rng rng(50);
    Vec x = randn(rng, 101, kActivationScale);
    for (const Activation& a : kActivations) {
        Vec out(x.size()), want(x.size());
        a.forward(out.data(), x.data(), int64_t(x.size()));
        for (size_t i = 0; i < x.size(); ++i) want[i] = a.naive(x[i]);
        expect_close(std::string(a.name) + " out", out, want, kNaiveTol);
    }
}

TEST(BasicActivation, GradientsMatchFiniteDifferences) {
    Rng rng(51);
    Vec x = randn(rng, 61, kActivationScale), probe = randn(rng, 61);
    for (const Activation& a : kActivations) {
        auto forward = [&] {
            Vec out(x.size());
            a.forward(out.data(), x.data(), int64_t(x.size()));
            return out;
        };
        Vec dx(x.size(), 0.0);
        a.backward(dx.data(), probe.data(), x.data(), int64_t(x.size()));
        check_gradient(std::string(a.name) + " dx", x, dx, forward, probe);
    }
}

// Per entry: at most ~6 roundings plus one or two fp32 libm calls (expf, erff, tanhf, log1pf,
// each within 2 ulp in glibc), and the derivatives add two terms of similar size: ≲ 16u of the
// larger term, which is at most the output scale. 32u leaves a factor 2 for the exponent
// arguments' own rounding (|x| ≤ 8).
TEST(BasicActivation, FloatAgreesWithDouble) {
    Rng rng(52);
    Vec x = randn(rng, 101, kActivationScale), dout = randn(rng, 101);
    for (const Activation& a : kActivations)
        expect_all_close(run_activation<float>(a, x, dout), run_activation<double>(a, x, dout), 32 * kU);
}

TEST(BasicActivation, BackwardAccumulates) {
    Rng rng(53);
    Vec x = randn(rng, 61, kActivationScale), dout = randn(rng, 61), base = randn(rng, 61);
    for (const Activation& a : kActivations) {
        Vec fresh(x.size(), 0.0), acc = base;
        a.backward(fresh.data(), dout.data(), x.data(), int64_t(x.size()));
        a.backward(acc.data(), dout.data(), x.data(), int64_t(x.size()));
        expect_close(std::string(a.name) + " dx", acc, add(base, fresh), kAccumulateTol);
    }
}

// PyTorch: softplus(x) = x when x > 20, with gradient exactly 1; log1p(eˣ) and gradient
// eˣ / (1 + eˣ) otherwise, 20 itself included.
TEST(BasicActivation, SoftplusThresholdMatchesPyTorch) {
    const std::vector<float> x = {19.5f, 20.0f, 20.5f, 25.0f, 1000.0f, -30.0f, -1000.0f};
    std::vector<float> out(x.size()), dx(x.size(), 0.0f), ones(x.size(), 1.0f);
    softplus_forward(out.data(), x.data(), int64_t(x.size()));
    softplus_backward(dx.data(), ones.data(), x.data(), int64_t(x.size()));
    for (size_t i = 0; i < x.size(); ++i) {
        SCOPED_TRACE(x[i]);
        EXPECT_TRUE(std::isfinite(out[i]) && std::isfinite(dx[i]));
        if (x[i] > 20) {
            EXPECT_EQ(out[i], x[i]);
            EXPECT_EQ(dx[i], 1.0f);
        } else {
            EXPECT_EQ(out[i], std::log1p(std::exp(x[i])));
            float e = std::exp(x[i]);
            EXPECT_EQ(dx[i], e / (e + 1.0f));
        }
    }
}

// Inputs far in the tails (where eˣ overflows fp32) give the limits, not inf or NaN. At |x| ≥ 100
// every exact value lies within 100·e^-100 < 1e-41 of its limit (0 or x, gradient 0 or 1), so the
// fp32 result must be the limit up to its rounding, u·|limit|, or a denormal-sized 1e-40.
TEST(BasicActivation, LargeInputsStayFinite) {
    const std::vector<float> x = {-1000.0f, -100.0f, 100.0f, 1000.0f};
    std::vector<float> ones(x.size(), 1.0f);
    for (const Activation& a : kActivations) {
        std::vector<float> out(x.size()), dx(x.size(), 0.0f);
        a.forward_f(out.data(), x.data(), int64_t(x.size()));
        a.backward_f(dx.data(), ones.data(), x.data(), int64_t(x.size()));
        for (size_t i = 0; i < x.size(); ++i) {
            SCOPED_TRACE(std::string(a.name) + " at " + std::to_string(x[i]));
            const float limit = x[i] > 0 ? x[i] : 0.0f, slope = x[i] > 0 ? 1.0f : 0.0f;
            EXPECT_NEAR(out[i], limit, kU * std::fabs(limit) + 1e-40);
            EXPECT_NEAR(dx[i], slope, kU * slope + 1e-40);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// SwiGLU

template <typename T>
Outputs run_swiglu(const Vec& gate_up, const Vec& dout, int64_t N, int64_t F) {
    std::vector<T> gu = cast<T>(gate_up), g = cast<T>(dout), out(N * F), dgu(N * 2 * F, T(0));
    swiglu_forward(out.data(), gu.data(), N, F);
    swiglu_backward(dgu.data(), g.data(), gu.data(), N, F);
    return {{"swiglu out", widen(out)}, {"swiglu dgate_up", widen(dgu)}};
}

TEST(BasicSwiglu, ForwardMatchesNaiveFormula) {
    Rng rng(60);
    const int64_t N = 5, F = 37;
    Vec gu = randn(rng, N * 2 * F, 2.0), out(N * F), want(N * F);
    swiglu_forward(out.data(), gu.data(), N, F);
    for (int64_t n = 0; n < N; ++n)
        for (int64_t f = 0; f < F; ++f) {
            double gate = gu[n * 2 * F + f], up = gu[n * 2 * F + F + f];
            want[n * F + f] = gate / (1 + std::exp(-gate)) * up;
        }
    expect_close("swiglu out", out, want, kNaiveTol);
}

TEST(BasicSwiglu, GradientMatchesFiniteDifferences) {
    Rng rng(61);
    const int64_t N = 5, F = 37;
    Vec gu = randn(rng, N * 2 * F, 2.0), probe = randn(rng, N * F), dgu(N * 2 * F, 0.0);
    auto forward = [&] {
        Vec out(N * F);
        swiglu_forward(out.data(), gu.data(), N, F);
        return out;
    };
    swiglu_backward(dgu.data(), probe.data(), gu.data(), N, F);
    check_gradient("swiglu dgate_up", gu, dgu, forward, probe);
}

// As for silu (see BasicActivation.FloatAgreesWithDouble), with one more product: 32u.
TEST(BasicSwiglu, FloatAgreesWithDouble) {
    Rng rng(62);
    const int64_t N = 5, F = 37;
    Vec gu = randn(rng, N * 2 * F, 2.0), dout = randn(rng, N * F);
    expect_all_close(run_swiglu<float>(gu, dout, N, F), run_swiglu<double>(gu, dout, N, F), 32 * kU);
}

TEST(BasicSwiglu, BackwardAccumulates) {
    Rng rng(63);
    const int64_t N = 5, F = 37;
    Vec gu = randn(rng, N * 2 * F, 2.0), dout = randn(rng, N * F), base = randn(rng, N * 2 * F);
    Vec fresh(N * 2 * F, 0.0), acc = base;
    swiglu_backward(fresh.data(), dout.data(), gu.data(), N, F);
    swiglu_backward(acc.data(), dout.data(), gu.data(), N, F);
    expect_close("swiglu dgate_up", acc, add(base, fresh), kAccumulateTol);
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy

const std::vector<int32_t> kTargets = {4, kIgnoreIndex, 0, 22, 9, 4};  // N = 6 rows, V = 23
constexpr int64_t kVocab = 23;
constexpr double kDloss = 0.2;  // 1/count for the 5 rows that count, as a mean loss would pass

template <typename T>
Outputs run_cross_entropy(const Vec& logits, const std::vector<int32_t>& targets, int64_t V, double dloss) {
    const int64_t N = int64_t(targets.size());
    std::vector<T> lt = cast<T>(logits), losses(N), lse(N), dlogits(N * V);
    cross_entropy_forward(losses.data(), lse.data(), lt.data(), targets.data(), N, V);
    cross_entropy_backward(dlogits.data(), lt.data(), lse.data(), targets.data(), N, V, T(dloss));
    return {{"losses", widen(losses)}, {"lse", widen(lse)}, {"dlogits", widen(dlogits)}};
}

TEST(BasicCrossEntropy, ForwardMatchesNaiveFormula) {
    Rng rng(70);
    const int64_t N = int64_t(kTargets.size()), V = kVocab;
    Vec logits = randn(rng, N * V, 2.0), losses(N), lse(N), want(N, 0.0), want_lse(N);
    EXPECT_EQ(cross_entropy_forward(losses.data(), lse.data(), logits.data(), kTargets.data(), N, V), 5);
    for (int64_t n = 0; n < N; ++n) {
        double sum = 0;
        for (int64_t v = 0; v < V; ++v) sum += std::exp(logits[n * V + v]);
        want_lse[n] = std::log(sum);
        if (kTargets[n] != kIgnoreIndex) want[n] = -std::log(std::exp(logits[n * V + kTargets[n]]) / sum);
    }
    expect_close("cross-entropy losses", losses, want, kNaiveTol);
    expect_close("cross-entropy lse", lse, want_lse, kNaiveTol);
    EXPECT_EQ(losses[1], 0.0);
}

// The backward takes one scalar dloss for every row, so the probe is constant: the loss checked is
// dloss · Σ_n losses[n].
TEST(BasicCrossEntropy, GradientMatchesFiniteDifferences) {
    Rng rng(71);
    const int64_t N = int64_t(kTargets.size()), V = kVocab;
    Vec logits = randn(rng, N * V, 2.0), probe(N, kDloss), losses(N), lse(N), dlogits(N * V);
    auto forward = [&] {
        Vec l(N), s(N);
        cross_entropy_forward(l.data(), s.data(), logits.data(), kTargets.data(), N, V);
        return l;
    };
    cross_entropy_forward(losses.data(), lse.data(), logits.data(), kTargets.data(), N, V);
    cross_entropy_backward(dlogits.data(), logits.data(), lse.data(), kTargets.data(), N, V, kDloss);
    check_gradient("cross-entropy dlogits", logits, dlogits, forward, probe);
}

// fp32, normwise. logsumexp: V exponentials of values ≤ 0 (≤ 1 ulp each) summed, all positive,
// so relative error ≤ (V + 1)u on the sum and absolute ≤ (V + 2)u after the log, plus u·|lse|
// when adding the max; the loss adds u·|max − logit|. Its scale is ≥ 1 here. The gradient
// exp(logit − lse) inherits that absolute error in its exponent, plus ~|logit − lse|·u ≲ 10u for
// the subtraction and 1 ulp for expf; its scale is dloss. Together ≤ (V + 16)u: tolerance
// 2·(V + 16)·u ≈ 4.6e-6 at V = 23.
double cross_entropy_tol(int64_t V) {
    return 2.0 * double(V + 16) * kU;
}

TEST(BasicCrossEntropy, FloatAgreesWithDouble) {
    Rng rng(72);
    const int64_t N = int64_t(kTargets.size()), V = kVocab;
    Vec logits = randn(rng, N * V, 2.0);
    expect_all_close(run_cross_entropy<float>(logits, kTargets, V, kDloss),
                     run_cross_entropy<double>(logits, kTargets, V, kDloss), cross_entropy_tol(V));
}

// The backward writes rather than accumulates, also in place on the logits.
TEST(BasicCrossEntropy, BackwardWritesAndRunsInPlace) {
    Rng rng(73);
    const int64_t N = int64_t(kTargets.size()), V = kVocab;
    Vec logits = randn(rng, N * V, 2.0), losses(N), lse(N), fresh(N * V, 0.0);
    cross_entropy_forward(losses.data(), lse.data(), logits.data(), kTargets.data(), N, V);
    cross_entropy_backward(fresh.data(), logits.data(), lse.data(), kTargets.data(), N, V, kDloss);

    Vec dirty = randn(rng, N * V);
    cross_entropy_backward(dirty.data(), logits.data(), lse.data(), kTargets.data(), N, V, kDloss);
    EXPECT_EQ(dirty, fresh);

    Vec in_place = logits;
    cross_entropy_backward(in_place.data(), in_place.data(), lse.data(), kTargets.data(), N, V, kDloss);
    EXPECT_EQ(in_place, fresh);
    for (int64_t v = 0; v < V; ++v) EXPECT_EQ(fresh[1 * V + v], 0.0) << "ignored row";
}

TEST(BasicCrossEntropy, AllIgnoredRowsCountNothing) {
    Rng rng(74);
    const int64_t N = 3, V = kVocab;
    const std::vector<int32_t> targets(N, kIgnoreIndex);
    Vec logits = randn(rng, N * V), losses(N, 7.0), lse(N), dlogits = randn(rng, N * V);
    EXPECT_EQ(cross_entropy_forward(losses.data(), lse.data(), logits.data(), targets.data(), N, V), 0);
    EXPECT_EQ(losses, Vec(N, 0.0));
    for (double s : lse) EXPECT_TRUE(std::isfinite(s));
    cross_entropy_backward(dlogits.data(), logits.data(), lse.data(), targets.data(), N, V, 1.0);
    EXPECT_EQ(dlogits, Vec(N * V, 0.0));
}

// Logits of order 1e4 would overflow exp in any precision; the fused kernel only exponentiates
// values ≤ 0. The fp32 loss then matches the fp64 one within the same argued tolerance, now
// relative to losses of order 1e4 (u·|max − logit| dominates).
TEST(BasicCrossEntropy, HugeLogitsStayFinite) {
    Rng rng(75);
    const int64_t N = int64_t(kTargets.size()), V = kVocab;
    Vec logits = randn(rng, N * V, 1e4);
    Outputs f = run_cross_entropy<float>(logits, kTargets, V, kDloss);
    Outputs d = run_cross_entropy<double>(logits, kTargets, V, kDloss);
    for (const Outputs* run : {&f, &d})
        for (const auto& [name, values] : *run)
            for (double v : values) EXPECT_TRUE(std::isfinite(v)) << name;
    for (double loss : f[0].second) EXPECT_GE(loss, 0.0);
    expect_close("huge-logit losses", f[0].second, d[0].second, cross_entropy_tol(V));
    // Each fp64 gradient row is dloss · (softmax − onehot) and sums to 0 up to rounding: the exponent
    // logit − lse carries ~ε·|lse| absolute rounding (ε = 2^-52, |lse| ~ 1e4), which each
    // probability inherits relatively; V more roundings in the sum. Allow 4× that.
    const double eps = std::numeric_limits<double>::epsilon();
    for (int64_t n = 0; n < N; ++n) {
        double s = 0;
        for (int64_t v = 0; v < V; ++v) s += d[2].second[n * V + v];
        EXPECT_NEAR(s, 0.0, 4 * kDloss * eps * (std::fabs(d[1].second[n]) + V)) << "row " << n;
    }
}

TEST(BasicCrossEntropy, BadTargetThrows) {
    const int64_t N = 2, V = kVocab;
    Vec logits(N * V, 0.5), losses(N), lse(N), dlogits(N * V);
    for (int32_t bad : {-1, int32_t(V), -101}) {
        const std::vector<int32_t> targets = {3, bad};
        EXPECT_THROW(cross_entropy_forward(losses.data(), lse.data(), logits.data(), targets.data(), N, V),
                     Error)
            << bad;
        EXPECT_THROW(
            cross_entropy_backward(dlogits.data(), logits.data(), lse.data(), targets.data(), N, V, 1.0),
            Error)
            << bad;
    }
}

// ---------------------------------------------------------------------------------------------
// Threading: sizes large enough to split across threads (rows and columns both over the grain);
// every op but the GEMMs must give bitwise the same fp32 results for 1 and 3 threads.

TEST(BasicThreads, ResultsIndependentOfThreadCount) {
    Rng rng(80);
    const int64_t N = 300, D = 257, V = 50, G = 1;
    std::vector<int32_t> ids(N), targets(N);
    for (int64_t n = 0; n < N; ++n) {
        ids[n] = int32_t(rng.below(V));
        targets[n] = n % 7 == 0 ? kIgnoreIndex : int32_t(rng.below(D));
    }
    Vec x = randn(rng, N * D), z = randn(rng, N * D), w = randn(rng, D), b = randn(rng, D);
    Vec dout = randn(rng, N * D), table = randn(rng, V * D), gate_up = randn(rng, N * 2 * D);
    Vec W = randn(rng, D * D);
    expect_thread_count_invariant([&] { return run_embedding<float>(ids, table, dout, V, D); });
    expect_thread_count_invariant([&] { return run_rmsnorm<float>(x, w, dout, N, D); });
    expect_thread_count_invariant([&] { return run_layernorm<float>(x, w, b, dout, N, D); });
    expect_thread_count_invariant([&] { return run_gated<float>(x, z, w, dout, N, D, G); });
    expect_thread_count_invariant([&] { return run_gated<float>(x, z, w, dout, N, D - 2, 5); });
    expect_thread_count_invariant([&] { return run_swiglu<float>(gate_up, dout, N, D); });
    expect_thread_count_invariant([&] { return run_cross_entropy<float>(x, targets, D, 1.0 / N); });
    for (const Activation& a : kActivations)
        expect_thread_count_invariant([&] { return run_activation<float>(a, x, dout); });
    expect_thread_count_invariant([&] {
        std::vector<float> g = cast<float>(dout), db(D, 0.0f);
        linear_backward(static_cast<float*>(nullptr), static_cast<float*>(nullptr), db.data(), g.data(),
                        static_cast<const float*>(nullptr), static_cast<const float*>(nullptr), N, D, D);
        return Outputs{{"linear db", widen(db)}};
    });
}

}  // namespace
