// CUDA Mamba-1 selective scan (S6): forward, backward and the one-token decode update, on buffers
// in GPU memory, with the semantics of ops/selective_scan.h (the CPU reference; the input and
// gradient structs are the same, with T = float or uint16_t for bf16 bits). Storage T, fp32 math;
// scan states (h0, h_last, the update's h, the chunk states) are always fp32. Backward accumulates
// (+=) into every gradient it produces.
//
// Plain C++ header (no CUDA includes); the definitions exist only in builds with MSLM_HAVE_CUDA.
// `stream` is a cudaStream_t (nullptr: the default stream); launches are asynchronous and a bad
// launch or argument throws mslm::Error naming the kernel. Every pointer, `slots` included, is
// device memory. 1 ≤ d_state ≤ kScanMaxState; batch (or k) ≤ 65535.
#pragma once
#include <cstddef>
#include <cstdint>

#include "ops/selective_scan.h"

namespace mslm::ops::cuda {

constexpr int64_t kScanMaxState = 16;
// The forward saves the state every kScanChunk steps; the backward recomputes one chunk at a time
// from it. 32 steps keep the chunk's states (32 × 256 threads × 4 bytes) in shared memory.
constexpr int64_t kScanChunk = 32;

// Floats of the chunk states: (B, ceil(T / kScanChunk), Din, N), the state before each chunk's
// first step (chunk 0: h0, or zeros).
size_t selective_scan_chunk_states_size(const ScanDims& dims);

// y (B, T, Din) contiguous; h0 (B, Din, N) or null (zeros); h_last (B, Din, N) or null, may be h0.
// chunk_states (selective_scan_chunk_states_size floats) or null: what the backward needs.
template <typename T>
void selective_scan_forward(T* y, float* h_last, const SelectiveScanInputs<T>& in, const float* h0,
                            const ScanDims& dims, float* chunk_states, void* stream = nullptr);

// Bytes of workspace the backward needs: the per-block partial sums of dB and dC (shared by the
// channels) and the per-sequence ones of dA_log, dD and ddelta_bias (shared by the batch), added
// afterwards in a fixed order, so the result does not depend on the device or the timing.
size_t selective_scan_backward_workspace_bytes(const ScanDims& dims);

// dy (B, T, Din) contiguous; chunk_states from the forward over the same inputs and h0.
template <typename T>
void selective_scan_backward(const SelectiveScanGrads<T>& grads, const T* dy,
                             const SelectiveScanInputs<T>& in, const float* chunk_states,
                             const ScanDims& dims, void* workspace, size_t workspace_bytes,
                             void* stream = nullptr);

// One step for k sequences: row i of the inputs is the next token of the sequence whose state is
// h[slots[i]], h (S, Din, N) fp32, slots distinct. Advances those states in place and writes y
// (k, Din); runs the forward's kernel, so T updates give the bits of a T-step forward.
template <typename T>
void selective_scan_update(T* y, float* h, const int64_t* slots, const SelectiveScanInputs<T>& in, int64_t k,
                           int64_t d_inner, int64_t d_state, void* stream = nullptr);

}  // namespace mslm::ops::cuda
