// CUDA nn.Linear (ops/cuda/linear.h, cuBLASLt) against ops::linear_forward / linear_backward with
// T = double, and CUDA AdamW and gradient-norm clipping (ops/cuda/adamw.h) against the CPU
// AdamW<float> and clip_grad_norm (train/optimizer.h). The row-major -> column-major mapping and
// the decay mask are host logic, checked in every build; everything else skips, saying why, when
// the build has no CUDA or the machine has no GPU.
//
// Linear tolerances. The reference is computed in double from the very values the GPU reads (for
// bf16: the decoded bf16 inputs), so what remains is the GPU's rounding. An output is a sum of
// K products (K = I for out, O for dx, N for dW and db) plus one more term (the bias, or the
// accumulated gradient C). In any summation order (split-K included) the fp32 error is at most
// (K + 1)·u·S with u = 2^-24 and S the sum of the terms' magnitudes, + u·S if the products are
// rounded: ≤ (K + 2)·u·S. Tensor cores (bf16) align the addends to the largest exponent and
// truncate (Fasi et al., "Numerical behavior of NVIDIA tensor cores", 2021): up to 1 ulp, 2u, per
// addition, so bf16 gets 2·(K + 2)·u·S. A bf16 output is then rounded once more, to nearest even:
// + 2^-8·|result|. S is computed by the same reference on |x|, |W|, |b|, |C|. These bounds are
// loose (errors are rarely all one way) yet far below what a wrong layout, transpose or operand
// produces (errors of the size of the result itself).
//
// AdamW tolerances: see adamw_bounds below.
#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "core/cuda_device.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/rng.h"
#include "cuda_test_util.h"
#include "nn/parameters.h"
#include "ops/cuda/adamw.h"
#include "ops/cuda/elementwise.h"
#include "ops/cuda/linear.h"
#include "ops/linear.h"
#include "train/optimizer.h"

namespace {

using namespace mslm;

std::vector<double> random_doubles(Rng& rng, size_t n, double lo = -1.0, double hi = 1.0) {
    std::vector<double> v(n);
    for (auto& x : v) x = rng.uniform(lo, hi);
    return v;
}

// ---- host checks of the column-major mapping: a naive column-major GEMM over double buffers
// must reproduce the CPU reference through each mapping.

// D += op(A) · op(B) (D is zeroed by the caller for a plain product).
void column_major_gemm(const ops::cuda::detail::ColumnMajorGemm& g) {
    const auto* A = static_cast<const double*>(g.a);
    const auto* B = static_cast<const double*>(g.b);
    auto* D = static_cast<double*>(g.d);
    for (int64_t j = 0; j < g.n; ++j) {
        for (int64_t i = 0; i < g.m; ++i) {
            double sum = 0;
            for (int64_t l = 0; l < g.k; ++l) {
                const double a = g.trans_a ? A[l + i * g.lda] : A[i + l * g.lda];
                const double b = g.trans_b ? B[j + l * g.ldb] : B[l + j * g.ldb];
                sum += a * b;
            }
            D[i + j * g.ldd] += sum;
        }
    }
}

::testing::AssertionResult near(const std::vector<double>& got, const std::vector<double>& want) {
    for (size_t i = 0; i < got.size(); ++i)
        if (std::abs(got[i] - want[i]) > 1e-12 * (1 + std::abs(want[i])))
            return ::testing::AssertionFailure() << "[" << i << "] " << got[i] << " vs " << want[i];
    return ::testing::AssertionSuccess();
}

TEST(CudaLinearMapping, ColumnMajorGemmsReproduceTheRowMajorReference) {
    Rng rng(11);
    for (auto [N, I, O] :
         {std::tuple<int64_t, int64_t, int64_t>{1, 1, 1}, {3, 5, 4}, {1, 7, 2}, {6, 1, 3}, {4, 3, 1}}) {
        SCOPED_TRACE("(N, I, O) = (" + std::to_string(N) + ", " + std::to_string(I) + ", " +
                     std::to_string(O) + ")");
        const auto x = random_doubles(rng, N * I), W = random_doubles(rng, O * I),
                   dout = random_doubles(rng, N * O);

        std::vector<double> out(N * O), ref(N * O);
        ops::linear_forward<double>(ref.data(), x.data(), W.data(), nullptr, N, I, O);
        column_major_gemm(ops::cuda::detail::linear_forward_gemm(out.data(), x.data(), W.data(), N, I, O));
        EXPECT_TRUE(near(out, ref)) << "forward";

        std::vector<double> dx(N * I), dW(O * I), dx_ref(N * I), dW_ref(O * I);
        ops::linear_backward<double>(dx_ref.data(), dW_ref.data(), nullptr, dout.data(), x.data(), W.data(),
                                     N, I, O);
        column_major_gemm(ops::cuda::detail::linear_dx_gemm(dx.data(), dout.data(), W.data(), N, I, O));
        column_major_gemm(ops::cuda::detail::linear_dW_gemm(dW.data(), dout.data(), x.data(), N, I, O));
        EXPECT_TRUE(near(dx, dx_ref)) << "dx";
        EXPECT_TRUE(near(dW, dW_ref)) << "dW";
    }
}

TEST(CudaAdamWMask, MarksTheDecayedParametersOnly) {
    Parameters<float> params;
    params.add("w", {3, 5}, true);
    params.add("b", {5}, false);
    params.add("w2", {2, 3}, true);
    const int64_t total = params.total();
    const std::vector<uint8_t> mask = ops::cuda::adamw_decay_mask(params.specs(), total);
    ASSERT_EQ(int64_t(mask.size()), total);
    std::vector<uint8_t> want(total, 0);
    for (const ParamSpec& s : params.specs())
        std::fill_n(want.begin() + int64_t(s.offset), s.numel, uint8_t(s.decay ? 1 : 0));
    EXPECT_EQ(mask, want);
    EXPECT_THROW(ops::cuda::adamw_decay_mask(params.specs(), total - 1), Error);
}

#ifdef MSLM_HAVE_CUDA

TEST(CudaLinearChecks, RejectsNegativeSizesBeforeTouchingTheGpu) {
    float* p = nullptr;
    EXPECT_THROW(ops::cuda::linear_forward<float>(p, p, p, p, -1, 2, 3), Error);
    EXPECT_THROW(ops::cuda::linear_backward<float>(p, p, p, p, p, p, 1, -2, 3), Error);
}

#endif  // MSLM_HAVE_CUDA

// ---- GPU tests

template <typename T>
class CudaLinear : public test::CudaTest {};
TYPED_TEST_SUITE(CudaLinear, test::Dtypes, test::DtypeNames);

// T here is the gradient type; parameters and state are fp32.
template <typename T>
class CudaAdamW : public test::CudaTest {};
TYPED_TEST_SUITE(CudaAdamW, test::Dtypes, test::DtypeNames);

#ifdef MSLM_HAVE_CUDA

using namespace mslm::test;

std::vector<double> magnitudes(const std::vector<double>& v) {
    std::vector<double> a(v.size());
    for (size_t i = 0; i < v.size(); ++i) a[i] = std::abs(v[i]);
    return a;
}

// The argued bound of the header comment for sums of K products plus one term.
template <typename T>
std::vector<double> linear_tolerance(const std::vector<double>& ref, const std::vector<double>& scale,
                                     int64_t K) {
    const double rel = (kBf16<T> ? 2.0 : 1.0) * double(K + 2) * kU;
    std::vector<double> tol(ref.size());
    for (size_t i = 0; i < ref.size(); ++i)
        tol[i] = rel * scale[i] + (kBf16<T> ? 0x1p-8 * std::abs(ref[i]) : 0.0);
    return tol;
}

std::string where(int64_t N, int64_t I, int64_t O, bool bias, size_t offset = 0) {
    return "(N, I, O) = (" + std::to_string(N) + ", " + std::to_string(I) + ", " + std::to_string(O) +
           "), bias " + (bias ? "on" : "off") + ", offset " + std::to_string(offset);
}

const int64_t kRows[] = {1, 3, 17, 256};
const int64_t kWidths[] = {1, 7, 64, 769};

// One forward and one backward of a random problem, both checked against the double reference.
// Gradients start random, so the backward's += is checked too. With only_grad in 0..2, the
// backward gets just dx, dW or db (the others null).
template <typename T>
void check_linear(Rng& rng, int64_t N, int64_t I, int64_t O, bool bias, size_t offset, int only_grad = -1) {
    SCOPED_TRACE(where(N, I, O, bias, offset));
    const auto x = random_values<T>(rng, N * I), W = random_values<T>(rng, O * I),
               b = random_values<T>(rng, O);
    const auto dout = random_values<T>(rng, N * O);
    const auto dx0 = random_values<T>(rng, N * I), dW0 = random_values<T>(rng, O * I),
               db0 = random_values<T>(rng, O);
    const auto xd = decode_all(x), Wd = decode_all(W), bd = decode_all(b), doutd = decode_all(dout);
    const auto xa = magnitudes(xd), Wa = magnitudes(Wd), ba = magnitudes(bd), douta = magnitudes(doutd);

    DeviceBuffer<T> x_d(x, offset), W_d(W, offset), b_d(b, offset), out_d(std::vector<T>(N * O), offset);
    ops::cuda::linear_forward(out_d.get(), x_d.get(), W_d.get(), bias ? b_d.get() : nullptr, N, I, O);
    std::vector<double> ref(N * O), scale(N * O);
    ops::linear_forward<double>(ref.data(), xd.data(), Wd.data(), bias ? bd.data() : nullptr, N, I, O);
    ops::linear_forward<double>(scale.data(), xa.data(), Wa.data(), bias ? ba.data() : nullptr, N, I, O);
    EXPECT_TRUE(all_within(out_d.download(), ref, linear_tolerance<T>(ref, scale, I))) << "forward";

    DeviceBuffer<T> dout_d(dout, offset), dx_d(dx0, offset), dW_d(dW0, offset), db_d(db0, offset);
    const bool want_dx = only_grad < 0 || only_grad == 0, want_dW = only_grad < 0 || only_grad == 1,
               want_db = only_grad < 0 || only_grad == 2;
    ops::cuda::linear_backward(want_dx ? dx_d.get() : nullptr, want_dW ? dW_d.get() : nullptr,
                               want_db ? db_d.get() : nullptr, dout_d.get(), x_d.get(), W_d.get(), N, I, O);
    std::vector<double> dx = decode_all(dx0), dW = decode_all(dW0), db = decode_all(db0);
    std::vector<double> dx_s = magnitudes(dx), dW_s = magnitudes(dW), db_s = magnitudes(db);
    ops::linear_backward<double>(dx.data(), dW.data(), db.data(), doutd.data(), xd.data(), Wd.data(), N, I,
                                 O);
    ops::linear_backward<double>(dx_s.data(), dW_s.data(), db_s.data(), douta.data(), xa.data(), Wa.data(), N,
                                 I, O);
    if (want_dx) {
        EXPECT_TRUE(all_within(dx_d.download(), dx, linear_tolerance<T>(dx, dx_s, O))) << "dx";
    } else {
        EXPECT_TRUE(dx_d.download() == dx0) << "dx was not asked for";
    }
    if (want_dW) {
        EXPECT_TRUE(all_within(dW_d.download(), dW, linear_tolerance<T>(dW, dW_s, N))) << "dW";
    } else {
        EXPECT_TRUE(dW_d.download() == dW0) << "dW was not asked for";
    }
    if (want_db) {
        EXPECT_TRUE(all_within(db_d.download(), db, linear_tolerance<T>(db, db_s, N))) << "db";
    } else {
        EXPECT_TRUE(db_d.download() == db0) << "db was not asked for";
    }
}

#endif  // MSLM_HAVE_CUDA

TYPED_TEST(CudaLinear, ForwardAndBackwardOverOddShapes) {
#ifdef MSLM_HAVE_CUDA
    Rng rng(1);
    for (int64_t N : kRows)
        for (int64_t I : kWidths)
            for (int64_t O : kWidths)
                for (bool bias : {false, true}) check_linear<TypeParam>(rng, N, I, O, bias, 0);
#endif
}

TYPED_TEST(CudaLinear, MisalignedPointers) {
#ifdef MSLM_HAVE_CUDA
    Rng rng(2);
    for (auto [N, I, O] :
         {std::tuple<int64_t, int64_t, int64_t>{17, 64, 64}, {3, 7, 769}, {256, 769, 7}, {1, 64, 1}})
        check_linear<TypeParam>(rng, N, I, O, true, 1);
#endif
}

TYPED_TEST(CudaLinear, BackwardSkipsNullGradients) {
#ifdef MSLM_HAVE_CUDA
    Rng rng(3);
    for (int only = 0; only < 3; ++only) check_linear<TypeParam>(rng, 17, 7, 64, false, 0, only);
#endif
}

// linear_backward_dx overwrites: dx starts as garbage and ends as dout · W within the same bound
// (the reference starts from zero).
TYPED_TEST(CudaLinear, BackwardDxOverwrites) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    Rng rng(6);
    for (int64_t N : kRows)
        for (int64_t I : kWidths)
            for (int64_t O : kWidths) {
                SCOPED_TRACE(where(N, I, O, false));
                const auto W = random_values<T>(rng, O * I), dout = random_values<T>(rng, N * O);
                const auto Wd = decode_all(W), doutd = decode_all(dout);
                DeviceBuffer<T> W_d(W), dout_d(dout), dx_d(random_values<T>(rng, N * I, -100, 100));
                ops::cuda::linear_backward_dx(dx_d.get(), dout_d.get(), W_d.get(), N, I, O);
                std::vector<double> dx(N * I, 0.0), dx_s(N * I, 0.0);
                ops::linear_backward<double>(dx.data(), nullptr, nullptr, doutd.data(), nullptr, Wd.data(), N, I, O);
                ops::linear_backward<double>(dx_s.data(), nullptr, nullptr, magnitudes(doutd).data(), nullptr,
                                             magnitudes(Wd).data(), N, I, O);
                EXPECT_TRUE(all_within(dx_d.download(), dx, linear_tolerance<T>(dx, dx_s, O)));
            }
    // O = 0: an empty sum, zeros.
    DeviceBuffer<T> dx_d(random_values<T>(rng, 6)), none(std::vector<T>{});
    ops::cuda::linear_backward_dx(dx_d.get(), none.get(), none.get(), 2, 3, 0);
    EXPECT_EQ(dx_d.download(), std::vector<T>(6, encode<T>(0.0)));
#endif
}

// N = 0 changes nothing; I = 0 makes out = b (an empty sum) and leaves only db to accumulate;
// O = 0 has no outputs.
TYPED_TEST(CudaLinear, EmptyDimensions) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    Rng rng(4);
    for (auto [N, I, O] : {std::tuple<int64_t, int64_t, int64_t>{0, 5, 3}, {4, 0, 3}, {4, 5, 0}}) {
        for (bool bias : {false, true}) check_linear<T>(rng, N, I, O, bias, 0);
    }
    // I = 0 exactly: out is b, or zeros, with no rounding.
    const auto b = random_values<T>(rng, 3);
    DeviceBuffer<T> b_d(b), out_d(random_values<T>(rng, 2 * 3)), none(std::vector<T>{});
    ops::cuda::linear_forward(out_d.get(), none.get(), none.get(), b_d.get(), 2, 0, 3);
    EXPECT_EQ(out_d.download(), (std::vector<T>{b[0], b[1], b[2], b[0], b[1], b[2]}));
    ops::cuda::linear_forward(out_d.get(), none.get(), none.get(), static_cast<const T*>(nullptr), 2, 0, 3);
    EXPECT_EQ(out_d.download(), std::vector<T>(6, encode<T>(0.0)));
#endif
}

// Same call, same inputs, same device: bitwise the same outputs (fixed algorithm per shape, no
// atomics in the bias gradient).
TYPED_TEST(CudaLinear, Deterministic) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    Rng rng(5);
    const int64_t N = 256, I = 769, O = 64;
    const auto x = random_values<T>(rng, N * I), W = random_values<T>(rng, O * I),
               b = random_values<T>(rng, O);
    const auto dout = random_values<T>(rng, N * O);
    DeviceBuffer<T> x_d(x), W_d(W), b_d(b), dout_d(dout);
    std::vector<std::vector<T>> runs[2];
    for (auto& run : runs) {
        DeviceBuffer<T> out{std::vector<T>(N * O)}, dx{std::vector<T>(N * I)}, dW{std::vector<T>(O * I)},
            db{std::vector<T>(O)};
        ops::cuda::linear_forward(out.get(), x_d.get(), W_d.get(), b_d.get(), N, I, O);
        ops::cuda::linear_backward(dx.get(), dW.get(), db.get(), dout_d.get(), x_d.get(), W_d.get(), N, I, O);
        run = {out.download(), dx.download(), dW.download(), db.download()};
    }
    EXPECT_TRUE(runs[0] == runs[1]);
#endif
}

#ifdef MSLM_HAVE_CUDA

// ---- AdamW
//
// Tolerances. The GPU evaluates AdamW<float>::step's expressions with every operation rounded to
// fp32; the CPU compiler may contract some of them into FMAs (GCC does by default), which rounds
// less. Either way an implementation's result is within the following of the exact value of its
// own inputs (u = 2^-24, primes are the values after the step, c1 = 1 − β1, c2 = 1 − β2):
//   m' = m + c1·(g − m):             2u·c1·|g − m| + u·|m'|
//   v' = v·β2 + c2·g·g:              u·β2·v + 2u·c2·g² + u·v' ≤ 3u·v'
//   q  = m'/(√v'/√bc2 + eps):        4u·|q|     (sqrt, divide, add, divide)
//   p' = p·decay − step_size·q:      u·|p| + 5u·|step_size·q| + u·|p'|
// The two implementations' difference is at most twice that per step, plus what earlier
// differences in m, v, p carry forward: m's by β1, v's by β2, p's by decay ≤ 1, and into p' through
// q: step_size·δm'/denom and |step_size·q|·δv'/(2v') (√ halves a relative error). adamw_bounds runs
// these recurrences per element on the CPU's values; the test allows twice the bound for the
// second-order terms left out. A wrong decay mask moves p by lr·wd·|p| = 1e-3·|p| per step, and
// a wrong bias correction or order of operations changes the update by O(1): orders of magnitude
// above the bound (~1e-6·|p| after six steps).
struct AdamWBounds {
    std::vector<double> m, v, p;
};

void adamw_bounds(AdamWBounds& B, const std::vector<double>& g, const std::vector<double>& m0,
                  const std::vector<double>& m1, const std::vector<double>& v1, const std::vector<double>& p0,
                  const std::vector<double>& p1, const ops::cuda::AdamWScalars& s, double beta1,
                  double beta2) {
    const double c1 = s.one_minus_beta1, step = s.step_size;
    for (size_t i = 0; i < g.size(); ++i) {
        B.m[i] = beta1 * B.m[i] + 2 * kU * (2 * c1 * std::abs(g[i] - m0[i]) + std::abs(m1[i]));
        B.v[i] = beta2 * B.v[i] + 6 * kU * v1[i];
        const double denom = std::sqrt(v1[i]) / s.bias_correction2_sqrt + s.eps;
        const double update = std::abs(step * m1[i] / denom);
        B.p[i] += 2 * kU * (std::abs(p0[i]) + 5 * update + std::abs(p1[i])) + step * B.m[i] / denom +
                  (v1[i] > 0 ? update * B.v[i] / (2 * v1[i]) : 0.0);
    }
}

::testing::AssertionResult within(const char* what, const std::vector<double>& got,
                                  const std::vector<double>& want, const std::vector<double>& bound) {
    size_t misses = 0;
    std::string first;
    for (size_t i = 0; i < got.size(); ++i) {
        const double tol = 2 * bound[i];
        if (std::abs(got[i] - want[i]) <= tol) continue;
        if (++misses <= 5)
            first += "\n  " + std::string(what) + "[" + std::to_string(i) + "] got " +
                     std::to_string(got[i]) + ", want " + std::to_string(want[i]) + " ± " +
                     std::to_string(tol);
    }
    if (misses == 0) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << misses << " of " << got.size() << " outside tolerance:" << first;
}

// The elements of `flat` (the flat buffer's layout) that belong to parameters, in order.
template <typename V>
std::vector<double> param_elements(const std::vector<ParamSpec>& specs, const V& flat) {
    std::vector<double> out;
    for (const ParamSpec& s : specs)
        for (int64_t i = 0; i < s.numel; ++i) out.push_back(double(flat[s.offset + i]));
    return out;
}

// The optimizer state of the CPU AdamW, as param_elements would list it.
std::vector<double> cpu_state(const AdamW<float>& opt, const char* which) {
    std::vector<double> out;
    for (const auto& [name, t] : opt.state_tensors()) {
        if (name.rfind(std::string("adamw.") + which + ".", 0) != 0) continue;
        for (float f : t.to_float_vector()) out.push_back(f);
    }
    return out;
}

struct AdamWCase {
    double weight_decay;
    double max_norm;  // 0: no clipping
    size_t offset;    // 1 misaligns every device buffer (the one-element path)
};

std::string where(const AdamWCase& c) {
    return "weight_decay " + std::to_string(c.weight_decay) + ", max_norm " + std::to_string(c.max_norm) +
           ", offset " + std::to_string(c.offset);
}

// Six steps of the GPU AdamW (gradients of type G) next to the CPU AdamW<float> fed the same
// (decoded) gradients, with a learning rate that changes every step.
template <typename G>
void check_adamw(const AdamWCase& c) {
    SCOPED_TRACE(where(c));
    Parameters<float> params;
    params.add("embed", {37, 16}, true);
    params.add("norm", {16}, false);
    params.add("proj", {16, 33}, true);
    params.add("big", {1000, 7}, true);
    params.add("bias", {33}, false);  // last and 33 long: the buffer's tail is not a multiple of 4
    params.allocate();
    const int64_t total = params.total();
    const std::vector<ParamSpec>& specs = params.specs();
    Rng rng(100);
    std::fill_n(params.values(), total, 0.0f);
    for (const ParamSpec& s : specs)
        for (int64_t i = 0; i < s.numel; ++i) params.values()[s.offset + i] = float(rng.uniform(-1, 1));

    const AdamWOptions options{
        .lr = 0, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = c.weight_decay};
    AdamW<float> opt(params, options);

    DeviceBuffer<float> p_d(std::vector<float>(params.values(), params.values() + total), c.offset);
    DeviceBuffer<float> m_d(std::vector<float>(total), c.offset), v_d(std::vector<float>(total), c.offset);
    DeviceBuffer<uint16_t> pbf16_d(std::vector<uint16_t>(total), c.offset);
    DeviceBuffer<uint8_t> mask_d(ops::cuda::adamw_decay_mask(specs, total), c.offset);
    DeviceBuffer<G> g_d(std::vector<G>(total), c.offset);
    DeviceBuffer<double> norm_d(std::vector<double>(1)),
        partials_d(std::vector<double>(ops::cuda::kGradNormPartials));
    DeviceBuffer<float> scale_d(std::vector<float>(1));

    const size_t n = size_t(params.total_unique());
    AdamWBounds B{std::vector<double>(n), std::vector<double>(n), std::vector<double>(n)};
    const float lrs[] = {1e-2f, 5e-3f, 2e-2f, 1e-2f, 3e-3f, 1e-2f};
    int64_t step = 0;
    for (float lr : lrs) {
        ++step;
        SCOPED_TRACE("step " + std::to_string(step));
        // Gradients of magnitude up to 1 over ~9000 elements: norm ≈ 55, so max_norm 20 clips.
        std::vector<G> g(total, encode<G>(0.0));
        for (const ParamSpec& s : specs)
            for (int64_t i = 0; i < s.numel; ++i) g[s.offset + i] = encode<G>(rng.uniform(-1, 1));
        for (int64_t i = 0; i < total; ++i) params.grads()[i] = float(decode(g[i]));
        g_d.upload(g);

        const float* scale = nullptr;
        if (c.max_norm > 0) {
            const double norm = clip_grad_norm(params, c.max_norm);
            ops::cuda::clip_grad_norm(norm_d.get(), scale_d.get(), g_d.get(), total, c.max_norm,
                                      partials_d.get());
            EXPECT_NEAR(norm_d.download()[0], norm, 1e-12 * norm);
            const double coef = c.max_norm / (norm + 1e-6);
            // The norms agree to ~1e-16: the fp32 factors are equal unless one straddles a rounding
            // boundary, which this fixed seed does not do.
            EXPECT_EQ(scale_d.download()[0], coef < 1 ? float(coef) : 1.0f);
            scale = scale_d.get();
        }

        const std::vector<double> gd = param_elements(specs, params.grads());
        const std::vector<double> p0 = param_elements(specs, params.values());
        const std::vector<double> m0 = cpu_state(opt, "m");
        opt.step(params, lr);
        const auto s = ops::cuda::adamw_scalars(lr, options.beta1, options.beta2, options.eps,
                                                options.weight_decay, step);
        ops::cuda::adamw_step(p_d.get(), pbf16_d.get(), m_d.get(), v_d.get(), g_d.get(), mask_d.get(), total,
                              s, scale);

        const std::vector<double> p1 = param_elements(specs, params.values());
        const std::vector<double> m1 = cpu_state(opt, "m"), v1 = cpu_state(opt, "v");
        adamw_bounds(B, gd, m0, m1, v1, p0, p1, s, options.beta1, options.beta2);

        const std::vector<float> p_gpu = p_d.download();
        EXPECT_TRUE(within("m", param_elements(specs, m_d.download()), m1, B.m));
        EXPECT_TRUE(within("v", param_elements(specs, v_d.download()), v1, B.v));
        EXPECT_TRUE(within("p", param_elements(specs, p_gpu), p1, B.p));
        // The bf16 copy is the GPU's own fp32 result rounded to nearest even, padding included.
        const std::vector<uint16_t> pbf16 = pbf16_d.download();
        size_t bf16_misses = 0;
        for (int64_t i = 0; i < total; ++i) bf16_misses += pbf16[i] != f32_to_bf16(p_gpu[i]);
        EXPECT_EQ(bf16_misses, 0u) << "bf16 copies that are not round-to-nearest-even of the fp32 value";
        // Padding: zero gradients and state leave it as it was (zero).
        for (int64_t i = 0; i < total; ++i) {
            const bool padding = std::none_of(specs.begin(), specs.end(), [&](const ParamSpec& ps) {
                return i >= int64_t(ps.offset) && i < int64_t(ps.offset) + ps.numel;
            });
            if (padding) {
                ASSERT_EQ(p_gpu[i], 0.0f) << "padding element " << i;
            }
        }
    }
}

#endif  // MSLM_HAVE_CUDA

TYPED_TEST(CudaAdamW, MatchesCpuWithDecayMask) {
#ifdef MSLM_HAVE_CUDA
    check_adamw<TypeParam>({0.1, 0.0, 0});
#endif
}

TYPED_TEST(CudaAdamW, MatchesCpuWithClipping) {
#ifdef MSLM_HAVE_CUDA
    check_adamw<TypeParam>({0.1, 20.0, 0});    // clips every step
    check_adamw<TypeParam>({0.1, 1000.0, 0});  // never clips: the factor is exactly 1
#endif
}

TYPED_TEST(CudaAdamW, MatchesCpuWithoutDecayAndMisaligned) {
#ifdef MSLM_HAVE_CUDA
    check_adamw<TypeParam>({0.0, 0.0, 1});
    check_adamw<TypeParam>({0.1, 20.0, 1});
#endif
}

// The norm against a double sum in index order: both are double sums of n squares, each within
// (n − 1)·2^-53 of the exact sum of the squares (which are exact in double), so the norms differ
// by at most n·2^-53 relative (√ halves the relative error, the two add).
TYPED_TEST(CudaAdamW, GradNormIsDeterministicAndMatchesTheCpu) {
#ifdef MSLM_HAVE_CUDA
    using G = TypeParam;
    Rng rng(7);
    DeviceBuffer<double> norm_d(std::vector<double>(1)),
        partials_d(std::vector<double>(ops::cuda::kGradNormPartials));
    DeviceBuffer<float> scale_d(std::vector<float>(1));
    for (int64_t n : {int64_t(0), int64_t(1), int64_t(7), int64_t(1000), int64_t(1000003)}) {
        SCOPED_TRACE("n = " + std::to_string(n));
        const auto g = random_values<G>(rng, n, -2.0, 2.0);
        double sum = 0;
        for (G x : g) sum += decode(x) * decode(x);
        const double want = std::sqrt(sum);
        DeviceBuffer<G> g_d(g);
        ops::cuda::grad_norm(norm_d.get(), g_d.get(), n, partials_d.get());
        const double got = norm_d.download()[0];
        EXPECT_NEAR(got, want, double(n + 1) * 0x1p-53 * want);
        ops::cuda::clip_grad_norm(norm_d.get(), scale_d.get(), g_d.get(), n, 1.0, partials_d.get());
        EXPECT_EQ(norm_d.download()[0], got) << "not deterministic";
        const double coef = 1.0 / (want + 1e-6);
        EXPECT_EQ(scale_d.download()[0], coef < 1 ? float(1.0 / (got + 1e-6)) : 1.0f);
    }
#endif
}

// A NaN or infinite gradient gives a NaN or infinite norm and a factor of 1: the gradients are
// left alone, as clip_grad_norm on the CPU does; the caller sees the norm and skips the step.
TYPED_TEST(CudaAdamW, NonFiniteNormDoesNotScale) {
#ifdef MSLM_HAVE_CUDA
    using G = TypeParam;
    DeviceBuffer<double> norm_d(std::vector<double>(1)),
        partials_d(std::vector<double>(ops::cuda::kGradNormPartials));
    DeviceBuffer<float> scale_d(std::vector<float>(1));
    for (double bad : {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity()}) {
        std::vector<G> g(100, encode<G>(0.5));
        g[37] = encode<G>(bad);
        DeviceBuffer<G> g_d(g);
        ops::cuda::clip_grad_norm(norm_d.get(), scale_d.get(), g_d.get(), 100, 1.0, partials_d.get());
        EXPECT_FALSE(std::isfinite(norm_d.download()[0]));
        EXPECT_EQ(scale_d.download()[0], 1.0f);
    }
#endif
}

// linear_forward_accumulate (out += x·Wᵀ, beta = 1): the decode step's residual add in one call.
// Against the exact value r = out₀ + Σ x·W (double): cuBLASLt may round the product to bf16 before
// the add or not (the header), so the bound is the output's rounding (2⁻⁸·|r|), the product's
// (2⁻⁸·|p|) and the fp32 sum's ((I + 2)·u·Σ|x·W|), with 1% for second-order terms. Where cuBLASLt rounds
// first the bits are those of linear_forward + axpy; the count that differ is printed, not asserted (it
// depends on the kernel).
TEST(CudaLinearAccumulate, AddsTheProductWithinTwoRoundings) {
#ifdef MSLM_HAVE_CUDA
    if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
    Rng rng(19);
    for (auto [N, I, O] : {std::tuple<int64_t, int64_t, int64_t>{1, 768, 768},
                           {3, 1536, 768},
                           {64, 2048, 768},
                           {8, 1, 300},
                           {5, 7, 9}}) {
        SCOPED_TRACE(where(N, I, O, false));
        const auto x = random_values<uint16_t>(rng, N * I), W = random_values<uint16_t>(rng, O * I);
        const auto out0 = random_values<uint16_t>(rng, N * O, -4.0, 4.0);
        DeviceBuffer<uint16_t> x_d(x), W_d(W), acc_d(out0), pair_d(out0), tmp_d(std::vector<uint16_t>(N * O));
        ops::cuda::linear_forward_accumulate(acc_d.get(), x_d.get(), W_d.get(), N, I, O);
        ops::cuda::linear_forward(tmp_d.get(), x_d.get(), W_d.get(), static_cast<const uint16_t*>(nullptr), N,
                                  I, O);
        ops::cuda::axpy(pair_d.get(), tmp_d.get(), N * O, 1.0f);
        const auto acc = acc_d.download(), pair = pair_d.download();
        int64_t differ = 0;
        for (int64_t n = 0; n < N; ++n)
            for (int64_t o = 0; o < O; ++o) {
                double p = 0, mag = 0;
                for (int64_t i = 0; i < I; ++i) {
                    const double t = decode(x[n * I + i]) * decode(W[o * I + i]);
                    p += t;
                    mag += std::abs(t);
                }
                const double r = decode(out0[n * O + o]) + p;
                // × 1.01: the second-order terms (a rounding of an already rounded value).
                const double bound =
                    1.01 * (std::ldexp(std::abs(r) + std::abs(p), -8) + double(I + 2) * kU * mag);
                ASSERT_LE(std::abs(decode(acc[n * O + o]) - r), bound) << "row " << n << " column " << o;
                differ += acc[n * O + o] != pair[n * O + o];
            }
        std::printf("  (%lld, %lld, %lld): %lld of %lld outputs differ from linear_forward + axpy\n",
                    static_cast<long long>(N), static_cast<long long>(I), static_cast<long long>(O),
                    static_cast<long long>(differ), static_cast<long long>(N * O));
    }
#else
    GTEST_SKIP() << "built without CUDA";
#endif
}

// batched_linear_f32_out: strided batches of bf16 products with fp32 outputs, the layout the SSD's
// C·Bᵀ per chunk uses (operands as column windows of wider rows, batches Q rows apart, one output
// block per batch). bf16 × bf16 products are exact in fp32, so the only error is fp32 summation:
// (K + 2)·u of the sum of magnitudes (the header's bound). The output's padding between blocks
// must stay untouched.
TEST(CudaBatchedLinear, StridedBatchesOfBf16ProductsInFp32) {
#ifdef MSLM_HAVE_CUDA
    if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
    Rng rng(17);
    struct Case {
        int64_t batch, M, I, O, ld_x, ld_W, col;
    };
    for (const Case c : {Case{8, 64, 128, 64, 264, 264, 8}, Case{3, 17, 7, 9, 16, 24, 0}, Case{1, 256, 128, 256, 128, 128, 0},
                         Case{5, 32, 64, 32, 200, 208, 136}}) {
        SCOPED_TRACE("batch " + std::to_string(c.batch) + " (M, I, O) = (" + std::to_string(c.M) + ", " +
                     std::to_string(c.I) + ", " + std::to_string(c.O) + ")");
        const int64_t stride_x = c.M * c.ld_x, stride_W = c.O * c.ld_W, ld_out = c.O + 3,
                      stride_out = c.M * ld_out + 5;
        const auto x = random_values<uint16_t>(rng, size_t(c.batch * stride_x));
        const auto W = random_values<uint16_t>(rng, size_t(c.batch * stride_W));
        const std::vector<float> out0(size_t(c.batch * stride_out), -7.0f);
        DeviceBuffer<uint16_t> x_d(x), W_d(W);
        DeviceBuffer<float> out_d(out0);
        ops::cuda::batched_linear_f32_out(out_d.get(), ld_out, stride_out, x_d.get() + c.col, c.ld_x, stride_x,
                                          W_d.get() + c.col, c.ld_W, stride_W, c.batch, c.M, c.I, c.O);
        const std::vector<float> got = out_d.download();
        for (int64_t b = 0; b < c.batch; ++b)
            for (int64_t m = 0; m < ld_out * c.M + 5 && b * stride_out + m < int64_t(got.size()); ++m) {
                const int64_t r = m / ld_out, o = m % ld_out;
                const float g = got[size_t(b * stride_out + m)];
                if (r >= c.M || o >= c.O) {
                    ASSERT_EQ(g, -7.0f) << "padding written at batch " << b << " offset " << m;
                    continue;
                }
                double ref = 0, mag = 0;
                for (int64_t i = 0; i < c.I; ++i) {
                    const double p = decode(x[size_t(b * stride_x + r * c.ld_x + c.col + i)]) *
                                     decode(W[size_t(b * stride_W + o * c.ld_W + c.col + i)]);
                    ref += p;
                    mag += std::abs(p);
                }
                ASSERT_LE(std::abs(double(g) - ref), double(c.I + 2) * kU * mag)
                    << "batch " << b << " row " << r << " column " << o;
            }
    }
#else
    GTEST_SKIP() << "built without CUDA";
#endif
}

}  // namespace
