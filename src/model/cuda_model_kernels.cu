// The kernels CudaHybridLM needs of its own (model/cuda_model_kernels.h): adding the bf16 staged
// gradients of a backward into the fp32 gradients, scaling the fp32 gradients (gradient accumulation), and
// the strided, scaled, accumulating products of the LoRA modules (gemm_bf16), which ops/cuda/linear.h's
// nn.Linear shapes do not cover.
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <mutex>

#include "core/error.h"
#include "model/cuda_model_kernels.h"
#include "ops/cuda/common.cuh"

namespace mslm::cuda_model_detail {

namespace {

__global__ void scale_f32_kernel(float* __restrict__ x, float s, int64_t n) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
         i += int64_t(gridDim.x) * blockDim.x)
        x[i] = __fmul_rn(x[i], s);  // one fp32 rounding, as the CPU trainer's g *= s
}

// grads[r.grad + j] += staged[r.staged + j] for each range r (j < r.n): a thread per staged element,
// its range found by binary search over the ranges (sorted by r.staged, kept in shared memory); the
// alignment gaps between ranges are skipped.
__global__ void accumulate_staged_kernel(float* __restrict__ grads, const __nv_bfloat16* __restrict__ staged,
                                         const StagedRange* __restrict__ ranges, int n_ranges,
                                         int64_t total) {
    extern __shared__ StagedRange table[];
    for (int i = threadIdx.x; i < n_ranges; i += blockDim.x) table[i] = ranges[i];
    __syncthreads();
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
         i += int64_t(gridDim.x) * blockDim.x) {
        int lo = 0, hi = n_ranges - 1;  // the last range starting at or before i
        while (lo < hi) {
            const int mid = (lo + hi + 1) / 2;
            if (table[mid].staged <= i)
                lo = mid;
            else
                hi = mid - 1;
        }
        const int64_t j = i - table[lo].staged;
        if (j >= 0 && j < table[lo].n) grads[table[lo].grad + j] += ops::cuda::detail::to_f32(staged[i]);
    }
}

}  // namespace

// The staged ranges (device table of n_ranges, sorted by their staged offsets) onto the fp32
// gradients, each element once.
void accumulate_staged(float* grads, const uint16_t* staged, const StagedRange* ranges, int n_ranges,
                       int64_t staged_total, void* stream) {
    using namespace ops::cuda::detail;
    if (n_ranges <= 0 || staged_total <= 0) return;
    const char* kernel = "accumulate_staged";
    const size_t smem = sizeof(StagedRange) * size_t(n_ranges);
    MSLM_CHECK(smem <= 48 * 1024, "{}: {} ranges are too many for shared memory", kernel, n_ranges);
    accumulate_staged_kernel<<<grid_size<uint16_t>(staged_total, kernel), kThreads, smem,
                               static_cast<cudaStream_t>(stream)>>>(
        grads, reinterpret_cast<const __nv_bfloat16*>(staged), ranges, n_ranges, staged_total);
    check_launch<uint16_t>(kernel);
}

// x (n) *= s in fp32.
void scale_f32(float* x, float s, int64_t n, void* stream) {
    using namespace ops::cuda::detail;
    if (n <= 0) return;
    const char* kernel = "scale_f32";
    scale_f32_kernel<<<grid_size<float>(n, kernel), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(x, s, n);
    check_launch<float>(kernel);
}

namespace {

void lt_check(cublasStatus_t st, const char* what) {
    MSLM_CHECK(st == CUBLAS_STATUS_SUCCESS, "CudaHybridLM LoRA product: {} failed (cuBLAS status {})", what,
               static_cast<int>(st));
}

cublasLtHandle_t lt_handle() {
    static std::once_flag once;
    static cublasLtHandle_t handle = nullptr;
    std::call_once(once, [] { lt_check(cublasLtCreate(&handle), "cublasLtCreate"); });
    return handle;
}

// The largest of 16, 8, 4, 2 bytes that divides both the address and the row stride in bytes:
// what cuBLASLt may assume of a matrix (its heuristics otherwise assume 16).
uint32_t alignment(const void* p, int64_t ld_bytes) {
    uint32_t a = 16;
    while (a > 2 && ((reinterpret_cast<uintptr_t>(p) % a) != 0 || ld_bytes % a != 0)) a /= 2;
    return a;
}

// RAII for the descriptors of one call.
struct LtCall {
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulPreference_t pref = nullptr;
    ~LtCall() {
        if (pref) cublasLtMatmulPreferenceDestroy(pref);
        if (c) cublasLtMatrixLayoutDestroy(c);
        if (b) cublasLtMatrixLayoutDestroy(b);
        if (a) cublasLtMatrixLayoutDestroy(a);
        if (op) cublasLtMatmulDescDestroy(op);
    }
};

}  // namespace

// C (M, N) = alpha · op(A) · op(B) + beta · C, all row-major: op(A) (M, K) is A (M, K) with row stride
// lda, or Aᵀ of A (K, M) when trans_a; op(B) (K, N) likewise; C (M, N) with row stride ldc, bf16 bits
// or (c_f32) fp32. A and B are bf16; products accumulate in fp32 and C is rounded once. Row-major
// X is column-major Xᵀ, so this is the column-major Cᵀ = op(B)ᵀ · op(A)ᵀ. No split-K reduction
// (which would add partial sums in C's type) and no workspace: the same call gives the same bits.
void gemm_bf16(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const uint16_t* A,
               int64_t lda, const uint16_t* B, int64_t ldb, float beta, void* C, int64_t ldc, bool c_f32) {
    if (M <= 0 || N <= 0) return;
    const cudaDataType_t ctype = c_f32 ? CUDA_R_32F : CUDA_R_16BF;
    const int64_t csize = c_f32 ? 4 : 2;
    LtCall call;
    lt_check(cublasLtMatmulDescCreate(&call.op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
    const cublasOperation_t op_a = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;  // cuBLASLt's A is our B
    const cublasOperation_t op_b = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    lt_check(cublasLtMatmulDescSetAttribute(call.op, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)), "TRANSA");
    lt_check(cublasLtMatmulDescSetAttribute(call.op, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)), "TRANSB");
    // Column-major shapes as stored: our B is (trans_b ? (K, N) : (N, K)) column-major, A likewise.
    lt_check(cublasLtMatrixLayoutCreate(&call.a, CUDA_R_16BF, trans_b ? K : N, trans_b ? N : K, ldb), "layout B");
    lt_check(cublasLtMatrixLayoutCreate(&call.b, CUDA_R_16BF, trans_a ? M : K, trans_a ? K : M, lda), "layout A");
    lt_check(cublasLtMatrixLayoutCreate(&call.c, ctype, N, M, ldc), "layout C");
    lt_check(cublasLtMatmulPreferenceCreate(&call.pref), "cublasLtMatmulPreferenceCreate");
    const size_t no_workspace = 0;
    const uint32_t no_reduction = CUBLASLT_REDUCTION_SCHEME_NONE;
    const uint32_t align_a = alignment(B, 2 * ldb), align_b = alignment(A, 2 * lda), align_c = alignment(C, csize * ldc);
    lt_check(cublasLtMatmulPreferenceSetAttribute(call.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &no_workspace,
                                                  sizeof(no_workspace)),
             "workspace preference");
    lt_check(cublasLtMatmulPreferenceSetAttribute(call.pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
                                                  &no_reduction, sizeof(no_reduction)),
             "reduction preference");
    lt_check(cublasLtMatmulPreferenceSetAttribute(call.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a,
                                                  sizeof(align_a)),
             "alignment preference");
    lt_check(cublasLtMatmulPreferenceSetAttribute(call.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b,
                                                  sizeof(align_b)),
             "alignment preference");
    lt_check(cublasLtMatmulPreferenceSetAttribute(call.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_c,
                                                  sizeof(align_c)),
             "alignment preference");
    lt_check(cublasLtMatmulPreferenceSetAttribute(call.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_c,
                                                  sizeof(align_c)),
             "alignment preference");
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    lt_check(cublasLtMatmulAlgoGetHeuristic(lt_handle(), call.op, call.a, call.b, call.c, call.c, call.pref, 1,
                                            &result, &found),
             "cublasLtMatmulAlgoGetHeuristic");
    MSLM_CHECK(found > 0, "CudaHybridLM LoRA product: cuBLASLt has no algorithm for ({}, {}, {})", M, N, K);
    lt_check(cublasLtMatmul(lt_handle(), call.op, &alpha, B, call.a, A, call.b, &beta, C, call.c, C, call.c,
                            &result.algo, nullptr, 0, nullptr),
             "cublasLtMatmul");
}

}  // namespace mslm::cuda_model_detail
