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
//   The bf16 SwiGLU forward takes its SiLU from silu_fast (ops/cuda/common.cuh: ≤ (1.2·|x| + 4)·2^-23
//   relative, ≤ 28 ulp at the tests' |x| ≤ 20), inside this rounding's 2^-8 by a factor of ~1,000.
// - GELU (both forms). The chains are longer (GELU tanh backward: expf and ~20 roundings; erf GELU:
//   erfcf, within 4 ulp, and expf): ≤ 12 ulp of scale; we allow 16. The kernel also rounds the
//   argument of its special function, and the function amplifies that relative error by κ:
//   erf form, x/√2 (the product and the fp32 constant: ≤ 1 ulp), so Φ(x) is off by
//   κ = |x|·φ(x)/Φ(x) ulp (≈ x² + 1 for x ≪ 0, < 0.3 for x > 0); tanh form,
//   u = √(2/π)·(x + 0.044715 x³) (≤ 7 roundings and constants, ≤ 3.5 ulp; no cancellation, both
//   terms have the sign of x), so σ(2u) is off by κ = 3.5·|2u|·(1 − σ(2u)) ulp. The bound is
//   16 ulp · scale · (1 + κ): loose in the negative tails, where that amplification is real (any
//   fp32 evaluation at this argument pays it). The backward's other argument-dependent errors fit
//   in the 16 ulp: exp(−x²/2)'s exponent (0.25·x² ulp on φ, below κ for x < 0 and at most 0.15 ulp
//   of scale for x > 0) and σ·(1 − σ) (≤ 3.5·|2u|·|1 − 2σ| ulp: below κ for u < 0, at most 1.5 ulp
//   of scale for u > 0).
//   The reference is the CPU op in double (ops/activation.h), which forms 1 + erf and 1 + tanh (and
//   1 − tanh²) and so carries an absolute error ≤ 2^-52 on them: |x|·2^-51 on the output, far below
//   fp32 resolution except deep in the negative tail, where the kernels' erfc and σ forms are the
//   more exact. We add |x|·2^-50 (backward: |dout|·2^-50·(1 + |x|·u')) to the bound, and check the
//   negative tails separately against std::erfc and a cancellation-free sigmoid.
// - ReLU is exact forward; backward is one fp32 addition (within 8 ulp of scale, as above).
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numbers>
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

#include "ops/activation.h"
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

// The GELUs, in double and free of cancellation (the tail references): Φ(x) = erfc(−x/√2) / 2, and
// σ(2u) for the tanh form's (1 + tanh(u)) / 2.
constexpr double kSqrt2OverPi = 0.79788456080286535588, kGeluCubic = 0.044715;

double gelu_cdf(double x) {
    return 0.5 * std::erfc(-x / std::sqrt(2.0));
}
double gelu_pdf(double x) {
    return std::exp(-0.5 * x * x) / std::sqrt(2.0 * std::numbers::pi);
}
double gelu_tanh_u(double x) {
    return kSqrt2OverPi * (x + kGeluCubic * x * x * x);
}
double gelu_tanh_du(double x) {
    return kSqrt2OverPi * (1.0 + 3.0 * kGeluCubic * x * x);
}
double stable_sigmoid(double x) {
    const double t = std::exp(-std::abs(x));
    return x >= 0 ? 1.0 / (1.0 + t) : t / (1.0 + t);
}

enum class Gelu { Erf, Tanh };

const char* name(Gelu kind) {
    return kind == Gelu::Erf ? "gelu" : "gelu_tanh";
}
// 16 ulp (see the header comment) and the argument's amplification κ.
constexpr double kGeluRel = 16 * FLT_EPSILON;
double gelu_kappa(Gelu kind, double x) {
    if (kind == Gelu::Erf) return std::abs(x) * gelu_pdf(x) / gelu_cdf(x);
    const double two_u = 2.0 * gelu_tanh_u(x);
    return 3.5 * std::abs(two_u) * stable_sigmoid(-two_u);
}
double gelu_value(Gelu kind, double x) {
    return kind == Gelu::Erf ? x * gelu_cdf(x) : x * stable_sigmoid(2.0 * gelu_tanh_u(x));
}
double gelu_grad(Gelu kind, double x) {
    if (kind == Gelu::Erf) return gelu_cdf(x) + x * gelu_pdf(x);
    const double s = stable_sigmoid(2.0 * gelu_tanh_u(x)), c = stable_sigmoid(-2.0 * gelu_tanh_u(x));
    return s + 2.0 * x * s * c * gelu_tanh_du(x);
}
// The sum of the magnitudes of gelu'(x)'s two terms (they cancel near x ≈ −0.75).
double gelu_grad_scale(Gelu kind, double x) {
    if (kind == Gelu::Erf) return gelu_cdf(x) + std::abs(x) * gelu_pdf(x);
    const double s = stable_sigmoid(2.0 * gelu_tanh_u(x)), c = stable_sigmoid(-2.0 * gelu_tanh_u(x));
    return s + std::abs(2.0 * x * s * c * gelu_tanh_du(x));
}

template <typename T>
void gpu_gelu_forward(Gelu kind, T* out, const T* x, int64_t n) {
    if (kind == Gelu::Erf)
        ops::cuda::gelu_forward(out, x, n);
    else
        ops::cuda::gelu_tanh_forward(out, x, n);
}
template <typename T>
void gpu_gelu_backward(Gelu kind, T* dx, const T* dout, const T* x, int64_t n) {
    if (kind == Gelu::Erf)
        ops::cuda::gelu_backward(dx, dout, x, n);
    else
        ops::cuda::gelu_tanh_backward(dx, dout, x, n);
}

// |got − ref| ≤ rel · scale + floor (element by element), + 2^-8 · |ref| for a bf16 output.
template <typename T>
::testing::AssertionResult close_with_floor(const std::vector<T>& got, const std::vector<double>& ref,
                                            const std::vector<double>& scale, double rel,
                                            const std::vector<double>& floor) {
    std::vector<double> tol(ref.size());
    for (size_t i = 0; i < ref.size(); ++i)
        tol[i] = rel * scale[i] + floor[i] + (kBf16<T> ? 0x1p-8 * std::abs(ref[i]) : 0.0);
    return all_within(got, ref, tol);
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

// Against the CPU ops in double (ops/activation.h) over [−10, 10], where both forms are far from
// their asymptotes; the tails have tests of their own below.
TYPED_TEST(CudaElementwise, GeluForward) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    Rng rng(7);
    for (Gelu kind : {Gelu::Erf, Gelu::Tanh}) {
        for (int64_t n : kSizes) {
            for (size_t offset : kOffsets) {
                SCOPED_TRACE(std::string(name(kind)) + ", " + where(n, offset));
                const auto x = random_values<T>(rng, n, -10.0, 10.0);
                const std::vector<double> xd = decode_all(x);
                std::vector<double> ref(n), scale(n), floor(n);
                if (kind == Gelu::Erf)
                    ops::gelu_forward(ref.data(), xd.data(), n);
                else
                    ops::gelu_tanh_forward(ref.data(), xd.data(), n);
                for (int64_t i = 0; i < n; ++i) {
                    scale[i] = std::abs(ref[i]) * (1.0 + gelu_kappa(kind, xd[i]));
                    floor[i] = std::abs(xd[i]) * 0x1p-50;
                }

                DeviceBuffer<T> dx(x, offset), dout(std::vector<T>(n), offset);
                gpu_gelu_forward(kind, dout.get(), dx.get(), n);
                EXPECT_TRUE(close_with_floor(dout.download(), ref, scale, kGeluRel, floor));

                gpu_gelu_forward(kind, dx.get(), dx.get(), n);  // in place
                EXPECT_TRUE(close_with_floor(dx.download(), ref, scale, kGeluRel, floor)) << "in place";
            }
        }
    }
#endif
}

TYPED_TEST(CudaElementwise, GeluBackwardAccumulates) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    Rng rng(8);
    for (Gelu kind : {Gelu::Erf, Gelu::Tanh}) {
        for (int64_t n : kSizes) {
            for (size_t offset : kOffsets) {
                SCOPED_TRACE(std::string(name(kind)) + ", " + where(n, offset));
                const auto x = random_values<T>(rng, n, -10.0, 10.0);
                const auto dout = random_values<T>(rng, n, -2.0, 2.0);
                const auto dx0 = random_values<T>(rng, n, -1.0, 1.0);  // a gradient already there
                const std::vector<double> xd = decode_all(x), doutd = decode_all(dout);
                std::vector<double> ref = decode_all(dx0), scale(n), floor(n);
                if (kind == Gelu::Erf)
                    ops::gelu_backward(ref.data(), doutd.data(), xd.data(), n);
                else
                    ops::gelu_tanh_backward(ref.data(), doutd.data(), xd.data(), n);
                for (int64_t i = 0; i < n; ++i) {
                    const double d = std::abs(doutd[i]);
                    scale[i] = std::abs(decode(dx0[i])) +
                               d * gelu_grad_scale(kind, xd[i]) * (1.0 + gelu_kappa(kind, xd[i]));
                    const double du = kind == Gelu::Erf ? 0.0 : gelu_tanh_du(xd[i]);
                    floor[i] = d * 0x1p-50 * (1.0 + std::abs(xd[i]) * du);
                }
                DeviceBuffer<T> d_x(x, offset), d_dout(dout, offset), d_dx(dx0, offset);
                gpu_gelu_backward(kind, d_dx.get(), d_dout.get(), d_x.get(), n);
                EXPECT_TRUE(close_with_floor(d_dx.download(), ref, scale, kGeluRel, floor));
            }
        }
    }
#endif
}

// The negative tails, where the textbook 1 + erf and 1 + tanh cancel (in fp32 they lose every bit
// from x ≈ −5.3 resp. −4.6 on): the kernels stay relatively accurate down to where the results
// leave the normal fp32 range (erf form: x = −12, value −2e-32; tanh form: x = −9, value −1e-28).
// Reference: the cancellation-free double formulas above; bound as in the header.
TYPED_TEST(CudaElementwise, GeluNegativeTailsAreRelativelyAccurate) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    for (Gelu kind : {Gelu::Erf, Gelu::Tanh}) {
        SCOPED_TRACE(name(kind));
        std::vector<T> x;
        for (double v = -1.5; v >= (kind == Gelu::Erf ? -12.0 : -9.0); v -= 0.375) x.push_back(encode<T>(v));
        const int64_t n = static_cast<int64_t>(x.size());
        std::vector<double> fwd(n), fwd_scale(n), bwd(n), bwd_scale(n);
        for (int64_t i = 0; i < n; ++i) {
            const double xi = decode(x[i]), kappa = 1.0 + gelu_kappa(kind, xi);
            fwd[i] = gelu_value(kind, xi);
            fwd_scale[i] = std::abs(fwd[i]) * kappa;
            bwd[i] = gelu_grad(kind, xi);
            bwd_scale[i] = gelu_grad_scale(kind, xi) * kappa;
        }
        DeviceBuffer<T> d_x(x, 0), d_out(std::vector<T>(n), 0), d_dout(std::vector<T>(n, encode<T>(1.0)), 0),
            d_dx(std::vector<T>(n), 0);
        gpu_gelu_forward(kind, d_out.get(), d_x.get(), n);
        gpu_gelu_backward(kind, d_dx.get(), d_dout.get(), d_x.get(), n);
        EXPECT_TRUE(all_close(d_out.download(), fwd, fwd_scale, kGeluRel)) << "forward";
        EXPECT_TRUE(all_close(d_dx.download(), bwd, bwd_scale, kGeluRel)) << "backward";
    }
#endif
}

// Far outside the usual range the results are x or 0 (forward) and 1 or 0 (backward): no NaN from
// x³ or x² overflowing (u' · σ · (1 − σ) = inf · 0), no inf. Bound as ExtremeInputsStayFinite's.
TYPED_TEST(CudaElementwise, GeluExtremeInputsStayFinite) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    std::vector<T> x;
    for (double v : {1e30, 1e15, 1000.0, 100.0, 30.0, 20.0}) {
        x.push_back(encode<T>(v));
        x.push_back(encode<T>(-v));
    }
    const int64_t n = static_cast<int64_t>(x.size());
    for (Gelu kind : {Gelu::Erf, Gelu::Tanh}) {
        SCOPED_TRACE(name(kind));
        std::vector<double> fwd(n), fwd_scale(n), bwd(n), bwd_scale(n);
        for (int64_t i = 0; i < n; ++i) {
            const double xi = decode(x[i]);
            fwd[i] = gelu_value(kind, xi);
            fwd_scale[i] = std::abs(fwd[i]);
            bwd[i] = gelu_grad(kind, xi);
            bwd_scale[i] = gelu_grad_scale(kind, xi);
        }
        DeviceBuffer<T> d_x(x, 0), d_out(std::vector<T>(n), 0), d_dout(std::vector<T>(n, encode<T>(1.0)), 0),
            d_dx(std::vector<T>(n), 0);
        gpu_gelu_forward(kind, d_out.get(), d_x.get(), n);
        gpu_gelu_backward(kind, d_dx.get(), d_dout.get(), d_x.get(), n);
        EXPECT_TRUE(all_close(d_out.download(), fwd, fwd_scale, 0x1p-16, kBf16<T>, FLT_MIN));
        EXPECT_TRUE(all_close(d_dx.download(), bwd, bwd_scale, 0x1p-16, kBf16<T>, FLT_MIN));
    }
#endif
}

// ReLU as nn/mlp.cpp's (its CPU version is private there): forward exact; backward one addition.
// Every fifth x is exactly 0, which passes no gradient (x > 0 is strict).
TYPED_TEST(CudaElementwise, ReluForwardAndBackward) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    Rng rng(9);
    for (int64_t n : kSizes) {
        for (size_t offset : kOffsets) {
            SCOPED_TRACE(where(n, offset));
            auto x = random_values<T>(rng, n, -4.0, 4.0);
            for (int64_t i = 0; i < n; i += 5) x[i] = encode<T>(i % 10 == 0 ? 0.0 : -0.0);
            const auto dout = random_values<T>(rng, n, -2.0, 2.0);
            const auto dx0 = random_values<T>(rng, n, -1.0, 1.0);
            std::vector<double> fwd(n), bwd(n), bwd_scale(n);
            for (int64_t i = 0; i < n; ++i) {
                const double xi = decode(x[i]), di = decode(dout[i]), gi = decode(dx0[i]);
                fwd[i] = xi > 0 ? xi : 0.0;
                bwd[i] = gi + (xi > 0 ? di : 0.0);
                bwd_scale[i] = std::abs(gi) + (xi > 0 ? std::abs(di) : 0.0);
            }
            DeviceBuffer<T> d_x(x, offset), d_out(std::vector<T>(n), offset), d_dout(dout, offset),
                d_dx(dx0, offset);
            ops::cuda::relu_forward(d_out.get(), d_x.get(), n);
            EXPECT_TRUE(all_within(d_out.download(), fwd, std::vector<double>(n, 0.0))) << "forward";
            ops::cuda::relu_backward(d_dx.get(), d_dout.get(), d_x.get(), n);
            EXPECT_TRUE(all_close(d_dx.download(), bwd, bwd_scale, kF32Rel)) << "backward";
            ops::cuda::relu_forward(d_x.get(), d_x.get(), n);  // in place
            EXPECT_TRUE(all_within(d_x.download(), fwd, std::vector<double>(n, 0.0))) << "in place";
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
            // The overwrite form over a buffer of garbage equals the accumulating form over zeros,
            // bit for bit (it adds its value to +0 as that one does).
            const std::vector<T> zeros(N * 2 * F, T(0));
            DeviceBuffer<T> d_acc(zeros, offset), d_over(dgate_up0, offset);
            ops::cuda::swiglu_backward(d_acc.get(), d_dout.get(), d_gate_up.get(), N, F);
            ops::cuda::swiglu_backward_overwrite(d_over.get(), d_dout.get(), d_gate_up.get(), N, F);
            const auto acc = d_acc.download(), over = d_over.download();
            ASSERT_EQ(acc.size(), over.size());
            for (size_t e = 0; e < acc.size(); ++e)
                ASSERT_EQ(std::memcmp(&acc[e], &over[e], sizeof(T)), 0) << "element " << e;
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
    EXPECT_NO_THROW(ops::cuda::gelu_forward<T>(nullptr, nullptr, 0));
    EXPECT_NO_THROW(ops::cuda::gelu_backward<T>(nullptr, nullptr, nullptr, 0));
    EXPECT_NO_THROW(ops::cuda::gelu_tanh_forward<T>(nullptr, nullptr, 0));
    EXPECT_NO_THROW(ops::cuda::gelu_tanh_backward<T>(nullptr, nullptr, nullptr, 0));
    EXPECT_NO_THROW(ops::cuda::relu_forward<T>(nullptr, nullptr, 0));
    EXPECT_NO_THROW(ops::cuda::relu_backward<T>(nullptr, nullptr, nullptr, 0));
    try {
        ops::cuda::silu_forward<T>(nullptr, nullptr, -1);
        ADD_FAILURE() << "no error for a negative size";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("silu_forward"), std::string::npos) << e.what();
    }
    try {
        ops::cuda::gelu_tanh_backward<T>(nullptr, nullptr, nullptr, -1);
        ADD_FAILURE() << "no error for a negative size";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("gelu_tanh_backward"), std::string::npos) << e.what();
    }
#endif
}

}  // namespace
