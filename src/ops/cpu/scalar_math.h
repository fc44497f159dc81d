// Scalar functions shared by the CPU kernels, with PyTorch's numerics; below them, vectorised float
// versions for the vector kernels.
#pragma once
#include <cmath>

namespace mslm::ops {

// 1 / (1 + e^−v): for very negative v the exponential overflows to inf and the result is a clean 0.
template <typename T>
inline T sigmoid(T v) {
    return T(1) / (T(1) + std::exp(-v));
}

// d/dv silu(v) = σ(v) · (1 + v · (1 − σ(v))), given s = σ(v).
template <typename T>
inline T silu_grad(T v, T s) {
    return s * (T(1) + v * (T(1) - s));
}

// PyTorch's softplus (beta 1, threshold 20): the identity above 20, where log1p(exp(v)) equals v
// to within 2e-9.
template <typename T>
inline T softplus(T v) {
    return v > T(20) ? v : std::log1p(std::exp(v));
}

template <typename T>
inline T softplus_grad(T v) {
    return v > T(20) ? T(1) : sigmoid(v);
}

// ---------------------------------------------------------------------------------------------
// Vectorised float math for the CPU kernels, on GCC vector types of W floats (vec::F<W>). The code
// is generic: the helpers are always inlined, so a caller compiled for AVX-512 (W = 16) or AVX2
// (W = 8) through a target attribute gets zmm / ymm instructions and FMA contraction with no -m flag
// on the file. They return through a reference: a function that passes a 32- or 64-byte vector by
// value has an ABI that depends on the ISA it is compiled for, which GCC warns about and clang
// rejects. They need IEEE semantics: -ffast-math would fold the round-to-integer in exp.
namespace vec {

template <int W>
struct Types {
    typedef float F __attribute__((vector_size(4 * W)));
};
template <int W>
using F = typename Types<W>::F;

template <class V>
[[gnu::always_inline]] inline void load(V& out, const float* p) {
    __builtin_memcpy(&out, p, sizeof out);
}

template <class V>
[[gnu::always_inline]] inline void store(float* p, const V& v) {
    __builtin_memcpy(p, &v, sizeof v);
}

// e^x for x in [kExpLow, 88.376] by range reduction: x = k·ln 2 + r with k = round(x / ln 2),
// |r| ≤ ln 2 / 2, then e^x = 2^k · e^r with e^r from its Taylor polynomial of degree 7, whose
// truncation error r^8/8! · e^|r| ≤ 7.3e-9 relative is 0.12 ulp of a float. ln 2 is split in two
// (Cody–Waite) so that k·ln2_hi is exact (ln2_hi has 15 significant bits, |k| ≤ 127) and
// x − k·ln2_hi is exact too (Sterbenz), leaving r off by the rounding of k·ln2_lo only. Rounding in
// Horner's scheme adds about one ulp (0.94 ulp at most, measured on every float in [−87.3, 0]).
// 2^k is built in the exponent bits: exactly for k in [−126, 127], and as +0 for k = −127.
template <class V>
[[gnu::always_inline]] inline void exp_in_range(V& out, const V& x) {
    using I = decltype(x < x);  // the int32 vector of the same width
    // 1.5·2^23: x·log2(e) + magic lands in [2^23, 2^24), where a float's ulp is 1, so the sum is
    // rounded to an integer and that integer sits in the low mantissa bits.
    const V magic = V{} + 12582912.0f;
    const V t = x * 1.44269502f + magic;
    const V kf = t - magic;
    const I k = __builtin_bit_cast(I, t) - __builtin_bit_cast(I, magic);
    V r = x - kf * 0.693145751953125f;  // ln2_hi = 0x3f317200
    r = r - kf * 1.42860677e-6f;        // ln2_lo = ln 2 − ln2_hi, rounded
    V p = r * (1.0f / 5040) + (1.0f / 720);
    p = p * r + (1.0f / 120);
    p = p * r + (1.0f / 24);
    p = p * r + (1.0f / 6);
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const I scale_bits = (k + 127) << 23;
    out = p * __builtin_bit_cast(V, scale_bits);
}

// The smallest argument exp_in_range takes: k = round(−88 / ln 2) = −127, whose 2^k is +0. Below
// −126.5·ln 2 = −87.68 (k = −127) the result is exactly 0; from there to ln FLT_MIN = −87.34 it is a
// subnormal, as libm's, if less precise; above, a normal number.
inline constexpr float kExpLow = -88.0f;

// e^x for x ≤ 0: within 1 ulp down to −87.34, then a subnormal, and 0 below −87.68 (−∞
// included); NaN stays NaN. `x < kExpLow ? kExpLow : x` is one max instruction, and keeps NaN.
template <class V>
[[gnu::always_inline]] inline void exp_nonpositive(V& out, const V& x) {
    exp_in_range(out, x < kExpLow ? V{} + kExpLow : x);
}

// e^x for any x: exp_nonpositive's accuracy up to 88.376 (e^x = 2.4e38), +∞ above it (a float
// overflows from 88.72 on).
template <class V>
[[gnu::always_inline]] inline void exp(V& out, const V& x) {
    constexpr float kHigh = 88.376f;  // 127.5·ln 2, rounded down: k ≤ 127
    const auto overflow = x > kHigh;
    V e;
    exp_in_range(e, x < kExpLow ? V{} + kExpLow : overflow ? V{} + kHigh : x);
    out = overflow ? V{} + __builtin_inff() : e;
}

// sigmoid() above, from e = e^−|v| ≤ 1 so that the exponential never overflows:
// σ(v) = 1 / (1 + e) for v ≥ 0 and e / (1 + e) for v < 0.
template <class V>
[[gnu::always_inline]] inline void sigmoid(V& out, const V& v) {
    V e;
    exp_nonpositive(e, v < 0.0f ? v : -v);
    const V s = 1.0f / (1.0f + e);
    out = v < 0.0f ? e * s : s;
}

// softplus() above: v above 20, else log(1 + e^v) = max(v, 0) + log1p(e) with e = e^−|v| ≤ 1.
// log1p(e) = 2·atanh(s) = 2s·(1 + s²/3 + s⁴/5 + …) with s = e / (2 + e) ≤ 1/3; the series stops at
// s¹²/13, leaving (1/9)^7 / 15 = 1.4e-8 relative (0.24 ulp) at e = 1 and less below.
template <class V>
[[gnu::always_inline]] inline void softplus(V& out, const V& v) {
    V e;
    exp_nonpositive(e, v < 0.0f ? v : -v);
    const V s = e / (2.0f + e), s2 = s * s;
    V p = s2 * (1.0f / 13) + (1.0f / 11);
    p = p * s2 + (1.0f / 9);
    p = p * s2 + (1.0f / 7);
    p = p * s2 + (1.0f / 5);
    p = p * s2 + (1.0f / 3);
    p = p * s2 + 1.0f;
    const V log1p_e = 2.0f * s * p;
    out = v > 20.0f ? v : (v > 0.0f ? v : V{}) + log1p_e;
}

}  // namespace vec

}  // namespace mslm::ops
