// nn.Linear on the GPU through cuBLASLt, with the semantics of ops/linear.h (the CPU reference):
// PyTorch's row-major layout, W (O, I), b (O), and backward accumulates (+=) into every gradient.
//
// Plain C++ header (no CUDA includes); the definitions exist only in builds with MSLM_HAVE_CUDA.
// T is `float`, or `uint16_t` for bf16 (raw bits, as in core/dtype.h). Products accumulate in fp32
// (CUBLAS_COMPUTE_32F: true fp32 for f32 inputs, never TF32), and every output is rounded once to
// T; split-K algorithms that would add partial sums in bf16 are refused. `stream` is a
// cudaStream_t, nullptr the default stream. Launches are asynchronous; a failing call throws
// mslm::Error naming the op. Buffers must not overlap. Repeating a call on the same device with
// the same shapes and pointer alignments gives bitwise the same result.
//
// cuBLASLt state (a handle per device, a 32 MiB workspace per device and stream, and the
// algorithm chosen per shape) is created on first use, behind a mutex, and kept for the life of
// the process. bf16 forwards without a bias of few rows and output columns (linear_forward,
// linear_forward_accumulate, linear_forward_f32_out; ops/cuda/skinny_gemm.h's skinny_gemm_preferred)
// take our split-K tensor-core kernel instead, where it measured faster; the numerics above hold for
// it too (fp32 sums, one rounding, the same bits on every call).
#pragma once
#include <cstdint>

namespace mslm::ops::cuda {

// out (N, O) = x (N, I) · W (O, I)ᵀ + b (O); b may be null. The bias is added in fp32 to the fp32
// accumulator (cuBLASLt's BIAS epilogue) before the one rounding to T. w_constant (this and the next
// two): the caller's promise that no kernel still to finish writes W (a model's weights), which lets
// the few-row kernel (skinny_gemm.h) start copying W before its predecessor ends; no effect on values.
template <typename T>
void linear_forward(T* out, const T* x, const T* W, const T* b, int64_t N, int64_t I, int64_t O,
                    void* stream = nullptr, bool w_constant = false);

// out (N, O) += x (N, I) · W (O, I)ᵀ for bf16 (uint16_t bits), no bias, in one cuBLASLt call (beta =
// 1, D = C = out): a residual add without a separate kernel (the decode step's). Whether the fp32
// product is rounded to bf16 before C is added depends on the kernel cuBLASLt picks (measured on the
// H200: rounded first at (N, I, O) = (1, 768, 768), (3, 1536, 768), (64, 2048, 768) — the bits of
// linear_forward then axpy —, not at (8, 1, 300) and (5, 7, 9); the skinny kernel, where it takes the
// call, never rounds first): out = round(out + round(product)) or round(out + product), at most the
// product's one bf16 rounding away from that pair.
void linear_forward_accumulate(uint16_t* out, const uint16_t* x, const uint16_t* W, int64_t N, int64_t I,
                               int64_t O, void* stream = nullptr, bool w_constant = false);

// out (N, O) = x (N, I) · W (O, I)ᵀ from bf16 x and W (uint16_t bits), accumulated and stored in fp32
// without a bf16 rounding: inference's logits, which sampling and beam scores read.
void linear_forward_f32_out(float* out, const uint16_t* x, const uint16_t* W, int64_t N, int64_t I, int64_t O,
                            void* stream = nullptr, bool w_constant = false);
// A batch of such products, strided: out_b (M, O) = x_b (M, I) · W_b (O, I)ᵀ for b < batch, where
// x_b = x + b·stride_x (rows ld_x apart), W_b = W + b·stride_W (rows ld_W apart), out_b = out +
// b·stride_out (rows ld_out apart); bf16 inputs (uint16_t bits), fp32 accumulation and output, never
// rounded. The chunked scans' within-chunk products (the SSD's C·Bᵀ per chunk) are these.
void batched_linear_f32_out(float* out, int64_t ld_out, int64_t stride_out, const uint16_t* x, int64_t ld_x,
                            int64_t stride_x, const uint16_t* W, int64_t ld_W, int64_t stride_W, int64_t batch,
                            int64_t M, int64_t I, int64_t O, void* stream = nullptr);

// dx (N, I) += dout (N, O) · W; dW (O, I) += doutᵀ · x; db (O) += Σ_n dout. Any of dx, dW, db may
// be null. x is read only for dW, W only for dx. db is a fixed-order fp32 column sum (our kernel,
// deterministic), added to db once.
template <typename T>
void linear_backward(T* dx, T* dW, T* db, const T* dout, const T* x, const T* W, int64_t N, int64_t I,
                     int64_t O, void* stream = nullptr);

// dx (N, I) = dout (N, O) · W, overwriting dx (no +=): the product rounded once to T straight from
// cuBLASLt, without linear_backward's fp32 staging buffer and second pass. For a dx that nothing
// else writes (the caller need not zero it first).
template <typename T>
void linear_backward_dx(T* dx, const T* dout, const T* W, int64_t N, int64_t I, int64_t O, void* stream = nullptr);
// dW (O, I) += doutᵀ · x in fp32, from bf16 dout (N, O) and x (N, I) (uint16_t bits): the fp32
// gradient of a bf16 layer's weight, accumulated by cuBLASLt itself (beta = 1, fp32 C and D), so
// the product is never rounded to bf16. dW is fp32 in GPU memory.
void linear_backward_dW_f32(float* dW, const uint16_t* dout, const uint16_t* x, int64_t N, int64_t I, int64_t O,
                            void* stream = nullptr);

namespace detail {

// The row-major -> column-major mapping, as data so that it can be checked on a machine without a
// GPU. A row-major (r, c) matrix with row stride c is, byte for byte, the column-major (c, r)
// matrix with leading dimension c: its transpose. So a row-major product Y = P · Q is computed as
// the column-major Yᵀ = Qᵀ · Pᵀ, where each transpose is free (a reinterpretation) or an op flag.
//
// One call: D (m, n) = op(A) (m, k) · op(B) (k, n) [+ D], all column-major; op(X) is X or Xᵀ; A is
// stored (k, m) with leading dimension lda when trans_a, else (m, k); B likewise; D is (m, n) with
// leading dimension ldd.
struct ColumnMajorGemm {
    const void* a;
    const void* b;
    void* d;
    bool trans_a, trans_b;
    int64_t m, n, k;
    int64_t lda, ldb, ldd;
    int64_t batch = 1;  // > 1: `batch` products, operand i of product j at pointer + j · stride_i
    int64_t stride_a = 0, stride_b = 0, stride_d = 0;
};

// out (N, O) = x · Wᵀ  <=>  outᵀ (O, N) = W (O, I) · xᵀ (I, N), where W's buffer is column-major
// Wᵀ (I, O) (transposed by the op) and x's buffer is column-major xᵀ (I, N) as is. The bias runs
// along D's rows (m = O), which is what cuBLASLt's BIAS epilogue broadcasts.
inline ColumnMajorGemm linear_forward_gemm(void* out, const void* x, const void* W, int64_t N, int64_t I,
                                           int64_t O) {
    return {W, x, out, true, false, O, N, I, I, I, O};
}

// dx (N, I) = dout · W  <=>  dxᵀ (I, N) = Wᵀ (I, O) · doutᵀ (O, N): both buffers as they are.
inline ColumnMajorGemm linear_dx_gemm(void* dx, const void* dout, const void* W, int64_t N, int64_t I,
                                      int64_t O) {
    return {W, dout, dx, false, false, I, N, O, I, O, I};
}

// dW (O, I) = doutᵀ · x  <=>  dWᵀ (I, O) = xᵀ (I, N) · dout (N, O), dout's buffer being
// column-major doutᵀ (O, N), transposed by the op.
inline ColumnMajorGemm linear_dW_gemm(void* dW, const void* dout, const void* x, int64_t N, int64_t I,
                                      int64_t O) {
    return {x, dout, dW, false, true, I, O, N, I, O, I};
}

}  // namespace detail
}  // namespace mslm::ops::cuda
