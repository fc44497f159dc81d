// CudaHybridLM's own kernels (cuda_model_kernels.cu), declared for model/cuda_model.cpp. Plain C++
// header; the definitions exist only in builds with CUDA.
#pragma once
#include <cstdint>

namespace mslm::cuda_model_detail {

// A parameter whose gradient a backward stages in bf16 (norm weights, biases, the conv, A_log, D,
// dt_bias, the embedding): its fp32 gradient at grads + grad, its staged values at staged + staged
// (the staged buffer holds only these, each 128-element aligned), n elements.
struct StagedRange {
    int64_t grad = 0, staged = 0, n = 0;
};

// grads[r.grad + j] += staged[r.staged + j] for every range r of the device table `ranges` (n_ranges
// of them, sorted by r.staged, all within staged_total elements), each element rounded to fp32 once.
void accumulate_staged(float* grads, const uint16_t* staged, const StagedRange* ranges, int n_ranges,
                       int64_t staged_total, void* stream);
void scale_f32(float* x, float s, int64_t n, void* stream);
void gemm_bf16(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const uint16_t* A,
               int64_t lda, const uint16_t* B, int64_t ldb, float beta, void* C, int64_t ldc, bool c_f32);

}  // namespace mslm::cuda_model_detail
