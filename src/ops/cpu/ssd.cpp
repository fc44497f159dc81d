#include "ops/ssd.h"

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "core/error.h"
#include "core/gemm.h"
#include "core/thread_pool.h"
#include "ops/cpu/scalar_math.h"
#include "ops/cpu/vec_array.h"

namespace mslm::ops {
namespace {

// dt = clamp(softplus(raw + bias), dt_min, dt_max), with torch.clamp's gradient: zero where the
// clamp is active, the boundary values themselves included in the pass-through range.
template <typename T>
T dt_value(const SsdInputs<T>& in, T v) {
    return std::clamp(softplus(v), in.dt_min, in.dt_max);
}
template <typename T>
T dt_grad(const SsdInputs<T>& in, T v) {
    const T s = softplus(v);
    return s < in.dt_min || s > in.dt_max ? T(0) : softplus_grad(v);
}

// The backward splits the heads of each group into at most this many contiguous sets; each
// (batch, group, set) task sums its heads' contributions to dB and dC (shared by the group) into
// its own (T, N) buffer, added in set order afterwards. A constant, not the thread count, so the
// result is the same on every machine; the extra memory is 2 · 4 · B · T · G · N values.
constexpr int64_t kHeadSets = 4;

void check_dims(const SsdDims& d) {
    MSLM_CHECK(d.chunk_size > 0, "ssd: chunk_size {} must be positive", d.chunk_size);
    MSLM_CHECK(d.n_groups > 0 && d.n_heads % d.n_groups == 0, "ssd: {} heads do not split into {} groups",
               d.n_heads, d.n_groups);
}

// One chunk of one (batch, head): rows [row0, row0 + L) of the flattened (B·T) sequence.
template <typename T>
struct Chunk {
    int64_t row0, L;
    const T* x;  // (L, P), row stride ld_x
    const T* B;  // (L, N), row stride ld_B
    const T* C;  // (L, N), row stride ld_C
};

template <typename T>
Chunk<T> chunk_at(const SsdInputs<T>& in, const SsdDims& d, int64_t b, int64_t h, int64_t c0) {
    const int64_t g = h / (d.n_heads / d.n_groups);
    const int64_t row0 = b * d.seqlen + c0;
    return {row0, std::min(d.chunk_size, d.seqlen - c0), in.x + row0 * in.ld_x + h * d.head_dim,
            in.Bm + row0 * in.ld_B + g * d.d_state, in.Cm + row0 * in.ld_C + g * d.d_state};
}

// Per-chunk decays, with a_t = dtv_t · A (≤ 0):
//   dtv (L)  = softplus(dt + bias)
//   cum (L)  = a_0 + … + a_t            exp(cum_t) carries the entering state to step t
//   tail (L) = a_{t+1} + … + a_{L−1}    exp(tail_s) carries step s to the chunk end
// tail is summed directly rather than as cum_last − cum_t, whose cancellation would cost
// |cum| · ε of relative accuracy in fp32.
template <typename T>
void chunk_decay(T* dtv, T* cum, T* tail, const SsdInputs<T>& in, const Chunk<T>& ch, int64_t h, T bias,
                 T A) {
    T run = 0;
    for (int64_t t = 0; t < ch.L; ++t) {
        dtv[t] = dt_value(in, in.dt[(ch.row0 + t) * in.ld_dt + h] + bias);
        run += dtv[t] * A;
        cum[t] = run;
    }
    run = 0;
    for (int64_t t = ch.L - 1; t >= 0; --t) {
        tail[t] = run;
        run += dtv[t] * A;
    }
}

// Lm (L, L): Lm[t, s] = exp(a_{s+1} + … + a_t) for s ≤ t, else 0; summed along each segment for
// the same reason as tail.
template <typename T>
void segsum_exp(T* Lm, const T* dtv, T A, int64_t L) {
    for (int64_t t = 0; t < L; ++t) {
        T seg = 0;
        T* row = Lm + t * L;
        for (int64_t s = t; s >= 0; --s) {
            row[s] = seg;  // the exponent first; exponentiated below
            seg += dtv[s] * A;
        }
        if constexpr (std::is_same_v<T, float>)
            vec_array::exp_nonpositive(row, row, t + 1);  // every segment sum is ≤ 0
        else
            for (int64_t s = 0; s <= t; ++s) row[s] = std::exp(row[s]);
        std::fill(row + t + 1, row + L, T(0));
    }
}

// S (P, N) ← exp(cum_last) · S + Σ_s exp(tail_s) · dtv_s · x_s ⊗ B_s. W is (L, N) scratch.
template <typename T>
void chunk_state_update(T* S, T* W, const Chunk<T>& ch, int64_t ld_x, int64_t ld_B, const T* dtv,
                        const T* cum, const T* tail, int64_t P, int64_t N) {
    const int64_t L = ch.L;
    for (int64_t s = 0; s < L; ++s) {
        const T f = std::exp(tail[s]) * dtv[s];
        for (int64_t n = 0; n < N; ++n) W[s * N + n] = f * ch.B[s * ld_B + n];
    }
    const T e_last = std::exp(cum[L - 1]);
    for (int64_t i = 0; i < P * N; ++i) S[i] *= e_last;
    gemm<T>(true, false, int(P), int(N), int(L), T(1), ch.x, int(ld_x), W, int(N), T(1), S, int(N));
}

// ---- The recurrence vectorised over the state dimension (float), for prefill and decode steps.
// S (P, N) of one head advances over n tokens; every row of S is updated with W-wide vectors over
// N and y_t[p] = Σ_n S[p, n]·C_t[n] is reduced from one vector accumulator. Needs N % W == 0.

enum class SsdIsa { Scalar, Avx2, Avx512 };

SsdIsa ssd_isa() {
    static const SsdIsa chosen = [] {
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
            __builtin_cpu_supports("fma"))
            return SsdIsa::Avx512;
        if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return SsdIsa::Avx2;
        return SsdIsa::Scalar;
    }();
    return chosen;
}

// Sum of the lanes by halving in registers (the same order for every call).
[[gnu::always_inline]] inline float lane_total(const vec::F<4>& v) {
    const vec::F<2> a = __builtin_shufflevector(v, v, 0, 1) + __builtin_shufflevector(v, v, 2, 3);
    return a[0] + a[1];
}
[[gnu::always_inline]] inline float lane_total(const vec::F<8>& v) {
    return lane_total(
        vec::F<4>(__builtin_shufflevector(v, v, 0, 1, 2, 3) + __builtin_shufflevector(v, v, 4, 5, 6, 7)));
}
[[gnu::always_inline]] inline float lane_total(const vec::F<16>& v) {
    return lane_total(vec::F<8>(__builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
                                __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15)));
}

// Tokens [t, t + R) of one head: each vector of a row of S is loaded once, advanced through the R
// tokens in registers and stored once, so the state's loads and stores are shared by R tokens.
// State storage of the recurrence: fp32, or bf16 patterns widened on load and rounded to nearest
// even on store (ssd_update_bf16_state).
template <class V>
[[gnu::always_inline]] inline void load_state(V& out, const float* p) {
    vec::load(out, p);
}
template <class V>
[[gnu::always_inline]] inline void store_state(float* p, const V& v) {
    vec::store(p, v);
}
template <class V>
[[gnu::always_inline]] inline void load_state(V& out, const uint16_t* p) {
    using I = decltype(out < out);
    I u;
    for (int i = 0; i < int(sizeof(V) / 4); ++i) u[i] = int32_t(uint32_t(p[i]) << 16);
    out = __builtin_bit_cast(V, u);
}
template <class V>
[[gnu::always_inline]] inline void store_state(uint16_t* p, const V& v) {
    using I = decltype(v < v);
    const I u = __builtin_bit_cast(I, v);
    // f32_to_bf16 for finite values: + 0x7fff + the lowest kept bit, then the high half.
    const I r = u + 0x7fff + ((u >> 16) & 1);
    for (int i = 0; i < int(sizeof(V) / 4); ++i) p[i] = uint16_t(uint32_t(r[i]) >> 16);
}

template <int W, int R, typename SS>
[[gnu::always_inline]] inline void recurrent_tokens(SS* S, float* y, int64_t ld_y, const SsdInputs<float>& in,
                                                    int64_t row, int64_t h, int64_t g, int64_t P, int64_t N,
                                                    float A, float bias, float Dh) {
    using V = vec::F<W>;
    float dtv[R], decay[R];
    const float *xt[R], *Bt[R], *Ct[R];
    for (int r = 0; r < R; ++r) {
        dtv[r] = dt_value(in, in.dt[(row + r) * in.ld_dt + h] + bias);
        decay[r] = std::exp(dtv[r] * A);
        xt[r] = in.x + (row + r) * in.ld_x + h * P;
        Bt[r] = in.Bm + (row + r) * in.ld_B + g * N;
        Ct[r] = in.Cm + (row + r) * in.ld_C + g * N;
    }
    for (int64_t p = 0; p < P; ++p) {
        SS* Sp = S + p * N;
        float xdt[R];
        for (int r = 0; r < R; ++r) xdt[r] = dtv[r] * xt[r][p];
        V acc[R] = {};
        for (int64_t k = 0; k < N; k += W) {
            V sv;
            load_state(sv, Sp + k);
            for (int r = 0; r < R; ++r) {
                V bv, cv;
                vec::load(bv, Bt[r] + k);
                vec::load(cv, Ct[r] + k);
                sv = decay[r] * sv + xdt[r] * bv;
                acc[r] += sv * cv;
            }
            store_state(Sp + k, sv);
        }
        for (int r = 0; r < R; ++r) y[r * ld_y + p] = lane_total(acc[r]) + Dh * xt[r][p];
    }
}

// Rows [row0, row0 + n) of the inputs, head h of group g; y row t at y + t·ld_y. The arithmetic of
// a token does not depend on how tokens are grouped, so prefill and single steps give the same bits.
template <int W, typename SS = float>
[[gnu::always_inline]] inline void recurrent_head(SS* S, float* y, int64_t ld_y, const SsdInputs<float>& in,
                                                  int64_t row0, int64_t n, int64_t h, int64_t g, int64_t P,
                                                  int64_t N) {
    const float A = -std::exp(in.A_log[h]);
    const float bias = in.dt_bias ? in.dt_bias[h] : 0.0f;
    const float Dh = in.D ? in.D[h] : 0.0f;
    int64_t t = 0;
    for (; t + 4 <= n; t += 4)
        recurrent_tokens<W, 4>(S, y + t * ld_y, ld_y, in, row0 + t, h, g, P, N, A, bias, Dh);
    for (; t < n; ++t) recurrent_tokens<W, 1>(S, y + t * ld_y, ld_y, in, row0 + t, h, g, P, N, A, bias, Dh);
}

// The per-ISA builds, for fp32 states (SS = float) and bf16 ones (SS = uint16_t).
template <typename SS>
__attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,fma"))) void recurrent_head_avx512(
    SS* S, float* y, int64_t ld_y, const SsdInputs<float>& in, int64_t row0, int64_t n, int64_t h, int64_t g,
    int64_t P, int64_t N) {
    recurrent_head<16>(S, y, ld_y, in, row0, n, h, g, P, N);
}

template <typename SS>
__attribute__((target("avx2,fma"))) void recurrent_head_avx2(SS* S, float* y, int64_t ld_y,
                                                             const SsdInputs<float>& in, int64_t row0,
                                                             int64_t n, int64_t h, int64_t g, int64_t P,
                                                             int64_t N) {
    recurrent_head<8>(S, y, ld_y, in, row0, n, h, g, P, N);
}

template <typename SS>
using RecurrentHeadOf = void (*)(SS*, float*, int64_t, const SsdInputs<float>&, int64_t, int64_t, int64_t,
                                 int64_t, int64_t, int64_t);
using RecurrentHead = RecurrentHeadOf<float>;

// The vector kernel for this CPU and d_state, or null: then fp32 states take the scalar loops, and
// bf16 states are refused (those loops would sum in another order than a vector kernel).
template <typename SS = float>
RecurrentHeadOf<SS> recurrent_kernel(int64_t N) {
    switch (ssd_isa()) {
        case SsdIsa::Avx512:
            return N % 16 == 0 ? recurrent_head_avx512<SS> : N % 8 == 0 ? recurrent_head_avx2<SS> : nullptr;
        case SsdIsa::Avx2:
            return N % 8 == 0 ? recurrent_head_avx2<SS> : nullptr;
        case SsdIsa::Scalar:
            break;
    }
    return nullptr;
}

}  // namespace

bool ssd_update_bf16_state_supported(int64_t d_state) {
    return recurrent_kernel<uint16_t>(d_state) != nullptr;
}

void ssd_update_bf16_state(float* y, uint16_t* h, const int64_t* slots, const SsdInputs<float>& in,
                           const SsdDims& dims) {
    check_dims(dims);
    const int64_t k = dims.batch, H = dims.n_heads, P = dims.head_dim, N = dims.d_state;
    const RecurrentHeadOf<uint16_t> kernel = recurrent_kernel<uint16_t>(N);
    MSLM_CHECK(kernel, "ssd_update_bf16_state: d_state {} needs a multiple of 8 and AVX2", N);
    const int64_t heads_per_group = H / dims.n_groups;
    parallel_for(k * H, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
            const int64_t row = i / H, h_idx = i % H;
            kernel(h + (slots[row] * H + h_idx) * P * N, y + i * P, H * P, in, row, 1, h_idx,
                   h_idx / heads_per_group, P, N);
        }
    });
}

template <typename T>
void ssd_forward_sequential(T* y, T* h_last, const SsdInputs<T>& in, const T* h0, const SsdDims& dims) {
    check_dims(dims);
    const int64_t Bn = dims.batch, Tn = dims.seqlen, H = dims.n_heads, P = dims.head_dim, N = dims.d_state;
    const int64_t heads_per_group = H / dims.n_groups;
    parallel_for(Bn * H, [&](int64_t begin, int64_t end) {
        std::vector<T> S(P * N);  // (P, N)
        for (int64_t i = begin; i < end; ++i) {
            const int64_t b = i / H, h = i % H, g = h / heads_per_group;
            const T A = -std::exp(in.A_log[h]);
            const T bias = in.dt_bias ? in.dt_bias[h] : T(0);
            const T Dh = in.D ? in.D[h] : T(0);
            if (h0)
                std::copy(h0 + i * P * N, h0 + (i + 1) * P * N, S.begin());
            else
                std::fill(S.begin(), S.end(), T(0));
            for (int64_t t = 0; t < Tn; ++t) {
                const int64_t row = b * Tn + t;
                const T dtv = dt_value(in, in.dt[row * in.ld_dt + h] + bias);
                const T decay = std::exp(dtv * A);
                const T* xt = in.x + row * in.ld_x + h * P;
                const T* Bt = in.Bm + row * in.ld_B + g * N;
                const T* Ct = in.Cm + row * in.ld_C + g * N;
                T* yt = y + (row * H + h) * P;
                for (int64_t p = 0; p < P; ++p) {
                    T* Sp = S.data() + p * N;
                    const T xdt = dtv * xt[p];
                    T acc = 0;
                    for (int64_t n = 0; n < N; ++n) {
                        Sp[n] = decay * Sp[n] + xdt * Bt[n];
                        acc += Sp[n] * Ct[n];
                    }
                    yt[p] = acc + Dh * xt[p];
                }
            }
            if (h_last) std::copy(S.begin(), S.end(), h_last + i * P * N);
        }
    });
}

template <typename T>
void ssd_forward_recurrent(T* y, T* h_last, const SsdInputs<T>& in, const T* h0, const SsdDims& dims) {
    RecurrentHead kernel = nullptr;
    if constexpr (std::is_same_v<T, float>) kernel = recurrent_kernel(dims.d_state);
    if (!kernel) return ssd_forward_sequential(y, h_last, in, h0, dims);
    if constexpr (std::is_same_v<T, float>) {
        check_dims(dims);
        const int64_t Bn = dims.batch, Tn = dims.seqlen, H = dims.n_heads, P = dims.head_dim,
                      N = dims.d_state;
        const int64_t heads_per_group = H / dims.n_groups;
        parallel_for(Bn * H, [&](int64_t begin, int64_t end) {
            std::vector<float> S(P * N);
            for (int64_t i = begin; i < end; ++i) {
                const int64_t b = i / H, h = i % H;
                // In place when the state is both the start and the end (h0 == h_last).
                float* state = h_last && h0 == h_last ? h_last + i * P * N : S.data();
                if (state == S.data()) {
                    if (h0)
                        std::copy(h0 + i * P * N, h0 + (i + 1) * P * N, S.begin());
                    else
                        std::fill(S.begin(), S.end(), 0.0f);
                }
                kernel(state, y + (b * Tn * H + h) * P, H * P, in, b * Tn, Tn, h, h / heads_per_group, P, N);
                if (h_last && state == S.data()) std::copy(S.begin(), S.end(), h_last + i * P * N);
            }
        });
    }
}

template <typename T>
void ssd_forward(T* y, T* h_last, const SsdInputs<T>& in, const T* h0, const SsdDims& dims) {
    check_dims(dims);
    const int64_t Bn = dims.batch, Tn = dims.seqlen, H = dims.n_heads, P = dims.head_dim, N = dims.d_state;
    const int64_t Q = std::min(dims.chunk_size, std::max<int64_t>(Tn, 1));
    const int64_t ld_y = H * P;
    // C Bᵀ of a chunk depends on the group, not the head: computed once here for all the group's
    // heads (Mamba-2 models have one group, so this saves H − 1 of every H such products).
    const int64_t G = dims.n_groups, heads_per_group = H / G, n_chunks = (Tn + Q - 1) / Q;
    std::vector<T> CB(static_cast<size_t>(Bn * G * n_chunks * Q * Q));
    parallel_for(Bn * G * n_chunks, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
            const int64_t b = i / (G * n_chunks), g = i / n_chunks % G, c = i % n_chunks;
            const Chunk<T> ch = chunk_at(in, dims, b, g * heads_per_group, c * Q);
            gemm<T>(false, true, int(ch.L), int(ch.L), int(N), T(1), ch.C, int(in.ld_C), ch.B, int(in.ld_B),
                    T(0), CB.data() + i * Q * Q, int(ch.L));
        }
    });
    parallel_for(Bn * H, [&](int64_t begin, int64_t end) {
        std::vector<T> S(P * N), dtv(Q), cum(Q), tail(Q), M(Q * Q), Lm(Q * Q), W(Q * N);
        for (int64_t i = begin; i < end; ++i) {
            const int64_t b = i / H, h = i % H;
            const T* CB_bg = CB.data() + (b * G + h / heads_per_group) * n_chunks * Q * Q;
            const T A = -std::exp(in.A_log[h]);
            const T bias = in.dt_bias ? in.dt_bias[h] : T(0);
            if (h0)
                std::copy(h0 + i * P * N, h0 + (i + 1) * P * N, S.begin());
            else
                std::fill(S.begin(), S.end(), T(0));
            for (int64_t c0 = 0; c0 < Tn; c0 += Q) {
                const Chunk<T> ch = chunk_at(in, dims, b, h, c0);
                const int64_t L = ch.L;
                T* Yc = y + (ch.row0 * H + h) * P;  // (L, P), row stride H·P
                chunk_decay(dtv.data(), cum.data(), tail.data(), in, ch, h, bias, A);
                segsum_exp(Lm.data(), dtv.data(), A, L);

                // Within the chunk: Y = M X with M = (C Bᵀ ∘ exp(segsum)) · diag(dt), lower triangular.
                const T* CBc = CB_bg + (c0 / Q) * Q * Q;  // (L, L), row stride L
                for (int64_t t = 0; t < L; ++t)
                    for (int64_t s = 0; s < L; ++s) M[t * L + s] = CBc[t * L + s] * (Lm[t * L + s] * dtv[s]);
                gemm<T>(false, false, int(L), int(P), int(L), T(1), M.data(), int(L), ch.x, int(in.ld_x),
                        T(0), Yc, int(ld_y));

                // From earlier chunks: Y += diag(exp(cum)) C Sᵀ, S the state entering the chunk.
                for (int64_t t = 0; t < L; ++t) {
                    const T e = std::exp(cum[t]);
                    for (int64_t n = 0; n < N; ++n) W[t * N + n] = e * ch.C[t * in.ld_C + n];
                }
                gemm<T>(false, true, int(L), int(P), int(N), T(1), W.data(), int(N), S.data(), int(N), T(1),
                        Yc, int(ld_y));
                if (in.D)
                    for (int64_t t = 0; t < L; ++t)
                        for (int64_t p = 0; p < P; ++p) Yc[t * ld_y + p] += in.D[h] * ch.x[t * in.ld_x + p];

                chunk_state_update(S.data(), W.data(), ch, in.ld_x, in.ld_B, dtv.data(), cum.data(),
                                   tail.data(), P, N);
            }
            if (h_last) std::copy(S.begin(), S.end(), h_last + i * P * N);
        }
    });
}

// Per chunk, with X̃ = diag(dt) X, M = C Bᵀ ∘ Lm (Lm[t,s] = exp(cum_t − cum_s), s ≤ t) and S_in the
// state entering the chunk:
//   Y     = M X̃ + diag(exp(cum)) C S_inᵀ + D X
//   S_out = exp(cum_last) S_in + Σ_s exp(cum_last − cum_s) X̃_s ⊗ B_s
// The backward walks the chunks in reverse carrying dS = d loss / d S_out; the states entering
// each chunk are recomputed by a forward sweep first (one (P, N) checkpoint per chunk).
template <typename T>
void ssd_backward(const SsdGrads<T>& grads, const T* dy, const SsdInputs<T>& in, const T* h0,
                  const SsdDims& dims) {
    check_dims(dims);
    const int64_t Bn = dims.batch, Tn = dims.seqlen, H = dims.n_heads, P = dims.head_dim, N = dims.d_state;
    const int64_t G = dims.n_groups, heads_per_group = H / G;
    const int64_t Q = std::min(dims.chunk_size, std::max<int64_t>(Tn, 1));
    const int64_t n_chunks = (Tn + Q - 1) / Q;
    const int64_t n_sets = std::min(heads_per_group, kHeadSets);
    const int64_t ld_y = H * P;
    const bool need_dD = grads.dD != nullptr && in.D != nullptr;
    const bool need_dbias = grads.ddt_bias != nullptr && in.dt_bias != nullptr;
    if (grads.overwrite) {  // the activation gradients are written: start them at zero, then add
        auto zero_rows = [&](T* p, int64_t ld, int64_t width) {
            if (p)
                for (int64_t r = 0; r < Bn * Tn; ++r) std::fill_n(p + r * ld, width, T(0));
        };
        zero_rows(grads.dx, in.ld_x, H * P);
        zero_rows(grads.ddt, in.ld_dt, H);
        zero_rows(grads.dB, in.ld_B, G * N);
        zero_rows(grads.dC, in.ld_C, G * N);
    }

    // Partial sums reduced after the parallel part, in a fixed order.
    std::vector<T> part_dB(grads.dB ? Bn * G * n_sets * Tn * N : 0);  // (B, G, sets, T, N)
    std::vector<T> part_dC(grads.dC ? Bn * G * n_sets * Tn * N : 0);  // (B, G, sets, T, N)
    std::vector<T> part_dA(grads.dA_log ? Bn * H : 0);                // (B, H)
    std::vector<T> part_dD(need_dD ? Bn * H : 0);                     // (B, H)
    std::vector<T> part_dbias(need_dbias ? Bn * H : 0);               // (B, H)

    parallel_for(Bn * G * n_sets, [&](int64_t task_begin, int64_t task_end) {
        std::vector<T> states(std::max<int64_t>(n_chunks, 1) * P * N), dS(P * N), dtv(Q), cum(Q), tail(Q),
            dcum(Q);
        std::vector<T> M(Q * Q), Lm(Q * Q), dM(Q * Q), xdt(Q * P), dxdt(Q * P), dZ(Q * P), V(Q * P), U(Q * N);
        for (int64_t task = task_begin; task < task_end; ++task) {
            const int64_t b = task / (G * n_sets), g = task / n_sets % G, set = task % n_sets;
            T* pdB = grads.dB ? part_dB.data() + task * Tn * N : nullptr;  // (T, N)
            T* pdC = grads.dC ? part_dC.data() + task * Tn * N : nullptr;  // (T, N)
            const int64_t h_begin = g * heads_per_group + heads_per_group * set / n_sets;
            const int64_t h_end = g * heads_per_group + heads_per_group * (set + 1) / n_sets;
            for (int64_t h = h_begin; h < h_end; ++h) {
                const int64_t bh = b * H + h;
                const T A = -std::exp(in.A_log[h]);
                const T bias = in.dt_bias ? in.dt_bias[h] : T(0);
                const T Dh = in.D ? in.D[h] : T(0);

                // Forward sweep: states[c] (P, N) = the state entering chunk c.
                if (h0)
                    std::copy(h0 + bh * P * N, h0 + (bh + 1) * P * N, states.begin());
                else
                    std::fill(states.begin(), states.begin() + P * N, T(0));
                for (int64_t c = 0; c + 1 < n_chunks; ++c) {
                    const Chunk<T> ch = chunk_at(in, dims, b, h, c * Q);
                    chunk_decay(dtv.data(), cum.data(), tail.data(), in, ch, h, bias, A);
                    T* S_next = states.data() + (c + 1) * P * N;
                    std::copy(states.data() + c * P * N, states.data() + (c + 1) * P * N, S_next);
                    chunk_state_update(S_next, U.data(), ch, in.ld_x, in.ld_B, dtv.data(), cum.data(),
                                       tail.data(), P, N);
                }

                std::fill(dS.begin(), dS.end(), T(0));
                T dA_acc = 0, dD_acc = 0, dbias_acc = 0;
                for (int64_t c = n_chunks - 1; c >= 0; --c) {
                    const Chunk<T> ch = chunk_at(in, dims, b, h, c * Q);
                    const int64_t L = ch.L;
                    const T* S_in = states.data() + c * P * N;  // (P, N)
                    const T* dYc = dy + (ch.row0 * H + h) * P;  // (L, P), row stride H·P
                    T* cdB = pdB ? pdB + c * Q * N : nullptr;   // (L, N)
                    T* cdC = pdC ? pdC + c * Q * N : nullptr;   // (L, N)
                    chunk_decay(dtv.data(), cum.data(), tail.data(), in, ch, h, bias, A);
                    segsum_exp(Lm.data(), dtv.data(), A, L);
                    std::fill(dcum.begin(), dcum.end(), T(0));
                    for (int64_t s = 0; s < L; ++s)
                        for (int64_t p = 0; p < P; ++p) xdt[s * P + p] = dtv[s] * ch.x[s * in.ld_x + p];

                    // Intra-chunk term Y = M X̃.
                    gemm<T>(false, true, int(L), int(L), int(N), T(1), ch.C, int(in.ld_C), ch.B, int(in.ld_B),
                            T(0), M.data(), int(L));
                    for (int64_t i = 0; i < L * L; ++i) M[i] *= Lm[i];
                    // dM = dY X̃ᵀ (L, L) and dX̃ = Mᵀ dY (L, P)
                    gemm<T>(false, true, int(L), int(L), int(P), T(1), dYc, int(ld_y), xdt.data(), int(P),
                            T(0), dM.data(), int(L));
                    gemm<T>(true, false, int(L), int(P), int(L), T(1), M.data(), int(L), dYc, int(ld_y), T(0),
                            dxdt.data(), int(P));
                    // Through Lm: d cum_t += dM∘M summed over s, d cum_s −= the same. dM becomes
                    // d(C Bᵀ) = dM ∘ Lm, masked to the lower triangle.
                    for (int64_t t = 0; t < L; ++t)
                        for (int64_t s = 0; s < L; ++s) {
                            const int64_t ts = t * L + s;
                            if (s < t) {
                                const T e = dM[ts] * M[ts];
                                dcum[t] += e;
                                dcum[s] -= e;
                            }
                            dM[ts] *= Lm[ts];
                        }
                    if (cdC)
                        gemm<T>(false, false, int(L), int(N), int(L), T(1), dM.data(), int(L), ch.B,
                                int(in.ld_B), T(1), cdC, int(N));
                    if (cdB)
                        gemm<T>(true, false, int(L), int(N), int(L), T(1), dM.data(), int(L), ch.C,
                                int(in.ld_C), T(1), cdB, int(N));

                    // Inter-chunk term Y = diag(exp(cum)) Z with Z = C S_inᵀ (L, P); dZ = diag(exp(cum)) dY.
                    gemm<T>(false, true, int(L), int(P), int(N), T(1), ch.C, int(in.ld_C), S_in, int(N), T(0),
                            dZ.data(), int(P));
                    for (int64_t t = 0; t < L; ++t) {
                        const T e = std::exp(cum[t]);
                        T dot = 0;
                        for (int64_t p = 0; p < P; ++p) {
                            dot += dYc[t * ld_y + p] * dZ[t * P + p];
                            dZ[t * P + p] = e * dYc[t * ld_y + p];
                        }
                        dcum[t] += e * dot;
                    }
                    if (cdC)
                        gemm<T>(false, false, int(L), int(N), int(P), T(1), dZ.data(), int(P), S_in, int(N),
                                T(1), cdC, int(N));

                    // State passed on: S_out = exp(cum_last) S_in + Σ_s decay_s X̃_s ⊗ B_s with
                    // decay_s = exp(tail_s) = exp(cum_last − cum_s). V = B dSᵀ (L, P), U = X̃ dS (L, N).
                    gemm<T>(false, true, int(L), int(P), int(N), T(1), ch.B, int(in.ld_B), dS.data(), int(N),
                            T(0), V.data(), int(P));
                    gemm<T>(false, false, int(L), int(N), int(P), T(1), xdt.data(), int(P), dS.data(), int(N),
                            T(0), U.data(), int(N));
                    for (int64_t s = 0; s < L; ++s) {
                        const T decay = std::exp(tail[s]);
                        T q = 0;  // d loss / d decay_s
                        for (int64_t p = 0; p < P; ++p) {
                            q += xdt[s * P + p] * V[s * P + p];
                            dxdt[s * P + p] += decay * V[s * P + p];
                        }
                        if (s < L - 1) {
                            dcum[L - 1] += q * decay;
                            dcum[s] -= q * decay;
                        }
                        if (cdB)
                            for (int64_t n = 0; n < N; ++n) cdB[s * N + n] += decay * U[s * N + n];
                    }
                    const T e_last = std::exp(cum[L - 1]);
                    T dS_dot_S = 0;
                    for (int64_t i = 0; i < P * N; ++i) dS_dot_S += dS[i] * S_in[i];
                    dcum[L - 1] += e_last * dS_dot_S;
                    // d loss / d S_in, which is the previous chunk's dS.
                    for (int64_t i = 0; i < P * N; ++i) dS[i] *= e_last;
                    gemm<T>(true, false, int(P), int(N), int(L), T(1), dZ.data(), int(P), ch.C, int(in.ld_C),
                            T(1), dS.data(), int(N));

                    // cum_t = Σ_{r ≤ t} dt_r · A, so d loss / d (dt_r · A) = Σ_{t ≥ r} dcum_t.
                    T da = 0;
                    for (int64_t t = L - 1; t >= 0; --t) {
                        da += dcum[t];
                        const int64_t row = ch.row0 + t;
                        const T* xt = ch.x + t * in.ld_x;
                        const T* dyt = dYc + t * ld_y;
                        T ddtv = da * A;
                        for (int64_t p = 0; p < P; ++p) ddtv += xt[p] * dxdt[t * P + p];
                        dA_acc += da * dtv[t];
                        if (grads.dx) {
                            T* dxt = grads.dx + row * in.ld_x + h * P;
                            for (int64_t p = 0; p < P; ++p) dxt[p] += dtv[t] * dxdt[t * P + p] + Dh * dyt[p];
                        }
                        for (int64_t p = 0; p < P; ++p) dD_acc += dyt[p] * xt[p];
                        const T draw = ddtv * dt_grad(in, in.dt[row * in.ld_dt + h] + bias);
                        if (grads.ddt) grads.ddt[row * in.ld_dt + h] += draw;
                        dbias_acc += draw;
                    }
                }
                // A = −exp(A_log), so dA/dA_log = A.
                if (grads.dA_log) part_dA[bh] = dA_acc * A;
                if (need_dD) part_dD[bh] = dD_acc;
                if (need_dbias) part_dbias[bh] = dbias_acc;
            }
        }
    });

    auto reduce_rows = [&](T* dst, int64_t ld, const std::vector<T>& part) {
        parallel_for(Bn * Tn, [&](int64_t begin, int64_t end) {
            for (int64_t row = begin; row < end; ++row) {
                const int64_t b = row / Tn, t = row % Tn;
                for (int64_t g = 0; g < G; ++g)
                    for (int64_t n = 0; n < N; ++n) {
                        T acc = 0;
                        for (int64_t set = 0; set < n_sets; ++set)
                            acc += part[(((b * G + g) * n_sets + set) * Tn + t) * N + n];
                        dst[row * ld + g * N + n] += acc;
                    }
            }
        });
    };
    if (grads.dB) reduce_rows(grads.dB, in.ld_B, part_dB);
    if (grads.dC) reduce_rows(grads.dC, in.ld_C, part_dC);
    for (int64_t b = 0; b < Bn; ++b)
        for (int64_t h = 0; h < H; ++h) {
            if (grads.dA_log) grads.dA_log[h] += part_dA[b * H + h];
            if (need_dD) grads.dD[h] += part_dD[b * H + h];
            if (need_dbias) grads.ddt_bias[h] += part_dbias[b * H + h];
        }
}

template <typename T>
void ssd_update(T* y, T* h, const int64_t* slots, const SsdInputs<T>& in, const SsdDims& dims) {
    check_dims(dims);
    const int64_t k = dims.batch, H = dims.n_heads, P = dims.head_dim, N = dims.d_state;
    const int64_t heads_per_group = H / dims.n_groups;
    if constexpr (std::is_same_v<T, float>) {
        if (RecurrentHead kernel = recurrent_kernel(N)) {
            parallel_for(k * H, [&](int64_t begin, int64_t end) {
                for (int64_t i = begin; i < end; ++i) {
                    const int64_t row = i / H, h_idx = i % H;
                    kernel(h + (slots[row] * H + h_idx) * P * N, y + i * P, H * P, in, row, 1, h_idx,
                           h_idx / heads_per_group, P, N);
                }
            });
            return;
        }
    }
    parallel_for(k * H, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
            const int64_t row = i / H, h_idx = i % H, g = h_idx / heads_per_group;
            T* S = h + (slots[row] * H + h_idx) * P * N;  // (P, N)
            const T dtv =
                dt_value(in, in.dt[row * in.ld_dt + h_idx] + (in.dt_bias ? in.dt_bias[h_idx] : T(0)));
            const T decay = std::exp(dtv * -std::exp(in.A_log[h_idx]));
            const T Dh = in.D ? in.D[h_idx] : T(0);
            const T* xt = in.x + row * in.ld_x + h_idx * P;
            const T* Bt = in.Bm + row * in.ld_B + g * N;
            const T* Ct = in.Cm + row * in.ld_C + g * N;
            T* yt = y + i * P;
            for (int64_t p = 0; p < P; ++p) {
                T* Sp = S + p * N;
                const T xdt = dtv * xt[p];
                T acc = 0;
                for (int64_t n = 0; n < N; ++n) {
                    Sp[n] = decay * Sp[n] + xdt * Bt[n];
                    acc += Sp[n] * Ct[n];
                }
                yt[p] = acc + Dh * xt[p];
            }
        }
    });
}

template void ssd_forward<float>(float*, float*, const SsdInputs<float>&, const float*, const SsdDims&);
template void ssd_forward<double>(double*, double*, const SsdInputs<double>&, const double*, const SsdDims&);
template void ssd_forward_sequential<float>(float*, float*, const SsdInputs<float>&, const float*,
                                            const SsdDims&);
template void ssd_forward_sequential<double>(double*, double*, const SsdInputs<double>&, const double*,
                                             const SsdDims&);
template void ssd_forward_recurrent<float>(float*, float*, const SsdInputs<float>&, const float*,
                                           const SsdDims&);
template void ssd_forward_recurrent<double>(double*, double*, const SsdInputs<double>&, const double*,
                                            const SsdDims&);
template void ssd_backward<float>(const SsdGrads<float>&, const float*, const SsdInputs<float>&, const float*,
                                  const SsdDims&);
template void ssd_backward<double>(const SsdGrads<double>&, const double*, const SsdInputs<double>&,
                                   const double*, const SsdDims&);
template void ssd_update<float>(float*, float*, const int64_t*, const SsdInputs<float>&, const SsdDims&);
template void ssd_update<double>(double*, double*, const int64_t*, const SsdInputs<double>&, const SsdDims&);

}  // namespace mslm::ops
