// Where a CUDA training step's time goes, by kernel family, against the GPU's ceilings (issue 7,
// must 5): bench/train_profile.h runs full steps (zero_grad, forward, backward, clip, AdamW) of a
// preset at B × T with CudaHybridLM's stage timer, and prints per step the milliseconds of GEMM,
// SSD/scan, attention, norms, conv, elementwise, embedding + cross-entropy, optimizer and other,
// then each family's achieved TFLOP/s and GB/s (model/flops.h's counts over its time) as fractions
// of the ceilings, the check of the families' sum against the step timed without the profiler, and
// the next bottleneck. The same as `mamba-slm bench --profile`.
//   bench_cuda_profile [--presets 130m] [--shapes 8x2048] [--steps 5] [--warmup 2]
//                      [--peak-tflops 790] [--peak-tbs 4.3]
#include <fmt/format.h>

#include <cstdio>
#include <string>

#include "bench/timing.h"
#include "bench/train_profile.h"
#include "bench_args.h"
#include "core/cuda_device.h"
#include "core/error.h"
#include "model/config.h"

using namespace mslm;

int main(int argc, char** argv) {
    std::string presets = "130m", shapes = "8x2048";
    bench::ProfileOptions o;
    for (int i = 1; i < argc; ++i) {
        auto next = [&] { return bench_args::value(argc, argv, i); };
        const std::string a = argv[i];
        if (a == "--presets")
            presets = next();
        else if (a == "--shapes")
            shapes = next();
        else if (a == "--steps")
            o.steps = std::stoi(next());
        else if (a == "--warmup")
            o.warmup = std::stoi(next());
        else if (a == "--peak-tflops")
            o.peak_tflops = std::stod(next());
        else if (a == "--peak-tbs")
            o.peak_tbs = std::stod(next());
        else {
            fmt::print(
                "usage: bench_cuda_profile [--presets 130m] [--shapes BxT,...] [--steps 5] [--warmup 2] "
                "[--peak-tflops 790] [--peak-tbs 4.3]\n");
            return a == "--help" || a == "-h" ? 0 : 1;
        }
    }
    if (!cuda_available()) {
        fmt::print("bench_cuda_profile: skipped, {}\n", cuda_device_summary());
        return 0;
    }
    try {
        for (const auto& name : bench::split_list(presets))
            for (const auto& shape : bench::split_list(shapes)) {
                const size_t x = shape.find('x');
                o.batch = std::stoll(shape.substr(0, x));
                o.seq = std::stoll(shape.substr(x + 1));
                const bench::ProfileReport r = bench::run_training_profile(
                    preset(name), "preset " + name, o,
                    [](const std::string& line) { fmt::print(stderr, "{}\n", line); });
                fmt::print("{}\n", bench::format_profile(r));
                std::fflush(stdout);
            }
    } catch (const Error& e) {
        fmt::print(stderr, "bench_cuda_profile: {}\n", e.what());
        return 1;
    }
    return 0;
}
