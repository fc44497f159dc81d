// What the CUDA kernel benches share: a CUDA error check that ends the bench with a message, mean
// milliseconds per call by CUDA events, bf16 / f32 encoding of host values, and device copies
// that live until the bench ends. Include only in builds with MSLM_HAVE_CUDA.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <type_traits>
#include <vector>

#include "core/cuda_device.h"
#include "core/dtype.h"

namespace mslm::cuda_bench {

inline void check(cudaError_t err, const char* what) {
    if (err != cudaSuccess) {
        std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(err));
        std::exit(1);
    }
}

// Mean milliseconds per call of `op` on the default stream, after `warmup` untimed calls.
inline float time_ms(const std::function<void()>& op, int warmup = 3, int iters = 10) {
    for (int i = 0; i < warmup; ++i) op();
    cudaEvent_t start, stop;
    check(cudaEventCreate(&start), "cudaEventCreate");
    check(cudaEventCreate(&stop), "cudaEventCreate");
    check(cudaEventRecord(start), "cudaEventRecord");
    for (int i = 0; i < iters; ++i) op();
    check(cudaEventRecord(stop), "cudaEventRecord");
    check(cudaEventSynchronize(stop), "cudaEventSynchronize");
    float ms = 0.0f;
    check(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    return ms / static_cast<float>(iters);
}

// Mean milliseconds per call of `op`, which launches on `stream`, replayed from a CUDA graph of
// `iters` captured calls (as the decoder replays its step): the GPU's time per call without the host's
// launch cost, which for kernels of a few microseconds is larger than the kernel. `warmup` untimed
// calls first; the graph is launched once untimed, then timed.
inline float time_graph_ms(const std::function<void()>& op, cudaStream_t stream, int warmup = 3, int iters = 10) {
    for (int i = 0; i < warmup; ++i) op();
    check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
    for (int i = 0; i < iters; ++i) op();
    check(cudaStreamEndCapture(stream, &graph), "cudaStreamEndCapture");
    check(cudaGraphInstantiate(&exec, graph, 0), "cudaGraphInstantiate");
    check(cudaGraphLaunch(exec, stream), "cudaGraphLaunch");
    cudaEvent_t start, stop;
    check(cudaEventCreate(&start), "cudaEventCreate");
    check(cudaEventCreate(&stop), "cudaEventCreate");
    check(cudaEventRecord(start, stream), "cudaEventRecord");
    check(cudaGraphLaunch(exec, stream), "cudaGraphLaunch");
    check(cudaEventRecord(stop, stream), "cudaEventRecord");
    check(cudaEventSynchronize(stop), "cudaEventSynchronize");
    float ms = 0.0f;
    check(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    return ms / static_cast<float>(iters);
}

template <typename T>
T encode(double v) {
    if constexpr (std::is_same_v<T, uint16_t>) {
        return f32_to_bf16(static_cast<float>(v));
    } else {
        return static_cast<T>(v);
    }
}

// A device copy of host values, recorded in `owned` for freeing at the end of the bench.
template <typename T>
T* upload(const std::vector<T>& v, std::vector<void*>& owned) {
    void* p = cuda_malloc(std::max<size_t>(v.size(), 1) * sizeof(T));
    check(cudaMemcpy(p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice), "cudaMemcpy");
    owned.push_back(p);
    return static_cast<T*>(p);
}

}  // namespace mslm::cuda_bench
