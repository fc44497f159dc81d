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
