// A kernel launch's timing record for the decode step's diagnostics (MSLM_DECODE_GEMV_TRACE,
// model/cuda_decoder_kernels.h; bench_cuda_decode --trace): thread 0 of each block records the
// global timer (ns) at its start, when its wait for the previous kernel returns, after its prologue
// and at its end, kept as the earliest and latest over the launch's blocks (kernel_trace.cuh
// records them). Plain C++ header.
#pragma once

namespace mslm::ops::cuda {

struct KernelTrace {
    unsigned long long start_min, start_max, waited_min, waited_max, prologue_max, end_max;
    // Block 0's thread 0 (the global timer, ns; 0 where not reached): up to 6 phases of the
    // kernel's own, its end in b0[6], its wait's end in b0[7].
    unsigned long long b0[8];
};

}  // namespace mslm::ops::cuda
