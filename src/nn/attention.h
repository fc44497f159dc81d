// Attention mixer: fused qkv projection, RoPE / ALiBi / no position, causal (optionally
// sliding-window) tiled attention, output projection.
#pragma once
#include <vector>

#include "model/config.h"
#include "nn/linear.h"
#include "nn/buffers.h"
#include "nn/mixer.h"
#include "ops/attention.h"

namespace mslm {

template <typename T>
class AttentionMixer : public Mixer<T> {
public:
    AttentionMixer(Parameters<T>& params, const std::string& prefix, const ModelConfig& cfg);
    void forward(T* out, const T* x, int64_t B, int64_t Tn) override;
    void backward(T* dx, const T* dout) override;
    void prefill(T* out, const T* x, int64_t n, InferenceState<T>& st, int64_t layer, int64_t slot) override;
    void step(T* out, const T* x, int64_t k, InferenceState<T>& st, int64_t layer,
              const int64_t* slots) override;
    void init(InitContext& ctx) override;
    std::string describe() const override;
    void release() override { free_buffers(qkv_, o_, lse_, g_o_, g_qkv_); }
    size_t activation_bytes() const override { return buffer_bytes(qkv_, o_, lse_, g_o_, g_qkv_); }
    static int64_t saved_per_token(const ModelConfig& cfg);

private:
    int64_t qkv_width() const { return (n_heads_ + 2 * n_kv_heads_) * head_dim_; }
    ops::AttentionOptions<T> options() const;

    int64_t d_model_, n_heads_, n_kv_heads_, head_dim_, rotary_dim_, window_;
    PositionKind position_;
    double rope_theta_;
    Linear<T> qkv_proj_, o_proj_;

    const T* x_ = nullptr;
    int64_t B_ = 0, T_ = 0;
    std::vector<T> qkv_;  // (N, (Hq + 2·Hkv)·Dh), q and k after RoPE
    std::vector<T> o_;    // (N, Hq·Dh)
    std::vector<T> lse_;  // (B, Hq, T)
    std::vector<T> g_o_, g_qkv_;
    // Inference buffers, apart from the saved activations.
    std::vector<T> inf_qkv_, inf_o_, inf_lse_, inf_k_, inf_v_, inf_scores_;
    std::vector<int64_t> inf_pos_;
};

}  // namespace mslm
