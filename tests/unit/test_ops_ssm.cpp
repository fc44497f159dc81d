// Tests of the state-space kernels: causal depthwise conv1d, the Mamba-1 selective scan and the
// Mamba-2 SSD. Gradients are checked against central finite differences in double
// (gradcheck.h) with loss = dot(out, probe); forwards against naive loops written here.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/rng.h"
#include "core/thread_pool.h"
#include "gradcheck.h"
#include "ops/conv1d.h"
#include "ops/cpu/scalar_math.h"
#include "ops/selective_scan.h"
#include "ops/ssd.h"

using namespace mslm;
using namespace mslm::ops;
using mslm::test::dot;
using mslm::test::max_relative_error;
using mslm::test::numeric_gradient;
using mslm::test::random_uniform;
using mslm::test::random_vector;

namespace {

// Finite-difference tolerance. gradcheck.h's 1e-6 relative holds where |gradient| is large
// against the absolute noise of the central difference, ε·|L|/h + h²·|f'''|/6. Our losses are
// sums of ~100 O(1) terms (|L| ≲ 100, so 100·2.2e-16/1e-5 ≈ 2e-9) and the third derivatives go up
// to ~A³ ≈ 4e3 through exp(Δ·A) (1e-10/6 · 4e3 ≈ 7e-8 in the worst entry, far less typically):
// absolute noise up to ~1e-9 (1e-7 in the worst case). A floor of 1e-3 turns an absolute noise of
// 1e-9 into the 1e-6 relative budget; entries below it are compared in absolute terms at 1e-9.
// A wrong formula is off by O(1) relative.
constexpr double kGradTol = 1e-6;
constexpr double kGradFloor = 1e-3;

// Two double-precision algorithms for the same quantity (chunked vs sequential SSD, kernel vs
// naive loop) sum the same ≲ 10³ terms in different orders: each differs from the exact value by
// at most n·u·Σ|terms| (u = 1.1e-16, recursive summation), and Σ|terms| / max|y| stays below
// ~100 for these sizes, so 1e-11 relative to the largest output bounds the disagreement.
constexpr double kDoubleAlgoTol = 1e-11;

// fp32 vs fp64 on identical (fp32-representable) inputs. An output that accumulates n rounded
// products is off by at most about n·u·Σ|terms| with u = 2^-24 ≈ 6e-8; exp, softplus and the
// products of each term add a few u, which the factor 4 covers. Measured against max|y| this is
// loose by the ratio Σ|terms| / max|y| ~ √n for random signs, but typical rounding (√n·u·Σ|terms|)
// is ~√n below the bound, so the test still fails on a kernel that loses precision beyond the
// length of its sums (e.g. exp of a catastrophically cancelled difference).
double fp32_tolerance(double n_terms) {
    return 4.0 * n_terms * 5.96e-8;
}

template <typename T>
const T* opt(const std::vector<T>& v) {
    return v.empty() ? nullptr : v.data();
}

template <typename To, typename From>
std::vector<To> cast(const std::vector<From>& v) {
    return std::vector<To>(v.begin(), v.end());
}

// Rounds to the nearest float so that the float and double kernels see identical inputs.
void round_to_float(std::vector<double>& v) {
    for (double& x : v) x = static_cast<double>(static_cast<float>(x));
}

// max |a − ref| / max |ref|.
template <typename T>
double scaled_max_error(const std::vector<T>& a, const std::vector<double>& ref) {
    double diff = 0, scale = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
        diff = std::max(diff, std::fabs(static_cast<double>(a[i]) - ref[i]));
        scale = std::max(scale, std::fabs(ref[i]));
    }
    return diff / scale;
}

// Measured errors go to the test report (--gtest_output=xml) as properties.
void record(const std::string& key, double value) {
    char text[32];
    std::snprintf(text, sizeof text, "%.3g", value);
    ::testing::Test::RecordProperty(key, text);
}

void check_gradient(const std::string& name, const std::vector<double>& analytic,
                    const std::vector<double>& numeric) {
    record("fd_" + name, max_relative_error(analytic, numeric, kGradFloor));
    mslm::test::expect_gradient_close(name, analytic, numeric, kGradTol, kGradFloor);
}

// A gradient buffer pre-filled with random values: backward must add to it (+=), and must leave
// the padding of strided buffers alone (its numeric gradient is exactly zero).
struct GradBuffer {
    std::vector<double> initial, value;
    GradBuffer(Rng& rng, size_t n) : initial(random_vector(rng, n)), value(initial) {}
    double* ptr() { return value.empty() ? nullptr : value.data(); }
    std::vector<double> added() const {
        std::vector<double> d(value.size());
        for (size_t i = 0; i < d.size(); ++i) d[i] = value[i] - initial[i];
        return d;
    }
};

// softplus⁻¹(y) = log(expm1(y))
double inv_softplus(double y) {
    return std::log(std::expm1(y));
}

// Raw Δ (dt) values and their per-channel bias, as Mamba initialises and trains them: the bias is
// softplus⁻¹ of a log-uniform dt in [0.001, 0.1] (Mamba's dt_min, dt_max) and the raw values put
// softplus(raw + bias) log-uniform in [0.001, 0.5]. `ld` is the row stride; padding stays 0.
void make_dt(Rng& rng, int64_t rows, int64_t width, int64_t ld, bool with_bias, std::vector<double>& raw,
             std::vector<double>& bias) {
    bias.assign(width, 0.0);
    for (auto& b : bias) b = inv_softplus(std::exp(rng.uniform(std::log(0.001), std::log(0.1))));
    raw.assign(rows * ld, 0.0);
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < width; ++c)
            raw[r * ld + c] = inv_softplus(std::exp(rng.uniform(std::log(0.001), std::log(0.5)))) -
                              (with_bias ? bias[c] : 0.0);
    if (!with_bias) bias.clear();
}

// A_log = log(uniform(1, 16)): Mamba-2's A_init_range, and Mamba-1's 1..d_state with d_state 16.
std::vector<double> make_A_log(Rng& rng, size_t n) {
    std::vector<double> v = random_uniform(rng, n, 1.0, 16.0);
    for (double& x : v) x = std::log(x);
    return v;
}

// A strided (rows, width) buffer with row stride ld: random values in the first `width` columns,
// zeros in the padding.
std::vector<double> strided_random(Rng& rng, int64_t rows, int64_t width, int64_t ld, double scale = 1.0) {
    std::vector<double> v(rows * ld, 0.0);
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < width; ++c) v[r * ld + c] = scale * rng.normal();
    return v;
}

// Steps [t0, t0 + len) of every sequence of a (B, T, ·) buffer with row stride ld.
std::vector<double> slice_time(int64_t B, int64_t T, const std::vector<double>& v, int64_t ld, int64_t t0,
                               int64_t len) {
    std::vector<double> out;
    for (int64_t b = 0; b < B; ++b)
        out.insert(out.end(), v.begin() + (b * T + t0) * ld, v.begin() + (b * T + t0 + len) * ld);
    return out;
}

class ThreadCountGuard {
public:
    ThreadCountGuard() : saved_(num_threads()) {}
    ~ThreadCountGuard() { set_num_threads(saved_); }

private:
    int saved_;
};

double silu_ref(double v) {
    return v / (1.0 + std::exp(-v));
}
double softplus_ref(double v) {
    return v > 20.0 ? v : std::log1p(std::exp(v));
}

// ---------------------------------------------------------------------------------------------
// conv1d

struct ConvCase {
    int64_t B, T, C, K, ld;
    bool bias, silu;
};

template <typename T>
struct ConvData {
    ConvCase c;
    std::vector<T> x, w, bias;  // x (B, T, C) with row stride ld; w (C, K); bias (C) or empty

    std::vector<T> forward() const {
        std::vector<T> out(c.B * c.T * c.C);
        conv1d_causal_forward(out.data(), static_cast<T*>(nullptr), x.data(), c.ld, w.data(), opt(bias), c.B,
                              c.T, c.C, c.K, c.silu);
        return out;
    }
    template <typename To>
    ConvData<To> as() const {
        return {c, cast<To>(x), cast<To>(w), cast<To>(bias)};
    }
};

ConvData<double> make_conv(const ConvCase& c, uint64_t seed) {
    Rng rng(seed);
    ConvData<double> d{c, strided_random(rng, c.B * c.T, c.C, c.ld), random_vector(rng, c.C * c.K, 0.5), {}};
    if (c.bias) d.bias = random_vector(rng, c.C, 0.5);
    return d;
}

std::string describe(const ConvCase& c) {
    return "B=" + std::to_string(c.B) + " T=" + std::to_string(c.T) + " C=" + std::to_string(c.C) +
           " K=" + std::to_string(c.K) + " ld=" + std::to_string(c.ld) + " bias=" + std::to_string(c.bias) +
           " silu=" + std::to_string(c.silu);
}

const ConvCase kConvCases[] = {
    {2, 7, 5, 4, 8, true, true},    // strided, everything on
    {2, 7, 5, 4, 8, false, true},   // no bias
    {2, 7, 5, 4, 5, true, false},   // contiguous, no SiLU
    {1, 3, 37, 4, 40, true, true},  // K > T; C spans two backward channel blocks (32 + 5)
    {2, 5, 3, 1, 3, false, false},  // K = 1: pointwise
};

TEST(Conv1dForward, MatchesNaiveLoop) {
    int case_index = 0;
    for (const ConvCase& c : kConvCases) {
        SCOPED_TRACE(describe(c));
        const std::string tag = "_case" + std::to_string(case_index++);
        ConvData<double> d = make_conv(c, 11);
        std::vector<double> out(c.B * c.T * c.C), pre(c.B * c.T * c.C, -7.0);
        conv1d_causal_forward(out.data(), pre.data(), d.x.data(), c.ld, d.w.data(), opt(d.bias), c.B, c.T,
                              c.C, c.K, c.silu);
        double worst = 0;
        for (int64_t b = 0; b < c.B; ++b)
            for (int64_t t = 0; t < c.T; ++t)
                for (int64_t ch = 0; ch < c.C; ++ch) {
                    double v = c.bias ? d.bias[ch] : 0.0;
                    for (int64_t k = 0; k < c.K; ++k) {
                        int64_t src = t - (c.K - 1) + k;
                        if (src >= 0) v += d.w[ch * c.K + k] * d.x[(b * c.T + src) * c.ld + ch];
                    }
                    const int64_t i = (b * c.T + t) * c.C + ch;
                    worst = std::max(worst, std::fabs(out[i] - (c.silu ? silu_ref(v) : v)));
                    // pre is written only when SiLU is fused
                    worst = std::max(worst, std::fabs(pre[i] - (c.silu ? v : -7.0)));
                }
        // Each output sums K + 1 O(1) terms in double.
        EXPECT_LT(worst, 1e-14);
        record("naive" + tag, worst);
    }
}

TEST(Conv1dBackward, MatchesFiniteDifferences) {
    int case_index = 0;
    for (const ConvCase& c : kConvCases) {
        SCOPED_TRACE(describe(c));
        const std::string tag = "_case" + std::to_string(case_index++);
        ConvData<double> d = make_conv(c, 12);
        Rng rng(13);
        const std::vector<double> probe = random_vector(rng, c.B * c.T * c.C);
        auto loss = [&] { return dot(d.forward(), probe); };
        GradBuffer dx(rng, d.x.size()), dw(rng, d.w.size()), dbias(rng, d.bias.size());
        conv1d_causal_backward(dx.ptr(), dw.ptr(), dbias.ptr(), probe.data(), d.x.data(), c.ld, d.w.data(),
                               opt(d.bias), c.B, c.T, c.C, c.K, c.silu);
        check_gradient("conv_dx" + tag, dx.added(), numeric_gradient(d.x, loss));
        check_gradient("conv_dw" + tag, dw.added(), numeric_gradient(d.w, loss));
        if (c.bias) check_gradient("conv_dbias" + tag, dbias.added(), numeric_gradient(d.bias, loss));
    }
}

TEST(Conv1dBackward, NullGradientsAreSkipped) {
    const ConvCase c{2, 6, 4, 4, 6, true, true};
    ConvData<double> d = make_conv(c, 14);
    Rng rng(15);
    const std::vector<double> probe = random_vector(rng, c.B * c.T * c.C);
    std::vector<double> dx(d.x.size()), dw_all(d.w.size()), dbias(c.C), dw_only(d.w.size());
    conv1d_causal_backward(dx.data(), dw_all.data(), dbias.data(), probe.data(), d.x.data(), c.ld, d.w.data(),
                           d.bias.data(), c.B, c.T, c.C, c.K, c.silu);
    conv1d_causal_backward<double>(nullptr, dw_only.data(), nullptr, probe.data(), d.x.data(), c.ld,
                                   d.w.data(), d.bias.data(), c.B, c.T, c.C, c.K, c.silu);
    EXPECT_EQ(dw_all, dw_only);
}

TEST(Conv1dForward, FloatMatchesDouble) {
    const ConvCase c{2, 33, 70, 4, 75, true, true};
    ConvData<double> d = make_conv(c, 16);
    round_to_float(d.x);
    round_to_float(d.w);
    round_to_float(d.bias);
    ConvData<float> f = d.as<float>();
    const double err = scaled_max_error(f.forward(), d.forward());
    record("fp32_forward", err);
    EXPECT_LT(err, fp32_tolerance(c.K + 2));

    // Backward: dw and dbias sum B·T terms; dx sums K.
    Rng rng(17);
    std::vector<double> probe = random_vector(rng, c.B * c.T * c.C);
    round_to_float(probe);
    const std::vector<float> probe_f = cast<float>(probe);
    std::vector<double> dx(d.x.size()), dw(d.w.size()), db(c.C);
    std::vector<float> dx_f(d.x.size()), dw_f(d.w.size()), db_f(c.C);
    conv1d_causal_backward(dx.data(), dw.data(), db.data(), probe.data(), d.x.data(), c.ld, d.w.data(),
                           d.bias.data(), c.B, c.T, c.C, c.K, c.silu);
    conv1d_causal_backward(dx_f.data(), dw_f.data(), db_f.data(), probe_f.data(), f.x.data(), c.ld,
                           f.w.data(), f.bias.data(), c.B, c.T, c.C, c.K, c.silu);
    const double tol = fp32_tolerance(c.B * c.T + 4);
    for (auto [name, e] :
         {std::pair{"dx", scaled_max_error(dx_f, dx)}, std::pair{"dw", scaled_max_error(dw_f, dw)},
          std::pair{"dbias", scaled_max_error(db_f, db)}}) {
        record(std::string("fp32_") + name, e);
        EXPECT_LT(e, tol) << name;
    }
}

TEST(Conv1dBackward, SameBitsForAnyThreadCount) {
    const ConvCase c{2, 17, 100, 4, 104, true, true};
    ConvData<double> d = make_conv(c, 18);
    Rng rng(19);
    const std::vector<double> probe = random_vector(rng, c.B * c.T * c.C);
    ThreadCountGuard guard;
    std::vector<std::vector<double>> results;
    for (int threads : {1, 3}) {
        set_num_threads(threads);
        std::vector<double> dx(d.x.size()), dw(d.w.size()), db(c.C);
        conv1d_causal_backward(dx.data(), dw.data(), db.data(), probe.data(), d.x.data(), c.ld, d.w.data(),
                               d.bias.data(), c.B, c.T, c.C, c.K, c.silu);
        dx.insert(dx.end(), dw.begin(), dw.end());
        dx.insert(dx.end(), db.begin(), db.end());
        const std::vector<double> out = d.forward();
        dx.insert(dx.end(), out.begin(), out.end());
        results.push_back(dx);
    }
    EXPECT_EQ(results[0], results[1]);
}

// ---------------------------------------------------------------------------------------------
// selective scan

struct ScanCase {
    int64_t B, T, Din, N, pad;  // pad: extra columns in each strided sequence input
    bool bias, D, z, h0;
};

std::string describe(const ScanCase& c) {
    return "B=" + std::to_string(c.B) + " T=" + std::to_string(c.T) + " Din=" + std::to_string(c.Din) +
           " N=" + std::to_string(c.N) + " pad=" + std::to_string(c.pad) + " bias=" + std::to_string(c.bias) +
           " D=" + std::to_string(c.D) + " z=" + std::to_string(c.z) + " h0=" + std::to_string(c.h0);
}

template <typename T>
struct ScanData {
    ScanDims dims{};
    int64_t ld_u = 0, ld_delta = 0, ld_B = 0, ld_C = 0, ld_z = 0;
    std::vector<T> u, delta, delta_bias, A_log, Bm, Cm, D, z, h0;  // empty = absent

    SelectiveScanInputs<T> inputs() const {
        return {.u = u.data(),
                .ld_u = ld_u,
                .delta = delta.data(),
                .ld_delta = ld_delta,
                .delta_bias = opt(delta_bias),
                .A_log = A_log.data(),
                .Bm = Bm.data(),
                .ld_B = ld_B,
                .Cm = Cm.data(),
                .ld_C = ld_C,
                .D = opt(D),
                .z = opt(z),
                .ld_z = ld_z};
    }
    std::vector<T> forward(std::vector<T>* h_last = nullptr) const {
        std::vector<T> y(dims.batch * dims.seqlen * dims.d_inner);
        if (h_last) h_last->assign(dims.batch * dims.d_inner * dims.d_state, T(0));
        selective_scan_forward(y.data(), h_last ? h_last->data() : nullptr, inputs(), opt(h0), dims);
        return y;
    }
    template <typename To>
    ScanData<To> as() const {
        ScanData<To> r;
        r.dims = dims;
        r.ld_u = ld_u, r.ld_delta = ld_delta, r.ld_B = ld_B, r.ld_C = ld_C, r.ld_z = ld_z;
        r.u = cast<To>(u), r.delta = cast<To>(delta), r.delta_bias = cast<To>(delta_bias);
        r.A_log = cast<To>(A_log), r.Bm = cast<To>(Bm), r.Cm = cast<To>(Cm), r.D = cast<To>(D);
        r.z = cast<To>(z), r.h0 = cast<To>(h0);
        return r;
    }
    void round_inputs_to_float() {
        for (auto* v : {&u, &delta, &delta_bias, &A_log, &Bm, &Cm, &D, &z, &h0}) round_to_float(*v);
    }
};

ScanData<double> make_scan(const ScanCase& c, uint64_t seed) {
    Rng rng(seed);
    ScanData<double> d;
    d.dims = {c.B, c.T, c.Din, c.N};
    const int64_t rows = c.B * c.T;
    d.ld_u = c.Din + c.pad, d.ld_delta = c.Din + 2 * c.pad, d.ld_z = c.Din + c.pad;
    d.ld_B = c.N + c.pad, d.ld_C = c.N + 3 * c.pad;
    d.u = strided_random(rng, rows, c.Din, d.ld_u);
    make_dt(rng, rows, c.Din, d.ld_delta, c.bias, d.delta, d.delta_bias);
    d.A_log = make_A_log(rng, c.Din * c.N);
    d.Bm = strided_random(rng, rows, c.N, d.ld_B);
    d.Cm = strided_random(rng, rows, c.N, d.ld_C);
    if (c.D) d.D = random_uniform(rng, c.Din, 0.5, 1.5);
    if (c.z) d.z = strided_random(rng, rows, c.Din, d.ld_z);
    if (c.h0) d.h0 = random_vector(rng, c.B * c.Din * c.N);
    return d;
}

// The recurrence spelled out with every state kept, (B, T, Din, N).
std::vector<double> scan_naive(const ScanData<double>& d, std::vector<double>* h_last) {
    const auto [Bn, Tn, Din, N] = d.dims;
    std::vector<double> hs(Bn * Tn * Din * N), y(Bn * Tn * Din);
    for (int64_t b = 0; b < Bn; ++b)
        for (int64_t t = 0; t < Tn; ++t)
            for (int64_t c = 0; c < Din; ++c) {
                const int64_t row = b * Tn + t;
                const double delta = softplus_ref(d.delta[row * d.ld_delta + c] +
                                                  (d.delta_bias.empty() ? 0.0 : d.delta_bias[c]));
                const double u = d.u[row * d.ld_u + c];
                double out = d.D.empty() ? 0.0 : d.D[c] * u;
                for (int64_t n = 0; n < N; ++n) {
                    const double prev = t > 0 ? hs[((row - 1) * Din + c) * N + n]
                                              : (d.h0.empty() ? 0.0 : d.h0[(b * Din + c) * N + n]);
                    const double A = -std::exp(d.A_log[c * N + n]);
                    double& h = hs[(row * Din + c) * N + n];
                    h = std::exp(delta * A) * prev + delta * d.Bm[row * d.ld_B + n] * u;
                    out += d.Cm[row * d.ld_C + n] * h;
                }
                if (!d.z.empty()) out *= silu_ref(d.z[row * d.ld_z + c]);
                y[row * Din + c] = out;
            }
    h_last->assign(Bn * Din * N, 0.0);
    for (int64_t b = 0; b < Bn; ++b)
        for (int64_t i = 0; i < Din * N; ++i)
            (*h_last)[b * Din * N + i] = hs[((b * Tn + Tn - 1) * Din) * N + i];
    return y;
}

const ScanCase kScanCases[] = {
    {2, 9, 5, 4, 3, true, true, true, true},      // everything on, strided
    {2, 9, 5, 4, 0, false, false, false, false},  // bare scan, contiguous
    {1, 8, 11, 3, 2, true, false, true, false},   // Din > 8: several channels per backward group
    {2, 6, 3, 5, 1, false, true, false, true},    // D and h0 without gate or bias
    {1, 1, 2, 2, 1, true, true, true, true},      // a single step
};

TEST(SelectiveScanForward, MatchesNaiveLoop) {
    int case_index = 0;
    for (const ScanCase& c : kScanCases) {
        SCOPED_TRACE(describe(c));
        const std::string tag = "_case" + std::to_string(case_index++);
        const ScanData<double> d = make_scan(c, 21);
        std::vector<double> h_last, h_last_ref;
        const std::vector<double> y = d.forward(&h_last);
        const std::vector<double> y_ref = scan_naive(d, &h_last_ref);
        // Same operations up to the order of the N-term sum and exp(Δ·A) rounding.
        const double ey = scaled_max_error(y, y_ref), eh = scaled_max_error(h_last, h_last_ref);
        EXPECT_LT(ey, kDoubleAlgoTol);
        EXPECT_LT(eh, kDoubleAlgoTol);
        record("naive_y" + tag, ey);
        record("naive_h_last" + tag, eh);
    }
}

// Above 20, softplus is the identity (PyTorch's threshold); log1p(exp(25)) would differ from 25 by
// 1.4e-11, i.e. ~2500 ulp, which EXPECT_DOUBLE_EQ (4 ulp) tells apart.
TEST(SelectiveScanForward, SoftplusIsIdentityAbove20) {
    ScanData<double> d = make_scan({1, 1, 1, 1, 0, false, false, false, false}, 22);
    d.delta = {25.0};
    const std::vector<double> y = d.forward();
    EXPECT_DOUBLE_EQ(y[0], d.Cm[0] * (25.0 * d.Bm[0] * d.u[0]));
}

TEST(SelectiveScanBackward, MatchesFiniteDifferences) {
    int case_index = 0;
    for (const ScanCase& c : kScanCases) {
        SCOPED_TRACE(describe(c));
        const std::string tag = "_case" + std::to_string(case_index++);
        ScanData<double> d = make_scan(c, 23);
        Rng rng(24);
        const std::vector<double> probe = random_vector(rng, c.B * c.T * c.Din);
        auto loss = [&] { return dot(d.forward(), probe); };
        GradBuffer du(rng, d.u.size()), ddelta(rng, d.delta.size()), dbias(rng, d.delta_bias.size()),
            dA_log(rng, d.A_log.size()), dB(rng, d.Bm.size()), dC(rng, d.Cm.size()), dD(rng, d.D.size()),
            dz(rng, d.z.size());
        selective_scan_backward<double>(
            {du.ptr(), ddelta.ptr(), dbias.ptr(), dA_log.ptr(), dB.ptr(), dC.ptr(), dD.ptr(), dz.ptr()},
            probe.data(), d.inputs(), opt(d.h0), d.dims);
        check_gradient("scan_du" + tag, du.added(), numeric_gradient(d.u, loss));
        check_gradient("scan_ddelta" + tag, ddelta.added(), numeric_gradient(d.delta, loss));
        check_gradient("scan_dA_log" + tag, dA_log.added(), numeric_gradient(d.A_log, loss));
        check_gradient("scan_dB" + tag, dB.added(), numeric_gradient(d.Bm, loss));
        check_gradient("scan_dC" + tag, dC.added(), numeric_gradient(d.Cm, loss));
        if (c.bias)
            check_gradient("scan_ddelta_bias" + tag, dbias.added(), numeric_gradient(d.delta_bias, loss));
        if (c.D) check_gradient("scan_dD" + tag, dD.added(), numeric_gradient(d.D, loss));
        if (c.z) check_gradient("scan_dz" + tag, dz.added(), numeric_gradient(d.z, loss));
    }
}

// Running the first half with h_last, then the second half from it, repeats the full run's
// operations on the same values: the outputs agree bit for bit.
TEST(SelectiveScanForward, StatePassingMatchesFullSequence) {
    const ScanCase c{2, 12, 5, 4, 2, true, true, true, true};
    const ScanData<double> full = make_scan(c, 25);
    std::vector<double> h_full;
    const std::vector<double> y_full = full.forward(&h_full);

    const int64_t T1 = 7, T2 = c.T - T1;
    auto part = [&](int64_t t0, int64_t len) {
        ScanData<double> d = full;
        d.dims.seqlen = len;
        d.u = slice_time(c.B, c.T, full.u, full.ld_u, t0, len);
        d.delta = slice_time(c.B, c.T, full.delta, full.ld_delta, t0, len);
        d.Bm = slice_time(c.B, c.T, full.Bm, full.ld_B, t0, len);
        d.Cm = slice_time(c.B, c.T, full.Cm, full.ld_C, t0, len);
        d.z = slice_time(c.B, c.T, full.z, full.ld_z, t0, len);
        return d;
    };
    ScanData<double> first = part(0, T1), second = part(T1, T2);
    std::vector<double> h_mid, h_end;
    const std::vector<double> y1 = first.forward(&h_mid);
    second.h0 = h_mid;
    const std::vector<double> y2 = second.forward(&h_end);
    EXPECT_EQ(slice_time(c.B, c.T, y_full, c.Din, 0, T1), y1);
    EXPECT_EQ(slice_time(c.B, c.T, y_full, c.Din, T1, T2), y2);
    EXPECT_EQ(h_full, h_end);
}

TEST(SelectiveScan, FloatMatchesDouble) {
    const ScanCase c{2, 64, 12, 16, 3, true, true, true, true};
    ScanData<double> d = make_scan(c, 26);
    d.round_inputs_to_float();
    const ScanData<float> f = d.as<float>();
    std::vector<double> h;
    std::vector<float> h_f;
    const std::vector<double> y = d.forward(&h);
    const std::vector<float> y_f = f.forward(&h_f);
    // Forward: y_t sums N terms of a state that went through T decay-and-add steps.
    const double fwd_tol = fp32_tolerance(c.T + c.N);
    record("fp32_y", scaled_max_error(y_f, y));
    record("fp32_h_last", scaled_max_error(h_f, h));
    EXPECT_LT(scaled_max_error(y_f, y), fwd_tol);
    EXPECT_LT(scaled_max_error(h_f, h), fwd_tol);

    Rng rng(27);
    std::vector<double> probe = random_vector(rng, c.B * c.T * c.Din);
    round_to_float(probe);
    const std::vector<float> probe_f = cast<float>(probe);
    ScanData<double> g;  // gradient buffers, zeroed, shaped like the inputs
    g = d;
    for (auto* v : {&g.u, &g.delta, &g.delta_bias, &g.A_log, &g.Bm, &g.Cm, &g.D, &g.z, &g.h0})
        std::fill(v->begin(), v->end(), 0.0);
    ScanData<float> g_f = g.as<float>();
    selective_scan_backward<double>({g.u.data(), g.delta.data(), g.delta_bias.data(), g.A_log.data(),
                                     g.Bm.data(), g.Cm.data(), g.D.data(), g.z.data()},
                                    probe.data(), d.inputs(), opt(d.h0), d.dims);
    selective_scan_backward<float>({g_f.u.data(), g_f.delta.data(), g_f.delta_bias.data(), g_f.A_log.data(),
                                    g_f.Bm.data(), g_f.Cm.data(), g_f.D.data(), g_f.z.data()},
                                   probe_f.data(), f.inputs(), opt(f.h0), f.dims);
    // Backward: the longest sums are dA_log, dD, ddelta_bias and dB/dC, over B·T steps of the
    // reverse recurrence (and Din channels for dB/dC), each step adding N terms.
    const double bwd_tol = fp32_tolerance(c.B * c.T * std::max(c.N, c.Din));
    const std::pair<const char*, double> errors[] = {
        {"du", scaled_max_error(g_f.u, g.u)},
        {"ddelta", scaled_max_error(g_f.delta, g.delta)},
        {"ddelta_bias", scaled_max_error(g_f.delta_bias, g.delta_bias)},
        {"dA_log", scaled_max_error(g_f.A_log, g.A_log)},
        {"dB", scaled_max_error(g_f.Bm, g.Bm)},
        {"dC", scaled_max_error(g_f.Cm, g.Cm)},
        {"dD", scaled_max_error(g_f.D, g.D)},
        {"dz", scaled_max_error(g_f.z, g.z)}};
    for (const auto& [name, e] : errors) {
        record(std::string("fp32_") + name, e);
        EXPECT_LT(e, bwd_tol) << name;
    }
}

TEST(SelectiveScanBackward, SameBitsForAnyThreadCount) {
    const ScanCase c{3, 10, 20, 4, 1, true, true, true, true};
    const ScanData<double> d = make_scan(c, 28);
    Rng rng(29);
    const std::vector<double> probe = random_vector(rng, c.B * c.T * c.Din);
    ThreadCountGuard guard;
    std::vector<std::vector<double>> results;
    for (int threads : {1, 3}) {
        set_num_threads(threads);
        ScanData<double> g = d;
        for (auto* v : {&g.u, &g.delta, &g.delta_bias, &g.A_log, &g.Bm, &g.Cm, &g.D, &g.z})
            std::fill(v->begin(), v->end(), 0.0);
        selective_scan_backward<double>({g.u.data(), g.delta.data(), g.delta_bias.data(), g.A_log.data(),
                                         g.Bm.data(), g.Cm.data(), g.D.data(), g.z.data()},
                                        probe.data(), d.inputs(), opt(d.h0), d.dims);
        std::vector<double> all = d.forward();
        for (auto* v : {&g.u, &g.delta, &g.delta_bias, &g.A_log, &g.Bm, &g.Cm, &g.D, &g.z})
            all.insert(all.end(), v->begin(), v->end());
        results.push_back(all);
    }
    EXPECT_EQ(results[0], results[1]);
}

// ---------------------------------------------------------------------------------------------
// SSD

struct SsdCase {
    int64_t B, T, H, P, G, N, Q, pad;
    bool bias, D, h0;
};

std::string describe(const SsdCase& c) {
    return "B=" + std::to_string(c.B) + " T=" + std::to_string(c.T) + " H=" + std::to_string(c.H) +
           " P=" + std::to_string(c.P) + " G=" + std::to_string(c.G) + " N=" + std::to_string(c.N) +
           " Q=" + std::to_string(c.Q) + " pad=" + std::to_string(c.pad) + " bias=" + std::to_string(c.bias) +
           " D=" + std::to_string(c.D) + " h0=" + std::to_string(c.h0);
}

template <typename T>
struct SsdData {
    SsdDims dims{};
    int64_t ld_x = 0, ld_dt = 0, ld_B = 0, ld_C = 0;
    std::vector<T> x, dt, dt_bias, A_log, Bm, Cm, D, h0;  // empty = absent

    SsdInputs<T> inputs() const {
        return {.x = x.data(),
                .ld_x = ld_x,
                .dt = dt.data(),
                .ld_dt = ld_dt,
                .dt_bias = opt(dt_bias),
                .A_log = A_log.data(),
                .Bm = Bm.data(),
                .ld_B = ld_B,
                .Cm = Cm.data(),
                .ld_C = ld_C,
                .D = opt(D)};
    }
    int64_t y_size() const { return dims.batch * dims.seqlen * dims.n_heads * dims.head_dim; }
    int64_t state_size() const { return dims.batch * dims.n_heads * dims.head_dim * dims.d_state; }
    std::vector<T> forward(std::vector<T>* h_last = nullptr, bool sequential = false) const {
        std::vector<T> y(y_size());
        if (h_last) h_last->assign(state_size(), T(0));
        auto fn = sequential ? ssd_forward_sequential<T> : ssd_forward<T>;
        fn(y.data(), h_last ? h_last->data() : nullptr, inputs(), opt(h0), dims);
        return y;
    }
    template <typename To>
    SsdData<To> as() const {
        SsdData<To> r;
        r.dims = dims;
        r.ld_x = ld_x, r.ld_dt = ld_dt, r.ld_B = ld_B, r.ld_C = ld_C;
        r.x = cast<To>(x), r.dt = cast<To>(dt), r.dt_bias = cast<To>(dt_bias), r.A_log = cast<To>(A_log);
        r.Bm = cast<To>(Bm), r.Cm = cast<To>(Cm), r.D = cast<To>(D), r.h0 = cast<To>(h0);
        return r;
    }
    std::vector<std::vector<T>*> fields() { return {&x, &dt, &dt_bias, &A_log, &Bm, &Cm, &D, &h0}; }
};

SsdData<double> make_ssd(const SsdCase& c, uint64_t seed) {
    Rng rng(seed);
    SsdData<double> d;
    d.dims = {c.B, c.T, c.H, c.P, c.G, c.N, c.Q};
    const int64_t rows = c.B * c.T;
    d.ld_x = c.H * c.P + c.pad, d.ld_dt = c.H + 2 * c.pad;
    d.ld_B = c.G * c.N + c.pad, d.ld_C = c.G * c.N + 3 * c.pad;
    d.x = strided_random(rng, rows, c.H * c.P, d.ld_x);
    make_dt(rng, rows, c.H, d.ld_dt, c.bias, d.dt, d.dt_bias);
    d.A_log = make_A_log(rng, c.H);
    d.Bm = strided_random(rng, rows, c.G * c.N, d.ld_B);
    d.Cm = strided_random(rng, rows, c.G * c.N, d.ld_C);
    if (c.D) d.D = random_uniform(rng, c.H, 0.5, 1.5);
    if (c.h0) d.h0 = random_vector(rng, c.B * c.H * c.P * c.N);
    return d;
}

// The quadratic ("attention-like") form of SSD, independent of both kernels:
//   y_t = Σ_{s ≤ t} (C_t · B_s) · exp(a_{s+1} + … + a_t) · dt_s · x_s + exp(a_0 + … + a_t) · h0 C_t + D x_t
std::vector<double> ssd_naive(const SsdData<double>& d, std::vector<double>* h_last) {
    const auto [Bn, Tn, H, P, G, N, Q] = d.dims;
    (void)Q;
    std::vector<double> y(d.y_size());
    h_last->assign(d.state_size(), 0.0);
    for (int64_t b = 0; b < Bn; ++b)
        for (int64_t h = 0; h < H; ++h) {
            const int64_t g = h / (H / G);
            const double A = -std::exp(d.A_log[h]);
            std::vector<double> dtv(Tn), a_sum(Tn + 1, 0.0);  // a_sum[t] = a_0 + … + a_{t−1}
            for (int64_t t = 0; t < Tn; ++t) {
                dtv[t] =
                    softplus_ref(d.dt[(b * Tn + t) * d.ld_dt + h] + (d.dt_bias.empty() ? 0.0 : d.dt_bias[h]));
                a_sum[t + 1] = a_sum[t] + dtv[t] * A;
            }
            auto xv = [&](int64_t t, int64_t p) { return d.x[(b * Tn + t) * d.ld_x + h * P + p]; };
            auto Bv = [&](int64_t t, int64_t n) { return d.Bm[(b * Tn + t) * d.ld_B + g * N + n]; };
            auto Cv = [&](int64_t t, int64_t n) { return d.Cm[(b * Tn + t) * d.ld_C + g * N + n]; };
            auto h0v = [&](int64_t p, int64_t n) {
                return d.h0.empty() ? 0.0 : d.h0[((b * H + h) * P + p) * N + n];
            };
            for (int64_t t = 0; t < Tn; ++t)
                for (int64_t p = 0; p < P; ++p) {
                    double acc = d.D.empty() ? 0.0 : d.D[h] * xv(t, p);
                    for (int64_t s = 0; s <= t; ++s) {
                        double cb = 0;
                        for (int64_t n = 0; n < N; ++n) cb += Cv(t, n) * Bv(s, n);
                        acc += cb * std::exp(a_sum[t + 1] - a_sum[s + 1]) * dtv[s] * xv(s, p);
                    }
                    for (int64_t n = 0; n < N; ++n) acc += std::exp(a_sum[t + 1]) * h0v(p, n) * Cv(t, n);
                    y[((b * Tn + t) * H + h) * P + p] = acc;
                }
            for (int64_t p = 0; p < P; ++p)
                for (int64_t n = 0; n < N; ++n) {
                    double s_pn = std::exp(a_sum[Tn]) * h0v(p, n);
                    for (int64_t s = 0; s < Tn; ++s)
                        s_pn += std::exp(a_sum[Tn] - a_sum[s + 1]) * dtv[s] * xv(s, p) * Bv(s, n);
                    (*h_last)[((b * H + h) * P + p) * N + n] = s_pn;
                }
        }
    return y;
}

const SsdCase kSsdCases[] = {
    {2, 11, 4, 3, 2, 4, 4, 2, true, true, true},     // T not a multiple of Q, G = 2, strided
    {1, 7, 2, 2, 1, 3, 16, 0, false, false, false},  // Q > T: one partial chunk, bare
    {2, 9, 6, 2, 2, 3, 3, 1, true, false, true},     // T a multiple of Q; 3 heads per group
    {1, 6, 10, 2, 1, 3, 4, 1, false, true, false},   // 10 heads in one group: 4 backward head sets
    {2, 5, 2, 3, 2, 2, 1, 1, true, true, true},      // Q = 1: every step its own chunk
};

// d's sequence decoded one token at a time with ssd_update: batch row b lives in state slot
// slots[b] of h (S, H, P, N), advanced in place. Returns y (B, T, H, P) as the forward lays it out.
template <typename T>
std::vector<T> ssd_steps(const SsdData<T>& d, std::vector<T>& h, const std::vector<int64_t>& slots) {
    const int64_t Bn = d.dims.batch, Tn = d.dims.seqlen, HP = d.dims.n_heads * d.dims.head_dim;
    std::vector<T> y(Bn * HP), got(d.y_size());
    SsdDims step_dims = d.dims;
    step_dims.seqlen = 1;
    for (int64_t t = 0; t < Tn; ++t) {
        // Row b of step t is token (b, t) of every sequence input: rows T·ld apart.
        SsdInputs<T> in = d.inputs();
        in.x += t * d.ld_x, in.ld_x *= Tn;
        in.dt += t * d.ld_dt, in.ld_dt *= Tn;
        in.Bm += t * d.ld_B, in.ld_B *= Tn;
        in.Cm += t * d.ld_C, in.ld_C *= Tn;
        ssd_update(y.data(), h.data(), slots.data(), in, step_dims);
        for (int64_t b = 0; b < Bn; ++b) std::copy_n(y.begin() + b * HP, HP, got.begin() + (b * Tn + t) * HP);
    }
    return got;
}

TEST(SsdForward, SequentialMatchesQuadraticForm) {
    int case_index = 0;
    for (const SsdCase& c : kSsdCases) {
        SCOPED_TRACE(describe(c));
        const std::string tag = "_case" + std::to_string(case_index++);
        const SsdData<double> d = make_ssd(c, 31);
        std::vector<double> h, h_ref;
        const std::vector<double> y = d.forward(&h, true);
        const std::vector<double> y_ref = ssd_naive(d, &h_ref);
        const double ey = scaled_max_error(y, y_ref), eh = scaled_max_error(h, h_ref);
        EXPECT_LT(ey, kDoubleAlgoTol);
        EXPECT_LT(eh, kDoubleAlgoTol);
        record("naive_y" + tag, ey);
        record("naive_h_last" + tag, eh);
    }
}

TEST(SsdForward, ChunkedMatchesSequential) {
    int case_index = 0;
    for (const SsdCase& base : kSsdCases) {
        const std::string tag = "_case" + std::to_string(case_index++);
        for (int64_t Q : {1, 3, 4, 8, 64}) {
            SsdCase c = base;
            c.Q = Q;
            SCOPED_TRACE(describe(c));
            const SsdData<double> d = make_ssd(c, 32);
            std::vector<double> h, h_seq;
            const std::vector<double> y = d.forward(&h);
            const std::vector<double> y_seq = d.forward(&h_seq, true);
            const double ey = scaled_max_error(y, y_seq), eh = scaled_max_error(h, h_seq);
            EXPECT_LT(ey, kDoubleAlgoTol);
            EXPECT_LT(eh, kDoubleAlgoTol);
            record("chunked_y" + tag + "_Q" + std::to_string(Q), ey);
            record("chunked_h_last" + tag + "_Q" + std::to_string(Q), eh);
        }
    }
}

TEST(SsdForward, SoftplusIsIdentityAbove20) {
    SsdData<double> d = make_ssd({1, 1, 1, 1, 1, 1, 4, 0, false, false, false}, 33);
    d.dt = {25.0};
    for (bool sequential : {false, true}) {
        const std::vector<double> y = d.forward(nullptr, sequential);
        EXPECT_DOUBLE_EQ(y[0], d.Cm[0] * (25.0 * d.x[0] * d.Bm[0]));
    }
}

TEST(SsdBackward, MatchesFiniteDifferences) {
    int case_index = 0;
    for (const SsdCase& c : kSsdCases) {
        SCOPED_TRACE(describe(c));
        const std::string tag = "_case" + std::to_string(case_index++);
        SsdData<double> d = make_ssd(c, 34);
        Rng rng(35);
        const std::vector<double> probe = random_vector(rng, d.y_size());
        auto loss = [&] { return dot(d.forward(), probe); };
        GradBuffer dx(rng, d.x.size()), ddt(rng, d.dt.size()), dbias(rng, d.dt_bias.size()),
            dA_log(rng, d.A_log.size()), dB(rng, d.Bm.size()), dC(rng, d.Cm.size()), dD(rng, d.D.size());
        ssd_backward<double>({dx.ptr(), ddt.ptr(), dbias.ptr(), dA_log.ptr(), dB.ptr(), dC.ptr(), dD.ptr()},
                             probe.data(), d.inputs(), opt(d.h0), d.dims);
        check_gradient("ssd_dx" + tag, dx.added(), numeric_gradient(d.x, loss));
        check_gradient("ssd_ddt" + tag, ddt.added(), numeric_gradient(d.dt, loss));
        check_gradient("ssd_dA_log" + tag, dA_log.added(), numeric_gradient(d.A_log, loss));
        check_gradient("ssd_dB" + tag, dB.added(), numeric_gradient(d.Bm, loss));
        check_gradient("ssd_dC" + tag, dC.added(), numeric_gradient(d.Cm, loss));
        if (c.bias) check_gradient("ssd_ddt_bias" + tag, dbias.added(), numeric_gradient(d.dt_bias, loss));
        if (c.D) check_gradient("ssd_dD" + tag, dD.added(), numeric_gradient(d.D, loss));
    }
}

// SsdGrads::overwrite: dx, ddt, dB, dC written over junk (the bits of += on zeros); the parameter
// gradients still added to.
TEST(SsdBackward, OverwriteIsAddToZeros) {
    SsdCase c{2, 13, 4, 3, 2, 4, 4, 1, true, true, true};
    const SsdData<double> d = make_ssd(c, 38);
    Rng rng(39);
    const std::vector<double> probe = random_vector(rng, d.y_size());
    std::vector<double> all[2];
    for (int ow = 0; ow < 2; ++ow) {
        SsdData<double> g = d;
        Rng junk(40);
        for (auto* v : g.fields())
            for (double& e : *v) e = junk.uniform(-1.0, 1.0);
        if (!ow) {  // zeros in the gradients' own columns (the padding past them keeps the junk)
            const int64_t H = c.H, rows = c.B * c.T;
            const int64_t GN = g.dims.n_groups * g.dims.d_state, HP = H * g.dims.head_dim;
            const struct {
                std::vector<double>* v;
                int64_t ld, width;
            } blocks[] = {{&g.x, g.ld_x, HP}, {&g.dt, g.ld_dt, H}, {&g.Bm, g.ld_B, GN}, {&g.Cm, g.ld_C, GN}};
            for (const auto& blk : blocks)
                for (int64_t r = 0; r < rows; ++r) std::fill_n(blk.v->begin() + r * blk.ld, blk.width, 0.0);
        }
        SsdGrads<double> grads{g.x.data(),  g.dt.data(), g.dt_bias.data(), g.A_log.data(),
                               g.Bm.data(), g.Cm.data(), g.D.data()};
        grads.overwrite = ow == 1;
        ssd_backward<double>(grads, probe.data(), d.inputs(), opt(d.h0), g.dims);
        for (auto* v : g.fields()) all[ow].insert(all[ow].end(), v->begin(), v->end());
    }
    EXPECT_EQ(all[1], all[0]);
}

// The backward's chunking is an implementation choice: gradients must not depend on it.
TEST(SsdBackward, IndependentOfChunkSize) {
    SsdCase c{2, 13, 4, 3, 2, 4, 4, 1, true, true, true};
    const SsdData<double> d = make_ssd(c, 36);
    Rng rng(37);
    const std::vector<double> probe = random_vector(rng, d.y_size());
    std::vector<std::vector<double>> results;
    for (int64_t Q : {1, 4, 5, 13, 100}) {
        SsdData<double> g = d;
        g.dims.chunk_size = Q;
        for (auto* v : g.fields()) std::fill(v->begin(), v->end(), 0.0);
        ssd_backward<double>(
            {g.x.data(), g.dt.data(), g.dt_bias.data(), g.A_log.data(), g.Bm.data(), g.Cm.data(), g.D.data()},
            probe.data(), d.inputs(), opt(d.h0), g.dims);
        std::vector<double> all;
        for (auto* v : g.fields()) all.insert(all.end(), v->begin(), v->end());
        results.push_back(all);
    }
    for (size_t i = 1; i < results.size(); ++i)
        EXPECT_LT(scaled_max_error(results[i], results[0]), kDoubleAlgoTol);
}

// First half with h_last, second half from it, against the full sequence. The split (7 of 16)
// falls inside a chunk (Q = 4), so the chunking differs and agreement is to rounding.
TEST(SsdForward, StatePassingMatchesFullSequence) {
    const SsdCase c{2, 16, 4, 3, 2, 4, 4, 2, true, true, true};
    const SsdData<double> full = make_ssd(c, 38);
    std::vector<double> h_full;
    const std::vector<double> y_full = full.forward(&h_full);

    auto part = [&](int64_t t0, int64_t len) {
        SsdData<double> d = full;
        d.dims.seqlen = len;
        d.x = slice_time(c.B, c.T, full.x, full.ld_x, t0, len);
        d.dt = slice_time(c.B, c.T, full.dt, full.ld_dt, t0, len);
        d.Bm = slice_time(c.B, c.T, full.Bm, full.ld_B, t0, len);
        d.Cm = slice_time(c.B, c.T, full.Cm, full.ld_C, t0, len);
        return d;
    };
    const int64_t T1 = 7, T2 = c.T - T1, ld_y = c.H * c.P;
    SsdData<double> first = part(0, T1), second = part(T1, T2);
    std::vector<double> h_mid, h_end;
    const std::vector<double> y1 = first.forward(&h_mid);
    second.h0 = h_mid;
    const std::vector<double> y2 = second.forward(&h_end);
    EXPECT_LT(scaled_max_error(y1, slice_time(c.B, c.T, y_full, ld_y, 0, T1)), kDoubleAlgoTol);
    EXPECT_LT(scaled_max_error(y2, slice_time(c.B, c.T, y_full, ld_y, T1, T2)), kDoubleAlgoTol);
    EXPECT_LT(scaled_max_error(h_end, h_full), kDoubleAlgoTol);
}

TEST(Ssd, FloatMatchesDouble) {
    // Realistic magnitudes at a small size: d_state 16, head_dim 8, chunk 16 over 50 steps.
    const SsdCase c{2, 50, 4, 8, 2, 16, 16, 3, true, true, true};
    SsdData<double> d = make_ssd(c, 39);
    for (auto* v : d.fields()) round_to_float(*v);
    const SsdData<float> f = d.as<float>();
    std::vector<double> h;
    std::vector<float> h_f;
    const std::vector<double> y = d.forward(&h);
    const std::vector<float> y_f = f.forward(&h_f);
    // Forward: y_t sums (t + 1)·N products from the chunk and the passed state, plus P for D.
    const double fwd_tol = fp32_tolerance(c.T * c.N + c.P);
    record("fp32_y", scaled_max_error(y_f, y));
    record("fp32_h_last", scaled_max_error(h_f, h));
    EXPECT_LT(scaled_max_error(y_f, y), fwd_tol);
    EXPECT_LT(scaled_max_error(h_f, h), fwd_tol);
    // The sequential reference in float, too.
    const std::vector<float> y_seq_f = f.forward(nullptr, true);
    record("fp32_y_sequential", scaled_max_error(y_seq_f, y));
    EXPECT_LT(scaled_max_error(y_seq_f, y), fwd_tol);

    Rng rng(40);
    std::vector<double> probe = random_vector(rng, d.y_size());
    round_to_float(probe);
    const std::vector<float> probe_f = cast<float>(probe);
    SsdData<double> g = d;
    for (auto* v : g.fields()) std::fill(v->begin(), v->end(), 0.0);
    SsdData<float> g_f = g.as<float>();
    ssd_backward<double>(
        {g.x.data(), g.dt.data(), g.dt_bias.data(), g.A_log.data(), g.Bm.data(), g.Cm.data(), g.D.data()},
        probe.data(), d.inputs(), opt(d.h0), d.dims);
    ssd_backward<float>({g_f.x.data(), g_f.dt.data(), g_f.dt_bias.data(), g_f.A_log.data(), g_f.Bm.data(),
                         g_f.Cm.data(), g_f.D.data()},
                        probe_f.data(), f.inputs(), opt(f.h0), f.dims);
    // Backward: the longest sums are the per-head dA_log, dt_bias and dD, over B·T steps each
    // gathering P·N terms (state and chunk products).
    const double bwd_tol = fp32_tolerance(c.B * c.T * c.P * c.N);
    const std::pair<const char*, double> errors[] = {{"dx", scaled_max_error(g_f.x, g.x)},
                                                     {"ddt", scaled_max_error(g_f.dt, g.dt)},
                                                     {"ddt_bias", scaled_max_error(g_f.dt_bias, g.dt_bias)},
                                                     {"dA_log", scaled_max_error(g_f.A_log, g.A_log)},
                                                     {"dB", scaled_max_error(g_f.Bm, g.Bm)},
                                                     {"dC", scaled_max_error(g_f.Cm, g.Cm)},
                                                     {"dD", scaled_max_error(g_f.D, g.D)}};
    for (const auto& [name, e] : errors) {
        record(std::string("fp32_") + name, e);
        EXPECT_LT(e, bwd_tol) << name;
    }
}

// The vectorised recurrence (ssd_forward_recurrent, and ssd_update's float path) against the double
// sequential reference, at d_state values the vector kernels take (multiples of 8 and 16) and one
// they do not (12: the scalar loop). Same bound as the chunked forward above: y_t sums (t + 1)·N
// products plus P. Then the decode steps against that prefill: one token's arithmetic does not
// depend on how tokens are grouped (blocks of 4 in prefill, 1 per step), so the bits are equal.
TEST(Ssd, RecurrentFloatMatchesDoubleAndSteps) {
    for (int64_t N : {8, 12, 16, 32}) {
        for (int64_t Tn : {1, 5, 13}) {
            const SsdCase c{2, Tn, 4, 8, 2, N, 16, 3, true, true, true};
            SCOPED_TRACE(describe(c));
            SsdData<double> d = make_ssd(c, 52);
            for (auto* v : d.fields()) round_to_float(*v);
            const SsdData<float> f = d.as<float>();
            std::vector<double> h;
            const std::vector<double> y = d.forward(&h, true);
            std::vector<float> y_f(f.y_size()), h_f(f.state_size());
            ssd_forward_recurrent(y_f.data(), h_f.data(), f.inputs(), f.h0.data(), f.dims);
            const double tol = fp32_tolerance(c.T * c.N + c.P);
            EXPECT_LT(scaled_max_error(y_f, y), tol);
            EXPECT_LT(scaled_max_error(h_f, h), tol);
            // In place, as prefill runs it.
            std::vector<float> h_in = f.h0, y_in(f.y_size());
            ssd_forward_recurrent(y_in.data(), h_in.data(), f.inputs(), h_in.data(), f.dims);
            EXPECT_EQ(y_in, y_f);
            EXPECT_EQ(h_in, h_f);
            // Decode steps, slot b = batch row b.
            std::vector<float> hs = f.h0;
            std::vector<int64_t> slots(c.B);
            for (int64_t b = 0; b < c.B; ++b) slots[b] = b;
            EXPECT_EQ(ssd_steps(f, hs, slots), y_f);
            EXPECT_EQ(hs, h_f);
        }
    }
}

// ssd_update_bf16_state against ssd_update (float, the same vector kernel width) on the same
// states, step by step from fp32 states equal to the bf16 ones: y bit for bit, every stored state
// f32_to_bf16 of the fp32 step's, the slots not decoded untouched (sequence b in slot 2b + 1 of
// 2B + 1). d_state 8, 16 and 32 (the AVX2 and AVX-512 kernels); 12 is refused.
TEST(SsdUpdateBf16State, StepIsTheF32StepWithTheStateRounded) {
    if (!ssd_update_bf16_state_supported(16)) GTEST_SKIP() << "no AVX2: the bf16-state kernel needs it";
    for (int64_t N : {8, 16, 32}) {
        const SsdCase c{3, 6, 4, 8, 2, N, 16, 3, true, true, false};
        SCOPED_TRACE(describe(c));
        SsdData<double> d = make_ssd(c, 77);
        for (auto* v : d.fields()) round_to_float(*v);
        const SsdData<float> f = d.as<float>();
        const int64_t Bn = c.B, S = 2 * Bn + 1, HPN = c.H * c.P * c.N, HP = c.H * c.P;
        std::vector<int64_t> slots(Bn);
        for (int64_t b = 0; b < Bn; ++b) slots[b] = 2 * b + 1;
        Rng rng(78);
        std::vector<uint16_t> h16(S * HPN);
        for (auto& v : h16) v = f32_to_bf16(static_cast<float>(rng.normal()));
        const std::vector<uint16_t> h16_0 = h16;
        SsdDims step_dims = f.dims;
        step_dims.seqlen = 1;
        for (int64_t t = 0; t < c.T; ++t) {
            SsdInputs<float> in = f.inputs();
            in.x += t * f.ld_x, in.ld_x *= c.T;
            in.dt += t * f.ld_dt, in.ld_dt *= c.T;
            in.Bm += t * f.ld_B, in.ld_B *= c.T;
            in.Cm += t * f.ld_C, in.ld_C *= c.T;
            std::vector<float> h32(h16.size());
            for (size_t i = 0; i < h16.size(); ++i) h32[i] = bf16_to_f32(h16[i]);
            std::vector<float> y32(Bn * HP), y16(Bn * HP);
            ssd_update(y32.data(), h32.data(), slots.data(), in, step_dims);
            ssd_update_bf16_state(y16.data(), h16.data(), slots.data(), in, step_dims);
            EXPECT_EQ(y16, y32) << "step " << t;
            std::vector<uint16_t> want(h32.size());
            for (size_t i = 0; i < want.size(); ++i) want[i] = f32_to_bf16(h32[i]);
            EXPECT_EQ(h16, want) << "step " << t;
        }
        for (int64_t s2 = 0; s2 < S; s2 += 2)  // the even slots hold no sequence
            EXPECT_TRUE(
                std::equal(h16.begin() + s2 * HPN, h16.begin() + (s2 + 1) * HPN, h16_0.begin() + s2 * HPN))
                << "slot " << s2;
    }
    EXPECT_FALSE(ssd_update_bf16_state_supported(12));
}

// Fixed task split and reduction order: the bits do not depend on the thread count. (These
// GEMMs are far below OpenBLAS's threading threshold, so they run single-threaded either way.)
TEST(SsdBackward, SameBitsForAnyThreadCount) {
    const SsdCase c{3, 13, 8, 3, 2, 4, 4, 1, true, true, true};
    const SsdData<double> d = make_ssd(c, 41);
    Rng rng(42);
    const std::vector<double> probe = random_vector(rng, d.y_size());
    ThreadCountGuard guard;
    std::vector<std::vector<double>> results;
    for (int threads : {1, 3}) {
        set_num_threads(threads);
        SsdData<double> g = d;
        for (auto* v : g.fields()) std::fill(v->begin(), v->end(), 0.0);
        ssd_backward<double>(
            {g.x.data(), g.dt.data(), g.dt_bias.data(), g.A_log.data(), g.Bm.data(), g.Cm.data(), g.D.data()},
            probe.data(), d.inputs(), opt(d.h0), d.dims);
        std::vector<double> all = d.forward();
        for (auto* v : g.fields()) all.insert(all.end(), v->begin(), v->end());
        results.push_back(all);
    }
    EXPECT_EQ(results[0], results[1]);
}

// ---------------------------------------------------------------------------------------------
// Decoding steps (the *_update ops): feeding a sequence one token at a time, with the sequences of
// a batch in scattered state slots, gives the forward's outputs and final state. Same arithmetic
// in the same order as the forward (conv, selective scan) or the sequential SSD, so they agree to
// a few ulps; kDoubleAlgoTol covers any contraction of a product into an FMA.

// Sequence b of a batch of B lives in state slot slot_of(b) of 2·B + 1 slots.
int64_t slot_of(int64_t b) {
    return 2 * b + 1;
}

TEST(Conv1dUpdate, StepsMatchForward) {
    for (const ConvCase& c : kConvCases) {
        const ConvData<double> d = make_conv(c, 41);
        const std::vector<double> want = d.forward();  // (B, T, C)
        const int64_t S = 2 * c.B + 1, K = c.K;
        std::vector<double> state(S * (K - 1) * c.C, 0.0), out(c.B * c.C), got(c.B * c.T * c.C);
        std::vector<int64_t> slots(c.B);
        for (int64_t b = 0; b < c.B; ++b) slots[b] = slot_of(b);
        for (int64_t t = 0; t < c.T; ++t) {
            // Row b of step t is x[b, t]: rows T·ld apart.
            conv1d_causal_update(out.data(), state.data(), slots.data(), d.x.data() + t * c.ld, c.T * c.ld,
                                 d.w.data(), opt(d.bias), c.B, c.C, K, c.silu);
            for (int64_t b = 0; b < c.B; ++b)
                std::copy_n(out.begin() + b * c.C, c.C, got.begin() + (b * c.T + t) * c.C);
        }
        EXPECT_LT(scaled_max_error(got, want), kDoubleAlgoTol) << describe(c);
        // The window holds the last K − 1 inputs, zeros before the sequence start.
        for (int64_t b = 0; b < c.B; ++b)
            for (int64_t j = 0; j < K - 1; ++j) {
                const int64_t t = c.T - (K - 1) + j;
                for (int64_t ch = 0; ch < c.C; ++ch)
                    ASSERT_EQ(state[(slot_of(b) * (K - 1) + j) * c.C + ch],
                              t >= 0 ? d.x[(b * c.T + t) * c.ld + ch] : 0.0)
                        << describe(c);
            }
    }
}

// d's sequence decoded one token at a time with selective_scan_update: batch row b lives in state
// slot slots[b] of h (S, Din, N), advanced in place. Returns y (B, T, Din) as the forward lays it out.
template <typename T>
std::vector<T> scan_steps(const ScanData<T>& d, std::vector<T>& h, const std::vector<int64_t>& slots) {
    const int64_t Bn = d.dims.batch, Tn = d.dims.seqlen, Din = d.dims.d_inner;
    std::vector<T> y(Bn * Din), got(Bn * Tn * Din);
    for (int64_t t = 0; t < Tn; ++t) {
        // Row b of step t is token (b, t) of every sequence input: rows T·ld apart.
        SelectiveScanInputs<T> in = d.inputs();
        in.u += t * d.ld_u, in.ld_u *= Tn;
        in.delta += t * d.ld_delta, in.ld_delta *= Tn;
        in.Bm += t * d.ld_B, in.ld_B *= Tn;
        in.Cm += t * d.ld_C, in.ld_C *= Tn;
        if (in.z) in.z += t * d.ld_z, in.ld_z *= Tn;
        selective_scan_update(y.data(), h.data(), slots.data(), in, Bn, Din, d.dims.d_state);
        for (int64_t b = 0; b < Bn; ++b) std::copy_n(y.begin() + b * Din, Din, got.begin() + (b * Tn + t) * Din);
    }
    return got;
}

TEST(SelectiveScanUpdate, StepsMatchForward) {
    for (const ScanCase& c : kScanCases) {
        const ScanData<double> d = make_scan(c, 42);
        std::vector<double> h_want;
        const std::vector<double> want = d.forward(&h_want);  // (B, T, Din)
        const int64_t S = 2 * c.B + 1, Din = c.Din, N = c.N;
        std::vector<double> h(S * Din * N, 0.0);
        std::vector<int64_t> slots(c.B);
        for (int64_t b = 0; b < c.B; ++b) {
            slots[b] = slot_of(b);
            if (!d.h0.empty())
                std::copy_n(d.h0.begin() + b * Din * N, Din * N, h.begin() + slots[b] * Din * N);
        }
        EXPECT_LT(scaled_max_error(scan_steps(d, h, slots), want), kDoubleAlgoTol) << describe(c);
        std::vector<double> h_got;
        for (int64_t b = 0; b < c.B; ++b)
            h_got.insert(h_got.end(), h.begin() + slots[b] * Din * N, h.begin() + (slots[b] + 1) * Din * N);
        EXPECT_LT(scaled_max_error(h_got, h_want), kDoubleAlgoTol) << describe(c);
    }
}

TEST(SsdUpdate, StepsMatchForward) {
    for (const SsdCase& c : kSsdCases) {
        const SsdData<double> d = make_ssd(c, 43);
        std::vector<double> h_want;
        const std::vector<double> want = d.forward(&h_want, true);  // (B, T, H, P)
        const int64_t S = 2 * c.B + 1, HPN = c.H * c.P * c.N;
        std::vector<double> h(S * HPN, 0.0);
        std::vector<int64_t> slots(c.B);
        for (int64_t b = 0; b < c.B; ++b) {
            slots[b] = slot_of(b);
            if (!d.h0.empty()) std::copy_n(d.h0.begin() + b * HPN, HPN, h.begin() + slots[b] * HPN);
        }
        EXPECT_LT(scaled_max_error(ssd_steps(d, h, slots), want), kDoubleAlgoTol) << describe(c);
        std::vector<double> h_got;
        for (int64_t b = 0; b < c.B; ++b)
            h_got.insert(h_got.end(), h.begin() + slots[b] * HPN, h.begin() + (slots[b] + 1) * HPN);
        EXPECT_LT(scaled_max_error(h_got, h_want), kDoubleAlgoTol) << describe(c);
    }
}

// Prefill advances a slot's state in place: h_last may be h0.
TEST(SelectiveScanForward, StateInPlace) {
    const ScanCase c{2, 9, 5, 4, 3, true, true, true, true};
    const ScanData<double> d = make_scan(c, 44);
    std::vector<double> h_want;
    const std::vector<double> want = d.forward(&h_want);
    std::vector<double> h = d.h0, y(want.size());
    selective_scan_forward(y.data(), h.data(), d.inputs(), h.data(), d.dims);
    EXPECT_EQ(y, want);
    EXPECT_EQ(h, h_want);
}

TEST(SsdForward, StateInPlace) {
    const SsdCase c{2, 11, 4, 3, 2, 4, 4, 2, true, true, true};
    const SsdData<double> d = make_ssd(c, 45);
    std::vector<double> h_want;
    const std::vector<double> want = d.forward(&h_want);
    std::vector<double> h = d.h0, y(want.size());
    ssd_forward(y.data(), h.data(), d.inputs(), h.data(), d.dims);
    EXPECT_EQ(y, want);
    EXPECT_EQ(h, h_want);
}

// ---------------------------------------------------------------------------------------------
// Vectorised float math (ops/cpu/scalar_math.h, namespace vec) and the selective scan's float
// kernels. The AVX-512 and AVX2 code is compiled in through target attributes whatever the build's
// -march, and each is tested where the CPU runs it.

bool cpu_has_avx512() {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("fma");
}
bool cpu_has_avx2() {
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

enum class VecFn { ExpNonpositive, Exp, Softplus, Sigmoid };

template <class V>
[[gnu::always_inline]] inline void apply_vec_fn(VecFn fn, V& out, const V& x) {
    switch (fn) {
        case VecFn::ExpNonpositive:
            vec::exp_nonpositive(out, x);
            break;
        case VecFn::Exp:
            vec::exp(out, x);
            break;
        case VecFn::Softplus:
            vec::softplus(out, x);
            break;
        case VecFn::Sigmoid:
            vec::sigmoid(out, x);
            break;
    }
}

// out[i] = fn(x[i]) for i < n, n a multiple of the width.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma"))) void apply_avx512(VecFn fn, float* out,
                                                                                    const float* x,
                                                                                    size_t n) {
    for (size_t i = 0; i < n; i += 16) {
        vec::F<16> v, r{};
        vec::load(v, x + i);
        apply_vec_fn(fn, r, v);
        vec::store(out + i, r);
    }
}

__attribute__((target("avx2,fma"))) void apply_avx2(VecFn fn, float* out, const float* x, size_t n) {
    for (size_t i = 0; i < n; i += 8) {
        vec::F<8> v, r{};
        vec::load(v, x + i);
        apply_vec_fn(fn, r, v);
        vec::store(out + i, r);
    }
}

struct VecIsa {
    const char* name;
    bool available;
    void (*apply)(VecFn, float*, const float*, size_t);
};

std::vector<VecIsa> vec_isas() {
    return {{"avx512", cpu_has_avx512(), apply_avx512}, {"avx2", cpu_has_avx2(), apply_avx2}};
}

std::vector<float> apply(const VecIsa& isa, VecFn fn, std::vector<float> x) {
    const size_t n = x.size();
    x.resize((n + 15) / 16 * 16, 0.0f);
    std::vector<float> out(x.size());
    isa.apply(fn, out.data(), x.data(), x.size());
    out.resize(n);
    return out;
}

// Every stride-th float from lo up to hi (walking the floats in order, across 0 too).
std::vector<float> float_range(float lo, float hi, int64_t stride) {
    auto ordinal = [](float f) {
        int32_t i;
        std::memcpy(&i, &f, sizeof i);
        return i < 0 ? -static_cast<int64_t>(i & 0x7fffffff) : static_cast<int64_t>(i);
    };
    auto from_ordinal = [](int64_t o) {
        const int32_t i = o < 0 ? static_cast<int32_t>(-o) | INT32_MIN : static_cast<int32_t>(o);
        float f;
        std::memcpy(&f, &i, sizeof f);
        return f;
    };
    std::vector<float> v;
    for (int64_t o = ordinal(lo); o <= ordinal(hi); o += stride) v.push_back(from_ordinal(o));
    return v;
}

// |got − want| in units of the float ulp at want (2^(e − 23) for want in [2^e, 2^(e+1))).
double ulp_error(float got, double want) {
    int e;
    std::frexp(want, &e);
    return std::fabs(static_cast<double>(got) - want) / std::ldexp(1.0, e - 24);
}

template <class Ref>
double max_ulp_error(const std::vector<float>& x, const std::vector<float>& got, Ref ref) {
    double worst = 0;
    for (size_t i = 0; i < x.size(); ++i)
        worst = std::max(worst, ulp_error(got[i], ref(static_cast<double>(x[i]))));
    return worst;
}

// The exp error budget in ulps: 0.12 for the degree-7 Taylor polynomial, 0.5 for the rounding of
// Horner's last step, under 0.5 for the earlier steps (each scaled by |r| ≤ 0.35 on its way to the
// result), and next to nothing for the reduction (k·ln2_hi and x − k·ln2_hi exact) and for 2^k
// (exact): under 1.2, asserted with a margin as 1.5. (0.94 measured over every float in [−87.34, 0].)
constexpr double kExpUlps = 1.5;

TEST(VecMath, ExpNonpositive) {
    bool any = false;
    for (const VecIsa& isa : vec_isas()) {
        if (!isa.available) continue;
        any = true;
        SCOPED_TRACE(isa.name);
        // About a million floats spread over the normal range of e^x, x ≤ 0 (ln FLT_MIN = −87.34).
        const std::vector<float> x = float_range(-87.3365f, 0.0f, 1009);
        const double err =
            max_ulp_error(x, apply(isa, VecFn::ExpNonpositive, x), [](double v) { return std::exp(v); });
        record(std::string("exp_nonpositive_ulps_") + isa.name, err);
        EXPECT_LT(err, kExpUlps);

        const float inf = std::numeric_limits<float>::infinity();
        const std::vector<float> special = {0.0f,    -0.0f,  -87.7f, -88.0f,
                                            -100.0f, -1e30f, -inf,   std::numeric_limits<float>::quiet_NaN()};
        const std::vector<float> y = apply(isa, VecFn::ExpNonpositive, special);
        EXPECT_EQ(y[0], 1.0f);
        EXPECT_EQ(y[1], 1.0f);
        for (size_t i = 2; i < 7; ++i) EXPECT_EQ(y[i], 0.0f) << special[i];  // underflow: exactly 0
        EXPECT_TRUE(std::isnan(y[7]));
        // Between −87.68 and ln FLT_MIN: 0 or a subnormal, within FLT_MIN of e^x either way.
        const std::vector<float> band = float_range(-87.68f, -87.34f, 997);
        const std::vector<float> yb = apply(isa, VecFn::ExpNonpositive, band);
        for (size_t i = 0; i < band.size(); ++i)
            EXPECT_LT(std::fabs(yb[i] - std::exp(static_cast<double>(band[i]))), 1.2e-38) << band[i];
    }
    if (!any) GTEST_SKIP() << "no AVX2 or AVX-512 on this CPU";
}

TEST(VecMath, ExpAnySign) {
    bool any = false;
    for (const VecIsa& isa : vec_isas()) {
        if (!isa.available) continue;
        any = true;
        SCOPED_TRACE(isa.name);
        const std::vector<float> x = float_range(-87.3365f, 88.376f, 4001);
        const double err = max_ulp_error(x, apply(isa, VecFn::Exp, x), [](double v) { return std::exp(v); });
        record(std::string("exp_ulps_") + isa.name, err);
        EXPECT_LT(err, kExpUlps);
        const float inf = std::numeric_limits<float>::infinity();
        for (float big : apply(isa, VecFn::Exp, {88.4f, 89.0f, 1e30f, inf})) EXPECT_EQ(big, inf);
    }
    if (!any) GTEST_SKIP() << "no AVX2 or AVX-512 on this CPU";
}

// Relative error bounds, in ulps of the result (an error of q·2^-24 relative is at most q ulps).
// sigmoid: e = e^−|v| off by ≤ 1 ulp (2^-23 relative), then 1 + e, the division and e·s round once
// each: 2 + 3 = 5. softplus: e's 2^-23 reaches log1p(e) at most unscaled; 2 + e, the division, the
// series (0.24 truncation, ~1 rounding) and 2s·p add 4.24 (in 2^-24); the final max(v, 0) + log1p(e)
// sums two non-negative terms and rounds once: 2 + 4.24 + 1 ≈ 7.3.
constexpr double kSigmoidUlps = 5.0, kSoftplusUlps = 7.3;

TEST(VecMath, SoftplusAndSigmoid) {
    bool any = false;
    for (const VecIsa& isa : vec_isas()) {
        if (!isa.available) continue;
        any = true;
        SCOPED_TRACE(isa.name);
        const std::vector<float> xs = float_range(-80.0f, 20.0f, 2003);
        const double err_softplus = max_ulp_error(xs, apply(isa, VecFn::Softplus, xs), softplus_ref);
        const std::vector<float> xg = float_range(-80.0f, 80.0f, 2003);
        const double err_sigmoid = max_ulp_error(xg, apply(isa, VecFn::Sigmoid, xg),
                                                 [](double v) { return 1.0 / (1.0 + std::exp(-v)); });
        record(std::string("softplus_ulps_") + isa.name, err_softplus);
        record(std::string("sigmoid_ulps_") + isa.name, err_sigmoid);
        EXPECT_LT(err_softplus, kSoftplusUlps);
        EXPECT_LT(err_sigmoid, kSigmoidUlps);

        const float inf = std::numeric_limits<float>::infinity();
        const std::vector<float> special = {20.5f, 1e30f, inf, -200.0f, -inf};
        const std::vector<float> sp = apply(isa, VecFn::Softplus, special);
        EXPECT_EQ(sp[0], 20.5f);  // PyTorch's threshold: the identity above 20
        EXPECT_EQ(sp[1], 1e30f);
        EXPECT_EQ(sp[2], inf);
        EXPECT_EQ(sp[3], 0.0f);
        EXPECT_EQ(sp[4], 0.0f);
        const std::vector<float> sg = apply(isa, VecFn::Sigmoid, {200.0f, inf, -200.0f, -inf});
        EXPECT_EQ(sg, (std::vector<float>{1.0f, 1.0f, 0.0f, 0.0f}));
    }
    if (!any) GTEST_SKIP() << "no AVX2 or AVX-512 on this CPU";
}

// Runs fn(kernel) with MSLM_SCAN_KERNEL set to each float kernel of the selective scan that the
// CPU has (src/ops/cpu/selective_scan.cpp), then restores the variable.
template <class Fn>
void for_each_scan_kernel(Fn fn) {
    const char* env = std::getenv("MSLM_SCAN_KERNEL");
    const std::optional<std::string> saved = env ? std::optional<std::string>(env) : std::nullopt;
    for (const auto& [name, available] : {std::pair<const char*, bool>{"scalar", true},
                                          {"avx2", cpu_has_avx2()},
                                          {"avx512", cpu_has_avx512()}}) {
        if (!available) continue;
        setenv("MSLM_SCAN_KERNEL", name, 1);
        SCOPED_TRACE(name);
        fn(std::string(name));
    }
    if (saved)
        setenv("MSLM_SCAN_KERNEL", saved->c_str(), 1);
    else
        unsetenv("MSLM_SCAN_KERNEL");
}

const ScanCase kKernelCases[] = {
    {2, 40, 37, 16, 2, true, true, true, true},   // 37 channels: whole vector blocks and a tail of 5
    {1, 70, 16, 16, 0, true, true, true, false},  // one AVX-512 block, two AVX2 ones; 3 passes of rows
    {2, 33, 11, 5, 1, false, true, true, true},   // d_state 5: not a tile of the transposes
    {1, 9, 5, 4, 3, true, false, false, false},   // bare, fewer channels than a vector
};

// The float kernels against the double loop on the same (float-representable) inputs, with
// SelectiveScan.FloatMatchesDouble's argument and tolerance: the vector kernels differ from the
// scalar float loop only in their exp (< 1.5 ulp, VecMath above), softplus (< 7.3) and sigmoid (< 5),
// errors of a few u per term that the factor 4 of fp32_tolerance covers: an error ε in Δ reaches
// e^(Δ·A) as Δ·|A|·e^(Δ·A)·ε ≤ ε/e. A quarter of the Δ are pushed far out, to cover exp's underflow
// (Δ = 30: e^(30·A) = 0) and softplus's tails (raw −100: Δ = 0 in float).
TEST(SelectiveScanKernels, FloatMatchesDouble) {
    for_each_scan_kernel([](const std::string& kernel) {
        int case_index = 0;
        for (const ScanCase& c : kKernelCases) {
            SCOPED_TRACE(describe(c));
            ScanData<double> d = make_scan(c, 51);
            for (size_t i = 0; i < d.delta.size(); i += 8) d.delta[i] = 30.0;
            for (size_t i = 4; i < d.delta.size(); i += 8) d.delta[i] = -100.0;
            d.round_inputs_to_float();
            const ScanData<float> f = d.as<float>();
            std::vector<double> h;
            std::vector<float> h_f;
            const std::vector<double> y = d.forward(&h);
            const std::vector<float> y_f = f.forward(&h_f);
            const double tol = fp32_tolerance(c.T + c.N);
            const double ey = scaled_max_error(y_f, y), eh = scaled_max_error(h_f, h);
            const std::string tag = kernel + "_case" + std::to_string(case_index++);
            record("fp32_y_" + tag, ey);
            record("fp32_h_last_" + tag, eh);
            EXPECT_LT(ey, tol);
            EXPECT_LT(eh, tol);
        }
    });
}

// The update promises the arithmetic of one forward step (ops/selective_scan.h): stepping through
// a sequence gives the forward's bits, in float on every kernel.
TEST(SelectiveScanKernels, UpdateStepsEqualForwardBits) {
    for_each_scan_kernel([](const std::string&) {
        for (const ScanCase& c : kKernelCases) {
            SCOPED_TRACE(describe(c));
            const ScanData<float> d = make_scan(c, 52).as<float>();
            std::vector<float> h_want;
            const std::vector<float> want = d.forward(&h_want);  // (B, T, Din)
            const int64_t S = 2 * c.B + 1, Din = c.Din, N = c.N;
            std::vector<float> h(S * Din * N, 0.0f);
            std::vector<int64_t> slots(c.B);
            for (int64_t b = 0; b < c.B; ++b) {
                slots[b] = slot_of(b);
                if (!d.h0.empty())
                    std::copy_n(d.h0.begin() + b * Din * N, Din * N, h.begin() + slots[b] * Din * N);
            }
            EXPECT_EQ(scan_steps(d, h, slots), want);
            std::vector<float> h_got;
            for (int64_t b = 0; b < c.B; ++b)
                h_got.insert(h_got.end(), h.begin() + slots[b] * Din * N,
                             h.begin() + (slots[b] + 1) * Din * N);
            EXPECT_EQ(h_got, h_want);
        }
    });
}

TEST(SelectiveScanKernels, SameBitsForAnyThreadCount) {
    ThreadCountGuard guard;
    for_each_scan_kernel([](const std::string&) {
        const ScanCase c{3, 20, 45, 16, 1, true, true, true, true};
        const ScanData<float> d = make_scan(c, 53).as<float>();
        std::vector<std::vector<float>> results;
        for (int threads : {1, 3}) {
            set_num_threads(threads);
            std::vector<float> h_last;
            std::vector<float> all = d.forward(&h_last);
            all.insert(all.end(), h_last.begin(), h_last.end());
            std::vector<float> y(c.B * c.Din);
            std::vector<int64_t> slots = {2, 0, 1};
            selective_scan_update(y.data(), h_last.data(), slots.data(), d.inputs(), c.B, c.Din, c.N);
            all.insert(all.end(), y.begin(), y.end());
            all.insert(all.end(), h_last.begin(), h_last.end());
            results.push_back(all);
        }
        EXPECT_EQ(results[0], results[1]);
    });
}

TEST(SelectiveScanKernels, UnknownKernelNameIsAnError) {
    const ScanData<float> d = make_scan(kKernelCases[3], 54).as<float>();
    const char* env = std::getenv("MSLM_SCAN_KERNEL");
    const std::optional<std::string> saved = env ? std::optional<std::string>(env) : std::nullopt;
    setenv("MSLM_SCAN_KERNEL", "avx1024", 1);
    EXPECT_THROW(d.forward(), Error);
    if (saved)
        setenv("MSLM_SCAN_KERNEL", saved->c_str(), 1);
    else
        unsetenv("MSLM_SCAN_KERNEL");
}

}  // namespace
