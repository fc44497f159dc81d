#include "ops/cpu/vec_array.h"

#include <cmath>
#include <cstring>

#include "ops/cpu/scalar_math.h"

namespace mslm::ops::vec_array {

namespace {

enum class Isa { Scalar, Avx2, Avx512 };

Isa isa() {
    static const Isa chosen = [] {
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
            __builtin_cpu_supports("fma"))
            return Isa::Avx512;
        if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::Avx2;
        return Isa::Scalar;
    }();
    return chosen;
}

// Runs op on W-wide vectors of the K inputs, the tail through a zero-padded lane buffer, so every
// element goes through the same vector code whatever n is.
template <int W, int K, class Op>
[[gnu::always_inline]] inline void map(float* y, const float* const (&x)[K], int64_t n, Op op) {
    using V = vec::F<W>;
    int64_t i = 0;
    for (; i + W <= n; i += W) {
        V in[K], out;
        for (int k = 0; k < K; ++k) vec::load(in[k], x[k] + i);
        op(out, in);
        vec::store(y + i, out);
    }
    if (i < n) {
        float lanes[K][W] = {}, res[W];
        for (int k = 0; k < K; ++k)
            std::memcpy(lanes[k], x[k] + i, sizeof(float) * static_cast<size_t>(n - i));
        V in[K], out;
        for (int k = 0; k < K; ++k) vec::load(in[k], lanes[k]);
        op(out, in);
        vec::store(res, out);
        std::memcpy(y + i, res, sizeof(float) * static_cast<size_t>(n - i));
    }
}

template <int W>
[[gnu::always_inline]] inline void exp_w(float* y, const float* x, int64_t n) {
    map<W, 1>(y, {x}, n, [](vec::F<W>& out, const vec::F<W>(&in)[1]) { vec::exp_nonpositive(out, in[0]); });
}
template <int W>
[[gnu::always_inline]] inline void silu_w(float* y, const float* x, int64_t n) {
    map<W, 1>(y, {x}, n, [](vec::F<W>& out, const vec::F<W>(&in)[1]) {
        vec::F<W> s;
        vec::sigmoid(s, in[0]);
        out = in[0] * s;
    });
}
template <int W>
[[gnu::always_inline]] inline void silu_mul_w(float* y, const float* g, const float* u, int64_t n) {
    map<W, 2>(y, {g, u}, n, [](vec::F<W>& out, const vec::F<W>(&in)[2]) {
        vec::F<W> s;
        vec::sigmoid(s, in[0]);
        out = in[0] * s * in[1];
    });
}

#define MSLM_AVX512 __attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,fma")))
#define MSLM_AVX2 __attribute__((target("avx2,fma")))

MSLM_AVX512 void exp_avx512(float* y, const float* x, int64_t n) {
    exp_w<16>(y, x, n);
}
MSLM_AVX2 void exp_avx2(float* y, const float* x, int64_t n) {
    exp_w<8>(y, x, n);
}
MSLM_AVX512 void silu_avx512(float* y, const float* x, int64_t n) {
    silu_w<16>(y, x, n);
}
MSLM_AVX2 void silu_avx2(float* y, const float* x, int64_t n) {
    silu_w<8>(y, x, n);
}
MSLM_AVX512 void silu_mul_avx512(float* y, const float* g, const float* u, int64_t n) {
    silu_mul_w<16>(y, g, u, n);
}
MSLM_AVX2 void silu_mul_avx2(float* y, const float* g, const float* u, int64_t n) {
    silu_mul_w<8>(y, g, u, n);
}

}  // namespace

void exp_nonpositive(float* y, const float* x, int64_t n) {
    switch (isa()) {
        case Isa::Avx512:
            return exp_avx512(y, x, n);
        case Isa::Avx2:
            return exp_avx2(y, x, n);
        case Isa::Scalar:
            for (int64_t i = 0; i < n; ++i) y[i] = std::exp(x[i]);
    }
}

void silu(float* y, const float* x, int64_t n) {
    switch (isa()) {
        case Isa::Avx512:
            return silu_avx512(y, x, n);
        case Isa::Avx2:
            return silu_avx2(y, x, n);
        case Isa::Scalar:
            for (int64_t i = 0; i < n; ++i) y[i] = x[i] * sigmoid(x[i]);
    }
}

void silu_mul(float* y, const float* gate, const float* up, int64_t n) {
    switch (isa()) {
        case Isa::Avx512:
            return silu_mul_avx512(y, gate, up, n);
        case Isa::Avx2:
            return silu_mul_avx2(y, gate, up, n);
        case Isa::Scalar:
            for (int64_t i = 0; i < n; ++i) y[i] = gate[i] * sigmoid(gate[i]) * up[i];
    }
}

}  // namespace mslm::ops::vec_array
