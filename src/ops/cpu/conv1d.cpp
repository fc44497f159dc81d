#include "ops/conv1d.h"

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "core/thread_pool.h"
#include "ops/cpu/scalar_math.h"
#include "ops/cpu/vec_array.h"

namespace mslm::ops {
namespace {

// Channels per backward task. Fixed (not derived from the thread count) so that the order in
// which dw and dbias are summed, and therefore their bits, does not depend on the machine.
constexpr int64_t kChannelBlock = 32;

}  // namespace

template <typename T>
void conv1d_causal_forward(T* out, T* pre, const T* x, int64_t ld_x, const T* w, const T* bias, int64_t B,
                           int64_t Tn, int64_t C, int64_t K, bool silu) {
    // w transposed to (K, C) so that the inner loop runs over contiguous channels.
    std::vector<T> wt(static_cast<size_t>(K * C));
    for (int64_t c = 0; c < C; ++c)
        for (int64_t k = 0; k < K; ++k) wt[k * C + c] = w[c * K + k];

    parallel_for(
        B * Tn,
        [&](int64_t begin, int64_t end) {
            for (int64_t row = begin; row < end; ++row) {
                const int64_t b = row / Tn, t = row % Tn;
                T* o = out + row * C;  // (C)
                for (int64_t c = 0; c < C; ++c) o[c] = bias ? bias[c] : T(0);
                // Tap k reads token t − (K − 1) + k; taps before the sequence start see zeros.
                for (int64_t k = std::max<int64_t>(0, K - 1 - t); k < K; ++k) {
                    const T* xr = x + (b * Tn + t - (K - 1) + k) * ld_x;
                    const T* wk = wt.data() + k * C;
                    for (int64_t c = 0; c < C; ++c) o[c] += wk[c] * xr[c];
                }
                if (!silu) continue;
                if (pre) std::copy(o, o + C, pre + row * C);
                if constexpr (std::is_same_v<T, float>)
                    vec_array::silu(o, o, C);
                else
                    for (int64_t c = 0; c < C; ++c) o[c] *= sigmoid(o[c]);
            }
        },
        16);
}

template <typename T>
void conv1d_causal_backward(T* dx, T* dw, T* dbias, const T* dout, const T* x, int64_t ld_x, const T* w,
                            const T* bias, int64_t B, int64_t Tn, int64_t C, int64_t K, bool silu) {
    // Tasks own disjoint channel blocks, so dx, dw and dbias are written without races; each task
    // walks (b, t) in order, which fixes the summation order of dw and dbias.
    const int64_t n_blocks = (C + kChannelBlock - 1) / kChannelBlock;
    parallel_for(n_blocks, [&](int64_t block_begin, int64_t block_end) {
        std::vector<T> g(kChannelBlock), dw_acc(kChannelBlock * K), db_acc(kChannelBlock);
        for (int64_t blk = block_begin; blk < block_end; ++blk) {
            const int64_t c0 = blk * kChannelBlock, nc = std::min(kChannelBlock, C - c0);
            std::fill(dw_acc.begin(), dw_acc.end(), T(0));
            std::fill(db_acc.begin(), db_acc.end(), T(0));
            for (int64_t b = 0; b < B; ++b) {
                for (int64_t t = 0; t < Tn; ++t) {
                    const int64_t k_first = std::max<int64_t>(0, K - 1 - t);
                    const T* dout_row = dout + (b * Tn + t) * C + c0;
                    // g = d loss / d pre-activation for this row's channels (C block)
                    if (silu) {
                        for (int64_t j = 0; j < nc; ++j) g[j] = bias ? bias[c0 + j] : T(0);
                        for (int64_t k = k_first; k < K; ++k) {
                            const T* xr = x + (b * Tn + t - (K - 1) + k) * ld_x + c0;
                            for (int64_t j = 0; j < nc; ++j) g[j] += w[(c0 + j) * K + k] * xr[j];
                        }
                        for (int64_t j = 0; j < nc; ++j) {
                            const T s = sigmoid(g[j]);
                            g[j] = dout_row[j] * s * (T(1) + g[j] * (T(1) - s));
                        }
                    } else {
                        std::copy(dout_row, dout_row + nc, g.begin());
                    }
                    for (int64_t j = 0; j < nc; ++j) db_acc[j] += g[j];
                    for (int64_t k = k_first; k < K; ++k) {
                        const int64_t src = (b * Tn + t - (K - 1) + k) * ld_x + c0;
                        const T* xr = x + src;
                        for (int64_t j = 0; j < nc; ++j) dw_acc[j * K + k] += g[j] * xr[j];
                        if (dx)
                            for (int64_t j = 0; j < nc; ++j) dx[src + j] += g[j] * w[(c0 + j) * K + k];
                    }
                }
            }
            if (dw)
                for (int64_t i = 0; i < nc * K; ++i) dw[c0 * K + i] += dw_acc[i];
            if (dbias)
                for (int64_t j = 0; j < nc; ++j) dbias[c0 + j] += db_acc[j];
        }
    });
}

template <typename T>
void conv1d_causal_update(T* out, T* state, const int64_t* slots, const T* x, int64_t ld_x, const T* w,
                          const T* bias, int64_t k, int64_t C, int64_t K, bool silu) {
    // Tasks own (row, channel block) pairs; channels of one row are independent.
    const int64_t n_blocks = (C + kChannelBlock - 1) / kChannelBlock;
    parallel_for(
        k * n_blocks,
        [&](int64_t begin, int64_t end) {
            for (int64_t task = begin; task < end; ++task) {
                const int64_t i = task / n_blocks, c0 = task % n_blocks * kChannelBlock;
                const int64_t c1 = std::min(C, c0 + kChannelBlock);
                T* win = state + slots[i] * (K - 1) * C;  // (K − 1, C)
                const T* xr = x + i * ld_x;
                T* o = out + i * C;
                for (int64_t c = c0; c < c1; ++c) {
                    T acc = bias ? bias[c] : T(0);
                    for (int64_t j = 0; j < K - 1; ++j) acc += w[c * K + j] * win[j * C + c];
                    acc += w[c * K + K - 1] * xr[c];
                    o[c] = silu ? acc * sigmoid(acc) : acc;
                    for (int64_t j = 0; j + 1 < K - 1; ++j) win[j * C + c] = win[(j + 1) * C + c];
                    if (K > 1) win[(K - 2) * C + c] = xr[c];
                }
            }
        },
        std::max<int64_t>(1, 4096 / (kChannelBlock * K)));
}

template void conv1d_causal_forward<float>(float*, float*, const float*, int64_t, const float*, const float*,
                                           int64_t, int64_t, int64_t, int64_t, bool);
template void conv1d_causal_forward<double>(double*, double*, const double*, int64_t, const double*,
                                            const double*, int64_t, int64_t, int64_t, int64_t, bool);
template void conv1d_causal_backward<float>(float*, float*, float*, const float*, const float*, int64_t,
                                            const float*, const float*, int64_t, int64_t, int64_t, int64_t,
                                            bool);
template void conv1d_causal_backward<double>(double*, double*, double*, const double*, const double*, int64_t,
                                             const double*, const double*, int64_t, int64_t, int64_t, int64_t,
                                             bool);
template void conv1d_causal_update<float>(float*, float*, const int64_t*, const float*, int64_t, const float*,
                                          const float*, int64_t, int64_t, int64_t, bool);
template void conv1d_causal_update<double>(double*, double*, const int64_t*, const double*, int64_t,
                                           const double*, const double*, int64_t, int64_t, int64_t, bool);

}  // namespace mslm::ops
