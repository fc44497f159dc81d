// CUDA fused softmax cross-entropy over the vocabulary, on buffers in GPU memory, with the
// semantics of ops/cross_entropy.h (the CPU reference): normalised logits are never materialised.
//
// Plain C++ header (no CUDA includes). Logits are `float`, or `uint16_t` for bf16 (raw bits, as in
// core/dtype.h); losses and lse are always fp32, and all math is fp32. targets are int32 in GPU
// memory, kIgnoreIndex (ops/cross_entropy.h) marking rows that do not count. `stream` is a
// cudaStream_t (nullptr: the default stream); launches are asynchronous and a failed launch throws
// mslm::Error naming the kernel.
//
// The count of rows that count, and targets outside [0, V) other than kIgnoreIndex, are recorded
// into `status` (GPU memory, may be null; see ops/cuda/index_status.h), which each call clears
// first; cross_entropy_check returns the count, or throws the CPU reference's error. A bad target's
// row gets a NaN loss in the forward, so that an unchecked error cannot pass unnoticed, and zero
// gradients in the backward.
#pragma once
#include <cstdint>

#include "ops/cross_entropy.h"
#include "ops/cuda/index_status.h"

namespace mslm::ops::cuda {

// logits (N, V), targets (N). losses (N) = −log softmax(logits)[target] (0 on ignored rows);
// lse (N) = logsumexp of every row, for the backward. One thread block per row keeps a running
// maximum and the sum of exponentials relative to it, so each logit is read once.
template <typename T>
void cross_entropy_forward(float* losses, float* lse, const T* logits, const int32_t* targets, int64_t N,
                           int64_t V, IndexStatus* status, void* stream = nullptr);

// dlogits (N, V) = (softmax(logits) − onehot(target)) · dloss, 0 on ignored rows. Writes (does not
// accumulate); dlogits == logits runs in place. dloss is the gradient of the final loss with respect
// to each row's loss (1/count for a mean). The count is not recorded here.
template <typename T>
void cross_entropy_backward(T* dlogits, const T* logits, const float* lse, const int32_t* targets, int64_t N,
                            int64_t V, float dloss, IndexStatus* status, void* stream = nullptr);

// Both in one pass over each row, in place: losses and lse as cross_entropy_forward gives them, then
// logits (N, V) overwritten by the gradient cross_entropy_backward would write from them (the same
// bits). dloss must be known before the loss (the trainer's 1/count, counted from the targets on the
// host). The logits are read once from memory (the second read of a row hits L2, where the first
// left it) where the two calls read them twice.
template <typename T>
void cross_entropy_forward_backward(float* losses, float* lse, T* logits, const int32_t* targets, int64_t N,
                                    int64_t V, float dloss, IndexStatus* status, void* stream = nullptr);

// Waits for `stream`; returns the number of rows that count (as of the last forward that recorded into
// *status), or throws mslm::Error on a target outside [0, V).
int64_t cross_entropy_check(const IndexStatus* status, int64_t V, void* stream = nullptr);

}  // namespace mslm::ops::cuda
