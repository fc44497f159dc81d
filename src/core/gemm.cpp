#include "core/gemm.h"

#include <cblas.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include "core/thread_pool.h"

namespace mslm {

// OpenBLAS runs single-threaded (thread_pool.cpp sets it so); large products are split here
// into row or column panels over our own pool. This keeps one owner of the cores: a GEMM called
// from inside a parallel kernel (attention tiles, SSD chunks) runs inline on its thread instead
// of OpenBLAS starting threads on top of ours, which oversubscribed the machine 10-20x. Each
// output element is still one dot product over the full K (a cblas call's, or few_rows' below),
// so results do not depend on the number of threads.
namespace {

// Below this many multiply-adds a product runs on one thread (thread start-up would dominate).
constexpr double kParallelFlops = 1 << 18;

template <typename T, typename Call>
void split_gemm(bool ta, bool tb, int M, int N, int K, T alpha, const T* A, int lda, const T* B, int ldb, T beta,
                T* C, int ldc, Call&& call) {
    if (M == 0 || N == 0) return;
    const double work = double(M) * N * std::max(K, 1);
    const int threads = num_threads();
    if (work < kParallelFlops || threads == 1) {
        call(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    // Panels of whole rows when there are enough rows, else of columns; 16-wide at least so each
    // panel keeps the micro-kernel's register blocking.
    if (M >= 16 * threads || M >= N) {
        const int64_t grain = std::max<int64_t>(16, (M + threads - 1) / threads);
        parallel_for(M, [&](int64_t r0, int64_t r1) {
            const T* Ap = ta ? A + r0 : A + r0 * lda;  // op(A) rows r0.. = A columns r0.. when transposed
            call(ta, tb, static_cast<int>(r1 - r0), N, K, alpha, Ap, lda, B, ldb, beta, C + r0 * ldc, ldc);
        }, grain);
    } else {
        const int64_t grain = std::max<int64_t>(16, (N + threads - 1) / threads);
        parallel_for(N, [&](int64_t c0, int64_t c1) {
            const T* Bp = tb ? B + c0 * ldb : B + c0;  // op(B) columns c0.. = B rows c0.. when transposed
            call(ta, tb, M, static_cast<int>(c1 - c0), K, alpha, A, lda, Bp, ldb, beta, C + c0, ldc);
        }, grain);
    }
}

// A product with one row of op(A) (a decoding step at batch 1) as a GEMV: OpenBLAS's GEMM would
// first pack all of B, doubling the memory traffic of what is a pure streaming read of B. (Against
// a transposed B — x · Wᵀ, the decoder's case — few_rows below takes one row too: OpenBLAS's GEMV
// sums the rows of a call's last partial block in another order on some CPUs, so its results
// depended on where the thread count split the columns.)
// c (1, N) = alpha · a (1, K) · op(B) + beta · c, with a's elements lda apart when A is transposed.
template <typename T, typename Gemv>
void one_row(bool ta, bool tb, int N, int K, T alpha, const T* A, int lda, const T* B, int ldb, T beta, T* C,
             Gemv gemv) {
    const int inc_a = ta ? lda : 1;
    if (tb)  // B stored (N, K): c = B · a
        gemv(CblasRowMajor, CblasNoTrans, N, K, alpha, B, ldb, A, inc_a, beta, C, 1);
    else  // B stored (K, N): c = Bᵀ · a
        gemv(CblasRowMajor, CblasTrans, K, N, alpha, B, ldb, A, inc_a, beta, C, 1);
}

// A product with 2–12 rows of op(A) against a transposed B: x · Wᵀ for a decoding batch of 2–12
// sequences. OpenBLAS's GEMM packs all of W first, which at this M costs more than the product
// (measured: 2× this kernel at M = 8, 4× at M = 4, where this kernel runs at GEMV speed). Here
// R = 2 rows of W (1 from 9 rows of A) at a time stream past the M rows of A, which stay in cache: R·M vector
// accumulators over K, the rows two pairs ahead prefetched (without it the loads of W left the
// kernel latency-bound at half the bandwidth), lanes summed at the end. Every output element is
// the same sum in the same order whichever pair or panel holds it, so results stay independent of
// the thread count.
template <typename T>
struct Vec64 {
    typedef T type __attribute__((vector_size(64)));
};

inline float sum_lanes(const Vec64<float>::type& v) {
    typedef float V8 __attribute__((vector_size(32)));
    typedef float V4 __attribute__((vector_size(16)));
    const V8 a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
                 __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
    const V4 b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
    return (b[0] + b[2]) + (b[1] + b[3]);
}

inline double sum_lanes(const Vec64<double>::type& v) {
    typedef double V4 __attribute__((vector_size(32)));
    const V4 a = __builtin_shufflevector(v, v, 0, 1, 2, 3) + __builtin_shufflevector(v, v, 4, 5, 6, 7);
    return (a[0] + a[2]) + (a[1] + a[3]);
}

// C columns [j, j + R) of the M rows: C[m, j + r] = alpha · A[m] · B[j + r] + beta · C[m, j + r].
template <typename T, int M, int R>
void few_rows_block(int j, int N, int K, T alpha, const T* A, int lda, const T* B, int ldb, T beta, T* C,
                    int ldc) {
    using Vec = typename Vec64<T>::type;
    constexpr int kLanes = sizeof(Vec) / sizeof(T);
    const int K_vec = K / kLanes * kLanes;
    const T* b = B + static_cast<int64_t>(j) * ldb;  // (R, K) with row stride ldb
    const T* ahead[R];                               // rows to prefetch (their own row past the end)
    for (int r = 0; r < R; ++r)
        ahead[r] = B + static_cast<int64_t>(j + r + (j + r + 2 * R < N ? 2 * R : 0)) * ldb;
    Vec acc[M][R] = {};
    for (int k = 0; k < K_vec; k += kLanes) {
        Vec w[R];
        for (int r = 0; r < R; ++r) {
            std::memcpy(&w[r], b + static_cast<int64_t>(r) * ldb + k, sizeof(Vec));
            __builtin_prefetch(ahead[r] + k);
        }
        for (int m = 0; m < M; ++m) {
            Vec a;
            std::memcpy(&a, A + static_cast<int64_t>(m) * lda + k, sizeof(Vec));
            for (int r = 0; r < R; ++r) acc[m][r] += a * w[r];
        }
    }
    for (int m = 0; m < M; ++m) {
        const T* a = A + static_cast<int64_t>(m) * lda;
        T* c = C + static_cast<int64_t>(m) * ldc + j;
        for (int r = 0; r < R; ++r) {
            const T* br = b + static_cast<int64_t>(r) * ldb;
            T sum = sum_lanes(acc[m][r]);
            for (int k = K_vec; k < K; ++k) sum += a[k] * br[k];
            // BLAS semantics: with beta = 0, C is not read (it may hold NaN).
            c[r] = alpha * sum + (beta == T(0) ? T(0) : beta * c[r]);
        }
    }
}

// Up to 8 rows, two rows of B at a time (2·M accumulators); 9..12 rows, one (M accumulators: the
// 32 vector registers of AVX-512 hold them with the row of B and of A).
template <typename T, int M>
void few_rows(int N, int K, T alpha, const T* A, int lda, const T* B, int ldb, T beta, T* C, int ldc) {
    if constexpr (M > 8) {
        for (int j = 0; j < N; ++j) few_rows_block<T, M, 1>(j, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    } else {
        int j = 0;
        for (; j + 2 <= N; j += 2) few_rows_block<T, M, 2>(j, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        if (j < N) few_rows_block<T, M, 1>(j, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    }
}

// OpenBLAS past this (measured on the 2-vCPU AVX-512 VM, 130m f32 decode, docs/PERFORMANCE.md:
// few_rows 1.1–1.8× sgemm at 9..12 rows, even at 13..14 within the noise, 0.87× at 16).
constexpr int kMaxFewRows = 12;

// Runs few_rows for 2 <= M <= kMaxFewRows: a table of its instantiations, indexed by M − 2.
template <typename T, int... Rows>
void few_rows_table(std::integer_sequence<int, Rows...>, int M, int N, int K, T alpha, const T* A, int lda,
                    const T* B, int ldb, T beta, T* C, int ldc) {
    using Fn = void (*)(int, int, T, const T*, int, const T*, int, T, T*, int);
    static constexpr Fn kRows[] = {few_rows<T, Rows + 2>...};
    kRows[M - 2](N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

template <typename T>
void few_rows_dispatch(int M, int N, int K, T alpha, const T* A, int lda, const T* B, int ldb, T beta, T* C,
                       int ldc) {
    few_rows_table<T>(std::make_integer_sequence<int, kMaxFewRows - 1>{}, M, N, K, alpha, A, lda, B, ldb,
                      beta, C, ldc);
}

}  // namespace

template <>
void gemm<float>(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda, const float* B, int ldb,
                 float beta, float* C, int ldc) {
    split_gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc,
               [](bool a, bool b, int m, int n, int k, float al, const float* pa, int la, const float* pb,
                  int lb, float be, float* pc, int lc) {
                   if (m == 1 && !a && b) {  // x · Wᵀ at batch 1: few_rows, not the BLAS GEMV (below)
                       few_rows<float, 1>(n, k, al, pa, la, pb, lb, be, pc, lc);
                       return;
                   }
                   if (m == 1) {
                       one_row(a, b, n, k, al, pa, la, pb, lb, be, pc, cblas_sgemv);
                       return;
                   }
                   if (!a && b && m <= kMaxFewRows) {
                       few_rows_dispatch(m, n, k, al, pa, la, pb, lb, be, pc, lc);
                       return;
                   }
                   cblas_sgemm(CblasRowMajor, a ? CblasTrans : CblasNoTrans, b ? CblasTrans : CblasNoTrans, m, n, k,
                               al, pa, la, pb, lb, be, pc, lc);
               });
}

template <>
void gemm<double>(bool ta, bool tb, int M, int N, int K, double alpha, const double* A, int lda, const double* B,
                  int ldb, double beta, double* C, int ldc) {
    split_gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc,
               [](bool a, bool b, int m, int n, int k, double al, const double* pa, int la, const double* pb,
                  int lb, double be, double* pc, int lc) {
                   if (m == 1 && !a && b) {  // x · Wᵀ at batch 1: few_rows, not the BLAS GEMV (below)
                       few_rows<double, 1>(n, k, al, pa, la, pb, lb, be, pc, lc);
                       return;
                   }
                   if (m == 1) {
                       one_row(a, b, n, k, al, pa, la, pb, lb, be, pc, cblas_dgemv);
                       return;
                   }
                   if (!a && b && m <= kMaxFewRows) {
                       few_rows_dispatch(m, n, k, al, pa, la, pb, lb, be, pc, lc);
                       return;
                   }
                   cblas_dgemm(CblasRowMajor, a ? CblasTrans : CblasNoTrans, b ? CblasTrans : CblasNoTrans, m, n, k,
                               al, pa, la, pb, lb, be, pc, lc);
               });
}

}  // namespace mslm
