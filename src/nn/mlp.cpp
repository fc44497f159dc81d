#include "nn/mlp.h"

#include <fmt/format.h>

#include "ops/activation.h"

namespace mslm {

template <typename T>
Mlp<T>::Mlp(Parameters<T>& params, const std::string& prefix, const ModelConfig& cfg)
    : kind_(cfg.mlp.kind), d_model_(cfg.d_model), d_ff_(cfg.mlp.d_ff) {
    if (kind_ == MlpKind::SwiGLU) {
        up_ = Linear<T>(params, prefix + ".gate_up_proj", d_model_, 2 * d_ff_, cfg.mlp.bias);
        down_ = Linear<T>(params, prefix + ".down_proj", d_ff_, d_model_, cfg.mlp.bias);
    } else {
        up_ = Linear<T>(params, prefix + ".fc1", d_model_, d_ff_, cfg.mlp.bias);
        down_ = Linear<T>(params, prefix + ".fc2", d_ff_, d_model_, cfg.mlp.bias);
    }
}

namespace {
template <typename T>
void relu_forward(T* out, const T* x, int64_t n) {
    for (int64_t i = 0; i < n; ++i) out[i] = x[i] > T(0) ? x[i] : T(0);
}
template <typename T>
void relu_backward(T* dx, const T* dout, const T* x, int64_t n) {
    for (int64_t i = 0; i < n; ++i) dx[i] += x[i] > T(0) ? dout[i] : T(0);
}
}  // namespace

template <typename T>
void Mlp<T>::forward(T* out, const T* x, int64_t N) {
    x_ = x;
    N_ = N;
    run(out, x, N, h_, a_);
}

template <typename T>
void Mlp<T>::apply(T* out, const T* x, int64_t N) {
    run(out, x, N, apply_h_, apply_a_);
}

template <typename T>
void Mlp<T>::run(T* out, const T* x, int64_t N, std::vector<T>& h, std::vector<T>& a) {
    const int64_t F = d_ff_;
    h.resize(N * up_.out());
    a.resize(N * F);
    up_.forward(h.data(), x, N);
    switch (kind_) {
        case MlpKind::SwiGLU:
            ops::swiglu_forward(a.data(), h.data(), N, F);
            break;
        case MlpKind::GELU:
            ops::gelu_forward(a.data(), h.data(), N * F);
            break;
        case MlpKind::GELUTanh:
            ops::gelu_tanh_forward(a.data(), h.data(), N * F);
            break;
        case MlpKind::ReLU:
            relu_forward(a.data(), h.data(), N * F);
            break;
        case MlpKind::None: break;
    }
    down_.forward(out, a.data(), N);
}

template <typename T>
void Mlp<T>::backward(T* dx, const T* dout) {
    const int64_t N = N_, F = d_ff_;
    g_a_.assign(static_cast<size_t>(N * F), T(0));
    g_h_.assign(static_cast<size_t>(N * up_.out()), T(0));
    down_.backward(g_a_.data(), dout, a_.data(), N);
    switch (kind_) {
        case MlpKind::SwiGLU: ops::swiglu_backward(g_h_.data(), g_a_.data(), h_.data(), N, F); break;
        case MlpKind::GELU: ops::gelu_backward(g_h_.data(), g_a_.data(), h_.data(), N * F); break;
        case MlpKind::GELUTanh: ops::gelu_tanh_backward(g_h_.data(), g_a_.data(), h_.data(), N * F); break;
        case MlpKind::ReLU: relu_backward(g_h_.data(), g_a_.data(), h_.data(), N * F); break;
        case MlpKind::None: break;
    }
    up_.backward(dx, g_h_.data(), x_, N);
}

template <typename T>
void Mlp<T>::init(InitContext& ctx) {
    up_.init_normal(ctx.rng, ctx.std);
    down_.init_normal(ctx.rng, ctx.std * ctx.out_proj_scale);
}

template <typename T>
std::string Mlp<T>::describe() const {
    const char* k = kind_ == MlpKind::SwiGLU ? "swiglu" : kind_ == MlpKind::GELU ? "gelu" : kind_ == MlpKind::GELUTanh ? "gelu_tanh" : "relu";
    return fmt::format("mlp({}, d_ff={})", k, d_ff_);
}

template <typename T>
int64_t Mlp<T>::saved_per_token(const ModelConfig& cfg) {
    const int64_t F = cfg.mlp.d_ff;
    return (cfg.mlp.kind == MlpKind::SwiGLU ? 2 * F : F) + F;  // up projection, activation
}

template class Mlp<float>;
template class Mlp<double>;

}  // namespace mslm
