#pragma once
#include <cstdint>

namespace mslm::ops {

constexpr int32_t kIgnoreIndex = -100;

// Fused softmax cross-entropy over the vocabulary. logits (N, V), targets (N) with
// kIgnoreIndex marking rows that do not count. losses (N) gets −log softmax(logits)[target]
// (0 for ignored rows); lse (N) gets logsumexp of each row for the backward. Returns the number of
// rows that count. Throws mslm::Error on a target outside [0, V) other than kIgnoreIndex.
template <typename T>
int64_t cross_entropy_forward(T* losses, T* lse, const T* logits, const int32_t* targets, int64_t N, int64_t V);
// dlogits (N, V) = (softmax(logits) − onehot(target)) · dloss, 0 on ignored rows. Writes (does not
// accumulate) and may be called with dlogits == logits to run in place. dloss is the gradient of
// the final loss with respect to each row's loss (1/count for a mean).
template <typename T>
void cross_entropy_backward(T* dlogits, const T* logits, const T* lse, const int32_t* targets, int64_t N, int64_t V,
                            T dloss);

}  // namespace mslm::ops
