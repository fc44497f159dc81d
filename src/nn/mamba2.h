// Mamba-2 mixer (SSD): one in_proj to [z | x B C | dt], causal conv + SiLU over xBC, the chunked
// scan, grouped gated RMSNorm with z, out_proj.
#pragma once
#include <vector>

#include "model/config.h"
#include "nn/linear.h"
#include "nn/buffers.h"
#include "nn/mixer.h"
#include "ops/ssd.h"

namespace mslm {

template <typename T>
class Mamba2Mixer : public Mixer<T> {
public:
    Mamba2Mixer(Parameters<T>& params, const std::string& prefix, const ModelConfig& cfg);
    void forward(T* out, const T* x, int64_t B, int64_t Tn) override;
    void backward(T* dx, const T* dout) override;
    void prefill(T* out, const T* x, int64_t n, InferenceState<T>& st, int64_t layer, int64_t slot) override;
    void step(T* out, const T* x, int64_t k, InferenceState<T>& st, int64_t layer,
              const int64_t* slots) override;
    void init(InitContext& ctx) override;
    std::string describe() const override;
    void release() override { free_buffers(zxbcdt_, xbc_, y_, z_, rstd_, yn_, g_yn_, g_y_, g_z_, g_xbc_, g_zxbcdt_); }
    size_t activation_bytes() const override { return buffer_bytes(zxbcdt_, xbc_, y_, z_, rstd_, yn_, g_yn_, g_y_, g_z_, g_xbc_, g_zxbcdt_); }
    static int64_t saved_per_token(const ModelConfig& cfg);

private:
    int64_t proj_width() const { return 2 * d_inner_ + 2 * n_groups_ * d_state_ + n_heads_; }
    int64_t conv_dim() const { return d_inner_ + 2 * n_groups_ * d_state_; }
    ops::SsdInputs<T> ssd_inputs() const;
    // The scan's view of in_proj's output zxbcdt (rows, W) and the conv output xbc (rows, C).
    ops::SsdInputs<T> ssd_inputs(const T* zxbcdt, const T* xbc) const;
    ops::SsdDims ssd_dims(int64_t batch, int64_t seqlen) const;
    // Inference tail: y (rows, Din) → gated norm with z from inf_zxbcdt_ → out_proj.
    void infer_output(T* out, int64_t rows);

    Parameters<T>* p_;
    int64_t d_model_, d_inner_, d_state_, d_conv_, n_heads_, head_dim_, n_groups_, norm_groups_, chunk_;
    double dt_min_, dt_max_, dt_floor_, A_min_, A_max_;
    T eps_, dt_limit_min_, dt_limit_max_;
    Linear<T> in_proj_, out_proj_;
    size_t conv_w_, conv_b_ = kNoParam, dt_bias_, A_log_, D_, norm_w_;

    const T* x_ = nullptr;
    int64_t B_ = 0, T_ = 0;
    std::vector<T> zxbcdt_;   // (N, 2·Din + 2·G·S + H)
    std::vector<T> xbc_;      // (N, Din + 2·G·S) conv + SiLU
    std::vector<T> y_;        // (N, Din) scan output (with D skip)
    std::vector<T> z_;        // (N, Din) contiguous gate
    std::vector<T> rstd_;     // (N, norm groups)
    std::vector<T> yn_;       // (N, Din) gated-normed output
    std::vector<T> g_yn_, g_y_, g_z_, g_xbc_, g_zxbcdt_;
    // Inference buffers (prefill: n rows, step: k rows), apart from the saved activations.
    std::vector<T> inf_zxbcdt_, inf_window_, inf_xbc_, inf_y_, inf_z_, inf_rstd_, inf_yn_;
    std::vector<T> inf_h32_;  // prefill: a slot's bf16 SSM state widened (InferenceState's ssm16)
};

}  // namespace mslm
