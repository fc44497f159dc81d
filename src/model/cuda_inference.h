// CudaCausalLM: the CausalLM slot interface (generate/lm.h) on one GPU, over a CudaHybridLM's
// uploaded bf16 weights, so that `generate` and `chat` run with --device cuda.
//
// First version, correct by construction rather than fast: each slot keeps its token history on
// the host, and every prefill / step runs CudaHybridLM's full (training) forward on that slot's
// whole sequence (T = its length rounded up to a multiple of kPadTo, padded with token 0 — the model
// is causal, so the padding never reaches the rows that are read; a step runs its k slots as one
// (k, T) batch) and downloads the logits (and final-norm hidden states) of the rows asked for.
// Cost per step is O(length), so a generation is O(length²); reorder / copy are host-side copies
// of the histories. The recurrent device state (conv windows, fp32 SSM states, bf16 KV ring
// buffers) driven by the decode kernels (conv1d_causal_update, ssd_update, selective_scan update,
// attention_decode) is the follow-up.
//
// Numerics: bf16 weights and activations, fp32 accumulation and SSM states (CudaHybridLM's); logits
// come back to the host as fp32 decoded from bf16.
//
// Plain C++ header (no CUDA includes). CudaCausalLM's members are defined only in builds with
// MSLM_HAVE_CUDA; elsewhere make_causal_lm refuses "cuda" (parse_inference_device, padded_length
// and make_causal_lm exist in every build).
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "generate/lm.h"

namespace mslm {

class CudaHybridLM;

class CudaCausalLM : public CausalLM {
public:
    static constexpr int64_t kPadTo = 64;

    // Uploads model's fp32 parameters to GPU `device` (made current for this thread).
    CudaCausalLM(const HybridLM<float>& model, int device = 0);
    ~CudaCausalLM() override;

    int64_t vocab_size() const override;
    int64_t hidden_size() const override;
    int64_t max_seq_len() const override;
    void start(int64_t slots, int64_t max_len) override;
    void prefill(int64_t slot, std::span<const int32_t> ids, float* logits, float* hidden) override;
    void step(std::span<const int64_t> slots, std::span<const int32_t> tokens, float* logits,
              float* hidden) override;
    void reorder(std::span<const int64_t> src) override;
    void copy(int64_t src_slot, int64_t dst_slot) override;

    // The padded forward length for a sequence of n tokens (host-side, testable without a GPU).
    static int64_t padded_length(int64_t n, int64_t max_seq_len);

private:
    void check_slot(int64_t slot, const char* what) const;
    // Runs the forward on slot's history and writes the logits (and hidden rows, when non-null) of
    // positions [first, length).
    void run(int64_t slot, int64_t first, float* logits, float* hidden);

    std::unique_ptr<CudaHybridLM> gpu_;
    std::vector<std::vector<int32_t>> history_;
    int64_t max_len_ = 0;
    std::vector<int32_t> padded_;
};

// "cpu" => -1, "cuda" => 0, "cuda:N" => N; anything else throws.
int parse_inference_device(const std::string& device);

// The CausalLM that generate / chat decode with: HybridCausalLM on the CPU (device "cpu"), or a
// CudaCausalLM; a build without CUDA refuses "cuda" with a message saying so.
std::unique_ptr<CausalLM> make_causal_lm(HybridLM<float>& model, const std::string& device);

}  // namespace mslm
