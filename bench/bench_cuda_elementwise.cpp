// Bandwidth of the CUDA elementwise kernels (ops/cuda/elementwise.h): each op on n elements, timed
// with CUDA events over repeated launches, reported as the bytes it must move per second. These
// kernels are memory bound, so the ceiling is the card's copy bandwidth (~4.8 TB/s datasheet on an
// H200). Usage: bench_cuda_elementwise [n = 2^26]
#include <cstdio>
#include <cstdlib>
#include <string>

#include "core/cuda_device.h"

#ifdef MSLM_HAVE_CUDA
#include <cuda_runtime.h>

#include <functional>

#include "ops/cuda/elementwise.h"

namespace {

using namespace mslm;

constexpr int kWarmup = 3, kIters = 20;

// Mean milliseconds per launch of `op` on the default stream.
float time_ms(const std::function<void()>& op) {
    for (int i = 0; i < kWarmup; ++i) op();
    cudaEvent_t start, stop;
    cudaEventCreate(&start);
    cudaEventCreate(&stop);
    cudaEventRecord(start);
    for (int i = 0; i < kIters; ++i) op();
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    float ms = 0.0f;
    cudaEventElapsedTime(&ms, start, stop);
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    return ms / kIters;
}

void report(const char* op, const char* dtype, int64_t n, double bytes, float ms) {
    std::printf("| %-15s | %-5s | %10lld | %9.1f | %7.0f |\n", op, dtype, static_cast<long long>(n), ms * 1e3,
                bytes / (ms * 1e-3) / 1e9);
}

// Buffers hold 0x3f bytes: about 0.75 in both f32 and bf16, a value where nothing is special-cased.
template <typename T>
void bench(const char* dtype, int64_t n) {
    constexpr int64_t F = 8192;  // SwiGLU rows of width F (a multiple of 8: the vector path)
    const int64_t N = n / F;
    const size_t sz = sizeof(T);
    void* buffers[3];
    for (void*& b : buffers) {
        b = cuda_malloc(2 * n * sz);
        cudaMemset(b, 0x3f, 2 * n * sz);
    }
    T* a = static_cast<T*>(buffers[0]);
    T* b = static_cast<T*>(buffers[1]);
    T* c = static_cast<T*>(buffers[2]);

    report("silu_forward", dtype, n, 2.0 * n * sz, time_ms([&] { ops::cuda::silu_forward(b, a, n); }));
    report("silu_backward", dtype, n, 4.0 * n * sz, time_ms([&] { ops::cuda::silu_backward(c, b, a, n); }));
    report("swiglu_forward", dtype, N * F, 3.0 * N * F * sz,
           time_ms([&] { ops::cuda::swiglu_forward(b, a, N, F); }));
    report("swiglu_backward", dtype, N * F, 7.0 * N * F * sz,
           time_ms([&] { ops::cuda::swiglu_backward(c, b, a, N, F); }));
    report("swiglu_bwd_over", dtype, N * F, 5.0 * N * F * sz,
           time_ms([&] { ops::cuda::swiglu_backward_overwrite(c, b, a, N, F); }));
    report("axpy", dtype, n, 3.0 * n * sz, time_ms([&] { ops::cuda::axpy(c, a, n, 1.0f); }));
    // Anchor measured in the same run: the driver's device-to-device copy of the same bytes,
    // the practical ceiling for a streaming kernel (read + write counted, as above).
    report("anchor: memcpy", dtype, n, 2.0 * n * sz,
           time_ms([&] { cudaMemcpyAsync(b, a, n * sz, cudaMemcpyDeviceToDevice); }));
    cuda_synchronize();
    for (void* p : buffers) cuda_free(p);
}

}  // namespace
#endif

int main(int argc, char** argv) {
    if (!mslm::cuda_available()) {
        std::printf("bench_cuda_elementwise: no CUDA GPU: %s\n", mslm::cuda_device_summary().c_str());
        return 0;
    }
#ifdef MSLM_HAVE_CUDA
    const int64_t n = argc > 1 ? std::atoll(argv[1]) : int64_t(1) << 26;
    std::printf("%s, n = %lld (swiglu: rows of 8192)\n\n", mslm::cuda_device_summary().c_str(),
                static_cast<long long>(n));
    std::printf("| op              | dtype |          n |   time µs |    GB/s |\n");
    std::printf("| --------------- | ----- | ---------: | --------: | ------: |\n");
    bench<float>("f32", n);
    bench<uint16_t>("bf16", n);
#else
    (void)argc;
    (void)argv;
#endif
    return 0;
}
