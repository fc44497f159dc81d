#include "nn/attention.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>

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
    // k's heads follow q's in every row, so one call rotates both and computes the angles once (the
    // cos and sin of each position were most of rope's time); the same in backward, prefill and step.
    if (position_ == PositionKind::RoPE) {
        ops::rope_apply(q, W, B, Tn, n_heads_ + n_kv_heads_, Dh, rotary_dim_, rope_theta_, 0, false);
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
        ops::rope_apply(dq, W, B, Tn, n_heads_ + n_kv_heads_, Dh, rotary_dim_, rope_theta_, 0, true);
    }
    qkv_proj_.backward(dx, g_qkv_.data(), x_, N);
}

template <typename T>
void AttentionMixer<T>::prefill(T* out, const T* x, int64_t n, InferenceState<T>& st, int64_t layer,
                                int64_t slot) {
    const int64_t W = qkv_width(), Dh = head_dim_, row = n_kv_heads_ * Dh, L = st.cache_len();
    const int64_t pos0 = st.position(slot);
    auto& ls = st.layer(layer);
    T* k_cache = ls.k.data() + slot * L * row;  // (L, Hkv·Dh) ring: position p at row p % L
    T* v_cache = ls.v.data() + slot * L * row;
    inf_qkv_.resize(n * W);
    inf_o_.resize(n * n_heads_ * Dh);
    inf_lse_.resize(n_heads_ * n);
    qkv_proj_.forward(inf_qkv_.data(), x, n);  // (n, D) => (n, (Hq + 2·Hkv)·Dh)
    T* q = inf_qkv_.data();
    T* k = q + n_heads_ * Dh;
    T* v = k + n_kv_heads_ * Dh;
    if (position_ == PositionKind::RoPE) {
        ops::rope_apply(q, W, 1, n, n_heads_ + n_kv_heads_, Dh, rotary_dim_, rope_theta_, pos0, false);
    }
    ops::AttentionOptions<T> opt = options();
    const ops::AttentionDims dims{1, n, n_heads_, n_kv_heads_, Dh};
    // Cached keys the first new query sees; the cache holds them all (L ≥ min(window, max_len)).
    const int64_t m = window_ > 0 ? std::min(pos0, window_ - 1) : pos0;
    if (m == 0) {
        ops::attention_forward(inf_o_.data(), inf_lse_.data(), q, W, k, W, v, W, dims, opt);
    } else {
        // Continuation: the tiled kernel over [m cached keys | n new keys], queries offset by m.
        inf_k_.resize((m + n) * row);
        inf_v_.resize((m + n) * row);
        for (int64_t j = 0; j < m; ++j) {
            const int64_t r = (pos0 - m + j) % L;
            std::copy_n(k_cache + r * row, row, inf_k_.data() + j * row);
            std::copy_n(v_cache + r * row, row, inf_v_.data() + j * row);
        }
        for (int64_t t = 0; t < n; ++t) {
            std::memcpy(inf_k_.data() + (m + t) * row, k + t * W, sizeof(T) * row);
            std::memcpy(inf_v_.data() + (m + t) * row, v + t * W, sizeof(T) * row);
        }
        opt.q_offset = m;
        ops::attention_forward(inf_o_.data(), inf_lse_.data(), q, W, inf_k_.data(), row, inf_v_.data(), row,
                               dims, opt);
    }
    // Only the last L new positions can still be read later.
    for (int64_t t = std::max<int64_t>(0, n - L); t < n; ++t) {
        const int64_t r = (pos0 + t) % L;
        std::memcpy(k_cache + r * row, k + t * W, sizeof(T) * row);
        std::memcpy(v_cache + r * row, v + t * W, sizeof(T) * row);
    }
    o_proj_.forward(out, inf_o_.data(), n);
}

template <typename T>
void AttentionMixer<T>::step(T* out, const T* x, int64_t k, InferenceState<T>& st, int64_t layer,
                             const int64_t* slots) {
    const int64_t W = qkv_width(), Dh = head_dim_, row = n_kv_heads_ * Dh, L = st.cache_len();
    auto& ls = st.layer(layer);
    inf_qkv_.resize(k * W);
    inf_o_.resize(k * n_heads_ * Dh);
    inf_scores_.resize(k * n_heads_ * L);
    inf_pos_.resize(k);
    for (int64_t i = 0; i < k; ++i) inf_pos_[i] = st.position(slots[i]);
    qkv_proj_.forward(inf_qkv_.data(), x, k);  // (k, D) => (k, (Hq + 2·Hkv)·Dh)
    T* q = inf_qkv_.data();
    T* kk = q + n_heads_ * Dh;
    T* v = kk + n_kv_heads_ * Dh;
    if (position_ == PositionKind::RoPE) {
        ops::rope_apply_at(q, W, k, n_heads_ + n_kv_heads_, Dh, rotary_dim_, rope_theta_, inf_pos_.data(),
                           false);
    }
    for (int64_t i = 0; i < k; ++i) {
        const int64_t r = (slots[i] * L + inf_pos_[i] % L) * row;
        std::memcpy(ls.k.data() + r, kk + i * W, sizeof(T) * row);
        std::memcpy(ls.v.data() + r, v + i * W, sizeof(T) * row);
    }
    ops::attention_decode(inf_o_.data(), inf_scores_.data(), q, W, ls.k.data(), ls.v.data(), slots,
                          inf_pos_.data(), ops::AttentionDims{k, L, n_heads_, n_kv_heads_, Dh}, options());
    o_proj_.forward(out, inf_o_.data(), k);
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
