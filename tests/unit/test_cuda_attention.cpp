// CUDA attention, decode attention and RoPE (ops/cuda/attention.h) against the CPU reference
// ops/attention.h run with T = double on the decoded inputs, on random inputs. Every test exists in
// every build and skips, saying why, when the build has no CUDA or the machine has no GPU; the
// shape checks run wherever CUDA is built (they throw before any CUDA call).
//
// Tolerances, from the rounding model of fp32 math (u = 2^-24, sums of n terms in any order within
// n·u of the sum of their magnitudes, expf/logf within 2 ulp). They are computed per element by a
// naive double pass over the visible (query, key) pairs, so a masking or indexing bug, which moves
// results by whole weights, cannot hide inside them:
// - score s_ij = scale·q_i·k_j − slope·(i − j). With A_ij = scale·Σ|q_id k_jd| + slope·(i − j) the
//   fp32 score is off by at most (Dh + 4)·u·A_ij (the dot, the scale, the rounded slope, the
//   product, the subtraction). Its weight p_ij = exp(s_ij − lse_i) is then off relatively by
//   ε_ij = u·((Dh + 4)·A_ij + |s_ij − lse_i| + 4) (plus the exp and the shift by the row max).
// - forward: out_d = Σ_j p_j v_jd: |Δ| ≤ Σ_j p_j|v_jd|·ε_j + M_d·(ε̄ + (2n + 8)·u), M_d = Σ_j p_j|v_jd|,
//   ε̄ = Σ_j p_j ε_j (the error of the normaliser), n keys, the 2n covering the sum and the online
//   rescaling. lse: ε̄ + (n + 8)·u + 2u·|lse|.
// - backward: dp_ij = dout_i·v_j and D_i = dout_i·out_i are off by Dh·u times their magnitude sums,
//   so ds_ij = p_ij (dp_ij − D_i) by Δds_ij = p_ij (|dp_ij − D_i|(ε_ij + 2u) + Δdp_ij + ΔD_i);
//   dq_i = scale Σ_j ds_ij k_j by scale Σ_j (Δds_ij + (n + 2)u|ds_ij|)|k_j|, dk likewise with q and
//   N = group·T terms, dv_j = Σ_i p_ij dout_i by Σ_i p_ij|dout_i|(ε_ij + (N + 2)u); adding into the
//   gradient already there rounds once more: u·(|before| + |after|).
// - rope: y = x0·c ∓ x1·s with c, s rounded to fp32: 4u·(|x0 c| + |x1 s|).
// - bf16 outputs round once more, to nearest even: 2^-8·|result|. lse is fp32 for both.
// - Tensor cores (bf16 with head dims 64 and 128, unless MSLM_ATTN_TC=0; ops/cuda/attention.h).
//   (i) Weights rounded to bf16: the forward's p (for P·V) and the backward's p (for Pᵀ·dO) and ds
//   (for ds·K and dsᵀ·Q) are rounded once each, a relative 2^-8 per term (bf16 keeps 8 significant
//   bits: unit roundoff 2^-8) before the fp32 accumulation; q, k, v and dout are bf16 already and
//   pass exactly. The forward divides Σ_j bf16(p_j) v_j by the fp32 Σ_j p_j, so out errs by
//   2^-8·M_d more; dv_j by 2^-8·Σ_i p_ij|dout_i|, dq_i and dk_j by 2^-8·scale·Σ|ds||k| (|q|).
//   The fp32 row sums, the row maxima, lse and D are formed as before.
//   (ii) Accumulation: bf16 products are exact, but a tensor core adds them truncating after
//   aligning each block of addends to the largest (Fasi, Higham, Mikaitis and Pranesh, "Numerical
//   behavior of NVIDIA tensor cores", PeerJ CS 2021), so ≤ 4u per term instead of u, as in
//   test_cuda_ssd.cpp: q·k and dout·v cost 4·Dh·u, P·V 4n·u (+ n·u of online rescaling), dq 4n·u,
//   dk and dv 4N·u.
//   (iii) Scores in log2 units: log2(e)·scale and log2(e)·slope are rounded once each, and the
//   backward's exponent subtracts log2(e)·lse rounded: with (ii) the weights err relatively by
//   ε_ij = u·((4·Dh + 8)·A_ij + 2·|s_ij − lse_i| + 8) (|lse| ≤ A + |s − lse|), and lse = ln2·m +
//   log l by 4u·|lse| instead of 2u·|lse|.
#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/cuda_device.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/rng.h"
#include "cuda_test_util.h"
#include "ops/attention.h"
#include "test_util.h"

#ifdef MSLM_HAVE_CUDA
#include "ops/cuda/attention.h"
#endif

namespace {

using namespace mslm;

template <typename T>
class CudaAttention : public test::CudaTest {};
template <typename T>
class CudaRope : public test::CudaTest {};

TYPED_TEST_SUITE(CudaAttention, test::Dtypes, test::DtypeNames);
TYPED_TEST_SUITE(CudaRope, test::Dtypes, test::DtypeNames);

#ifdef MSLM_HAVE_CUDA

// test::random_values and test::all_close are not taken: here inputs are kept as the doubles the
// kernel will read, and tolerances are computed per element (see the header comment).
using test::decode;
using test::decode_all;
using test::DeviceBuffer;
using test::encode;
using test::kBf16;
using test::kU;

template <typename T>
std::vector<T> encode_all(const std::vector<double>& x) {
    std::vector<T> out(x.size());
    std::transform(x.begin(), x.end(), out.begin(), encode<T>);
    return out;
}

// Random values already representable in T, so the reference reads exactly what the kernel reads.
template <typename T>
std::vector<double> random_values(Rng& rng, size_t n, double lo, double hi) {
    std::vector<double> v(n);
    for (auto& x : v) x = decode(encode<T>(rng.uniform(lo, hi)));
    return v;
}

// |got − ref| ≤ tol + rounding·|ref|; reports the first few misses.
::testing::AssertionResult all_close(const std::vector<double>& got, const std::vector<double>& ref,
                                     const std::vector<double>& tol, double rounding) {
    if (tol.size() != ref.size())
        return ::testing::AssertionFailure() << "size " << tol.size() << " vs " << ref.size();
    std::vector<double> t(ref.size());
    for (size_t i = 0; i < ref.size(); ++i) t[i] = tol[i] + rounding * std::abs(ref[i]);
    return test::all_within(got, ref, t);
}

template <typename T>
constexpr double kOutRounding = kBf16<T> ? 0x1p-8 : 0.0;

// The rounding model of the kernels a case runs on (header comment).
struct Model {
    bool tc = false;  // tensor cores
    int acc = 1;      // u per term of a product's fp32 sum: 1, or 4 on tensor cores
    double w = 0.0;   // relative rounding of p and ds before their products: 0, or 2^-8

    // Relative error of a weight p_ij, from A_ij and s_ij − lse_i.
    double eps(int64_t Dh, double a, double s_minus_lse) const {
        return tc ? kU * ((4 * Dh + 8) * a + 2 * std::abs(s_minus_lse) + 8)
                  : kU * ((Dh + 4) * a + std::abs(s_minus_lse) + 4);
    }
};

// Whether the kernels take the tensor cores (ops/cuda/attention.h): bf16 with head dims 64 and
// 128, unless MSLM_ATTN_TC=0.
template <typename T>
bool tensor_cores(int64_t head_dim) {
    const char* v = std::getenv("MSLM_ATTN_TC");
    return kBf16<T> && (head_dim == 64 || head_dim == 128) && (v == nullptr || std::string_view(v) != "0");
}

template <typename T>
Model model_of(int64_t head_dim) {
    if (!tensor_cores<T>(head_dim)) return Model{};
    return Model{true, 4, 0x1p-8};
}

using test::ScopedEnv;

struct Case {
    int64_t B, T, Hq, Hkv, Dh;
    int64_t window = 0;
    bool alibi = false;
    int64_t q_offset = 0;
    bool aligned = false;  // row strides a multiple of 8 elements: the tensor cores' cp.async path

    int64_t Tk() const { return q_offset + T; }
    int64_t group() const { return Hq / Hkv; }
    ops::AttentionDims dims() const { return {B, T, Hq, Hkv, Dh}; }
    float scale() const { return static_cast<float>(1.0 / std::sqrt(static_cast<double>(Dh))); }
    std::string name() const {
        return "B" + std::to_string(B) + " T" + std::to_string(T) + " Hq" + std::to_string(Hq) + " Hkv" +
               std::to_string(Hkv) + " Dh" + std::to_string(Dh) + " window" + std::to_string(window) +
               (alibi ? " alibi" : "") + " q_offset" + std::to_string(q_offset) + (aligned ? " aligned" : "");
    }
};

// Where q, k and v sit in one buffer. Without q_offset they are slices of one fused projection
// (B, T, (Hq + 2·Hkv)·Dh + pad); with it, q (B, T, Hq·Dh + pad) comes first and the fused k|v
// (B, q_offset + T, 2·Hkv·Dh + pad) after it. The pad of 3 makes every row stride odd (no row is
// 16-byte aligned); `aligned` cases pad by 8 instead, so that with Dh a multiple of 8 every row is.
struct Layout {
    int64_t ld_q, ld_k, ld_v;
    size_t q_at, k_at, v_at, size;

    Layout(const Case& c) {
        const int64_t pad = c.aligned ? 8 : 3;
        if (c.q_offset == 0) {
            ld_q = ld_k = ld_v = (c.Hq + 2 * c.Hkv) * c.Dh + pad;
            q_at = 0;
            k_at = static_cast<size_t>(c.Hq * c.Dh);
            v_at = static_cast<size_t>((c.Hq + c.Hkv) * c.Dh);
            size = static_cast<size_t>(c.B * c.T * ld_q);
        } else {
            ld_q = c.Hq * c.Dh + pad;
            ld_k = ld_v = 2 * c.Hkv * c.Dh + pad;
            q_at = 0;
            k_at = static_cast<size_t>(c.B * c.T * ld_q);
            v_at = k_at + static_cast<size_t>(c.Hkv * c.Dh);
            size = k_at + static_cast<size_t>(c.B * c.Tk() * ld_k);
        }
    }
    // Element (b, t, h, d) of q (t < T), k and v (t < q_offset + T).
    size_t q(const Case& c, int64_t b, int64_t t, int64_t h, int64_t d) const {
        return q_at + static_cast<size_t>((b * c.T + t) * ld_q + h * c.Dh + d);
    }
    size_t k(const Case& c, int64_t b, int64_t t, int64_t h, int64_t d) const {
        return k_at + static_cast<size_t>((b * c.Tk() + t) * ld_k + h * c.Dh + d);
    }
    size_t v(const Case& c, int64_t b, int64_t t, int64_t h, int64_t d) const {
        return v_at + static_cast<size_t>((b * c.Tk() + t) * ld_v + h * c.Dh + d);
    }
};

// The test cases: T 1, 17, 130, 300; Dh 24, 64, 128 (and 32); Hq/Hkv 4/4, 8/2 and 12/4 (ALiBi
// slopes beyond a power of two); windows 5 and one wider than a tile; q_offset, in and out of the
// tile grid.
const Case kForwardCases[] = {
    {2, 1, 4, 4, 64},
    {2, 17, 4, 4, 24},
    {1, 130, 8, 2, 128},
    {1, 300, 8, 2, 64, 0, true},
    {2, 130, 4, 4, 128, 5},
    {1, 300, 4, 4, 24, 5, true},
    {1, 300, 8, 2, 128, 100},
    {1, 130, 12, 4, 32, 0, true},
    {1, 17, 8, 2, 64, 0, false, 9},
    {2, 130, 4, 4, 128, 0, true, 70},
    {1, 1, 8, 2, 24, 5, false, 40},
    {1, 130, 4, 4, 64, 5, true, 33},
};
const Case kBackwardCases[] = {
    {2, 1, 4, 4, 64},
    {2, 17, 4, 4, 24},
    {1, 130, 8, 2, 128},
    {1, 300, 8, 2, 64, 0, true},
    {2, 130, 4, 4, 128, 5},
    {1, 300, 4, 4, 24, 5, true},
    {1, 300, 8, 2, 128, 100, true},
    {1, 130, 12, 4, 32, 0, true},
};

std::vector<double> slopes_of(const Case& c) {
    return c.alibi ? ops::alibi_slopes(c.Hq) : std::vector<double>(static_cast<size_t>(c.Hq), 0.0);
}

int64_t first_visible(const Case& c, int64_t pos) {
    return c.window > 0 ? std::max<int64_t>(0, pos - c.window + 1) : 0;
}

struct ForwardRef {
    std::vector<double> out, lse;          // (B, T, Hq, Dh), (B, Hq, T)
    std::vector<double> out_tol, lse_tol;  // the bounds of the header comment
};

ForwardRef forward_reference(const Case& c, const Layout& lay, const std::vector<double>& x,
                             const Model& model = Model{}) {
    ForwardRef r;
    const size_t n_out = static_cast<size_t>(c.B * c.T * c.Hq * c.Dh),
                 n_lse = static_cast<size_t>(c.B * c.Hq * c.T);
    r.out.assign(n_out, 0.0);
    r.lse.assign(n_lse, 0.0);
    ops::AttentionOptions<double> opt{static_cast<double>(c.scale())};
    opt.window = c.window;
    opt.alibi = c.alibi;
    opt.q_offset = c.q_offset;
    ops::attention_forward<double>(r.out.data(), r.lse.data(), x.data() + lay.q_at, lay.ld_q,
                                   x.data() + lay.k_at, lay.ld_k, x.data() + lay.v_at, lay.ld_v, c.dims(),
                                   opt);

    r.out_tol.assign(n_out, 0.0);
    r.lse_tol.assign(n_lse, 0.0);
    const std::vector<double> slopes = slopes_of(c);
    const double scale = c.scale();
    std::vector<double> p, eps;
    for (int64_t b = 0; b < c.B; ++b) {
        for (int64_t h = 0; h < c.Hq; ++h) {
            const int64_t hk = h / c.group();
            for (int64_t i = 0; i < c.T; ++i) {
                const int64_t pos = c.q_offset + i, j0 = first_visible(c, pos), n = pos - j0 + 1;
                const double lse = r.lse[static_cast<size_t>((b * c.Hq + h) * c.T + i)];
                p.assign(static_cast<size_t>(n), 0.0);
                eps.assign(static_cast<size_t>(n), 0.0);
                double eps_bar = 0.0;
                for (int64_t j = 0; j < n; ++j) {
                    double dot = 0.0, mag = 0.0;
                    for (int64_t d = 0; d < c.Dh; ++d) {
                        const double t = x[lay.q(c, b, i, h, d)] * x[lay.k(c, b, j0 + j, hk, d)];
                        dot += t;
                        mag += std::abs(t);
                    }
                    const double dist = static_cast<double>(pos - j0 - j);
                    const double s = scale * dot - slopes[h] * dist, a = scale * mag + slopes[h] * dist;
                    p[j] = std::exp(s - lse);
                    eps[j] = model.eps(c.Dh, a, s - lse);
                    eps_bar += p[j] * eps[j];
                }
                for (int64_t d = 0; d < c.Dh; ++d) {
                    double weighted = 0.0, m = 0.0;
                    for (int64_t j = 0; j < n; ++j) {
                        const double pv = p[j] * std::abs(x[lay.v(c, b, j0 + j, hk, d)]);
                        weighted += pv * eps[j];
                        m += pv;
                    }
                    r.out_tol[static_cast<size_t>(((b * c.T + i) * c.Hq + h) * c.Dh + d)] =
                        weighted + m * (eps_bar + ((model.acc + 1) * n + 8) * kU + model.w);
                }
                r.lse_tol[static_cast<size_t>((b * c.Hq + h) * c.T + i)] =
                    eps_bar + (n + 8) * kU + (model.tc ? 4 : 2) * kU * std::abs(lse);
            }
        }
    }
    return r;
}

template <typename T>
void check_forward(const Case& c, Rng& rng) {
    const Model model = model_of<T>(c.Dh);
    SCOPED_TRACE(c.name() + (model.tc ? " (tensor cores)" : " (fp32 kernels)"));
    const Layout lay(c);
    const std::vector<double> x = random_values<T>(rng, lay.size, -2.0, 2.0);
    const ForwardRef ref = forward_reference(c, lay, x, model);

    DeviceBuffer<T> d_x(encode_all<T>(x)), d_out(std::vector<T>(ref.out.size()));
    DeviceBuffer<float> d_lse(std::vector<float>(ref.lse.size()));
    ops::cuda::AttentionOptions opt{c.scale()};
    opt.window = c.window;
    opt.alibi = c.alibi;
    opt.q_offset = c.q_offset;
    ops::cuda::attention_forward<T>(d_out.get(), d_lse.get(), d_x.get() + lay.q_at, lay.ld_q,
                                    d_x.get() + lay.k_at, lay.ld_k, d_x.get() + lay.v_at, lay.ld_v, c.dims(),
                                    opt);
    EXPECT_TRUE(all_close(decode_all(d_out.download()), ref.out, ref.out_tol, kOutRounding<T>)) << "out";
    EXPECT_TRUE(all_close(decode_all(d_lse.download()), ref.lse, ref.lse_tol, 0.0)) << "lse";
}

template <typename T>
void check_backward(const Case& c, Rng& rng) {
    const Model model = model_of<T>(c.Dh);
    SCOPED_TRACE(c.name() + (model.tc ? " (tensor cores)" : " (fp32 kernels)"));
    const Layout lay(c);
    const std::vector<double> x = random_values<T>(rng, lay.size, -2.0, 2.0);
    const ForwardRef fwd = forward_reference(c, lay, x);
    // The backward reads out in T and lse in fp32; the reference reads the same rounded values.
    std::vector<double> out = decode_all(encode_all<T>(fwd.out)), lse(fwd.lse.size());
    std::transform(fwd.lse.begin(), fwd.lse.end(), lse.begin(),
                   [](double v) { return static_cast<double>(static_cast<float>(v)); });
    const std::vector<double> dout = random_values<T>(rng, out.size(), -1.0, 1.0);
    const std::vector<double> grad0 = random_values<T>(rng, lay.size, -1.0, 1.0);  // gradients already there

    std::vector<double> grad = grad0;
    ops::AttentionOptions<double> ropt{static_cast<double>(c.scale())};
    ropt.window = c.window;
    ropt.alibi = c.alibi;
    ops::attention_backward<double>(grad.data() + lay.q_at, grad.data() + lay.k_at, grad.data() + lay.v_at,
                                    dout.data(), out.data(), lse.data(), x.data() + lay.q_at, lay.ld_q,
                                    x.data() + lay.k_at, lay.ld_k, x.data() + lay.v_at, lay.ld_v, c.dims(),
                                    ropt);

    // Bounds (header comment), in the layout of the gradient buffer.
    std::vector<double> tol(lay.size, 0.0);
    const std::vector<double> slopes = slopes_of(c);
    const double scale = c.scale();
    const int64_t N = c.group() * c.T;
    for (int64_t b = 0; b < c.B; ++b) {
        for (int64_t h = 0; h < c.Hq; ++h) {
            const int64_t hk = h / c.group();
            for (int64_t i = 0; i < c.T; ++i) {
                const int64_t j0 = first_visible(c, i), n = i - j0 + 1;
                const size_t row = static_cast<size_t>(((b * c.T + i) * c.Hq + h) * c.Dh);
                const double lse_i = lse[static_cast<size_t>((b * c.Hq + h) * c.T + i)];
                double delta = 0.0, delta_mag = 0.0;
                for (int64_t d = 0; d < c.Dh; ++d) {
                    delta += dout[row + d] * out[row + d];
                    delta_mag += std::abs(dout[row + d] * out[row + d]);
                }
                for (int64_t j = j0; j <= i; ++j) {
                    double dot = 0.0, mag = 0.0, dp = 0.0, dp_mag = 0.0;
                    for (int64_t d = 0; d < c.Dh; ++d) {
                        const double t = x[lay.q(c, b, i, h, d)] * x[lay.k(c, b, j, hk, d)];
                        const double u = dout[row + d] * x[lay.v(c, b, j, hk, d)];
                        dot += t;
                        mag += std::abs(t);
                        dp += u;
                        dp_mag += std::abs(u);
                    }
                    const double dist = static_cast<double>(i - j);
                    const double s = scale * dot - slopes[h] * dist, a = scale * mag + slopes[h] * dist;
                    const double p = std::exp(s - lse_i);
                    const double eps = model.eps(c.Dh, a, s - lse_i);
                    const double ds = p * (dp - delta);
                    const double dds = p * (std::abs(dp - delta) * (eps + 2 * kU) +
                                            c.Dh * kU * (model.acc * dp_mag + delta_mag));
                    const double dds_w = dds + model.w * (std::abs(ds) + dds);  // + ds rounded to bf16
                    for (int64_t d = 0; d < c.Dh; ++d) {
                        tol[lay.q(c, b, i, h, d)] += scale *
                                                     (dds_w + (model.acc * n + 2) * kU * std::abs(ds)) *
                                                     std::abs(x[lay.k(c, b, j, hk, d)]);
                        tol[lay.k(c, b, j, hk, d)] += scale *
                                                      (dds_w + (model.acc * N + 2) * kU * std::abs(ds)) *
                                                      std::abs(x[lay.q(c, b, i, h, d)]);
                        tol[lay.v(c, b, j, hk, d)] += p * std::abs(dout[row + d]) *
                                                      (eps + (model.acc * N + 2) * kU + model.w * (1 + eps));
                    }
                }
            }
        }
    }
    for (size_t e = 0; e < tol.size(); ++e) tol[e] += kU * (std::abs(grad0[e]) + std::abs(grad[e]));

    DeviceBuffer<T> d_x(encode_all<T>(x)), d_grad(encode_all<T>(grad0)), d_dout(encode_all<T>(dout)),
        d_out(encode_all<T>(out));
    std::vector<float> lse_f(lse.begin(), lse.end());
    DeviceBuffer<float> d_lse(lse_f);
    ops::cuda::AttentionOptions opt{c.scale()};
    opt.window = c.window;
    opt.alibi = c.alibi;
    ops::cuda::attention_backward<T>(d_grad.get() + lay.q_at, d_grad.get() + lay.k_at,
                                     d_grad.get() + lay.v_at, d_dout.get(), d_out.get(), d_lse.get(),
                                     d_x.get() + lay.q_at, lay.ld_q, d_x.get() + lay.k_at, lay.ld_k,
                                     d_x.get() + lay.v_at, lay.ld_v, c.dims(), opt);
    // The whole buffer: dq, dk and dv in their slices, the pads untouched.
    EXPECT_TRUE(all_close(decode_all(d_grad.download()), grad, tol, kOutRounding<T>));

    // Twice the same call gives the same bits: no atomics, a fixed summation order.
    DeviceBuffer<T> d_grad2(encode_all<T>(grad0));
    ops::cuda::attention_backward<T>(d_grad2.get() + lay.q_at, d_grad2.get() + lay.k_at,
                                     d_grad2.get() + lay.v_at, d_dout.get(), d_out.get(), d_lse.get(),
                                     d_x.get() + lay.q_at, lay.ld_q, d_x.get() + lay.k_at, lay.ld_k,
                                     d_x.get() + lay.v_at, lay.ld_v, c.dims(), opt);
    EXPECT_TRUE(d_grad2.download() == d_grad.download()) << "not deterministic";

    // accumulate = false over the old gradients: in dq's, dk's and dv's columns the bits of += onto
    // zeros, everywhere else (the pads) the old values.
    DeviceBuffer<T> d_zero(std::vector<T>(lay.size, T(0))), d_over(encode_all<T>(grad0));
    auto call = [&](T* g, const ops::cuda::AttentionOptions& o) {
        ops::cuda::attention_backward<T>(g + lay.q_at, g + lay.k_at, g + lay.v_at, d_dout.get(), d_out.get(),
                                         d_lse.get(), d_x.get() + lay.q_at, lay.ld_q, d_x.get() + lay.k_at,
                                         lay.ld_k, d_x.get() + lay.v_at, lay.ld_v, c.dims(), o);
    };
    call(d_zero.get(), opt);
    ops::cuda::AttentionOptions write = opt;
    write.accumulate = false;
    call(d_over.get(), write);
    std::vector<T> want = encode_all<T>(grad0);
    const std::vector<T> onto_zero = d_zero.download();
    for (int64_t b = 0; b < c.B; ++b)
        for (int64_t t = 0; t < c.T; ++t)
            for (int64_t d = 0; d < c.Dh; ++d) {
                for (int64_t h = 0; h < c.Hq; ++h)
                    want[lay.q(c, b, t, h, d)] = onto_zero[lay.q(c, b, t, h, d)];
                for (int64_t h = 0; h < c.Hkv; ++h) {
                    want[lay.k(c, b, t, h, d)] = onto_zero[lay.k(c, b, t, h, d)];
                    want[lay.v(c, b, t, h, d)] = onto_zero[lay.v(c, b, t, h, d)];
                }
            }
    EXPECT_TRUE(d_over.download() == want) << "accumulate = false";
}

#endif  // MSLM_HAVE_CUDA

TYPED_TEST(CudaAttention, ForwardMatchesCpu) {
#ifdef MSLM_HAVE_CUDA
    Rng rng(11);
    for (const Case& c : kForwardCases) check_forward<TypeParam>(c, rng);
#endif
}

TYPED_TEST(CudaAttention, BackwardMatchesCpuAndAccumulates) {
#ifdef MSLM_HAVE_CUDA
    Rng rng(12);
    for (const Case& c : kBackwardCases) check_backward<TypeParam>(c, rng);
#endif
}

#ifdef MSLM_HAVE_CUDA

// Shapes at the edges of the tensor-core tiles (64 or 128 queries a forward block, 64 in the
// backward, 16 or 32 rows a warp, 32 or 64 streamed rows): T = 1,
// 63, 65, 127, 129, 200, 257, 300, 1000; head dims 64 and 128; GQA 4:1 and 1:1 (and 8:2);
// windows inside one tile, across tiles and of 1 (the query alone); ALiBi; q_offset inside and
// beyond a tile; rows 16-byte aligned (cp.async) and not (plain loads). For f32 they run the fp32
// kernels.
const Case kTileForwardCases[] = {
    {1, 1, 4, 1, 64, 0, false, 0, true},       {2, 63, 4, 4, 64, 0, true, 0, true},
    {1, 65, 4, 1, 128, 0, false, 0, true},     {1, 257, 4, 1, 64, 100, true, 0, true},
    {1, 257, 4, 4, 128, 65, false, 0, false},  {1, 1000, 4, 1, 64, 0, true, 0, true},
    {1, 1000, 2, 2, 128, 300, false, 0, true}, {1, 65, 8, 2, 64, 1, false, 0, true},
    {1, 63, 4, 1, 64, 0, false, 65, true},     {1, 65, 4, 4, 128, 0, true, 200, true},
    {1, 257, 4, 1, 64, 64, false, 1, false},   {2, 1, 4, 4, 128, 0, true, 63, true},
    {1, 129, 4, 1, 64, 0, false, 0, true},     {1, 127, 4, 4, 128, 40, true, 0, true},
    {1, 300, 2, 1, 64, 0, false, 130, true},   {2, 200, 4, 2, 128, 129, false, 0, false},
};
const Case kTileBackwardCases[] = {
    {1, 1, 4, 1, 64, 0, false, 0, true},
    {2, 63, 4, 4, 64, 0, true, 0, true},
    {1, 65, 4, 1, 128, 0, false, 0, true},
    {1, 257, 4, 1, 64, 100, true, 0, true},
    {1, 257, 4, 4, 128, 65, false, 0, false},
    {1, 1000, 4, 1, 64, 0, true, 0, true},
    {1, 1000, 2, 2, 128, 300, false, 0, true},
    {1, 65, 8, 2, 64, 1, false, 0, true},
    // Head dim 128 on the wgmma backward (no window, no ALiBi): many key blocks and query tiles,
    // GQA 1:1 and 4:1, T off the 64-query and 128-key tiles.
    {1, 1000, 2, 2, 128, 0, false, 0, true},
    {2, 257, 8, 2, 128, 0, false, 0, true},
};

#endif  // MSLM_HAVE_CUDA

TYPED_TEST(CudaAttention, ForwardTileEdges) {
#ifdef MSLM_HAVE_CUDA
    Rng rng(15);
    for (const Case& c : kTileForwardCases) check_forward<TypeParam>(c, rng);
#endif
}

// The forward's two-m16-tiles-a-warp kernel (128 queries a block), forced: left to itself the
// forward takes one tile a warp at these small grids.
TYPED_TEST(CudaAttention, ForwardTileEdgesTwoRowTiles) {
#ifdef MSLM_HAVE_CUDA
    ScopedEnv rows{"MSLM_ATTN_FWD_ROWS", std::string("32")};
    Rng rng(19);
    for (const Case& c : kTileForwardCases) check_forward<TypeParam>(c, rng);
#endif
}

// The forward's key split for grids too small for the GPU (two m16 tiles a warp; head dim 64 takes
// it by default, so the T ≥ 257 cases above already split their long query tiles): forced off, and
// forced to one key tile an item (every query tile combines all its key tiles' items) and to three,
// at both head dims.
TYPED_TEST(CudaAttention, ForwardKeySplits) {
#ifdef MSLM_HAVE_CUDA
    ScopedEnv rows{"MSLM_ATTN_FWD_ROWS", std::string("32")};
    for (const char* tiles : {"0", "1", "3"}) {
        SCOPED_TRACE(std::string("MSLM_ATTN_SPLIT=") + tiles);
        ScopedEnv split{"MSLM_ATTN_SPLIT", std::string(tiles)};
        Rng rng(20);
        for (const Case& c : kTileForwardCases) check_forward<TypeParam>(c, rng);
    }
#endif
}

TYPED_TEST(CudaAttention, BackwardTileEdges) {
#ifdef MSLM_HAVE_CUDA
    Rng rng(16);
    for (const Case& c : kTileBackwardCases) check_backward<TypeParam>(c, rng);
#endif
}

// MSLM_ATTN_TC=0 and =1 both hold their own tolerances (for bf16, =0 is the fp32 kernels' tighter
// one); for f32 the switch changes nothing, bit for bit.
TYPED_TEST(CudaAttention, TensorCoreSwitch) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    const Case cases[] = {kTileBackwardCases[1], kTileBackwardCases[2], kTileBackwardCases[4],
                          kBackwardCases[3]};
    for (const char* value : {"0", "1"}) {
        ScopedEnv scoped{"MSLM_ATTN_TC", std::string(value)};
        EXPECT_EQ(tensor_cores<T>(64), kBf16<T> && value[0] == '1');
        EXPECT_FALSE(tensor_cores<T>(32));
        Rng rng(17);
        for (const Case& c : cases) {
            check_forward<T>(c, rng);
            check_backward<T>(c, rng);
        }
    }
    if constexpr (!kBf16<T>) {
        const Case& c = kTileForwardCases[3];
        const Layout lay(c);
        Rng rng(18);
        DeviceBuffer<T> d_x(encode_all<T>(random_values<T>(rng, lay.size, -2.0, 2.0)));
        std::vector<T> out[2];
        for (int on = 0; on < 2; ++on) {
            ScopedEnv scoped{"MSLM_ATTN_TC", std::string(on ? "1" : "0")};
            DeviceBuffer<T> d_out(std::vector<T>(static_cast<size_t>(c.B * c.T * c.Hq * c.Dh)));
            DeviceBuffer<float> d_lse(std::vector<float>(static_cast<size_t>(c.B * c.Hq * c.T)));
            ops::cuda::AttentionOptions opt{c.scale()};
            opt.window = c.window;
            opt.alibi = c.alibi;
            ops::cuda::attention_forward<T>(d_out.get(), d_lse.get(), d_x.get() + lay.q_at, lay.ld_q,
                                            d_x.get() + lay.k_at, lay.ld_k, d_x.get() + lay.v_at, lay.ld_v,
                                            c.dims(), opt);
            out[on] = d_out.download();
        }
        EXPECT_TRUE(out[0] == out[1]) << "f32 out depends on MSLM_ATTN_TC";
    }
#endif
}

TYPED_TEST(CudaAttention, BackwardSkipsNullGradients) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    Rng rng(13);
    const Case c{1, 70, 8, 2, 64, 0, true};
    const Layout lay(c);
    const std::vector<double> x = random_values<T>(rng, lay.size, -2.0, 2.0);
    const ForwardRef fwd = forward_reference(c, lay, x);
    const std::vector<double> dout = random_values<T>(rng, fwd.out.size(), -1.0, 1.0);
    const std::vector<double> grad0 = random_values<T>(rng, lay.size, -1.0, 1.0);
    std::vector<float> lse_f(fwd.lse.begin(), fwd.lse.end());
    DeviceBuffer<T> d_x(encode_all<T>(x)), d_dout(encode_all<T>(dout)), d_out(encode_all<T>(fwd.out));
    DeviceBuffer<float> d_lse(lse_f);
    ops::cuda::AttentionOptions opt{c.scale()};
    opt.alibi = true;
    // Only dk: dq and dv slices keep their bits; the full-gradient test covers the values.
    DeviceBuffer<T> d_grad(encode_all<T>(grad0));
    ops::cuda::attention_backward<T>(nullptr, d_grad.get() + lay.k_at, nullptr, d_dout.get(), d_out.get(),
                                     d_lse.get(), d_x.get() + lay.q_at, lay.ld_q, d_x.get() + lay.k_at,
                                     lay.ld_k, d_x.get() + lay.v_at, lay.ld_v, c.dims(), opt);
    const std::vector<T> got = d_grad.download(), before = encode_all<T>(grad0);
    size_t changed_elsewhere = 0, changed_dk = 0;
    for (int64_t t = 0; t < c.T; ++t) {
        for (int64_t d = 0; d < c.Hq * c.Dh; ++d)
            changed_elsewhere += got[lay.q(c, 0, t, 0, d)] != before[lay.q(c, 0, t, 0, d)];
        for (int64_t d = 0; d < c.Hkv * c.Dh; ++d) {
            changed_elsewhere += got[lay.v(c, 0, t, 0, d)] != before[lay.v(c, 0, t, 0, d)];
            changed_dk += got[lay.k(c, 0, t, 0, d)] != before[lay.k(c, 0, t, 0, d)];
        }
    }
    EXPECT_EQ(changed_elsewhere, 0u);
    EXPECT_GT(changed_dk, 0u);
#endif
}

// Decoding the token at position pos of each sequence against a ring-buffer cache of L rows equals
// row pos of the forward with the window min(window, L) (a cache of L rows is a window of L), and
// the CPU decode. Rows of the cache that hold no visible position are NaN, so reading one fails.
TYPED_TEST(CudaAttention, DecodeMatchesForwardAndCpuDecode) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    Rng rng(14);
    struct DecodeCase {
        Case seq;   // B = cache slots, T = longest sequence
        int64_t L;  // cache rows
    };
    const DecodeCase cases[] = {
        {{3, 41, 4, 4, 64}, 48},             // the cache holds every position
        {{3, 300, 8, 2, 128, 0, true}, 64},  // wraps: sees the last 64
        {{3, 130, 4, 4, 24, 5}, 8},          // window 5 inside a wrapping cache of 8
        {{3, 17, 8, 2, 64, 5, true}, 5},     // window = cache
        {{3, 130, 12, 4, 32, 0, true}, 200},
    };
    for (const DecodeCase& dc : cases) {
        const Case& s = dc.seq;
        SCOPED_TRACE(s.name() + " L" + std::to_string(dc.L));
        Case eff = s;  // what the decode sees
        eff.window = s.window > 0 ? std::min(s.window, dc.L) : dc.L;
        const Layout lay(eff);
        const std::vector<double> x = random_values<T>(rng, lay.size, -2.0, 2.0);
        const ForwardRef ref = forward_reference(eff, lay, x);

        // Query i decodes sequence seq_of[i] at position pos[i], from cache slot slot_of[i].
        const int64_t nq = s.B;
        const std::vector<int64_t> seq_of = {1, 2, 0}, slot_of = {2, 0, 1};
        const std::vector<int64_t> pos = {s.T - 1, std::min<int64_t>(s.T - 1, dc.L + 2),
                                          std::min<int64_t>(s.T - 1, 3)};
        const int64_t ld_q = s.Hq * s.Dh + 5, ld_kv = s.Hkv * s.Dh;
        std::vector<double> q(static_cast<size_t>(nq * ld_q), 0.0);
        std::vector<double> kc(static_cast<size_t>(s.B * dc.L * ld_kv),
                               std::numeric_limits<double>::quiet_NaN());
        std::vector<double> vc = kc;
        std::vector<double> want(static_cast<size_t>(nq * s.Hq * s.Dh)), want_tol(want.size());
        for (int64_t i = 0; i < nq; ++i) {
            const int64_t b = seq_of[i], slot = slot_of[i], p = pos[i];
            for (int64_t h = 0; h < s.Hq; ++h)
                for (int64_t d = 0; d < s.Dh; ++d) {
                    q[static_cast<size_t>(i * ld_q + h * s.Dh + d)] = x[lay.q(eff, b, p, h, d)];
                    const size_t at = static_cast<size_t>(((b * s.T + p) * s.Hq + h) * s.Dh + d);
                    want[static_cast<size_t>((i * s.Hq + h) * s.Dh + d)] = ref.out[at];
                    want_tol[static_cast<size_t>((i * s.Hq + h) * s.Dh + d)] = ref.out_tol[at];
                }
            for (int64_t pj = std::max<int64_t>(0, p - eff.window + 1); pj <= p; ++pj)
                for (int64_t h = 0; h < s.Hkv; ++h)
                    for (int64_t d = 0; d < s.Dh; ++d) {
                        const size_t at =
                            static_cast<size_t>((slot * dc.L + pj % dc.L) * ld_kv + h * s.Dh + d);
                        kc[at] = x[lay.k(eff, b, pj, h, d)];
                        vc[at] = x[lay.v(eff, b, pj, h, d)];
                    }
        }

        const ops::AttentionDims dims{nq, dc.L, s.Hq, s.Hkv, s.Dh};
        std::vector<double> cpu(want.size()), scores(static_cast<size_t>(nq * s.Hq * dc.L));
        ops::AttentionOptions<double> ropt{static_cast<double>(s.scale())};
        ropt.window = s.window;
        ropt.alibi = s.alibi;
        ops::attention_decode<double>(cpu.data(), scores.data(), q.data(), ld_q, kc.data(), vc.data(),
                                      slot_of.data(), pos.data(), dims, ropt);

        DeviceBuffer<T> d_q(encode_all<T>(q)), d_kc(encode_all<T>(kc)), d_vc(encode_all<T>(vc)),
            d_out(std::vector<T>(want.size()));
        DeviceBuffer<int64_t> d_slots(slot_of), d_pos(pos);
        ops::cuda::AttentionOptions opt{s.scale()};
        opt.window = s.window;
        opt.alibi = s.alibi;
        ops::cuda::attention_decode<T>(d_out.get(), d_q.get(), ld_q, d_kc.get(), d_vc.get(), d_slots.get(),
                                       d_pos.get(), dims, opt);
        const std::vector<double> got = decode_all(d_out.download());
        EXPECT_TRUE(all_close(got, want, want_tol, kOutRounding<T>)) << "vs forward";
        EXPECT_TRUE(all_close(got, cpu, want_tol, kOutRounding<T>)) << "vs CPU decode";
    }
#endif
}

TYPED_TEST(CudaAttention, EmptyIsANoOp) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    ops::cuda::AttentionOptions opt{0.125f};
    EXPECT_NO_THROW(ops::cuda::attention_forward<T>(nullptr, nullptr, nullptr, 256, nullptr, 64, nullptr, 64,
                                                    {0, 5, 4, 1, 64}, opt));
    EXPECT_NO_THROW(ops::cuda::attention_forward<T>(nullptr, nullptr, nullptr, 256, nullptr, 64, nullptr, 64,
                                                    {2, 0, 4, 1, 64}, opt));
    EXPECT_NO_THROW(ops::cuda::attention_backward<T>(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                                                     nullptr, 256, nullptr, 64, nullptr, 64, {2, 0, 4, 1, 64},
                                                     opt));
    EXPECT_NO_THROW(ops::cuda::attention_decode<T>(nullptr, nullptr, 256, nullptr, nullptr, nullptr, nullptr,
                                                   {0, 16, 4, 1, 64}, opt));
    EXPECT_NO_THROW(ops::cuda::rope_apply<T>(nullptr, 64, 0, 5, 1, 64, 64, 1e4, 0, false));
    EXPECT_NO_THROW(ops::cuda::rope_apply_at<T>(nullptr, 64, 3, 1, 64, 0, 1e4, nullptr, false));
#endif
}

// Host-side checks throw before any CUDA call, so they run on machines without a GPU too.
TEST(CudaAttentionShapeChecks, RejectWhatTheKernelsDoNotTake) {
#ifdef MSLM_HAVE_CUDA
    using T = uint16_t;
    ops::cuda::AttentionOptions opt{0.125f};
    auto throws_naming = [](auto&& call, const char* kernel) {
        try {
            call();
            ADD_FAILURE() << "no error, expected one from " << kernel;
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find(kernel), std::string::npos) << e.what();
        }
    };
    const auto fwd = [&](ops::AttentionDims d, int64_t ld_q, int64_t ld_kv, ops::cuda::AttentionOptions o) {
        return [=] {
            ops::cuda::attention_forward<T>(nullptr, nullptr, nullptr, ld_q, nullptr, ld_kv, nullptr, ld_kv,
                                            d, o);
        };
    };
    throws_naming(fwd({1, 4, 6, 4, 64}, 384, 256, opt), "attention_forward");     // 6 % 4 heads
    throws_naming(fwd({1, 4, 4, 4, 256}, 1024, 1024, opt), "attention_forward");  // head_dim 256
    throws_naming(fwd({1, 4, 4, 4, 64}, 255, 256, opt), "attention_forward");     // short q rows
    throws_naming(fwd({-1, 4, 4, 4, 64}, 256, 256, opt), "attention_forward");    // negative batch
    throws_naming(fwd({1, 4, 4, 4, 0}, 256, 256, opt), "attention_forward");      // head_dim 0
    auto bad = opt;
    bad.window = -1;
    throws_naming(fwd({1, 4, 4, 4, 64}, 256, 256, bad), "attention_forward");
    bad = opt;
    bad.q_offset = 3;
    throws_naming(
        [&] {
            ops::cuda::attention_backward<T>(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                                             256, nullptr, 256, nullptr, 256, {1, 4, 4, 4, 64}, bad);
        },
        "attention_backward");
    throws_naming(
        [&] {
            ops::cuda::attention_decode<T>(nullptr, nullptr, 256, nullptr, nullptr, nullptr, nullptr,
                                           {1, 0, 4, 4, 64}, opt);
        },
        "attention_decode");  // empty cache
    throws_naming([&] { ops::cuda::rope_apply<T>(nullptr, 64, 1, 4, 1, 64, 63, 1e4, 0, false); },
                  "rope_apply");
    throws_naming([&] { ops::cuda::rope_apply<T>(nullptr, 63, 1, 4, 1, 64, 64, 1e4, 0, false); },
                  "rope_apply");
    throws_naming([&] { ops::cuda::rope_apply_at<T>(nullptr, 64, 1, 1, 64, 66, 1e4, nullptr, false); },
                  "rope_apply_at");
#else
    GTEST_SKIP() << "built without CUDA";
#endif
}

#ifdef MSLM_HAVE_CUDA

struct RopeCase {
    int64_t B, T, H, Dh, rotary_dim, pos0;
    double theta;

    std::string name(bool inverse) const {
        std::string s = "B" + std::to_string(B);
        for (const auto& [key, value] :
             {std::pair{" T", T}, {" H", H}, {" Dh", Dh}, {" rotary", rotary_dim}, {" pos0 ", pos0}}) {
            s += key;
            s += std::to_string(value);
        }
        if (inverse) s += " inverse";
        return s;
    }
};
const RopeCase kRopeCases[] = {
    {2, 17, 4, 64, 64, 0, 10000.0},      // full rotary
    {1, 130, 3, 128, 64, 5, 500000.0},   // partial rotary: the other half passes through
    {2, 9, 2, 24, 24, 100000, 10000.0},  // odd head dim, positions near 10^5
    {1, 1, 8, 64, 0, 7, 10000.0},        // rotary_dim 0: nothing moves
};

// x rotated by the CPU reference in double, and the bound of the header comment.
void rope_reference(std::vector<double>& x, std::vector<double>& tol, const std::vector<double>& x0,
                    int64_t ld, int64_t N, int64_t Tn, const RopeCase& c, const std::vector<int64_t>* pos,
                    bool inverse) {
    x = x0;
    if (pos) {
        ops::rope_apply_at<double>(x.data(), ld, N, c.H, c.Dh, c.rotary_dim, c.theta, pos->data(), inverse);
    } else {
        ops::rope_apply<double>(x.data(), ld, N / Tn, Tn, c.H, c.Dh, c.rotary_dim, c.theta, c.pos0, inverse);
    }
    tol.assign(x.size(), 0.0);
    const int64_t half = c.rotary_dim / 2;
    for (int64_t r = 0; r < N; ++r) {
        const double p =
            pos ? static_cast<double>((*pos)[static_cast<size_t>(r)]) : static_cast<double>(c.pos0 + r % Tn);
        for (int64_t h = 0; h < c.H; ++h)
            for (int64_t i = 0; i < half; ++i) {
                const double angle =
                    p * std::pow(c.theta, -2.0 * static_cast<double>(i) / static_cast<double>(c.rotary_dim));
                const size_t a = static_cast<size_t>(r * ld + h * c.Dh + i),
                             b = a + static_cast<size_t>(half);
                const double mag = std::abs(x0[a] * std::cos(angle)) + std::abs(x0[b] * std::sin(angle)) +
                                   std::abs(x0[b] * std::cos(angle)) + std::abs(x0[a] * std::sin(angle));
                tol[a] = tol[b] = 4 * kU * mag;
            }
    }
}

#endif  // MSLM_HAVE_CUDA

TYPED_TEST(CudaRope, ForwardAndInverseMatchCpu) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    Rng rng(21);
    for (const RopeCase& c : kRopeCases) {
        for (bool inverse : {false, true}) {
            SCOPED_TRACE(c.name(inverse));
            const int64_t ld = c.H * c.Dh + 7, N = c.B * c.T;  // rows of a wider fused buffer
            const std::vector<double> x0 = random_values<T>(rng, static_cast<size_t>(N * ld), -3.0, 3.0);
            std::vector<double> want, tol;
            rope_reference(want, tol, x0, ld, N, c.T, c, nullptr, inverse);
            DeviceBuffer<T> d_x(encode_all<T>(x0));
            ops::cuda::rope_apply<T>(d_x.get(), ld, c.B, c.T, c.H, c.Dh, c.rotary_dim, c.theta, c.pos0,
                                     inverse);
            EXPECT_TRUE(all_close(decode_all(d_x.download()), want, tol, kOutRounding<T>));
        }
    }
#endif
}

TYPED_TEST(CudaRope, AtOwnPositionsMatchesCpu) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    Rng rng(22);
    for (const RopeCase& c : kRopeCases) {
        for (bool inverse : {false, true}) {
            SCOPED_TRACE(c.name(inverse));
            const int64_t ld = c.H * c.Dh + 1, N = c.B * c.T;
            std::vector<int64_t> pos(static_cast<size_t>(N));
            for (auto& p : pos) p = static_cast<int64_t>(rng.below(200000));
            const std::vector<double> x0 = random_values<T>(rng, static_cast<size_t>(N * ld), -3.0, 3.0);
            std::vector<double> want, tol;
            rope_reference(want, tol, x0, ld, N, 1, c, &pos, inverse);
            DeviceBuffer<T> d_x(encode_all<T>(x0));
            DeviceBuffer<int64_t> d_pos(pos);
            ops::cuda::rope_apply_at<T>(d_x.get(), ld, N, c.H, c.Dh, c.rotary_dim, c.theta, d_pos.get(),
                                        inverse);
            EXPECT_TRUE(all_close(decode_all(d_x.download()), want, tol, kOutRounding<T>));
        }
    }
#endif
}

}  // namespace
