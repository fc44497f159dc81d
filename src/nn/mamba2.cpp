#include "nn/mamba2.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

#include "core/dtype.h"
#include "ops/conv1d.h"
#include "ops/norm.h"
#include "ops/ssd.h"

namespace mslm {

namespace {

// MSLM_SSD_PREFILL=chunked|recurrent (default recurrent), read once.
bool ssd_prefill_chunked() {
    static const bool chunked = [] {
        const char* env = std::getenv("MSLM_SSD_PREFILL");
        const std::string v = env ? env : "recurrent";
        MSLM_CHECK(v == "chunked" || v == "recurrent", "MSLM_SSD_PREFILL={}: expected chunked or recurrent", v);
        return v == "chunked";
    }();
    return chunked;
}

}  // namespace


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
    return ssd_inputs(zxbcdt_.data(), xbc_.data());
}

template <typename T>
ops::SsdInputs<T> Mamba2Mixer<T>::ssd_inputs(const T* zxbcdt, const T* xbc) const {
    // The scan reads x, B, C from the conv output [x | B | C] and dt from the tail of in_proj's.
    const int64_t Din = d_inner_, GS = n_groups_ * d_state_, W = proj_width(), C = conv_dim();
    ops::SsdInputs<T> in{xbc,       C, zxbcdt + Din + C, W, p_->value(dt_bias_), p_->value(A_log_),
                         xbc + Din, C, xbc + Din + GS,   C, p_->value(D_)};
    in.dt_min = dt_limit_min_;
    in.dt_max = dt_limit_max_;
    return in;
}

template <typename T>
ops::SsdDims Mamba2Mixer<T>::ssd_dims(int64_t batch, int64_t seqlen) const {
    return ops::SsdDims{batch, seqlen, n_heads_, head_dim_, n_groups_, d_state_, chunk_};
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
                     ssd_dims(B, Tn));
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
    ops::ssd_backward(grads, g_y_.data(), in, static_cast<const T*>(nullptr), ssd_dims(B, Tn));
    ops::conv1d_causal_backward(g_zxbcdt_.data() + Din, p_->grad(conv_w_),
                                conv_b_ == kNoParam ? nullptr : p_->grad(conv_b_), g_xbc_.data(), zxbcdt_.data() + Din,
                                W, p_->value(conv_w_), conv_b_ == kNoParam ? nullptr : p_->value(conv_b_), B, Tn, C,
                                d_conv_, true);
    in_proj_.backward(dx, g_zxbcdt_.data(), x_, N);
}

template <typename T>
void Mamba2Mixer<T>::infer_output(T* out, int64_t rows) {
    const int64_t Din = d_inner_, W = proj_width();
    inf_z_.resize(rows * Din);
    inf_rstd_.resize(rows * norm_groups_);
    inf_yn_.resize(rows * Din);
    for (int64_t n = 0; n < rows; ++n)
        std::memcpy(inf_z_.data() + n * Din, inf_zxbcdt_.data() + n * W, sizeof(T) * Din);
    ops::gated_rmsnorm_forward(inf_yn_.data(), inf_rstd_.data(), inf_y_.data(), inf_z_.data(),
                               p_->value(norm_w_), rows, Din, norm_groups_, eps_);
    out_proj_.forward(out, inf_yn_.data(), rows);  // (rows, Din) => (rows, D)
}

template <typename T>
void Mamba2Mixer<T>::prefill(T* out, const T* x, int64_t n, InferenceState<T>& st, int64_t layer,
                             int64_t slot) {
    const int64_t Din = d_inner_, W = proj_width(), C = conv_dim(), K = d_conv_;
    auto& ls = st.layer(layer);
    T* window = ls.conv.data() + slot * (K - 1) * C;                // (K − 1, C)
    const int64_t n_state = n_heads_ * head_dim_ * d_state_;
    // (H, P, N): the slot's state, or (bf16 states) an fp32 copy of it, rounded back once at the end.
    const bool bf16_state = !ls.ssm16.empty();
    if (bf16_state) {
        inf_h32_.resize(n_state);
        const uint16_t* h16 = ls.ssm16.data() + slot * n_state;
        for (int64_t i = 0; i < n_state; ++i) inf_h32_[i] = static_cast<T>(bf16_to_f32(h16[i]));
    }
    T* h = bf16_state ? inf_h32_.data() : ls.ssm.data() + slot * n_state;
    inf_zxbcdt_.resize(n * W);
    in_proj_.forward(inf_zxbcdt_.data(), x, n);  // (n, D) => (n, W) = [z | xBC | dt]

    // The conv continues from the saved window: it runs over [window | xBC] (K − 1 + n rows) and
    // the last n outputs are kept. An empty slot's window is zero, exactly the training forward's
    // padding, so one path serves a fresh prompt and a continuation.
    inf_window_.resize((K - 1 + n) * C);
    std::copy_n(window, (K - 1) * C, inf_window_.begin());
    for (int64_t t = 0; t < n; ++t)
        std::memcpy(inf_window_.data() + (K - 1 + t) * C, inf_zxbcdt_.data() + t * W + Din, sizeof(T) * C);
    std::copy_n(inf_window_.begin() + n * C, (K - 1) * C, window);
    inf_xbc_.resize((K - 1 + n) * C);
    ops::conv1d_causal_forward(inf_xbc_.data(), static_cast<T*>(nullptr), inf_window_.data(), C,
                               p_->value(conv_w_), conv_b_ == kNoParam ? nullptr : p_->value(conv_b_), 1,
                               K - 1 + n, C, K, true);
    const T* xbc = inf_xbc_.data() + (K - 1) * C;  // (n, C)

    // The scan starts from the slot's state and leaves its final state there (in place). On the CPU
    // the vectorised recurrence beats the chunked form (docs/PERFORMANCE.md, "Prefill: chunked or
    // recurrent SSD"); MSLM_SSD_PREFILL=chunked selects the chunked one.
    inf_y_.resize(n * Din);
    if (ssd_prefill_chunked())
        ops::ssd_forward(inf_y_.data(), h, ssd_inputs(inf_zxbcdt_.data(), xbc), h, ssd_dims(1, n));
    else
        ops::ssd_forward_recurrent(inf_y_.data(), h, ssd_inputs(inf_zxbcdt_.data(), xbc), h, ssd_dims(1, n));
    if (bf16_state) {
        uint16_t* h16 = ls.ssm16.data() + slot * n_state;
        for (int64_t i = 0; i < n_state; ++i) h16[i] = f32_to_bf16(static_cast<float>(h[i]));
    }
    infer_output(out, n);
}

template <typename T>
void Mamba2Mixer<T>::step(T* out, const T* x, int64_t k, InferenceState<T>& st, int64_t layer,
                          const int64_t* slots) {
    const int64_t Din = d_inner_, W = proj_width(), C = conv_dim();
    auto& ls = st.layer(layer);
    inf_zxbcdt_.resize(k * W);
    inf_xbc_.resize(k * C);
    inf_y_.resize(k * Din);
    in_proj_.forward(inf_zxbcdt_.data(), x, k);  // (k, D) => (k, W) = [z | xBC | dt]
    ops::conv1d_causal_update(inf_xbc_.data(), ls.conv.data(), slots, inf_zxbcdt_.data() + Din, W,
                              p_->value(conv_w_), conv_b_ == kNoParam ? nullptr : p_->value(conv_b_), k, C,
                              d_conv_, true);
    if (!ls.ssm16.empty()) {
        if constexpr (std::is_same_v<T, float>)
            ops::ssd_update_bf16_state(inf_y_.data(), ls.ssm16.data(), slots,
                                       ssd_inputs(inf_zxbcdt_.data(), inf_xbc_.data()), ssd_dims(k, 1));
    } else {
        ops::ssd_update(inf_y_.data(), ls.ssm.data(), slots, ssd_inputs(inf_zxbcdt_.data(), inf_xbc_.data()),
                        ssd_dims(k, 1));
    }
    infer_output(out, k);
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
