#include "nn/mamba2.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include <fmt/format.h>

#include "ops/conv1d.h"
#include "ops/norm.h"
#include "ops/ssd.h"

namespace mslm {

template <typename T>
Mamba2Mixer<T>::Mamba2Mixer(Parameters<T>& params, const std::string& prefix, const ModelConfig& cfg)
    : p_(&params),
      d_model_(cfg.d_model),
      d_inner_(cfg.mamba_d_inner()),
      d_state_(cfg.mamba.d_state),
      d_conv_(cfg.mamba.d_conv),
      n_heads_(cfg.mamba_n_heads()),
      head_dim_(cfg.mamba.head_dim),
      n_groups_(cfg.mamba.n_groups),
      norm_groups_(cfg.mamba_norm_groups()),
      chunk_(cfg.mamba.chunk_size),
      dt_min_(cfg.mamba.dt_min),
      dt_max_(cfg.mamba.dt_max),
      dt_floor_(cfg.mamba.dt_init_floor),
      A_min_(cfg.mamba.A_init_min),
      A_max_(cfg.mamba.A_init_max),
      eps_(static_cast<T>(cfg.norm_eps)),
      dt_limit_min_(static_cast<T>(cfg.mamba.dt_limit_min)),
      dt_limit_max_(static_cast<T>(cfg.mamba.dt_limit_max)) {
    const bool bias = cfg.mamba.proj_bias;
    in_proj_ = Linear<T>(params, prefix + ".in_proj", d_model_, proj_width(), bias);
    conv_w_ = params.add(prefix + ".conv1d.weight", {conv_dim(), d_conv_}, true);
    if (cfg.mamba.conv_bias) conv_b_ = params.add(prefix + ".conv1d.bias", {conv_dim()}, false);
    dt_bias_ = params.add(prefix + ".dt_bias", {n_heads_}, false);
    A_log_ = params.add(prefix + ".A_log", {n_heads_}, false);
    D_ = params.add(prefix + ".D", {n_heads_}, false);
    norm_w_ = params.add(prefix + ".norm.weight", {d_inner_}, false);
    out_proj_ = Linear<T>(params, prefix + ".out_proj", d_inner_, d_model_, bias);
}

template <typename T>
ops::SsdInputs<T> Mamba2Mixer<T>::ssd_inputs() const {
    // The scan reads x, B, C from the conv output [x | B | C] and dt from the tail of in_proj's.
    const int64_t Din = d_inner_, GS = n_groups_ * d_state_, W = proj_width(), C = conv_dim();
    ops::SsdInputs<T> in{xbc_.data(),       C, zxbcdt_.data() + Din + C, W, p_->value(dt_bias_), p_->value(A_log_),
                         xbc_.data() + Din, C, xbc_.data() + Din + GS,   C, p_->value(D_)};
    in.dt_min = dt_limit_min_;
    in.dt_max = dt_limit_max_;
    return in;
}

template <typename T>
void Mamba2Mixer<T>::forward(T* out, const T* x, int64_t B, int64_t Tn) {
    x_ = x;
    B_ = B;
    T_ = Tn;
    const int64_t N = B * Tn, Din = d_inner_, W = proj_width(), C = conv_dim();
    zxbcdt_.resize(N * W);
    xbc_.resize(N * C);
    y_.resize(N * Din);
    z_.resize(N * Din);
    rstd_.resize(N * norm_groups_);
    yn_.resize(N * Din);

    in_proj_.forward(zxbcdt_.data(), x, N);  // (N, D) => (N, W) = [z | xBC | dt]
    ops::conv1d_causal_forward(xbc_.data(), static_cast<T*>(nullptr), zxbcdt_.data() + Din, W, p_->value(conv_w_),
                               conv_b_ == kNoParam ? nullptr : p_->value(conv_b_), B, Tn, C, d_conv_, true);
    ops::SsdInputs<T> in = ssd_inputs();
    ops::ssd_forward(y_.data(), static_cast<T*>(nullptr), in, static_cast<const T*>(nullptr),
                     ops::SsdDims{B, Tn, n_heads_, head_dim_, n_groups_, d_state_, chunk_});
    for (int64_t n = 0; n < N; ++n) std::memcpy(z_.data() + n * Din, zxbcdt_.data() + n * W, sizeof(T) * Din);
    ops::gated_rmsnorm_forward(yn_.data(), rstd_.data(), y_.data(), z_.data(), p_->value(norm_w_), N, Din, norm_groups_,
                               eps_);
    out_proj_.forward(out, yn_.data(), N);  // (N, Din) => (N, D)
}

template <typename T>
void Mamba2Mixer<T>::backward(T* dx, const T* dout) {
    const int64_t B = B_, Tn = T_, N = B * Tn, Din = d_inner_, GS = n_groups_ * d_state_, W = proj_width(),
                  C = conv_dim();
    auto zero = [](std::vector<T>& v, int64_t n) { v.assign(static_cast<size_t>(n), T(0)); };
    zero(g_yn_, N * Din);
    zero(g_y_, N * Din);
    zero(g_z_, N * Din);
    zero(g_xbc_, N * C);
    zero(g_zxbcdt_, N * W);

    out_proj_.backward(g_yn_.data(), dout, yn_.data(), N);
    ops::gated_rmsnorm_backward(g_y_.data(), g_z_.data(), p_->grad(norm_w_), g_yn_.data(), y_.data(), z_.data(),
                                p_->value(norm_w_), rstd_.data(), N, Din, norm_groups_);
    for (int64_t n = 0; n < N; ++n)
        for (int64_t c = 0; c < Din; ++c) g_zxbcdt_[n * W + c] += g_z_[n * Din + c];

    ops::SsdInputs<T> in = ssd_inputs();
    ops::SsdGrads<T> grads{g_xbc_.data(),          g_zxbcdt_.data() + Din + C, p_->grad(dt_bias_), p_->grad(A_log_),
                           g_xbc_.data() + Din,    g_xbc_.data() + Din + GS,   p_->grad(D_)};
    ops::ssd_backward(grads, g_y_.data(), in, static_cast<const T*>(nullptr),
                      ops::SsdDims{B, Tn, n_heads_, head_dim_, n_groups_, d_state_, chunk_});
    ops::conv1d_causal_backward(g_zxbcdt_.data() + Din, p_->grad(conv_w_),
                                conv_b_ == kNoParam ? nullptr : p_->grad(conv_b_), g_xbc_.data(), zxbcdt_.data() + Din,
                                W, p_->value(conv_w_), conv_b_ == kNoParam ? nullptr : p_->value(conv_b_), B, Tn, C,
                                d_conv_, true);
    in_proj_.backward(dx, g_zxbcdt_.data(), x_, N);
}

template <typename T>
void Mamba2Mixer<T>::init(InitContext& ctx) {
    Rng& rng = ctx.rng;
    in_proj_.init_normal(rng, ctx.std);
    out_proj_.init_normal(rng, ctx.std * ctx.out_proj_scale);
    double bound = 1.0 / std::sqrt(static_cast<double>(d_conv_));
    for (int64_t i = 0; i < conv_dim() * d_conv_; ++i) p_->value(conv_w_)[i] = static_cast<T>(rng.uniform(-bound, bound));
    if (conv_b_ != kNoParam)
        for (int64_t i = 0; i < conv_dim(); ++i) p_->value(conv_b_)[i] = static_cast<T>(rng.uniform(-bound, bound));
    for (int64_t h = 0; h < n_heads_; ++h) {
        // mamba_ssm Mamba2: dt log-uniform in [dt_min, dt_max], floored; bias = softplus⁻¹(dt);
        // A uniform in [A_init_min, A_init_max], A_log = log(A); D = 1.
        double dt = std::max(std::exp(rng.uniform(std::log(dt_min_), std::log(dt_max_))), dt_floor_);
        p_->value(dt_bias_)[h] = static_cast<T>(dt + std::log(-std::expm1(-dt)));
        p_->value(A_log_)[h] = static_cast<T>(std::log(rng.uniform(A_min_, A_max_)));
        p_->value(D_)[h] = T(1);
    }
    for (int64_t i = 0; i < d_inner_; ++i) p_->value(norm_w_)[i] = T(1);
}

template <typename T>
std::string Mamba2Mixer<T>::describe() const {
    return fmt::format("mamba2(d_inner={}, heads={}x{}, d_state={}, groups={}, chunk={})", d_inner_, n_heads_, head_dim_,
                       d_state_, n_groups_, chunk_);
}

template <typename T>
int64_t Mamba2Mixer<T>::saved_per_token(const ModelConfig& cfg) {
    const int64_t Din = cfg.mamba_d_inner(), GS = cfg.mamba.n_groups * cfg.mamba.d_state;
    const int64_t W = 2 * Din + 2 * GS + cfg.mamba_n_heads(), C = Din + 2 * GS;
    return W + C + 3 * Din + cfg.mamba_norm_groups();  // zxbcdt, xbc, y, z, yn, rstd
}

template class Mamba2Mixer<float>;
template class Mamba2Mixer<double>;

}  // namespace mslm
