// Device side of KernelTrace (kernel_trace.h): the global timer and a block's record.
#pragma once
#include "ops/cuda/kernel_trace.h"

namespace mslm::ops::cuda::detail {

__device__ __forceinline__ unsigned long long global_ns() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

// Thread 0 of a traced block: its stamps (start, wait's end, prologue's end) and its end into the
// launch's record g, and block 0's phase marks (marks[0..5], the end in 6, the wait's end in 7).
__device__ __forceinline__ void record_trace(KernelTrace& g, const unsigned long long* stamps,
                                             unsigned long long* marks) {
    // The end first: the record's address (a constant bank the kernel may not have read yet) and
    // its atomics are the trace's own cost.
    const unsigned long long end = global_ns();
    atomicMin(&g.start_min, stamps[0]);
    atomicMax(&g.start_max, stamps[0]);
    atomicMin(&g.waited_min, stamps[1]);
    atomicMax(&g.waited_max, stamps[1]);
    atomicMax(&g.prologue_max, stamps[2]);
    atomicMax(&g.end_max, end);
    if (blockIdx.x == 0) {
        marks[6] = end;
        for (int i = 0; i < 7; ++i) g.b0[i] = marks[i];
        g.b0[7] = stamps[1];
    }
}

}  // namespace mslm::ops::cuda::detail
