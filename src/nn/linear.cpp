#include "nn/linear.h"

#include <type_traits>

#include "core/error.h"
#include "ops/linear.h"
#include "ops/packed_linear.h"

namespace mslm {

template <typename T>
Linear<T>::Linear(Parameters<T>& params, const std::string& name, int64_t in, int64_t out, bool bias)
    : p_(&params), in_(in), out_(out) {
    w_ = params.add(name + ".weight", {out, in}, true);
    if (bias) b_ = params.add(name + ".bias", {out}, false);
    params.mark_linear(w_);
}

template <typename T>
void Linear<T>::forward(T* y, const T* x, int64_t N, bool with_bias) const {
    const T* b = with_bias && b_ != kNoParam ? p_->value(b_) : nullptr;
    bool done = false;
    if constexpr (std::is_same_v<T, float>) {
        if (const ops::PackedWeight* pw = p_->packed(w_)) {
            ops::packed_linear_forward(y, x, *pw, b, N);
            done = true;
        }
    }
    if (!done) ops::linear_forward(y, x, weight(), b, N, in_, out_);
    if (LinearAdapter<T>* a = p_->adapter(w_)) a->forward(y, x, N);
}

template <typename T>
void Linear<T>::backward(T* dx, const T* dy, const T* x, int64_t N, bool with_bias) const {
    MSLM_CHECK(p_->packed(w_) == nullptr, "backward through a model packed for inference ({} weights)",
               ops::weight_format_name(p_->weight_format()));
    if (LinearAdapter<T>* a = p_->adapter(w_)) a->backward(dx, dy, x, N);
    ops::linear_backward(dx, p_->grad(w_), with_bias && b_ != kNoParam ? p_->grad(b_) : nullptr, dy, x,
                         weight(), N, in_, out_);
}

template <typename T>
const T* Linear<T>::weight() const {
    WeightFakeQuant<T>* q = p_->fake_quant(w_);
    return q ? q->apply(p_->value(w_), out_, in_) : p_->value(w_);
}

template <typename T>
void Linear<T>::init_normal(Rng& rng, double std) {
    T* w = p_->value(w_);
    rng.fill_normal(w, in_ * out_, 0.0, std);
    if (b_ != kNoParam)
        for (int64_t i = 0; i < out_; ++i) p_->value(b_)[i] = T(0);
}

template <typename T>
void Linear<T>::init_uniform(Rng& rng, double bound) {
    T* w = p_->value(w_);
    for (int64_t i = 0; i < in_ * out_; ++i) w[i] = static_cast<T>(rng.uniform(-bound, bound));
    if (b_ != kNoParam)
        for (int64_t i = 0; i < out_; ++i) p_->value(b_)[i] = T(0);
}

template class Linear<float>;
template class Linear<double>;

}  // namespace mslm
