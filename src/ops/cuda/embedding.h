// CUDA token embedding on buffers in GPU memory: a row gather forward and a deterministic
// scatter-add backward, with the semantics of ops/embedding.h (the CPU reference).
//
// Plain C++ header (no CUDA includes). T is `float`, or `uint16_t` for bf16 (raw bits, as in
// core/dtype.h); the backward sums in fp32 and rounds once per table entry. ids are int32 in GPU
// memory. `stream` is a cudaStream_t (nullptr: the default stream); launches are asynchronous and a
// failed launch throws mslm::Error naming the kernel.
//
// Ids outside [0, V): the CPU reference throws; here the kernels record the first one into
// `status` (GPU memory, may be null; see ops/cuda/index_status.h), which each call clears first, and
// embedding_check throws the CPU reference's error from it. The forward fills a bad id's row with
// NaN, so that an unchecked error cannot pass unnoticed; the backward skips it.
#pragma once
#include <cstddef>
#include <cstdint>

#include "ops/cuda/index_status.h"

namespace mslm::ops::cuda {

// out (N, D) = table[ids]; table (V, D), ids (N).
template <typename T>
void embedding_forward(T* out, const int32_t* ids, const T* table, int64_t N, int64_t V, int64_t D,
                       IndexStatus* status, void* stream = nullptr);

// Bytes of GPU memory `workspace` must hold for embedding_backward with these N and V (for the
// sorted ids and positions and CUB's radix sort). Asks the current device, so needs a GPU.
size_t embedding_backward_workspace_bytes(int64_t N, int64_t V);

// dtable (V, D) += scatter of dout (N, D) by ids, deterministic: (id, position) pairs are radix
// sorted by id (a stable sort, so positions stay in increasing order within an id), and each run of
// one id is summed in position order by one thread block, then added to its row once.
template <typename T>
void embedding_backward(T* dtable, void* workspace, const T* dout, const int32_t* ids, int64_t N, int64_t V,
                        int64_t D, IndexStatus* status, void* stream = nullptr);

// Waits for `stream`; throws mslm::Error if the last call that recorded into *status met an id outside
// [0, V).
void embedding_check(const IndexStatus* status, int64_t V, void* stream = nullptr);

}  // namespace mslm::ops::cuda
