// The MLP sublayer: SwiGLU (fused gate_up projection) or a plain two-layer MLP with GELU/ReLU.
#pragma once
#include <vector>

#include "model/config.h"
#include "nn/buffers.h"
#include "nn/linear.h"
#include "nn/mixer.h"

namespace mslm {

template <typename T>
class Mlp {
public:
    Mlp(Parameters<T>& params, const std::string& prefix, const ModelConfig& cfg);
    void forward(T* out, const T* x, int64_t N);  // x, out (N, D); x must live until backward
    void backward(T* dx, const T* dout);
    void apply(T* out, const T* x, int64_t N);  // inference: forward in buffers of its own
    void release() { free_buffers(h_, a_, g_a_, g_h_); }  // see Mixer::release
    size_t activation_bytes() const { return buffer_bytes(h_, a_, g_a_, g_h_); }
    void init(InitContext& ctx);
    std::string describe() const;
    static int64_t saved_per_token(const ModelConfig& cfg);

private:
    // up → activation → down through the given (N, up.out()) and (N, F) buffers.
    void run(T* out, const T* x, int64_t N, std::vector<T>& h, std::vector<T>& a);

    MlpKind kind_;
    int64_t d_model_, d_ff_;
    Linear<T> up_, down_;  // SwiGLU: up_ is the fused gate_up (2·F, D)

    const T* x_ = nullptr;
    int64_t N_ = 0;
    std::vector<T> h_;    // (N, F) or (N, 2F): up projection output
    std::vector<T> a_;    // (N, F) activation output
    std::vector<T> g_a_, g_h_;
    std::vector<T> apply_h_, apply_a_;  // apply's buffers
};

}  // namespace mslm
