// RMSNorm or LayerNorm over the last dimension, saving the statistics its backward needs.
#pragma once
#include <string>
#include <vector>

#include "model/config.h"
#include "nn/parameters.h"

namespace mslm {

template <typename T>
class Norm {
public:
    Norm() = default;
    Norm(Parameters<T>& params, const std::string& name, NormKind kind, int64_t dim, double eps);

    void forward(T* y, const T* x, int64_t N);                 // saves mean / rstd for N rows
    void backward(T* dx, const T* dy, const T* x, int64_t N);  // x as given to forward
    void apply(T* y, const T* x, int64_t N);                   // inference: forward saving nothing
    void init();                                               // weight 1, bias 0

private:
    void run(T* y, const T* x, int64_t N, std::vector<T>& mean,
             std::vector<T>& rstd);  // statistics into these

    Parameters<T>* p_ = nullptr;
    NormKind kind_ = NormKind::RMSNorm;
    size_t w_ = kNoParam, b_ = kNoParam;
    int64_t dim_ = 0;
    T eps_ = T(0);
    std::vector<T> mean_, rstd_;              // (N)
    std::vector<T> apply_mean_, apply_rstd_;  // apply's statistics, apart from the saved ones
};

}  // namespace mslm
