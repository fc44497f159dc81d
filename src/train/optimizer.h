// AdamW over a model's flat parameter buffer, and global gradient-norm clipping.
//
// The update is torch.optim.AdamW's (single-tensor path), in its order of operations:
//   p *= 1 - lr·wd                              (decoupled decay; only params with decay=true)
//   m += (1 - b1)·(g - m)                       (= b1·m + (1-b1)·g; torch's lerp)
//   v  = b2·v + (1 - b2)·g²
//   p -= lr/(1 - b1^t) · m / (sqrt(v)/sqrt(1 - b2^t) + eps)
// The scalar factors are computed in double, then rounded to T, as torch does with Python floats.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "nn/parameters.h"

namespace mslm {

struct AdamWOptions {
    double lr = 3e-4;  // used by step(params); step(params, lr) overrides it (schedules)
    double beta1 = 0.9;
    double beta2 = 0.95;
    double eps = 1e-8;
    double weight_decay = 0.1;
};

// A contiguous range of one parameter's elements: the unit of parallel work in the optimizer and
// in clip_grad_norm. The split depends only on the parameter layout, never on the thread count.
struct ParamChunk {
    size_t param;
    int64_t begin, end;  // element offsets into the flat buffers
};
std::vector<ParamChunk> param_chunks(const std::vector<ParamSpec>& specs);

// State m and v have the flat buffer's layout (padding included, left at zero) and the
// parameters' type: fp32 for AdamW<float>; AdamW<double> is the double-precision reference.
template <typename T>
class AdamW {
public:
    explicit AdamW(const Parameters<T>& params, AdamWOptions options = {});

    void step(Parameters<T>& params, T lr);
    void step(Parameters<T>& params) { step(params, static_cast<T>(options_.lr)); }

    const AdamWOptions& options() const { return options_; }
    int64_t step_count() const { return step_; }

    // "adamw.m.<param>" and "adamw.v.<param>" (the parameter's shape, dtype of T) for every
    // parameter, then "adamw.step" (I64 scalar). The tensors are copies.
    std::vector<std::pair<std::string, Tensor>> state_tensors() const;
    // Reads every name state_tensors() writes through `get` (which throws or returns an undefined
    // Tensor when absent). Floating dtypes are converted; shapes must match exactly. Nothing
    // changes unless the whole state loads.
    void load_state(const std::function<Tensor(const std::string&)>& get);

private:
    AdamWOptions options_;
    std::vector<ParamSpec> specs_;
    int64_t total_;
    std::vector<ParamChunk> chunks_;
    std::vector<T> m_, v_;  // (total_,)
    int64_t step_ = 0;
};

// Scales all gradients so that their global L2 norm is at most max_norm, as torch's
// clip_grad_norm_: coef = max_norm / (norm + 1e-6), applied when below 1. Returns the norm
// before clipping. The sum of squares is in double over fixed chunks added in a fixed order, so
// the result is bitwise the same for any thread count. A NaN or infinite norm is returned
// without touching the gradients: the caller decides (usually to skip the step).
template <typename T>
double clip_grad_norm(Parameters<T>& params, double max_norm);

// The global L2 norm of the gradients alone (same reduction as clip_grad_norm).
template <typename T>
double grad_norm(const Parameters<T>& params);

}  // namespace mslm
