// CPU reference for nn.Linear: the matrix products go to OpenBLAS through mslm::gemm; only the
// bias broadcast and the bias gradient are ours.
#include "ops/linear.h"

#include <algorithm>
#include <climits>

#include "core/error.h"
#include "core/gemm.h"
#include "core/thread_pool.h"

namespace mslm::ops {
namespace {

constexpr int64_t kMinWork = 1 << 14;  // fewest elements worth handing to another thread
constexpr int64_t kMinColumns = 32;    // fewest columns per thread, so threads rarely share a cache line
constexpr int64_t kBlock = 256;        // columns summed at once in a stack accumulator

void check_sizes(int64_t N, int64_t I, int64_t O) {
    MSLM_CHECK(N >= 0 && I >= 0 && O >= 0 && N <= INT_MAX && I <= INT_MAX && O <= INT_MAX,
               "linear: sizes N={} I={} O={} do not fit a BLAS int", N, I, O);
}

// BLAS wants every leading dimension ≥ 1, even for an empty matrix.
int ld(int64_t n) {
    return static_cast<int>(std::max<int64_t>(n, 1));
}

}  // namespace

template <typename T>
void linear_forward(T* out, const T* x, const T* W, const T* b, int64_t N, int64_t I, int64_t O) {
    check_sizes(N, I, O);
    T beta = 0;
    if (b) {
        parallel_for(
            N,
            [&](int64_t n0, int64_t n1) {
                for (int64_t n = n0; n < n1; ++n) std::copy_n(b, O, out + n * O);
            },
            std::max<int64_t>(1, kMinWork / std::max<int64_t>(O, 1)));
        beta = 1;
    }
    // (N, I) · (O, I)ᵀ => (N, O)
    gemm<T>(false, true, int(N), int(O), int(I), T(1), x, ld(I), W, ld(I), beta, out, ld(O));
}

template <typename T>
void linear_backward(T* dx, T* dW, T* db, const T* dout, const T* x, const T* W, int64_t N, int64_t I,
                     int64_t O) {
    check_sizes(N, I, O);
    // (N, O) · (O, I) => (N, I)
    if (dx) gemm<T>(false, false, int(N), int(I), int(O), T(1), dout, ld(O), W, ld(I), T(1), dx, ld(I));
    // (N, O)ᵀ · (N, I) => (O, I)
    if (dW) gemm<T>(true, false, int(O), int(I), int(N), T(1), dout, ld(O), x, ld(I), T(1), dW, ld(I));
    if (!db) return;
    // Threads own disjoint column ranges and sum rows in order: race-free and independent of the
    // thread count.
    parallel_for(
        O,
        [&](int64_t o0, int64_t o1) {
            for (int64_t c0 = o0; c0 < o1; c0 += kBlock) {
                int64_t width = std::min(o1 - c0, kBlock);
                T acc[kBlock] = {};
                for (int64_t n = 0; n < N; ++n) {
                    const T* row = dout + n * O + c0;
                    for (int64_t c = 0; c < width; ++c) acc[c] += row[c];
                }
                for (int64_t c = 0; c < width; ++c) db[c0 + c] += acc[c];
            }
        },
        std::max<int64_t>(kMinColumns, kMinWork / std::max<int64_t>(N, 1)));
}

template void linear_forward<float>(float*, const float*, const float*, const float*, int64_t, int64_t,
                                    int64_t);
template void linear_forward<double>(double*, const double*, const double*, const double*, int64_t, int64_t,
                                     int64_t);
template void linear_backward<float>(float*, float*, float*, const float*, const float*, const float*,
                                     int64_t, int64_t, int64_t);
template void linear_backward<double>(double*, double*, double*, const double*, const double*, const double*,
                                      int64_t, int64_t, int64_t);

}  // namespace mslm::ops
