#include "core/gemm.h"

#include <cblas.h>

#include <algorithm>

#include "core/thread_pool.h"

namespace mslm {

// OpenBLAS runs single-threaded (thread_pool.cpp sets it so); large products are split here
// into row or column panels over our own pool. This keeps one owner of the cores: a GEMM called
// from inside a parallel kernel (attention tiles, SSD chunks) runs inline on its thread instead
// of OpenBLAS starting threads on top of ours, which oversubscribed the machine 10-20x. Each
// output element is still one cblas call's dot product over the full K, so results do not depend
// on the number of threads.
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
// first pack all of B, doubling the memory traffic of what is a pure streaming read of B.
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

}  // namespace

template <>
void gemm<float>(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda, const float* B, int ldb,
                 float beta, float* C, int ldc) {
    split_gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc,
               [](bool a, bool b, int m, int n, int k, float al, const float* pa, int la, const float* pb,
                  int lb, float be, float* pc, int lc) {
                   if (m == 1) {
                       one_row(a, b, n, k, al, pa, la, pb, lb, be, pc, cblas_sgemv);
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
                   if (m == 1) {
                       one_row(a, b, n, k, al, pa, la, pb, lb, be, pc, cblas_dgemv);
                       return;
                   }
                   cblas_dgemm(CblasRowMajor, a ? CblasTrans : CblasNoTrans, b ? CblasTrans : CblasNoTrans, m, n, k,
                               al, pa, la, pb, lb, be, pc, lc);
               });
}

}  // namespace mslm
