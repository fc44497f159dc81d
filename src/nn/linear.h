// nn.Linear with PyTorch's weight layout (out, in) and an optional bias.
#pragma once
#include <string>

#include "core/rng.h"
#include "nn/parameters.h"

namespace mslm {

// A side path added to a Linear's output, registered per weight in Parameters (LoRA, src/lora).
// forward adds Δ(x) to y; backward adds to dx (when not null) and to the adapter's own gradients.
// Both see the same x, so an adapter can recompute from x what its backward needs.
template <typename T>
class LinearAdapter {
public:
    virtual ~LinearAdapter() = default;
    virtual void forward(T* y, const T* x, int64_t N) = 0;                 // y (N, out) += Δ(x)
    virtual void backward(T* dx, const T* dy, const T* x, int64_t N) = 0;  // dy (N, out)
};

template <typename T>
class Linear {
public:
    Linear() = default;
    Linear(Parameters<T>& params, const std::string& name, int64_t in, int64_t out, bool bias);

    // y (N, out) = x (N, in) · Wᵀ (+ b unless with_bias is false: Mamba-1 adds dt_proj's bias inside
    // the scan), plus the weight's adapter when one is attached.
    void forward(T* y, const T* x, int64_t N, bool with_bias = true) const;
    // += into dx, dW, db (and the adapter's gradients); dx may be null; dW and db are skipped when
    // the parameters have no gradients (a frozen base) or with_bias is false (db).
    void backward(T* dx, const T* dy, const T* x, int64_t N, bool with_bias = true) const;
    void init_normal(Rng& rng, double std);                          // W ~ N(0, std²), b = 0
    void init_uniform(Rng& rng, double bound);                       // W ~ U(−bound, bound), b = 0

    int64_t in() const { return in_; }
    int64_t out() const { return out_; }
    size_t weight_index() const { return w_; }
    size_t bias_index() const { return b_; }

private:
    Parameters<T>* p_ = nullptr;
    size_t w_ = kNoParam, b_ = kNoParam;
    int64_t in_ = 0, out_ = 0;
};

}  // namespace mslm
