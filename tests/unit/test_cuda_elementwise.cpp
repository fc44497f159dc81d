// CUDA elementwise kernels (ops/cuda/elementwise.h) against a CPU reference written here in double
// with std:: math, on random inputs. Every test exists in every build and skips, saying why, when
// the build has no CUDA or the machine has no GPU.
//
// Tolerances. The reference is computed from the very values the kernel reads (for bf16: the bf16
// inputs, decoded), so what remains is the kernel's own rounding:
// - fp32 math. Without fast-math, expf is within 2 ulp on the GPU (CUDA C Programming Guide,
//   "Mathematical Functions") and +, ×, / are correctly rounded (1/2 ulp each). The longest chain,
//   SwiGLU backward, is expf plus nine such operations: ≤ 13 · 2^-24 ≈ 6.5 ulp relative to `scale`,
//   the sum of the magnitudes of the terms that are added (|result| where nothing cancels; silu'
//   cancels near its zero at x ≈ −1.28, where a relative bound on the result would be meaningless).
//   We allow 8 ulp of scale, ulp = FLT_EPSILON = 2^-23.
// - bf16 output. One more rounding, to nearest even with 7 stored mantissa bits: ≤ 2^-8 · |result|.
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "core/cuda_device.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/rng.h"
#include "cuda_test_util.h"

#ifdef MSLM_HAVE_CUDA
#include <cuda_runtime.h>

#include "ops/cuda/elementwise.h"
#endif

namespace {

using namespace mslm;

template <typename T>
class CudaElementwise : public test::CudaTest {};

TYPED_TEST_SUITE(CudaElementwise, test::Dtypes, test::DtypeNames);

#ifdef MSLM_HAVE_CUDA

using namespace mslm::test;

// 8 ulp of scale, ulp = FLT_EPSILON = 2^-23 (see the header comment).
constexpr double kF32Rel = 8 * FLT_EPSILON;

double sigmoid(double x) {
    return 1.0 / (1.0 + std::exp(-x));
}
double silu(double x) {
    return x * sigmoid(x);
}
double silu_grad(double x) {
    return sigmoid(x) * (1.0 + x * (1.0 - sigmoid(x)));
}
// Sum of the magnitudes of silu'(x)'s terms σ and x·σ·(1 − σ).
double silu_grad_scale(double x) {
    return sigmoid(x) * (1.0 + std::abs(x * (1.0 - sigmoid(x))));
}

const int64_t kSizes[] = {1, 7, 8, 1000, 1000003};
const size_t kOffsets[] = {0, 1};
// (N, F): F = 1, 7, 13 and 4100 (bf16) are not multiples of 8, so they run the one-element path;
// 8, 64 and 1000 take 16-byte vectors for both dtypes.
const int64_t kRowShapes[][2] = {{1, 1},  {3, 7},     {5, 13},     {4, 8},
                                 {2, 64}, {37, 1000}, {129, 4100}, {1, 1000003}};

std::string where(int64_t n, size_t offset) {
    return "n = " + std::to_string(n) + ", offset = " + std::to_string(offset);
}
std::string where(int64_t N, int64_t F, size_t offset) {
    return "(N, F) = (" + std::to_string(N) + ", " + std::to_string(F) +
           "), offset = " + std::to_string(offset);
}

#endif  // MSLM_HAVE_CUDA

TYPED_TEST(CudaElementwise, SiluForward) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    Rng rng(1);
    for (int64_t n : kSizes) {
        for (size_t offset : kOffsets) {
            SCOPED_TRACE(where(n, offset));
            const auto x = random_values<T>(rng, n, -20.0, 20.0);
            std::vector<double> ref(n), scale(n);
            for (int64_t i = 0; i < n; ++i) {
                ref[i] = silu(decode(x[i]));
                scale[i] = std::abs(ref[i]);
            }

            DeviceBuffer<T> dx(x, offset), dout(std::vector<T>(n), offset);
            ops::cuda::silu_forward(dout.get(), dx.get(), n);
            EXPECT_TRUE(all_close(dout.download(), ref, scale, kF32Rel));

            ops::cuda::silu_forward(dx.get(), dx.get(), n);  // in place
            EXPECT_TRUE(all_close(dx.download(), ref, scale, kF32Rel)) << "in place";
        }
    }
#endif
}

TYPED_TEST(CudaElementwise, SiluBackwardAccumulates) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    Rng rng(2);
    for (int64_t n : kSizes) {
        for (size_t offset : kOffsets) {
            SCOPED_TRACE(where(n, offset));
            const auto x = random_values<T>(rng, n, -20.0, 20.0);
            const auto dout = random_values<T>(rng, n, -2.0, 2.0);
            const auto dx0 = random_values<T>(rng, n, -1.0, 1.0);  // a gradient already there
            std::vector<double> ref(n), scale(n);
            for (int64_t i = 0; i < n; ++i) {
                const double xi = decode(x[i]), di = decode(dout[i]), gi = decode(dx0[i]);
                ref[i] = gi + di * silu_grad(xi);
                scale[i] = std::abs(gi) + std::abs(di) * silu_grad_scale(xi);
            }
            DeviceBuffer<T> d_x(x, offset), d_dout(dout, offset), d_dx(dx0, offset);
            ops::cuda::silu_backward(d_dx.get(), d_dout.get(), d_x.get(), n);
            EXPECT_TRUE(all_close(d_dx.download(), ref, scale, kF32Rel));
        }
    }
#endif
}

TYPED_TEST(CudaElementwise, SwigluForward) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    Rng rng(3);
    for (const auto& shape : kRowShapes) {
        const int64_t N = shape[0], F = shape[1];
        for (size_t offset : kOffsets) {
            SCOPED_TRACE(where(N, F, offset));
            const auto gate_up = random_values<T>(rng, N * 2 * F, -20.0, 20.0);  // (N, 2F)
            std::vector<double> ref(N * F), scale(N * F);                        // (N, F)
            for (int64_t r = 0; r < N; ++r) {
                for (int64_t j = 0; j < F; ++j) {
                    const double g = decode(gate_up[r * 2 * F + j]), u = decode(gate_up[r * 2 * F + F + j]);
                    ref[r * F + j] = silu(g) * u;
                    scale[r * F + j] = std::abs(ref[r * F + j]);
                }
            }
            DeviceBuffer<T> d_gate_up(gate_up, offset), d_out(std::vector<T>(N * F), offset);
            ops::cuda::swiglu_forward(d_out.get(), d_gate_up.get(), N, F);
            EXPECT_TRUE(all_close(d_out.download(), ref, scale, kF32Rel));
        }
    }
#endif
}

TYPED_TEST(CudaElementwise, SwigluBackwardAccumulates) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    Rng rng(4);
    for (const auto& shape : kRowShapes) {
        const int64_t N = shape[0], F = shape[1];
        for (size_t offset : kOffsets) {
            SCOPED_TRACE(where(N, F, offset));
            const auto gate_up = random_values<T>(rng, N * 2 * F, -20.0, 20.0);  // (N, 2F)
            const auto dout = random_values<T>(rng, N * F, -2.0, 2.0);           // (N, F)
            const auto dgate_up0 = random_values<T>(rng, N * 2 * F, -1.0, 1.0);  // (N, 2F), already there
            std::vector<double> ref(N * 2 * F), scale(N * 2 * F);
            for (int64_t r = 0; r < N; ++r) {
                for (int64_t j = 0; j < F; ++j) {
                    const int64_t ig = r * 2 * F + j, iu = ig + F;
                    const double g = decode(gate_up[ig]), u = decode(gate_up[iu]),
                                 d = decode(dout[r * F + j]);
                    const double dg0 = decode(dgate_up0[ig]), du0 = decode(dgate_up0[iu]);
                    ref[ig] = dg0 + d * u * silu_grad(g);
                    scale[ig] = std::abs(dg0) + std::abs(d * u) * silu_grad_scale(g);
                    ref[iu] = du0 + d * silu(g);
                    scale[iu] = std::abs(du0) + std::abs(d * silu(g));
                }
            }
            DeviceBuffer<T> d_gate_up(gate_up, offset), d_dout(dout, offset), d_dgate_up(dgate_up0, offset);
            ops::cuda::swiglu_backward(d_dgate_up.get(), d_dout.get(), d_gate_up.get(), N, F);
            EXPECT_TRUE(all_close(d_dgate_up.download(), ref, scale, kF32Rel));
        }
    }
#endif
}

TYPED_TEST(CudaElementwise, Axpy) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    Rng rng(5);
    for (float alpha : {1.0f, -0.375f, 3.0f}) {
        for (int64_t n : kSizes) {
            for (size_t offset : kOffsets) {
                SCOPED_TRACE(where(n, offset) + ", alpha = " + std::to_string(alpha));
                const auto x = random_values<T>(rng, n, -4.0, 4.0);
                const auto y0 = random_values<T>(rng, n, -4.0, 4.0);
                std::vector<double> ref(n), scale(n);
                for (int64_t i = 0; i < n; ++i) {
                    ref[i] = decode(y0[i]) + double(alpha) * decode(x[i]);
                    scale[i] = std::abs(decode(y0[i])) + std::abs(double(alpha) * decode(x[i]));
                }
                DeviceBuffer<T> d_x(x, offset), d_y(y0, offset);
                ops::cuda::axpy(d_y.get(), d_x.get(), n, alpha);
                EXPECT_TRUE(all_close(d_y.download(), ref, scale, kF32Rel));
            }
        }
    }
#endif
}

// Inputs far outside the usual range: x / (1 + e^-x) overflows e^-x to inf below x ≈ −88, which
// makes the backward's σ·(1 − σ) a NaN. The kernels must stay finite and right. Below x ≈ −87.3
// the kernel's e^-|x| is an fp32 subnormal with fewer significant bits (still ≥ 20 at x = −89,
// where the results are ~2e-37); from about x = −100 on the results themselves are below FLT_MIN.
// Hence 2^-16 relative to the scale plus an absolute floor of FLT_MIN.
TYPED_TEST(CudaElementwise, ExtremeInputsStayFinite) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    std::vector<T> x;
    for (double v : {1e30, 1000.0, 100.0, 89.0, 88.0, 30.0}) {
        x.push_back(encode<T>(v));
        x.push_back(encode<T>(-v));
    }
    const int64_t n = static_cast<int64_t>(x.size());
    std::vector<double> fwd(n), fwd_scale(n), bwd(n), bwd_scale(n);
    for (int64_t i = 0; i < n; ++i) {
        const double xi = decode(x[i]);
        fwd[i] = silu(xi);
        bwd[i] = silu_grad(xi);
        fwd_scale[i] = std::abs(fwd[i]);
        bwd_scale[i] = silu_grad_scale(xi);
    }
    DeviceBuffer<T> d_x(x, 0), d_out(std::vector<T>(n), 0), d_dout(std::vector<T>(n, encode<T>(1.0)), 0),
        d_dx(std::vector<T>(n), 0);
    ops::cuda::silu_forward(d_out.get(), d_x.get(), n);
    ops::cuda::silu_backward(d_dx.get(), d_dout.get(), d_x.get(), n);
    EXPECT_TRUE(all_close(d_out.download(), fwd, fwd_scale, 0x1p-16, kBf16<T>, FLT_MIN));
    EXPECT_TRUE(all_close(d_dx.download(), bwd, bwd_scale, 0x1p-16, kBf16<T>, FLT_MIN));
#endif
}

TYPED_TEST(CudaElementwise, RunsOnGivenStream) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    Rng rng(6);
    const int64_t n = 1 << 20;
    const auto x = random_values<T>(rng, n, -20.0, 20.0);
    std::vector<double> ref(n), scale(n);
    for (int64_t i = 0; i < n; ++i) {
        ref[i] = silu(decode(x[i]));
        scale[i] = std::abs(ref[i]);
    }

    cudaStream_t stream = nullptr;
    ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
    DeviceBuffer<T> d_x(x, 0), d_out(std::vector<T>(n), 0);
    ops::cuda::silu_forward(d_out.get(), d_x.get(), n, stream);
    EXPECT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    EXPECT_EQ(cudaStreamDestroy(stream), cudaSuccess);
    EXPECT_TRUE(all_close(d_out.download(), ref, scale, kF32Rel));
#endif
}

TYPED_TEST(CudaElementwise, EmptyIsANoOpAndNegativeSizesThrow) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    EXPECT_NO_THROW(ops::cuda::silu_forward<T>(nullptr, nullptr, 0));
    EXPECT_NO_THROW(ops::cuda::silu_backward<T>(nullptr, nullptr, nullptr, 0));
    EXPECT_NO_THROW(ops::cuda::swiglu_forward<T>(nullptr, nullptr, 0, 16));
    EXPECT_NO_THROW(ops::cuda::swiglu_backward<T>(nullptr, nullptr, nullptr, 16, 0));
    EXPECT_NO_THROW(ops::cuda::axpy<T>(nullptr, nullptr, 0, 1.0f));
    try {
        ops::cuda::silu_forward<T>(nullptr, nullptr, -1);
        ADD_FAILURE() << "no error for a negative size";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("silu_forward"), std::string::npos) << e.what();
    }
#endif
}

}  // namespace
