// CudaHybridLM: the training forward and backward of HybridLM (model/hybrid_lm.h) on one GPU, the
// same function with the same parameter layout, layer by layer, as mirror lists of kernel calls
// (ops/cuda/*.h).
//
// Precision (llm.c style): fp32 master parameters in one device buffer laid out exactly as
// Parameters<float> (same specs, offsets, padding) plus a bf16 copy that forward and backward
// read; activations bf16; SSM states and norm statistics fp32 (the kernels' choice); loss fp32.
// Gradients are fp32 and accumulate (+=) over backward calls: cuBLASLt adds the matrix weights'
// gradients (projections, MLP, LM head) into them directly in fp32 (ops::cuda::linear_backward_dW_f32);
// the kernels of the other parameters (norms, conv, SSM parameters, biases, the embedding lookup)
// write bf16, so each backward stages those in a bf16 copy of the flat buffer (one rounding per
// element) and adds it to the fp32 gradients at the end.
//
// Activations are planned once per (B, T): every buffer's size is computed up front and carved out
// of one allocation (memory_bytes reports the total).
//
// Training (train/trainer.cpp): AdamW runs on the device buffers with train/optimizer.h's semantics
// through ops/cuda/adamw.h's kernels — fp32 state m and v in the flat layout, the clip factor of
// clip_grad_norm applied inside the step, the bf16 copy rewritten by it. The state moves to and
// from an AdamW<float> (upload/download_optimizer_state), so checkpoints hold exactly the tensors
// the CPU trainer writes and either trainer resumes the other's run.
//
// LoRA and QLoRA training (issue 8 must 5; the second constructor): the model is a frozen base and
// one PEFT adapter (lora/lora.h) trains. The base lives on the GPU as bf16 values only — no fp32
// master, no gradient, no optimizer state — and, with a QLoRA base (quant/qlora.h), its 4-bit
// linear weights only as their bitsandbytes blocks (codes + double-quantized absmax, as loaded):
// each product dequantizes its weight (ops/cuda/nf4_dequant.h) into one bf16 scratch shared by all
// weights just before the GEMM, in forward and for dX in backward. The adapter's A and B are the
// trained parameters: fp32 masters in the adapter's Parameters layout, bf16 copies, fp32 gradients
// and AdamW state, exactly as the whole model's in the first mode; specs(), params_total(), the
// gradients and the optimizer functions below then refer to the adapter. A targeted projection
// computes y = x·Wᵀ + b + s·(x·Aᵀ)·Bᵀ on its rows of W (PEFT's q_proj is rows of the fused qkv_proj),
// and its backward dX = dY·W + (s·dY·B)·A, dB += s·dYᵀ·(x·Aᵀ), dA += (s·dY·B)ᵀ·x, with x·Aᵀ recomputed
// (as the CPU hook does) and the fp32 gradients accumulated by cuBLASLt itself. lora_dropout > 0 is
// refused (the CPU's hashed masks are not reproduced on the GPU yet).
//
// Activation recompute (set_recompute): forward keeps only each layer's input (the residual
// stream) and backward recomputes the layer's forward just before its backward, so one layer's
// saved activations are planned instead of all of them, for one more forward pass of compute.
//
// Plain C++ header (no CUDA includes). The class exists only in builds with MSLM_HAVE_CUDA.
// Supported: every option of HybridLM — RMSNorm or LayerNorm, Mamba-1 (with or without Jamba's
// dt/B/C norms) and Mamba-2 mixers, attention (RoPE, ALiBi or none; GQA; sliding window), SwiGLU,
// GELU, GELU tanh or ReLU MLP or none, projection biases, tied or separate LM head,
// embed_padding_idx — within the kernels' limits (ops/cuda/*.h): Mamba-1 d_state ≤ kScanMaxState and
// d_conv ≤ kConv1dBackwardMaxK, attention head_dim ≤ kAttentionMaxHeadDim. Beyond them the
// constructor throws "not supported on CUDA yet: ...".
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "model/config.h"
#include "model/flops.h"
#include "nn/parameters.h"

namespace mslm {

template <typename T>
class HybridLM;
template <typename T>
class AdamW;
template <typename T>
class LoraModel;
namespace quant {
template <typename T>
class QloraBase;
}

// Device bytes of a training run, by category (each one allocation): fp32 master values + their
// bf16 copy; fp32 gradients + the bf16 staging of the parameters that stage theirs (all but the
// matrix weights); AdamW m, v and the decay mask; the activation
// plan of one (B, T) step. With LoRA, params, grads and optimizer are the adapter's, and base holds
// the frozen base: bf16 values, plus the 4-bit blocks and the dequantization scratch with QLoRA.
// (params also counts the two index status words.)
struct CudaTrainingMemory {
    size_t base = 0, params = 0, grads = 0, optimizer = 0, activations = 0;
    size_t total() const { return base + params + grads + optimizer + activations; }
};

// "1234.5 MiB: base 12.3, params 4.5, grads 3.0, optimizer 6.8, activations 1200.0 (MiB)"
std::string describe(const CudaTrainingMemory& m);

// What to plan for (training_memory): the whole model (lora_r = 0), or a LoRA adapter of rank
// lora_r on lora_targets (as --lora-targets) over a bf16 base, or over a 4-bit base (qlora: nf4 or
// fp4 with double quantization, blocksize 64, the weights `quantize` would quantize).
struct CudaMemoryPlan {
    int64_t lora_r = 0;
    std::string lora_targets = "all-linear";
    bool qlora = false;
    bool recompute = false;  // activation recompute (set_recompute)
};

// What the stage timer booked since it was last taken: milliseconds by stage label (in first-seen
// order) and by kernel family (model/flops.h), their sum, and the records (a zero_grad + forward
// + backward, an optimizer step) they came from.
struct CudaStageTimes {
    std::vector<std::pair<std::string, double>> stages;
    std::array<double, kKernelFamilies> family_ms{};
    double total_ms = 0;
    int64_t records = 0;
};

class CudaHybridLM {
public:
    explicit CudaHybridLM(const ModelConfig& cfg);
    // LoRA / QLoRA training of `adapter` (trainable, the only active one, dropout 0) of `lora`, over
    // lora.model()'s weights as the frozen base; qlora, when given, holds that model's 4-bit weights.
    // Uploads everything (base, 4-bit blocks, the adapter's values); the objects need not outlive
    // this one. Throws naming the reason for an adapter it cannot train.
    CudaHybridLM(LoraModel<float>& lora, const std::string& adapter, const quant::QloraBase<float>* qlora = nullptr);
    CudaHybridLM(const CudaHybridLM&) = delete;
    CudaHybridLM& operator=(const CudaHybridLM&) = delete;
    ~CudaHybridLM();

    const ModelConfig& config() const { return cfg_; }
    // The trained parameters: the model's, or with LoRA the adapter's.
    const std::vector<ParamSpec>& specs() const { return specs_; }
    int64_t params_total() const { return total_; }  // flat buffer length, padding included
    bool lora() const;  // built by the LoRA constructor: the base is frozen

    // Activation recompute (the header): off by default; takes effect at the next forward.
    void set_recompute(bool on);
    bool recompute() const { return recompute_; }

    // Copies the fp32 parameter values (and makes the bf16 copy). cpu must have this config. Not
    // with LoRA (the constructor uploads the base and the adapter).
    void upload(const HybridLM<float>& cpu);
    // ids, targets (B, T) in host memory, as HybridLM::forward; targets may be null (no loss).
    // Returns the mean cross-entropy over counted positions (0 when none count). backward_follows
    // (with targets): the caller will call backward() next, so the loss's gradient is formed in the
    // same pass over the logits as the loss (ops::cuda::cross_entropy_forward_backward, the same
    // bits), overwriting them — download_logits then returns that gradient.
    float forward(const int32_t* ids, const int32_t* targets, int64_t B, int64_t T,
                  bool backward_follows = false);
    // Accumulates the gradient of the last forward's loss into the fp32 gradients. Needs targets.
    void backward();
    void zero_grad();
    // flat (params_total()) = the fp32 gradients, in the layout of Parameters<float>::grads().
    void download_grads(std::vector<float>& flat) const;
    // Replaces the fp32 gradients with flat (params_total()), e.g. after a host-side hook.
    void upload_grads(const std::vector<float>& flat);
    // The fp32 master values into cpu's parameters (same config): for eval, checkpoints, generation.
    // Not with LoRA (the base does not change; download the adapter with the overload).
    void download_params(HybridLM<float>& cpu) const;
    // The trained parameters' fp32 values into p, which has their layout (the model's Parameters, or
    // with LoRA the adapter's).
    void download_params(Parameters<float>& p) const;

    // The optimizer's options, m, v and step count from cpu (built for this layout; a fresh one
    // holds zeros). Must precede optimizer_step.
    void upload_optimizer_state(const AdamW<float>& cpu);
    // m, v and the step count into cpu, whose state_tensors() are then what the CPU trainer saves.
    void download_optimizer_state(AdamW<float>& cpu) const;
    // gradients *= s, in fp32 (the trainer's 1 / grad_accum).
    void scale_grads(float s);
    // The gradients' global L2 norm (double, deterministic); with max_norm > 0 also the factor the
    // next optimizer_step multiplies the gradients by, as torch's clip_grad_norm_ (1 when the norm
    // is not finite). Synchronises.
    double clip_grad_norm(double max_norm);
    // One AdamW step at learning rate lr (the fp32 value AdamW<float>::step receives), with the
    // clip factor of the last clip_grad_norm(max_norm > 0) since zero_grad, if any.
    void optimizer_step(float lr);
    int64_t optimizer_step_count() const { return opt_step_; }

    // Stage timing: CUDA events at every boundary between kernel families of zero_grad, forward,
    // backward, scale_grads, clip_grad_norm and optimizer_step, booked by stage and family. On when
    // MSLM_MODEL_STAGE_TIMES=1 (which also prints each record to stderr) or set here; each record
    // synchronises at its end, so it is for profiling. Off, it costs one test per boundary.
    void set_stage_timing(bool on);
    bool stage_timing() const;
    CudaStageTimes take_stage_times();  // the totals since the last take; resets them

    // Makes GPU `index` current for this thread (before constructing); throws naming the count.
    static void select_device(int index);

    // (B, T, V) logits of the last forward, decoded from bf16 (before backward overwrites them).
    void download_logits(std::vector<float>& out) const;
    // Rows [row, row + n) of the last forward's (B·T, V) logits, decoded from bf16, into out (n, V);
    // and of its (B·T, D) final-norm output into hidden (n, D) when hidden is non-null (inference).
    void download_rows(int64_t row, int64_t n, float* out, float* hidden) const;

    // Bytes of device memory held: parameters (fp32 + bf16), gradients (fp32 + bf16 staging), the
    // optimizer state, the frozen base (LoRA) and the activation plan of the last (B, T).
    size_t memory_bytes() const;
    size_t activation_bytes() const { return act_bytes_; }

    // The plan for a config without allocating anything (host arithmetic; builds with CUDA only).
    // The categories sum to what memory_bytes() reports for the same run after its first
    // optimizer step (cuBLASLt's workspaces, the CUDA context and the allocator's rounding aside).
    static CudaTrainingMemory training_memory(const ModelConfig& cfg, int64_t B, int64_t T,
                                              const CudaMemoryPlan& plan = {});
    // The device's used memory now (cudaMemGetInfo: total − free, every process and the context
    // included), in bytes.
    static size_t device_used_bytes();

    struct Impl;  // device pointers of the plan (defined in cuda_model.cpp)

private:
    void plan(int64_t B, int64_t T);
    // Sizes (base null) or places (base = the allocation) every activation buffer of a (B, T) step
    // into m's pointers; returns the bytes.
    // With recompute, the layers share one set of saved activations (one per mixer kind).
    static size_t layout_activations(const ModelConfig& cfg, Impl& m, int64_t B, int64_t T, char* base,
                                     bool recompute);

    ModelConfig cfg_;
    std::vector<ParamSpec> specs_;
    int64_t total_ = 0;
    std::unique_ptr<Impl> impl_;
    size_t act_bytes_ = 0;
    int64_t B_ = 0, T_ = 0, count_ = 0;
    bool has_targets_ = false, recompute_ = false, planned_recompute_ = false;
    bool loss_grad_ready_ = false;  // the last forward left the loss's gradient in the logits
    // Optimizer (allocated by upload_optimizer_state).
    double beta1_ = 0, beta2_ = 0, eps_ = 0, weight_decay_ = 0;
    int64_t opt_step_ = 0;
    bool clip_pending_ = false;
};

}  // namespace mslm
