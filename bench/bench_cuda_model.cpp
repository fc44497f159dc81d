// GPU training throughput of the model (model/cuda_model.h): forward + backward of a preset at
// (batch, seq_len), bf16 activations and weight copy, fp32 master parameters and gradients. Tokens
// per second over timed steps after warm-up, the device memory the model holds (parameters,
// gradients, the planned activations), and model FLOPs utilisation against a stated peak.
//   bench_cuda_model [--presets 30m,130m] [--shapes 16x1024,4x4096] [--steps 10] [--peak-tflops 790]
// FLOPs per token (stated, not measured): model/flops.h's training_flops_per_token — 6 · P_matmul
// for the matrix products of forward and backward (P_matmul: the parameters in projections, MLPs
// and the LM head), plus attention's 6 · 2 · T/2 · d_attn per attention layer (QKᵀ and PV, causal),
// plus the SSD's chunked products 3 · (2·L·N per group + (2·L·P + 4·P·N) per head) per Mamba-2 layer
// (the Mamba-1 scan's elementwise work is not counted). The optimizer step is not timed (`mamba-slm
// bench` times the full step).
#include <cstdio>
#include <string>
#include <vector>

#include "core/cuda_device.h"

#ifdef MSLM_HAVE_CUDA
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>

#include "bench/timing.h"
#include "core/rng.h"
#include "model/config.h"
#include "model/cuda_model.h"
#include "model/flops.h"
#include "model/hybrid_lm.h"
#include "model/info.h"

using namespace mslm;

int main(int argc, char** argv) {
    std::string presets = "30m,130m", shapes = "16x1024,4x4096";
    int steps = 10;
    double peak_tflops = 790;  // bf16 dense matmul measured on the H200 (docs/PERFORMANCE.md)
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string a = argv[i];
        if (a == "--presets")
            presets = argv[i + 1];
        else if (a == "--shapes")
            shapes = argv[i + 1];
        else if (a == "--steps")
            steps = std::stoi(argv[i + 1]);
        else if (a == "--peak-tflops")
            peak_tflops = std::stod(argv[i + 1]);
        else {
            std::fprintf(
                stderr,
                "usage: bench_cuda_model [--presets a,b] [--shapes BxT,...] [--steps N] [--peak-tflops F]\n");
            return 1;
        }
    }
    if (!cuda_available()) {
        std::printf("bench_cuda_model: skipped, %s\n", cuda_device_summary().c_str());
        return 0;
    }
    fmt::print(
        "# mamba-slm bench_cuda_model on {}: forward + backward, bf16 activations, fp32 masters/grads\n",
        cuda_device_summary());
    fmt::print(
        "| preset | params | B x T | tokens/s | ms/step | model TFLOP/s | MFU vs {:.0f} | device memory GiB "
        "|\n",
        peak_tflops);
    fmt::print("|---|---|---|---|---|---|---|---|\n");
    for (const auto& name : bench::split_list(presets)) {
        ModelConfig cfg = preset(name);
        for (const auto& shape : bench::split_list(shapes))  // room for the longest sequence
            cfg.max_seq_len =
                std::max<int64_t>(cfg.max_seq_len, std::stoll(shape.substr(shape.find('x') + 1)));
        HybridLM<float> cpu(cfg);
        cpu.init(0);
        for (const auto& shape : bench::split_list(shapes)) {
            const size_t x = shape.find('x');
            const int64_t B = std::stoll(shape.substr(0, x)), T = std::stoll(shape.substr(x + 1));
            CudaHybridLM gpu(cfg);
            gpu.upload(cpu);
            Rng rng(1);
            std::vector<int32_t> ids(B * T), targets(B * T);
            for (auto& v : ids) v = static_cast<int32_t>(rng.below(cfg.vocab_size));
            for (auto& v : targets) v = static_cast<int32_t>(rng.below(cfg.vocab_size));
            auto step = [&] {
                gpu.zero_grad();
                gpu.forward(ids.data(), targets.data(), B, T);
                gpu.backward();
            };
            for (int w = 0; w < 2; ++w) step();
            cudaDeviceSynchronize();
            const auto start = std::chrono::steady_clock::now();
            for (int s = 0; s < steps; ++s) step();
            cudaDeviceSynchronize();
            const double sec =
                std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / steps;
            const double tokens = double(B * T);
            const double flops_per_token = training_flops_per_token(with_cuda_training_chunk(cfg), T);
            const double tflops = flops_per_token * tokens / sec / 1e12;
            fmt::print("| {} | {} | {}x{} | {:.0f} | {:.1f} | {:.1f} | {:.1f}% | {:.2f} |\n", name,
                       format_count(cpu.num_params()), B, T, tokens / sec, sec * 1e3, tflops,
                       100.0 * tflops / peak_tflops, double(gpu.memory_bytes()) / double(1ull << 30));
            std::fflush(stdout);
        }
    }
    return 0;
}

#else

int main() {
    std::printf("bench_cuda_model: skipped, %s\n", mslm::cuda_device_summary().c_str());
    return 0;
}

#endif
