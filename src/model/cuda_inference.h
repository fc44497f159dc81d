// CudaCausalLM: the CausalLM slot interface (generate/lm.h) on one GPU — a stateful decoder with
// the same algorithm as the CPU's HybridCausalLM: prefill in the parallel (chunked) form, then O(1)
// recurrent steps per token for the Mamba layers and a KV cache for attention.
//
// Device memory, each category one allocation from the device's caching allocator
// (core/caching_allocator.h), so a decoder re-started per request reuses its blocks:
//   weights  the bf16 copy of every parameter, in Parameters<float>'s flat layout (no fp32 copy);
//   state    per Mamba layer the conv window (slots, d_conv − 1, conv channels) bf16 and the SSM
//            state fp32 ((slots, H, P, N) Mamba-2, (slots, d_inner, N) Mamba-1; Mamba-2's in bf16
//            with MSLM_DECODE_STATE=bf16, read when the decoder is built: half the bytes a step
//            streams at large batches, as mamba-ssm's and transformers' caches hold); per attention
//            layer key and value ring buffers (slots, cache_len, Hkv, head_dim) bf16, cache_len =
//            max_len, or min(max_len, window) with a sliding window (position p at row p % cache_len);
//   scratch  one layer's activations for max(slots, kPrefillChunk) rows, reused by every layer.
// state_bytes / scratch_bytes / weight_bytes report them (`mamba-slm info` prints the plan).
//
// Prefill runs the training forward's kernels on the new tokens only, continuing the slot's state:
// the conv reads [window | new inputs] and keeps the last d_conv − 1 inputs; the SSD and the scan
// start from the slot's fp32 state and leave the final one in place; attention writes the new keys
// and values into the ring and attends with q_offset = the slot's position (over an ordered copy of
// the window when the ring wraps). Prompts longer than kPrefillChunk run in pieces.
// A step advances k slots by one token with the decode kernels (conv1d_causal_update, ssd_update,
// selective_scan_update, attention_decode), all k rows in one launch each; with MSLM_CUDA_GRAPHS
// unset or 1 the step is captured once per k as a CUDA graph and replayed (one launch per token).
// reorder / copy move the slots' state blocks on the device.
//
// Numerics: bf16 weights and activations, fp32 accumulation and SSM states (bf16 storage, fp32
// arithmetic, with MSLM_DECODE_STATE=bf16; prefill then runs the SSD on an fp32 copy of the slot's
// state and rounds the final state once); logits are computed in
// fp32 from the bf16 final-norm output (no bf16 rounding of the logits), hidden states come back
// decoded from bf16.
//
// Plain C++ header (no CUDA includes). CudaCausalLM's members are defined only in builds with
// MSLM_HAVE_CUDA; elsewhere make_causal_lm refuses "cuda" (parse_inference_device and
// make_causal_lm exist in every build).
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "generate/lm.h"
#include "model/config.h"

namespace mslm {

struct CudaDecoderMemory {
    size_t weights = 0, state = 0, scratch = 0;
};

class CudaCausalLM : public CausalLM {
public:
    static constexpr int64_t kPrefillChunk = 2048;

    // Uploads model's parameters as bf16 to GPU `device` (made current for this thread).
    CudaCausalLM(const HybridLM<float>& model, int device = 0);
    ~CudaCausalLM() override;

    int64_t vocab_size() const override;
    int64_t hidden_size() const override;
    int64_t max_seq_len() const override;
    void start(int64_t slots, int64_t max_len) override;
    void prefill(int64_t slot, std::span<const int32_t> ids, float* logits, float* hidden) override;
    void step(std::span<const int64_t> slots, std::span<const int32_t> tokens, float* logits,
              float* hidden) override;
    // The step, then each row's pick made on the device (greedy_pick, cuda_decoder_kernels.h): 16
    // bytes a row come back instead of V floats.
    void step_greedy(std::span<const int64_t> slots, std::span<const int32_t> tokens,
                     GreedyPick* picks) override;
    // The steps as one CUDA graph whose while node loops over the step, the pick and the loop's
    // bookkeeping on the device (greedy_loop_tail), kLoopChunk steps a launch at most: no upload,
    // download or launch between steps. The same kernels as step_greedy's, so the same picks bit for
    // bit. Loops over step_greedy on the host instead without graphs (MSLM_CUDA_GRAPHS=0), with more
    // than kLoopMaxStops stop ids, or where the device loop is off (MSLM_DECODE_LOOP=0).
    int64_t step_greedy_n(std::span<const int64_t> slots, std::span<const int32_t> tokens, int64_t n,
                          std::span<const int32_t> stop_ids, GreedyPick* picks) override;
    static constexpr int64_t kLoopChunk = 64;
    void reorder(std::span<const int64_t> src) override;
    void copy(int64_t src_slot, int64_t dst_slot) override;
    void clear(int64_t slot) override;

    int64_t position(int64_t slot) const;  // tokens the slot holds
    CudaDecoderMemory memory() const;      // bytes held now (state and scratch: after start)
    // The plan for a config without building anything: weights, and state and scratch for
    // `slots` sequences of max_len tokens (host arithmetic; needs no GPU).
    static CudaDecoderMemory plan(const ModelConfig& cfg, int64_t slots, int64_t max_len);

    struct Impl;

private:
    void check_slot(int64_t slot, const char* what) const;
    void prefill_piece(int64_t slot, const int32_t* ids, int64_t n, float* logits, float* hidden);
    void run_step(int64_t k);  // the step's kernels on the staged ids / slots / positions
    // Checks and uploads the step's slots, positions and tokens and queues its kernels (graph,
    // persistent step or eager); returns k. The caller downloads and advances the positions.
    int64_t enqueue_step(std::span<const int64_t> slots, std::span<const int32_t> tokens);
    // enqueue_step's checks (room for `steps` more tokens in every slot) and upload; returns k.
    int64_t upload_step(std::span<const int64_t> slots, std::span<const int32_t> tokens, int64_t steps);
    // step_greedy_n's graph for k rows (built at its first use), or null where the device cannot
    // run it (the decoder then loops on the host).
    void* loop_graph(int64_t k);
    // The first logit_rows logits rows and hidden_rows final-norm rows into the caller's arrays (each
    // when non-null); waits for the stream.
    void download(int64_t logit_rows, float* logits, int64_t hidden_rows, float* hidden);

    ModelConfig cfg_;
    std::unique_ptr<Impl> impl_;
    int device_ = 0;
    int64_t slots_ = 0, max_len_ = 0, cache_len_ = 0;
    std::vector<int64_t> pos_;
};

// "cpu" => -1, "cuda" => 0, "cuda:N" => N; anything else throws.
int parse_inference_device(const std::string& device);

// The CausalLM that generate / chat decode with: HybridCausalLM on the CPU (device "cpu"), or a
// CudaCausalLM; a build without CUDA refuses "cuda" with a message saying so.
std::unique_ptr<CausalLM> make_causal_lm(HybridLM<float>& model, const std::string& device);

}  // namespace mslm
