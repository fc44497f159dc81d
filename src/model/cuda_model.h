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
// Plain C++ header (no CUDA includes). The class exists only in builds with MSLM_HAVE_CUDA.
// Supported: RMSNorm or LayerNorm, Mamba-1 (without dt/B/C norms) and Mamba-2 mixers, attention
// (RoPE, ALiBi or none; GQA; sliding window), SwiGLU MLP or none, projection biases, tied or separate
// LM head. Not yet: GELU / ReLU MLPs, Mamba-1's dt_bc_norm, embed_padding_idx — the constructor
// throws "not supported on CUDA yet: ...".
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "model/config.h"
#include "nn/parameters.h"

namespace mslm {

template <typename T>
class HybridLM;

class CudaHybridLM {
public:
    explicit CudaHybridLM(const ModelConfig& cfg);
    CudaHybridLM(const CudaHybridLM&) = delete;
    CudaHybridLM& operator=(const CudaHybridLM&) = delete;
    ~CudaHybridLM();

    const ModelConfig& config() const { return cfg_; }
    const std::vector<ParamSpec>& specs() const { return specs_; }
    int64_t params_total() const { return total_; }  // flat buffer length, padding included

    // Copies the fp32 parameter values (and makes the bf16 copy). cpu must have this config.
    void upload(const HybridLM<float>& cpu);
    // ids, targets (B, T) in host memory, as HybridLM::forward; targets may be null (no loss).
    // Returns the mean cross-entropy over counted positions (0 when none count).
    float forward(const int32_t* ids, const int32_t* targets, int64_t B, int64_t T);
    // Accumulates the gradient of the last forward's loss into the fp32 gradients. Needs targets.
    void backward();
    void zero_grad();
    // flat (params_total()) = the fp32 gradients, in the layout of Parameters<float>::grads().
    void download_grads(std::vector<float>& flat) const;
    // (B, T, V) logits of the last forward, decoded from bf16 (before backward overwrites them).
    void download_logits(std::vector<float>& out) const;

    // Bytes of device memory held: parameters (fp32 + bf16), gradients (fp32 + bf16 staging) and
    // the activation plan of the last (B, T).
    size_t memory_bytes() const;
    size_t activation_bytes() const { return act_bytes_; }

    struct Impl;  // device pointers of the plan (defined in cuda_model.cpp)

private:
    void plan(int64_t B, int64_t T);

    ModelConfig cfg_;
    std::vector<ParamSpec> specs_;
    int64_t total_ = 0;
    std::unique_ptr<Impl> impl_;
    size_t act_bytes_ = 0;
    int64_t B_ = 0, T_ = 0, count_ = 0;
    bool has_targets_ = false;
};

}  // namespace mslm
