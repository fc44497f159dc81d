// The few-row tensor-core product (ops/cuda/skinny_gemm.h) against ops::linear_forward with
// T = double on the decoded bf16 inputs. Bound (as test_cuda_linear_adamw.cpp argues for cuBLASLt):
// the fp32 sums of K = I products and one more term (the old output of Bf16Add) in any order, with
// tensor-core additions truncating, 2·(K + 2)·u·S for S the sum of the terms' magnitudes; + 2^-8·|ref|
// for a bf16 output's one rounding. Shapes cover one to four row tiles, partial row and column tiles,
// I below one k step and splits of 1 to 8 (the cluster sizes the rule picks on an H200).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

#include "core/cuda_device.h"
#include "core/rng.h"
#include "cuda_test_util.h"
#include "ops/cuda/linear.h"
#include "ops/cuda/skinny_gemm.h"
#include "ops/linear.h"
#include "test_util.h"

namespace {

using namespace mslm;

// The split rule (host arithmetic, every CUDA build): clusters grow while the blocks do not fill
// two per multiprocessor and each split keeps two 64-deep k steps.
TEST(SkinnyGemmSplits, FillTheGpuWithinTheClusterLimit) {
#ifdef MSLM_HAVE_CUDA
    EXPECT_EQ(ops::cuda::skinny_gemm_splits(2048, 768, 132), 8);   // 12 column tiles: 96 blocks
    EXPECT_EQ(ops::cuda::skinny_gemm_splits(1536, 768, 132), 8);   // 24 k steps: 3 a split
    EXPECT_EQ(ops::cuda::skinny_gemm_splits(768, 768, 132), 4);    // 12 k steps: 8 splits would leave 1 or 2
    EXPECT_EQ(ops::cuda::skinny_gemm_splits(768, 3352, 132), 4);   // 53 tiles: 212 blocks
    EXPECT_EQ(ops::cuda::skinny_gemm_splits(2048, 8512, 132), 2);  // 133 tiles: 266 ≥ 264 blocks
    EXPECT_EQ(ops::cuda::skinny_gemm_splits(768, 32000, 132), 1);  // 500 tiles fill the GPU alone
    EXPECT_EQ(ops::cuda::skinny_gemm_splits(64, 64, 132), 1);      // one k step
#else
    GTEST_SKIP() << "built without CUDA";
#endif
}

#ifdef MSLM_HAVE_CUDA
using namespace mslm::test;

std::string where(int64_t M, int64_t I, int64_t O, const char* kind) {
    return std::string(kind) + " (M, I, O) = (" + std::to_string(M) + ", " + std::to_string(I) + ", " +
           std::to_string(O) + ")";
}

// One product of each output kind, checked against the double reference; the kernel must have taken
// the call (skinny_gemm returns true), and a second call gives the same bits, with W promised constant
// too.
void check_shape(Rng& rng, int64_t M, int64_t I, int64_t O) {
    const auto x = random_values<uint16_t>(rng, M * I), W = random_values<uint16_t>(rng, O * I);
    const auto old = random_values<uint16_t>(rng, M * O, -4.0, 4.0);
    const auto xd = decode_all(x), Wd = decode_all(W), oldd = decode_all(old);
    std::vector<double> xa(xd.size()), Wa(Wd.size());
    for (size_t i = 0; i < xd.size(); ++i) xa[i] = std::abs(xd[i]);
    for (size_t i = 0; i < Wd.size(); ++i) Wa[i] = std::abs(Wd[i]);
    std::vector<double> ref(M * O), scale(M * O);
    ops::linear_forward<double>(ref.data(), xd.data(), Wd.data(), nullptr, M, I, O);
    ops::linear_forward<double>(scale.data(), xa.data(), Wa.data(), nullptr, M, I, O);
    const double rel = 2.0 * double(I + 2) * kU;
    DeviceBuffer<uint16_t> x_d(x), W_d(W);

    {
        SCOPED_TRACE(where(M, I, O, "bf16"));
        DeviceBuffer<uint16_t> out(static_cast<size_t>(M * O));
        ASSERT_TRUE(
            ops::cuda::skinny_gemm(ops::cuda::SkinnyOut::Bf16, out.get(), x_d.get(), W_d.get(), M, I, O));
        const auto got = out.download();
        std::vector<double> tol(ref.size());
        for (size_t i = 0; i < ref.size(); ++i) tol[i] = rel * scale[i] + 0x1p-8 * std::abs(ref[i]);
        EXPECT_TRUE(all_within(got, ref, tol));
        out.upload(old);  // other values first, so that an output left unwritten would show
        ASSERT_TRUE(
            ops::cuda::skinny_gemm(ops::cuda::SkinnyOut::Bf16, out.get(), x_d.get(), W_d.get(), M, I, O));
        EXPECT_TRUE(out.download() == got) << "a second call gave other bits";
        // W promised constant (its first steps copied before the kernel's wait): the same bits.
        out.upload(old);
        ASSERT_TRUE(ops::cuda::skinny_gemm(ops::cuda::SkinnyOut::Bf16, out.get(), x_d.get(), W_d.get(), M, I,
                                           O, nullptr, true));
        EXPECT_TRUE(out.download() == got) << "w_constant changed the bits";
    }
    {
        SCOPED_TRACE(where(M, I, O, "bf16 +="));
        DeviceBuffer<uint16_t> out(old);
        ASSERT_TRUE(
            ops::cuda::skinny_gemm(ops::cuda::SkinnyOut::Bf16Add, out.get(), x_d.get(), W_d.get(), M, I, O));
        std::vector<double> want(ref.size()), tol(ref.size());
        for (size_t i = 0; i < ref.size(); ++i) {
            want[i] = oldd[i] + ref[i];
            tol[i] = rel * (scale[i] + std::abs(oldd[i])) + 0x1p-8 * std::abs(want[i]);
        }
        EXPECT_TRUE(all_within(out.download(), want, tol));
    }
    {
        SCOPED_TRACE(where(M, I, O, "f32"));
        DeviceBuffer<float> out(static_cast<size_t>(M * O));
        ASSERT_TRUE(
            ops::cuda::skinny_gemm(ops::cuda::SkinnyOut::F32, out.get(), x_d.get(), W_d.get(), M, I, O));
        std::vector<double> tol(ref.size());
        for (size_t i = 0; i < ref.size(); ++i) tol[i] = rel * scale[i];
        EXPECT_TRUE(all_within(out.download(), ref, tol));
    }
}
#endif  // MSLM_HAVE_CUDA

TEST(CudaSkinnyGemm, MatchesTheReferenceForEveryRowCountAndSplit) {
#ifdef MSLM_HAVE_CUDA
    if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU: " << cuda_device_summary();
    Rng rng(31);
    for (int64_t M : {1, 2, 5, 16, 17, 33, 48, 64})
        for (auto [I, O] : {std::tuple<int64_t, int64_t>{8, 1},
                            {64, 64},
                            {72, 100},
                            {136, 65},
                            {768, 3352},
                            {1536, 768},
                            {2048, 768}})
            check_shape(rng, M, I, O);
#else
    GTEST_SKIP() << "built without CUDA";
#endif
}

// What the kernel refuses — more than 64 rows, I not a multiple of 8, a misaligned x or W — it leaves
// untouched, and linear_forward takes cuBLASLt for it (still correct; the CudaLinear suite's odd
// shapes and misaligned pointers). MSLM_SKINNY_GEMM=0 refuses everything.
TEST(CudaSkinnyGemm, RefusesWhatItCannotTake) {
#ifdef MSLM_HAVE_CUDA
    if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU: " << cuda_device_summary();
    Rng rng(32);
    const auto x = random_values<uint16_t>(rng, 65 * 80), W = random_values<uint16_t>(rng, 16 * 80);
    DeviceBuffer<uint16_t> x_d(x), W_d(W), out(std::vector<uint16_t>(65 * 16, 7));
    using ops::cuda::SkinnyOut;
    EXPECT_FALSE(ops::cuda::skinny_gemm(SkinnyOut::Bf16, out.get(), x_d.get(), W_d.get(), 65, 80, 16));
    EXPECT_FALSE(ops::cuda::skinny_gemm(SkinnyOut::Bf16, out.get(), x_d.get(), W_d.get(), 4, 79, 16));
    EXPECT_FALSE(ops::cuda::skinny_gemm(SkinnyOut::Bf16, out.get(), x_d.get() + 1, W_d.get(), 4, 72, 16));
    EXPECT_FALSE(ops::cuda::skinny_gemm(SkinnyOut::Bf16, out.get(), x_d.get(), W_d.get() + 1, 4, 72, 16));
    {
        test::ScopedEnv off("MSLM_SKINNY_GEMM", std::string("0"));
        EXPECT_FALSE(ops::cuda::skinny_gemm(SkinnyOut::Bf16, out.get(), x_d.get(), W_d.get(), 4, 80, 16));
    }
    EXPECT_TRUE(out.download() == std::vector<uint16_t>(65 * 16, 7)) << "a refused call wrote";
    EXPECT_TRUE(ops::cuda::skinny_gemm(SkinnyOut::Bf16, out.get(), x_d.get(), W_d.get(), 4, 80, 16));
#else
    GTEST_SKIP() << "built without CUDA";
#endif
}

}  // namespace
