// The token mixer of a block: a Mamba-1, Mamba-2 or attention layer. forward saves what backward
// needs (its input pointer must stay valid until backward); backward accumulates into dx and the
// parameter gradients. Each mixer also has a static saved_per_token(config): the activation
// elements its forward keeps per token, for memory estimates.
//
// prefill and step are the inference forms (DESIGN §5). They read and update layer `layer` of an
// InferenceState (a slot at position p has consumed p tokens) and work in their own buffers, so the
// activations a forward saved for its backward stay intact. They do not advance positions: the
// caller does once every layer has run.
#pragma once
#include <cstdint>
#include <string>

#include "core/rng.h"
#include "model/inference.h"

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
    // n tokens of the sequence in `slot`, x and out (n, D), in the parallel form, continuing from
    // the slot's state; leaves the state after the last token.
    virtual void prefill(T* out, const T* x, int64_t n, InferenceState<T>& st, int64_t layer,
                         int64_t slot) = 0;
    // One token for each of k distinct slots, x and out (k, D): the O(1) recurrent step (attention:
    // one query against the KV cache).
    virtual void step(T* out, const T* x, int64_t k, InferenceState<T>& st, int64_t layer,
                      const int64_t* slots) = 0;
    virtual void init(InitContext& ctx) = 0;
    virtual std::string describe() const = 0;
    // Training activations: what forward saved plus backward's scratch. release() frees them
    // (activation checkpointing recomputes the forward before the backward).
    virtual void release() = 0;
    virtual size_t activation_bytes() const = 0;
};

}  // namespace mslm
