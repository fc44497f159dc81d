// CUDA Mamba-2 SSD (ops/cuda/ssd.h) against the CPU reference in double (ops/ssd.h:
// ssd_forward_sequential, ssd_backward, on the decoded inputs: for bf16 the very bf16 values the
// kernels read). Every GPU test exists in every build and skips, saying why, without CUDA or a GPU;
// CudaSsdShapes needs only a CUDA build (its checks throw before any launch).
//
// Inputs follow the CPU tests (test_ops_ssm.cpp): x, B, C, h0 ~ N(0, 1), dt after softplus in
// [0.001, 0.5], A = −exp(A_log) in [−16, −1], D in [0.5, 1.5]; padded rows hold 1000, so a kernel
// that reads padding fails loudly.
//
// Tolerances, with u = 2^-24 the fp32 unit roundoff. A sum of n rounded fp32 terms errs by at most
// n·u·Σ|terms| (recursive summation); `scale` below is Σ|terms| for each output, computed by the
// reference itself on |x|, |B|, |C|, |D|, |h0| (every decay and dt is positive already), so the bound
// holds without knowing how much the terms cancel.
// - Forward (y, h_last, chunk states). The longest fp32 chain of an output is C·Bᵀ (N terms), the
//   intra-chunk sum (≤ Q), the chunk's own state (≤ Q), the state carried through n_chunks chunks
//   (one multiply-add each) and C·S (N terms): (2N + 2Q + 2·n_chunks)·u. Each a_t = dt·A is off
//   by ≤ 11u relative (softplus = log1pf(expf) ≤ 3 ulp, A = −expf(A_log) ≤ 2 ulp, the product),
//   and the fp64 segment sum z = Σ a_t is rounded once to fp32, so the decay e^-z errs by ≤ 12u·z
//   relative; terms decayed below e^-24 ≈ 4e-11 do not register at fp32 resolution, so that is
//   ≤ 12·24 u = 288u. The products and the expf of each factor (≤ 2 ulp) add a few u more: 512u
//   in all for the constant part.
// - Backward. The same chains plus P (dY·X̃ᵀ and friends) per element; the gradients mix terms of
//   both signs (dcum adds row sums and subtracts column sums of dY·X̃ᵀ ∘ M), so rather than a
//   per-element Σ|terms| we measure against max |gradient| of each tensor and allow 8× the chain
//   length for that cancellation. dA_log, ddt_bias and dD also sum over every token: + B·T.
// - Decode. T single steps: each y is an N-term dot (N·u), the state takes two roundings per step
//   (≤ 4u·T over T steps relative to its magnitude) and the same 512u constant.
// - bf16 outputs (y, and gradients stored as bf16 after the +=) round once more: 2^-8·|result|;
//   fp32 gradients round the += once: 2^-24·|result|.
// - Tensor cores (bf16 storage unless MSLM_SSD_TC=0: every product of the forward and the backward;
//   ssd.h). Three changes to the model above:
//   (i) Operands rounded once to bf16 (forward output only). The bf16 inputs pass exactly; the
//   decayed score M[t, s]·dt_s (formed in fp32) and the state S_in of y's two products are rounded
//   once to bf16, a relative error ≤ 2^-8 (bf16 keeps 8 significant bits, so its unit roundoff is
//   2^-8, not 2^-9) on each product term of y that they enter. Every such term is one of the terms
//   whose magnitudes sum to y's scale (|C·Bᵀ| ≤ |C|·|B|ᵀ, |S_in| ≤ the state's own Σ|terms|), so y
//   errs by at most 2^-8·scale more. The cross term with the fp32 errors, 2^-8·(2N + 2Q + …)·u, is a
//   few u, inside the 512u constant.
//   (ii) Operands split into hi + lo bf16 (the chunk states' decayed x, every fp32-formed operand of
//   the backward: M, dCB, S_in, dS, exp(cum)·dY): hi + lo is the fp32 value to within 2^-16 = 256u
//   of it, so each such product stage adds 256u relative to its terms' magnitudes. Factors that
//   could be taken out of a product (dt_s, exp(cum_t), decay_s) are applied to the fp32 result
//   instead, costing the usual one rounding. Chains: the chunk states and h_last pass one split
//   stage (the chunk's own state); a backward chain at most five (the forward's chunk state S_in,
//   the chunk-state pass-back dS, then V = B·dSᵀ or Z = C·S_inᵀ, Mᵀ·dY, and dCB·B for dB, dC).
//   (iii) Accumulation. The products of bf16 pairs are exact, but a tensor core adds them with
//   truncation after aligning each block of addends to the largest (Fasi, Higham, Mikaitis and
//   Pranesh, "Numerical behavior of NVIDIA tensor cores", PeerJ CS 2021): each term may err by 2u of
//   the largest magnitude in its block instead of u, and the accumulator counts as an addend of
//   every block, so ≤ 4u per term is taken: a K-term product costs 4K·u instead of K·u, 3K·u more.
//   For y, C·Bᵀ (N), the intra-chunk sum (≤ Q), C·S_inᵀ (N) and the chunk state (≤ Q): 3(2N + 2Q)·u;
//   for the chunk states 3Q·u; the backward's chains hold the products over N, Q and P (twice
//   each in the model above): 3(2N + 2Q + 2P)·u, under its 8× cancellation factor like the rest.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
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
#include "ops/ssd.h"
#include "test_util.h"

#ifdef MSLM_HAVE_CUDA
#include "ops/cuda/ssd.h"
#endif

namespace {

using namespace mslm;

template <typename T>
class CudaSsd : public test::CudaTest {};

TYPED_TEST_SUITE(CudaSsd, test::Dtypes, test::DtypeNames);

#ifdef MSLM_HAVE_CUDA

// test::all_close is not taken: this file's all_close also allows one fp32 rounding of the result
// and reports the worst miss.
using test::decode;
using test::decode_all;
using test::DeviceBuffer;
using test::encode;
using test::kBf16;
using test::kU;
using test::random_values;

double inv_softplus(double y) {
    return y + std::log(-std::expm1(-y));
}

// The kernels take null for an absent optional input or gradient (an empty host vector here) and
// for the tensors of an empty sequence.
template <typename T>
T* or_null(const DeviceBuffer<T>& b) {
    return b.size() > 0 ? b.get() : nullptr;
}

struct Case {
    int64_t B, T, H, P, G, N, Q, pad;
    bool bias, D, h0;
};

std::string describe(const Case& c) {
    return "B=" + std::to_string(c.B) + " T=" + std::to_string(c.T) + " H=" + std::to_string(c.H) +
           " P=" + std::to_string(c.P) + " G=" + std::to_string(c.G) + " N=" + std::to_string(c.N) +
           " Q=" + std::to_string(c.Q) + " pad=" + std::to_string(c.pad) + " bias=" + std::to_string(c.bias) +
           " D=" + std::to_string(c.D) + " h0=" + std::to_string(c.h0);
}

int64_t chunk_len(const Case& c) {
    return std::min(c.Q, std::max<int64_t>(c.T, 1));
}
int64_t n_chunks(const Case& c) {
    return (c.T + chunk_len(c) - 1) / chunk_len(c);
}
// Whether the kernels take the tensor-core products (ssd.h): bf16 storage, unless MSLM_SSD_TC=0.
template <typename T>
bool tensor_cores() {
    const char* v = std::getenv("MSLM_SSD_TC");
    return kBf16<T> && (v == nullptr || std::string_view(v) != "0");
}

// Sets (or with nullopt clears) MSLM_SSD_TC for a scope, restoring what was there.
struct ScopedTcSwitch : test::ScopedEnv {
    explicit ScopedTcSwitch(std::optional<std::string> value)
        : test::ScopedEnv("MSLM_SSD_TC", std::move(value)) {}
};

// h_last and the chunk states with the fp32 products.
double forward_rel(const Case& c) {
    return kU * double(2 * c.N + 2 * chunk_len(c) + 2 * n_chunks(c) + 512);
}
// h_last and the chunk states: on tensor cores, + 256u for the split decayed x and 3Q·u for the
// truncating accumulation of the chunk's own state (see the top of the file).
double states_rel(const Case& c, bool tc) {
    return forward_rel(c) + (tc ? kU * double(256 + 3 * chunk_len(c)) : 0.0);
}
// y: on tensor cores, the states' terms, + 2^-8 for the operands rounded to bf16 and 3(2N + Q)·u
// for the truncating accumulation of y's own products.
double y_rel(const Case& c, bool tc) {
    return states_rel(c, tc) + (tc ? 0x1p-8 + kU * double(3 * (2 * c.N + chunk_len(c))) : 0.0);
}
// On tensor cores: five split stages (5·256u) and the truncating accumulation 3(2N + 2Q + 2P)·u.
double backward_rel(const Case& c, bool sums_tokens, bool tc) {
    const int64_t tc_terms = tc ? 5 * 256 + 3 * (2 * c.N + 2 * chunk_len(c) + 2 * c.P) : 0;
    return 8 * kU *
           double(2 * c.N + 2 * chunk_len(c) + 2 * c.P + 2 * n_chunks(c) + 512 +
                  (sums_tokens ? c.B * c.T : 0) + tc_terms);
}

const Case kCases[] = {
    {2, 11, 4, 3, 2, 5, 4, 2, true, true, true},        // T not a multiple of Q, G = 2, strided
    {1, 7, 3, 1, 1, 16, 16, 0, false, false, false},    // Q > T, 3 heads per group, P = 1, bare
    {2, 9, 6, 3, 2, 16, 3, 1, true, false, true},       // T a multiple of Q, 3 heads per group
    {2, 5, 2, 3, 2, 5, 1, 1, true, true, true},         // Q = 1: every token its own chunk
    {1, 80, 2, 5, 2, 16, 33, 1, true, true, true},      // 1 head per group, Q = 33 straddles tiles
    {2, 100, 2, 40, 2, 20, 64, 1, true, true, false},   // chunks of 64 and 36, P = 40 straddles tiles
    {1, 70, 2, 64, 1, 128, 32, 3, true, true, true},    // Mamba-2 head_dim and d_state, 3 chunks
    {1, 50, 3, 64, 1, 128, 256, 0, false, true, true},  // Q > T at full width
};

// Shapes against the tensor cores' 64 × 64 output tiles and 32-deep k steps, forward and backward:
// Mamba-2's chunk sizes 64 and 256 with odd T (a short last chunk), head_dim 32 (half a tile), 64
// and 128 (two tiles), d_state 16 (half a k step), 32, 64 and 128, one and two groups.
const Case kTileCases[] = {
    {1, 301, 4, 64, 2, 16, 64, 1, true, true, true},     // chunks 4 × 64 + 45, N = 16, 2 heads per group
    {2, 263, 2, 32, 1, 64, 256, 0, true, true, true},    // chunks 256 + 7, P = 32
    {1, 517, 2, 64, 2, 128, 256, 2, false, true, true},  // chunks 2 × 256 + 5, 1 head per group
    {2, 129, 3, 32, 1, 128, 64, 1, true, false, false},  // chunks 64, 64, 1; 3 heads per group
    {1, 77, 2, 64, 1, 64, 256, 0, true, true, true},     // Q > T: one chunk of 77, straddling tiles
    {1, 131, 2, 128, 1, 32, 64, 1, true, true, true},    // chunks 64, 64, 3; P = 128: two p tiles
};

// Inputs as stored (T), the rows of x, dt, B, C padded by `pad` (and more) values of 1000.
template <typename T>
struct Data {
    Case c{};
    ops::SsdDims dims{};
    int64_t ld_x = 0, ld_dt = 0, ld_B = 0, ld_C = 0;
    std::vector<T> x, dt, dt_bias, A_log, Bm, Cm, D;  // empty = absent
    std::vector<float> h0;                            // (B, H, P, N) fp32, empty = absent
};

template <typename T>
std::vector<T> padded_rows(Rng& rng, int64_t rows, int64_t width, int64_t ld) {
    std::vector<T> v(rows * ld, encode<T>(1000.0));
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < width; ++j) v[r * ld + j] = encode<T>(rng.normal());
    return v;
}

template <typename T>
Data<T> make_data(const Case& c, uint64_t seed) {
    Rng rng(seed);
    Data<T> d;
    d.c = c;
    d.dims = {c.B, c.T, c.H, c.P, c.G, c.N, c.Q};
    const int64_t rows = c.B * c.T;
    d.ld_x = c.H * c.P + c.pad, d.ld_dt = c.H + 2 * c.pad, d.ld_B = c.G * c.N + c.pad,
    d.ld_C = c.G * c.N + 3 * c.pad;
    d.x = padded_rows<T>(rng, rows, c.H * c.P, d.ld_x);
    std::vector<double> bias(c.H, 0.0);
    if (c.bias) {
        for (auto& b : bias) b = inv_softplus(std::exp(rng.uniform(std::log(0.001), std::log(0.1))));
        for (double b : bias) d.dt_bias.push_back(encode<T>(b));
    }
    d.dt.assign(rows * d.ld_dt, encode<T>(1000.0));
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t h = 0; h < c.H; ++h)
            d.dt[r * d.ld_dt + h] =
                encode<T>(inv_softplus(std::exp(rng.uniform(std::log(0.001), std::log(0.5)))) - bias[h]);
    for (int64_t h = 0; h < c.H; ++h) d.A_log.push_back(encode<T>(std::log(rng.uniform(1.0, 16.0))));
    d.Bm = padded_rows<T>(rng, rows, c.G * c.N, d.ld_B);
    d.Cm = padded_rows<T>(rng, rows, c.G * c.N, d.ld_C);
    if (c.D)
        for (int64_t h = 0; h < c.H; ++h) d.D.push_back(encode<T>(rng.uniform(0.5, 1.5)));
    if (c.h0)
        for (int64_t i = 0; i < c.B * c.H * c.P * c.N; ++i) d.h0.push_back(static_cast<float>(rng.normal()));
    return d;
}

// The decoded inputs in double for the CPU reference, restricted to the first `len` tokens of each
// sequence; with `magnitudes`, |x|, |B|, |C|, |D| and |h0|, whose outputs are the Σ|terms| scales.
struct Reference {
    ops::SsdDims dims{};
    int64_t ld_x = 0, ld_dt = 0, ld_B = 0, ld_C = 0;
    std::vector<double> x, dt, dt_bias, A_log, Bm, Cm, D, h0;

    ops::SsdInputs<double> inputs() const {
        return {.x = x.data(),
                .ld_x = ld_x,
                .dt = dt.data(),
                .ld_dt = ld_dt,
                .dt_bias = dt_bias.empty() ? nullptr : dt_bias.data(),
                .A_log = A_log.data(),
                .Bm = Bm.data(),
                .ld_B = ld_B,
                .Cm = Cm.data(),
                .ld_C = ld_C,
                .D = D.empty() ? nullptr : D.data()};
    }
    const double* h0_ptr() const { return h0.empty() ? nullptr : h0.data(); }
    // y (B, len, H, P) and h_last (B, H, P, N) by the sequential recurrence.
    std::vector<double> forward(std::vector<double>* h_last) const {
        std::vector<double> y(dims.batch * dims.seqlen * dims.n_heads * dims.head_dim);
        h_last->assign(dims.batch * dims.n_heads * dims.head_dim * dims.d_state, 0.0);
        ops::ssd_forward_sequential<double>(y.data(), h_last->data(), inputs(), h0_ptr(), dims);
        return y;
    }
};

template <typename T>
Reference reference(const Data<T>& d, bool magnitudes, int64_t len) {
    const Case& c = d.c;
    auto rows = [&](const std::vector<T>& v, int64_t ld, bool absolute) {
        std::vector<double> out(c.B * len * ld);
        for (int64_t b = 0; b < c.B; ++b)
            for (int64_t t = 0; t < len; ++t)
                for (int64_t j = 0; j < ld; ++j) {
                    const double value = decode(v[(b * c.T + t) * ld + j]);
                    out[(b * len + t) * ld + j] = absolute ? std::abs(value) : value;
                }
        return out;
    };
    auto values = [&](const std::vector<T>& v, bool absolute) {
        std::vector<double> out = decode_all(v);
        if (absolute)
            for (double& x : out) x = std::abs(x);
        return out;
    };
    Reference r;
    r.dims = d.dims;
    r.dims.seqlen = len;
    r.ld_x = d.ld_x, r.ld_dt = d.ld_dt, r.ld_B = d.ld_B, r.ld_C = d.ld_C;
    r.x = rows(d.x, d.ld_x, magnitudes);
    r.dt = rows(d.dt, d.ld_dt, false);
    r.dt_bias = values(d.dt_bias, false);
    r.A_log = values(d.A_log, false);
    r.Bm = rows(d.Bm, d.ld_B, magnitudes);
    r.Cm = rows(d.Cm, d.ld_C, magnitudes);
    r.D = values(d.D, magnitudes);
    for (float v : d.h0) r.h0.push_back(magnitudes ? std::abs(double(v)) : double(v));
    return r;
}

template <typename T>
struct DeviceData {
    explicit DeviceData(const Data<T>& d)
        : d_(d), x(d.x), dt(d.dt), dt_bias(d.dt_bias), A_log(d.A_log), Bm(d.Bm), Cm(d.Cm), D(d.D), h0(d.h0) {}
    ops::cuda::SsdInputs<T> inputs() const {
        return {.x = or_null(x),
                .ld_x = d_.ld_x,
                .dt = or_null(dt),
                .ld_dt = d_.ld_dt,
                .dt_bias = or_null(dt_bias),
                .A_log = or_null(A_log),
                .Bm = or_null(Bm),
                .ld_B = d_.ld_B,
                .Cm = or_null(Cm),
                .ld_C = d_.ld_C,
                .D = or_null(D)};
    }
    const Data<T>& d_;
    DeviceBuffer<T> x, dt, dt_bias, A_log, Bm, Cm, D;
    DeviceBuffer<float> h0;
};

// |got − ref| ≤ rel · scale + (2^-8 for bf16, else 2^-24) · |ref|; reports the worst misses.
template <typename T>
::testing::AssertionResult all_close(const std::vector<T>& got, const std::vector<double>& ref,
                                     const std::vector<double>& scale, double rel) {
    if (got.size() != ref.size() || got.size() != scale.size())
        return ::testing::AssertionFailure()
               << "size " << got.size() << " vs " << ref.size() << ", " << scale.size();
    size_t misses = 0;
    double worst = 0.0;
    std::string first;
    for (size_t i = 0; i < got.size(); ++i) {
        const double g = decode(got[i]);
        const double tol = rel * scale[i] + (kBf16<T> ? 0x1p-8 : kU) * std::abs(ref[i]);
        const double err = std::abs(g - ref[i]);
        if (err <= tol) continue;  // false for NaN
        worst = std::max(worst, std::isnan(err) ? INFINITY : err / std::max(tol, 1e-300));
        if (++misses <= 5) {
            first += "\n  [" + std::to_string(i) + "] got " + std::to_string(g) + ", want " +
                     std::to_string(ref[i]) + " ± " + std::to_string(tol);
        }
    }
    if (misses == 0) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << misses << " of " << got.size() << " outside tolerance (worst "
                                         << worst << "× the tolerance):" << first;
}

// Gradient check: got = g0 + delta, to within rel · max|delta| of the tensor.
template <typename T>
::testing::AssertionResult grad_close(const std::vector<T>& got, const std::vector<T>& g0,
                                      const std::vector<double>& delta, double rel) {
    double peak = 0.0;
    for (double v : delta) peak = std::max(peak, std::abs(v));
    std::vector<double> ref(delta.size()), scale(delta.size(), peak);
    for (size_t i = 0; i < delta.size(); ++i) ref[i] = decode(g0[i]) + delta[i];
    return all_close(got, ref, scale, rel);
}

template <typename T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
    return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

// y, h_last and the chunk states of the chunked forward against the sequential recurrence.
template <typename T>
void check_forward(const Case& c, uint64_t seed) {
    SCOPED_TRACE(describe(c) + (tensor_cores<T>() ? " (tensor cores)" : " (fp32 products)"));
    const Data<T> d = make_data<T>(c, seed);
    std::vector<double> h_ref, h_scale;
    const std::vector<double> y_ref = reference(d, false, c.T).forward(&h_ref);
    const std::vector<double> y_scale = reference(d, true, c.T).forward(&h_scale);
    const double rel = states_rel(c, tensor_cores<T>());

    DeviceData<T> dev(d);
    DeviceBuffer<T> y(std::vector<T>(y_ref.size()));
    DeviceBuffer<float> h_last(std::vector<float>(h_ref.size()));
    DeviceBuffer<float> states(std::vector<float>(ops::cuda::ssd_chunk_states_numel(d.dims)));
    ops::cuda::ssd_forward(y.get(), h_last.get(), dev.inputs(), or_null(dev.h0), d.dims, states.get());
    const std::vector<T> y_got = y.download();
    EXPECT_TRUE(all_close(y_got, y_ref, y_scale, y_rel(c, tensor_cores<T>()))) << "y";
    EXPECT_TRUE(all_close(h_last.download(), h_ref, h_scale, rel)) << "h_last";

    // Entry c of the chunk states is the state after the first c·Q tokens.
    const int64_t Q = chunk_len(c), nc = n_chunks(c), HPN = c.H * c.P * c.N;
    const std::vector<float> got_states = states.download();
    for (int64_t ci = 0; ci < nc; ++ci) {
        std::vector<double> s_ref, s_scale;
        reference(d, false, ci * Q).forward(&s_ref);
        reference(d, true, ci * Q).forward(&s_scale);
        std::vector<float> got(c.B * HPN);
        for (int64_t b = 0; b < c.B; ++b)
            std::copy_n(got_states.begin() + (b * nc + ci) * HPN, HPN, got.begin() + b * HPN);
        EXPECT_TRUE(all_close(got, s_ref, s_scale, rel)) << "chunk state " << ci;
    }

    // Without the optional outputs, with a caller's workspace: the same bits.
    DeviceBuffer<char> workspace(std::vector<char>(ops::cuda::ssd_forward_workspace_bytes(d.dims)));
    DeviceBuffer<T> y2(std::vector<T>(y_ref.size()));
    ops::cuda::ssd_forward(y2.get(), static_cast<float*>(nullptr), dev.inputs(), or_null(dev.h0), d.dims,
                           nullptr, or_null(workspace));
    EXPECT_TRUE(same_bits(y2.download(), y_got)) << "y without h_last / chunk states";
}

// Every gradient against ops::ssd_backward in double, accumulated into gradients already holding
// values; deterministic, and the same from saved and from recomputed chunk states.
template <typename T>
void check_backward(const Case& c, uint64_t seed) {
    const bool tc = tensor_cores<T>();
    SCOPED_TRACE(describe(c) + (tc ? " (tensor cores)" : " (fp32 products)"));
    const Data<T> d = make_data<T>(c, seed);
    Rng rng(seed * 7);
    const std::vector<T> dy = random_values<T>(rng, c.B * c.T * c.H * c.P);

    // Reference gradients (zero-initialised, so they are the deltas).
    const Reference r = reference(d, false, c.T);
    std::vector<double> dx(d.x.size()), ddt(d.dt.size()), dbias(d.dt_bias.size()), dA(d.A_log.size()),
        dB(d.Bm.size()), dC(d.Cm.size()), dD(d.D.size());
    const std::vector<double> dy_d = decode_all(dy);
    auto opt = [](std::vector<double>& v) { return v.empty() ? nullptr : v.data(); };
    ops::ssd_backward<double>({dx.data(), ddt.data(), opt(dbias), dA.data(), dB.data(), dC.data(), opt(dD)},
                              dy_d.data(), r.inputs(), r.h0_ptr(), r.dims);

    // The GPU accumulates into gradients already holding values.
    const std::vector<T> gx = random_values<T>(rng, dx.size()), gdt = random_values<T>(rng, ddt.size()),
                         gbias = random_values<T>(rng, dbias.size()), gA = random_values<T>(rng, dA.size()),
                         gB = random_values<T>(rng, dB.size()), gC = random_values<T>(rng, dC.size()),
                         gD = random_values<T>(rng, dD.size());
    DeviceData<T> dev(d);
    DeviceBuffer<T> d_dy(dy), d_y(std::vector<T>(dy.size()));
    DeviceBuffer<float> states(std::vector<float>(ops::cuda::ssd_chunk_states_numel(d.dims)));
    ops::cuda::ssd_forward(d_y.get(), static_cast<float*>(nullptr), dev.inputs(), or_null(dev.h0), d.dims,
                           states.get());

    std::vector<std::vector<T>> runs[2];
    for (int run = 0; run < 2; ++run) {
        DeviceBuffer<T> a(gx), b(gdt), e(gbias), f(gA), g(gB), h(gC), k(gD);
        const ops::SsdGrads<T> grads{or_null(a), or_null(b), or_null(e), or_null(f),
                                     or_null(g), or_null(h), or_null(k)};
        // Run 0 from the saved chunk states, run 1 recomputing them.
        ops::cuda::ssd_backward(grads, d_dy.get(), dev.inputs(), or_null(dev.h0),
                                run == 0 ? states.get() : nullptr, d.dims);
        runs[run] = {a.download(), b.download(), e.download(), f.download(),
                     g.download(), h.download(), k.download()};
    }
    const auto& got = runs[0];
    EXPECT_TRUE(grad_close(got[0], gx, dx, backward_rel(c, false, tc))) << "dx";
    EXPECT_TRUE(grad_close(got[1], gdt, ddt, backward_rel(c, false, tc))) << "ddt";
    EXPECT_TRUE(grad_close(got[2], gbias, dbias, backward_rel(c, true, tc))) << "ddt_bias";
    EXPECT_TRUE(grad_close(got[3], gA, dA, backward_rel(c, true, tc))) << "dA_log";
    EXPECT_TRUE(grad_close(got[4], gB, dB, backward_rel(c, false, tc))) << "dB";
    EXPECT_TRUE(grad_close(got[5], gC, dC, backward_rel(c, false, tc))) << "dC";
    EXPECT_TRUE(grad_close(got[6], gD, dD, backward_rel(c, true, tc))) << "dD";
    // Deterministic, and the recomputed chunk states are the saved ones bit for bit.
    for (size_t i = 0; i < got.size(); ++i) EXPECT_TRUE(same_bits(runs[1][i], got[i])) << "gradient " << i;
}

#endif  // MSLM_HAVE_CUDA

TYPED_TEST(CudaSsd, ForwardMatchesSequential) {
#ifdef MSLM_HAVE_CUDA
    uint64_t seed = 100;
    for (const Case& c : kCases) check_forward<TypeParam>(c, seed++);
#endif
}

TYPED_TEST(CudaSsd, BackwardMatchesReference) {
#ifdef MSLM_HAVE_CUDA
    uint64_t seed = 200;
    for (const Case& c : kCases) check_backward<TypeParam>(c, seed++);
#endif
}

// Shapes that are not multiples of the tensor-core tiles, at Mamba-2's chunk sizes (for f32 they
// exercise the fp32 kernels at the same shapes).
TYPED_TEST(CudaSsd, TileEdgeShapes) {
#ifdef MSLM_HAVE_CUDA
    uint64_t seed = 600;
    for (const Case& c : kTileCases) {
        check_forward<TypeParam>(c, seed);
        check_backward<TypeParam>(c, seed++);
    }
#endif
}

// MSLM_SSD_TC=0 and =1 both hold their own tolerances (for bf16, =0 is the fp32 products' tighter
// one); for f32 the switch changes nothing, bit for bit.
TYPED_TEST(CudaSsd, TensorCoreSwitch) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    const Case cases[] = {kCases[4], kCases[6], kTileCases[0], kTileCases[1]};
    for (const char* value : {"0", "1"}) {
        ScopedTcSwitch scoped{std::string(value)};
        EXPECT_EQ(tensor_cores<T>(), kBf16<T> && value[0] == '1');
        uint64_t seed = 700;
        for (const Case& c : cases) {
            check_forward<T>(c, seed);
            check_backward<T>(c, seed++);
        }
    }
    if constexpr (!kBf16<T>) {
        const Case& c = kTileCases[1];
        const Data<T> d = make_data<T>(c, 800);
        DeviceData<T> dev(d);
        std::vector<T> y[2];
        for (int on = 0; on < 2; ++on) {
            ScopedTcSwitch scoped{std::string(on ? "1" : "0")};
            DeviceBuffer<T> out(std::vector<T>(c.B * c.T * c.H * c.P));
            ops::cuda::ssd_forward(out.get(), static_cast<float*>(nullptr), dev.inputs(), or_null(dev.h0),
                                   d.dims);
            y[on] = out.download();
        }
        EXPECT_TRUE(same_bits(y[0], y[1])) << "f32 y depends on MSLM_SSD_TC";
    }
#endif
}

#ifdef MSLM_HAVE_CUDA
// For every case of both tables (bf16, tensor cores on): `outputs(c, d, dev, seed)` once with the
// environment variable `var` = a and once with `var` = b, and the same bits expected in every output —
// a kernel variant against the one whose bits it must reproduce.
template <class Outputs>
void expect_same_bits_under(const char* var, const char* a, const char* b, uint64_t seed,
                            const Outputs& outputs) {
    using T = uint16_t;
    ScopedTcSwitch tc{std::nullopt};
    std::vector<Case> cases(std::begin(kCases), std::end(kCases));
    cases.insert(cases.end(), std::begin(kTileCases), std::end(kTileCases));
    for (const Case& c : cases) {
        SCOPED_TRACE(describe(c));
        const Data<T> d = make_data<T>(c, seed);
        DeviceData<T> dev(d);
        std::vector<std::vector<T>> got[2];
        for (int v = 0; v < 2; ++v) {
            test::ScopedEnv scoped(var, std::string(v ? b : a));
            got[v] = outputs(c, d, dev, seed);
        }
        ++seed;
        for (size_t i = 0; i < got[0].size(); ++i)
            EXPECT_TRUE(same_bits(got[1][i], got[0][i]))
                << var << "=" << b << ": output " << i << " differs from " << var << "=" << a << "'s";
    }
}
#endif

// The output kernel with its scores formed in registers, every score in the staged kernel's form
// (MSLM_SSD_OUT_REG=exact), against the staged kernel (=0): the same products in the same order, so
// the same y bits, at every shape of both tables (odd chunk lengths take its scalar C·Bᵀ loads,
// strided rows its element-wise staging). The default, factored scores below the diagonal tile,
// holds the reference's tolerance in ForwardMatchesSequential and TileEdgeShapes.
TEST(CudaSsdOutput, RegisterScoresGiveTheStagedKernelsBits) {
#ifdef MSLM_HAVE_CUDA
    if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU: " << cuda_device_summary();
    using T = uint16_t;
    expect_same_bits_under("MSLM_SSD_OUT_REG", "0", "exact", 900,
                           [](const Case& c, const Data<T>& d, DeviceData<T>& dev, uint64_t) {
                               DeviceBuffer<T> out(std::vector<T>(c.B * c.T * c.H * c.P));
                               ops::cuda::ssd_forward(out.get(), static_cast<float*>(nullptr), dev.inputs(),
                                                      or_null(dev.h0), d.dims);
                               return std::vector<std::vector<T>>{out.download()};
                           });
#else
    GTEST_SKIP() << "built without CUDA";
#endif
}

// The backward head with its M steps in registers (the default, MSLM_SSD_BWD_REG=1) against the
// staged kernel (=0), both on mma.sync: the same split values through the same products in the same
// order, so every gradient has the same bits, at every shape of both tables (odd chunk lengths, P =
// 128's two p tiles, short last t tiles).
TEST(CudaSsdBackward, RegisterMStepsGiveTheStagedKernelsBits) {
#ifdef MSLM_HAVE_CUDA
    if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU: " << cuda_device_summary();
    using T = uint16_t;
    const test::ScopedEnv mma_sync("MSLM_SSD_BWD_WGMMA", std::string("0"));
    expect_same_bits_under(
        "MSLM_SSD_BWD_REG", "0", "1", 1100,
        [](const Case& c, const Data<T>& d, DeviceData<T>& dev, uint64_t seed) {
            Rng rng(seed * 13);  // the same dy and starting gradients for both runs
            const std::vector<T> dy = random_values<T>(rng, c.B * c.T * c.H * c.P);
            DeviceBuffer<T> d_dy(dy), a(random_values<T>(rng, d.x.size())),
                b(random_values<T>(rng, d.dt.size())), e(random_values<T>(rng, d.dt_bias.size())),
                f(random_values<T>(rng, d.A_log.size())), g(random_values<T>(rng, d.Bm.size())),
                h(random_values<T>(rng, d.Cm.size())), k(random_values<T>(rng, d.D.size()));
            const ops::SsdGrads<T> grads{or_null(a), or_null(b), or_null(e), or_null(f),
                                         or_null(g), or_null(h), or_null(k)};
            ops::cuda::ssd_backward(grads, d_dy.get(), dev.inputs(), or_null(dev.h0), nullptr, d.dims);
            return std::vector<std::vector<T>>{a.download(), b.download(), e.download(), f.download(),
                                               g.download(), h.download(), k.download()};
        });
#else
    GTEST_SKIP() << "built without CUDA";
#endif
}

// dcum's state terms: ⟨dY, C·S_inᵀ⟩ comes from the dC kernel's blocks by default (their dY·S_in
// product summed against C) and from the head kernel's Z steps with MSLM_SSD_Z_IN_DC=0 or without dC;
// ⟨dS, S_in⟩ from the reverse state pass by default (where P·N is a multiple of its block) and from
// the finish kernel with MSLM_SSD_DSS_IN_PASS=0; and the head kernel on warpgroup products (by default
// on an H100/H200) or mma.sync (MSLM_SSD_BWD_WGMMA=0). Every form holds the reference's tolerance at every
// shape of both tables; without dC every other gradient has the bits of MSLM_SSD_Z_IN_DC=0 with dC
// (the same kernels, the same sums).
TEST(CudaSsdBackward, StateTermsInEveryForm) {
#ifdef MSLM_HAVE_CUDA
    if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU: " << cuda_device_summary();
    using T = uint16_t;
    ScopedTcSwitch tc{std::nullopt};
    std::vector<Case> cases(std::begin(kCases), std::end(kCases));
    cases.insert(cases.end(), std::begin(kTileCases), std::end(kTileCases));
    uint64_t seed = 1200;
    for (const Case& c : cases) {
        for (const char* var : {"MSLM_SSD_Z_IN_DC", "MSLM_SSD_DSS_IN_PASS", "MSLM_SSD_BWD_WGMMA"}) {
            SCOPED_TRACE(std::string(var) + "=0");
            const test::ScopedEnv off(var, std::string("0"));
            check_backward<T>(c, seed);
        }
        SCOPED_TRACE(describe(c));
        const Data<T> d = make_data<T>(c, seed);
        DeviceData<T> dev(d);
        Rng rng(seed * 17);
        const std::vector<T> dy = random_values<T>(rng, c.B * c.T * c.H * c.P);
        const std::vector<T> gx = random_values<T>(rng, d.x.size()), gdt = random_values<T>(rng, d.dt.size()),
                             gbias = random_values<T>(rng, d.dt_bias.size()),
                             gA = random_values<T>(rng, d.A_log.size()),
                             gB = random_values<T>(rng, d.Bm.size()), gD = random_values<T>(rng, d.D.size());
        DeviceBuffer<T> d_dy(dy);
        std::vector<std::vector<T>> got[2];
        for (int with_dc = 0; with_dc < 2; ++with_dc) {
            const test::ScopedEnv z("MSLM_SSD_Z_IN_DC", std::string(with_dc ? "0" : "1"));
            DeviceBuffer<T> a(gx), b(gdt), e(gbias), f(gA), g(gB), k(gD),
                h(std::vector<T>(with_dc ? d.Cm.size() : 0));
            const ops::SsdGrads<T> grads{or_null(a), or_null(b), or_null(e), or_null(f),
                                         or_null(g), or_null(h), or_null(k)};
            ops::cuda::ssd_backward(grads, d_dy.get(), dev.inputs(), or_null(dev.h0), nullptr, d.dims);
            got[with_dc] = {a.download(), b.download(), e.download(),
                            f.download(), g.download(), k.download()};
        }
        ++seed;
        for (size_t i = 0; i < got[0].size(); ++i)
            EXPECT_TRUE(same_bits(got[0][i], got[1][i])) << "gradient " << i << " without dC";
    }
#else
    GTEST_SKIP() << "built without CUDA";
#endif
}

// SsdGrads::overwrite: dx, ddt, dB and dC written over junk, bit for bit what the default += gives on
// zeroed buffers (the tensor-core kernels skip the old values; the fp32 kernels add to a zeroed
// buffer); the parameter gradients still add. Tensor cores and MSLM_SSD_TC=0, both tables' shapes.
TYPED_TEST(CudaSsd, BackwardOverwriteIsAddToZeros) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    std::vector<Case> cases(std::begin(kCases), std::end(kCases));
    cases.insert(cases.end(), std::begin(kTileCases), std::end(kTileCases));
    for (const char* tc : {"1", "0"}) {
        ScopedTcSwitch scoped{std::string(tc)};
        uint64_t seed = 980;
        for (const Case& c : cases) {
            SCOPED_TRACE(describe(c) + " MSLM_SSD_TC=" + tc);
            const Data<T> d = make_data<T>(c, seed++);
            Rng rng(seed * 11);
            const std::vector<T> dy = random_values<T>(rng, c.B * c.T * c.H * c.P);
            DeviceData<T> dev(d);
            DeviceBuffer<T> d_dy(dy);
            // Gradient buffers shaped as the inputs, junk to start with.
            const std::vector<T> jx = random_values<T>(rng, d.x.size()),
                                 jdt = random_values<T>(rng, d.dt.size()),
                                 jB = random_values<T>(rng, d.Bm.size()),
                                 jC = random_values<T>(rng, d.Cm.size());
            const std::vector<T> gbias = random_values<T>(rng, d.dt_bias.size()),
                                 gA = random_values<T>(rng, d.A_log.size()),
                                 gD = random_values<T>(rng, d.D.size());
            std::vector<std::vector<T>> got[2];
            for (int ow = 0; ow < 2; ++ow) {
                // Add: zeros in the gradient's own columns; Overwrite: junk there. Elsewhere junk in both.
                auto start = [&](const std::vector<T>& j, int64_t ld, int64_t width) {
                    std::vector<T> v = j;
                    if (!ow)
                        for (size_t r = 0; r * ld < v.size(); ++r)
                            for (int64_t k = 0; k < width; ++k) v[r * ld + k] = T{};
                    return v;
                };
                DeviceBuffer<T> a(start(jx, d.ld_x, c.H * c.P)), b(start(jdt, d.ld_dt, c.H)), e(gbias), f(gA),
                    g(start(jB, d.ld_B, c.G * c.N)), h(start(jC, d.ld_C, c.G * c.N)), k(gD);
                ops::SsdGrads<T> grads{or_null(a), or_null(b), or_null(e), or_null(f),
                                       or_null(g), or_null(h), or_null(k)};
                grads.overwrite = ow == 1;
                ops::cuda::ssd_backward(grads, d_dy.get(), dev.inputs(), or_null(dev.h0), nullptr, d.dims);
                got[ow] = {a.download(), b.download(), e.download(), f.download(),
                           g.download(), h.download(), k.download()};
            }
            for (size_t i = 0; i < got[0].size(); ++i)
                EXPECT_TRUE(same_bits(got[1][i], got[0][i])) << "gradient " << i;
        }
    }
#endif
}

#ifdef MSLM_HAVE_CUDA
// The inputs of one recurrent step: row i is token t of sequence i of d.
template <typename T>
Data<T> token_rows(const Data<T>& d, int64_t t) {
    Data<T> step = d;
    step.dims.seqlen = 1;
    auto rows = [&](const std::vector<T>& v, int64_t ld) {
        std::vector<T> out(d.c.B * ld);
        for (int64_t i = 0; i < d.c.B; ++i)
            std::copy_n(v.begin() + (i * d.c.T + t) * ld, ld, out.begin() + i * ld);
        return out;
    };
    step.x = rows(d.x, d.ld_x), step.dt = rows(d.dt, d.ld_dt), step.Bm = rows(d.Bm, d.ld_B);
    step.Cm = rows(d.Cm, d.ld_C);
    return step;
}
#endif

// ssd_update_bf16_state against ssd_update on the same states: every step, from fp32 states equal to
// the bf16 ones, y must equal the fp32 kernel's bit for bit and each stored bf16 state the fp32
// kernel's new state rounded to bf16 (the kernel's claim: the same fp32 arithmetic, one rounding
// at the store); slots not decoded keep their bits. The 16-byte-row path at N = 16 and 128, the
// 8-channels-a-warp kernel at N = 12 with 96 heads; sizes N % 4 ≠ 0 are refused.
TEST(CudaSsdBf16State, StepIsTheF32StepWithTheStateRounded) {
#ifdef MSLM_HAVE_CUDA
    if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU: " << cuda_device_summary();
    using T = uint16_t;
    const Case cases[] = {
        {3, 5, 6, 1, 2, 16, 2, 0, false, false, true},
        {3, 4, 3, 64, 1, 128, 256, 2, true, true, true},
        {3, 2, 96, 90, 2, 12, 256, 0, true, true, true},
    };
    const std::vector<int64_t> slots = {3, 0, 4};
    const int64_t n_slots = 5;
    uint64_t seed = 700;
    for (const Case& c : cases) {
        SCOPED_TRACE(describe(c));
        const Data<T> d = make_data<T>(c, seed++);
        const int64_t HPN = c.H * c.P * c.N, HP = c.H * c.P;
        Rng rng(seed * 13);
        std::vector<T> h16(n_slots * HPN);
        for (T& v : h16) v = f32_to_bf16(static_cast<float>(rng.normal()));
        DeviceBuffer<T> states16(h16);
        DeviceBuffer<int64_t> d_slots(slots);
        for (int64_t t = 0; t < c.T; ++t) {
            const Data<T> step = token_rows(d, t);
            DeviceData<T> dev(step);
            const std::vector<T> before = states16.download();
            std::vector<float> h32(before.size());
            for (size_t i = 0; i < before.size(); ++i) h32[i] = bf16_to_f32(before[i]);
            DeviceBuffer<float> states32(h32);
            DeviceBuffer<T> y32(std::vector<T>(c.B * HP)), y16(std::vector<T>(c.B * HP));
            ops::cuda::ssd_update(y32.get(), states32.get(), d_slots.get(), dev.inputs(), step.dims);
            ops::cuda::ssd_update_bf16_state(y16.get(), states16.get(), d_slots.get(), dev.inputs(),
                                             step.dims);
            EXPECT_TRUE(same_bits(y16.download(), y32.download())) << "y, step " << t;
            const std::vector<float> want32 = states32.download();
            std::vector<T> want(want32.size());
            for (size_t i = 0; i < want.size(); ++i) want[i] = f32_to_bf16(want32[i]);
            EXPECT_TRUE(same_bits(states16.download(), want)) << "states, step " << t;
        }
        // Slots 1 and 2 were never decoded: their bits are the initial ones.
        const std::vector<T> after = states16.download();
        for (int64_t sl : {1, 2})
            EXPECT_TRUE(
                std::equal(after.begin() + sl * HPN, after.begin() + (sl + 1) * HPN, h16.begin() + sl * HPN))
                << "slot " << sl;
    }
    const Case odd{1, 1, 1, 4, 1, 10, 1, 0, false, false, true};
    const Data<T> d = make_data<T>(odd, 1);
    DeviceData<T> dev(d);
    DeviceBuffer<T> y(std::vector<T>(4)), h(std::vector<T>(40));
    DeviceBuffer<int64_t> d_slots(std::vector<int64_t>{0});
    EXPECT_THROW(ops::cuda::ssd_update_bf16_state(y.get(), h.get(), d_slots.get(), dev.inputs(), d.dims),
                 Error);
#endif
}

// The wide update's two forms (ssd_update_stream_kernel, and the register form under
// MSLM_SSD_UPDATE_STREAM=0) advance the same states by the same arithmetic: y and every state bit
// for bit, fp32 and bf16 states, over several steps, with the streamed form's units of 1, 2 and 4
// items (MSLM_SSD_UPDATE_RUN) and its own choice. The shapes give each form its wide path on a GPU
// of up to 144 SMs: 130m's heads at batch 24 (N = 128), P = 90 (a head ends on a 2-row item) at
// N = 64 with slots out of order and some never decoded, and P = 72 (9 items a head: a run of 4 cut
// to 1) at N = 32.
TEST(CudaSsdUpdate, StreamedIsTheRegisterForm) {
#ifdef MSLM_HAVE_CUDA
    if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU: " << cuda_device_summary();
    using T = uint16_t;
    const Case cases[] = {
        {24, 3, 24, 64, 1, 128, 256, 0, true, true, true},
        {5, 2, 96, 90, 2, 64, 256, 0, true, false, true},
        {6, 2, 48, 72, 2, 32, 256, 0, true, true, true},
    };
    uint64_t seed = 1500;
    for (const Case& c : cases)
        for (const char* run : {"", "1", "2", "4"}) {
            SCOPED_TRACE(describe(c) + ", MSLM_SSD_UPDATE_RUN=" + run);
            const test::ScopedEnv run_env("MSLM_SSD_UPDATE_RUN",
                                          *run ? std::optional<std::string>(run) : std::nullopt);
            const Data<T> d = make_data<T>(c, seed++);
            const int64_t HPN = c.H * c.P * c.N, HP = c.H * c.P, n_slots = c.B + 2;
            std::vector<int64_t> slots(c.B);
            for (int64_t i = 0; i < c.B; ++i)
                slots[i] = (5 * i + 3) % n_slots;  // distinct: gcd(5, n_slots) = 1
            ASSERT_NE(n_slots % 5, 0);
            Rng rng(seed * 19);
            std::vector<float> h32(n_slots * HPN);
            std::vector<T> h16(n_slots * HPN);
            for (size_t i = 0; i < h32.size(); ++i) {
                h16[i] = f32_to_bf16(static_cast<float>(rng.normal()));
                h32[i] = bf16_to_f32(h16[i]) + static_cast<float>(rng.normal()) * 0x1p-12f;
            }
            DeviceBuffer<int64_t> d_slots(slots);
            DeviceBuffer<float> s32[2] = {DeviceBuffer<float>(h32), DeviceBuffer<float>(h32)};
            DeviceBuffer<T> s16[2] = {DeviceBuffer<T>(h16), DeviceBuffer<T>(h16)};
            for (int64_t t = 0; t < c.T; ++t) {
                const Data<T> step = token_rows(d, t);
                DeviceData<T> dev(step);
                std::vector<T> y32[2], y16[2];
                for (int form = 0; form < 2; ++form) {
                    const test::ScopedEnv env("MSLM_SSD_UPDATE_STREAM", std::string(form ? "0" : "1"));
                    DeviceBuffer<T> a(std::vector<T>(c.B * HP)), b(std::vector<T>(c.B * HP));
                    ops::cuda::ssd_update(a.get(), s32[form].get(), d_slots.get(), dev.inputs(), step.dims,
                                          nullptr, form == 0);
                    ops::cuda::ssd_update_bf16_state(b.get(), s16[form].get(), d_slots.get(), dev.inputs(),
                                                     step.dims, nullptr, form == 1);
                    y32[form] = a.download();
                    y16[form] = b.download();
                }
                EXPECT_TRUE(same_bits(y32[0], y32[1])) << "y (fp32 states), step " << t;
                EXPECT_TRUE(same_bits(y16[0], y16[1])) << "y (bf16 states), step " << t;
            }
            EXPECT_TRUE(same_bits(s32[0].download(), s32[1].download())) << "fp32 states";
            EXPECT_TRUE(same_bits(s16[0].download(), s16[1].download())) << "bf16 states";
        }
#endif
}

// k sequences decoded one token at a time through ssd_update, their states in slots {3, 0, 4} of
// 5: against the CPU recurrence and against the GPU chunked forward over the whole sequences.
TYPED_TEST(CudaSsd, UpdateMatchesForward) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    const Case cases[] = {
        {3, 6, 4, 3, 2, 5, 4, 1, true, true, true},
        {3, 5, 6, 1, 2, 16, 2, 0, false, false, true},
        {3, 4, 3, 64, 1, 128, 256, 2, true, true, true},
        // Enough (row, head, 8 channels) units for the 8-channels-a-warp kernel on a GPU of up to
        // 144 SMs (3 · 96 · 12 ≥ 16 · 144); P = 90 ends each head on a unit of 2 channels; N = 12
        // takes the 16-byte path, N = 10 the scalar one.
        {3, 2, 96, 90, 2, 12, 256, 0, true, true, true},
        {3, 2, 96, 90, 1, 10, 256, 0, true, false, true},
    };
    const std::vector<int64_t> slots = {3, 0, 4};
    const int64_t n_slots = 5;
    uint64_t seed = 300;
    for (const Case& c : cases) {
        SCOPED_TRACE(describe(c));
        Data<T> d = make_data<T>(c, seed++);
        const int64_t HPN = c.H * c.P * c.N, HP = c.H * c.P;
        Rng rng(seed * 11);
        std::vector<float> all(n_slots * HPN);
        for (float& v : all) v = static_cast<float>(rng.normal());
        d.h0.assign(c.B * HPN, 0.0f);  // the slots' states, gathered
        for (int64_t i = 0; i < c.B; ++i)
            std::copy_n(all.begin() + slots[i] * HPN, HPN, d.h0.begin() + i * HPN);

        std::vector<double> h_ref, h_scale;
        const std::vector<double> y_ref = reference(d, false, c.T).forward(&h_ref);
        const std::vector<double> y_scale = reference(d, true, c.T).forward(&h_scale);
        const double rel = kU * double(c.N + 4 * c.T + 512);

        DeviceBuffer<float> states(all);
        DeviceBuffer<int64_t> d_slots(slots);
        std::vector<T> y_got(y_ref.size());
        for (int64_t t = 0; t < c.T; ++t) {
            const Data<T> step = token_rows(d, t);  // row i: token t of sequence i
            DeviceData<T> dev(step);
            DeviceBuffer<T> y(std::vector<T>(c.B * HP));
            ops::cuda::ssd_update(y.get(), states.get(), d_slots.get(), dev.inputs(), step.dims);
            const std::vector<T> yt = y.download();
            for (int64_t i = 0; i < c.B; ++i)
                std::copy_n(yt.begin() + i * HP, HP, y_got.begin() + (i * c.T + t) * HP);
        }
        EXPECT_TRUE(all_close(y_got, y_ref, y_scale, rel)) << "y";

        const std::vector<float> after = states.download();
        for (int64_t s = 0; s < n_slots; ++s) {
            const auto it = std::find(slots.begin(), slots.end(), s);
            std::vector<float> got(after.begin() + s * HPN, after.begin() + (s + 1) * HPN);
            if (it == slots.end()) {
                EXPECT_TRUE(
                    same_bits(got, std::vector<float>(all.begin() + s * HPN, all.begin() + (s + 1) * HPN)))
                    << "slot " << s << " is not decoded and must not change";
                continue;
            }
            const int64_t i = it - slots.begin();
            const std::vector<double> want(h_ref.begin() + i * HPN, h_ref.begin() + (i + 1) * HPN),
                scale(h_scale.begin() + i * HPN, h_scale.begin() + (i + 1) * HPN);
            EXPECT_TRUE(all_close(got, want, scale, rel)) << "state of slot " << s;
        }

        // The chunked forward on the same sequences: both within their tolerances of the reference.
        DeviceData<T> dev(d);
        DeviceBuffer<T> y_fwd(std::vector<T>(y_ref.size()));
        ops::cuda::ssd_forward(y_fwd.get(), static_cast<float*>(nullptr), dev.inputs(), or_null(dev.h0),
                               d.dims);
        // Their gap: both relative tolerances on the scale, and the update's own output rounding
        // (all_close adds the forward's), folded into the scale.
        const double gap_rel = rel + y_rel(c, tensor_cores<T>());
        std::vector<double> gap_scale(y_scale.size());
        for (size_t i = 0; i < gap_scale.size(); ++i)
            gap_scale[i] = y_scale[i] + (kBf16<T> ? 0x1p-8 : kU) * std::abs(y_ref[i]) / gap_rel;
        EXPECT_TRUE(all_close(y_fwd.download(), decode_all(y_got), gap_scale, gap_rel))
            << "update vs forward";
    }
#endif
}

// The first 7 tokens with h_last, then the other 12 from that state advanced in place (h0 ==
// h_last): the split falls inside a chunk (Q = 4), and both halves must match the whole sequence.
TYPED_TEST(CudaSsd, StatePassingInPlace) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    const Case c{2, 19, 4, 3, 2, 16, 4, 1, true, true, true};
    const Data<T> full = make_data<T>(c, 400);
    std::vector<double> h_ref, h_scale;
    const std::vector<double> y_ref = reference(full, false, c.T).forward(&h_ref);
    const std::vector<double> y_scale = reference(full, true, c.T).forward(&h_scale);
    const double rel = states_rel(c, tensor_cores<T>()) + kU * 64;  // + the halves' extra chunk boundaries
    const double rel_y = y_rel(c, tensor_cores<T>()) + kU * 64;

    DeviceBuffer<float> state(full.h0);
    const int64_t HP = c.H * c.P;
    std::vector<T> y_got(y_ref.size());
    const std::pair<int64_t, int64_t> halves[] = {{0, 7}, {7, 12}};  // (first token, length)
    for (const auto& [t0, len] : halves) {
        Data<T> part = full;
        part.dims.seqlen = len;
        auto rows = [&](const std::vector<T>& v, int64_t ld) {
            std::vector<T> out(c.B * len * ld);
            for (int64_t b = 0; b < c.B; ++b)
                std::copy_n(v.begin() + (b * c.T + t0) * ld, len * ld, out.begin() + b * len * ld);
            return out;
        };
        part.x = rows(full.x, full.ld_x), part.dt = rows(full.dt, full.ld_dt),
        part.Bm = rows(full.Bm, full.ld_B);
        part.Cm = rows(full.Cm, full.ld_C);
        DeviceData<T> dev(part);
        DeviceBuffer<T> y(std::vector<T>(c.B * len * HP));
        ops::cuda::ssd_forward(y.get(), state.get(), dev.inputs(), state.get(), part.dims);
        const std::vector<T> yp = y.download();
        for (int64_t b = 0; b < c.B; ++b)
            std::copy_n(yp.begin() + b * len * HP, len * HP, y_got.begin() + (b * c.T + t0) * HP);
    }
    EXPECT_TRUE(all_close(y_got, y_ref, y_scale, rel_y)) << "y";
    EXPECT_TRUE(all_close(state.download(), h_ref, h_scale, rel)) << "final state";
#endif
}

// T = 0: h_last is h0 (or zeros) and nothing else happens; B = 0 is a no-op.
TYPED_TEST(CudaSsd, EmptySequences) {
#ifdef MSLM_HAVE_CUDA
    using T = TypeParam;
    const Case c{2, 0, 4, 3, 2, 5, 4, 0, true, true, true};
    const Data<T> d = make_data<T>(c, 500);
    DeviceData<T> dev(d);
    DeviceBuffer<float> h_last(std::vector<float>(d.h0.size(), 7.0f));
    ops::cuda::ssd_forward(static_cast<T*>(nullptr), h_last.get(), dev.inputs(), or_null(dev.h0), d.dims);
    EXPECT_TRUE(same_bits(h_last.download(), d.h0));
    ops::cuda::ssd_forward(static_cast<T*>(nullptr), h_last.get(), dev.inputs(), nullptr, d.dims);
    EXPECT_TRUE(same_bits(h_last.download(), std::vector<float>(d.h0.size(), 0.0f)));
    const ops::SsdGrads<T> none{};
    EXPECT_NO_THROW(ops::cuda::ssd_backward(none, static_cast<const T*>(nullptr), dev.inputs(),
                                            or_null(dev.h0), nullptr, d.dims));
    ops::SsdDims no_batch = d.dims;
    no_batch.batch = 0, no_batch.seqlen = 5;
    EXPECT_NO_THROW(ops::cuda::ssd_forward(static_cast<T*>(nullptr), static_cast<float*>(nullptr),
                                           dev.inputs(), nullptr, no_batch));
    EXPECT_NO_THROW(ops::cuda::ssd_update(static_cast<T*>(nullptr), static_cast<float*>(nullptr), nullptr,
                                          dev.inputs(), no_batch));
#endif
}

// Shape checks throw before touching the GPU, so they run in any CUDA build.
TEST(CudaSsdShapes, InvalidShapesThrowBeforeLaunch) {
#ifdef MSLM_HAVE_CUDA
    const ops::SsdDims good{2, 11, 4, 3, 2, 5, 4};
    ops::cuda::SsdInputs<float> in{};
    in.ld_x = 12, in.ld_dt = 4, in.ld_B = 10, in.ld_C = 10;
    auto expect_error = [&](const ops::SsdDims& dims, const ops::cuda::SsdInputs<float>& inputs,
                            const char* what) {
        try {
            ops::cuda::ssd_forward<float>(nullptr, nullptr, inputs, nullptr, dims);
            ADD_FAILURE() << "no error for " << what;
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find("ssd_forward"), std::string::npos) << e.what();
        }
        EXPECT_THROW(ops::cuda::ssd_backward<float>({}, nullptr, inputs, nullptr, nullptr, dims), Error)
            << what;
    };
    ops::SsdDims bad = good;
    bad.n_groups = 3;
    expect_error(bad, in, "4 heads in 3 groups");
    bad = good;
    bad.chunk_size = 0;
    expect_error(bad, in, "chunk_size 0");
    bad = good;
    bad.seqlen = 5000, bad.chunk_size = 2048;
    expect_error(bad, in, "chunk of 2048");
    ops::cuda::SsdInputs<float> narrow = in;
    narrow.ld_B = 9;
    expect_error(good, narrow, "ld_B below G·N");

    // (B, n_chunks, H, P, N) = (2, 3, 4, 3, 5); a backward workspace also serves the forward.
    EXPECT_EQ(ops::cuda::ssd_chunk_states_numel(good), 2 * 3 * 4 * 3 * 5);
    EXPECT_GE(ops::cuda::ssd_backward_workspace_bytes(good), ops::cuda::ssd_forward_workspace_bytes(good));
    EXPECT_GT(ops::cuda::ssd_forward_workspace_bytes(good), 0u);
#else
    GTEST_SKIP() << "built without CUDA";
#endif
}

}  // namespace
