#include "nn/attention.h"

#include <cmath>

#include <fmt/format.h>

namespace mslm {

template <typename T>
AttentionMixer<T>::AttentionMixer(Parameters<T>& params, const std::string& prefix, const ModelConfig& cfg)
    : d_model_(cfg.d_model),
      n_heads_(cfg.attention.n_heads),
      n_kv_heads_(cfg.attn_kv_heads()),
      head_dim_(cfg.attn_head_dim()),
      rotary_dim_(cfg.attn_rotary_dim()),
      window_(cfg.attention.sliding_window),
      position_(cfg.attention.position),
      rope_theta_(cfg.attention.rope_theta) {
    qkv_proj_ = Linear<T>(params, prefix + ".qkv_proj", d_model_, qkv_width(), cfg.attention.qkv_bias);
    o_proj_ = Linear<T>(params, prefix + ".o_proj", n_heads_ * head_dim_, d_model_, cfg.attention.out_bias);
}

template <typename T>
ops::AttentionOptions<T> AttentionMixer<T>::options() const {
    ops::AttentionOptions<T> opt;
    opt.scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(head_dim_)));
    opt.window = window_;
    opt.alibi = position_ == PositionKind::ALiBi;
    return opt;
}

template <typename T>
void AttentionMixer<T>::forward(T* out, const T* x, int64_t B, int64_t Tn) {
    x_ = x;
    B_ = B;
    T_ = Tn;
    const int64_t N = B * Tn, W = qkv_width(), Dh = head_dim_;
    qkv_.resize(N * W);
    o_.resize(N * n_heads_ * Dh);
    lse_.resize(B * n_heads_ * Tn);
    qkv_proj_.forward(qkv_.data(), x, N);  // (N, D) => (N, (Hq + 2·Hkv)·Dh)
    T* q = qkv_.data();
    T* k = q + n_heads_ * Dh;
    T* v = k + n_kv_heads_ * Dh;
    if (position_ == PositionKind::RoPE) {
        ops::rope_apply(q, W, B, Tn, n_heads_, Dh, rotary_dim_, rope_theta_, 0, false);
        ops::rope_apply(k, W, B, Tn, n_kv_heads_, Dh, rotary_dim_, rope_theta_, 0, false);
    }
    ops::attention_forward(o_.data(), lse_.data(), q, W, k, W, v, W, ops::AttentionDims{B, Tn, n_heads_, n_kv_heads_, Dh},
                           options());
    o_proj_.forward(out, o_.data(), N);
}

template <typename T>
void AttentionMixer<T>::backward(T* dx, const T* dout) {
    const int64_t B = B_, Tn = T_, N = B * Tn, W = qkv_width(), Dh = head_dim_;
    g_o_.assign(static_cast<size_t>(N * n_heads_ * Dh), T(0));
    g_qkv_.assign(static_cast<size_t>(N * W), T(0));
    o_proj_.backward(g_o_.data(), dout, o_.data(), N);
    const T* q = qkv_.data();
    const T* k = q + n_heads_ * Dh;
    const T* v = k + n_kv_heads_ * Dh;
    T* dq = g_qkv_.data();
    T* dk = dq + n_heads_ * Dh;
    T* dv = dk + n_kv_heads_ * Dh;
    ops::attention_backward(dq, dk, dv, g_o_.data(), o_.data(), lse_.data(), q, W, k, W, v, W,
                            ops::AttentionDims{B, Tn, n_heads_, n_kv_heads_, Dh}, options());
    if (position_ == PositionKind::RoPE) {
        ops::rope_apply(dq, W, B, Tn, n_heads_, Dh, rotary_dim_, rope_theta_, 0, true);
        ops::rope_apply(dk, W, B, Tn, n_kv_heads_, Dh, rotary_dim_, rope_theta_, 0, true);
    }
    qkv_proj_.backward(dx, g_qkv_.data(), x_, N);
}

template <typename T>
void AttentionMixer<T>::init(InitContext& ctx) {
    qkv_proj_.init_normal(ctx.rng, ctx.std);
    o_proj_.init_normal(ctx.rng, ctx.std * ctx.out_proj_scale);
}

template <typename T>
std::string AttentionMixer<T>::describe() const {
    const char* pos = position_ == PositionKind::RoPE ? "rope" : position_ == PositionKind::ALiBi ? "alibi" : "none";
    std::string s = fmt::format("attention(heads={}, kv_heads={}, head_dim={}, {}", n_heads_, n_kv_heads_, head_dim_, pos);
    if (position_ == PositionKind::RoPE && rotary_dim_ != head_dim_) s += fmt::format(" rotary_dim={}", rotary_dim_);
    if (window_) s += fmt::format(", window={}", window_);
    return s + ")";
}

template <typename T>
int64_t AttentionMixer<T>::saved_per_token(const ModelConfig& cfg) {
    const int64_t Hq = cfg.attention.n_heads, Dh = cfg.attn_head_dim();
    return (Hq + 2 * cfg.attn_kv_heads()) * Dh + Hq * Dh + Hq;  // qkv, o, lse
}

template class AttentionMixer<float>;
template class AttentionMixer<double>;

}  // namespace mslm
