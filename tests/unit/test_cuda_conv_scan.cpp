// CUDA causal conv1d (ops/cuda/conv1d.h) and selective scan (ops/cuda/selective_scan.h) against the
// CPU reference ops run in double on the very values the kernels read (for bf16: the decoded bf16
// inputs), on random inputs of odd sizes. Every test exists in every build and skips, saying why,
// when the build has no CUDA or the machine has no GPU.
//
// Tolerances, with u = 2^-24 the fp32 unit roundoff. Without fast-math expf is within 2 ulp and
// log1pf within 1 (CUDA C Programming Guide, "Mathematical Functions"); +, ×, fma round once. Each
// bound is taken against a magnitude sum `scale` (the sum of the magnitudes of the terms that are
// added, computed here in double by running the reference's formulas on |·|), since the results
// themselves may cancel. bf16 outputs add one rounding, 2^-8 · |result|.
// - conv1d forward. A sum of ≤ K + 1 ≤ 9 terms by fma: ≤ 9u · scale_pre. SiLU of it: |silu'| ≤ 1.1
//   carries that, and SiLU's own ≤ 8 roundings add 8u · |out|: 16u · (1.1 · scale_pre + |out|).
// - conv1d backward. g = dout · silu'(p) with p off by ≤ 9u · scale_pre and |silu''| ≤ 1/2, plus
//   g's own ~10 roundings: ≤ 16u · gscale, gscale = |dout| · (silu_grad_scale(p) + scale_pre).
//   In bf16 silu'(p) comes from the fast σ: ≤ 2·(1.2·|p| + 4)·2^-23 · silu_grad_scale(p) · |dout|
//   more, added to every bound it enters.
//   dx adds K + 1 terms: 32u of |dx0| + Σ |w| · gscale. dw and dbias add ≤ 64 terms per chunk,
//   then the chunks' partials in order, then the old value: (64 + parts + 17)u of their scale, parts
//   = B · ⌈T / 64⌉. The fast kernels' chains are shorter: 16 terms per run, 8 runs per 128-token
//   block, ≤ ⌈parts / 16⌉ partials per slice, 8 slices.
// - scan forward. With a = Δ·A: Δ = softplus(raw + bias) is off by ≤ (|raw + bias| + 4)u relative
//   (softplus'(x)·|x|/softplus(x) ≤ |x|, plus the roundings), A = −expf(A_log) by 2u, so a by
//   ≤ 11.5u·|a| + ... and exp(a) by ≤ (11.5·|a| + 3)u relative. One step then errs by
//   local_t = (11.5·|a| + 3)u · e^a·|h_{t−1}| + (|raw + bias| + 7)u · |Δ·B·u|, and earlier errors
//   are multiplied by e^a ≤ 1: E_t = e^a · E_{t−1} + local_t, run here per state in double with
//   M_t (the state's magnitude recurrence) for |h|. y = Σ_n C_n·h_n (+ D·u) (· silu(z)) then errs by
//   Σ |C|·E + (N + 4)u · (Σ |C|·M + |D·u|), times |silu(z)|, plus 8u · |y| for the gate. We allow
//   twice that for second-order terms. h_last: 2·E_T.
// - scan backward. The reverse recurrence dh_{t−1} = e^a·(dh_t + dy·C) has the forward's form, so
//   its error stays ≤ ~82u·(t + 1) of its magnitude; h carries the forward's ≤ 82u·(t + 1) (the
//   local relative error above is ≤ 82u for the input ranges used: |a| ≤ 6.6, |raw + bias| ≤ 4.5).
//   A gradient term multiplies a handful of such factors (≤ 164u·(T + 1) + ~90u, exp(a)'s own
//   ≤ 79u included) and the sums add ≤ T steps and the partials over channel blocks (≤ Din) or the
//   batch: rel = (192·(T + 1) + Din + B + 128)u of the magnitude sum of the gradient's terms — the
//   "T·2^-24 of magnitude sums" of a recurrence whose decays are ≤ 1.
#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <type_traits>
#include <vector>

#include "core/cuda_device.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/rng.h"
#include "cuda_test_util.h"
#include "ops/conv1d.h"
#include "ops/selective_scan.h"
#include "test_util.h"

#ifdef MSLM_HAVE_CUDA
#include "ops/cuda/conv1d.h"
#include "ops/cuda/selective_scan.h"
#endif

namespace {

using namespace mslm;

template <typename T>
class CudaConv1d : public test::CudaTest {};

template <typename T>
class CudaSelectiveScan : public test::CudaTest {};

TYPED_TEST_SUITE(CudaConv1d, test::Dtypes, test::DtypeNames);
TYPED_TEST_SUITE(CudaSelectiveScan, test::Dtypes, test::DtypeNames);

#ifdef MSLM_HAVE_CUDA

using namespace mslm::test;
using ops::ScanDims;

template <typename T>
::testing::AssertionResult all_equal(const std::vector<T>& got, const std::vector<T>& want) {
    if (got.size() != want.size())
        return ::testing::AssertionFailure() << "size " << got.size() << " vs " << want.size();
    for (size_t i = 0; i < got.size(); ++i) {
        if (decode(got[i]) != decode(want[i]))
            return ::testing::AssertionFailure() << "[" << i << "] " << decode(got[i]) << " vs "
                                                 << decode(want[i]) << " (not bitwise equal)";
    }
    return ::testing::AssertionSuccess();
}

double sigmoid(double x) {
    return 1.0 / (1.0 + std::exp(-x));
}
double silu(double x) {
    return x * sigmoid(x);
}
// Sum of the magnitudes of silu'(x)'s terms σ and x·σ·(1 − σ).
double silu_grad_scale(double x) {
    return sigmoid(x) * (1.0 + std::abs(x * (1.0 - sigmoid(x))));
}
double softplus(double v) {
    return v > 20 ? v : std::log1p(std::exp(v));
}
double softplus_grad(double v) {
    return v > 20 ? 1.0 : sigmoid(v);
}

// ---------------------------------------------------------------------------------------------
// conv1d

struct ConvCase {
    int64_t B, T, C, K, ld_x;
    bool bias, silu;
    size_t offset = 0;  // elements x and dx sit past an aligned base (1: misaligned)
    std::string name() const {
        return "B " + std::to_string(B) + ", T " + std::to_string(T) + ", C " + std::to_string(C) + ", K " +
               std::to_string(K) + ", ld_x " + std::to_string(ld_x) + (bias ? ", bias" : "") +
               (silu ? ", silu" : "") + (offset ? ", offset " + std::to_string(offset) : "");
    }
};

// C 1, 5, 33, 1536 × T 1, 7, 300 × K 2, 4 × bias × silu; every other shape reads x with a row
// stride wider than C.
std::vector<ConvCase> conv_cases() {
    std::vector<ConvCase> cases;
    int i = 0;
    for (int64_t C : {1, 5, 33, 1536})
        for (int64_t T : {1, 7, 300})
            for (int64_t K : {2, 4}) {
                const int64_t ld = (i++ % 2) ? C + 3 : C;
                for (bool bias : {false, true})
                    for (bool silu_on : {false, true}) cases.push_back({2, T, C, K, ld, bias, silu_on});
            }
    return cases;
}

// The fast kernels' edges: the model's shape (C 1792 of rows of 3352, K 4) with T below K, at one
// 16-token run, past it and past one 128-token block; K 1 to 8 (K > 4: compiled for one block per
// SM); and the one-channel fallbacks: C not a multiple of the pack (1538: of 2, not of 4; 1537), a
// row stride that is not (1541), x and dx one element past an aligned base.
std::vector<ConvCase> conv_fast_path_cases() {
    std::vector<ConvCase> cases;
    for (int64_t T : {1, 3, 16, 17, 129, 300}) cases.push_back({2, T, 1792, 4, 3352, true, true});
    for (int64_t K : {1, 3, 5, 8}) cases.push_back({3, 45, 64, K, 64, K % 2 == 1, K != 5});
    cases.push_back({2, 40, 1538, 4, 1538, true, true});
    cases.push_back({2, 40, 1537, 3, 1544, false, true});
    cases.push_back({2, 40, 1536, 4, 1541, true, false});
    cases.push_back({2, 40, 1536, 4, 1536, true, true, 1});
    // The tiled backward's edges (bf16): a channel tile cut short (1800 = 28 · 64 + 8), chunks of 128
    // tokens cut short, K 2 and 8.
    cases.push_back({2, 300, 1800, 4, 1800, true, true});
    cases.push_back({1, 260, 72, 2, 80, false, true});
    cases.push_back({2, 131, 64, 8, 64, true, false});
    return cases;
}

template <typename T>
struct ConvData {
    ConvCase c;
    std::vector<T> x, w, bias;  // (B, T, ld_x), (C, K), (C) or empty
    std::vector<double> xd, wd, biasd;
    std::vector<double> p, scale_pre;  // (B, T, C): pre-activation and its magnitude sum

    ConvData(const ConvCase& cc, Rng& rng) : c(cc) {
        x = random_values<T>(rng, c.B * c.T * c.ld_x, -2.0, 2.0);
        w = random_values<T>(rng, c.C * c.K, -1.0, 1.0);
        if (c.bias) bias = random_values<T>(rng, c.C, -1.0, 1.0);
        xd = decode_all(x);
        wd = decode_all(w);
        biasd = decode_all(bias);
        p.assign(c.B * c.T * c.C, 0.0);
        scale_pre.assign(c.B * c.T * c.C, 0.0);
        for (int64_t row = 0; row < c.B * c.T; ++row) {
            const int64_t t = row % c.T;
            for (int64_t ch = 0; ch < c.C; ++ch) {
                double acc = c.bias ? biasd[ch] : 0.0, mag = std::abs(acc);
                for (int64_t k = std::max<int64_t>(0, c.K - 1 - t); k < c.K; ++k) {
                    const double term = wd[ch * c.K + k] * xd[(row - (c.K - 1) + k) * c.ld_x + ch];
                    acc += term;
                    mag += std::abs(term);
                }
                p[row * c.C + ch] = acc;
                scale_pre[row * c.C + ch] = mag;
            }
        }
    }
    const double* bias_ref() const { return c.bias ? biasd.data() : nullptr; }
};

#endif  // MSLM_HAVE_CUDA

#ifdef MSLM_HAVE_CUDA

template <typename T>
void expect_forward_matches_cpu(const ConvCase& c, Rng& rng) {
    SCOPED_TRACE(c.name());
    ConvData<T> d(c, rng);
    const int64_t n = c.B * c.T * c.C;
    std::vector<double> out(n), pre(n, 0.0);
    ops::conv1d_causal_forward<double>(out.data(), pre.data(), d.xd.data(), c.ld_x, d.wd.data(), d.bias_ref(),
                                       c.B, c.T, c.C, c.K, c.silu);
    std::vector<double> scale_out(n);
    for (int64_t i = 0; i < n; ++i)
        scale_out[i] = c.silu ? 1.1 * d.scale_pre[i] + std::abs(out[i]) : d.scale_pre[i];

    DeviceBuffer<T> dx(d.x, c.offset), dw(d.w), dbias(d.bias), dout(n), dpre(n);
    ops::cuda::conv1d_causal_forward(dout.get(), dpre.get(), dx.get(), c.ld_x, dw.get(),
                                     c.bias ? dbias.get() : nullptr, c.B, c.T, c.C, c.K, c.silu);
    EXPECT_TRUE(all_close(dout.download(), out, scale_out, 16 * kU));
    if (c.silu) {
        EXPECT_TRUE(all_close(dpre.download(), pre, d.scale_pre, 16 * kU)) << "pre";
    }
    // Without the pre-activation output (the training step's call; bf16 rows 16-byte aligned take the
    // tiled kernel there): the same outputs, bit for bit.
    DeviceBuffer<T> dout2(n);
    ops::cuda::conv1d_causal_forward(dout2.get(), static_cast<T*>(nullptr), dx.get(), c.ld_x, dw.get(),
                                     c.bias ? dbias.get() : nullptr, c.B, c.T, c.C, c.K, c.silu);
    EXPECT_TRUE(all_equal(dout2.download(), dout.download())) << "out without pre";
}

template <typename T>
void expect_backward_matches_cpu(const ConvCase& c, Rng& rng) {
    SCOPED_TRACE(c.name());
    ConvData<T> d(c, rng);
    const int64_t n = c.B * c.T * c.C;
    const auto dout = random_values<T>(rng, n, -1.0, 1.0);
    const auto dx0 = random_values<T>(rng, c.B * c.T * c.ld_x, -1.0, 1.0);  // padding columns too
    const auto dw0 = random_values<T>(rng, c.C * c.K, -1.0, 1.0);
    const auto dbias0 = random_values<T>(rng, c.C, -1.0, 1.0);
    const auto doutd = decode_all(dout);
    std::vector<double> dx = decode_all(dx0), dw = decode_all(dw0), dbias = decode_all(dbias0);
    ops::conv1d_causal_backward<double>(dx.data(), dw.data(), dbias.data(), doutd.data(), d.xd.data(), c.ld_x,
                                        d.wd.data(), d.bias_ref(), c.B, c.T, c.C, c.K, c.silu);

    std::vector<double> gscale(n), gfast(n, 0.0);
    for (int64_t i = 0; i < n; ++i) {
        gscale[i] = std::abs(doutd[i]) * (c.silu ? silu_grad_scale(d.p[i]) + d.scale_pre[i] : 1.0);
        // bf16: silu'(p) from the fast σ, whose σ and 1 − σ are each within (1.2·|p| + 4)·2^-23
        // relative (common.cuh): silu' within twice that of silu_grad_scale(p).
        if (kBf16<T> && c.silu)
            gfast[i] =
                std::abs(doutd[i]) * 2.0 * (1.2 * std::abs(d.p[i]) + 4.0) * 0x1p-23 * silu_grad_scale(d.p[i]);
    }
    std::vector<double> sdx = decode_all(dx0), sdw = decode_all(dw0), sdb = decode_all(dbias0);
    for (auto* v : {&sdx, &sdw, &sdb})
        for (double& s : *v) s = std::abs(s);
    const double parts = double(c.B * ((c.T + 63) / 64));
    const double rel_x = 32 * kU, rel_wb = (64 + parts + 17) * kU;
    for (int64_t row = 0; row < c.B * c.T; ++row) {
        const int64_t t = row % c.T;
        for (int64_t ch = 0; ch < c.C; ++ch) {
            // The fast σ's error enters each bound as itself: its share of the scale is divided
            // by the bound's factor.
            const double gs = gscale[row * c.C + ch], gf = gfast[row * c.C + ch];
            sdb[ch] += gs + gf / rel_wb;
            for (int64_t k = std::max<int64_t>(0, c.K - 1 - t); k < c.K; ++k) {
                const int64_t src = (row - (c.K - 1) + k) * c.ld_x + ch;
                sdw[ch * c.K + k] += (gs + gf / rel_wb) * std::abs(d.xd[src]);
                sdx[src] += (gs + gf / rel_x) * std::abs(d.wd[ch * c.K + k]);
            }
        }
    }

    DeviceBuffer<T> x(d.x, c.offset), w(d.w), bias(d.bias), g_out(dout), g_x(dx0, c.offset), g_w(dw0),
        g_b(dbias0);
    const size_t ws_bytes = ops::cuda::conv1d_causal_backward_workspace_bytes(c.B, c.T, c.C, c.K);
    DeviceBuffer<float> ws(ws_bytes / sizeof(float));
    ops::cuda::conv1d_causal_backward(g_x.get(), g_w.get(), g_b.get(), g_out.get(), x.get(), c.ld_x, w.get(),
                                      c.bias ? bias.get() : nullptr, c.B, c.T, c.C, c.K, c.silu, ws.get(),
                                      ws_bytes);
    EXPECT_TRUE(all_close(g_x.download(), dx, sdx, rel_x)) << "dx";
    EXPECT_TRUE(all_close(g_w.download(), dw, sdw, rel_wb)) << "dw";
    EXPECT_TRUE(all_close(g_b.download(), dbias, sdb, rel_wb)) << "dbias";

    // dx alone needs no workspace.
    DeviceBuffer<T> g_x2(dx0, c.offset);
    ops::cuda::conv1d_causal_backward<T>(g_x2.get(), nullptr, nullptr, g_out.get(), x.get(), c.ld_x, w.get(),
                                         c.bias ? bias.get() : nullptr, c.B, c.T, c.C, c.K, c.silu, nullptr,
                                         0);
    EXPECT_TRUE(all_equal(g_x2.download(), g_x.download())) << "dx alone";
}

#endif  // MSLM_HAVE_CUDA

TYPED_TEST(CudaConv1d, ForwardMatchesCpu) {
#ifdef MSLM_HAVE_CUDA
    Rng rng(11);
    for (const ConvCase& c : conv_cases()) expect_forward_matches_cpu<TypeParam>(c, rng);
#endif
}

TYPED_TEST(CudaConv1d, BackwardAccumulatesEveryGradient) {
#ifdef MSLM_HAVE_CUDA
    Rng rng(12);
    for (const ConvCase& c : conv_cases()) expect_backward_matches_cpu<TypeParam>(c, rng);
#endif
}

TYPED_TEST(CudaConv1d, FastPathEdgesMatchCpu) {
#ifdef MSLM_HAVE_CUDA
    Rng rng(15);
    for (const ConvCase& c : conv_fast_path_cases()) {
        expect_forward_matches_cpu<TypeParam>(c, rng);
        expect_backward_matches_cpu<TypeParam>(c, rng);
    }
#endif
}

#ifdef MSLM_HAVE_CUDA

// Feeding the tokens one at a time through the update gives the forward's bits, and leaves the last
// K − 1 inputs (zeros before the start) in the window.
template <typename T>
void expect_update_matches_forward(const ConvCase& c, Rng& rng) {
    SCOPED_TRACE(c.name());
    ConvData<T> d(c, rng);
    const int64_t n = c.B * c.T * c.C, S = c.B + 2, W = c.K - 1;
    DeviceBuffer<T> x(d.x, c.offset), w(d.w), bias(d.bias), out(n);
    const T* bias_p = c.bias ? bias.get() : nullptr;
    ops::cuda::conv1d_causal_forward(out.get(), static_cast<T*>(nullptr), x.get(), c.ld_x, w.get(), bias_p,
                                     c.B, c.T, c.C, c.K, c.silu);
    const auto want = out.download();

    std::vector<int64_t> slots(c.B);
    for (int64_t b = 0; b < c.B; ++b) slots[b] = S - 1 - b;  // reversed, slot 0 unused
    const auto state0 = random_values<T>(rng, S * W * c.C, -1.0, 1.0);
    std::vector<T> state_init = state0;
    for (int64_t b = 0; b < c.B; ++b)
        std::fill_n(state_init.begin() + slots[b] * W * c.C, W * c.C, encode<T>(0.0));
    DeviceBuffer<T> state(state_init), step_out(c.B * c.C);
    DeviceBuffer<int64_t> d_slots(slots);
    std::vector<T> got(n);
    for (int64_t t = 0; t < c.T; ++t) {
        // Row b of this step is token t of sequence b: stride T rows of x.
        ops::cuda::conv1d_causal_update(step_out.get(), state.get(), d_slots.get(), x.get() + t * c.ld_x,
                                        c.T * c.ld_x, w.get(), bias_p, c.B, c.C, c.K, c.silu);
        const auto o = step_out.download();
        for (int64_t b = 0; b < c.B; ++b)
            std::copy_n(o.begin() + b * c.C, c.C, got.begin() + (b * c.T + t) * c.C);
    }
    EXPECT_TRUE(all_equal(got, want));

    std::vector<T> want_state = state_init;
    for (int64_t b = 0; b < c.B; ++b)
        for (int64_t j = 0; j < W; ++j) {
            const int64_t t = c.T - W + j;  // window row j holds token T − (K − 1) + j
            for (int64_t ch = 0; ch < c.C; ++ch)
                want_state[(slots[b] * W + j) * c.C + ch] =
                    t >= 0 ? d.x[(b * c.T + t) * c.ld_x + ch] : encode<T>(0.0);
        }
    EXPECT_TRUE(all_equal(state.download(), want_state)) << "window";
}

#endif  // MSLM_HAVE_CUDA

TYPED_TEST(CudaConv1d, UpdateMatchesForwardBitwise) {
#ifdef MSLM_HAVE_CUDA
    Rng rng(13);
    for (const ConvCase& c : conv_cases()) {
        if (c.T > 7 && c.C > 33) continue;  // T kernel launches each; the short cases cover the logic
        expect_update_matches_forward<TypeParam>(c, rng);
    }
    for (const ConvCase& c : conv_fast_path_cases())
        if (c.T <= 17) expect_update_matches_forward<TypeParam>(c, rng);
#endif
}

TYPED_TEST(CudaConv1d, UpdateMatchesCpuFromAFullWindow) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    Rng rng(14);
    for (int64_t C : {1, 5, 33, 1536})
        for (int64_t K : {2, 4})
            for (bool silu_on : {false, true}) {
                const int64_t k = 3, S = 5, W = K - 1, ld = C + 2;
                SCOPED_TRACE("C " + std::to_string(C) + ", K " + std::to_string(K) +
                             (silu_on ? ", silu" : ""));
                const auto x = random_values<T>(rng, k * ld, -2.0, 2.0);
                const auto w = random_values<T>(rng, C * K, -1.0, 1.0);
                const auto bias = random_values<T>(rng, C, -1.0, 1.0);
                const auto state0 = random_values<T>(rng, S * W * C, -2.0, 2.0);
                const std::vector<int64_t> slots = {3, 0, 4};
                const auto xd = decode_all(x), wd = decode_all(w), bd = decode_all(bias);
                std::vector<double> state = decode_all(state0), out(k * C);
                ops::conv1d_causal_update<double>(out.data(), state.data(), slots.data(), xd.data(), ld,
                                                  wd.data(), bd.data(), k, C, K, silu_on);
                std::vector<double> scale(k * C);
                const auto sd = decode_all(state0);
                for (int64_t i = 0; i < k; ++i)
                    for (int64_t ch = 0; ch < C; ++ch) {
                        double mag = std::abs(bd[ch]) + std::abs(wd[ch * K + K - 1] * xd[i * ld + ch]);
                        for (int64_t j = 0; j < W; ++j)
                            mag += std::abs(wd[ch * K + j] * sd[(slots[i] * W + j) * C + ch]);
                        scale[i * C + ch] = silu_on ? 1.1 * mag + std::abs(out[i * C + ch]) : mag;
                    }
                DeviceBuffer<T> d_x(x), d_w(w), d_b(bias), d_state(state0), d_out(k * C);
                DeviceBuffer<int64_t> d_slots(slots);
                ops::cuda::conv1d_causal_update(d_out.get(), d_state.get(), d_slots.get(), d_x.get(), ld,
                                                d_w.get(), d_b.get(), k, C, K, silu_on);
                EXPECT_TRUE(all_close(d_out.download(), out, scale, 16 * kU));
                std::vector<T> want_state(state.size());
                for (size_t i = 0; i < state.size(); ++i)
                    want_state[i] = encode<T>(state[i]);  // copies: exact
                EXPECT_TRUE(all_equal(d_state.download(), want_state)) << "window";
            }
#endif
}

#ifdef MSLM_HAVE_CUDA

// Sets MSLM_CONV_FAST for a scope, restoring what was there.
struct ScopedConvFast : test::ScopedEnv {
    explicit ScopedConvFast(const char* value) : test::ScopedEnv("MSLM_CONV_FAST", std::string(value)) {}
};

#endif  // MSLM_HAVE_CUDA

// The fast kernels (run and tiled) run the one-element kernels' fma chains (MSLM_CONV_FAST=0 selects
// those): out, pre and dx are the same numbers (the forward's taps before the sequence start are fma with
// zeros instead of skipped, which can only flip the sign of a zero). dw and dbias are summed in another order
// (checked against the CPU above) but give the same bits on every call.
TYPED_TEST(CudaConv1d, FastKernelsMatchTheOneElementKernels) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    Rng rng(16);
    for (const ConvCase& c : conv_fast_path_cases()) {
        if (c.T < 17) continue;
        SCOPED_TRACE(c.name());
        ConvData<T> d(c, rng);
        const int64_t n = c.B * c.T * c.C;
        const auto dout = random_values<T>(rng, n, -1.0, 1.0);
        const auto dx0 = random_values<T>(rng, c.B * c.T * c.ld_x, -1.0, 1.0);
        DeviceBuffer<T> x(d.x, c.offset), w(d.w), bias(d.bias), g_out(dout);
        const T* bias_p = c.bias ? bias.get() : nullptr;
        const size_t ws_bytes = ops::cuda::conv1d_causal_backward_workspace_bytes(c.B, c.T, c.C, c.K);
        DeviceBuffer<float> ws(ws_bytes / sizeof(float));
        struct Result {
            std::vector<T> out, pre, dx, dw, dbias, out_alone;
        };
        auto run = [&] {
            DeviceBuffer<T> out(n), pre(n), g_x(dx0, c.offset), g_w(c.C * c.K), g_b(c.C), out_alone(n);
            ops::cuda::conv1d_causal_forward(out.get(), pre.get(), x.get(), c.ld_x, w.get(), bias_p, c.B, c.T,
                                             c.C, c.K, c.silu);
            // Without pre: the training step's call (the tiled kernel for aligned bf16 rows).
            ops::cuda::conv1d_causal_forward(out_alone.get(), static_cast<T*>(nullptr), x.get(), c.ld_x,
                                             w.get(), bias_p, c.B, c.T, c.C, c.K, c.silu);
            ops::cuda::conv1d_causal_backward(g_x.get(), g_w.get(), g_b.get(), g_out.get(), x.get(), c.ld_x,
                                              w.get(), bias_p, c.B, c.T, c.C, c.K, c.silu, ws.get(),
                                              ws_bytes);
            return Result{out.download(), pre.download(), g_x.download(),
                          g_w.download(), g_b.download(), out_alone.download()};
        };
        Result old;
        {
            ScopedConvFast one_element("0");
            old = run();
        }
        ScopedConvFast fast("1");
        const Result got = run(), again = run();
        EXPECT_TRUE(all_equal(got.out, old.out)) << "out";
        EXPECT_TRUE(all_equal(got.out_alone, old.out)) << "out without pre";
        if (c.silu) {
            EXPECT_TRUE(all_equal(got.pre, old.pre)) << "pre";
        }
        EXPECT_TRUE(all_equal(got.dx, old.dx)) << "dx";
        EXPECT_EQ(got.dw, again.dw) << "dw bits";
        EXPECT_EQ(got.dbias, again.dbias) << "dbias bits";
    }
#endif
}

// The forward with the inputs before the sequence start given (hist, a prompt continuing a conv
// window) against the forward over [hist | x] concatenated: rows K − 1 on, out and pre bit for bit,
// on the fast kernels and on the one-element kernels (MSLM_CONV_FAST=0), at the model's strided
// shape, odd channel counts and T below K − 1.
TYPED_TEST(CudaConv1d, HistoryIsTheConcatenatedForward) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    Rng rng(23);
    const ConvCase cases[] = {{2, 300, 1792, 4, 3352, true, true}, {2, 2, 1792, 4, 3352, true, true},
                              {2, 17, 33, 4, 36, false, true},     {3, 5, 5, 2, 5, true, false},
                              {1, 129, 64, 8, 64, true, true},     {2, 40, 1537, 3, 1544, false, true}};
    for (const ConvCase& c : cases) {
        SCOPED_TRACE(c.name());
        const int64_t K1 = c.K - 1, Tc = K1 + c.T, n = c.B * c.T * c.C;
        const auto x = random_values<T>(rng, c.B * c.T * c.ld_x, -2.0, 2.0);
        const auto hist = random_values<T>(rng, c.B * K1 * c.C, -2.0, 2.0);
        const auto w = random_values<T>(rng, c.C * c.K, -1.0, 1.0);
        const auto bias = random_values<T>(rng, c.C, -1.0, 1.0);
        std::vector<T> cat(c.B * Tc * c.ld_x);
        for (int64_t b = 0; b < c.B; ++b)
            for (int64_t t = 0; t < Tc; ++t)
                for (int64_t ch = 0; ch < c.C; ++ch)
                    cat[(b * Tc + t) * c.ld_x + ch] =
                        t < K1 ? hist[(b * K1 + t) * c.C + ch] : x[(b * c.T + t - K1) * c.ld_x + ch];
        DeviceBuffer<T> dx(x), dh(hist), dcat(cat), dw(w), db(bias);
        const T* bias_p = c.bias ? db.get() : nullptr;
        for (const char* fast : {"0", "1"}) {
            ScopedConvFast scoped(fast);
            DeviceBuffer<T> out(n), pre(n), out_c(c.B * Tc * c.C), pre_c(c.B * Tc * c.C);
            ops::cuda::conv1d_causal_forward(out.get(), pre.get(), dx.get(), c.ld_x,
                                             static_cast<const T*>(dh.get()), dw.get(), bias_p, c.B, c.T, c.C,
                                             c.K, c.silu);
            ops::cuda::conv1d_causal_forward(out_c.get(), pre_c.get(), dcat.get(), c.ld_x, dw.get(), bias_p,
                                             c.B, Tc, c.C, c.K, c.silu);
            auto rows_from_k1 = [&](const std::vector<T>& v) {
                std::vector<T> r(n);
                for (int64_t b = 0; b < c.B; ++b)
                    std::copy_n(v.begin() + (b * Tc + K1) * c.C, c.T * c.C, r.begin() + b * c.T * c.C);
                return r;
            };
            EXPECT_TRUE(all_equal(out.download(), rows_from_k1(out_c.download())))
                << "out, MSLM_CONV_FAST=" << fast;
            if (c.silu) {
                EXPECT_TRUE(all_equal(pre.download(), rows_from_k1(pre_c.download())))
                    << "pre, MSLM_CONV_FAST=" << fast;
            }
        }
    }
#endif
}

// dx with GradStore::Overwrite over junk: the bits of the default += on a zeroed dx, on the fast and
// the one-element kernels; dw and dbias unchanged.
TYPED_TEST(CudaConv1d, BackwardOverwriteIsAddToZeros) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    Rng rng(29);
    for (const ConvCase& c : conv_fast_path_cases()) {
        SCOPED_TRACE(c.name());
        ConvData<T> d(c, rng);
        const int64_t n = c.B * c.T * c.C;
        const auto dout = random_values<T>(rng, n, -1.0, 1.0);
        const auto junk = random_values<T>(rng, c.B * c.T * c.ld_x, -1.0, 1.0);
        DeviceBuffer<T> x(d.x, c.offset), w(d.w), bias(d.bias), g_out(dout);
        const T* bias_p = c.bias ? bias.get() : nullptr;
        const size_t ws_bytes = ops::cuda::conv1d_causal_backward_workspace_bytes(c.B, c.T, c.C, c.K);
        DeviceBuffer<float> ws(ws_bytes / sizeof(float));
        for (const char* fast : {"0", "1"}) {
            ScopedConvFast scoped(fast);
            std::vector<T> got[2][3];
            for (int ow = 0; ow < 2; ++ow) {
                std::vector<T> start = ow ? junk : std::vector<T>(junk.size());
                for (int64_t r = 0; r < c.B * c.T; ++r)  // the columns past C keep junk's bits in both runs
                    for (int64_t ch = c.C; ch < c.ld_x; ++ch) start[r * c.ld_x + ch] = junk[r * c.ld_x + ch];
                DeviceBuffer<T> g_x(start, c.offset), g_w(c.C * c.K), g_b(c.C);
                ops::cuda::conv1d_causal_backward(
                    g_x.get(), g_w.get(), g_b.get(), g_out.get(), x.get(), c.ld_x, w.get(), bias_p, c.B, c.T,
                    c.C, c.K, c.silu, ws.get(), ws_bytes, nullptr,
                    ow ? ops::cuda::GradStore::Overwrite : ops::cuda::GradStore::Add);
                got[ow][0] = g_x.download(), got[ow][1] = g_w.download(), got[ow][2] = g_b.download();
            }
            EXPECT_TRUE(all_equal(got[1][0], got[0][0])) << "dx, MSLM_CONV_FAST=" << fast;
            EXPECT_EQ(got[1][1], got[0][1]) << "dw";
            EXPECT_EQ(got[1][2], got[0][2]) << "dbias";
        }
    }
#endif
}

TYPED_TEST(CudaConv1d, ChecksArguments) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    EXPECT_NO_THROW(ops::cuda::conv1d_causal_forward<T>(nullptr, nullptr, nullptr, 4, nullptr, nullptr, 0, 5,
                                                        4, 4, true));
    EXPECT_NO_THROW(ops::cuda::conv1d_causal_update<T>(nullptr, nullptr, nullptr, nullptr, 4, nullptr,
                                                       nullptr, 0, 4, 4, true));
    auto expect_error = [](auto&& fn, const char* kernel) {
        try {
            fn();
            ADD_FAILURE() << "no error from " << kernel;
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find(kernel), std::string::npos) << e.what();
        }
    };
    DeviceBuffer<T> buf(64);
    T* p = buf.get();
    expect_error(
        [&] { ops::cuda::conv1d_causal_forward<T>(p, nullptr, p, 2, p, nullptr, 1, 2, 4, 2, false); },
        "conv1d_causal_forward");  // ld_x < C
    expect_error(
        [&] {
            ops::cuda::conv1d_causal_backward<T>(p, p, p, p, p, 1, p, nullptr, 1, 2, 1, 9, false, p, 256);
        },
        "conv1d_causal_backward");  // K above the maximum
    expect_error(
        [&] { ops::cuda::conv1d_causal_backward<T>(p, p, p, p, p, 4, p, nullptr, 1, 4, 4, 2, false, p, 8); },
        "conv1d_causal_backward");  // workspace too small
#endif
}

#ifdef MSLM_HAVE_CUDA

// ---------------------------------------------------------------------------------------------
// selective scan

struct ScanCase {
    int64_t B, T, Din, N;
    bool z, D, bias, h0, strided;
    std::string name() const {
        return "B " + std::to_string(B) + ", T " + std::to_string(T) + ", Din " + std::to_string(Din) +
               ", N " + std::to_string(N) + (z ? ", z" : "") + (D ? ", D" : "") + (bias ? ", bias" : "") +
               (h0 ? ", h0" : "") + (strided ? ", strided" : "");
    }
};

// Din 1, 5, 33, 1536 × T 1, 7, 300 × N 5, 16, each with all options on, all off, and two halves.
std::vector<ScanCase> scan_cases() {
    std::vector<ScanCase> cases;
    for (int64_t Din : {1, 5, 33, 1536})
        for (int64_t T : {1, 7, 300})
            for (int64_t N : {5, 16}) {
                cases.push_back({2, T, Din, N, true, true, true, true, true});
                cases.push_back({2, T, Din, N, false, false, false, false, false});
                cases.push_back({2, T, Din, N, true, false, false, true, false});
                cases.push_back({2, T, Din, N, false, true, true, false, true});
            }
    return cases;
}

template <typename T>
struct ScanData {
    ScanCase c;
    ScanDims dims;
    int64_t ld_u, ld_delta, ld_B, ld_C, ld_z;
    std::vector<T> u, delta, delta_bias, A_log, Bm, Cm, D, z;
    std::vector<float> h0;  // (B, Din, N), fp32 like every scan state
    std::vector<double> ud, deltad, delta_biasd, A_logd, Bd, Cd, Dd, zd, h0d;

    ScanData(const ScanCase& cc, Rng& rng) : c(cc), dims{cc.B, cc.T, cc.Din, cc.N} {
        const int64_t rows = c.B * c.T;
        ld_u = c.Din + (c.strided ? 3 : 0);
        ld_delta = c.Din + (c.strided ? 1 : 0);
        ld_B = c.N + (c.strided ? 2 : 0);
        ld_C = c.N + (c.strided ? 5 : 0);
        ld_z = c.Din + (c.strided ? 7 : 0);
        u = random_values<T>(rng, rows * ld_u, -1.0, 1.0);
        delta = random_values<T>(rng, rows * ld_delta, -4.0, 0.0);
        if (c.bias) delta_bias = random_values<T>(rng, c.Din, -0.5, 0.5);
        A_log = random_values<T>(rng, c.Din * c.N, -1.0, 1.5);
        Bm = random_values<T>(rng, rows * ld_B, -1.0, 1.0);
        Cm = random_values<T>(rng, rows * ld_C, -1.0, 1.0);
        if (c.D) D = random_values<T>(rng, c.Din, -1.0, 1.0);
        if (c.z) z = random_values<T>(rng, rows * ld_z, -3.0, 3.0);
        if (c.h0) {
            h0.resize(c.B * c.Din * c.N);
            for (float& v : h0) v = static_cast<float>(rng.uniform(-1.0, 1.0));
        }
        ud = decode_all(u);
        deltad = decode_all(delta);
        delta_biasd = decode_all(delta_bias);
        A_logd = decode_all(A_log);
        Bd = decode_all(Bm);
        Cd = decode_all(Cm);
        Dd = decode_all(D);
        zd = decode_all(z);
        h0d.assign(h0.begin(), h0.end());
    }

    ops::SelectiveScanInputs<double> ref_inputs() const {
        return {ud.data(),
                ld_u,
                deltad.data(),
                ld_delta,
                c.bias ? delta_biasd.data() : nullptr,
                A_logd.data(),
                Bd.data(),
                ld_B,
                Cd.data(),
                ld_C,
                c.D ? Dd.data() : nullptr,
                c.z ? zd.data() : nullptr,
                ld_z};
    }
    const double* ref_h0() const { return c.h0 ? h0d.data() : nullptr; }
    int64_t y_size() const { return c.B * c.T * c.Din; }
    int64_t state_size() const { return c.B * c.Din * c.N; }
};

// The inputs on the device.
template <typename T>
struct DeviceScan {
    DeviceBuffer<T> u, delta, delta_bias, A_log, Bm, Cm, D, z;
    DeviceBuffer<float> h0;
    const ScanData<T>& d;

    explicit DeviceScan(const ScanData<T>& data)
        : u(data.u),
          delta(data.delta),
          delta_bias(data.delta_bias),
          A_log(data.A_log),
          Bm(data.Bm),
          Cm(data.Cm),
          D(data.D),
          z(data.z),
          h0(data.h0),
          d(data) {}

    ops::SelectiveScanInputs<T> inputs() const {
        return {u.get(),
                d.ld_u,
                delta.get(),
                d.ld_delta,
                d.c.bias ? delta_bias.get() : nullptr,
                A_log.get(),
                Bm.get(),
                d.ld_B,
                Cm.get(),
                d.ld_C,
                d.c.D ? D.get() : nullptr,
                d.c.z ? z.get() : nullptr,
                d.ld_z};
    }
    const float* h0_ptr() const { return d.c.h0 ? h0.get() : nullptr; }
};

// Per (b, d, n): the error bound E_t and magnitude M_t of the state, from the comment at the top;
// per (b, t, d): the bound on y. Returns the bounds on y and on h_last.
template <typename T>
void scan_forward_bounds(const ScanData<T>& s, std::vector<double>& y_tol, std::vector<double>& h_tol) {
    const auto& c = s.c;
    y_tol.assign(s.y_size(), 0.0);
    h_tol.assign(s.state_size(), 0.0);
    std::vector<double> M(c.N), E(c.N);
    for (int64_t b = 0; b < c.B; ++b)
        for (int64_t d = 0; d < c.Din; ++d) {
            for (int64_t n = 0; n < c.N; ++n) {
                M[n] = c.h0 ? std::abs(s.h0d[(b * c.Din + d) * c.N + n]) : 0.0;
                E[n] = 0.0;
            }
            for (int64_t t = 0; t < c.T; ++t) {
                const int64_t row = b * c.T + t;
                const double arg = s.deltad[row * s.ld_delta + d] + (c.bias ? s.delta_biasd[d] : 0.0);
                const double dl = softplus(arg), u = s.ud[row * s.ld_u + d];
                double ch_err = 0.0, ch_mag = c.D ? std::abs(s.Dd[d] * u) : 0.0;
                for (int64_t n = 0; n < c.N; ++n) {
                    const double a = dl * -std::exp(s.A_logd[d * c.N + n]), dec = std::exp(a);
                    const double in = std::abs(dl * s.Bd[row * s.ld_B + n] * u);
                    const double local =
                        (11.5 * std::abs(a) + 3) * kU * dec * M[n] + (std::abs(arg) + 7) * kU * in;
                    E[n] = dec * E[n] + local;
                    M[n] = dec * M[n] + in;
                    const double Cn = std::abs(s.Cd[row * s.ld_C + n]);
                    ch_err += Cn * E[n];
                    ch_mag += Cn * M[n];
                }
                double bound = ch_err + (c.N + 4) * kU * ch_mag;
                if (c.z) {
                    const double g = std::abs(silu(s.zd[row * s.ld_z + d]));
                    bound = bound * g + 8 * kU * ch_mag * g;
                }
                y_tol[row * c.Din + d] = 2 * bound;
            }
            for (int64_t n = 0; n < c.N; ++n) h_tol[(b * c.Din + d) * c.N + n] = 2 * E[n];
        }
}

#endif  // MSLM_HAVE_CUDA

TYPED_TEST(CudaSelectiveScan, ForwardMatchesCpu) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    Rng rng(21);
    for (const ScanCase& c : scan_cases()) {
        SCOPED_TRACE(c.name());
        ScanData<T> s(c, rng);
        std::vector<double> y(s.y_size()), h_last(s.state_size());
        ops::selective_scan_forward<double>(y.data(), h_last.data(), s.ref_inputs(), s.ref_h0(), s.dims);
        std::vector<double> y_tol, h_tol;
        scan_forward_bounds(s, y_tol, h_tol);

        DeviceScan<T> dev(s);
        DeviceBuffer<T> d_y(s.y_size());
        DeviceBuffer<float> d_h(s.state_size());
        ops::cuda::selective_scan_forward(d_y.get(), d_h.get(), dev.inputs(), dev.h0_ptr(), s.dims,
                                          static_cast<float*>(nullptr));
        EXPECT_TRUE(all_close(d_y.download(), y, y_tol, 1.0)) << "y";
        EXPECT_TRUE(all_close(d_h.download(), h_last, h_tol, 1.0)) << "h_last";
    }
#endif
}

#ifdef MSLM_HAVE_CUDA

// The chunk states are the states a forward over the prefix ends in (same kernel, same bits), and
// the state advanced in place (h_last = h0) is the state written elsewhere.
#endif  // MSLM_HAVE_CUDA

TYPED_TEST(CudaSelectiveScan, ChunkStatesAreThePrefixStates) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    Rng rng(22);
    const ScanCase c{1, 300, 33, 5, true, true, true, true, true};
    ScanData<T> s(c, rng);
    DeviceScan<T> dev(s);
    DeviceBuffer<T> d_y(s.y_size());
    DeviceBuffer<float> chunks(ops::cuda::selective_scan_chunk_states_size(s.dims)), h_last(s.state_size());
    ops::cuda::selective_scan_forward(d_y.get(), h_last.get(), dev.inputs(), dev.h0_ptr(), s.dims,
                                      chunks.get());
    const auto all = chunks.download();
    const int64_t per_chunk = c.Din * c.N,
                  n_chunks = (c.T + ops::cuda::kScanChunk - 1) / ops::cuda::kScanChunk;
    ASSERT_EQ(all.size(), size_t(n_chunks * per_chunk));
    for (int64_t k = 0; k < n_chunks; ++k) {
        ScanDims prefix = s.dims;
        prefix.seqlen = k * ops::cuda::kScanChunk;
        DeviceBuffer<float> h(dev.h0.download());  // advanced in place
        ops::cuda::selective_scan_forward(d_y.get(), h.get(), dev.inputs(), h.get(), prefix,
                                          static_cast<float*>(nullptr));
        const std::vector<float> want(all.begin() + k * per_chunk, all.begin() + (k + 1) * per_chunk);
        EXPECT_TRUE(all_equal(h.download(), want)) << "chunk " << k;
    }
#endif
}

#ifdef MSLM_HAVE_CUDA

// The gradients' magnitude sums: the reference backward's formulas on |·|, with the forward's
// magnitude recurrence M for |h|, plus |initial value|.
struct ScanScales {
    std::vector<double> du, ddelta, dz, dB, dC, dA_log, dD, dbias;
};

template <typename T>
ScanScales scan_backward_scales(const ScanData<T>& s, const std::vector<double>& dy, const ScanScales& init) {
    const auto& c = s.c;
    const int64_t N = c.N, Tn = c.T;
    ScanScales r = init;
    std::vector<double> M((Tn + 1) * N), dec(Tn * N), G(N), dA(N);
    for (int64_t b = 0; b < c.B; ++b)
        for (int64_t d = 0; d < c.Din; ++d) {
            std::vector<double> A(N);
            for (int64_t n = 0; n < N; ++n) {
                A[n] = std::exp(s.A_logd[d * N + n]);  // |A|
                M[n] = c.h0 ? std::abs(s.h0d[(b * c.Din + d) * N + n]) : 0.0;
            }
            auto arg_of = [&](int64_t row) {
                return s.deltad[row * s.ld_delta + d] + (c.bias ? s.delta_biasd[d] : 0.0);
            };
            for (int64_t t = 0; t < Tn; ++t) {
                const int64_t row = b * Tn + t;
                const double dl = softplus(arg_of(row)), u = std::abs(s.ud[row * s.ld_u + d]);
                for (int64_t n = 0; n < N; ++n) {
                    dec[t * N + n] = std::exp(-dl * A[n]);
                    M[(t + 1) * N + n] =
                        dec[t * N + n] * M[t * N + n] + dl * std::abs(s.Bd[row * s.ld_B + n]) * u;
                }
            }
            std::fill(G.begin(), G.end(), 0.0);
            std::fill(dA.begin(), dA.end(), 0.0);
            double dD_acc = 0, dbias_acc = 0;
            const double Dm = c.D ? std::abs(s.Dd[d]) : 0.0;
            for (int64_t t = Tn - 1; t >= 0; --t) {
                const int64_t row = b * Tn + t;
                const double arg = arg_of(row), dl = softplus(arg), u = std::abs(s.ud[row * s.ld_u + d]);
                double dys = std::abs(dy[row * c.Din + d]);
                if (c.z) {
                    const double z = s.zd[row * s.ld_z + d];
                    double ys = Dm * u;
                    for (int64_t n = 0; n < N; ++n)
                        ys += std::abs(s.Cd[row * s.ld_C + n]) * M[(t + 1) * N + n];
                    r.dz[row * s.ld_z + d] += dys * ys * silu_grad_scale(z);
                    dys *= std::abs(silu(z));
                }
                dD_acc += dys * u;
                double du = dys * Dm, ddl = 0;
                for (int64_t n = 0; n < N; ++n) {
                    const double Bn = std::abs(s.Bd[row * s.ld_B + n]), Cn = std::abs(s.Cd[row * s.ld_C + n]);
                    r.dC[row * s.ld_C + n] += dys * M[(t + 1) * N + n];
                    const double g = G[n] + dys * Cn;
                    const double g_exp = g * M[t * N + n] * dec[t * N + n];
                    ddl += g_exp * A[n] + g * Bn * u;
                    dA[n] += g_exp * dl;
                    r.dB[row * s.ld_B + n] += g * dl * u;
                    du += g * dl * Bn;
                    G[n] = g * dec[t * N + n];
                }
                const double ddelta = ddl * softplus_grad(arg);
                r.du[row * s.ld_u + d] += du;
                r.ddelta[row * s.ld_delta + d] += ddelta;
                dbias_acc += ddelta;
            }
            for (int64_t n = 0; n < N; ++n) r.dA_log[d * N + n] += dA[n] * A[n];
            if (c.D) r.dD[d] += dD_acc;
            if (c.bias) r.dbias[d] += dbias_acc;
        }
    return r;
}

template <typename T>
struct ScanGradsHost {
    std::vector<T> du, ddelta, dz, dB, dC, dA_log, dD, dbias;
    ScanGradsHost(const ScanData<T>& s, Rng& rng) {
        auto r = [&](size_t n) { return random_values<T>(rng, n, -0.5, 0.5); };
        du = r(s.u.size());
        ddelta = r(s.delta.size());
        dz = r(s.z.size());
        dB = r(s.Bm.size());
        dC = r(s.Cm.size());
        dA_log = r(s.A_log.size());
        dD = r(s.D.size());
        dbias = r(s.delta_bias.size());
    }
};

template <typename T>
struct ScanGradsDevice {
    DeviceBuffer<T> du, ddelta, dz, dB, dC, dA_log, dD, dbias;
    explicit ScanGradsDevice(const ScanGradsHost<T>& h)
        : du(h.du),
          ddelta(h.ddelta),
          dz(h.dz),
          dB(h.dB),
          dC(h.dC),
          dA_log(h.dA_log),
          dD(h.dD),
          dbias(h.dbias) {}
    ops::SelectiveScanGrads<T> grads(const ScanCase& c) const {
        return {du.get(), ddelta.get(), c.bias ? dbias.get() : nullptr, dA_log.get(),
                dB.get(), dC.get(),     c.D ? dD.get() : nullptr,       c.z ? dz.get() : nullptr};
    }
};

std::vector<double> abs_all(std::vector<double> v) {
    for (double& x : v) x = std::abs(x);
    return v;
}

#endif  // MSLM_HAVE_CUDA

TYPED_TEST(CudaSelectiveScan, BackwardAccumulatesEveryGradient) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    Rng rng(23);
    for (const ScanCase& c : scan_cases()) {
        SCOPED_TRACE(c.name());
        ScanData<T> s(c, rng);
        const auto dy = random_values<T>(rng, s.y_size(), -1.0, 1.0);
        const auto dyd = decode_all(dy);
        const ScanGradsHost<T> g0(s, rng);

        ScanScales ref{decode_all(g0.du), decode_all(g0.ddelta), decode_all(g0.dz), decode_all(g0.dB),
                       decode_all(g0.dC), decode_all(g0.dA_log), decode_all(g0.dD), decode_all(g0.dbias)};
        ops::selective_scan_backward<double>(
            {ref.du.data(), ref.ddelta.data(), c.bias ? ref.dbias.data() : nullptr, ref.dA_log.data(),
             ref.dB.data(), ref.dC.data(), c.D ? ref.dD.data() : nullptr, c.z ? ref.dz.data() : nullptr},
            dyd.data(), s.ref_inputs(), s.ref_h0(), s.dims);
        const ScanScales init{abs_all(decode_all(g0.du)), abs_all(decode_all(g0.ddelta)),
                              abs_all(decode_all(g0.dz)), abs_all(decode_all(g0.dB)),
                              abs_all(decode_all(g0.dC)), abs_all(decode_all(g0.dA_log)),
                              abs_all(decode_all(g0.dD)), abs_all(decode_all(g0.dbias))};
        const ScanScales sc = scan_backward_scales(s, dyd, init);
        const double rel = (192.0 * (c.T + 1) + c.Din + c.B + 128) * kU;

        DeviceScan<T> dev(s);
        DeviceBuffer<T> d_y(s.y_size()), d_dy(dy);
        DeviceBuffer<float> chunks(ops::cuda::selective_scan_chunk_states_size(s.dims));
        ops::cuda::selective_scan_forward(d_y.get(), static_cast<float*>(nullptr), dev.inputs(), dev.h0_ptr(),
                                          s.dims, chunks.get());
        const size_t ws_bytes = ops::cuda::selective_scan_backward_workspace_bytes(s.dims);
        DeviceBuffer<float> ws(ws_bytes / sizeof(float));
        ScanGradsDevice<T> g(g0);
        ops::cuda::selective_scan_backward(g.grads(c), d_dy.get(), dev.inputs(), chunks.get(), s.dims,
                                           ws.get(), ws_bytes);
        EXPECT_TRUE(all_close(g.du.download(), ref.du, sc.du, rel)) << "du";
        EXPECT_TRUE(all_close(g.ddelta.download(), ref.ddelta, sc.ddelta, rel)) << "ddelta";
        EXPECT_TRUE(all_close(g.dB.download(), ref.dB, sc.dB, rel)) << "dB";
        EXPECT_TRUE(all_close(g.dC.download(), ref.dC, sc.dC, rel)) << "dC";
        EXPECT_TRUE(all_close(g.dA_log.download(), ref.dA_log, sc.dA_log, rel)) << "dA_log";
        if (c.z) {
            EXPECT_TRUE(all_close(g.dz.download(), ref.dz, sc.dz, rel)) << "dz";
        }
        if (c.D) {
            EXPECT_TRUE(all_close(g.dD.download(), ref.dD, sc.dD, rel)) << "dD";
        }
        if (c.bias) {
            EXPECT_TRUE(all_close(g.dbias.download(), ref.dbias, sc.dbias, rel)) << "ddelta_bias";
        }

        // Deterministic: a second run from the same start gives the same bits; and gradients left
        // out (null) change nothing in the others.
        ScanGradsDevice<T> g2(g0);
        ops::SelectiveScanGrads<T> some = g2.grads(c);
        some.dC = nullptr;
        some.dA_log = nullptr;
        ops::cuda::selective_scan_backward(some, d_dy.get(), dev.inputs(), chunks.get(), s.dims, ws.get(),
                                           ws_bytes);
        EXPECT_TRUE(all_equal(g2.du.download(), g.du.download())) << "du, second run";
        EXPECT_TRUE(all_equal(g2.dB.download(), g.dB.download())) << "dB, second run";
        EXPECT_TRUE(all_equal(g2.dC.download(), g0.dC)) << "dC left out";
    }
#endif
}

#ifdef MSLM_HAVE_CUDA

// k updates give the bits of a k-step forward, through slots in any order, and leave the other
// slots alone.
#endif  // MSLM_HAVE_CUDA

TYPED_TEST(CudaSelectiveScan, UpdateMatchesForwardBitwise) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    Rng rng(24);
    for (const ScanCase& c : scan_cases()) {
        if (c.T > 7 && c.Din > 33) continue;  // T launches each; the short cases cover the logic
        SCOPED_TRACE(c.name());
        ScanData<T> s(c, rng);
        DeviceScan<T> dev(s);
        DeviceBuffer<T> d_y(s.y_size());
        DeviceBuffer<float> d_h(s.state_size());
        ops::cuda::selective_scan_forward(d_y.get(), d_h.get(), dev.inputs(), dev.h0_ptr(), s.dims,
                                          static_cast<float*>(nullptr));
        const auto want_y = d_y.download();
        const auto h_last = d_h.download();

        const int64_t S = c.B + 2, per_slot = c.Din * c.N;
        std::vector<int64_t> slots(c.B);
        for (int64_t b = 0; b < c.B; ++b) slots[b] = S - 1 - b;
        std::vector<float> state(S * per_slot);
        for (float& v : state) v = static_cast<float>(rng.uniform(-1.0, 1.0));
        for (int64_t b = 0; b < c.B; ++b)
            for (int64_t i = 0; i < per_slot; ++i)
                state[slots[b] * per_slot + i] = c.h0 ? s.h0[b * per_slot + i] : 0.0f;
        DeviceBuffer<float> d_state(state);
        DeviceBuffer<int64_t> d_slots(slots);
        DeviceBuffer<T> step_y(c.B * c.Din);
        std::vector<T> got(s.y_size());
        for (int64_t t = 0; t < c.T; ++t) {
            // Row b of this step is token t of sequence b: every row stride times T.
            ops::SelectiveScanInputs<T> in = dev.inputs();
            auto at = [&](const T* p, int64_t& ld) {
                const T* q = p ? p + t * ld : nullptr;
                ld *= c.T;
                return q;
            };
            in.u = at(in.u, in.ld_u);
            in.delta = at(in.delta, in.ld_delta);
            in.Bm = at(in.Bm, in.ld_B);
            in.Cm = at(in.Cm, in.ld_C);
            in.z = at(in.z, in.ld_z);
            ops::cuda::selective_scan_update(step_y.get(), d_state.get(), d_slots.get(), in, c.B, c.Din, c.N);
            const auto o = step_y.download();
            for (int64_t b = 0; b < c.B; ++b)
                std::copy_n(o.begin() + b * c.Din, c.Din, got.begin() + (b * c.T + t) * c.Din);
        }
        EXPECT_TRUE(all_equal(got, want_y)) << "y";
        std::vector<float> want_state = state;
        for (int64_t b = 0; b < c.B; ++b)
            std::copy_n(h_last.begin() + b * per_slot, per_slot, want_state.begin() + slots[b] * per_slot);
        EXPECT_TRUE(all_equal(d_state.download(), want_state)) << "states";
    }
#endif
}

TYPED_TEST(CudaSelectiveScan, ChecksArguments) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    auto expect_error = [](auto&& fn, const char* kernel) {
        try {
            fn();
            ADD_FAILURE() << "no error from " << kernel;
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find(kernel), std::string::npos) << e.what();
        }
    };
    const ops::SelectiveScanInputs<T> none{};
    for (int64_t N : {0, 17}) {
        expect_error(
            [&] {
                ops::cuda::selective_scan_forward<T>(nullptr, nullptr, none, nullptr, ScanDims{1, 1, 1, N},
                                                     nullptr);
            },
            "selective_scan_forward");
    }
    EXPECT_NO_THROW(ops::cuda::selective_scan_forward<T>(nullptr, nullptr, none, nullptr,
                                                         ScanDims{0, 5, 8, 16}, nullptr));
    EXPECT_NO_THROW(ops::cuda::selective_scan_update<T>(nullptr, nullptr, nullptr, none, 0, 8, 16));
    DeviceBuffer<float> small(4);
    expect_error(
        [&] {
            ops::cuda::selective_scan_backward<T>({}, nullptr, none, small.get(), ScanDims{1, 3, 8, 16},
                                                  small.get(), 16);
        },
        "selective_scan_backward");
#endif
}

}  // namespace
