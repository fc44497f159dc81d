// What the kernels that take indices (embedding ids, cross-entropy targets) found in them, kept in
// GPU memory: checking on the host inside each call would make it wait for the GPU, so the kernels
// record instead, never dereference a bad index, and the caller reads the record (one small copy
// and a wait for the stream) where it synchronises anyway, e.g. when it reads the loss back.
//
// Plain C++ header; the device-side recorder exists only for nvcc.
#pragma once
#include <cstdint>

namespace mslm::ops::cuda {

struct IndexStatus {
    // (position << 32) | uint32(index) of the bad index at the smallest position; all ones if none.
    // The minimum is independent of the order in which threads find them.
    unsigned long long first_bad;
    unsigned long long count;  // rows that count (cross-entropy forward); 0 elsewhere
};

struct IndexReport {
    bool bad = false;
    int64_t position = 0;  // of the first bad index, when bad
    int32_t index = 0;     // its value
    int64_t count = 0;
};

// Clears *status (GPU memory) on `stream`: no bad index, count 0.
void index_status_clear(IndexStatus* status, void* stream);
// Waits for `stream`, then returns what the kernels recorded into *status.
IndexReport index_status_read(const IndexStatus* status, void* stream);

#ifdef __CUDACC__
__device__ inline void record_bad_index(IndexStatus* status, int64_t position, int32_t index) {
    if (status)
        atomicMin(&status->first_bad,
                  (static_cast<unsigned long long>(position) << 32) | static_cast<uint32_t>(index));
}
#endif

}  // namespace mslm::ops::cuda
