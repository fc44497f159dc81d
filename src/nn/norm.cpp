#include "nn/norm.h"

#include "ops/norm.h"

namespace mslm {

template <typename T>
Norm<T>::Norm(Parameters<T>& params, const std::string& name, NormKind kind, int64_t dim, double eps)
    : p_(&params), kind_(kind), dim_(dim), eps_(static_cast<T>(eps)) {
    w_ = params.add(name + ".weight", {dim}, false);
    if (kind == NormKind::LayerNorm) b_ = params.add(name + ".bias", {dim}, false);
}

template <typename T>
void Norm<T>::forward(T* y, const T* x, int64_t N) {
    run(y, x, N, mean_, rstd_);
}

template <typename T>
void Norm<T>::apply(T* y, const T* x, int64_t N) {
    run(y, x, N, apply_mean_, apply_rstd_);
}

template <typename T>
void Norm<T>::run(T* y, const T* x, int64_t N, std::vector<T>& mean, std::vector<T>& rstd) {
    rstd.resize(static_cast<size_t>(N));
    if (kind_ == NormKind::RMSNorm) {
        ops::rmsnorm_forward(y, rstd.data(), x, p_->value(w_), N, dim_, eps_);
    } else {
        mean.resize(static_cast<size_t>(N));
        ops::layernorm_forward(y, mean.data(), rstd.data(), x, p_->value(w_), p_->value(b_), N, dim_, eps_);
    }
}

template <typename T>
void Norm<T>::backward(T* dx, const T* dy, const T* x, int64_t N) {
    if (kind_ == NormKind::RMSNorm) {
        ops::rmsnorm_backward(dx, p_->grad(w_), dy, x, p_->value(w_), rstd_.data(), N, dim_);
    } else {
        ops::layernorm_backward(dx, p_->grad(w_), p_->grad(b_), dy, x, p_->value(w_), mean_.data(), rstd_.data(), N,
                                dim_);
    }
}

template <typename T>
void Norm<T>::init() {
    for (int64_t i = 0; i < dim_; ++i) p_->value(w_)[i] = T(1);
    if (b_ != kNoParam)
        for (int64_t i = 0; i < dim_; ++i) p_->value(b_)[i] = T(0);
}

template class Norm<float>;
template class Norm<double>;

}  // namespace mslm
