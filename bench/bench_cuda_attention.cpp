// The CUDA causal attention (ops/cuda/attention.h) alone: forward, and forward + backward, for
// B·T = 16384 tokens, 12 heads (MHA), at T = 2048 and 8192 with head dims 64 and 128, for bf16 on
// tensor cores (the default), bf16 with MSLM_ATTN_TC=0 (the fp32 kernels: the ablation) and f32.
// Times are CUDA-event means over repeated calls after warm-up; q, k, v are slices of one fused
// (B, T, 3·H·Dh) projection, as the model calls them. The backward writes dq, dk and dv (accumulate
// false, as the training step calls it and as SDPA returns fresh gradients); --accumulate times the
// += form instead.
//   bench_cuda_attention [tokens H] [--tc-only] [--accumulate]
//   (default 16384 12; --tc-only: the tensor-core path alone)
// FLOPs (stated, not measured), the convention of FlashAttention's benchmarks: causal forward
// 4·B·H·T²·Dh / 2 (Q·Kᵀ and P·V over half the square), backward 2.5× that; forward + backward
// 3.5× the forward; the backward column is the difference of the two timings. PyTorch SDPA (flash / cuDNN) on
// the H200: ≈ 270 TFLOP/s forward + backward at T = 2048, ≈ 390 at T = 8192 (Dh 64; issue 7).
#include <cstdio>
#include <cstdlib>
#include <string>

#include "core/cuda_device.h"

#ifdef MSLM_HAVE_CUDA
#include <cuda_runtime.h>

#include "cuda_bench_util.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <type_traits>
#include <vector>

#include "core/dtype.h"
#include "core/rng.h"
#include "ops/cuda/attention.h"

namespace {

using namespace mslm;
using namespace mslm::cuda_bench;

template <typename T>
void bench(const char* label, const ops::AttentionDims& d, bool accumulate) {
    const int64_t rows = d.batch * d.seqlen, H = d.n_heads, Dh = d.head_dim, W = 3 * H * Dh;
    Rng rng(1);
    auto normal = [&](int64_t n) {
        std::vector<T> v(static_cast<size_t>(n));
        for (auto& x : v) x = encode<T>(rng.normal());
        return v;
    };
    std::vector<void*> owned;
    const T* qkv = upload(normal(rows * W), owned);
    const T* dout = upload(normal(rows * H * Dh), owned);
    T* out = upload(std::vector<T>(static_cast<size_t>(rows * H * Dh)), owned);
    T* dqkv = upload(std::vector<T>(static_cast<size_t>(rows * W)), owned);
    float* lse = upload(std::vector<float>(static_cast<size_t>(rows * H)), owned);
    const T *q = qkv, *k = qkv + H * Dh, *v = qkv + 2 * H * Dh;
    ops::cuda::AttentionOptions opt{static_cast<float>(1.0 / std::sqrt(static_cast<double>(Dh)))};
    opt.accumulate = accumulate;

    auto forward = [&] { ops::cuda::attention_forward<T>(out, lse, q, W, k, W, v, W, d, opt); };
    const float fwd = time_ms(forward);
    const float both = time_ms([&] {
        forward();
        ops::cuda::attention_backward<T>(dqkv, dqkv + H * Dh, dqkv + 2 * H * Dh, dout, out, lse, q, W, k, W,
                                         v, W, d, opt);
    });
    check(cudaDeviceSynchronize(), "after the timed calls");
    const double fwd_flops =
        4.0 * double(d.batch) * double(H) * double(d.seqlen) * double(d.seqlen) * double(Dh) / 2.0;
    const float bwd = both - fwd;
    std::printf("| %5lld | %3lld | %-22s | %9.3f | %11.1f | %9.3f | %11.1f | %10.3f | %15.1f |\n",
                static_cast<long long>(d.seqlen), static_cast<long long>(Dh), label, fwd,
                fwd_flops / (fwd * 1e-3) / 1e12, bwd, 2.5 * fwd_flops / (bwd * 1e-3) / 1e12, both,
                3.5 * fwd_flops / (both * 1e-3) / 1e12);
    for (void* p : owned) cuda_free(p);
}

}  // namespace
#endif

int main(int argc, char** argv) {
    if (!mslm::cuda_available()) {
        std::printf("bench_cuda_attention: no CUDA GPU: %s\n", mslm::cuda_device_summary().c_str());
        return 0;
    }
#ifdef MSLM_HAVE_CUDA
    int64_t tokens = 16384, H = 12;
    bool tc_only = false, accumulate = false;
    std::vector<std::string> pos;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--tc-only")
            tc_only = true;
        else if (a == "--accumulate")
            accumulate = true;
        else
            pos.push_back(a);
    }
    if (!pos.empty() && pos.size() != 2) {
        std::fprintf(stderr, "usage: bench_cuda_attention [tokens H] [--tc-only] [--accumulate]\n");
        return 2;
    }
    if (pos.size() == 2) {
        tokens = std::atoll(pos[0].c_str());
        H = std::atoll(pos[1].c_str());
    }
    std::printf(
        "%s\n%lld tokens, %lld heads, causal; fwd FLOPs 4·B·H·T²·Dh/2, fwd+bwd 3.5× that; backward %s\n\n",
        mslm::cuda_device_summary().c_str(), static_cast<long long>(tokens), static_cast<long long>(H),
        accumulate ? "accumulating (+=)" : "writing its gradients");
    std::printf(
        "|     T |  Dh | path                   |    fwd ms | fwd TFLOP/s |    bwd ms | bwd TFLOP/s | "
        "fwd+bwd ms "
        "| fwd+bwd TFLOP/s |\n");
    std::printf(
        "| ----: | --: | ---------------------- | --------: | ----------: | --------: | ----------: | "
        "---------: "
        "| --------------: |\n");
    for (int64_t Dh : {64, 128}) {
        for (int64_t T : {2048, 8192}) {
            if (tokens % T != 0) continue;
            const mslm::ops::AttentionDims d{tokens / T, T, H, H, Dh};
            setenv("MSLM_ATTN_TC", "1", 1);
            bench<uint16_t>("bf16, tensor cores", d, accumulate);
            if (tc_only) continue;
            setenv("MSLM_ATTN_TC", "0", 1);
            bench<uint16_t>("bf16, MSLM_ATTN_TC=0", d, accumulate);
            bench<float>("f32", d, accumulate);
        }
    }
#else
    (void)argc;
    (void)argv;
#endif
    return 0;
}
