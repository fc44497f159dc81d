// What `mamba-slm info` reports: layers, parameter counts by component, and memory estimates for
// inference and training, computed from the config alone (no weights are allocated).
#pragma once
#include <cstdint>
#include <string>

#include "model/config.h"

namespace mslm {

struct ParamBreakdown {
    int64_t embedding = 0, lm_head = 0, mamba = 0, attention = 0, mlp = 0, norms = 0;
    int64_t total() const { return embedding + lm_head + mamba + attention + mlp + norms; }
};

struct MemoryEstimate {
    int64_t weights_f32, weights_bf16;   // bytes
    int64_t state_per_sequence;          // recurrent states + KV cache at seq_len, fp32, bytes
    int64_t train_params_grads_adam;     // fp32 weights + grads + 2 AdamW moments, bytes
    int64_t train_activations;           // saved activations for (batch, seq_len), fp32, bytes
};

ParamBreakdown count_parameters(const ModelConfig& cfg);
int64_t activation_elements_per_token(const ModelConfig& cfg);  // fp32 elements HybridLM keeps
MemoryEstimate estimate_memory(const ModelConfig& cfg, int64_t batch, int64_t seq_len);
std::string format_bytes(int64_t bytes);  // "1.23 GiB"
std::string format_count(int64_t n);      // "129.3M"
std::string describe_model(const ModelConfig& cfg, int64_t batch, int64_t seq_len);

}  // namespace mslm
