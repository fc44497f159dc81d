// Row-major GEMM over OpenBLAS: C = alpha * op(A) * op(B) + beta * C, with op(A) (M, K) and
// op(B) (K, N). lda/ldb/ldc are the row strides of A, B and C as stored.
#pragma once

namespace mslm {

template <typename T>
void gemm(bool trans_a, bool trans_b, int M, int N, int K, T alpha, const T* A, int lda, const T* B,
          int ldb, T beta, T* C, int ldc);

}  // namespace mslm
