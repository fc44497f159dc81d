// The decode step's few-row products on wgmma (ops/cuda/rows_gemm.h) against a double-precision
// reference of the same function: the RMSNorm prologue t = x · rstd · w rounded to bf16, the product,
// then the epilogue's roundings. Bounds: the fp32 sum of I products in any order, 2·(I + 2)·u·Σ|x·w|
// (u the fp32 unit roundoff), as test_cuda_skinny_gemm.cpp argues; a normalised input whose exact
// value lies within 1e-5 (relative) of a bf16 rounding boundary may round either way in fp32, so its
// ulp times |W| joins the bound; each bf16 rounding of the epilogue adds 2^-8 of its value; SwiGLU's
// silu'(g) ≤ 1.1 carries g's error through. Outputs past O inside ld_out are poisoned and must stay.
// Skips, saying why, without a compute capability 9.0 GPU or a build with the sm_90a kernels.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "core/cuda_device.h"
#include "core/rng.h"
#include "cuda_test_util.h"
#include "test_util.h"

#if defined(MSLM_HAVE_CUDA) && defined(MSLM_HAVE_SM90A)
#include "ops/cuda/conv1d.h"
#include "ops/cuda/rows_gemm.h"
#include "ops/cuda/wgmma_probe.h"
#endif

namespace {

using namespace mslm;

#if defined(MSLM_HAVE_CUDA) && defined(MSLM_HAVE_SM90A)
using namespace mslm::test;
using ops::cuda::RowsEpilogue;

std::string no_hopper() {
    if (!cuda_available()) return "no CUDA GPU: " + cuda_device_summary();
    if (!ops::cuda::wgmma_available()) return "not a compute capability 9.0 GPU: " + cuda_device_summary();
    return {};
}

struct Case {
    int64_t M, I, O;
    bool norm;
    RowsEpilogue epi;
    bool bias;
    int64_t pad_x = 0, pad_out = 0;  // ld_x = I + pad_x, ld_out = O + pad_out
};

std::string describe(const Case& c) {
    const char* epi = c.epi == RowsEpilogue::Store      ? "store"
                      : c.epi == RowsEpilogue::Residual ? "residual"
                                                        : "swiglu";
    return "(M, I, O) = (" + std::to_string(c.M) + ", " + std::to_string(c.I) + ", " + std::to_string(c.O) +
           ") " + epi + (c.norm ? " norm" : "") + (c.bias ? " bias" : "") + " ld_x +" +
           std::to_string(c.pad_x) + " ld_out +" + std::to_string(c.pad_out);
}

double silu(double v) {
    return v / (1.0 + std::exp(-v));
}

void check_case(Rng& rng, const Case& c) {
    SCOPED_TRACE(describe(c));
    const bool swiglu = c.epi == RowsEpilogue::SwiGLU;
    const int64_t M = c.M, I = c.I, O = c.O, ld_x = I + c.pad_x, ld_out = O + c.pad_out,
                  rows = swiglu ? 2 * O : O;
    const float eps = 1e-5f;
    const auto x = random_values<uint16_t>(rng, M * ld_x, -2.0, 2.0),
               W = random_values<uint16_t>(rng, rows * I);
    const auto nw = random_values<uint16_t>(rng, I, 0.5, 1.5),
               bias = random_values<uint16_t>(rng, rows, -0.5, 0.5);
    const uint16_t poison = encode<uint16_t>(-7.0);
    std::vector<uint16_t> old(M * ld_out, poison);
    for (int64_t r = 0; r < M; ++r)
        for (int64_t o = 0; o < O; ++o) old[r * ld_out + o] = encode<uint16_t>(rng.uniform(-4.0, 4.0));

    // The product's inputs as the kernel sees them, and each input's possible rounding slack.
    std::vector<double> xn(M * I), slack(M * I, 0.0);
    for (int64_t r = 0; r < M; ++r) {
        double ss = 0.0;
        for (int64_t i = 0; i < I; ++i) ss += decode(x[r * ld_x + i]) * decode(x[r * ld_x + i]);
        const double rstd = 1.0 / std::sqrt(ss / double(I) + double(eps));
        for (int64_t i = 0; i < I; ++i) {
            const double v = decode(x[r * ld_x + i]);
            if (!c.norm) {
                xn[r * I + i] = v;
                continue;
            }
            const double t = v * rstd * decode(nw[i]);
            xn[r * I + i] = decode(encode<uint16_t>(t));
            const double lo = decode(encode<uint16_t>(t * (1.0 - 1e-5))),
                         hi = decode(encode<uint16_t>(t * (1.0 + 1e-5)));
            slack[r * I + i] = std::abs(hi - lo);
        }
    }
    const double rel = 2.0 * double(I + 2) * kU;
    // Weight row n's sum for row r, its error bound.
    auto product = [&](int64_t r, int64_t n, double& err) {
        double sum = 0.0, mag = 0.0, amb = 0.0;
        for (int64_t i = 0; i < I; ++i) {
            const double w = decode(W[n * I + i]);
            sum += xn[r * I + i] * w;
            mag += std::abs(xn[r * I + i] * w);
            amb += slack[r * I + i] * std::abs(w);
        }
        err = rel * mag + amb;
        return sum;
    };
    std::vector<double> want(M * ld_out), tol(M * ld_out, 0.0);
    for (int64_t r = 0; r < M; ++r)
        for (int64_t o = 0; o < ld_out; ++o) {
            const int64_t at = r * ld_out + o;
            if (o >= O) {
                want[at] = decode(poison);
                continue;
            }
            double e = 0.0;
            const double v = product(r, o, e) + (c.bias ? decode(bias[o]) : 0.0);
            if (c.epi == RowsEpilogue::Store) {
                want[at] = v;
                tol[at] = e + 0x1p-8 * std::abs(v);
            } else if (c.epi == RowsEpilogue::Residual) {
                const double before = decode(old[at]);
                want[at] = before + v;
                tol[at] = e + rel * std::abs(before) + (c.bias ? 0x1p-8 * std::abs(v) : 0.0) +
                          0x1p-8 * std::abs(want[at]);
            } else {
                double eu = 0.0;
                const double u = product(r, O + o, eu) + (c.bias ? decode(bias[O + o]) : 0.0);
                const double eg = e + 0x1p-8 * std::abs(v);
                eu += 0x1p-8 * std::abs(u);
                want[at] = silu(v) * u;
                tol[at] = 1.1 * eg * (std::abs(u) + eu) + std::abs(silu(v)) * eu +
                          0x1p-8 * std::abs(want[at]) + 1e-6 * std::abs(want[at]);
            }
        }

    DeviceBuffer<uint16_t> x_d(x), W_d(W), nw_d(nw), b_d(bias), out(old);
    ops::cuda::RowsGemm g;
    g.x = x_d.get();
    g.ld_x = ld_x;
    g.W = W_d.get();
    g.bias = c.bias ? b_d.get() : nullptr;
    g.norm_w = c.norm ? nw_d.get() : nullptr;
    g.eps = eps;
    g.epi = c.epi;
    g.out = out.get();
    g.ld_out = ld_out;
    g.M = M;
    g.I = I;
    g.O = O;
    ASSERT_TRUE(ops::cuda::rows_gemm_takes(g));
    ops::cuda::rows_gemm(g, nullptr);
    const auto got = out.download();
    EXPECT_TRUE(all_within(got, want, tol));
    // Again, with W promised constant: the same bits.
    out.upload(old);
    g.w_constant = true;
    ops::cuda::rows_gemm(g, nullptr);
    EXPECT_TRUE(out.download() == got) << "a second call (W constant) gave other bits";
}
#endif

// The split rule (host arithmetic): clusters grow while the blocks do not fill the GPU once, each
// split keeps a step and the cluster stays ≤ 4 (or the cap MSLM_ROWS_GEMM_MAX_SPLIT sets), and
// beyond that cap until a slice's x fits beside the ring.
TEST(CudaRowsGemm, SplitsFillTheGpuWithinTheClusterLimit) {
#if defined(MSLM_HAVE_CUDA) && defined(MSLM_HAVE_SM90A)
    EXPECT_EQ(ops::cuda::rows_gemm_splits(2048, 768, false, 132), 4);    // 12 tiles: 48 blocks
    EXPECT_EQ(ops::cuda::rows_gemm_splits(768, 3352, false, 132), 4);    // 53 tiles: 212 blocks
    EXPECT_EQ(ops::cuda::rows_gemm_splits(768, 2048, true, 132), 4);     // 64 SwiGLU tiles of 32
    EXPECT_EQ(ops::cuda::rows_gemm_splits(768, 8192, false, 132), 2);    // 128 tiles: 256 blocks
    EXPECT_EQ(ops::cuda::rows_gemm_splits(128, 768, false, 132), 2);     // two steps
    EXPECT_EQ(ops::cuda::rows_gemm_splits(8192, 32000, false, 132), 8);  // x's slice must fit
    {
        test::ScopedEnv cap("MSLM_ROWS_GEMM_MAX_SPLIT", std::string("8"));
        EXPECT_EQ(ops::cuda::rows_gemm_splits(2048, 768, false, 132), 8);  // 96 blocks
        EXPECT_EQ(ops::cuda::rows_gemm_splits(768, 768, false, 132), 8);   // 12 steps: 1 or 2 a split
    }
    {
        test::ScopedEnv cap("MSLM_ROWS_GEMM_MAX_SPLIT", std::string("1"));
        EXPECT_EQ(ops::cuda::rows_gemm_splits(768, 768, false, 132), 1);
        EXPECT_EQ(ops::cuda::rows_gemm_splits(2048, 768, false, 132), 2);  // 32 steps: 16 a slice
    }
#else
    GTEST_SKIP() << "built without the sm_90a kernels";
#endif
}

TEST(CudaRowsGemm, MatchesTheReferenceForEveryEpilogueAndSplit) {
#if defined(MSLM_HAVE_CUDA) && defined(MSLM_HAVE_SM90A)
    if (const std::string why = no_hopper(); !why.empty()) GTEST_SKIP() << why;
    Rng rng(41);
    const Case cases[] = {
        // The 130m decode step's shapes at 64 rows: in_proj, gate/up, down, out_proj, o_proj.
        {64, 768, 3352, true, RowsEpilogue::Store, false},
        {64, 768, 2048, true, RowsEpilogue::SwiGLU, false},
        {64, 2048, 768, false, RowsEpilogue::Residual, false},
        {64, 1536, 768, false, RowsEpilogue::Residual, false},
        {64, 768, 768, false, RowsEpilogue::Residual, true},
        // Partial row and column tiles, I off a step, strides, biases, splits of 1 to 8.
        {1, 768, 1152, true, RowsEpilogue::Store, true},
        {7, 200, 100, true, RowsEpilogue::Store, false, 8, 3},
        {33, 136, 70, true, RowsEpilogue::SwiGLU, true},
        {17, 1088, 96, true, RowsEpilogue::Residual, false, 0, 5},
        {64, 2048, 768, true, RowsEpilogue::Store, false},  // a norm over 8 slices
        {5, 4096, 300, true, RowsEpilogue::SwiGLU, true},
        {3, 72, 65, false, RowsEpilogue::Residual, false, 16, 0},
        {48, 768, 3352, false, RowsEpilogue::Store, true},
        {32, 2048, 512, false, RowsEpilogue::SwiGLU, false},
        {64, 8, 1, false, RowsEpilogue::Store, false},
    };
    for (const Case& c : cases) check_case(rng, c);
#else
    GTEST_SKIP() << "built without the sm_90a kernels";
#endif
}

// The store epilogue with Mamba-2's conv (130m's in_proj at 40 rows: the conv over xBC, columns 1536 ..
// 3327 of 3352; slots out of order): the outputs, the conv's outputs and every window bit for bit
// those of the plain product followed by ops::cuda::conv1d_causal_update, with and without the norm.
TEST(CudaRowsGemm, StoreWithConvIsTheProductThenTheConvUpdate) {
#if defined(MSLM_HAVE_CUDA) && defined(MSLM_HAVE_SM90A)
    if (const std::string why = no_hopper(); !why.empty()) GTEST_SKIP() << why;
    Rng rng(43);
    const int64_t M = 40, I = 768, O = 3352, col0 = 1536, C = 1792, K = 4, slots = 48;
    const auto x = random_values<uint16_t>(rng, M * I), W = random_values<uint16_t>(rng, O * I);
    const auto nw = random_values<uint16_t>(rng, I, 0.5, 1.5),
               bias = random_values<uint16_t>(rng, O, -0.5, 0.5);
    const auto state = random_values<uint16_t>(rng, slots * (K - 1) * C),
               cw = random_values<uint16_t>(rng, C * K);
    const auto cb = random_values<uint16_t>(rng, C, -0.5, 0.5);
    std::vector<int64_t> slot_of(M);
    for (int64_t r = 0; r < M; ++r) slot_of[r] = (7 * r + 3) % slots;
    DeviceBuffer<uint16_t> x_d(x), W_d(W), nw_d(nw), b_d(bias), cw_d(cw), cb_d(cb);
    DeviceBuffer<int64_t> slots_d(slot_of);
    for (bool norm : {false, true}) {
        SCOPED_TRACE(norm ? "norm" : "no norm");
        DeviceBuffer<uint16_t> out_a(static_cast<size_t>(M * O)), out_b(static_cast<size_t>(M * O)),
            conv_a(static_cast<size_t>(M * C)), conv_b(static_cast<size_t>(M * C)), state_a(state),
            state_b(state);
        ops::cuda::RowsGemm g;
        g.x = x_d.get();
        g.ld_x = I;
        g.W = W_d.get();
        g.bias = b_d.get();
        g.norm_w = norm ? nw_d.get() : nullptr;
        g.eps = 1e-5f;
        g.ld_out = O;
        g.M = M;
        g.I = I;
        g.O = O;
        g.out = out_b.get();
        ASSERT_TRUE(ops::cuda::rows_gemm_takes(g));
        ops::cuda::rows_gemm(g, nullptr);
        ops::cuda::conv1d_causal_update(conv_b.get(), state_b.get(), slots_d.get(), out_b.get() + col0, O,
                                        cw_d.get(), cb_d.get(), M, C, K, true);
        g.out = out_a.get();
        g.conv_state = state_a.get();
        g.conv_slots = slots_d.get();
        g.conv_w = cw_d.get();
        g.conv_b = cb_d.get();
        g.conv_out = conv_a.get();
        g.conv_col0 = col0;
        g.conv_C = C;
        g.conv_K = K;
        ASSERT_TRUE(ops::cuda::rows_gemm_takes(g));
        ops::cuda::rows_gemm(g, nullptr);
        EXPECT_TRUE(out_a.download() == out_b.download()) << "the product's outputs";
        EXPECT_TRUE(conv_a.download() == conv_b.download()) << "the conv's outputs";
        EXPECT_TRUE(state_a.download() == state_b.download()) << "the windows";
    }
#else
    GTEST_SKIP() << "built without the sm_90a kernels";
#endif
}

// What it cannot take it refuses: more than 64 rows, I off a multiple of 8 or past 8 slices of 17
// steps, a misaligned x or W, MSLM_ROWS_GEMM=0.
TEST(CudaRowsGemm, RefusesWhatItCannotTake) {
#if defined(MSLM_HAVE_CUDA) && defined(MSLM_HAVE_SM90A)
    if (const std::string why = no_hopper(); !why.empty()) GTEST_SKIP() << why;
    DeviceBuffer<uint16_t> x(std::vector<uint16_t>(65 * 8712)), W(std::vector<uint16_t>(16 * 8712)),
        out(std::vector<uint16_t>(65 * 16));
    ops::cuda::RowsGemm g;
    g.x = x.get();
    g.W = W.get();
    g.out = out.get();
    g.M = 4;
    g.I = g.ld_x = 80;
    g.O = g.ld_out = 16;
    EXPECT_TRUE(ops::cuda::rows_gemm_takes(g));
    {
        ops::cuda::RowsGemm h = g;
        h.I = h.ld_x = 8704;
        EXPECT_TRUE(ops::cuda::rows_gemm_takes(h));
    }
    auto refused = [&](auto change) {
        ops::cuda::RowsGemm h = g;
        change(h);
        return !ops::cuda::rows_gemm_takes(h);
    };
    EXPECT_TRUE(refused([](auto& h) { h.M = 65; }));
    EXPECT_TRUE(refused([](auto& h) { h.I = h.ld_x = 79; }));
    EXPECT_TRUE(refused([&](auto& h) { h.x = x.get() + 1; }));
    EXPECT_TRUE(refused([&](auto& h) { h.W = W.get() + 1; }));
    EXPECT_TRUE(refused([](auto& h) { h.I = h.ld_x = 8712; }));
    {
        test::ScopedEnv off("MSLM_ROWS_GEMM", std::string("0"));
        EXPECT_FALSE(ops::cuda::rows_gemm_takes(g));
    }
#else
    GTEST_SKIP() << "built without the sm_90a kernels";
#endif
}

}  // namespace
