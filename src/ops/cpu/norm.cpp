// CPU reference for RMSNorm, LayerNorm and Mamba-2's grouped gated RMSNorm.
//
// Every backward is two passes: one over rows for the input gradients (each row needs its own
// reductions over D), one over columns for the parameter gradients (each column sums over N).
// Splitting the column sums by column keeps them race-free and bitwise independent of the
// thread count, with no per-thread partial buffers to reduce.
#include "ops/norm.h"

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "core/error.h"
#include "core/thread_pool.h"
#include "ops/cpu/scalar_math.h"
#include "ops/cpu/vec_array.h"

namespace mslm::ops {
namespace {

constexpr int64_t kMinWork = 1 << 14;  // fewest elements worth handing to another thread
constexpr int64_t kMinColumns = 32;    // fewest columns per thread, so threads rarely share a cache line
constexpr int64_t kBlock = 256;        // columns summed at once in a stack accumulator
constexpr int kLanes = 8;              // interleaved partial sums in row reductions

int64_t row_grain(int64_t D) {
    return std::max<int64_t>(1, kMinWork / std::max<int64_t>(D, 1));
}

// Σ_i f(i) over [0, n). A single running sum is a serial dependency chain that the compiler may not
// reorder (no -ffast-math); kLanes fixed interleaved sums vectorise and shorten the chains along
// which rounding error grows. The lane layout depends only on n, never on threading.
template <typename T, typename F>
T lane_sum(int64_t n, F f) {
    T part[kLanes] = {};
    int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes)
        for (int k = 0; k < kLanes; ++k) part[k] += f(i + k);
    for (int k = 0; i < n; ++i, ++k) part[k] += f(i);
    T s = 0;
    for (int k = 0; k < kLanes; ++k) s += part[k];
    return s;
}

// dst[j] += Σ_n (row n's term at j) for j in [0, D). add_row(acc, n, c0, width) adds row n's terms
// for columns [c0, c0 + width) into acc[0, width). Column blocks never cross a multiple of
// `segment`, so a grouped norm sees one group per block. Threads own disjoint column ranges and
// add rows in order.
template <typename T, typename AddRow>
void column_sum(T* dst, int64_t N, int64_t D, int64_t segment, AddRow add_row) {
    parallel_for(
        D,
        [&](int64_t j0, int64_t j1) {
            for (int64_t c0 = j0; c0 < j1;) {
                int64_t c1 = std::min({j1, c0 + kBlock, (c0 / segment + 1) * segment});
                T acc[kBlock] = {};
                for (int64_t n = 0; n < N; ++n) add_row(acc, n, c0, c1 - c0);
                for (int64_t c = 0; c < c1 - c0; ++c) dst[c0 + c] += acc[c];
                c0 = c1;
            }
        },
        std::max<int64_t>(kMinColumns, kMinWork / std::max<int64_t>(N, 1)));
}

}  // namespace

template <typename T>
void rmsnorm_forward(T* out, T* rstd, const T* x, const T* w, int64_t N, int64_t D, T eps) {
    parallel_for(
        N,
        [&](int64_t n0, int64_t n1) {
            for (int64_t n = n0; n < n1; ++n) {
                const T* xr = x + n * D;
                T* o = out + n * D;
                T ss = lane_sum<T>(D, [&](int64_t i) { return xr[i] * xr[i]; });
                T r = T(1) / std::sqrt(ss / T(D) + eps);
                rstd[n] = r;
                for (int64_t i = 0; i < D; ++i) o[i] = xr[i] * r * w[i];
            }
        },
        row_grain(D));
}

// With x̂ = x·rstd and g = dout·w: dx = rstd · (g − x̂ · mean(g·x̂)); dw = Σ_n dout·x̂.
template <typename T>
void rmsnorm_backward(T* dx, T* dw, const T* dout, const T* x, const T* w, const T* rstd, int64_t N,
                      int64_t D) {
    if (dx) {
        parallel_for(
            N,
            [&](int64_t n0, int64_t n1) {
                for (int64_t n = n0; n < n1; ++n) {
                    const T* xr = x + n * D;
                    const T* g = dout + n * D;
                    T* d = dx + n * D;
                    T r = rstd[n];
                    // mean(g·x̂) · rstd, folded so the loop below needs one multiply per term
                    T c = lane_sum<T>(D, [&](int64_t i) { return g[i] * w[i] * xr[i]; }) * r * r / T(D);
                    for (int64_t i = 0; i < D; ++i) d[i] += r * (g[i] * w[i] - xr[i] * c);
                }
            },
            row_grain(D));
    }
    if (dw) {
        column_sum(dw, N, D, D, [&](T* acc, int64_t n, int64_t c0, int64_t width) {
            const T* g = dout + n * D + c0;
            const T* xr = x + n * D + c0;
            T r = rstd[n];
            for (int64_t c = 0; c < width; ++c) acc[c] += g[c] * xr[c] * r;
        });
    }
}

template <typename T>
void layernorm_forward(T* out, T* mean, T* rstd, const T* x, const T* w, const T* b, int64_t N, int64_t D,
                       T eps) {
    parallel_for(
        N,
        [&](int64_t n0, int64_t n1) {
            for (int64_t n = n0; n < n1; ++n) {
                const T* xr = x + n * D;
                T* o = out + n * D;
                // Two passes: the variance from centred values does not cancel catastrophically.
                T m = lane_sum<T>(D, [&](int64_t i) { return xr[i]; }) / T(D);
                T var = lane_sum<T>(D, [&](int64_t i) { return (xr[i] - m) * (xr[i] - m); }) / T(D);
                T r = T(1) / std::sqrt(var + eps);
                mean[n] = m;
                rstd[n] = r;
                if (b) {
                    for (int64_t i = 0; i < D; ++i) o[i] = (xr[i] - m) * r * w[i] + b[i];
                } else {
                    for (int64_t i = 0; i < D; ++i) o[i] = (xr[i] - m) * r * w[i];
                }
            }
        },
        row_grain(D));
}

// With x̂ = (x − mean)·rstd and g = dout·w: dx = rstd · (g − mean(g) − x̂ · mean(g·x̂));
// dw = Σ_n dout·x̂; db = Σ_n dout.
template <typename T>
void layernorm_backward(T* dx, T* dw, T* db, const T* dout, const T* x, const T* w, const T* mean,
                        const T* rstd, int64_t N, int64_t D) {
    if (dx) {
        parallel_for(
            N,
            [&](int64_t n0, int64_t n1) {
                for (int64_t n = n0; n < n1; ++n) {
                    const T* xr = x + n * D;
                    const T* g = dout + n * D;
                    T* d = dx + n * D;
                    T m = mean[n], r = rstd[n];
                    T mean_g = lane_sum<T>(D, [&](int64_t i) { return g[i] * w[i]; }) / T(D);
                    T mean_gx =
                        lane_sum<T>(D, [&](int64_t i) { return g[i] * w[i] * (xr[i] - m); }) * r / T(D);
                    for (int64_t i = 0; i < D; ++i)
                        d[i] += r * (g[i] * w[i] - mean_g - (xr[i] - m) * r * mean_gx);
                }
            },
            row_grain(D));
    }
    if (dw) {
        column_sum(dw, N, D, D, [&](T* acc, int64_t n, int64_t c0, int64_t width) {
            const T* g = dout + n * D + c0;
            const T* xr = x + n * D + c0;
            T m = mean[n], r = rstd[n];
            for (int64_t c = 0; c < width; ++c) acc[c] += g[c] * (xr[c] - m) * r;
        });
    }
    if (db) {
        column_sum(db, N, D, D, [&](T* acc, int64_t n, int64_t c0, int64_t width) {
            const T* g = dout + n * D + c0;
            for (int64_t c = 0; c < width; ++c) acc[c] += g[c];
        });
    }
}

template <typename T>
void gated_rmsnorm_forward(T* out, T* rstd, const T* x, const T* z, const T* w, int64_t N, int64_t D,
                           int64_t G, T eps) {
    MSLM_CHECK(G > 0 && D % G == 0, "gated_rmsnorm: {} channels do not split into {} equal groups", D, G);
    const int64_t Dg = D / G;
    parallel_for(
        N,
        [&](int64_t n0, int64_t n1) {
            for (int64_t n = n0; n < n1; ++n) {
                const T* xr = x + n * D;
                const T* zr = z + n * D;
                T* o = out + n * D;
                if constexpr (std::is_same_v<T, float>) {  // g = x·silu(z)
                    vec_array::silu(o, zr, D);
                    for (int64_t i = 0; i < D; ++i) o[i] *= xr[i];
                } else {
                    for (int64_t i = 0; i < D; ++i) o[i] = xr[i] * zr[i] * sigmoid(zr[i]);
                }
                for (int64_t k = 0; k < G; ++k) {
                    T* og = o + k * Dg;
                    const T* wg = w + k * Dg;
                    T ss = lane_sum<T>(Dg, [&](int64_t i) { return og[i] * og[i]; });
                    T r = T(1) / std::sqrt(ss / T(Dg) + eps);
                    rstd[n * G + k] = r;
                    for (int64_t i = 0; i < Dg; ++i) og[i] *= r * wg[i];
                }
            }
        },
        row_grain(D));
}

// Per group, with g = x·silu(z), ĝ = g·rstd and h = dout·w:
//   dg = rstd · (h − ĝ · mean(h·ĝ)),  dx = dg · silu(z),  dz = dg · x · silu'(z),  dw = Σ_n dout·ĝ,
// where silu'(z) = σ(z) · (1 + z · (1 − σ(z))). g is recomputed rather than saved.
template <typename T>
void gated_rmsnorm_backward(T* dx, T* dz, T* dw, const T* dout, const T* x, const T* z, const T* w,
                            const T* rstd, int64_t N, int64_t D, int64_t G) {
    MSLM_CHECK(G > 0 && D % G == 0, "gated_rmsnorm: {} channels do not split into {} equal groups", D, G);
    const int64_t Dg = D / G;
    if (dx || dz) {
        parallel_for(
            N,
            [&](int64_t n0, int64_t n1) {
                // σ(z) of one group, shared by both loops below (the exponential dominates the cost).
                // The buffer grows at most once per thread and size, never per row.
                thread_local std::vector<T> sig;
                if (int64_t(sig.size()) < Dg) sig.resize(Dg);
                T* s = sig.data();
                for (int64_t n = n0; n < n1; ++n) {
                    for (int64_t k = 0; k < G; ++k) {
                        const int64_t off = n * D + k * Dg;
                        const T *xr = x + off, *zr = z + off, *h = dout + off, *wg = w + k * Dg;
                        T r = rstd[n * G + k];
                        for (int64_t i = 0; i < Dg; ++i) s[i] = sigmoid(zr[i]);
                        // mean(h·ĝ) · rstd, folded as in rmsnorm_backward
                        T c =
                            lane_sum<T>(Dg, [&](int64_t i) { return h[i] * wg[i] * xr[i] * zr[i] * s[i]; }) *
                            r * r / T(Dg);
                        for (int64_t i = 0; i < Dg; ++i) {
                            T silu = zr[i] * s[i];
                            T dg = r * (h[i] * wg[i] - xr[i] * silu * c);
                            if (dx) dx[off + i] += dg * silu;
                            if (dz) dz[off + i] += dg * xr[i] * s[i] * (T(1) + zr[i] * (T(1) - s[i]));
                        }
                    }
                }
            },
            row_grain(D));
    }
    if (dw) {
        column_sum(dw, N, D, Dg, [&](T* acc, int64_t n, int64_t c0, int64_t width) {
            const T *h = dout + n * D + c0, *xr = x + n * D + c0, *zr = z + n * D + c0;
            T r = rstd[n * G + c0 / Dg];
            for (int64_t c = 0; c < width; ++c) acc[c] += h[c] * xr[c] * zr[c] * sigmoid(zr[c]) * r;
        });
    }
}

template void rmsnorm_forward<float>(float*, float*, const float*, const float*, int64_t, int64_t, float);
template void rmsnorm_forward<double>(double*, double*, const double*, const double*, int64_t, int64_t,
                                      double);
template void rmsnorm_backward<float>(float*, float*, const float*, const float*, const float*, const float*,
                                      int64_t, int64_t);
template void rmsnorm_backward<double>(double*, double*, const double*, const double*, const double*,
                                       const double*, int64_t, int64_t);
template void layernorm_forward<float>(float*, float*, float*, const float*, const float*, const float*,
                                       int64_t, int64_t, float);
template void layernorm_forward<double>(double*, double*, double*, const double*, const double*,
                                        const double*, int64_t, int64_t, double);
template void layernorm_backward<float>(float*, float*, float*, const float*, const float*, const float*,
                                        const float*, const float*, int64_t, int64_t);
template void layernorm_backward<double>(double*, double*, double*, const double*, const double*,
                                         const double*, const double*, const double*, int64_t, int64_t);
template void gated_rmsnorm_forward<float>(float*, float*, const float*, const float*, const float*, int64_t,
                                           int64_t, int64_t, float);
template void gated_rmsnorm_forward<double>(double*, double*, const double*, const double*, const double*,
                                            int64_t, int64_t, int64_t, double);
template void gated_rmsnorm_backward<float>(float*, float*, float*, const float*, const float*, const float*,
                                            const float*, const float*, int64_t, int64_t, int64_t);
template void gated_rmsnorm_backward<double>(double*, double*, double*, const double*, const double*,
                                             const double*, const double*, const double*, int64_t, int64_t,
                                             int64_t);

}  // namespace mslm::ops
