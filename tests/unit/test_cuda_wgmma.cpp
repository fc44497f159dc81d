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
#include <vector>

#include "core/cuda_device.h"
#include "core/rng.h"
#include "cuda_test_util.h"

#if defined(MSLM_HAVE_CUDA) && defined(MSLM_HAVE_SM90A)
#include "ops/cuda/wgmma_probe.h"
#endif

namespace {

using namespace mslm;

TEST(CudaWgmma, TileProductsMatchTheReference) {
#if defined(MSLM_HAVE_CUDA) && defined(MSLM_HAVE_SM90A)
    if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU: " << cuda_device_summary();
    if (!ops::cuda::wgmma_available())
        GTEST_SKIP() << "not a compute capability 9.0 GPU: " << cuda_device_summary();
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

}  // namespace
