// Helpers shared by the LoRA and QLoRA tests (test_lora.cpp, test_qlora.cpp): a seeded model, an
// adapter filled with random values, a small batch of ids and targets, and a LoraConfig.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/rng.h"
#include "lora/lora.h"
#include "model/config.h"
#include "model/hybrid_lm.h"

namespace mslm::test {

// Mamba-2 + attention (GQA, partial RoPE) + SwiGLU: Bamba's module names, q/k/v and gate/up
// fused. d_model, head_dim and d_ff are the caller's (QLoRA wants rows that hold whole and partial
// blocks of 64).
inline ModelConfig lora_hybrid_config(int64_t d_model, int64_t head_dim, int64_t d_ff) {
    ModelConfig c;
    c.vocab_size = 17;
    c.d_model = d_model;
    c.n_layers = 2;
    c.layers = parse_layer_pattern("MA");
    c.mamba.version = 2;
    c.mamba.d_state = 4;
    c.mamba.head_dim = head_dim;
    c.mamba.n_groups = 2;
    c.mamba.chunk_size = 4;
    c.attention.n_heads = 4;
    c.attention.n_kv_heads = 2;
    c.attention.rotary_dim = 2;
    c.mlp = {MlpKind::SwiGLU, d_ff, false};
    c.max_seq_len = 32;
    return c;
}

// The same widths as Mamba-1 with Jamba's dt/B/C norms + attention without positions + SwiGLU,
// untied head: Jamba's names, in_proj / x_proj / dt_proj / out_proj.
inline ModelConfig lora_jamba_config(ModelConfig c) {
    c.layers = parse_layer_pattern("AM");
    c.mamba.version = 1;
    c.mamba.d_state = 3;
    c.mamba.dt_rank = 2;
    c.mamba.dt_bc_norm = true;
    c.attention.position = PositionKind::None;
    c.tie_embeddings = false;
    return c;
}

template <typename T>
std::unique_ptr<HybridLM<T>> make_model(const ModelConfig& c, uint64_t seed) {
    auto m = std::make_unique<HybridLM<T>>(c);
    m->init(seed);
    return m;
}

// Every adapter parameter drawn from N(0, std²). B = 0 after init makes every adapter a no-op;
// tests that need one that acts fill B too.
template <typename T>
void randomise(LoraAdapter<T>& a, uint64_t seed, double std = 0.3) {
    Rng rng(seed);
    Parameters<T>& p = a.params();
    for (size_t i = 0; i < p.specs().size(); ++i)
        for (int64_t k = 0; k < p.specs()[i].numel; ++k) p.value(i)[k] = static_cast<T>(rng.normal(0.0, std));
}

// B × T ids with targets; every fifth target (from the fourth) is -100, ignored by the loss.
struct TokenBatch {
    std::vector<int32_t> ids, targets;
    int64_t B = 2, T = 7;
};

inline TokenBatch make_batch(int64_t vocab, uint64_t seed) {
    TokenBatch b;
    Rng rng(seed);
    for (int64_t i = 0; i < b.B * b.T; ++i) {
        b.ids.push_back(static_cast<int32_t>(rng.below(vocab)));
        b.targets.push_back(i % 5 == 3 ? -100 : static_cast<int32_t>(rng.below(vocab)));
    }
    return b;
}

inline LoraConfig lora_config(const std::string& targets, int64_t r, double alpha) {
    LoraConfig c;
    c.r = r;
    c.alpha = alpha;
    set_lora_targets(c, targets);
    return c;
}

}  // namespace mslm::test
