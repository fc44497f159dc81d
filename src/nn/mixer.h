// The token mixer of a block: a Mamba-1, Mamba-2 or attention layer. forward saves what backward
// needs (its input pointer must stay valid until backward); backward accumulates into dx and the
// parameter gradients. Each mixer also has a static saved_per_token(config): the activation
// elements its forward keeps per token, for memory estimates.
#pragma once
#include <cstdint>
#include <string>

#include "core/rng.h"

namespace mslm {

struct InitContext {
    Rng& rng;
    double std;             // initializer_range for projections and embeddings
    double out_proj_scale;  // 1/sqrt(n_residuals_per_layer · n_layers) on output projections
};

template <typename T>
class Mixer {
public:
    virtual ~Mixer() = default;
    virtual void forward(T* out, const T* x, int64_t B, int64_t Tn) = 0;  // x, out (B, T, D)
    virtual void backward(T* dx, const T* dout) = 0;                      // same B, T as forward
    virtual void init(InitContext& ctx) = 0;
    virtual std::string describe() const = 0;
};

}  // namespace mslm
