// nn.Linear with PyTorch's weight layout (out, in) and an optional bias.
#pragma once
#include <string>

#include "core/rng.h"
#include "nn/parameters.h"

namespace mslm {

template <typename T>
class Linear {
public:
    Linear() = default;
    Linear(Parameters<T>& params, const std::string& name, int64_t in, int64_t out, bool bias);

    void forward(T* y, const T* x, int64_t N) const;                 // y (N, out) = x (N, in) · Wᵀ + b
    void backward(T* dx, const T* dy, const T* x, int64_t N) const;  // += into dx, dW, db; dx may be null
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
