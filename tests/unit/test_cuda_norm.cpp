// CUDA norms (ops/cuda/norm.h) against the CPU reference ops (ops/norm.h) run in double on the very
// values the kernels read (bf16 inputs decoded; the fp32 rstd and mean the backward is given).
// Every test exists in every build and skips, saying why, without CUDA or a GPU; CudaNormShapes
// needs no GPU (its checks throw before anything is launched).
//
// Tolerances, with u = 2^-24 (fp32 unit roundoff) and the rounding model of the brief: an fp32 sum
// of n terms, in any order, errs by at most n·u times the sum of the terms' magnitudes, and each
// fp32 +, ×, /, sqrt adds u relative (expf: 2 ulp).
// - Forward over a row of D: Σx² has relative error ≤ D·u (its terms are all ≥ 0), rstd half of
//   that plus a few roundings, out two more products: (D + 16)·u relative to |out|. LayerNorm's
//   mean adds (D + 1)·u·mean|x| to x − mean, hence the scale |x − mean|·rstd·|w| + rstd·|w|·mean|x| + |b|.
//   The gated norm's x·silu(z) adds ~8 roundings before the group sum: (Dg + 32)·u.
// - The gated backward in bf16 takes σ(z) and 1 − σ(z) for silu's derivative from the fast
//   exponential and divide, and silu(z) for dx from silu_fast: each within (1.2·|z| + 4)·2^-23
//   relative (common.cuh), 11.2·2^-23 at the tests' |z| ≤ 6, so dx's and dz's terms get twice that,
//   kFastSigmoid (far inside the 2^-8 of the store's rounding, but added to the scale-relative bound).
// - Backward dx: the row sum (e.g. Σ dout·w·x) errs by (D + 2)·u of its magnitude sum, which enters
//   dx scaled by |x|·rstd³/D; the scale is |dx₀| plus each term's magnitude, tolerance (D + 32)·u.
// - Parameter gradients: a column sum of N terms plus the starting value: (N + 16)·u relative to
//   |dw₀| + Σ|terms| (each term carries a few roundings of its own, ≤ 16·u).
// - bf16 outputs: one more rounding to nearest even on store, ≤ 2^-8 · |result|.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "core/cuda_device.h"
#include "core/error.h"
#include "core/rng.h"
#include "cuda_test_util.h"
#include "ops/norm.h"
#include "test_util.h"

#ifdef MSLM_HAVE_CUDA
#include <cuda_runtime.h>

#include "ops/cuda/norm.h"
#endif

namespace {

using namespace mslm;

template <typename T>
class CudaNorm : public test::CudaTest {};
template <typename T>
class CudaGatedNorm : public test::CudaTest {};

TYPED_TEST_SUITE(CudaNorm, test::Dtypes, test::DtypeNames);
TYPED_TEST_SUITE(CudaGatedNorm, test::Dtypes, test::DtypeNames);

#ifdef MSLM_HAVE_CUDA

using namespace mslm::test;

constexpr float kEps = 1e-5f;
template <typename T>
constexpr double kFastSigmoid = kBf16<T> ? 2.0 * (1.2 * 6.0 + 4.0) * 0x1p-23 : 0.0;

// (N, D): odd D take the one-element path; 768 and 4096 the 16-byte one at offset 0. N = 1300 > 512
// makes backward blocks sum several rows; D = 16384 needs more than 48 KiB of shared memory for
// the parameter gradients' partials.
const int64_t kShapes[][2] = {{1, 1},   {3, 7},    {5, 33},   {37, 768}, {9, 1537},
                              {4, 4096}, {1300, 33}, {600, 768}, {2, 16384}};
const size_t kOffsets[] = {0, 1};

std::string where(int64_t N, int64_t D, size_t offset) {
    return "(N, D) = (" + std::to_string(N) + ", " + std::to_string(D) + "), offset = " + std::to_string(offset);
}

std::vector<double> abs_all(const std::vector<double>& v) {
    std::vector<double> out(v.size());
    for (size_t i = 0; i < v.size(); ++i) out[i] = std::abs(v[i]);
    return out;
}

// rstd (and mean) as the backward gets them: computed in double, stored as fp32.
std::vector<float> to_float(const std::vector<double>& v) {
    return std::vector<float>(v.begin(), v.end());
}
std::vector<double> to_double(const std::vector<float>& v) {
    return std::vector<double>(v.begin(), v.end());
}

#endif  // MSLM_HAVE_CUDA

TYPED_TEST(CudaNorm, RmsnormForward) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    Rng rng(1);
    for (const auto& shape : kShapes) {
        const int64_t N = shape[0], D = shape[1];
        for (size_t offset : kOffsets) {
            SCOPED_TRACE(where(N, D, offset));
            const auto x = random_values<T>(rng, N * D, -2.0, 2.0);
            const auto w = random_values<T>(rng, D, -1.5, 1.5);
            std::vector<double> out(N * D), rstd(N);
            ops::rmsnorm_forward<double>(out.data(), rstd.data(), decode_all(x).data(), decode_all(w).data(), N, D,
                                         double(kEps));

            DeviceBuffer<T> d_x(x, offset), d_w(w, offset), d_out(std::vector<T>(N * D), offset);
            DeviceBuffer<float> d_rstd{std::vector<float>(N)};
            ops::cuda::rmsnorm_forward(d_out.get(), d_rstd.get(), d_x.get(), d_w.get(), N, D, kEps);
            const double rel = double(D + 16) * kU;
            EXPECT_TRUE(all_close(d_out.download(), out, abs_all(out), rel));
            EXPECT_TRUE(all_close(d_rstd.download(), rstd, abs_all(rstd), rel));
        }
    }
#endif
}

// res += x, then the norm of res as stored: the reference normalises the res the kernel wrote.
TYPED_TEST(CudaNorm, ResidualRmsnormForward) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    Rng rng(2);
    for (const auto& shape : kShapes) {
        const int64_t N = shape[0], D = shape[1];
        for (size_t offset : kOffsets) {
            SCOPED_TRACE(where(N, D, offset));
            const auto x = random_values<T>(rng, N * D, -2.0, 2.0);
            const auto res0 = random_values<T>(rng, N * D, -2.0, 2.0);
            const auto w = random_values<T>(rng, D, -1.5, 1.5);
            std::vector<double> sum(N * D), sum_scale(N * D);
            for (int64_t i = 0; i < N * D; ++i) {
                sum[i] = decode(res0[i]) + decode(x[i]);
                sum_scale[i] = std::abs(decode(res0[i])) + std::abs(decode(x[i]));
            }

            DeviceBuffer<T> d_x(x, offset), d_res(res0, offset), d_w(w, offset),
                d_out(std::vector<T>(N * D), offset);
            DeviceBuffer<float> d_rstd{std::vector<float>(N)};
            ops::cuda::residual_rmsnorm_forward(d_out.get(), d_rstd.get(), d_res.get(), d_x.get(), d_w.get(), N, D,
                                                kEps);
            const auto res = d_res.download();
            EXPECT_TRUE(all_close(res, sum, sum_scale, 2 * kU)) << "res";

            std::vector<double> out(N * D), rstd(N);
            ops::rmsnorm_forward<double>(out.data(), rstd.data(), decode_all(res).data(), decode_all(w).data(), N,
                                         D, double(kEps));
            const double rel = double(D + 16) * kU;
            EXPECT_TRUE(all_close(d_out.download(), out, abs_all(out), rel));
            EXPECT_TRUE(all_close(d_rstd.download(), rstd, abs_all(rstd), rel));

            // Into another buffer (res = res_in + x, res_in kept): the in-place call's bits, whether or
            // not the buffers share an alignment (offset 0 / 1 against a new res at 0).
            DeviceBuffer<T> d_in(res0, offset), d_res2(std::vector<T>(N * D)), d_out2(std::vector<T>(N * D));
            DeviceBuffer<float> d_rstd2{std::vector<float>(N)};
            ops::cuda::residual_rmsnorm_forward(d_out2.get(), d_rstd2.get(), d_res2.get(), d_in.get(),
                                                d_x.get(), d_w.get(), N, D, kEps);
            EXPECT_TRUE(d_in.download() == res0) << "res_in changed";
            EXPECT_TRUE(d_res2.download() == res) << "res: not the in-place call's bits";
            EXPECT_TRUE(d_out2.download() == d_out.download()) << "out: not the in-place call's bits";
            EXPECT_TRUE(d_rstd2.download() == d_rstd.download()) << "rstd: not the in-place call's bits";
        }
    }
#endif
}

TYPED_TEST(CudaNorm, RmsnormBackwardAccumulates) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    Rng rng(3);
    for (const auto& shape : kShapes) {
        const int64_t N = shape[0], D = shape[1];
        for (size_t offset : kOffsets) {
            SCOPED_TRACE(where(N, D, offset));
            const auto x = random_values<T>(rng, N * D, -2.0, 2.0);
            const auto w = random_values<T>(rng, D, -1.5, 1.5);
            const auto dout = random_values<T>(rng, N * D, -1.0, 1.0);
            const auto dx0 = random_values<T>(rng, N * D, -1.0, 1.0);  // gradients already there
            const auto dw0 = random_values<T>(rng, D, -1.0, 1.0);
            const auto xd = decode_all(x), wd = decode_all(w), gd = decode_all(dout);
            std::vector<double> unused(N * D), rstd_exact(N);
            ops::rmsnorm_forward<double>(unused.data(), rstd_exact.data(), xd.data(), wd.data(), N, D,
                                         double(kEps));
            const auto rstd_f = to_float(rstd_exact);
            const auto rstd = to_double(rstd_f);

            auto dx = decode_all(dx0), dw = decode_all(dw0);
            ops::rmsnorm_backward<double>(dx.data(), dw.data(), gd.data(), xd.data(), wd.data(), rstd.data(), N, D);
            std::vector<double> dx_scale = abs_all(decode_all(dx0)), dw_scale = abs_all(decode_all(dw0));
            for (int64_t n = 0; n < N; ++n) {
                const double r = rstd[n];
                double sum = 0;  // Σ|dout·w·x|
                for (int64_t i = 0; i < D; ++i) sum += std::abs(gd[n * D + i] * wd[i] * xd[n * D + i]);
                for (int64_t i = 0; i < D; ++i) {
                    const int64_t k = n * D + i;
                    dx_scale[k] += r * (std::abs(gd[k] * wd[i]) + std::abs(xd[k]) * r * r * sum / double(D));
                    dw_scale[i] += std::abs(gd[k] * xd[k] * r);
                }
            }

            DeviceBuffer<T> d_x(x, offset), d_w(w, offset), d_dout(dout, offset), d_dx(dx0, offset),
                d_dw(dw0, offset);
            DeviceBuffer<float> d_rstd(rstd_f);
            DeviceBytes workspace(ops::cuda::norm_backward_workspace_bytes(N, D));
            ops::cuda::rmsnorm_backward(d_dx.get(), d_dw.get(), workspace.get(), d_dout.get(), d_x.get(), d_w.get(),
                                        d_rstd.get(), N, D);
            EXPECT_TRUE(all_close(d_dx.download(), dx, dx_scale, double(D + 32) * kU)) << "dx";
            EXPECT_TRUE(all_close(d_dw.download(), dw, dw_scale, double(N + 16) * kU)) << "dw";
        }
    }
#endif
}

TYPED_TEST(CudaNorm, LayernormForward) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    Rng rng(4);
    for (const auto& shape : kShapes) {
        const int64_t N = shape[0], D = shape[1];
        for (size_t offset : kOffsets) {
            for (bool bias : {true, false}) {
                SCOPED_TRACE(where(N, D, offset) + (bias ? ", bias" : ", no bias"));
                const auto x = random_values<T>(rng, N * D, -1.0, 3.0);  // mean ≠ 0
                const auto w = random_values<T>(rng, D, -1.5, 1.5);
                const auto b = random_values<T>(rng, D, -1.0, 1.0);
                const auto xd = decode_all(x), wd = decode_all(w), bd = decode_all(b);
                std::vector<double> out(N * D), mean(N), rstd(N);
                ops::layernorm_forward<double>(out.data(), mean.data(), rstd.data(), xd.data(), wd.data(),
                                               bias ? bd.data() : nullptr, N, D, double(kEps));
                std::vector<double> out_scale(N * D), mean_scale(N);
                for (int64_t n = 0; n < N; ++n) {
                    double sum = 0;
                    for (int64_t i = 0; i < D; ++i) sum += std::abs(xd[n * D + i]);
                    mean_scale[n] = sum / double(D);
                    for (int64_t i = 0; i < D; ++i) {
                        const int64_t k = n * D + i;
                        out_scale[k] = std::abs(xd[k] - mean[n]) * rstd[n] * std::abs(wd[i]) +
                                       rstd[n] * std::abs(wd[i]) * mean_scale[n] + (bias ? std::abs(bd[i]) : 0.0);
                    }
                }

                DeviceBuffer<T> d_x(x, offset), d_w(w, offset), d_b(b, offset), d_out(std::vector<T>(N * D), offset);
                DeviceBuffer<float> d_mean{std::vector<float>(N)}, d_rstd{std::vector<float>(N)};
                ops::cuda::layernorm_forward(d_out.get(), d_mean.get(), d_rstd.get(), d_x.get(), d_w.get(),
                                             bias ? d_b.get() : nullptr, N, D, kEps);
                const double rel = double(D + 16) * kU;
                EXPECT_TRUE(all_close(d_out.download(), out, out_scale, rel));
                EXPECT_TRUE(all_close(d_mean.download(), mean, mean_scale, rel));
                EXPECT_TRUE(all_close(d_rstd.download(), rstd, abs_all(rstd), rel));
            }
        }
    }
#endif
}

TYPED_TEST(CudaNorm, LayernormBackwardAccumulates) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    Rng rng(5);
    for (const auto& shape : kShapes) {
        const int64_t N = shape[0], D = shape[1];
        for (size_t offset : kOffsets) {
            SCOPED_TRACE(where(N, D, offset));
            const auto x = random_values<T>(rng, N * D, -1.0, 3.0);
            const auto w = random_values<T>(rng, D, -1.5, 1.5);
            const auto dout = random_values<T>(rng, N * D, -1.0, 1.0);
            const auto dx0 = random_values<T>(rng, N * D, -1.0, 1.0);
            const auto dw0 = random_values<T>(rng, D, -1.0, 1.0);
            const auto db0 = random_values<T>(rng, D, -1.0, 1.0);
            const auto xd = decode_all(x), wd = decode_all(w), gd = decode_all(dout);
            std::vector<double> unused(N * D), mean_exact(N), rstd_exact(N);
            ops::layernorm_forward<double>(unused.data(), mean_exact.data(), rstd_exact.data(), xd.data(),
                                           wd.data(), nullptr, N, D, double(kEps));
            const auto mean_f = to_float(mean_exact), rstd_f = to_float(rstd_exact);
            const auto mean = to_double(mean_f), rstd = to_double(rstd_f);

            auto dx = decode_all(dx0), dw = decode_all(dw0), db = decode_all(db0);
            ops::layernorm_backward<double>(dx.data(), dw.data(), db.data(), gd.data(), xd.data(), wd.data(),
                                            mean.data(), rstd.data(), N, D);
            std::vector<double> dx_scale = abs_all(decode_all(dx0)), dw_scale = abs_all(decode_all(dw0)),
                                db_scale = abs_all(decode_all(db0));
            for (int64_t n = 0; n < N; ++n) {
                const double m = mean[n], r = rstd[n];
                double sum_g = 0, sum_gx = 0;  // Σ|dout·w|, Σ|dout·w·(x − mean)|
                for (int64_t i = 0; i < D; ++i) {
                    sum_g += std::abs(gd[n * D + i] * wd[i]);
                    sum_gx += std::abs(gd[n * D + i] * wd[i] * (xd[n * D + i] - m));
                }
                for (int64_t i = 0; i < D; ++i) {
                    const int64_t k = n * D + i;
                    dx_scale[k] += r * (std::abs(gd[k] * wd[i]) + sum_g / double(D) +
                                        std::abs(xd[k] - m) * r * r * sum_gx / double(D));
                    dw_scale[i] += std::abs(gd[k] * (xd[k] - m) * r);
                    db_scale[i] += std::abs(gd[k]);
                }
            }

            DeviceBuffer<T> d_x(x, offset), d_w(w, offset), d_dout(dout, offset), d_dx(dx0, offset),
                d_dw(dw0, offset), d_db(db0, offset);
            DeviceBuffer<float> d_mean(mean_f), d_rstd(rstd_f);
            DeviceBytes workspace(ops::cuda::norm_backward_workspace_bytes(N, D));
            ops::cuda::layernorm_backward(d_dx.get(), d_dw.get(), d_db.get(), workspace.get(), d_dout.get(),
                                          d_x.get(), d_w.get(), d_mean.get(), d_rstd.get(), N, D);
            EXPECT_TRUE(all_close(d_dx.download(), dx, dx_scale, double(D + 32) * kU)) << "dx";
            EXPECT_TRUE(all_close(d_dw.download(), dw, dw_scale, double(N + 16) * kU)) << "dw";
            EXPECT_TRUE(all_close(d_db.download(), db, db_scale, double(N + 16) * kU)) << "db";
        }
    }
#endif
}

// A null gradient is not computed and its buffer untouched; the others come out as with all three.
TYPED_TEST(CudaNorm, NullGradientsAreSkipped) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    Rng rng(6);
    const int64_t N = 700, D = 96;
    const auto x = random_values<T>(rng, N * D, -1.0, 3.0);
    const auto w = random_values<T>(rng, D, -1.5, 1.5);
    const auto dout = random_values<T>(rng, N * D, -1.0, 1.0);
    const auto dx0 = random_values<T>(rng, N * D, -1.0, 1.0);
    const auto dw0 = random_values<T>(rng, D, -1.0, 1.0);
    DeviceBuffer<T> d_x(x), d_w(w), d_dout(dout);
    DeviceBuffer<float> d_mean{std::vector<float>(N)}, d_rstd{std::vector<float>(N)};
    DeviceBuffer<T> d_unused(std::vector<T>(N * D));
    ops::cuda::layernorm_forward(d_unused.get(), d_mean.get(), d_rstd.get(), d_x.get(), d_w.get(),
                                 static_cast<const T*>(nullptr), N, D, kEps);
    DeviceBytes workspace(ops::cuda::norm_backward_workspace_bytes(N, D));

    DeviceBuffer<T> all_dx(dx0), all_dw(dw0), all_db(dw0);
    ops::cuda::layernorm_backward(all_dx.get(), all_dw.get(), all_db.get(), workspace.get(), d_dout.get(), d_x.get(),
                                  d_w.get(), d_mean.get(), d_rstd.get(), N, D);
    DeviceBuffer<T> only_dx(dx0), only_dw(dw0), only_db(dw0);
    ops::cuda::layernorm_backward(only_dx.get(), static_cast<T*>(nullptr), static_cast<T*>(nullptr), nullptr,
                                  d_dout.get(), d_x.get(), d_w.get(), d_mean.get(), d_rstd.get(), N, D);
    ops::cuda::layernorm_backward(static_cast<T*>(nullptr), only_dw.get(), static_cast<T*>(nullptr),
                                  workspace.get(), d_dout.get(), d_x.get(), d_w.get(), d_mean.get(), d_rstd.get(),
                                  N, D);
    ops::cuda::layernorm_backward(static_cast<T*>(nullptr), static_cast<T*>(nullptr), only_db.get(),
                                  workspace.get(), d_dout.get(), d_x.get(), d_w.get(), d_mean.get(), d_rstd.get(),
                                  N, D);
    EXPECT_EQ(only_dx.download(), all_dx.download());
    EXPECT_EQ(only_dw.download(), all_dw.download());
    EXPECT_EQ(only_db.download(), all_db.download());

    DeviceBuffer<T> rms_dx(dx0), rms_dw(dw0);
    ops::cuda::rmsnorm_backward(rms_dx.get(), static_cast<T*>(nullptr), nullptr, d_dout.get(), d_x.get(), d_w.get(),
                                d_rstd.get(), N, D);
    ops::cuda::rmsnorm_backward(static_cast<T*>(nullptr), rms_dw.get(), workspace.get(), d_dout.get(), d_x.get(),
                                d_w.get(), d_rstd.get(), N, D);
    EXPECT_NE(rms_dx.download(), dx0);
    EXPECT_NE(rms_dw.download(), dw0);
#endif
}

// No float atomics: the same call twice gives the same bits, parameter gradients included.
TYPED_TEST(CudaNorm, BackwardIsDeterministic) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    Rng rng(7);
    const int64_t N = 4099, D = 768;
    const auto x = random_values<T>(rng, N * D, -2.0, 2.0);
    const auto w = random_values<T>(rng, D, -1.5, 1.5);
    const auto dout = random_values<T>(rng, N * D, -1.0, 1.0);
    DeviceBuffer<T> d_x(x), d_w(w), d_dout(dout), d_out(std::vector<T>(N * D));
    DeviceBuffer<float> d_rstd{std::vector<float>(N)};
    ops::cuda::rmsnorm_forward(d_out.get(), d_rstd.get(), d_x.get(), d_w.get(), N, D, kEps);
    DeviceBytes workspace(ops::cuda::norm_backward_workspace_bytes(N, D));
    std::vector<T> first_dx, first_dw;
    for (int run = 0; run < 2; ++run) {
        DeviceBuffer<T> d_dx(std::vector<T>(N * D)), d_dw{std::vector<T>(D)};
        ops::cuda::rmsnorm_backward(d_dx.get(), d_dw.get(), workspace.get(), d_dout.get(), d_x.get(), d_w.get(),
                                    d_rstd.get(), N, D);
        if (run == 0) {
            first_dx = d_dx.download();
            first_dw = d_dw.download();
        } else {
            EXPECT_EQ(d_dx.download(), first_dx);
            EXPECT_EQ(d_dw.download(), first_dw);
        }
    }
#endif
}

TYPED_TEST(CudaNorm, RunsOnGivenStream) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    Rng rng(8);
    const int64_t N = 256, D = 1024;
    const auto x = random_values<T>(rng, N * D, -2.0, 2.0);
    const auto w = random_values<T>(rng, D, -1.5, 1.5);
    std::vector<double> out(N * D), rstd(N);
    ops::rmsnorm_forward<double>(out.data(), rstd.data(), decode_all(x).data(), decode_all(w).data(), N, D,
                                 double(kEps));
    cudaStream_t stream = nullptr;
    ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
    DeviceBuffer<T> d_x(x), d_w(w), d_out(std::vector<T>(N * D));
    DeviceBuffer<float> d_rstd{std::vector<float>(N)};
    ops::cuda::rmsnorm_forward(d_out.get(), d_rstd.get(), d_x.get(), d_w.get(), N, D, kEps, stream);
    EXPECT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    EXPECT_EQ(cudaStreamDestroy(stream), cudaSuccess);
    EXPECT_TRUE(all_close(d_out.download(), out, abs_all(out), double(D + 16) * kU));
#endif
}

#ifdef MSLM_HAVE_CUDA
// (N, D, G): one group, groups of 22 and 513 channels (one-element path), 128 and 512 (vectors).
const int64_t kGatedShapes[][3] = {{1, 1, 1},    {3, 8, 2},    {5, 66, 3},    {7, 768, 1},
                                   {9, 1024, 8}, {4, 4096, 8}, {600, 256, 4}, {2, 1539, 3}};

std::string where(int64_t N, int64_t D, int64_t G, size_t offset) {
    return where(N, D, offset) + ", G = " + std::to_string(G);
}
double sigmoid(double z) {
    return 1.0 / (1.0 + std::exp(-z));
}
#endif

TYPED_TEST(CudaGatedNorm, Forward) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    Rng rng(11);
    for (const auto& shape : kGatedShapes) {
        const int64_t N = shape[0], D = shape[1], G = shape[2], Dg = D / G;
        for (size_t offset : kOffsets) {
            SCOPED_TRACE(where(N, D, G, offset));
            const auto x = random_values<T>(rng, N * D, -2.0, 2.0);
            const auto z = random_values<T>(rng, N * D, -6.0, 6.0);
            const auto w = random_values<T>(rng, D, -1.5, 1.5);
            std::vector<double> out(N * D), rstd(N * G);
            ops::gated_rmsnorm_forward<double>(out.data(), rstd.data(), decode_all(x).data(), decode_all(z).data(),
                                               decode_all(w).data(), N, D, G, double(kEps));

            DeviceBuffer<T> d_x(x, offset), d_z(z, offset), d_w(w, offset), d_out(std::vector<T>(N * D), offset);
            DeviceBuffer<float> d_rstd(std::vector<float>(N * G));
            ops::cuda::gated_rmsnorm_forward(d_out.get(), d_rstd.get(), d_x.get(), d_z.get(), d_w.get(), N, D, G,
                                             kEps);
            const double rel = double(Dg + 32) * kU;
            const std::vector<T> got = d_out.download();
            EXPECT_TRUE(all_close(got, out, abs_all(out), rel));
            EXPECT_TRUE(all_close(d_rstd.download(), rstd, abs_all(rstd), rel));

            // z read in place from a wider matrix, rows ld_z apart from column c0: with c0 = 8 and
            // ld_z = D + 8 the loads vectorise as the contiguous call's do, the same bits; with
            // c0 = 3, ld_z = D + 3 they cannot (one element a load), so within the tolerance.
            for (int64_t c0 : {8, 3}) {
                const int64_t ld_z = D + c0;
                std::vector<T> wide(N * ld_z);
                for (int64_t n = 0; n < N; ++n)
                    for (int64_t i = 0; i < D; ++i) wide[n * ld_z + c0 + i] = z[n * D + i];
                DeviceBuffer<T> d_wide(wide, offset), d_out2(std::vector<T>(N * D), offset);
                DeviceBuffer<float> d_rstd2(std::vector<float>(N * G));
                ops::cuda::gated_rmsnorm_forward_strided_z(d_out2.get(), d_rstd2.get(), d_x.get(),
                                                           d_wide.get() + c0, ld_z, d_w.get(), N, D, G, kEps);
                SCOPED_TRACE("ld_z = " + std::to_string(ld_z));
                if (c0 == 8) {
                    EXPECT_TRUE(d_out2.download() == got);
                    EXPECT_TRUE(d_rstd2.download() == d_rstd.download());
                } else {
                    EXPECT_TRUE(all_close(d_out2.download(), out, abs_all(out), rel));
                    EXPECT_TRUE(all_close(d_rstd2.download(), rstd, abs_all(rstd), rel));
                }
            }
        }
    }
#endif
}

TYPED_TEST(CudaGatedNorm, BackwardAccumulates) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    Rng rng(12);
    for (const auto& shape : kGatedShapes) {
        const int64_t N = shape[0], D = shape[1], G = shape[2], Dg = D / G;
        for (size_t offset : kOffsets) {
            SCOPED_TRACE(where(N, D, G, offset));
            const auto x = random_values<T>(rng, N * D, -2.0, 2.0);
            const auto z = random_values<T>(rng, N * D, -6.0, 6.0);
            const auto w = random_values<T>(rng, D, -1.5, 1.5);
            const auto dout = random_values<T>(rng, N * D, -1.0, 1.0);
            const auto dx0 = random_values<T>(rng, N * D, -1.0, 1.0);
            const auto dz0 = random_values<T>(rng, N * D, -1.0, 1.0);
            const auto dw0 = random_values<T>(rng, D, -1.0, 1.0);
            const auto xd = decode_all(x), zd = decode_all(z), wd = decode_all(w), hd = decode_all(dout);
            std::vector<double> unused(N * D), rstd_exact(N * G);
            ops::gated_rmsnorm_forward<double>(unused.data(), rstd_exact.data(), xd.data(), zd.data(), wd.data(), N,
                                               D, G, double(kEps));
            const auto rstd_f = to_float(rstd_exact);
            const auto rstd = to_double(rstd_f);

            auto dx = decode_all(dx0), dz = decode_all(dz0), dw = decode_all(dw0);
            ops::gated_rmsnorm_backward<double>(dx.data(), dz.data(), dw.data(), hd.data(), xd.data(), zd.data(),
                                                wd.data(), rstd.data(), N, D, G);
            std::vector<double> dx_scale = abs_all(decode_all(dx0)), dz_scale = abs_all(decode_all(dz0)),
                                dw_scale = abs_all(decode_all(dw0));
            for (int64_t n = 0; n < N; ++n) {
                for (int64_t k = 0; k < G; ++k) {
                    const double r = rstd[n * G + k];
                    const int64_t row = n * D + k * Dg;
                    double sum = 0;  // Σ|dout·w·g| over the group
                    for (int64_t i = 0; i < Dg; ++i)
                        sum += std::abs(hd[row + i] * wd[k * Dg + i] * xd[row + i] * zd[row + i] *
                                        sigmoid(zd[row + i]));
                    for (int64_t i = 0; i < Dg; ++i) {
                        const int64_t j = row + i;
                        const double s = sigmoid(zd[j]), silu = zd[j] * s;
                        const double dg = r * (std::abs(hd[j] * wd[k * Dg + i]) +
                                               std::abs(xd[j] * silu) * r * r * sum / double(Dg));
                        dx_scale[j] += dg * std::abs(silu);
                        dz_scale[j] += dg * std::abs(xd[j]) * s * (1.0 + std::abs(zd[j]) * (1.0 - s));
                        dw_scale[k * Dg + i] += std::abs(hd[j] * xd[j] * silu * r);
                    }
                }
            }

            DeviceBuffer<T> d_x(x, offset), d_z(z, offset), d_w(w, offset), d_dout(dout, offset), d_dx(dx0, offset),
                d_dz(dz0, offset), d_dw(dw0, offset);
            DeviceBuffer<float> d_rstd(rstd_f);
            DeviceBytes workspace(ops::cuda::norm_backward_workspace_bytes(N, D));
            ops::cuda::gated_rmsnorm_backward(d_dx.get(), d_dz.get(), d_dw.get(), workspace.get(), d_dout.get(),
                                              d_x.get(), d_z.get(), d_w.get(), d_rstd.get(), N, D, G);
            const double rel = double(Dg + 32) * kU + kFastSigmoid<T>;
            const std::vector<T> got_dx = d_dx.download(), got_dz = d_dz.download(), got_dw = d_dw.download();
            EXPECT_TRUE(all_close(got_dx, dx, dx_scale, rel)) << "dx";
            EXPECT_TRUE(all_close(got_dz, dz, dz_scale, rel)) << "dz";
            EXPECT_TRUE(all_close(got_dw, dw, dw_scale, double(N + 16) * kU)) << "dw";

            // z read from and dz added into wider matrices, rows ld apart from column c0 (their other
            // columns untouched): with c0 = 8, ld = D + 8 the contiguous call's bits; with c0 = 3,
            // ld = D + 3 one element a load, so within the tolerance.
            for (int64_t c0 : {8, 3}) {
                const int64_t ld = D + c0;
                SCOPED_TRACE("ld_z = ld_dz = " + std::to_string(ld));
                std::vector<T> wide_z(N * ld, T{}), wide_dz = random_values<T>(rng, N * ld, -1.0, 1.0);
                for (int64_t n = 0; n < N; ++n)
                    for (int64_t i = 0; i < D; ++i) {
                        wide_z[n * ld + c0 + i] = z[n * D + i];
                        wide_dz[n * ld + c0 + i] = dz0[n * D + i];
                    }
                DeviceBuffer<T> d_wz(wide_z, offset), d_wdz(wide_dz, offset), d_dx2(dx0, offset),
                    d_dw2(dw0, offset);
                ops::cuda::gated_rmsnorm_backward_strided_z(
                    d_dx2.get(), d_wdz.get() + c0, ld, d_dw2.get(), workspace.get(), d_dout.get(), d_x.get(),
                    d_wz.get() + c0, ld, d_w.get(), d_rstd.get(), N, D, G);
                const std::vector<T> wdz = d_wdz.download();
                std::vector<T> got_dz2(N * D);
                bool others_kept = true;
                for (int64_t n = 0; n < N; ++n)
                    for (int64_t j = 0; j < ld; ++j) {
                        if (j >= c0 && j < c0 + D)
                            got_dz2[n * D + j - c0] = wdz[n * ld + j];
                        else
                            others_kept = others_kept && wdz[n * ld + j] == wide_dz[n * ld + j];
                    }
                EXPECT_TRUE(others_kept) << "dz's matrix changed outside its columns";
                if (c0 == 8 && offset == 0) {
                    EXPECT_TRUE(d_dx2.download() == got_dx) << "dx";
                    EXPECT_TRUE(got_dz2 == got_dz) << "dz";
                    EXPECT_TRUE(d_dw2.download() == got_dw) << "dw";
                } else {
                    EXPECT_TRUE(all_close(d_dx2.download(), dx, dx_scale, rel)) << "dx";
                    EXPECT_TRUE(all_close(got_dz2, dz, dz_scale, rel)) << "dz";
                    EXPECT_TRUE(all_close(d_dw2.download(), dw, dw_scale, double(N + 16) * kU)) << "dw";
                }
            }
        }
    }
#endif
}

#ifdef MSLM_HAVE_CUDA
// Random gated-norm backward inputs of (N, D) in G groups, on the host and the device: x, z (|z| ≤ 6),
// w, dout, a starting gradient for dx / dz, one for dw, and rstd in [0.5, 2] — drawn in that order.
template <typename T>
struct GatedBackwardInputs {
    std::vector<T> x, z, w, dout, grad0, dw0;
    std::vector<float> rstd;
    DeviceBuffer<T> d_x, d_z, d_w, d_dout;
    DeviceBuffer<float> d_rstd;
    DeviceBytes workspace;
    GatedBackwardInputs(Rng& rng, int64_t N, int64_t D, int64_t G)
        : x(random_values<T>(rng, N * D, -2.0, 2.0)),
          z(random_values<T>(rng, N * D, -6.0, 6.0)),
          w(random_values<T>(rng, D, -1.5, 1.5)),
          dout(random_values<T>(rng, N * D, -1.0, 1.0)),
          grad0(random_values<T>(rng, N * D, -1.0, 1.0)),
          dw0(random_values<T>(rng, D, -1.0, 1.0)),
          rstd(uniform_rstd(rng, N * G)),
          d_x(x),
          d_z(z),
          d_w(w),
          d_dout(dout),
          d_rstd(rstd),
          workspace(ops::cuda::norm_backward_workspace_bytes(N, D)) {}
    static std::vector<float> uniform_rstd(Rng& rng, int64_t n) {
        std::vector<float> r(static_cast<size_t>(n));
        for (float& v : r) v = float(rng.uniform(0.5, 2.0));
        return r;
    }
};
#endif

// GradStore::Overwrite: dx and dz written over whatever the buffers hold, bit for bit what the
// default += gives on zeroed buffers; dw still adds.
TYPED_TEST(CudaGatedNorm, BackwardOverwriteIsAddToZeros) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    Rng rng(13);
    for (const auto& shape : kGatedShapes) {
        const int64_t N = shape[0], D = shape[1], G = shape[2];
        SCOPED_TRACE(where(N, D, G, 0));
        const GatedBackwardInputs<T> in(rng, N, D, G);  // grad0: junk for the overwritten buffers
        std::vector<T> got[2][3];                       // [overwrite][dx, dz, dw]
        for (int ow = 0; ow < 2; ++ow) {
            DeviceBuffer<T> d_dx(ow ? in.grad0 : std::vector<T>(N * D)),
                d_dz(ow ? in.grad0 : std::vector<T>(N * D)), d_dw(in.dw0);
            ops::cuda::gated_rmsnorm_backward(
                d_dx.get(), d_dz.get(), d_dw.get(), in.workspace.get(), in.d_dout.get(), in.d_x.get(),
                in.d_z.get(), in.d_w.get(), in.d_rstd.get(), N, D, G, nullptr,
                ow ? ops::cuda::GradStore::Overwrite : ops::cuda::GradStore::Add);
            got[ow][0] = d_dx.download(), got[ow][1] = d_dz.download(), got[ow][2] = d_dw.download();
        }
        EXPECT_EQ(got[1][0], got[0][0]) << "dx";
        EXPECT_EQ(got[1][1], got[0][1]) << "dz";
        EXPECT_EQ(got[1][2], got[0][2]) << "dw";
    }
#endif
}

// Two rows an iteration (MSLM_NORM_BWD_ROWS=2) is the one-row kernel's arithmetic in the same order:
// the same bits for dx, dz and dw, accumulated or overwritten, on row counts odd and even against
// the grid's 1024 blocks and groups of one and several.
TYPED_TEST(CudaGatedNorm, TwoRowsAnIterationGiveOneRowsBits) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    Rng rng(14);
    const int64_t shapes[][3] = {{3001, 1536, 1}, {2048, 768, 1}, {1500, 1024, 4}, {37, 768, 1}};
    for (const auto& shape : shapes) {
        const int64_t N = shape[0], D = shape[1], G = shape[2];
        SCOPED_TRACE(where(N, D, G, 0));
        const GatedBackwardInputs<T> in(rng, N, D, G);
        const std::vector<T>& dx0 = in.grad0;
        for (int ow = 0; ow < 2; ++ow) {
            const auto store = ow ? ops::cuda::GradStore::Overwrite : ops::cuda::GradStore::Add;
            std::vector<T> got[2][5];  // [rows − 1][gated dx, dz, dw, plain dx, dw]
            for (int rows = 1; rows <= 2; ++rows) {
                const test::ScopedEnv force("MSLM_NORM_BWD_ROWS", std::to_string(rows));
                DeviceBuffer<T> d_dx(dx0), d_dz(dx0), d_dw(in.dw0), p_dx(dx0), p_dw(in.dw0);
                ops::cuda::gated_rmsnorm_backward(d_dx.get(), d_dz.get(), d_dw.get(), in.workspace.get(),
                                                  in.d_dout.get(), in.d_x.get(), in.d_z.get(), in.d_w.get(),
                                                  in.d_rstd.get(), N, D, G, nullptr, store);
                got[rows - 1][0] = d_dx.download(), got[rows - 1][1] = d_dz.download();
                got[rows - 1][2] = d_dw.download();
                if (G == 1) {
                    ops::cuda::rmsnorm_backward(p_dx.get(), p_dw.get(), in.workspace.get(), in.d_dout.get(),
                                                in.d_x.get(), in.d_w.get(), in.d_rstd.get(), N,
                                                D);  // (accumulates)
                    got[rows - 1][3] = p_dx.download(), got[rows - 1][4] = p_dw.download();
                }
            }
            for (int i = 0; i < 5; ++i)
                EXPECT_EQ(got[1][i], got[0][i]) << "output " << i << ", overwrite " << ow;
            EXPECT_NE(got[0][0], dx0);
        }
    }
#endif
}

// Shape checks run on the host before any launch, so this needs no GPU.
TEST(CudaNormShapes, ErrorsEmptyAndWorkspace) {
#ifndef MSLM_HAVE_CUDA
    GTEST_SKIP() << "built without CUDA";
#else
    auto expect_error = [](auto&& call, const std::string& kernel) {
        try {
            call();
            ADD_FAILURE() << "no error from " << kernel;
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find(kernel), std::string::npos) << e.what();
        }
    };
    float* f = nullptr;
    float host_dummy = 0.0f;  // a non-null gradient that the failing call never touches
    float* nonnull = &host_dummy;
    expect_error([&] { ops::cuda::rmsnorm_forward<float>(f, f, f, f, -1, 8, kEps); }, "rmsnorm_forward");
    expect_error([&] { ops::cuda::layernorm_forward<float>(f, f, f, f, f, f, 4, -8, kEps); }, "layernorm_forward");
    expect_error([&] { ops::cuda::gated_rmsnorm_forward<float>(f, f, f, f, f, 2, 10, 3, kEps); },
                 "gated_rmsnorm_forward");
    expect_error([&] { ops::cuda::gated_rmsnorm_forward_strided_z<float>(f, f, f, f, 9, f, 2, 10, 2, kEps); },
                 "z's row stride 9 < D = 10");
    expect_error([&] { ops::cuda::gated_rmsnorm_backward<float>(f, f, f, nullptr, f, f, f, f, f, 2, 10, 0); },
                 "gated_rmsnorm_backward");
    expect_error([&] { ops::cuda::rmsnorm_backward<float>(f, nonnull, nullptr, f, f, f, f, 2, 8); },
                 "workspace");

    // Nothing to do: no launch, no error, even without a GPU.
    EXPECT_NO_THROW(ops::cuda::rmsnorm_forward<uint16_t>(nullptr, f, nullptr, nullptr, 0, 64, kEps));
    EXPECT_NO_THROW(ops::cuda::residual_rmsnorm_forward<float>(f, f, f, f, f, 0, 64, kEps));
    EXPECT_NO_THROW(ops::cuda::layernorm_backward<float>(f, f, f, nullptr, f, f, f, f, f, 0, 64));
    EXPECT_NO_THROW(ops::cuda::rmsnorm_backward<float>(nullptr, nullptr, nullptr, f, f, f, f, 16, 64));

    // Two (dw and db) partial rows of D floats per backward block, at most 1024 blocks.
    EXPECT_EQ(ops::cuda::norm_backward_workspace_bytes(0, 768), 0u);
    EXPECT_EQ(ops::cuda::norm_backward_workspace_bytes(3, 768), 2u * 3 * 768 * 4);
    EXPECT_EQ(ops::cuda::norm_backward_workspace_bytes(100000, 4096), 2u * 1024 * 4096 * 4);
#endif
}

}  // namespace
