// CPU reference for the fused softmax cross-entropy. Every exponential is of a value ≤ 0 (logits
// minus the row maximum, or minus the logsumexp), so huge logits neither overflow nor lose the
// loss to cancellation.
#include "ops/cross_entropy.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/thread_pool.h"

namespace mslm::ops {
namespace {

constexpr int64_t kMinWork = 1 << 14;  // fewest elements worth handing to another thread
constexpr int kLanes = 8;              // interleaved partial sums, as in the norms

int64_t row_grain(int64_t V) {
    return std::max<int64_t>(1, kMinWork / std::max<int64_t>(V, 1));
}

// Validates every target before anything is written; returns the number of rows that count.
int64_t check_targets(const int32_t* targets, int64_t N, int64_t V) {
    int64_t count = 0;
    for (int64_t n = 0; n < N; ++n) {
        if (targets[n] == kIgnoreIndex) continue;
        MSLM_CHECK(
            targets[n] >= 0 && targets[n] < V,
            "cross_entropy: target {} at row {} is outside the vocabulary [0, {}) and is not the ignore "
            "index {}",
            targets[n], n, V, kIgnoreIndex);
        ++count;
    }
    return count;
}

template <typename T>
T row_max(const T* row, int64_t V) {
    T m = row[0];
    for (int64_t v = 1; v < V; ++v) m = std::max(m, row[v]);
    return m;
}

// Σ_v exp(row[v] − m) in kLanes interleaved partial sums (a shorter rounding chain).
template <typename T>
T sum_exp(const T* row, int64_t V, T m) {
    T part[kLanes] = {};
    int64_t v = 0;
    for (; v + kLanes <= V; v += kLanes)
        for (int k = 0; k < kLanes; ++k) part[k] += std::exp(row[v + k] - m);
    for (int k = 0; v < V; ++v, ++k) part[k] += std::exp(row[v] - m);
    T s = 0;
    for (int k = 0; k < kLanes; ++k) s += part[k];
    return s;
}

}  // namespace

template <typename T>
int64_t cross_entropy_forward(T* losses, T* lse, const T* logits, const int32_t* targets, int64_t N,
                              int64_t V) {
    MSLM_CHECK(V > 0, "cross_entropy: empty vocabulary");
    int64_t count = check_targets(targets, N, V);
    parallel_for(
        N,
        [&](int64_t n0, int64_t n1) {
            for (int64_t n = n0; n < n1; ++n) {
                const T* row = logits + n * V;
                T m = row_max(row, V);
                T log_sum = std::log(sum_exp(row, V, m));
                lse[n] = m + log_sum;
                // (m − logit) + log Σ rather than lse − logit: with logits ~1e4 the difference of two
                // large numbers would lose the loss's low digits.
                int32_t t = targets[n];
                losses[n] = t == kIgnoreIndex ? T(0) : (m - row[t]) + log_sum;
            }
        },
        row_grain(V));
    return count;
}

// Each element is read and then written at the same index, so dlogits == logits is safe.
template <typename T>
void cross_entropy_backward(T* dlogits, const T* logits, const T* lse, const int32_t* targets, int64_t N,
                            int64_t V, T dloss) {
    check_targets(targets, N, V);
    parallel_for(
        N,
        [&](int64_t n0, int64_t n1) {
            for (int64_t n = n0; n < n1; ++n) {
                T* d = dlogits + n * V;
                int32_t t = targets[n];
                if (t == kIgnoreIndex) {
                    std::fill_n(d, V, T(0));
                    continue;
                }
                const T* row = logits + n * V;
                T l = lse[n];
                for (int64_t v = 0; v < V; ++v) d[v] = std::exp(row[v] - l) * dloss;
                d[t] -= dloss;
            }
        },
        row_grain(V));
}

template int64_t cross_entropy_forward<float>(float*, float*, const float*, const int32_t*, int64_t, int64_t);
template int64_t cross_entropy_forward<double>(double*, double*, const double*, const int32_t*, int64_t,
                                               int64_t);
template void cross_entropy_backward<float>(float*, const float*, const float*, const int32_t*, int64_t,
                                            int64_t, float);
template void cross_entropy_backward<double>(double*, const double*, const double*, const int32_t*, int64_t,
                                             int64_t, double);

}  // namespace mslm::ops
