// CPU reference for the token embedding: a row gather forward and a scatter-add backward.
#include "ops/embedding.h"

#include <algorithm>

#include "core/error.h"
#include "core/thread_pool.h"

namespace mslm::ops {
namespace {

// Fewest elements worth handing to another thread; smaller problems run on the caller.
constexpr int64_t kMinWork = 1 << 14;
// Fewest columns per thread in the backward, so that threads rarely share a cache line.
constexpr int64_t kMinColumns = 32;

void check_ids(const int32_t* ids, int64_t N, int64_t V) {
    for (int64_t n = 0; n < N; ++n)
        MSLM_CHECK(ids[n] >= 0 && ids[n] < V,
                   "embedding: token id {} at position {} is outside the vocabulary [0, {})", ids[n], n, V);
}

}  // namespace

template <typename T>
void embedding_forward(T* out, const int32_t* ids, const T* table, int64_t N, int64_t V, int64_t D) {
    check_ids(ids, N, V);
    parallel_for(
        N,
        [&](int64_t n0, int64_t n1) {
            for (int64_t n = n0; n < n1; ++n) std::copy_n(table + ids[n] * D, D, out + n * D);
        },
        std::max<int64_t>(1, kMinWork / std::max<int64_t>(D, 1)));
}

// Threads own disjoint column ranges and each walks all N positions in order: no two threads add
// into the same entry, and every entry sums its contributions in position order whatever the
// thread count, so repeated ids need no atomics and the result is bitwise reproducible.
template <typename T>
void embedding_backward(T* dtable, const T* dout, const int32_t* ids, int64_t N, int64_t V, int64_t D) {
    check_ids(ids, N, V);
    parallel_for(
        D,
        [&](int64_t d0, int64_t d1) {
            for (int64_t n = 0; n < N; ++n) {
                T* dst = dtable + ids[n] * D;
                const T* src = dout + n * D;
                for (int64_t d = d0; d < d1; ++d) dst[d] += src[d];
            }
        },
        std::max<int64_t>(kMinColumns, kMinWork / std::max<int64_t>(N, 1)));
}

template void embedding_forward<float>(float*, const int32_t*, const float*, int64_t, int64_t, int64_t);
template void embedding_forward<double>(double*, const int32_t*, const double*, int64_t, int64_t, int64_t);
template void embedding_backward<float>(float*, const float*, const int32_t*, int64_t, int64_t, int64_t);
template void embedding_backward<double>(double*, const double*, const int32_t*, int64_t, int64_t, int64_t);

}  // namespace mslm::ops
