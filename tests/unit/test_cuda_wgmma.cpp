// The Hopper matrix-product building blocks (ops/cuda/wgmma.cuh through ops/cuda/wgmma_probe.h)
// against a double-precision product of the same bf16 inputs: every combination of A from shared
// memory or registers and B K-major or MN-major, at one and at three 64-deep steps. The bound is
// the fp32 sum of K products in any order, 2·(K + 2)·u·Σ|a·b| (u the fp32 unit roundoff), per output.
// Each output is poisoned (NaN) before the run, so an unwritten one fails. Skips, saying why,
// without a compute capability 9.0 GPU or a build with the sm_90a kernels.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "core/cuda_device.h"
#include "core/rng.h"
#include "cuda_test_util.h"
#include "test_util.h"

#if defined(MSLM_HAVE_CUDA) && defined(MSLM_HAVE_SM90A)
#include <algorithm>

#include "ops/cuda/attention.h"
#include "ops/cuda/attention_wgmma.h"
#include "ops/cuda/wgmma_probe.h"
#endif

namespace {

using namespace mslm;

#if defined(MSLM_HAVE_CUDA) && defined(MSLM_HAVE_SM90A)
// Why these tests cannot run here (empty when they can): they need a compute capability 9.0 GPU.
std::string no_hopper() {
    if (!cuda_available()) return "no CUDA GPU: " + cuda_device_summary();
    if (!ops::cuda::wgmma_available()) return "not a compute capability 9.0 GPU: " + cuda_device_summary();
    return {};
}

// q, k and v as column slices of fused rows (Hq + 2·Hkv)·Dh wide, as the attention layer keeps them.
struct QkvSlices {
    const uint16_t *q, *k, *v;
};
QkvSlices qkv_slices(const uint16_t* qkv, int64_t Hq, int64_t Hkv, int64_t Dh) {
    return {qkv, qkv + Hq * Dh, qkv + (Hq + Hkv) * Dh};
}
// The scale both attention tests use (1/√64).
ops::cuda::AttentionOptions test_options() {
    ops::cuda::AttentionOptions opt;
    opt.scale = 0.125f;
    return opt;
}
#endif

TEST(CudaWgmma, TileProductsMatchTheReference) {
#if defined(MSLM_HAVE_CUDA) && defined(MSLM_HAVE_SM90A)
    if (const std::string why = no_hopper(); !why.empty()) GTEST_SKIP() << why;
    Rng rng(7);
    for (int64_t K : {64, 192})
        for (bool b_kmajor : {true, false})
            for (bool a_registers : {false, true}) {
                const std::vector<uint16_t> A =
                    test::random_values<uint16_t>(rng, static_cast<size_t>(64 * K));
                const std::vector<uint16_t> B =
                    test::random_values<uint16_t>(rng, static_cast<size_t>(64 * K));
                test::DeviceBuffer<uint16_t> dA(A), dB(B);
                test::DeviceBuffer<float> dout(
                    std::vector<float>(64 * 64, std::numeric_limits<float>::quiet_NaN()));
                ops::cuda::wgmma_tile_product(dout.get(), dA.get(), dB.get(), K, b_kmajor, a_registers);
                const std::vector<float> got = dout.download();
                int bad = 0;
                for (int i = 0; i < 64; ++i)
                    for (int j = 0; j < 64; ++j) {
                        double ref = 0.0, mag = 0.0;
                        for (int64_t k = 0; k < K; ++k) {
                            const double a = test::decode(A[static_cast<size_t>(i * K + k)]);
                            const double b = test::decode(b_kmajor ? B[static_cast<size_t>(j * K + k)]
                                                                   : B[static_cast<size_t>(k * 64 + j)]);
                            ref += a * b;
                            mag += std::fabs(a * b);
                        }
                        const double v = got[static_cast<size_t>(i * 64 + j)];
                        if (!(std::fabs(v - ref) <=
                              2.0 * static_cast<double>(K + 2) * test::kU * mag + 1e-30))
                            ++bad;
                    }
                EXPECT_EQ(bad, 0) << "K " << K << (b_kmajor ? ", B K-major" : ", B MN-major")
                                  << (a_registers ? ", A from registers" : ", A from shared memory");
            }
#else
    GTEST_SKIP() << "built without CUDA or without the sm_90a kernels";
#endif
}

// The wgmma attention forward (MSLM_ATTN_WGMMA=1) against the mma.sync kernel on the same inputs:
// q, k, v as slices of one fused projection (GQA 4 over 2), causal, head dims 64 and 128, T below, at
// and past a 128-row block. Both round the softmax weights to bf16 once for P·V and sum in fp32, in different
// orders, and the weights' maxima are taken in other units: an output may move by a few of its
// terms' bf16 roundings, bounded here by 2^-6 of the largest output; lse by 1e-3.
TEST(CudaWgmma, AttentionForwardMatchesTheMmaKernel) {
#if defined(MSLM_HAVE_CUDA) && defined(MSLM_HAVE_SM90A)
    if (const std::string why = no_hopper(); !why.empty()) GTEST_SKIP() << why;
    Rng rng(11);
    const int64_t B = 2, Hq = 4, Hkv = 2;
    for (int64_t Dh : {64, 128})  // 128: two consumer warpgroups, tiles in 64-column halves
        for (int64_t T : {37, 128, 300, 1000}) {
            const int64_t W = (Hq + 2 * Hkv) * Dh;
            const std::vector<uint16_t> qkv =
                test::random_values<uint16_t>(rng, static_cast<size_t>(B * T * W), -2.0, 2.0);
            test::DeviceBuffer<uint16_t> dqkv(qkv);
            const auto [q, k, v] = qkv_slices(dqkv.get(), Hq, Hkv, Dh);
            ops::AttentionDims dims{B, T, Hq, Hkv, Dh};
            const ops::cuda::AttentionOptions opt = test_options();
            ASSERT_TRUE(
                ops::cuda::attention_forward_wgmma_takes(Dh, false, opt.scale, 0, 0, q, W, k, W, v, W));
            const size_t n_out = static_cast<size_t>(B * T * Hq * Dh),
                         n_lse = static_cast<size_t>(B * Hq * T);
            auto run = [&](const char* wgmma) {
                test::ScopedEnv env("MSLM_ATTN_WGMMA", std::string(wgmma));
                test::DeviceBuffer<uint16_t> out(
                    std::vector<uint16_t>(n_out, 0x7fc0));  // NaN bits: unwritten shows
                test::DeviceBuffer<float> lse(
                    std::vector<float>(n_lse, std::numeric_limits<float>::quiet_NaN()));
                ops::cuda::attention_forward(out.get(), lse.get(), q, W, k, W, v, W, dims, opt);
                cuda_synchronize();
                return std::pair(test::decode_all(out.download()), lse.download());
            };
            const auto [ref_out, ref_lse] = run("0");
            double big = 0.0;
            for (double x : ref_out) big = std::max(big, std::fabs(x));
            // Consumer warpgroups a block (128 or 192 query rows), with and without the turns, K/V buffers.
            for (const char* variant : {"2 0 3", "3 0 3", "2 1 3", "3 1 3", "3 1 2"}) {
                const std::string wgs(variant, 1), pp(variant + 2, 1), stages(variant + 4, 1);
                test::ScopedEnv env("MSLM_ATTN_WGMMA_WG", wgs), env_pp("MSLM_ATTN_WGMMA_PP", pp),
                    env_st("MSLM_ATTN_WGMMA_STAGES", stages);
                const auto [got_out, got_lse] = run("1");
                int bad = 0, bad_lse = 0;
                for (size_t i = 0; i < n_out; ++i)
                    if (!(std::fabs(got_out[i] - ref_out[i]) <= 0x1p-6 * big)) ++bad;
                for (size_t i = 0; i < n_lse; ++i)
                    if (!(std::fabs(double(got_lse[i]) - double(ref_lse[i])) <= 1e-3)) ++bad_lse;
                EXPECT_EQ(bad, 0) << "Dh " << Dh << ", T " << T << ", warpgroups / turns / stages " << variant
                                  << " (largest output " << big << ")";
                EXPECT_EQ(bad_lse, 0)
                    << "Dh " << Dh << ", T " << T << ", warpgroups / turns / stages " << variant;
            }
        }
#else
    GTEST_SKIP() << "built without CUDA or without the sm_90a kernels";
#endif
}

// The wgmma backward (MSLM_ATTN_WGMMA=1) against the mma.sync kernels on the same inputs and the
// same saved forward (out, lse from the mma.sync forward): dq, dk, dv accumulated onto a random start,
// bounded by 2^-6 of each gradient's largest magnitude (the same roundings of p and dS to bf16, sums
// in other orders).
TEST(CudaWgmma, AttentionBackwardMatchesTheMmaKernels) {
#if defined(MSLM_HAVE_CUDA) && defined(MSLM_HAVE_SM90A)
    if (const std::string why = no_hopper(); !why.empty()) GTEST_SKIP() << why;
    Rng rng(13);
    const int64_t B = 2, Hq = 4, Hkv = 2, Dh = 64, W = (Hq + 2 * Hkv) * Dh;
    for (int64_t T : {37, 128, 300, 1000}) {
        const std::vector<uint16_t> qkv =
            test::random_values<uint16_t>(rng, static_cast<size_t>(B * T * W), -2.0, 2.0);
        const size_t n_out = static_cast<size_t>(B * T * Hq * Dh), n_lse = static_cast<size_t>(B * Hq * T);
        const std::vector<uint16_t> dout_h = test::random_values<uint16_t>(rng, n_out);
        const std::vector<uint16_t> start =
            test::random_values<uint16_t>(rng, static_cast<size_t>(B * T * W));
        test::DeviceBuffer<uint16_t> dqkv(qkv), dout(dout_h), out(n_out);
        test::DeviceBuffer<float> lse(n_lse);
        const auto [q, k, v] = qkv_slices(dqkv.get(), Hq, Hkv, Dh);
        ops::AttentionDims dims{B, T, Hq, Hkv, Dh};
        const ops::cuda::AttentionOptions opt = test_options();
        {
            test::ScopedEnv env("MSLM_ATTN_WGMMA", std::string("0"));
            ops::cuda::attention_forward(out.get(), lse.get(), q, W, k, W, v, W, dims, opt);
        }
        auto run = [&](const char* wgmma) {
            test::ScopedEnv env("MSLM_ATTN_WGMMA", std::string(wgmma));
            test::DeviceBuffer<uint16_t> grad(start);  // dq, dk, dv as slices of one fused gradient
            uint16_t* gq = grad.get();
            ops::cuda::attention_backward(gq, gq + Hq * Dh, gq + (Hq + Hkv) * Dh, dout.get(), out.get(),
                                          lse.get(), q, W, k, W, v, W, dims, opt);
            cuda_synchronize();
            return test::decode_all(grad.download());
        };
        const std::vector<double> ref = run("0");
        // Q/dO tile buffers, and dQ by the consumers' turns or by a fourth warpgroup.
        for (const auto& [stages, dq_wg] :
             {std::pair{"2", "0"}, std::pair{"3", "0"}, std::pair{"2", "1"}, std::pair{"3", "1"}}) {
            test::ScopedEnv env_st("MSLM_ATTN_WGMMA_STAGES", std::string(stages));
            test::ScopedEnv env_wg("MSLM_ATTN_WGMMA_DQWG", std::string(dq_wg));
            const std::vector<double> got = run("1");
            // Per part (q, k, v columns of the fused rows): the largest change from the start.
            const std::vector<double> s0 = test::decode_all(start);
            for (int part = 0; part < 3; ++part) {
                const int64_t c0 = part == 0   ? 0
                                   : part == 1 ? Hq * Dh
                                               : (Hq + Hkv) * Dh,
                              c1 = part == 0   ? Hq * Dh
                                   : part == 1 ? (Hq + Hkv) * Dh
                                               : W;
                double big = 0.0;
                for (int64_t r = 0; r < B * T; ++r)
                    for (int64_t c = c0; c < c1; ++c) {
                        const size_t i = static_cast<size_t>(r * W + c);
                        big = std::max(big, std::fabs(ref[i] - s0[i]));
                    }
                int bad = 0;
                for (int64_t r = 0; r < B * T; ++r)
                    for (int64_t c = c0; c < c1; ++c) {
                        const size_t i = static_cast<size_t>(r * W + c);
                        if (!(std::fabs(got[i] - ref[i]) <= 0x1p-6 * big + 0x1p-8 * std::fabs(ref[i]))) ++bad;
                    }
                EXPECT_EQ(bad, 0) << "T " << T << ", d"
                                  << "qkv"[part] << ", stages " << stages << ", dQ warpgroup " << dq_wg
                                  << " (largest change " << big << ")";
            }
        }
    }
#else
    GTEST_SKIP() << "built without CUDA or without the sm_90a kernels";
#endif
}

}  // namespace
