// Shared by the GPU decoder tests (test_cuda_decoder.cpp, test_cuda_quant_decoder.cpp): random ids,
// a row-wise closeness check, and the script that drives the GPU decoder and the CPU decoder
// through the same prefills, steps, copy and reorder. Include inside #ifdef MSLM_HAVE_CUDA.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/rng.h"
#include "generate/lm.h"
#include "model/config.h"
#include "model/cuda_inference.h"
#include "model/hybrid_lm.h"

namespace mslm::test {

// A model of cfg with init(11) weights plus N(0, 0.1²) noise, so that no parameter sits at its
// special initial value (zero biases, unit norms, A = 1..16).
inline std::unique_ptr<HybridLM<float>> random_model(const ModelConfig& cfg) {
    auto model = std::make_unique<HybridLM<float>>(cfg);
    model->init(11);
    Rng rng(12);
    float* v = model->params().values();
    for (const auto& s : model->params().specs())
        for (int64_t i = 0; i < s.numel; ++i) v[s.offset + i] += static_cast<float>(0.1 * rng.normal());
    return model;
}

inline std::vector<int32_t> random_ids(Rng& rng, int64_t n, int64_t vocab) {
    std::vector<int32_t> v(static_cast<size_t>(n));
    for (auto& x : v) x = static_cast<int32_t>(rng.below(static_cast<uint64_t>(vocab)));
    return v;
}

// max |got − want| over each row of width w, against rel_tol · max |want| of that row.
inline void expect_rows_close(const std::vector<float>& got, const std::vector<float>& want, int64_t w,
                              const std::string& what, double rel_tol) {
    ASSERT_EQ(got.size(), want.size()) << what;
    for (size_t r = 0; r < want.size() / static_cast<size_t>(w); ++r) {
        double err = 0, scale = 0;
        for (int64_t i = 0; i < w; ++i) {
            err = std::max(err, std::fabs(double(got[r * w + i]) - double(want[r * w + i])));
            scale = std::max(scale, std::fabs(double(want[r * w + i])));
        }
        EXPECT_LE(err, rel_tol * scale) << what << " row " << r << ": max diff " << err << ", scale " << scale;
    }
}

// One step of the listed slots with random tokens on both decoders: every logit and hidden row of
// the GPU within rel_tol of the CPU's.
inline void expect_step_follows(CudaCausalLM& gpu, CausalLM& cpu, const ModelConfig& cfg, Rng& rng,
                                const std::vector<int64_t>& slots, const std::string& what, double rel_tol) {
    const int64_t V = cfg.vocab_size, D = cfg.d_model;
    const auto k = static_cast<int64_t>(slots.size());
    const std::vector<int32_t> toks = random_ids(rng, k, V);
    std::vector<float> lc(k * V), lg(k * V), hc(k * D), hg(k * D);
    cpu.step(slots, toks, lc.data(), hc.data());
    gpu.step(slots, toks, lg.data(), hg.data());
    expect_rows_close(lg, lc, V, what + " logits", rel_tol);
    expect_rows_close(hg, hc, D, what + " hidden", rel_tol);
}

// Three slots at different positions: slot 0 prefilled in one call, slot 1 in three (each
// continuing the conv windows, SSM states and KV rings), slot 2 with one token; then batch-1 steps
// (the persistent step where the model allows it), batched steps over all of them and over a
// subset, a copy, a beam-style reorder and a late prefill: every logit and hidden row against the
// CPU within rel_tol.
inline void follow_the_cpu_script(CudaCausalLM& gpu, CausalLM& cpu, const ModelConfig& cfg, double rel_tol) {
    const int64_t V = cfg.vocab_size, D = cfg.d_model;
    Rng rng(7);
    cpu.start(3, cfg.max_seq_len);
    gpu.start(3, cfg.max_seq_len);
    auto both_prefill = [&](int64_t slot, const std::vector<int32_t>& ids, const std::string& what) {
        std::vector<float> lc(V), lg(V), hc(ids.size() * D), hg(ids.size() * D);
        cpu.prefill(slot, ids, lc.data(), hc.data());
        gpu.prefill(slot, ids, lg.data(), hg.data());
        expect_rows_close(lg, lc, V, what + " logits", rel_tol);
        expect_rows_close(hg, hc, D, what + " hidden", rel_tol);
    };
    both_prefill(0, random_ids(rng, 9, V), "slot 0 prefill");
    both_prefill(1, random_ids(rng, 4, V), "slot 1 prefill a");
    both_prefill(1, random_ids(rng, 2, V), "slot 1 prefill b");
    both_prefill(1, random_ids(rng, 7, V), "slot 1 prefill c");
    both_prefill(2, random_ids(rng, 1, V), "slot 2 prefill");
    auto both_step = [&](const std::vector<int64_t>& slots, const std::string& what) {
        expect_step_follows(gpu, cpu, cfg, rng, slots, what, rel_tol);
    };
    for (int t = 0; t < 5; ++t) both_step({0}, "slot 0 alone, step " + std::to_string(t));
    for (int t = 0; t < 3; ++t) both_step({1}, "slot 1 alone, step " + std::to_string(t));
    for (int t = 0; t < 8; ++t) both_step({0, 1, 2}, "step " + std::to_string(t));
    for (int t = 0; t < 3; ++t) both_step({2, 0}, "subset step " + std::to_string(t));
    cpu.copy(1, 2);
    gpu.copy(1, 2);
    both_step({2, 1}, "after copy");
    const std::vector<int64_t> order{2, 2, 0};
    cpu.reorder(order);
    gpu.reorder(order);
    EXPECT_EQ(gpu.position(0), gpu.position(1));
    for (int t = 0; t < 4; ++t) both_step({0, 1, 2}, "after reorder " + std::to_string(t));
    both_prefill(2, random_ids(rng, 6, V), "prefill after steps");
    both_step({2}, "step after the late prefill");
}

}  // namespace mslm::test
