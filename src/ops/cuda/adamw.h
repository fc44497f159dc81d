// AdamW and global gradient-norm clipping on the GPU, over the flat parameter buffer of
// nn/parameters.h, with the semantics of train/optimizer.h (the CPU reference, AdamW<float>):
// torch.optim.AdamW's order of operations, decoupled weight decay, fp32 master weights and fp32
// state m and v. Gradients are fp32, or bf16 (uint16_t bits, core/dtype.h).
//
// Plain C++ header (no CUDA includes); the kernels exist only in builds with MSLM_HAVE_CUDA, the
// host helpers (adamw_scalars, adamw_decay_mask) in every build. `stream` is a cudaStream_t,
// nullptr the default stream. Launches are asynchronous; a failing launch throws mslm::Error
// naming the kernel. Buffers must not overlap.
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

namespace mslm {
struct ParamSpec;
}

namespace mslm::ops::cuda {

// The scalars of step `step` (1-based), computed in double and rounded to fp32 exactly as
// AdamW<float>::step does, so that the kernel's arithmetic can match the CPU's operation for
// operation. `lr` is the fp32 value AdamW<float>::step(params, lr) receives.
struct AdamWScalars {
    float decay;            // 1 − lr·wd
    float one_minus_beta1;  // 1 − β1
    float beta2, one_minus_beta2;
    float step_size;              // lr / (1 − β1^t)
    float bias_correction2_sqrt;  // √(1 − β2^t)
    float eps;
    bool decay_on;  // weight_decay ≠ 0
};

inline AdamWScalars adamw_scalars(float lr, double beta1, double beta2, double eps, double weight_decay,
                                  int64_t step) {
    const double lr_d = static_cast<double>(lr);
    const double bc1 = 1.0 - std::pow(beta1, static_cast<double>(step));
    const double bc2 = 1.0 - std::pow(beta2, static_cast<double>(step));
    return {static_cast<float>(1.0 - lr_d * weight_decay),
            static_cast<float>(1.0 - beta1),
            static_cast<float>(beta2),
            static_cast<float>(1.0 - beta2),
            static_cast<float>(lr_d / bc1),
            static_cast<float>(std::sqrt(bc2)),
            static_cast<float>(eps),
            weight_decay != 0};
}

// decay_mask (total): 1 for the elements of parameters with decay = true, 0 for the others and
// for the alignment padding. Built once per model and uploaded; adamw_step reads one byte per
// element (about 4% of the step's memory traffic) instead of searching parameter ranges.
std::vector<uint8_t> adamw_decay_mask(const std::vector<ParamSpec>& specs, int64_t total);

// One AdamW step over the n elements of the flat buffers, per element i:
//   g = grads[i] (· *grad_scale when grad_scale is non-null: clipping, see clip_grad_norm)
//   p *= decay                                   (when s.decay_on and decay_mask[i])
//   m += (1 − β1)·(g − m)
//   v  = v·β2 + (1 − β2)·g·g
//   p -= step_size · (m / (√v / √(1 − β2^t) + eps))
// each operation rounded to fp32 (no contraction into FMAs), as written in AdamW<float>::step.
// params_bf16 (n), when non-null, receives the updated p rounded to bf16 (to nearest even): the
// copy the forward pass reads. Padding with zero gradients and zero state stays unchanged.
template <typename G>
void adamw_step(float* params, uint16_t* params_bf16, float* m, float* v, const G* grads,
                const uint8_t* decay_mask, int64_t n, const AdamWScalars& s, const float* grad_scale,
                void* stream = nullptr);

// Double-precision partial sums the norm needs as scratch: (kGradNormPartials,) doubles. Fixed, so
// the reduction's partition (and the result, bit for bit) depends neither on the GPU nor on n.
constexpr int64_t kGradNormPartials = 1024;

// *norm = ‖grads (n)‖₂ in double, by a deterministic two-pass reduction: a fixed grid of
// kGradNormPartials blocks sums squares in double over a fixed strided partition and a fixed tree,
// then one block adds the partial sums in a fixed tree. norm is a device pointer; padding is
// expected to hold zero gradients.
template <typename G>
void grad_norm(double* norm, const G* grads, int64_t n, double* partials, void* stream = nullptr);

// grad_norm, plus *scale = the factor torch's clip_grad_norm_ multiplies the gradients by:
// max_norm / (norm + 1e-6) in double, rounded to fp32, when that is below 1, else 1; also 1 when
// the norm is NaN or infinite (the gradients are left alone; the caller reads *norm and decides,
// usually to skip the step). The gradients are not modified: pass `scale` to adamw_step, which
// multiplies each gradient by it in fp32 — for fp32 gradients exactly what clipping in place and
// then stepping computes, for bf16 gradients without a second rounding to bf16.
template <typename G>
void clip_grad_norm(double* norm, float* scale, const G* grads, int64_t n, double max_norm, double* partials,
                    void* stream = nullptr);

}  // namespace mslm::ops::cuda
