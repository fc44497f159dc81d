// core/gemm against a naive loop: every transpose combination, strided operands, alpha and beta,
// and the shapes that take its own paths (one row → GEMV, 2–12 rows against a transposed B → the
// few-rows kernel, two rows of B at a time up to 8 rows and one from 9, the rest → OpenBLAS GEMM), in float
// and double; results independent of the thread count.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "core/gemm.h"
#include "core/rng.h"
#include "core/thread_pool.h"

using namespace mslm;

namespace {

struct Shape {
    int M, N, K;
    bool ta, tb;
};

std::string describe(const Shape& s, double beta) {
    return "M=" + std::to_string(s.M) + " N=" + std::to_string(s.N) + " K=" + std::to_string(s.K) +
           " ta=" + std::to_string(s.ta) + " tb=" + std::to_string(s.tb) + " beta=" + std::to_string(beta);
}

// Runs gemm<T> on random operands stored with padded rows, and checks each output against the
// double-precision sum. Error bound of a length-K dot product (recursive or blocked summation):
// K · u · Σ|a_k b_k| with u the unit roundoff, plus the same for the beta term; factor 2 margin.
template <typename T>
void check_shape(const Shape& s, double alpha, double beta, Rng& rng) {
    const int pad = 3;
    const int a_rows = s.ta ? s.K : s.M, a_cols = s.ta ? s.M : s.K;
    const int b_rows = s.tb ? s.N : s.K, b_cols = s.tb ? s.K : s.N;
    const int lda = a_cols + pad, ldb = b_cols + pad, ldc = s.N + pad;
    std::vector<T> A(static_cast<size_t>(a_rows) * lda), B(static_cast<size_t>(b_rows) * ldb),
        C(static_cast<size_t>(s.M) * ldc);
    for (auto& x : A) x = static_cast<T>(rng.normal());
    for (auto& x : B) x = static_cast<T>(rng.normal());
    for (auto& x : C) x = beta == 0 ? std::numeric_limits<T>::quiet_NaN() : static_cast<T>(rng.normal());
    const std::vector<T> C0 = C;
    gemm<T>(s.ta, s.tb, s.M, s.N, s.K, static_cast<T>(alpha), A.data(), lda, B.data(), ldb, static_cast<T>(beta),
            C.data(), ldc);
    const double u = std::numeric_limits<T>::epsilon() / 2;
    for (int m = 0; m < s.M; ++m) {
        for (int n = 0; n < s.N; ++n) {
            double sum = 0, mag = 0;
            for (int k = 0; k < s.K; ++k) {
                const double a = s.ta ? A[k * lda + m] : A[m * lda + k];
                const double b = s.tb ? B[n * ldb + k] : B[k * ldb + n];
                sum += a * b;
                mag += std::fabs(a * b);
            }
            const double c0 = beta == 0 ? 0.0 : static_cast<double>(C0[m * ldc + n]);
            const double want = alpha * sum + beta * c0;
            const double bound = 2 * (s.K + 2) * u * (std::fabs(alpha) * mag + std::fabs(beta * c0)) + 1e-300;
            ASSERT_NEAR(static_cast<double>(C[m * ldc + n]), want, bound) << describe(s, beta) << " at " << m << "," << n;
        }
        // The row padding of C is never written.
        for (int n = s.N; n < ldc; ++n)
            ASSERT_TRUE(std::isnan(C[m * ldc + n]) == std::isnan(C0[m * ldc + n]) &&
                        (std::isnan(C[m * ldc + n]) || C[m * ldc + n] == C0[m * ldc + n]))
                << describe(s, beta);
    }
}

TEST(Gemm, MatchesNaiveForEveryPath) {
    Rng rng(1);
    for (int M : {1, 2, 3, 5, 8, 9, 12, 13, 33})
        for (int N : {1, 7, 64, 130})
            for (int K : {1, 5, 16, 37, 100})
                for (bool ta : {false, true})
                    for (bool tb : {false, true})
                        for (double beta : {0.0, 1.3}) {
                            check_shape<double>({M, N, K, ta, tb}, 0.7, beta, rng);
                            check_shape<float>({M, N, K, ta, tb}, 0.7, beta, rng);
                        }
}

// Large enough to be split over the pool (column panels for few rows): the same bits for 1 and 2
// threads, on each path.
TEST(Gemm, SameBitsForAnyThreadCount) {
    const int saved = num_threads();
    for (int M : {1, 4, 8, 11, 40}) {
        const int N = 4099, K = 70;
        Rng rng(2);
        std::vector<float> A(static_cast<size_t>(M) * K), B(static_cast<size_t>(N) * K);
        for (auto& x : A) x = static_cast<float>(rng.normal());
        for (auto& x : B) x = static_cast<float>(rng.normal());
        std::vector<std::vector<float>> results;
        for (int threads : {1, 2}) {
            set_num_threads(threads);
            std::vector<float> C(static_cast<size_t>(M) * N);
            gemm<float>(false, true, M, N, K, 1.0f, A.data(), K, B.data(), K, 0.0f, C.data(), N);
            results.push_back(C);
        }
        EXPECT_EQ(results[0], results[1]) << "M=" << M;
    }
    set_num_threads(saved);
}

}  // namespace
