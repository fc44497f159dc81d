// The CUDA Mamba-2 SSD (ops/cuda/ssd.h) alone: forward, and forward + backward, at one shape, for
// bf16 on tensor cores (the default), bf16 with MSLM_SSD_TC=0 (the fp32 tiled products: the
// ablation) and f32. Times are CUDA-event means over repeated calls after warm-up, with the
// workspace and chunk-state buffers allocated once, as the model does.
//   bench_cuda_ssd [--stages] [B T H P N G Q]   (default 8 2048 24 64 128 1 256: the 130m preset's
//   Mamba-2 layer). --stages: after each path's timing, one more forward and backward call with
//   MSLM_SSD_STAGE_TIMES=1, which prints each kernel stage's milliseconds (CUDA events) to stderr.
// FLOPs (stated, not measured), the convention of bench_cuda_model: per token, the chunked
// products C·Bᵀ (2·L·N per group), the L×L scores times X (2·L·P per head), the chunk state and
// C·S (2·P·N each per head), L = min(Q, T); forward + backward counts 3× the forward.
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
#include "ops/cuda/ssd.h"

namespace {

using namespace mslm;
using namespace mslm::cuda_bench;

template <typename T>
void bench(const char* label, const ops::SsdDims& d, double fwd_flops, bool stages) {
    const int64_t rows = d.batch * d.seqlen, H = d.n_heads;
    Rng rng(1);
    auto normal = [&](int64_t n) {
        std::vector<T> v(n);
        for (auto& x : v) x = encode<T>(rng.normal());
        return v;
    };
    // As the model initialises them (REFERENCE-FACTS: dt in [0.001, 0.1], A_log = log of 1..16).
    std::vector<T> dt(rows * H), dt_bias(H), A_log(H), D(H, encode<T>(1.0));
    for (auto& v : dt) v = encode<T>(0.0);
    for (int64_t h = 0; h < H; ++h) {
        const double dt0 = std::exp(rng.uniform(std::log(0.001), std::log(0.1)));
        dt_bias[h] = encode<T>(dt0 + std::log(-std::expm1(-dt0)));  // softplus⁻¹
        A_log[h] = encode<T>(std::log(1.0 + double(h % 16)));
    }
    std::vector<void*> owned;
    ops::cuda::SsdInputs<T> in{};
    in.x = upload(normal(rows * H * d.head_dim), owned), in.ld_x = H * d.head_dim;
    in.dt = upload(dt, owned), in.ld_dt = H;
    in.dt_bias = upload(dt_bias, owned), in.A_log = upload(A_log, owned), in.D = upload(D, owned);
    in.Bm = upload(normal(rows * d.n_groups * d.d_state), owned), in.ld_B = d.n_groups * d.d_state;
    in.Cm = upload(normal(rows * d.n_groups * d.d_state), owned), in.ld_C = d.n_groups * d.d_state;
    const T* dy = upload(normal(rows * H * d.head_dim), owned);
    T* y = upload(std::vector<T>(rows * H * d.head_dim), owned);
    auto* states = upload(std::vector<float>(ops::cuda::ssd_chunk_states_numel(d)), owned);
    auto* workspace = upload(std::vector<char>(ops::cuda::ssd_backward_workspace_bytes(d)), owned);
    const ops::SsdGrads<T> grads{upload(std::vector<T>(rows * H * d.head_dim), owned),
                                 upload(std::vector<T>(rows * H), owned),
                                 upload(std::vector<T>(H), owned),
                                 upload(std::vector<T>(H), owned),
                                 upload(std::vector<T>(rows * d.n_groups * d.d_state), owned),
                                 upload(std::vector<T>(rows * d.n_groups * d.d_state), owned),
                                 upload(std::vector<T>(H), owned)};

    auto forward = [&] {
        ops::cuda::ssd_forward(y, static_cast<float*>(nullptr), in, nullptr, d, states, workspace);
    };
    const float fwd = time_ms(forward);
    auto backward = [&] { ops::cuda::ssd_backward(grads, dy, in, nullptr, states, d, workspace); };
    const float both = time_ms([&] {
        forward();
        backward();
    });
    check(cudaDeviceSynchronize(), "after the timed calls");
    std::printf("| %-22s | %9.3f | %11.1f | %12.3f | %15.1f |\n", label, fwd, fwd_flops / (fwd * 1e-3) / 1e12,
                both, 3 * fwd_flops / (both * 1e-3) / 1e12);
    if (stages) {
        std::fflush(stdout);
        setenv("MSLM_SSD_STAGE_TIMES", "1", 1);
        forward();
        backward();
        unsetenv("MSLM_SSD_STAGE_TIMES");
        check(cudaDeviceSynchronize(), "after the staged calls");
    }
    for (void* p : owned) cuda_free(p);
}

}  // namespace
#endif

int main(int argc, char** argv) {
    if (!mslm::cuda_available()) {
        std::printf("bench_cuda_ssd: no CUDA GPU: %s\n", mslm::cuda_device_summary().c_str());
        return 0;
    }
#ifdef MSLM_HAVE_CUDA
    int64_t v[7] = {8, 2048, 24, 64, 128, 1, 256};  // B T H P N G Q
    const bool stages = argc > 1 && std::string(argv[1]) == "--stages";
    const int first = stages ? 2 : 1;
    if (argc != first && argc != first + 7) {
        std::fprintf(stderr, "usage: bench_cuda_ssd [--stages] [B T H P N G Q]\n");
        return 2;
    }
    for (int i = first; i < argc; ++i) v[i - first] = std::atoll(argv[i]);
    const mslm::ops::SsdDims d{v[0], v[1], v[2], v[3], v[5], v[4], v[6]};
    const double L = double(std::min(d.chunk_size, d.seqlen)), N = double(d.d_state), P = double(d.head_dim);
    const double fwd_flops = double(d.batch * d.seqlen) * (2.0 * L * N * double(d.n_groups) +
                                                           double(d.n_heads) * (2.0 * L * P + 4.0 * P * N));
    std::printf("%s\nB=%lld T=%lld H=%lld P=%lld N=%lld G=%lld Q=%lld; forward %.2f GFLOP (fwd+bwd: 3x)\n\n",
                mslm::cuda_device_summary().c_str(), static_cast<long long>(v[0]),
                static_cast<long long>(v[1]), static_cast<long long>(v[2]), static_cast<long long>(v[3]),
                static_cast<long long>(v[4]), static_cast<long long>(v[5]), static_cast<long long>(v[6]),
                fwd_flops / 1e9);
    std::printf("| path                   |    fwd ms | fwd TFLOP/s | fwd+bwd ms | fwd+bwd TFLOP/s |\n");
    std::printf("| ---------------------- | --------: | ----------: | ---------: | --------------: |\n");
    setenv("MSLM_SSD_TC", "1", 1);
    bench<uint16_t>("bf16, tensor cores", d, fwd_flops, stages);
    setenv("MSLM_SSD_TC", "0", 1);
    bench<uint16_t>("bf16, MSLM_SSD_TC=0", d, fwd_flops, stages);
    bench<float>("f32", d, fwd_flops, stages);
#else
    (void)argc;
    (void)argv;
#endif
    return 0;
}
