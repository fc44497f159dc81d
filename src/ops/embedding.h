#pragma once
#include <cstdint>

namespace mslm::ops {

// out (N, D) = table[ids] with table (V, D). Throws mslm::Error on an id outside [0, V).
template <typename T>
void embedding_forward(T* out, const int32_t* ids, const T* table, int64_t N, int64_t V, int64_t D);
// dtable (V, D) += scatter of dout (N, D) by ids. Deterministic (no racing adds).
template <typename T>
void embedding_backward(T* dtable, const T* dout, const int32_t* ids, int64_t N, int64_t V, int64_t D);

}  // namespace mslm::ops
