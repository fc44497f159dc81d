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

// Fake quantization of a Linear's weight (quantization-aware training, src/quant/fake_quant.h),
// registered per weight in Parameters: forward and backward multiply by apply(W) instead of W, and
// dW goes to the fp32 master W unchanged (the straight-through estimator). The returned pointer
// (out, in) stays valid until the next apply.
template <typename T>
class WeightFakeQuant {
public:
    virtual ~WeightFakeQuant() = default;
    virtual const T* apply(const T* w, int64_t out, int64_t in) = 0;
};

template <typename T>
class Linear {
public:
    Linear() = default;
    Linear(Parameters<T>& params, const std::string& name, int64_t in, int64_t out, bool bias);

    // y (N, out) = x (N, in) · Wᵀ (+ b unless with_bias is false: Mamba-1 adds dt_proj's bias inside
    // the scan), plus the weight's adapter when one is attached. With a fake quantizer on the
    // weight, W is replaced by its fake-quantized copy.
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
    // The weight the products use: W, or its fake-quantized copy. Backward calls it again rather
    // than keep forward's copy: the quantization costs O(out·in), the products O(N·out·in).
    const T* weight() const;

    Parameters<T>* p_ = nullptr;
    size_t w_ = kNoParam, b_ = kNoParam;
    int64_t in_ = 0, out_ = 0;
};

}  // namespace mslm
