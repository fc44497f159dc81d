#include "ops/selective_scan.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/thread_pool.h"
#include "ops/cpu/scalar_math.h"

namespace mslm::ops {
namespace {

// The backward splits the channels into this many contiguous groups; each (batch, group) task
// sums its channels' contributions to dB and dC (shared by all channels) into its own (T, N)
// buffer, and the buffers are added in group order afterwards. A constant, not the thread count,
// so the result is the same on every machine; 8 keeps the extra memory at 16 · B · T · N values
// while giving 8 · B tasks to the pool.
constexpr int64_t kChannelGroups = 8;

}  // namespace

template <typename T>
void selective_scan_forward(T* y, T* h_last, const SelectiveScanInputs<T>& in, const T* h0,
                            const ScanDims& dims) {
    const int64_t Bn = dims.batch, Tn = dims.seqlen, Din = dims.d_inner, N = dims.d_state;
    parallel_for(Bn * Din, [&](int64_t begin, int64_t end) {
        std::vector<T> A(N), h(N);
        for (int64_t i = begin; i < end; ++i) {
            const int64_t b = i / Din, d = i % Din;
            for (int64_t n = 0; n < N; ++n) {
                A[n] = -std::exp(in.A_log[d * N + n]);
                h[n] = h0 ? h0[i * N + n] : T(0);
            }
            const T bias = in.delta_bias ? in.delta_bias[d] : T(0);
            for (int64_t t = 0; t < Tn; ++t) {
                const int64_t row = b * Tn + t;
                const T dl = softplus(in.delta[row * in.ld_delta + d] + bias);
                const T u = in.u[row * in.ld_u + d];
                const T* Bt = in.Bm + row * in.ld_B;  // (N)
                const T* Ct = in.Cm + row * in.ld_C;  // (N)
                T acc = 0;
                for (int64_t n = 0; n < N; ++n) {
                    h[n] = std::exp(dl * A[n]) * h[n] + dl * Bt[n] * u;
                    acc += Ct[n] * h[n];
                }
                if (in.D) acc += in.D[d] * u;
                if (in.z) {
                    const T z = in.z[row * in.ld_z + d];
                    acc *= z * sigmoid(z);
                }
                y[row * Din + d] = acc;
            }
            if (h_last) std::copy(h.begin(), h.end(), h_last + i * N);
        }
    });
}

template <typename T>
void selective_scan_backward(const SelectiveScanGrads<T>& grads, const T* dy,
                             const SelectiveScanInputs<T>& in, const T* h0, const ScanDims& dims) {
    const int64_t Bn = dims.batch, Tn = dims.seqlen, Din = dims.d_inner, N = dims.d_state;
    const int64_t n_groups = std::min(Din, kChannelGroups);
    const bool need_dA = grads.dA_log != nullptr;
    const bool need_dD = grads.dD != nullptr && in.D != nullptr;
    const bool need_dbias = grads.ddelta_bias != nullptr && in.delta_bias != nullptr;

    // Partial sums reduced after the parallel part, in a fixed order.
    std::vector<T> part_dB(grads.dB ? Bn * n_groups * Tn * N : 0);  // (B, groups, T, N)
    std::vector<T> part_dC(grads.dC ? Bn * n_groups * Tn * N : 0);  // (B, groups, T, N)
    std::vector<T> part_dA(need_dA ? Bn * Din * N : 0);             // (B, Din, N)
    std::vector<T> part_dD(need_dD ? Bn * Din : 0);                 // (B, Din)
    std::vector<T> part_dbias(need_dbias ? Bn * Din : 0);           // (B, Din)

    parallel_for(Bn * n_groups, [&](int64_t task_begin, int64_t task_end) {
        // The forward is recomputed per channel into these (T, N) buffers: h_t and exp(Δ_t · A).
        std::vector<T> hs(Tn * N), decay(Tn * N), dl(Tn), A(N), dh(N), dA(N), zeros(N, T(0));
        for (int64_t task = task_begin; task < task_end; ++task) {
            const int64_t b = task / n_groups, grp = task % n_groups;
            const int64_t d_begin = Din * grp / n_groups, d_end = Din * (grp + 1) / n_groups;
            T* pdB = grads.dB ? part_dB.data() + task * Tn * N : nullptr;  // (T, N)
            T* pdC = grads.dC ? part_dC.data() + task * Tn * N : nullptr;  // (T, N)
            for (int64_t d = d_begin; d < d_end; ++d) {
                const int64_t bd = b * Din + d;
                const T bias = in.delta_bias ? in.delta_bias[d] : T(0);
                const T Dd = in.D ? in.D[d] : T(0);
                const T* h_init = h0 ? h0 + bd * N : zeros.data();
                for (int64_t n = 0; n < N; ++n) A[n] = -std::exp(in.A_log[d * N + n]);

                for (int64_t t = 0; t < Tn; ++t) {
                    const int64_t row = b * Tn + t;
                    dl[t] = softplus(in.delta[row * in.ld_delta + d] + bias);
                    const T u = in.u[row * in.ld_u + d];
                    const T* Bt = in.Bm + row * in.ld_B;
                    const T* h_prev = t > 0 ? hs.data() + (t - 1) * N : h_init;
                    for (int64_t n = 0; n < N; ++n) {
                        decay[t * N + n] = std::exp(dl[t] * A[n]);
                        hs[t * N + n] = decay[t * N + n] * h_prev[n] + dl[t] * Bt[n] * u;
                    }
                }

                // dh holds d loss / d h_t; it flows to h_{t−1} through the decay.
                std::fill(dh.begin(), dh.end(), T(0));
                std::fill(dA.begin(), dA.end(), T(0));
                T dD_acc = 0, dbias_acc = 0;
                for (int64_t t = Tn - 1; t >= 0; --t) {
                    const int64_t row = b * Tn + t;
                    const T u = in.u[row * in.ld_u + d];
                    const T* Bt = in.Bm + row * in.ld_B;
                    const T* Ct = in.Cm + row * in.ld_C;
                    const T* h = hs.data() + t * N;
                    const T* h_prev = t > 0 ? hs.data() + (t - 1) * N : h_init;
                    const T* dec = decay.data() + t * N;

                    T dy_ssm = dy[row * Din + d];  // d loss / d (C·h + D·u)
                    if (in.z) {
                        const T z = in.z[row * in.ld_z + d];
                        const T s = sigmoid(z);
                        T y_ssm = Dd * u;
                        for (int64_t n = 0; n < N; ++n) y_ssm += Ct[n] * h[n];
                        if (grads.dz)
                            grads.dz[row * in.ld_z + d] += dy_ssm * y_ssm * s * (T(1) + z * (T(1) - s));
                        dy_ssm *= z * s;
                    }
                    dD_acc += dy_ssm * u;
                    T du = dy_ssm * Dd, ddl = 0;
                    for (int64_t n = 0; n < N; ++n) {
                        if (pdC) pdC[t * N + n] += dy_ssm * h[n];
                        const T g = dh[n] + dy_ssm * Ct[n];      // d loss / d h_t, complete
                        const T g_exp = g * h_prev[n] * dec[n];  // d loss / d (Δ_t · A_n)
                        ddl += g_exp * A[n] + g * Bt[n] * u;
                        dA[n] += g_exp * dl[t];
                        if (pdB) pdB[t * N + n] += g * dl[t] * u;
                        du += g * dl[t] * Bt[n];
                        dh[n] = g * dec[n];
                    }
                    const T ddelta = ddl * softplus_grad(in.delta[row * in.ld_delta + d] + bias);
                    if (grads.du) grads.du[row * in.ld_u + d] += du;
                    if (grads.ddelta) grads.ddelta[row * in.ld_delta + d] += ddelta;
                    dbias_acc += ddelta;
                }
                // A = −exp(A_log), so dA/dA_log = A.
                if (need_dA)
                    for (int64_t n = 0; n < N; ++n) part_dA[bd * N + n] = dA[n] * A[n];
                if (need_dD) part_dD[bd] = dD_acc;
                if (need_dbias) part_dbias[bd] = dbias_acc;
            }
        }
    });

    auto reduce_rows = [&](T* dst, int64_t ld, const std::vector<T>& part) {
        parallel_for(Bn * Tn, [&](int64_t begin, int64_t end) {
            for (int64_t row = begin; row < end; ++row) {
                const int64_t b = row / Tn, t = row % Tn;
                for (int64_t n = 0; n < N; ++n) {
                    T acc = 0;
                    for (int64_t grp = 0; grp < n_groups; ++grp)
                        acc += part[((b * n_groups + grp) * Tn + t) * N + n];
                    dst[row * ld + n] += acc;
                }
            }
        });
    };
    if (grads.dB) reduce_rows(grads.dB, in.ld_B, part_dB);
    if (grads.dC) reduce_rows(grads.dC, in.ld_C, part_dC);
    for (int64_t b = 0; b < Bn; ++b) {
        if (need_dA)
            for (int64_t i = 0; i < Din * N; ++i) grads.dA_log[i] += part_dA[b * Din * N + i];
        for (int64_t d = 0; d < Din; ++d) {
            if (need_dD) grads.dD[d] += part_dD[b * Din + d];
            if (need_dbias) grads.ddelta_bias[d] += part_dbias[b * Din + d];
        }
    }
}

template <typename T>
void selective_scan_update(T* y, T* h, const int64_t* slots, const SelectiveScanInputs<T>& in, int64_t k,
                           int64_t d_inner, int64_t d_state) {
    const int64_t Din = d_inner, N = d_state;
    parallel_for(
        k * Din,
        [&](int64_t begin, int64_t end) {
            for (int64_t i = begin; i < end; ++i) {
                const int64_t row = i / Din, d = i % Din;
                T* hd = h + (slots[row] * Din + d) * N;  // (N)
                const T dl =
                    softplus(in.delta[row * in.ld_delta + d] + (in.delta_bias ? in.delta_bias[d] : T(0)));
                const T u = in.u[row * in.ld_u + d];
                const T* Bt = in.Bm + row * in.ld_B;
                const T* Ct = in.Cm + row * in.ld_C;
                const T* A_log = in.A_log + d * N;
                T acc = 0;
                for (int64_t n = 0; n < N; ++n) {
                    hd[n] = std::exp(dl * -std::exp(A_log[n])) * hd[n] + dl * Bt[n] * u;
                    acc += Ct[n] * hd[n];
                }
                if (in.D) acc += in.D[d] * u;
                if (in.z) {
                    const T z = in.z[row * in.ld_z + d];
                    acc *= z * sigmoid(z);
                }
                y[row * Din + d] = acc;
            }
        },
        64);
}

template void selective_scan_forward<float>(float*, float*, const SelectiveScanInputs<float>&, const float*,
                                            const ScanDims&);
template void selective_scan_forward<double>(double*, double*, const SelectiveScanInputs<double>&,
                                             const double*, const ScanDims&);
template void selective_scan_backward<float>(const SelectiveScanGrads<float>&, const float*,
                                             const SelectiveScanInputs<float>&, const float*,
                                             const ScanDims&);
template void selective_scan_backward<double>(const SelectiveScanGrads<double>&, const double*,
                                              const SelectiveScanInputs<double>&, const double*,
                                              const ScanDims&);
template void selective_scan_update<float>(float*, float*, const int64_t*, const SelectiveScanInputs<float>&,
                                           int64_t, int64_t, int64_t);
template void selective_scan_update<double>(double*, double*, const int64_t*,
                                            const SelectiveScanInputs<double>&, int64_t, int64_t, int64_t);

}  // namespace mslm::ops
