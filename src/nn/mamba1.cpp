#include "nn/mamba1.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include <fmt/format.h>

#include "ops/conv1d.h"
#include "ops/selective_scan.h"

namespace mslm {

template <typename T>
Mamba1Mixer<T>::Mamba1Mixer(Parameters<T>& params, const std::string& prefix, const ModelConfig& cfg)
    : p_(&params),
      d_model_(cfg.d_model),
      d_inner_(cfg.mamba_d_inner()),
      d_state_(cfg.mamba.d_state),
      d_conv_(cfg.mamba.d_conv),
      dt_rank_(cfg.mamba_dt_rank()),
      dt_min_(cfg.mamba.dt_min),
      dt_max_(cfg.mamba.dt_max),
      dt_floor_(cfg.mamba.dt_init_floor),
      bc_norm_(cfg.mamba.dt_bc_norm) {
    const bool bias = cfg.mamba.proj_bias;
    in_proj_ = Linear<T>(params, prefix + ".in_proj", d_model_, 2 * d_inner_, bias);
    conv_w_ = params.add(prefix + ".conv1d.weight", {d_inner_, d_conv_}, true);
    if (cfg.mamba.conv_bias) conv_b_ = params.add(prefix + ".conv1d.bias", {d_inner_}, false);
    x_proj_ = Linear<T>(params, prefix + ".x_proj", d_inner_, dt_rank_ + 2 * d_state_, false);
    dt_proj_ = Linear<T>(params, prefix + ".dt_proj", dt_rank_, d_inner_, true);
    A_log_ = params.add(prefix + ".A_log", {d_inner_, d_state_}, false);
    D_ = params.add(prefix + ".D", {d_inner_}, false);
    out_proj_ = Linear<T>(params, prefix + ".out_proj", d_inner_, d_model_, bias);
    if (bc_norm_) {
        dt_norm_ = Norm<T>(params, prefix + ".dt_norm", NormKind::RMSNorm, dt_rank_, cfg.norm_eps);
        B_norm_ = Norm<T>(params, prefix + ".B_norm", NormKind::RMSNorm, d_state_, cfg.norm_eps);
        C_norm_ = Norm<T>(params, prefix + ".C_norm", NormKind::RMSNorm, d_state_, cfg.norm_eps);
    }
}

namespace {

// Copies `cols` columns starting at `col0` of a (N, ld) matrix into a contiguous (N, cols) one,
// or back (scatter-add) for the gradients.
template <typename T>
void gather_cols(T* dst, const T* src, int64_t N, int64_t ld, int64_t col0, int64_t cols) {
    for (int64_t n = 0; n < N; ++n) std::memcpy(dst + n * cols, src + n * ld + col0, sizeof(T) * cols);
}
template <typename T>
void scatter_add_cols(T* dst, const T* src, int64_t N, int64_t ld, int64_t col0, int64_t cols) {
    for (int64_t n = 0; n < N; ++n)
        for (int64_t c = 0; c < cols; ++c) dst[n * ld + col0 + c] += src[n * cols + c];
}

template <typename T>
void zero(std::vector<T>& v, size_t n) {
    v.resize(n);
    std::fill(v.begin(), v.end(), T(0));
}

}  // namespace

template <typename T>
void Mamba1Mixer<T>::forward(T* out, const T* x, int64_t B, int64_t Tn) {
    x_ = x;
    B_ = B;
    T_ = Tn;
    const int64_t N = B * Tn, Din = d_inner_, S = d_state_, R = dt_rank_, W = R + 2 * S;
    xz_.resize(N * 2 * Din);
    xc_.resize(N * Din);
    xdbl_.resize(N * W);
    dt_raw_.resize(N * Din);
    y_.resize(N * Din);

    in_proj_.forward(xz_.data(), x, N);  // (N, D) => (N, 2·Din)
    ops::conv1d_causal_forward(xc_.data(), static_cast<T*>(nullptr), xz_.data(), 2 * Din, p_->value(conv_w_),
                               conv_b_ == kNoParam ? nullptr : p_->value(conv_b_), B, Tn, Din, d_conv_, true);
    x_proj_.forward(xdbl_.data(), xc_.data(), N);  // (N, Din) => (N, R + 2S)
    const T* dbc = xdbl_.data();
    if (bc_norm_) {
        // Jamba normalises dt, B and C separately: gather each into a contiguous block, norm it,
        // and lay the results out as [dt | B | C] again.
        dbc_.resize(N * W);
        scratch_a_.resize(N * std::max(R, S));
        scratch_b_.resize(N * std::max(R, S));
        T* tmp = scratch_a_.data();
        T* normed = scratch_b_.data();
        const int64_t widths[3] = {R, S, S}, starts[3] = {0, R, R + S};
        Norm<T>* norms[3] = {&dt_norm_, &B_norm_, &C_norm_};
        for (int i = 0; i < 3; ++i) {
            gather_cols(tmp, xdbl_.data(), N, W, starts[i], widths[i]);
            norms[i]->forward(normed, tmp, N);
            for (int64_t n = 0; n < N; ++n)
                std::memcpy(dbc_.data() + n * W + starts[i], normed + n * widths[i], sizeof(T) * widths[i]);
        }
        dbc = dbc_.data();
    }
    // dt_proj without bias on the strided dt columns: gather them first (kept for the backward).
    dt_.resize(N * R);
    gather_cols(dt_.data(), dbc, N, W, 0, R);
    dt_proj_.forward(dt_raw_.data(), dt_.data(), N, /*with_bias=*/false);  // (N, R) => (N, Din)
    ops::SelectiveScanInputs<T> in{xc_.data(), Din,   dt_raw_.data(), Din, p_->value(dt_proj_.bias_index()),
                                   p_->value(A_log_), dbc + R,       W,   dbc + R + S,                       W,
                                   p_->value(D_),    xz_.data() + Din, 2 * Din};
    ops::selective_scan_forward(y_.data(), static_cast<T*>(nullptr), in, static_cast<const T*>(nullptr),
                                ops::ScanDims{B, Tn, Din, S});
    out_proj_.forward(out, y_.data(), N);  // (N, Din) => (N, D)
}

template <typename T>
void Mamba1Mixer<T>::backward(T* dx, const T* dout) {
    const int64_t B = B_, Tn = T_, N = B * Tn, Din = d_inner_, S = d_state_, R = dt_rank_, W = R + 2 * S;
    zero(g_y_, N * Din);
    zero(g_dt_raw_, N * Din);
    zero(g_xdbl_, N * W);
    zero(g_xc_, N * Din);
    zero(g_xz_, N * 2 * Din);
    out_proj_.backward(g_y_.data(), dout, y_.data(), N);

    const T* dbc = bc_norm_ ? dbc_.data() : xdbl_.data();
    T* g_dbc = g_xdbl_.data();
    if (bc_norm_) {
        zero(g_dbc_, N * W);
        g_dbc = g_dbc_.data();
    }
    ops::SelectiveScanInputs<T> in{xc_.data(), Din,   dt_raw_.data(), Din, p_->value(dt_proj_.bias_index()),
                                   p_->value(A_log_), dbc + R,       W,   dbc + R + S,                       W,
                                   p_->value(D_),    xz_.data() + Din, 2 * Din};
    ops::SelectiveScanGrads<T> grads{g_xc_.data(),           g_dt_raw_.data(), p_->grad(dt_proj_.bias_index()),
                                     p_->grad(A_log_),       g_dbc + R,        g_dbc + R + S,
                                     p_->grad(D_),           g_xz_.data() + Din};
    ops::selective_scan_backward(grads, g_y_.data(), in, static_cast<const T*>(nullptr), ops::ScanDims{B, Tn, Din, S});

    // dt_proj (no bias here: its bias gradient came from the scan).
    zero(scratch_a_, N * R);
    dt_proj_.backward(scratch_a_.data(), g_dt_raw_.data(), dt_.data(), N, /*with_bias=*/false);
    scatter_add_cols(g_dbc, scratch_a_.data(), N, W, 0, R);

    if (bc_norm_) {
        const size_t n = static_cast<size_t>(N * std::max(R, S));
        scratch_a_.resize(n);
        scratch_b_.resize(n);
        scratch_c_.resize(n);
        T* xin = scratch_a_.data();
        T* gout = scratch_b_.data();
        T* gin = scratch_c_.data();
        const int64_t widths[3] = {R, S, S}, starts[3] = {0, R, R + S};
        Norm<T>* norms[3] = {&dt_norm_, &B_norm_, &C_norm_};
        for (int i = 0; i < 3; ++i) {
            gather_cols(xin, xdbl_.data(), N, W, starts[i], widths[i]);
            gather_cols(gout, g_dbc, N, W, starts[i], widths[i]);
            std::fill(gin, gin + n, T(0));
            norms[i]->backward(gin, gout, xin, N);
            scatter_add_cols(g_xdbl_.data(), gin, N, W, starts[i], widths[i]);
        }
    }
    x_proj_.backward(g_xc_.data(), g_xdbl_.data(), xc_.data(), N);
    ops::conv1d_causal_backward(g_xz_.data(), p_->grad(conv_w_), conv_b_ == kNoParam ? nullptr : p_->grad(conv_b_),
                                g_xc_.data(), xz_.data(), 2 * Din, p_->value(conv_w_),
                                conv_b_ == kNoParam ? nullptr : p_->value(conv_b_), B, Tn, Din, d_conv_, true);
    in_proj_.backward(dx, g_xz_.data(), x_, N);
}

template <typename T>
const T* Mamba1Mixer<T>::infer_dt_bc(const T* xc, int64_t rows) {
    const int64_t R = dt_rank_, S = d_state_, W = R + 2 * S;
    inf_xdbl_.resize(rows * W);
    x_proj_.forward(inf_xdbl_.data(), xc, rows);  // (rows, Din) => (rows, R + 2S)
    const T* dbc = inf_xdbl_.data();
    if (bc_norm_) {
        inf_dbc_.resize(rows * W);
        inf_a_.resize(rows * std::max(R, S));
        inf_b_.resize(rows * std::max(R, S));
        const int64_t widths[3] = {R, S, S}, starts[3] = {0, R, R + S};
        Norm<T>* norms[3] = {&dt_norm_, &B_norm_, &C_norm_};
        for (int i = 0; i < 3; ++i) {
            gather_cols(inf_a_.data(), inf_xdbl_.data(), rows, W, starts[i], widths[i]);
            norms[i]->apply(inf_b_.data(), inf_a_.data(), rows);
            for (int64_t n = 0; n < rows; ++n)
                std::memcpy(inf_dbc_.data() + n * W + starts[i], inf_b_.data() + n * widths[i],
                            sizeof(T) * widths[i]);
        }
        dbc = inf_dbc_.data();
    }
    inf_dt_.resize(rows * R);
    inf_dt_raw_.resize(rows * d_inner_);
    gather_cols(inf_dt_.data(), dbc, rows, W, 0, R);
    dt_proj_.forward(inf_dt_raw_.data(), inf_dt_.data(), rows, /*with_bias=*/false);
    return dbc;
}

template <typename T>
ops::SelectiveScanInputs<T> Mamba1Mixer<T>::infer_scan_inputs(const T* xc, const T* dbc) const {
    const int64_t Din = d_inner_, R = dt_rank_, S = d_state_, W = R + 2 * S;
    return {.u = xc,
            .ld_u = Din,
            .delta = inf_dt_raw_.data(),
            .ld_delta = Din,
            .delta_bias = p_->value(dt_proj_.bias_index()),
            .A_log = p_->value(A_log_),
            .Bm = dbc + R,
            .ld_B = W,
            .Cm = dbc + R + S,
            .ld_C = W,
            .D = p_->value(D_),
            .z = inf_xz_.data() + Din,
            .ld_z = 2 * Din};
}

template <typename T>
void Mamba1Mixer<T>::prefill(T* out, const T* x, int64_t n, InferenceState<T>& st, int64_t layer,
                             int64_t slot) {
    const int64_t Din = d_inner_, S = d_state_, K = d_conv_;
    auto& ls = st.layer(layer);
    T* window = ls.conv.data() + slot * (K - 1) * Din;  // (K − 1, Din)
    T* h = ls.ssm.data() + slot * Din * S;              // (Din, S)
    inf_xz_.resize(n * 2 * Din);
    in_proj_.forward(inf_xz_.data(), x, n);  // (n, D) => (n, 2·Din)

    // The conv continues from the saved window: it runs over [window | x] (K − 1 + n rows) and the
    // last n outputs are kept. An empty slot's window is zero, exactly the training forward's
    // padding, so one path serves a fresh prompt and a continuation.
    inf_window_.resize((K - 1 + n) * Din);
    std::copy_n(window, (K - 1) * Din, inf_window_.begin());
    gather_cols(inf_window_.data() + (K - 1) * Din, inf_xz_.data(), n, 2 * Din, 0, Din);
    std::copy_n(inf_window_.begin() + n * Din, (K - 1) * Din, window);
    inf_xc_.resize((K - 1 + n) * Din);
    ops::conv1d_causal_forward(inf_xc_.data(), static_cast<T*>(nullptr), inf_window_.data(), Din,
                               p_->value(conv_w_), conv_b_ == kNoParam ? nullptr : p_->value(conv_b_), 1,
                               K - 1 + n, Din, K, true);
    const T* xc = inf_xc_.data() + (K - 1) * Din;  // (n, Din)

    const T* dbc = infer_dt_bc(xc, n);
    inf_y_.resize(n * Din);
    // The scan starts from the slot's state and leaves its final state there (in place).
    ops::selective_scan_forward(inf_y_.data(), h, infer_scan_inputs(xc, dbc), h, ops::ScanDims{1, n, Din, S});
    out_proj_.forward(out, inf_y_.data(), n);  // (n, Din) => (n, D)
}

template <typename T>
void Mamba1Mixer<T>::step(T* out, const T* x, int64_t k, InferenceState<T>& st, int64_t layer,
                          const int64_t* slots) {
    const int64_t Din = d_inner_;
    auto& ls = st.layer(layer);
    inf_xz_.resize(k * 2 * Din);
    inf_xc_.resize(k * Din);
    inf_y_.resize(k * Din);
    in_proj_.forward(inf_xz_.data(), x, k);  // (k, D) => (k, 2·Din)
    ops::conv1d_causal_update(inf_xc_.data(), ls.conv.data(), slots, inf_xz_.data(), 2 * Din,
                              p_->value(conv_w_), conv_b_ == kNoParam ? nullptr : p_->value(conv_b_), k, Din,
                              d_conv_, true);
    const T* dbc = infer_dt_bc(inf_xc_.data(), k);
    ops::selective_scan_update(inf_y_.data(), ls.ssm.data(), slots, infer_scan_inputs(inf_xc_.data(), dbc), k,
                               Din, d_state_);
    out_proj_.forward(out, inf_y_.data(), k);  // (k, Din) => (k, D)
}

template <typename T>
void Mamba1Mixer<T>::init(InitContext& ctx) {
    Rng& rng = ctx.rng;
    in_proj_.init_normal(rng, ctx.std);
    x_proj_.init_normal(rng, ctx.std);
    out_proj_.init_normal(rng, ctx.std * ctx.out_proj_scale);
    // PyTorch's Conv1d default: U(±1/sqrt(fan_in)), fan_in = kernel size for a depthwise conv.
    double bound = 1.0 / std::sqrt(static_cast<double>(d_conv_));
    for (int64_t i = 0; i < d_inner_ * d_conv_; ++i) p_->value(conv_w_)[i] = static_cast<T>(rng.uniform(-bound, bound));
    if (conv_b_ != kNoParam)
        for (int64_t i = 0; i < d_inner_; ++i) p_->value(conv_b_)[i] = static_cast<T>(rng.uniform(-bound, bound));
    // mamba_ssm: dt_proj.weight ~ U(±dt_rank^-0.5); dt log-uniform in [dt_min, dt_max] clamped at the
    // floor; bias = softplus⁻¹(dt) = dt + log(−expm1(−dt)).
    dt_proj_.init_uniform(rng, 1.0 / std::sqrt(static_cast<double>(dt_rank_)));
    T* bias = p_->value(dt_proj_.bias_index());
    for (int64_t i = 0; i < d_inner_; ++i) {
        double dt = std::exp(rng.uniform(std::log(dt_min_), std::log(dt_max_)));
        dt = std::max(dt, dt_floor_);
        bias[i] = static_cast<T>(dt + std::log(-std::expm1(-dt)));
    }
    for (int64_t c = 0; c < d_inner_; ++c)
        for (int64_t n = 0; n < d_state_; ++n)
            p_->value(A_log_)[c * d_state_ + n] = static_cast<T>(std::log(static_cast<double>(n + 1)));
    for (int64_t i = 0; i < d_inner_; ++i) p_->value(D_)[i] = T(1);
    if (bc_norm_) {
        dt_norm_.init();
        B_norm_.init();
        C_norm_.init();
    }
}

template <typename T>
std::string Mamba1Mixer<T>::describe() const {
    return fmt::format("mamba1(d_inner={}, d_state={}, dt_rank={}, d_conv={}{})", d_inner_, d_state_, dt_rank_, d_conv_,
                       bc_norm_ ? ", dt/B/C norm" : "");
}

template <typename T>
int64_t Mamba1Mixer<T>::saved_per_token(const ModelConfig& cfg) {
    const int64_t Din = cfg.mamba_d_inner(), W = cfg.mamba_dt_rank() + 2 * cfg.mamba.d_state;
    return 2 * Din + 3 * Din + W + (cfg.mamba.dt_bc_norm ? W : 0) + cfg.mamba_dt_rank();  // xz, xc, dt_raw, y, xdbl, dbc, dt
}

template class Mamba1Mixer<float>;
template class Mamba1Mixer<double>;

}  // namespace mslm
