// The CUDA causal depthwise conv1d (ops/cuda/conv1d.h) at the Mamba-2 130m layer's shape: x, B and
// C of in_proj's output (C = 1792 channels in rows of ld = 3352), K = 4, SiLU, B·T = 16384 tokens.
// Forward (out only, as the training step calls it) and backward (dx, dw, dbias), timed with CUDA
// events over repeated calls after warm-up, for the fast kernels and, with MSLM_CONV_FAST=0, the
// one-element kernels (the ablation), in bf16 and f32. GB/s counts the bytes each call must move:
// forward reads x and writes out (2 · N · C elements); backward reads x and dout and reads and writes
// dx (4 · N · C), the dw/dbias partials not counted. The ceiling is the card's copy bandwidth
// (~4.8 TB/s datasheet on an H200; the memcpy anchor row measures the practical one).
//   bench_cuda_conv [B T C ld K]   (default 8 2048 1792 3352 4)
#include <cstdio>
#include <cstdlib>
#include <string>

#include "core/cuda_device.h"

#ifdef MSLM_HAVE_CUDA
#include <cuda_runtime.h>

#include "cuda_bench_util.h"

#include <algorithm>
#include <functional>
#include <type_traits>
#include <vector>

#include "core/dtype.h"
#include "core/rng.h"
#include "ops/cuda/conv1d.h"

namespace {

using namespace mslm;
using namespace mslm::cuda_bench;

constexpr int kWarmup = 3, kIters = 20;
float time_ms(const std::function<void()>& op) {
    return mslm::cuda_bench::time_ms(op, kWarmup, kIters);
}

void report(const char* op, const char* path, const char* dtype, double bytes, float ms) {
    std::printf("| %-8s | %-16s | %-5s | %9.1f | %7.0f |\n", op, path, dtype, ms * 1e3,
                bytes / (ms * 1e-3) / 1e9);
}

template <typename T>
void bench(const char* dtype, int64_t B, int64_t Tn, int64_t C, int64_t ld, int64_t K) {
    const int64_t N = B * Tn;
    Rng rng(1);
    auto uniform = [&](int64_t n, double lo, double hi) {
        std::vector<T> v(n);
        for (auto& x : v) x = encode<T>(rng.uniform(lo, hi));
        return v;
    };
    std::vector<void*> owned;
    const T* x = upload(uniform(N * ld, -2.0, 2.0), owned);  // (N, ld): the conv reads C columns
    const T* w = upload(uniform(C * K, -0.5, 0.5), owned);
    const T* bias = upload(uniform(C, -0.5, 0.5), owned);
    const T* dout = upload(uniform(N * C, -1.0, 1.0), owned);
    T* out = upload(std::vector<T>(N * C), owned);
    T* dx = upload(std::vector<T>(N * ld), owned);
    T* dw = upload(std::vector<T>(C * K), owned);
    T* dbias = upload(std::vector<T>(C), owned);
    const size_t ws_bytes = ops::cuda::conv1d_causal_backward_workspace_bytes(B, Tn, C, K);
    void* ws = upload(std::vector<char>(ws_bytes), owned);
    const double elems = double(N * C) * sizeof(T);

    for (const char* fast : {"1", "0"}) {
        setenv("MSLM_CONV_FAST", fast, 1);
        const char* path = fast[0] == '1' ? "fast" : "MSLM_CONV_FAST=0";
        report("forward", path, dtype, 2 * elems, time_ms([&] {
                   ops::cuda::conv1d_causal_forward(out, static_cast<T*>(nullptr), x, ld, w, bias, B, Tn, C,
                                                    K, true);
               }));
        report("backward", path, dtype, 4 * elems, time_ms([&] {
                   ops::cuda::conv1d_causal_backward(dx, dw, dbias, dout, x, ld, w, bias, B, Tn, C, K, true,
                                                     ws, ws_bytes);
               }));
    }
    unsetenv("MSLM_CONV_FAST");
    report("anchor", "memcpy", dtype, 2 * elems, time_ms([&] {
               check(cudaMemcpyAsync(out, dout, N * C * sizeof(T), cudaMemcpyDeviceToDevice), "memcpy");
           }));
    check(cudaDeviceSynchronize(), "after the timed calls");
    for (void* p : owned) cuda_free(p);
}

}  // namespace
#endif

int main(int argc, char** argv) {
    if (!mslm::cuda_available()) {
        std::printf("bench_cuda_conv: no CUDA GPU: %s\n", mslm::cuda_device_summary().c_str());
        return 0;
    }
#ifdef MSLM_HAVE_CUDA
    int64_t v[5] = {8, 2048, 1792, 3352, 4};  // B T C ld K
    if (argc != 1 && argc != 6) {
        std::fprintf(stderr, "usage: bench_cuda_conv [B T C ld K]\n");
        return 2;
    }
    for (int i = 1; i < argc; ++i) v[i - 1] = std::atoll(argv[i]);
    std::printf("%s\nB=%lld T=%lld C=%lld ld=%lld K=%lld, SiLU\n\n", mslm::cuda_device_summary().c_str(),
                static_cast<long long>(v[0]), static_cast<long long>(v[1]), static_cast<long long>(v[2]),
                static_cast<long long>(v[3]), static_cast<long long>(v[4]));
    std::printf("| op       | path             | dtype |   time µs |    GB/s |\n");
    std::printf("| -------- | ---------------- | ----- | --------: | ------: |\n");
    bench<uint16_t>("bf16", v[0], v[1], v[2], v[3], v[4]);
    bench<float>("f32", v[0], v[1], v[2], v[3], v[4]);
#else
    (void)argc;
    (void)argv;
#endif
    return 0;
}
