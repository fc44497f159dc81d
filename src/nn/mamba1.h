// Mamba-1 mixer (selective scan, S6), with Jamba's optional RMSNorm on dt, B and C.
#pragma once
#include <vector>

#include "model/config.h"
#include "nn/linear.h"
#include "nn/buffers.h"
#include "nn/mixer.h"
#include "nn/norm.h"
#include "ops/selective_scan.h"

namespace mslm {

template <typename T>
class Mamba1Mixer : public Mixer<T> {
public:
    Mamba1Mixer(Parameters<T>& params, const std::string& prefix, const ModelConfig& cfg);
    void forward(T* out, const T* x, int64_t B, int64_t Tn) override;
    void backward(T* dx, const T* dout) override;
    void prefill(T* out, const T* x, int64_t n, InferenceState<T>& st, int64_t layer, int64_t slot) override;
    void step(T* out, const T* x, int64_t k, InferenceState<T>& st, int64_t layer,
              const int64_t* slots) override;
    void init(InitContext& ctx) override;
    std::string describe() const override;
    void release() override { free_buffers(xz_, xc_, xdbl_, dbc_, dt_, dt_raw_, y_, g_y_, g_dt_raw_, g_xdbl_, g_dbc_, g_xc_, g_xz_, scratch_a_, scratch_b_, scratch_c_); }
    size_t activation_bytes() const override { return buffer_bytes(xz_, xc_, xdbl_, dbc_, dt_, dt_raw_, y_, g_y_, g_dt_raw_, g_xdbl_, g_dbc_, g_xc_, g_xz_, scratch_a_, scratch_b_, scratch_c_); }
    static int64_t saved_per_token(const ModelConfig& cfg);

private:
    // Inference: x_proj → (Jamba's norms) → dt_proj without bias over `rows` rows of the conv
    // output xc (rows, Din), into the inference buffers; returns the [dt | B | C] rows (rows, R + 2S)
    // the scan reads.
    const T* infer_dt_bc(const T* xc, int64_t rows);
    ops::SelectiveScanInputs<T> infer_scan_inputs(const T* xc, const T* dbc) const;

    Parameters<T>* p_;
    int64_t d_model_, d_inner_, d_state_, d_conv_, dt_rank_;
    double dt_min_, dt_max_, dt_floor_;
    Linear<T> in_proj_, x_proj_, dt_proj_, out_proj_;
    size_t conv_w_, conv_b_ = kNoParam, A_log_, D_;
    bool bc_norm_;
    Norm<T> dt_norm_, B_norm_, C_norm_;

    // Saved by forward (B·T rows each).
    const T* x_ = nullptr;
    int64_t B_ = 0, T_ = 0;
    std::vector<T> xz_;      // (N, 2·Din)  [x | z] from in_proj
    std::vector<T> xc_;      // (N, Din)    conv + SiLU output, the scan input u
    std::vector<T> xdbl_;    // (N, R + 2S) [dt | B | C] from x_proj
    std::vector<T> dbc_;     // (N, R + 2S) normed [dt | B | C] (only with bc_norm)
    std::vector<T> dt_;      // (N, R)      the (normed) dt columns, contiguous: dt_proj's input
    std::vector<T> dt_raw_;  // (N, Din)    dt_proj(dt) without its bias
    std::vector<T> y_;       // (N, Din)    gated scan output
    // Backward scratch.
    std::vector<T> g_y_, g_dt_raw_, g_xdbl_, g_dbc_, g_xc_, g_xz_;
    std::vector<T> scratch_a_, scratch_b_, scratch_c_;
    // Inference buffers (prefill: n rows, step: k rows), apart from the saved activations.
    std::vector<T> inf_xz_, inf_window_, inf_xc_, inf_xdbl_, inf_dbc_, inf_dt_, inf_dt_raw_, inf_y_, inf_a_,
        inf_b_;
};

}  // namespace mslm
